"""One run at a time in a folder: the lock ``predict`` holds on its output folder and ``train`` on
its work dir, for as long as it runs.

The lock is a file naming its holder (process id, host, start time, command) with an ``flock`` on
it. The kernel drops an ``flock`` when its process ends, however it ends (``kill -9``, a node that
rebooted: on NFS the server drops it), so a lock file that nobody holds is stale and is taken over,
whichever process and host it names (the id may belong to another process by now; the host may be a
container that is gone). Where the file system has no locks, a holder on this host counts as live
while its process id exists, and one on another host is refused with the file to delete.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .distributed import DistInfo, broadcast_object

logger = logging.getLogger(__name__)


class FolderLockedError(FileExistsError):
    """Another live process holds the folder; the message names it."""


class FolderLock:
    """Holds ``folder/name`` until :meth:`release` (or the end of a ``with`` block).

    ``what`` names the holder's kind in messages ("semask predict"), ``option`` the way to pick
    another folder ("--out").
    """

    def __init__(self, folder: str | os.PathLike[str], name: str, what: str, option: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what, self.option = what, option
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd = self._acquire()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _acquire(self) -> int:
        for _ in range(5):  # a holder that releases unlinks the file we may have opened: open again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                if not self._lock(fd):
                    raise FolderLockedError(self._refusal(_read_holder(fd)))
                try:
                    current = os.stat(self.path).st_ino
                except FileNotFoundError:
                    current = None
                if current != os.fstat(fd).st_ino:
                    os.close(fd)
                    continue
                previous = _read_holder(fd)
                if previous.get("pid") not in (None, os.getpid()):
                    logger.warning("%s: taking over the lock of %s, which no longer runs", self.folder, _who(previous))
                _write_holder(fd)
                return fd
            except BaseException:
                os.close(fd)
                raise
        raise FolderLockedError(f"{self.path} keeps being replaced by other processes; try again")

    def _lock(self, fd: int) -> bool:
        """Take the ``flock``; False when a live process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:  # no locks on this file system: judge by the recorded holder
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            holder = _read_holder(fd)
            if holder.get("host", socket.gethostname()) != socket.gethostname():
                raise FolderLockedError(
                    f"{self._refusal(holder)}. This file system has no locks, so whether it still runs cannot "
                    f"be told from here: if it does not, delete {self.path}"
                ) from None
            pid = holder.get("pid")
            return not (isinstance(pid, int) and pid != os.getpid() and _alive(pid))

    def _refusal(self, holder: dict[str, Any]) -> str:
        return (
            f"another {self.what} is running in {self.folder}: {_who(holder)}; wait for it to end, stop it, "
            f"or use another {self.option} (its lock file is {self.path})"
        )

    def release(self, moved_to: Path | None = None) -> None:
        """Drop the lock and remove its file (from ``moved_to`` when the folder was renamed meanwhile)."""
        if self._fd < 0:
            return
        path = self.path if moved_to is None else Path(moved_to) / self.path.name
        try:
            if os.stat(path).st_ino == os.fstat(self._fd).st_ino:  # never another holder's file
                path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = -1


def lock_for_ranks(
    folder: str | os.PathLike[str], name: str, what: str, option: str, info: DistInfo | None = None
) -> FolderLock | None:
    """Rank 0 takes ``folder``'s lock (:class:`FolderLock`) for all the ranks of its run (``info``;
    None: one process) and, when it cannot, every rank raises the same :class:`FolderLockedError`,
    so none of them touches the folder. Returns the lock on rank 0 (the caller releases it), None on
    the others."""
    lock, refusal = None, None
    if info is None or info.is_main:
        try:
            lock = FolderLock(folder, name, what, option)
        except FolderLockedError as exc:
            refusal = str(exc)
    if info is not None:
        refusal = broadcast_object(refusal, info)
    if refusal is not None:
        raise FolderLockedError(refusal)
    return lock


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return {}
    if not text:
        return {}
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": int(text)} if text.isdigit() else {"command": text[:200]}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)


def _who(holder: dict[str, Any]) -> str:
    parts = [f"process {holder.get('pid', '?')}"]
    if holder.get("host"):
        parts.append(f"on {holder['host']}")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    text = " ".join(parts)
    return f"{text} ({holder['command']})" if holder.get("command") else text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
