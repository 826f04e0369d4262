"""``python -m gradclip.train``: the Hydra entry point (one job, or a sweep of jobs with ``-m``).

Each job trains one run (gradclip.runner), says in one line what happened and exits with a code
that says it; in a sweep, each job's outcome goes to the sweep's journal instead
(gradclip.sweep), whose report ends the sweep. Hydra's own input errors are one line and exit 2.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import sys
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gradclip import interrupts  # standard library only: installed before Hydra's imports


def _idle_worker_exits(signum: int) -> None:
    """A joblib worker between jobs has nothing to stop: a signal ends it (an orphaned pool,
    whose parent was killed, would otherwise ignore SIGTERM and live on)."""
    from gradclip import sweep

    if not sweep.job_here:
        os._exit(interrupts.exit_code(signum))


if __name__ == "__main__":  # python -m gradclip.train: an early Ctrl-C is noted, not a traceback
    interrupts.install()
elif multiprocessing.current_process().name.startswith("LokyProcess"):
    interrupts.install(_idle_worker_exits)

import hydra  # noqa: E402
import hydra._internal.utils as hydra_utils  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import CompactHydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402


from gradclip import CONFIG_DIR, sweep  # noqa: E402
from gradclip.checks import ConfigError  # noqa: E402
from gradclip.records import (SUMMARY_FILE, RecordError, RecordWriteError, RunRecorder, process_identity,  # noqa: E402
                              run_state)

if TYPE_CHECKING:
    from gradclip.config import ResolvedConfigs

# Torch (about 2 s of imports) loads with the first job a process prepares (gradclip.config, and
# gradclip.runner when it trains), not here: a sweep whose first job is to train composes the
# sweep with Hydra and starts its worker processes (gradclip.pool) first, so that their imports
# overlap its own.

log = logging.getLogger("gradclip.train")


# -- Hydra entry point ----------------------------------------------------------------------------


def _dirname(override_dirname: str) -> str:
    """A job's directory name from its overrides: readable, filesystem-safe, short enough."""
    name = re.sub(r"[^A-Za-z0-9=,._+-]", "_", override_dirname) or "default"
    if len(name) > 150:
        name = name[:120] + "-" + hashlib.sha1(override_dirname.encode()).hexdigest()[:12]
    return name


OmegaConf.register_new_resolver("gradclip_dirname", _dirname, replace=True)


@dataclass
class Job:
    """One Hydra job that is to train: its config and folder, and where its outcome goes."""

    cfg: DictConfig
    run_dir: Path
    sweep_dir: Path | None  # None: a single run (python -m gradclip.train without -m)

    def outcome(self, kind: str, detail: str = "", code: int = 1) -> None:
        """Journal this job's outcome in a sweep; end the process of a single run with ``code``."""
        if self.sweep_dir is not None:
            sweep.record_job(self.sweep_dir, self.run_dir.name, kind, detail)
        elif code:
            sys.exit(code)


def _job(cfg: DictConfig) -> None:
    """One Hydra job (the task function of the basic, joblib and submitit launchers): train,
    then say in one line what happened, and exit with a code that says it (a single run) or
    note it in the sweep's journal (gradclip.sweep: a job's failure never stops the other
    jobs, and the sweep's report and exit code count it)."""
    job = prepare_job(cfg)
    if job is not None:
        run_jobs([job])


def prepare_job(cfg: DictConfig, run_dir: Path | None = None, sweep_dir: Path | None = None) -> Job | None:
    """Everything about a job that comes before training: a stop signal already received, bad
    input, and a record that is finished already or must not be touched. Each ends the job
    here (journaled, or the process's exit code); a job that is to train is returned. Its
    folder and its sweep's come from HydraConfig unless given (the population launcher)."""
    global _job_began
    _job_began = True
    if not interrupts.installed():  # a worker process of the joblib launcher
        interrupts.install(_idle_worker_exits)
    if run_dir is None:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    multirun = sweep_dir is not None
    job = Job(cfg, Path(run_dir), Path(sweep_dir) if multirun else None)
    signum = interrupts.received()
    if signum:
        if not multirun:
            print(f"gradclip: stopped by {interrupts.name(signum)} before the run began; nothing recorded",
                  file=sys.stderr)
        job.outcome("not_started", f"{interrupts.name(signum)} before the job began", interrupts.exit_code(signum))
        _stop_sweep(signum)
        return None
    from gradclip.config import resolve_config, validate_resolved
    from gradclip.resume import existing_record

    try:
        config = resolve_config(cfg)
        validate_resolved(cfg, config)
        finished = existing_record(run_state(job.run_dir), job.run_dir, config, bool(cfg.rerun))
    except ConfigError as error:
        _bad_input(job, error)
        return None
    except RecordError as error:  # a record that must not be touched: corrupt, or live elsewhere
        print(f"gradclip: {error}", file=sys.stderr)
        job.outcome("failed", str(error), 1)
        return None
    if finished:
        log.info("%s already holds this %s run; skipped (rerun=true trains it again)", job.run_dir, finished["status"])
        job.outcome("skipped", code=0)
        return None
    # Resolved now, with this job's HydraConfig and environment: a population trains later,
    # outside them (${hydra:...}, ${oc.env:...} and ${now:...} keep their values).
    job.cfg = _resolved().create(config)  # OmegaConf.create(config), faster
    return job


_resolved_configs = None  # the job configs prepare_job has made, by shape (gradclip.config.ResolvedConfigs)


def _resolved() -> ResolvedConfigs:
    """This process's ResolvedConfigs, made at its first job (a module-level object, not a cached
    function: the joblib launcher pickles this module's functions by value)."""
    global _resolved_configs
    if _resolved_configs is None:
        from gradclip.config import ResolvedConfigs

        _resolved_configs = ResolvedConfigs()
    return _resolved_configs


def run_jobs(jobs: list[Job], max_members: int = 1, progress: sweep.Progress | None = None) -> None:
    """Train prepared jobs, as populations of up to ``max_members`` runs of jobs that differ only
    in POPULATION_KEYS (gradclip.config): :func:`run_populations` of :func:`populations`."""
    run_populations(populations(jobs, max_members), progress)


def run_populations(groups: list[list[Job]], progress: sweep.Progress | None = None) -> None:
    """Train each population of ``groups`` in turn and report each job's outcome. After a stop
    signal the jobs not begun are journaled as not started and the sweep stops."""
    queue = deque(groups)
    while queue:
        group = queue.popleft()
        signum = interrupts.received()
        if signum:
            return _stop([job for rest in (group, *queue) for job in rest], signum)
        summaries = _train_population(group, progress)
        if summaries is None:  # vmap cannot batch this model: one run at a time
            queue.extendleft([job] for job in reversed(group))
            continue
        signum = interrupts.received()
        if signum and any(summary["status"] == "interrupted" for summary in summaries):
            return _stop([job for rest in queue for job in rest], signum)


def _stop(not_begun: list[Job], signum: int, raise_in_sweep: bool = True) -> None:
    """Journal the jobs a stop signal kept from beginning, then stop the sweep (unless the
    caller will: gradclip.pool, once its workers are done)."""
    for job in not_begun:
        job.outcome("not_started", f"{interrupts.name(signum)} before its population began",
                    interrupts.exit_code(signum))
    if raise_in_sweep:
        _stop_sweep(signum)


def _train_population(group: list[Job], progress: sweep.Progress | None) -> list[dict] | None:
    """Train one population and report each job's outcome; None if vmap cannot batch its model
    (nothing was written)."""
    from gradclip.population import PopulationUnsupported
    from gradclip.runner import train_population

    for job in group:
        job.outcome("started", code=0)
    multirun = group[0].sweep_dir is not None
    sweep.job_here = True
    try:
        summaries = train_population([job.cfg for job in group], [job.run_dir for job in group],
                                     reraise=not multirun, progress=progress,
                                     wandb_dirs=[job.sweep_dir.resolve() if multirun else None for job in group])
    except PopulationUnsupported as error:
        log.info("%d runs train one at a time: %s", len(group), error)
        return None
    except ConfigError as error:  # found only with the data or the model at hand
        for job in group:
            _bad_input(job, error)
        return []
    except RecordError as error:  # a record that must not be touched: corrupt, or live elsewhere
        print(f"gradclip: {error}", file=sys.stderr)
        for job in group:
            job.outcome("failed", str(error), 1)
        return []
    except Exception as error:  # a crash before the records began (building the model, the data)
        if not multirun:
            raise  # Hydra prints the traceback
        message = f"{type(error).__name__}: {error}"
        print(f"gradclip: run failed: {message}", file=sys.stderr)
        for job in group:
            _record_if_empty(job.run_dir, {"status": "failed", "error": message, "traceback": traceback.format_exc()})
            job.outcome("failed", message, 1)
        return []
    finally:
        sweep.job_here = False
    for job, summary in zip(group, summaries):
        _report(job, summary)
    return summaries


# A population step's fixed part (Python, kernel launches, the optimiser's bookkeeping) in the
# units of its per-example part, members x batch size: measured on the MNIST-1D MLP, where 32
# members at B = 16 took 30 s and at B = 256 103 s for the same steps (per-sample clipping;
# batch clipping: 25 s and 90 s), a step costs about FIXED + members x B.
FIXED_STEP_COST = 3000


def population_cost(group: list[Job]) -> int:
    """A population's estimated training cost, steps x (FIXED_STEP_COST + members x batch size):
    only its order against the others of a sweep is used. It does not know the model or the
    clipping method, so populations that differ only in those (stability's deep tanh MLP and MLP)
    tie and keep the sweep's order, nor which runs will diverge and end early."""
    cfg = group[0].cfg
    return int(cfg.steps) * (FIXED_STEP_COST + len(group) * int(cfg.batch_size))


def populations(jobs: list[Job], max_members: int, workers: int = 1) -> list[list[Job]]:
    """The jobs grouped by what a population must share (the groups in order of their first job),
    each group cut into populations of at most ``max_members``; then, while the ``workers`` cannot
    share them evenly (fewer populations than workers included), the one of most members is
    halved, never below two members: a population of one takes the plain model path, which rounds
    differently, while populations of two or more give the same results (bit for bit in the
    tests; at worst in the 7th digit, where batched products of another size round otherwise).
    Returned costliest first (:func:`population_cost`; ties in that order): gradclip.pool hands
    them out in this order to whichever worker is free, so that each worker's last population is
    a short one (longest processing time first). In the order of the sweep instead, the 256-example
    population of eq22_network's batch-size arm came last and one worker waited 48-72 s for it.

    Why no further halving: these small models' populations are bound mostly by their number of
    steps, not of members (a step's Python and dispatch cost is paid once for the whole
    population), so two populations one after the other in a worker take nearly twice as long
    as one of twice the size. Where a sweep's populations take about as long as each other (one
    step count and one batch size), halving to an even number per worker costs no time where
    steps bind (ceil(P / workers) rounds either way) and evens the workers' share where members
    bind. Where they do not (eq22_network's batch sizes), the costliest-first order is what evens
    the workers; halving by members, not by cost, is kept because which runs share a population
    decides their last digits."""
    from gradclip.config import population_key

    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(population_key(OmegaConf.to_container(job.cfg, resolve=True)), []).append(job)
    cut = [group[i : i + max_members] for group in groups.values() for i in range(0, len(group), max(max_members, 1))]
    while len(cut) % workers and max(map(len, cut), default=0) >= 4:
        k = max(range(len(cut)), key=lambda i: len(cut[i]))
        half = (len(cut[k]) + 1) // 2
        cut[k : k + 1] = [cut[k][:half], cut[k][half:]]
    return sorted(cut, key=population_cost, reverse=True)


def _bad_input(job: Job, error: ConfigError) -> None:
    """One clear line, no traceback: the input is wrong, not the code."""
    print(f"gradclip: bad input: {error}", file=sys.stderr)
    if job.sweep_dir is not None:
        _record_if_empty(job.run_dir, {"status": "failed", "bad_input": True, "error": str(error)})
    job.outcome("bad_input", str(error), 2)


def _report(job: Job, summary: dict) -> None:
    """Say in one line what a trained job did, and journal it (a sweep) or exit with it."""
    status, run_dir, multirun = summary["status"], job.run_dir, job.sweep_dir is not None
    if summary.get("skipped"):
        log.info("%s already holds this %s run; skipped (rerun=true trains it again)", run_dir, status)
        return job.outcome("skipped", code=0)
    if status == "failed":
        recorded = (f"and its summary could not be written either ({summary['summary_write_error']})"
                    if "summary_write_error" in summary else f"recorded in {run_dir / SUMMARY_FILE}")
        print(f"gradclip: run failed: {summary['error']}; {recorded}", file=sys.stderr)
        return job.outcome("failed", summary["error"], 1)
    if status == "interrupted":
        signum = interrupts.received()
        again = " (the same command trains it again)" if multirun else ""
        print(f"gradclip: interrupted by {summary['interrupted_reason']}; recorded in {run_dir / SUMMARY_FILE}{again}",
              file=sys.stderr)
        return job.outcome("interrupted", summary["interrupted_reason"], interrupts.exit_code(signum))
    log.info("%s: %s after %s steps -> %s", status, summary.get("clipper"), summary.get("steps_completed"), run_dir)
    job.outcome(status, summary.get("diverged_reason") or "", code=0)


def _record_if_empty(run_dir: Path, summary: dict) -> None:
    """Give a sweep job's folder that holds no record yet a summary that says why it has none
    (load_runs shows it); a record already there, finished or not, is left as it is."""
    if not (run_dir / SUMMARY_FILE).exists():
        try:
            RunRecorder(run_dir).write_summary(summary | {"process": process_identity()})
        except RecordWriteError:
            pass


def _stop_sweep(signum: int) -> None:
    """After a signal, a sweep whose jobs run in this process launches no more of them."""
    if sweep.in_sweep_process():
        raise interrupts.SweepInterrupted(signum)


_hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(_job)
_job_began = False  # set by _job: an error after it is the run's, not Hydra's
_hydra_run_and_report = hydra_utils.run_and_report


def _run_and_report(func):
    """Hydra's error reporting, with its own input errors (an unknown option of a config group,
    an override that does not parse or names no key) as one line of bad input and exit 2, and a
    folder Hydra cannot write (a full disk stops a sweep there) as one line, the sweep's report
    and exit 1."""

    def guarded():
        try:
            return func()
        except CompactHydraException as error:
            print(f"gradclip: bad input: {_hydra_message(error)}", file=sys.stderr)
            sys.exit(2)
        except Exception as error:
            if sweep.in_sweep_process():  # a sweep's jobs never raise: this is the launcher's error
                print(f"gradclip: the sweep stopped: {_launcher_error(error)}", file=sys.stderr)
                sys.exit(sweep.report_stopped() or 1)
            if isinstance(error, OSError) and not _job_began:  # Hydra could not make the run's folder
                where = f" {error.filename}" if error.filename else " its files"
                print(f"gradclip: Hydra cannot write{where}: {error.strerror or error}", file=sys.stderr)
                sys.exit(1)
            raise  # a single run's crash: Hydra prints the traceback

    return _hydra_run_and_report(guarded)


def _launcher_error(error: Exception) -> str:
    """What stopped a sweep outside its jobs, in one line: Hydra that could not write a job's
    folder (a full disk), or a worker process that died (joblib's TerminatedWorkerError)."""
    if isinstance(error, OSError) and error.filename:
        return f"Hydra cannot write {error.filename}: {error.strerror or error}"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _hydra_message(error: Exception) -> str:
    """A Hydra composition error in one line: the options of a group as a list, without the
    config search path, and without the hint to add an unknown key with '+' (which the schema
    check would then reject)."""
    text = str(error).split("\nConfig search path")[0]
    text = re.sub(r"\s*Available options in '(.+?)':\s*\n((?:\s*\t.*\n?)+)",
                  lambda m: f"; available options in '{m[1]}': " + ", ".join(m[2].split()), text)
    if "To append to your config use" in text and error.__cause__ is not None:
        text = re.split(r"\.\s*To append", text)[0] + f": {str(error.__cause__).splitlines()[0]}"
    return re.sub(r"\s*\n\s*", " ", text).strip()


def main() -> None:
    """``python -m gradclip.train`` and ``gradclip-train``: Hydra's main, with stop signals noted
    rather than raised (gradclip.interrupts), Hydra's own input errors exiting 2, and a sweep
    stopped by a signal still printing its report (exit 128 + the signal)."""
    global _job_began
    _job_began = False
    interrupts.install()
    # A log handler that cannot write (Hydra's job log on a full disk) must not print a
    # traceback per line: the run's own record says what failed.
    logging.raiseExceptions = False
    # Hydra looks run_and_report up in this module each time (hydra-core 1.3, pinned);
    # tests/test_faults.py fails if that changes.
    hydra_utils.run_and_report = _run_and_report
    try:
        _hydra_main()
    except interrupts.SweepInterrupted as stop:
        sys.exit(sweep.report_interrupted(stop.signum))


def run_command(argv: list[str]) -> int:
    """``python -m gradclip.train <argv>`` in this process, with its exit code returned instead
    of exiting (scripts/reproduce.py runs its sweeps so: torch is imported once, and with
    gradclip.pool.kept the worker processes start once, not once a sweep)."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "gradclip.train", *argv]
    try:
        main()
    except SystemExit as exit:
        if isinstance(exit.code, str):  # sys.exit("message") prints it, as the interpreter would
            print(exit.code, file=sys.stderr)
        return exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    finally:
        sys.argv = saved
        sweep.forget()
        interrupts.install()  # (a sweep of joblib workers installs a handler of its own: not past its end)
    return 0


if __name__ == "__main__":
    main()
