"""Populations side by side in worker processes (``hydra.launcher.workers=N``).

A population of these small models spends most of its time in Python and in dispatching many
small tensor operations, not in arithmetic, so a second thread adds little (measured on 2 cores:
a 32-member MLP population trains 2,119 model-steps/s with 2 threads, 1,880 with 1) while a
second process with one thread nearly doubles it (two 1-thread processes: 1,841 + 1,830). So a
sweep of several populations trains them in ``N`` worker processes, each with
``torch.get_num_threads() // N`` threads (``threads=`` in the config still wins), each taking
the next population when it is done with one. The jobs are prepared in the sweep's process
(gradclip.train.prepare_job); a worker trains a population exactly as the sweep's process would
(gradclip.train.run_jobs): the same records, journal entries and report lines.

Stop signals: a signal to the sweep's process (``kill PID``, SLURM's SIGTERM) is passed on to
every worker, whose runs end at their next step boundary as ``interrupted``; the populations not
yet begun are journaled as not started, and the sweep reports and exits 128 + the signal
(Ctrl-C reaches the workers directly too). A worker that dies (killed, out of memory) leaves its
runs' records as they are, which the report then reads; the other workers go on. If the sweep's
process itself dies, each worker ends after its current population.
"""

from __future__ import annotations

import logging
import logging.config
import multiprocessing
import os
import time
from collections import deque
from multiprocessing.connection import Connection, wait

from gradclip import interrupts

log = logging.getLogger(__name__)

RELAY_EVERY_S = 0.25  # how often a worker tells the sweep's process how far it got


def run_in_workers(groups: list, workers: int, progress=None, logging_config: dict | None = None) -> None:
    """Train the populations ``groups`` (lists of gradclip.train.Job) in ``workers`` processes."""
    from gradclip import train
    import torch

    context = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
    threads = max(1, torch.get_num_threads() // workers)
    queue = deque(groups)
    processes = {}  # connection -> its worker process
    idle, busy = [], {}  # connections of workers waiting; connection -> the population it trains
    for _ in range(min(workers, len(groups))):
        ours, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(theirs, threads, logging_config), daemon=True,
                                  name="gradclip-worker")
        process.start()
        theirs.close()
        processes[ours] = process
        idle.append(ours)
    stopped = None
    try:
        while queue or busy:
            signum = interrupts.received()
            if signum and stopped is None:
                stopped = signum
                for process in processes.values():  # a signal to this process alone reaches them too
                    if process.is_alive():
                        os.kill(process.pid, signum)
                train._stop([job for group in queue for job in group], signum, raise_in_sweep=False)
                queue.clear()
            while idle and queue:
                conn = idle.pop()
                try:
                    conn.send(queue[0])
                except OSError:  # it died between populations: the others take its share
                    log.warning("worker process %d ended (exit code %s) between populations",
                                processes[conn].pid, processes[conn].exitcode)
                    continue
                busy[conn] = queue.popleft()
            if queue and not busy and not idle:  # no worker left to train the rest
                for job in (job for group in queue for job in group):
                    job.outcome("not_started", "every worker process of the sweep had died")
                queue.clear()
            for conn in wait(list(busy), timeout=0.5):
                try:
                    message = conn.recv()
                except (EOFError, OSError):  # the worker died: its runs' records say how far they got
                    process = processes[conn]
                    process.join(timeout=1)
                    log.warning("worker process %d ended (exit code %s) during a population of %d runs; their "
                                "records read as what they hold", process.pid, process.exitcode, len(busy[conn]))
                    if progress is not None:
                        progress.run_done(len(busy[conn]))
                    del busy[conn]
                    continue
                kind, *values = message
                if kind == "progress" and progress is not None:
                    steps, runs, skipped = values
                    progress.advance(steps)
                    if runs:
                        progress.run_done(runs, skipped)
                elif kind == "idle":
                    del busy[conn]
                    idle.append(conn)
    finally:
        for conn, process in processes.items():
            try:
                conn.send(None)
            except OSError:
                pass
        for process in processes.values():
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    if stopped is not None:
        train._stop_sweep(stopped)


class _Relay:
    """A worker's stand-in for the sweep's gradclip.sweep.Progress: sums what the training loop
    reports and sends it on every RELAY_EVERY_S seconds."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.steps, self.runs, self.skipped, self.sent = conn, 0, 0, 0, time.monotonic()

    def advance(self, model_steps: int) -> None:
        self.steps += model_steps
        if time.monotonic() - self.sent >= RELAY_EVERY_S:
            self.flush()

    def run_done(self, count: int = 1, skipped_steps: int = 0) -> None:
        self.runs += count
        self.skipped += skipped_steps

    def flush(self) -> None:
        if self.steps or self.runs:
            self.conn.send(("progress", self.steps, self.runs, self.skipped))
        self.steps = self.runs = self.skipped = 0
        self.sent = time.monotonic()


def _worker(conn: Connection, threads: int, logging_config: dict | None) -> None:
    """A worker process: train each population it is sent until it is sent None (or the sweep's
    process is gone)."""
    interrupts.install()
    if logging_config:
        logging.config.dictConfig(logging_config)
    import torch

    from gradclip.train import run_jobs

    torch.set_num_threads(threads)
    relay = _Relay(conn)
    while True:
        try:
            group = conn.recv()
        except (EOFError, OSError):
            return
        if group is None:
            return
        run_jobs(group, len(group), relay)
        relay.flush()
        conn.send(("idle",))
