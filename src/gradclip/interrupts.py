"""Stopping a run or a sweep cleanly on SIGTERM, SIGINT, SIGUSR1 or SIGUSR2.

SLURM sends SIGTERM to every process of a job before it kills it (or the signal chosen with
``--signal``, often SIGUSR1/SIGUSR2); Ctrl-C sends SIGINT to every process of the terminal's
foreground group. The handler installed here only notes the signal: the
training loop looks at :func:`received` after every step and ends the run as ``interrupted`` at
that step boundary, with its rows written and its W&B run finished; a sweep stops launching jobs
and still prints its report; the process exits with 128 + the signal's number, as a shell
expects. Nothing raises KeyboardInterrupt, so no traceback is printed.

A sweep whose jobs run in worker processes (Hydra's joblib launcher) installs
:func:`install` with ``on_signal``: the parent then forwards the signal to its loky workers (so
that a signal sent to the parent alone, ``kill PID``, stops them too), waits for their runs to
record themselves, and raises :class:`SweepInterrupted` to abort the pool.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

_received: int | None = None
_on_signal: Callable[[int], None] | None = None


class SweepInterrupted(BaseException):
    """Raised to stop a sweep after a signal; a BaseException, like KeyboardInterrupt, so that
    Hydra's launchers (which catch Exception per job) let it through to gradclip.train.main."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """The exit status a shell reports for a process ended by ``signum``."""
    return 128 + int(signum)


def received() -> int | None:
    """The first stop signal this process received, or None."""
    return _received


def installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _handle


def install(on_signal: Callable[[int], None] | None = None) -> bool:
    """Route the stop signals to the handler; ``on_signal(signum)`` runs after the first one.
    Only the main thread can install handlers: returns False (and changes nothing) elsewhere."""
    global _on_signal
    if threading.current_thread() is not threading.main_thread():
        return False
    _on_signal = on_signal
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    return True


def _handle(signum: int, frame) -> None:
    global _received
    if _received is not None:  # a repeated signal (or the one forwarded to a worker) adds nothing
        return
    _received = signum
    log.debug("%s received: stopping at the next step boundary", name(signum))
    if _on_signal is not None:
        _on_signal(signum)


def forward_to_workers(signum: int) -> None:
    """Send ``signum`` to this process's loky workers (joblib's pool), not to its resource
    trackers (which a SIGUSR1 would kill). Linux only; elsewhere the workers are left alone."""
    for pid in _children():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"popen_loky_posix" in cmdline:
                os.kill(pid, signum)
        except OSError:
            pass


def _children() -> list[int]:
    pids: list[int] = []
    try:
        for task in Path("/proc/self/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        return []
    return pids
