"""A sweep's own bookkeeping: what each job of this launch did, the report line, the exit code.

Every job of a Hydra multirun writes one small JSON file into ``<sweep dir>/.sweep/`` (its
journal entry: ``started`` when it begins, its outcome when it ends), whichever process or host
runs it. :class:`SweepReport`, a Hydra callback, clears the journal when the sweep starts
(holding a lock on it, ``launch.lock``, until it ends or its process dies, and naming itself in
``launch.json``: a second sweep into the same folder while the first runs stops at once with
one line and exit 1, since their reports would mix) and
reads it when the sweep ends (or when a signal stops it) to print one line counting this
launch's jobs by outcome, one line per job that needs attention, and to exit with a code that
tells the truth:

    128 + signal  the sweep was stopped by a signal (SIGINT: 130, SIGTERM: 143)
    2             a job had bad input, or its folder holds a finished record of another config
    1             a job failed (a crash, a write error, a corrupt record), was interrupted,
                  did not start, or never ended
    0             every job completed or diverged (divergence is a result), now or before

Run records themselves (gradclip.records) are the results; the journal only says what this
launch did with them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gradclip import interrupts
from gradclip.records import RecordWriteError, process_alive, process_identity, run_state, write_json_atomic

log = logging.getLogger(__name__)

JOURNAL_DIR = ".sweep"
LAUNCH_FILE = "launch.json"  # in the journal: the sweep process that owns it (for messages)
LOCK_FILE = "launch.lock"  # in the journal: flock'ed by that process while its sweep runs
# Outcomes, in the order the report lists them; "started" is a job that has not ended (yet),
# "running" one whose record a live process still writes.
OUTCOMES = ("completed", "diverged", "skipped", "failed", "interrupted", "bad_input", "not_started", "running",
            "started")
LABELS = {"skipped": "already finished (skipped)", "bad_input": "bad input", "not_started": "not started",
          "running": "still running", "started": "never ended"}
# After a signal, how long a sweep whose jobs run in worker processes waits for their runs to
# record themselves before it aborts the pool (which kills the workers).
WORKER_GRACE_S = 10.0

# The sweep this process launched (set in the sweep's own process only: workers leave it None).
_sweep_dir: Path | None = None
_sweep_pid: int | None = None
# True while runs train in this process (gradclip.train sets it around each population).
job_here = False
_sweep_ended = False
_lock: tuple[Path, int] | None = None  # (launch.lock, its open file) of this process's sweep


def journal(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / JOURNAL_DIR


def record_job(sweep_dir: Path, job: str, outcome: str, detail: str = "") -> None:
    """Write a job's journal entry (``job`` is its folder name). A failure to write it (a full
    disk) is logged in one line and otherwise ignored: the run's own record is what counts."""
    entry = {"job": job, "outcome": outcome, "detail": detail, "process": process_identity()}
    path = journal(sweep_dir) / f"{job}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, entry, in_place_on_full_disk=True)
    except (OSError, RecordWriteError) as error:
        log.warning("sweep journal: %s", error)


def journal_entry(sweep_dir: Path, job: str) -> bool:
    """Whether the job (its folder name) has a journal entry in this launch."""
    return (journal(sweep_dir) / f"{job}.json").exists()


def read_journal(sweep_dir: Path) -> list[dict]:
    entries = []
    for path in sorted(journal(sweep_dir).glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a journal entry is bookkeeping, never worth a crash
        if isinstance(entry, dict) and entry.get("outcome") in OUTCOMES:
            entries.append(entry)
    return entries


def in_sweep_process() -> bool:
    """True in the process that launched the sweep (Hydra's basic launcher runs jobs there)."""
    return _sweep_pid == os.getpid()


def report(sweep_dir: Path, signum: int | None = None) -> int:
    """Print the sweep's report to stderr and return its exit code. A job that never wrote its
    end (its process was killed, or it still runs) counts as what its record reads."""
    entries = read_journal(sweep_dir)
    for entry in entries:
        if entry["outcome"] == "started":
            state = run_state(Path(sweep_dir) / entry["job"])
            if state.summary.get("process") == entry.get("process"):  # this launch's attempt
                entry["outcome"] = state.status if state.status in OUTCOMES else "started"
                entry["detail"] = state.reason
            else:  # its process died before it wrote a record (the folder may hold an older one)
                entry["detail"] = "its process died before the run wrote its record"
    counts = {outcome: sum(e["outcome"] == outcome for e in entries) for outcome in OUTCOMES}
    parts = [f"{n} {LABELS.get(outcome, outcome)}" for outcome, n in counts.items() if n]
    stopped = f"stopped by {interrupts.name(signum)}; " if signum else ""
    jobs = f"{len(entries)} job{'' if len(entries) == 1 else 's'}"
    print(f"gradclip: sweep {sweep_dir}: {stopped}{jobs}: {', '.join(parts) or 'none'}", file=sys.stderr)
    for entry in entries:
        if entry["outcome"] in ("failed", "interrupted", "bad_input", "not_started", "running", "started"):
            label = LABELS.get(entry["outcome"], entry["outcome"])
            print(f"  {label}: {entry['job']}: {entry.get('detail') or 'no detail'}", file=sys.stderr)
    if signum:
        return interrupts.exit_code(signum)
    if counts["bad_input"]:
        return 2
    if any(counts[outcome] for outcome in ("failed", "interrupted", "not_started", "running", "started")):
        return 1
    return 0


def _wait_for_jobs(sweep_dir: Path, timeout: float) -> None:
    """Wait until no job of this launch is ``started`` with a live process, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(e["outcome"] == "started" and process_alive(e.get("process") or {}) is not False
                   for e in read_journal(sweep_dir)):
            return
        time.sleep(0.05)


class SweepReport(Callback):
    """Hydra callback (configs/train.yaml): starts the journal and installs the signal handler
    when a sweep starts; prints the report and exits with its code when the sweep ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        global _sweep_dir, _sweep_pid, _sweep_ended
        sweep_dir = Path(config.hydra.sweep.dir)
        folder = journal(sweep_dir)
        if not _own_journal(folder):  # another live sweep's: clearing it would make its report false
            print(f"gradclip: {sweep_dir} is the folder of a sweep that is still running "
                  f"({_owner(folder / LAUNCH_FILE)}, holding {folder / LOCK_FILE}): its report would be "
                  f"wrong if this one shared it; wait for it, or give this sweep another name= or "
                  f"hydra.sweep.dir=", file=sys.stderr)
            sys.exit(1)
        _sweep_dir, _sweep_pid, _sweep_ended = sweep_dir, os.getpid(), False
        for old in folder.iterdir():  # the journal of an earlier launch (and any half-written entry)
            if old.name != LOCK_FILE:
                old.unlink(missing_ok=True)
        try:
            write_json_atomic(folder / LAUNCH_FILE, {"process": process_identity()})
        except (OSError, RecordWriteError) as error:  # bookkeeping: the runs' records are what count
            log.warning("sweep journal: %s", error)
        if interrupts.received():  # a signal while Hydra was starting: launch nothing
            raise interrupts.SweepInterrupted(interrupts.received())
        in_process = config.hydra.launcher._target_.endswith(("BasicLauncher", "PopulationLauncher"))
        # Jobs in this process stop at their next step and raise SweepInterrupted themselves
        # (gradclip.train.run_populations); jobs in workers must be told, then the pool aborted.
        interrupts.install(None if in_process else _stop_workers)
        if not in_process:
            # Aborting the pool after a signal kills its workers, and the pool's resource trackers
            # then warn about the semaphores the workers held: noise, not a problem of the runs.
            quiet = ("ignore:resource_tracker:UserWarning:joblib.externals.loky.backend.resource_tracker,"
                     "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker")
            os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global _sweep_ended
        _sweep_ended = True  # a signal from now on has nothing left to stop
        code = report(Path(config.hydra.sweep.dir), interrupts.received())
        _release_journal()  # the folder is free for the next sweep (of this process or another)
        if code:
            sys.exit(code)


def forget() -> None:
    """This process's sweep is over, however it ended: its journal's lock is released and the
    sweep's globals cleared, so that a next sweep of the same process starts from nothing
    (gradclip.train.run_command)."""
    global _sweep_dir, _sweep_pid, _sweep_ended, job_here
    _release_journal()
    _sweep_dir = _sweep_pid = None
    _sweep_ended = job_here = False


def _own_journal(folder: Path) -> bool:
    """Take the journal's lock (flock on ``.sweep/launch.lock``, held until the sweep ends or its
    process dies, however it dies): False if another live process holds it. Where no lock can be
    taken (a file system without flock, a folder that cannot be made) nothing is refused: the
    journal is bookkeeping, and Hydra reports a folder it cannot write."""
    global _lock
    path = folder / LOCK_FILE
    if _lock is not None and _lock[0] == path:  # this process's own earlier sweep here
        return True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    except OSError:
        os.close(fd)
        return True
    _release_journal()
    _lock = (path, fd)
    return True


def _release_journal() -> None:
    global _lock
    if _lock is not None:
        os.close(_lock[1])  # closing the file releases its flock
        _lock = None


def _owner(path: Path) -> str:
    """The process named in a journal's launch.json, in words."""
    try:
        owner = json.loads(path.read_text()).get("process") or {}
        return f"process {owner['pid']} on {owner['host']}"
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return "another process"


def _stop_workers(signum: int) -> None:
    """On a signal in a sweep whose jobs run in worker processes: pass it on to the workers,
    give their runs a moment to record themselves as interrupted, then abort the pool. (If a
    job runs in this very process, joblib with n_jobs=1, it stops at its next step boundary
    and raises SweepInterrupted itself.)"""
    if job_here or _sweep_ended:
        return
    interrupts.forward_to_workers(signum)
    if _sweep_dir is not None:
        _wait_for_jobs(_sweep_dir, WORKER_GRACE_S)
    raise interrupts.SweepInterrupted(signum)


def report_interrupted(signum: int) -> int:
    """The report of a sweep stopped by a signal (from gradclip.train.main), or just the code."""
    if _sweep_dir is not None and in_sweep_process():
        return report(_sweep_dir, signum)
    return interrupts.exit_code(signum)


def report_stopped() -> int:
    """The report of a sweep that an error outside its jobs stopped (Hydra could not write a
    job's folder); 0 if no sweep was running in this process."""
    if _sweep_dir is None or not in_sweep_process():
        return 0
    return max(report(_sweep_dir), 1)


class Progress:
    """How far a launch has got: runs done out of the total, model-steps/s (members x steps per
    second) and the time left at that rate. On a terminal, one line that updates in place twice
    a second; otherwise (a log file, a cluster job) a log line every ``LOG_EVERY_S`` seconds.
    The training loop calls :meth:`advance` every step and :meth:`run_done` as each run ends."""

    LOG_EVERY_S = 30.0

    def __init__(self, runs: int, done: int, model_steps: int, stream=None) -> None:
        self.runs, self.done, self.model_steps = runs, done, model_steps
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.steps_done = 0
        self.start = self.shown = time.monotonic()
        self._width = 0

    def advance(self, model_steps: int) -> None:
        self.steps_done += model_steps
        now = time.monotonic()
        if now - self.shown >= (0.5 if self.tty else self.LOG_EVERY_S):
            self.shown = now
            self.show()

    def run_done(self, count: int = 1, skipped_steps: int = 0) -> None:
        """``count`` runs ended; ``skipped_steps``: the steps a diverged run will not take."""
        self.done += count
        self.model_steps -= skipped_steps

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.steps_done / elapsed if elapsed > 0 else 0.0
        left = max(self.model_steps - self.steps_done, 0)
        eta = _duration(left / rate) if rate > 0 else "?"
        return f"gradclip: {self.done}/{self.runs} runs done, {rate:,.0f} model-steps/s, {eta} left"

    def show(self) -> None:
        text = self.line()
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()
        else:
            log.info(text.removeprefix("gradclip: "))

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
