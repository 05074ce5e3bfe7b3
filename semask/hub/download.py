"""Fetching weight files into the local cache: resumable, verified, locked, offline-aware.

Only the standard library's urllib is used, so plain HTTPS release files and Google Drive
need no extra dependency. A downloaded file appears under its final name only once it is
complete (and matches the registry's sha256, when known).

The cache also holds files people put there by hand (offline machines, shared model volumes),
so a cached file is never deleted: one whose sha256 differs from the registry's, or from the
hash recorded when it last loaded, is moved aside to ``NAME.mismatch-<time>`` and the error says
so. A hash is recorded (``NAME.sha256``) only for a file that has loaded (:func:`record_hash`),
so an interrupted copy never becomes the reference a complete copy is judged by, and a
read-only cache is used as it is. A record goes when its file goes (moved aside, or replaced by a
download), so it never judges another copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from tqdm import tqdm

from ..models.io import atomic_write

logger = logging.getLogger(__name__)

GDRIVE_URL = "https://drive.usercontent.google.com/download"
_CHUNK = 1 << 20
_ATTEMPTS = 3  # a dropped connection is resumed from the .part file this many times in all
_TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """A weight file could not be fetched, or what was fetched is not the expected file."""


def default_cache_dir() -> Path:
    """``$SEMASK_HOME`` if set, else ``~/.cache/semask``."""
    home = os.environ.get("SEMASK_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "semask"


def is_offline() -> bool:
    return os.environ.get("SEMASK_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    filename: str,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Path of ``filename`` in the cache, fetching it from ``url`` first if it is not there."""
    return _download(url, filename, sha256, cache_dir, progress, html_page=None)


def download_gdrive(
    file_id: str,
    filename: str,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Like :func:`download_file` for a Google Drive file id, passing the large-file confirm page."""
    if not file_id or any(c in file_id for c in "/?&#= "):
        raise DownloadError(f"not a Google Drive file id: {file_id!r}")
    base = os.environ.get("SEMASK_GDRIVE_URL", GDRIVE_URL)
    url = f"{base}?{urllib.parse.urlencode({'id': file_id, 'export': 'download'})}"
    return _download(url, filename, sha256, cache_dir, progress, html_page=_gdrive_confirm_url)


def _download(
    url: str,
    filename: str,
    sha256: str | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    html_page: Callable[[bytes, str], str] | None,
) -> Path:
    if not filename or Path(filename).name != filename or filename.startswith("."):
        raise DownloadError(f"cache file name must be a plain file name, got {filename!r}")
    expected = sha256.lower() if sha256 else None
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = folder / filename
    if dest.is_file():
        return _verify_cached(dest, expected)
    if is_offline():
        raise DownloadError(_missing_message(dest, url, "SEMASK_OFFLINE=1 is set and"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{filename}.lock").touch()
    except OSError as err:
        raise DownloadError(
            f"cannot write to the weights cache {folder} ({err.strerror}) to download {filename}: set SEMASK_HOME "
            f"to a writable folder, or put the file at {dest} ({url})"
        ) from None
    with open(folder / f"{filename}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the file cached
        if dest.is_file():
            return _verify_cached(dest, expected)
        part = folder / f"{filename}.part"
        _fetch_with_retries(url, part, filename, progress, html_page)
        if expected is not None and (actual := sha256_of(part)) != expected:
            part.unlink()  # our own partial download, never a file someone put here
            raise DownloadError(
                f"sha256 mismatch for {filename} from {url}: expected {expected}, got {actual}; the download was deleted"
            )
        _sha_path(dest).unlink(missing_ok=True)  # a record left by a file deleted by hand is not this file's
        os.replace(part, dest)
    return dest


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _recorded_hash(dest: Path) -> str | None:
    """The hash in ``NAME.sha256``; an empty or garbled record (a cut-off write, an edit) counts as none."""
    try:
        text = _sha_path(dest).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as err:
        logger.warning("cannot read %s (%s); the hash is recorded again once the file loads", _sha_path(dest), err)
        return None
    fields = text.split()
    if not fields or not _SHA256.fullmatch(fields[0].lower()):
        logger.warning("%s holds no sha256; it is recorded again once %s loads", _sha_path(dest), dest.name)
        return None
    return fields[0].lower()


def _verify_cached(dest: Path, expected: str | None) -> Path:
    """Check a cache hit against the registry hash, else the hash recorded when it last loaded
    (none yet: it is recorded by :func:`record_hash` once it loads)."""
    recorded = None if expected else _recorded_hash(dest)
    reference = expected or recorded
    if reference is None:
        return dest
    actual = sha256_of(dest)
    if actual != reference:
        source = "expected" if expected else f"recorded in {_sha_path(dest).name} when it last loaded"
        raise DownloadError(
            f"sha256 mismatch for cached {dest}: {source} {reference}, got {actual}; {_move_aside(dest, recorded=not expected)}"
        )
    return dest


def _move_aside(dest: Path, recorded: bool) -> str:
    """Rename a rejected cache file to ``NAME.mismatch-<time>`` (never delete what someone put there)
    and drop its hash record, which describes the file that last loaded, not the next copy put there;
    says what happened, for the error message (``recorded``: the record was what it failed)."""
    target = dest.with_name(f"{dest.name}.mismatch-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target, n = dest.with_name(f"{dest.name}.mismatch-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    try:
        os.rename(dest, target)
    except OSError as err:
        return f"it was left in place (it could not be moved aside: {err.strerror}); replace it with a good copy"
    _sha_path(dest).unlink(missing_ok=True)
    hint = " (if you replaced it on purpose, move it back)" if recorded else ""
    return f"it was moved aside to {target}; the next load downloads it again{hint}"


def record_hash(path: str | os.PathLike[str]) -> None:
    """Record the sha256 of a cached file that has just loaded, once (``NAME.sha256``): later
    loads check it. A read-only cache is left as it is (the file is then used unverified)."""
    path = Path(path)
    if _recorded_hash(path) is not None:
        return
    try:
        _write_atomic(_sha_path(path), f"{sha256_of(path)}  {path.name}\n")
    except OSError as err:
        logger.debug("not recording the sha256 of %s: %s", path, err)


def _missing_message(dest: Path, url: str, why: str) -> str:
    return f"{why} {dest.name} is not in the cache: download it from {url} and put it at {dest}"


def _sha_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _write_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class _Incomplete(Exception):
    """The connection ended before the announced length: resume from the .part file."""


def _fetch_with_retries(
    url: str,
    part: Path,
    filename: str,
    progress: bool,
    html_page: Callable[[bytes, str], str] | None,
) -> None:
    for attempt in range(_ATTEMPTS):
        try:
            _fetch(url, part, filename, progress, html_page)
            return
        except _Incomplete as err:
            if attempt == _ATTEMPTS - 1:
                raise DownloadError(
                    f"download of {url} kept breaking off ({err}); the partial file {part} "
                    "is kept and the next try resumes it"
                ) from err


def _fetch(
    url: str,
    part: Path,
    filename: str,
    progress: bool,
    html_page: Callable[[bytes, str], str] | None,
) -> None:
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "semask"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # our .part is not a prefix the server knows: start over
            part.unlink()
            return _fetch(url, part, filename, progress, html_page)
        raise DownloadError(f"HTTP {err.code} {err.reason} from {url}") from err
    except urllib.error.URLError as err:
        raise DownloadError(_missing_message(part.with_suffix(""), url, f"cannot reach {url} ({err.reason}):")) from err
    with response:
        resumed = start > 0 and response.status == 206
        if not resumed:
            start = 0
        content_type = response.headers.get("Content-Type", "")
        first = _read(response)
        head = first.lstrip()[:15].lower()
        if "text/html" in content_type.lower() or (not resumed and head.startswith((b"<!doctype", b"<html"))):
            if html_page is not None:
                body = first + response.read()
                return _fetch(html_page(body, url), part, filename, progress, None)
            raise DownloadError(
                f"{url} answered an HTML page (quota exceeded / access denied page, not a checkpoint); "
                "nothing was saved"
            )
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        with (
            open(part, "ab" if resumed else "wb") as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=filename,
                disable=not progress,
            ) as bar,
        ):
            chunk = first
            while chunk:
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                chunk = _read(response)
    if total is not None and received < total:
        raise _Incomplete(f"got {received} of {total} bytes")
    return None


def _read(response) -> bytes:
    try:
        return response.read(_CHUNK)
    except (http.client.HTTPException, OSError) as err:  # IncompleteRead, reset, timeout
        raise _Incomplete(str(err)) from err


class _HiddenForm(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = a.get("action") or ""
        elif tag == "input" and (a.get("type") or "").lower() == "hidden" and a.get("name"):
            self.fields[a["name"] or ""] = a.get("value") or ""


def _gdrive_confirm_url(body: bytes, url: str) -> str:
    """The download URL behind Drive's "can't scan this file for viruses" page."""
    form = _HiddenForm()
    form.feed(body.decode("utf-8", errors="replace"))
    if "confirm" not in form.fields:
        raise DownloadError(
            f"Google Drive answered {url} with an HTML page that is not the large-file confirm form "
            "(quota exceeded / access denied page, not a checkpoint); nothing was saved"
        )
    action = urllib.parse.urljoin(url, form.action) if form.action else url.split("?", 1)[0]
    return f"{action}?{urllib.parse.urlencode(form.fields)}"
