"""Populations side by side in worker processes (``hydra.launcher.workers=N``).

A population of these small models spends most of its time in Python and in dispatching many
small tensor operations, not in arithmetic, so a second thread adds little (measured on 2 cores:
a 32-member MLP population trains 2,119 model-steps/s with 2 threads, 1,880 with 1) while a
second process with one thread nearly doubles it (two 1-thread processes: 1,841 + 1,830). So a
sweep of several populations trains them in ``N`` worker processes, each with
``torch.get_num_threads() // min(N, populations)`` threads (``threads=`` in the config still
wins), each taking the next population when it is done with one. The jobs are prepared in the
sweep's process (gradclip.train.prepare_job) while the workers start, so that their imports
overlap that work; a worker trains a population exactly as the sweep's process would
(gradclip.train.run_populations): the same records, journal entries and report lines.

Stop signals: a signal to the sweep's process (``kill PID``, SLURM's SIGTERM) is passed on to
every worker, whose runs end at their next step boundary as ``interrupted``; the populations not
yet begun are journaled as not started, and the sweep reports and exits 128 + the signal
(Ctrl-C reaches the workers directly too). A worker is sent no population and no signal until
it says it is ready, its stop handler installed (a spawned process does not keep the sweep's
signal mask); only a Ctrl-C in the first tenth of a second of a worker's life can still end it
before that, and then it had no population. A signal to one worker alone ends its runs the same
way, and it takes no more populations: the others do. A worker that dies (killed, out of
memory) leaves its runs' records as they are, which the report then reads, and the runs of its
population that never began are journaled as failed; the other workers go on. If the sweep's process fails, it stops the
workers' runs before it reports; if it dies, each worker ends after its current population.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait

from gradclip import interrupts  # (only this at the top: a worker installs its stop handler right after)

log = logging.getLogger(__name__)

RELAY_EVERY_S = 0.25  # how often a worker tells the sweep's process how far it got
STOP_GRACE_S = 30.0  # how long a worker may take to end its runs once told to stop


_keeping = False  # within kept(): a sweep's workers wait for the next sweep of this process
_kept: "Workers | None" = None  # those workers


@contextmanager
def kept():
    """Within it, the worker processes of a sweep are kept for the next sweep of this process
    (scripts/reproduce.py runs its sweeps in one process: the workers' start, about 2.5 s of
    imports, is then paid once, not once a sweep); they end when it ends."""
    global _keeping, _kept
    _keeping = True
    try:
        yield
    finally:
        _keeping = False
        if _kept is not None:
            _kept.close()
            _kept = None


class Workers:
    """``count`` worker processes, started before their populations are known: a sweep starts
    them as its preparation meets the first job without a finished record (a relaunch of a
    finished sweep starts none), so that their imports (torch: about 2.5 s a process here)
    overlap that preparation. Their logging is set up as the sweep's: ``logging_config``
    (Hydra's ``hydra_logging``) and ``verbose`` (``hydra.verbose``: true, or the loggers to show
    at DEBUG). :meth:`run` trains populations in them; :meth:`release` (the sweep calls it
    whatever happens) keeps them for the next sweep within :func:`kept`, or else :meth:`close`
    ends them (idempotent)."""

    def __init__(self, count: int, logging_config: dict | None = None, verbose: bool | str | list = False) -> None:
        context = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
        self.processes: dict[Connection, multiprocessing.Process] = {}  # connection -> its worker process
        self.starting: set[Connection] = set()  # workers not yet ready (their stop handler not installed)
        self.settings = (logging_config, verbose)
        # Whether the next sweep may use them (gradclip.pool.kept): False from the moment a run
        # begins until it ends with every worker idle, none lost and no stop signal.
        self.reusable = True
        # A spawned process does not keep this one's signal mask, so a worker cannot be shielded
        # while it starts: it says "ready" once its stop handler is installed, and until then it
        # is sent neither a population nor a signal (run).
        try:
            for _ in range(count):
                ours, theirs = context.Pipe()
                process = context.Process(target=_worker, args=(theirs, logging_config, verbose), daemon=True,
                                          name="gradclip-worker")
                process.start()
                theirs.close()
                self.processes[ours] = process
                self.starting.add(ours)
        except BaseException:  # (a process that cannot be started): none is left behind
            self.close(kill=True)
            raise

    @classmethod
    def start(cls, count: int, logging_config: dict | None = None, verbose: bool | str | list = False) -> "Workers":
        """``count`` workers: those :func:`kept` from this process's last sweep if they are as
        many, set up alike and every one alive, else new ones."""
        global _kept
        if (_kept is not None and len(_kept.processes) == count and _kept.settings == (logging_config, verbose)
                and _kept.alive()):
            return _kept
        if _kept is not None:
            _kept.close()
        workers = cls(count, logging_config, verbose)
        if _keeping:
            _kept = workers
        return workers

    def release(self, kill: bool = False) -> None:
        """The sweep is done with them: within :func:`kept`, they wait for the next sweep if every
        one is alive and idle and no stop signal came (a worker that a signal stopped, or that
        died, ends them all); otherwise :meth:`close`."""
        global _kept
        if self is _kept and _keeping and self.reusable and self.alive() and not interrupts.received():
            return
        if self is _kept:
            _kept = None
        self.close(kill)

    def alive(self) -> bool:
        return bool(self.processes) and all(process.is_alive() for process in self.processes.values())

    def close(self, kill: bool = False) -> None:
        """Tell every worker to end and wait for it (``kill``: end them at once, as when the sweep
        stops before any population was sent)."""
        for conn, process in self.processes.items():
            if kill:
                process.kill()
                continue
            try:
                conn.send(None)
            except OSError:
                pass
        for process in self.processes.values():
            process.join(timeout=STOP_GRACE_S)
            if process.is_alive():
                process.kill()
        self.processes, self.starting = {}, set()

    def run(self, groups: list, progress=None) -> None:
        """Train the populations ``groups`` (lists of gradclip.train.Job) in the workers, each
        with ``torch.get_num_threads() // min(workers, populations)`` threads, then release them."""
        from gradclip import sweep, train
        import torch

        processes = self.processes
        threads = max(1, torch.get_num_threads() // min(len(processes), len(groups)))
        queue = deque(groups)
        self.reusable = False  # until every population is done with no worker lost
        lost = False
        starting = self.starting  # connections of workers not yet ready (their stop handler not installed)
        idle = [conn for conn in processes if conn not in starting]  # workers waiting (kept from a last sweep)
        busy = {}  # connection -> the population it trains
        reported = {}  # connection -> runs of its population it has reported done

        def gone(conn: Connection, why: str) -> None:
            """A worker that will train no more: the runs of its population that never began are
            journaled as failed; those that began read as their records say."""
            nonlocal lost
            lost = True
            group = busy.pop(conn, [])
            if group:
                log.warning("worker process %d %s during a population of %d runs; their records read as what "
                            "they hold", processes[conn].pid, why, len(group))
            for job in group:
                if not sweep.journal_entry(job.sweep_dir, job.run_dir.name):
                    job.outcome("failed", f"its worker process {why} before the run began")
            if progress is not None and group:
                progress.run_done(len(group) - reported.get(conn, 0))

        stopped = None
        try:
            while queue or busy:  # (with a queue, workers still starting are waited for)
                signum = interrupts.received()
                if signum and stopped is None:
                    stopped = signum
                    for conn, process in processes.items():  # a signal to this process alone reaches them too
                        if conn not in starting and process.is_alive():  # (one still starting gets no population)
                            os.kill(process.pid, signum)
                    train._stop([job for group in queue for job in group], signum, raise_in_sweep=False)
                    queue.clear()
                while idle and queue:
                    conn = idle.pop()
                    try:
                        conn.send((threads, queue[0]))
                    except OSError:  # it died between populations: the others take its share
                        lost = True
                        log.warning("worker process %d ended (exit code %s) between populations",
                                    processes[conn].pid, processes[conn].exitcode)
                        continue
                    busy[conn], reported[conn] = queue.popleft(), 0
                if queue and not busy and not idle and not starting:  # no worker left to train the rest
                    for job in (job for group in queue for job in group):
                        job.outcome("not_started", "every worker process of the sweep had ended")
                    queue.clear()
                for conn in wait([*busy, *starting], timeout=0.5):
                    try:
                        kind, *values = conn.recv()
                    except (EOFError, OSError):  # the worker died (killed, out of memory)
                        processes[conn].join(timeout=1)
                        if conn in starting:
                            starting.discard(conn)
                            lost = True
                            log.warning("worker process %d ended (exit code %s) as it started",
                                        processes[conn].pid, processes[conn].exitcode)
                        else:
                            gone(conn, f"ended (exit code {processes[conn].exitcode})")
                        continue
                    if kind == "ready":
                        starting.discard(conn)
                        idle.append(conn)
                    elif kind == "progress":
                        steps, runs, skipped = values
                        reported[conn] += runs
                        if progress is not None:
                            progress.advance(steps)
                            if runs:
                                progress.run_done(runs, skipped)
                    elif kind == "idle":
                        del busy[conn]
                        idle.append(conn)
                    elif kind == "stopped" and stopped is not None:  # the sweep's own stop, passed on
                        del busy[conn]
                    elif kind == "stopped":  # a signal to that worker alone: it takes no more populations
                        gone(conn, f"was stopped by {interrupts.name(values[0])}")
            self.reusable = stopped is None and not lost
        except BaseException as error:  # this process failed: stop the workers' runs, account for the rest
            log.error("the sweep's process failed (%s: %s); stopping its worker processes", type(error).__name__, error)
            for conn in busy:
                if processes[conn].is_alive():
                    os.kill(processes[conn].pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while busy and time.monotonic() < deadline:
                for conn in wait(list(busy), timeout=0.5):
                    try:
                        if conn.recv()[0] in ("idle", "stopped"):
                            busy.pop(conn)
                    except (EOFError, OSError):
                        busy.pop(conn)
            for job in (job for group in queue for job in group):
                job.outcome("not_started", f"the sweep's process failed: {type(error).__name__}")
            raise
        finally:
            self.release()
        if stopped is not None:
            train._stop_sweep(stopped)


class _Relay:
    """A worker's stand-in for the sweep's gradclip.sweep.Progress: sums what the training loop
    reports and sends it on every RELAY_EVERY_S seconds. If the sweep's process is gone, the
    population trains on without it."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.steps, self.runs, self.skipped, self.sent = conn, 0, 0, 0, time.monotonic()
        self.lost = False

    def advance(self, model_steps: int) -> None:
        self.steps += model_steps
        if time.monotonic() - self.sent >= RELAY_EVERY_S:
            self.flush()

    def run_done(self, count: int = 1, skipped_steps: int = 0) -> None:
        self.runs += count
        self.skipped += skipped_steps

    def flush(self) -> None:
        if (self.steps or self.runs) and not self.lost:
            try:
                self.conn.send(("progress", self.steps, self.runs, self.skipped))
            except OSError:
                self.lost = True
        self.steps = self.runs = self.skipped = 0
        self.sent = time.monotonic()


def _worker(conn: Connection, logging_config: dict | None, verbose: bool | str | list) -> None:
    """A worker process: train each population it is sent (with the number of threads sent
    with it) until it is sent None, the sweep's process is gone, or a stop signal reached it."""
    interrupts.install()
    try:
        conn.send(("ready",))  # from now on a stop signal is noted, not fatal
    except OSError:  # the sweep's process is gone
        return
    logging.raiseExceptions = False  # as in the sweep's process: a log that cannot be written is no crash
    if logging_config:
        from hydra.core.utils import configure_log
        from omegaconf import OmegaConf

        configure_log(OmegaConf.create(logging_config), OmegaConf.create(verbose) if isinstance(verbose, list) else verbose)
    import torch

    from gradclip.train import run_populations

    relay = _Relay(conn)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        threads, group = message
        torch.set_num_threads(threads)
        log.debug("worker process %d: a population of %d runs", os.getpid(), len(group))
        run_populations([group], relay)
        relay.flush()
        try:
            signum = interrupts.received()
            conn.send(("stopped", signum) if signum else ("idle",))
        except OSError:  # the sweep's process is gone: nothing more will come
            return
        if signum:
            return
