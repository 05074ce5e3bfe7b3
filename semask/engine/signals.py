"""Stopping a training run cleanly on SIGTERM, SIGINT (Ctrl-C) or SIGUSR1.

Schedulers send SIGTERM some seconds before they kill (SLURM, Kubernetes, spot instances; SLURM's
``--signal`` often uses SIGUSR1). :class:`StopSignals` turns the first such signal into a request:
the trainer finishes the step it is in, all processes agree to stop at the same step (so under
torchrun every rank stops, whichever got the signal), rank 0 writes a checkpoint atomically, and
the run ends with exit code 128 + the signal number. A second signal exits at once, without a
checkpoint. torchrun relays the signals it gets to its workers, so a worker that got Ctrl-C from
the terminal gets it once more from torchrun a moment later: a repeat within
:data:`REPEAT_GRACE_S` of the first counts as the same signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
REPEAT_GRACE_S = 1.0


class StopSignals:
    """Within ``with StopSignals() as stop:``, ``stop.signum`` is the first stop signal received (0:
    none). Installed only in the main thread (Python delivers signals there); the previous handlers
    come back on exit. ``announce``: say on stderr what happens (rank 0 only under torchrun)."""

    def __init__(self, announce: bool = True) -> None:
        self.signum = 0
        self.announce = announce
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.signum:
            self.signum, self._first_at = signum, time.monotonic()
            self._say(
                f"\n{name} received: finishing the current step, then writing a checkpoint "
                f"(send it again to stop at once, without one)\n"
            )
        elif time.monotonic() - self._first_at > REPEAT_GRACE_S:
            self._say(f"\n{name} received again: stopping now, without a checkpoint\n")
            os._exit(128 + signum)

    def _say(self, text: str) -> None:
        if self.announce:
            os.write(2, text.encode())  # not print(): a handler may interrupt a print to the same stream


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave the stop signals to the main process, which
    finishes its step (a worker killed by Ctrl-C would fail the step instead)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def worker_pool(loader: Iterable[T]) -> Iterator[Iterator[T]]:
    """``with worker_pool(loader) as batches:`` iterates ``loader`` and ends its worker processes
    however the block ends. They ignore SIGTERM (:func:`ignore_stop_signals`), so the terminate()
    of torch's clean-up and of multiprocessing at interpreter exit cannot end them: a pool left to
    those (say, one a held traceback keeps alive after a worker's error) would hang the exit.
    Workers are asked to stop, then killed if they have not."""
    iterator = iter(loader)
    try:
        yield iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # a multi-process loader's iterator
        if shutdown is not None:
            shutdown()
            for worker in getattr(iterator, "_workers", ()):
                if worker.is_alive():
                    worker.kill()
                    worker.join()
