"""``hydra/launcher=population``: Hydra's basic launcher, with the training of the jobs grouped.

Each job is set up as the basic launcher sets it up (its folder, its ``.hydra`` files, Hydra's
callbacks) and checked (bad input, a finished or untouchable record: gradclip.train.prepare_job);
then the jobs that are to train and differ only in gradclip.config.POPULATION_KEYS train as
populations of at most ``max_members`` runs (gradclip.train.run_populations), each writing the same job
folder and record that a job of its own would. A model that cannot train under vmap (BatchNorm)
falls back to one run at a time, with one log line saying why. Progress (runs done, model-steps/s,
time left) goes to stderr.

``backend=local`` (the default) trains the populations in this process, or side by side in
``workers`` worker processes (gradclip.pool; the largest populations are then halved until the workers
share them evenly). ``backend=submitit_slurm``
(a SLURM cluster) or ``submitit_local`` (to try it here) submits one task per population through
submitit, with ``hydra.launcher.submitit`` passed to ``executor.update_parameters`` (for example
``{timeout_min: 60, slurm_partition: gpu, gpus_per_node: 1}``); the jobs are prepared here, and
each task trains its population and journals its runs' outcomes into the sweep's journal.
"""


import gc
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.gradclip_launcher.job_files import TemplateFiles, job_yaml
from hydra_plugins.gradclip_launcher.sweep_configs import Derived, SweepConfigs

log = logging.getLogger(__name__)


BACKENDS = ("local", "submitit_local", "submitit_slurm")
FREEZE_EVERY = 16  # jobs (_prepare)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.gradclip_launcher.population_launcher.PopulationLauncher"
    # The most runs one population trains at once (memory grows with it; 32-64 saturate a CPU).
    max_members: int = 64
    # local: worker processes on this machine (gradclip.pool), each training one population at
    # a time with torch.get_num_threads() // workers threads; 1: this process alone.
    workers: int = 1
    # local: this machine; submitit_slurm / submitit_local: one submitit task per population.
    backend: str = "local"
    # Passed to submitit's executor.update_parameters (timeout_min, slurm_partition, gpus_per_node, ...).
    submitit: Any = None
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf,
                             provider="gradclip")


class PopulationLauncher(Launcher):
    def __init__(self, max_members: int = 64, workers: int = 1, backend: str = "local", submitit: Any = None,
                 submitit_folder: str = ".submitit/%j") -> None:
        self.max_members, self.workers = int(max_members), int(workers)
        self.backend, self.submitit_folder = backend, str(submitit_folder)
        self.submitit = dict(OmegaConf.to_container(submitit) if isinstance(submitit, DictConfig) else submitit or {})
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context
        # Each job's config from a template where Hydra's composition would only change values:
        # the sweeper's check of the batch and this launcher both call load_sweep_config.
        loader = hydra_context.config_loader
        if not isinstance(loader.load_sweep_config, SweepConfigs):
            loader.load_sweep_config = SweepConfigs(loader)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from gradclip.pool import Workers

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        if self.max_members < 1:
            raise ValueError(f"hydra.launcher.max_members={self.max_members} is not allowed: must be >= 1")
        if self.workers < 1:
            raise ValueError(f"hydra.launcher.workers={self.workers} is not allowed: must be >= 1")
        if self.backend not in BACKENDS:
            raise ValueError(f"hydra.launcher.backend={self.backend!r} is not one of: {', '.join(BACKENDS)}")
        if self.workers > 1 and self.backend != "local":
            raise ValueError(f"hydra.launcher.workers={self.workers} applies to hydra.launcher.backend=local only "
                             f"(with {self.backend}, each population is a task of its own)")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs as populations of up to {self.max_members} runs")
        if self.config.hydra.job.chdir:
            log.warning("hydra.job.chdir=true is not applied by the population launcher: the runs of a "
                        "population share one working directory")
        configs = self.hydra_context.config_loader.load_sweep_config  # SweepConfigs, installed by setup
        runs, pending = [], []
        workers = None

        def start_workers() -> None:
            """Called as the preparation below meets the first job that may train: the workers
            start then (or are kept from this process's last sweep: gradclip.pool.kept), so
            that their imports overlap the preparation of the rest; a sweep whose every job is
            finished (a relaunch) starts none."""
            nonlocal workers
            if workers is None:
                verbose = self.config.hydra.verbose
                workers = Workers.start(min(self.workers, len(job_overrides)),
                                        OmegaConf.to_container(self.config.hydra.hydra_logging, resolve=True),
                                        OmegaConf.to_container(verbose) if OmegaConf.is_config(verbose) else verbose)

        side_by_side = self.workers > 1 and self.backend == "local" and len(job_overrides) > 1
        try:
            self._prepare(job_overrides, initial_job_idx, sweep_dir, configs, runs, pending,
                          start_workers if side_by_side else None)
            if self.backend != "local":
                self._submit(pending)
                return runs
            self._train(pending, len(job_overrides), workers)
        finally:
            if workers is not None:
                workers.release(kill=True)  # those the training did not use (it releases the others itself)
        return runs

    def _prepare(self, job_overrides, initial_job_idx, sweep_dir: Path, configs, runs: list, pending: list,
                 may_train: Callable[[], None] | None = None) -> None:
        """Each job's folder, .hydra files, callbacks and checks (``_job``): its JobReturn into
        ``runs``, and the job into ``pending`` if it is to train. ``may_train()``, if given, is
        called before the checks of the first job whose summary does not say finished (or
        that has rerun=true), and again for each job that is to train."""
        from gradclip.train import prepare_job

        met = may_train is None

        def before(config: DictConfig, output_dir: Path) -> None:
            """The summary alone is read (prepare_job then reads the whole record): a relaunch
            of thousands of finished jobs reads each summary twice, each config.yaml once."""
            nonlocal met
            if not met and (config.get("rerun") or not _says_finished(output_dir)):
                met = True
                may_train()

        configs.checking = False  # each job's own config from here on, not the sweeper's check
        # Every job's config stays alive (its JobReturn holds it), and the interpreter's full
        # garbage collections, each of which walks every live object, took a third of the
        # preparation. So what lived before and what each FREEZE_EVERY jobs leave is frozen
        # (gc.freeze: left out of collections), after a collection of the young objects (the
        # garbage is among them), until the jobs are prepared. Not in a process that freezes
        # objects itself: unfreezing would undo its own.
        freezing = gc.get_freeze_count() == 0
        try:
            for n, (idx, overrides) in enumerate(enumerate(job_overrides, start=initial_job_idx)):
                if freezing and n % FREEZE_EVERY == 0:
                    gc.collect(1)
                    gc.freeze()
                log.debug(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                sweep_config, derived = configs.job(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = idx
                    sweep_config.hydra.job.num = idx
                ret = self._job(sweep_config, sweep_dir, prepare_job, derived, before)
                runs.append(ret)
                if ret.return_value is not None:
                    if may_train is not None:
                        may_train()
                    pending.append(ret.return_value)
        finally:
            configs.checking = True  # the sweeper checks the next batch
            if freezing:
                gc.unfreeze()  # all of it collectable again, as it was

    def _train(self, pending: list, total: int, workers) -> None:
        """Train the pending jobs as populations: in the worker processes ``workers`` (started by
        launch) where there are two populations or more, else in this process."""
        from gradclip import sweep
        from gradclip.train import populations, run_populations

        progress = sweep.Progress(total, total - len(pending), sum(int(job.cfg.steps) for job in pending))
        try:
            # With workers, the largest populations halved until every worker has an even share.
            groups = populations(pending, self.max_members, workers=self.workers)
            if workers is not None and len(groups) > 1:
                log.info(f"{len(groups)} populations in {min(self.workers, len(groups))} worker processes")
                workers.run(groups, progress)
            else:
                if workers is not None:
                    workers.release(kill=True)  # one population or none: this process trains it
                run_populations(groups, progress)
        finally:
            progress.close()

    def _submit(self, pending: list) -> None:
        """One submitit task per population; wait for them all (each journals its own runs)."""
        import submitit

        from gradclip.train import populations

        for job in pending:  # the task's working directory may differ from this one
            job.sweep_dir = job.sweep_dir.resolve()
        groups = populations(pending, self.max_members)
        if not groups:
            return
        executor = submitit.AutoExecutor(folder=self.submitit_folder, cluster=self.backend.removeprefix("submitit_"))
        executor.update_parameters(**self.submitit)
        log.info(f"Submitting {len(groups)} populations ({len(pending)} runs) to submitit ({self.backend})")
        tasks = executor.map_array(_train_populations, groups)
        for task in tasks:
            try:
                task.result()
            except Exception as error:  # noqa: BLE001 - a task that died: its runs read as what they hold
                log.warning(f"submitit task {task.job_id} failed: {type(error).__name__}: {error}")

    def _job(self, config: DictConfig, sweep_dir: Path, prepare_job, derived: Derived | None = None,
             before: Callable[[DictConfig, Path], None] | None = None) -> JobReturn:
        """What Hydra's run_job does before and after a task, at a fraction of its cost (it copies
        the whole config three times a job, which a sweep of thousands of short runs feels): the
        job's folder and its ``.hydra`` files, HydraConfig, the callbacks' on_job_start and
        on_job_end (around the preparation: the job trains later, with its population); then the
        job's checks (prepare_job), which return the job, its config resolved, if it is to train.
        The job's own log file is not opened: the runs of a population train together.
        ``derived``: how SweepConfigs made the config from a template, whose YAML the job's
        .hydra files are then made from (job_files.TemplateFiles). ``before(task config, its
        folder)``, if given, is called before the job's checks."""
        assert self.hydra_context is not None
        # The config is this job's own (composed or copied for it alone), so the task config and
        # HydraConfig's are made of its nodes, not of copies of them (Hydra copies each); the
        # nodes stay children of ``config``, which the callbacks get whole.
        hydra_cfg = _holding(config, ["hydra"])
        HydraConfig.instance().cfg = hydra_cfg  # first: ${hydra:...} in the sweep's dirs are this job's
        hydra = config.hydra  # (each attribute access of a DictConfig costs: looked up once)
        output_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / str(
            OmegaConf.select(config, "hydra.sweep.subdir"))
        runtime = hydra.runtime
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = os.path.abspath(output_dir)
        OmegaConf.set_readonly(hydra, True)
        task_cfg = _holding(config, [key for key in config if key != "hydra"])
        ret = JobReturn(overrides=OmegaConf.to_container(hydra.overrides.task), cfg=task_cfg,
                        hydra_cfg=hydra_cfg, working_dir=os.getcwd(), task_name=JobRuntime.instance().get("name"))
        output_dir.mkdir(parents=True, exist_ok=True)
        output_subdir = hydra.output_subdir
        if output_subdir is not None:
            folder = output_dir / str(output_subdir)
            folder.mkdir(parents=True, exist_ok=True)
            texts = self._job_yaml(config, task_cfg, hydra_cfg, derived)
            for name, text in zip(("config.yaml", "hydra.yaml", "overrides.yaml"), texts):
                _write_text(folder / name, text)
        callbacks = self.hydra_context.callbacks
        if before is not None:
            before(task_cfg, output_dir)
        with env_override(hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=prepare_job)
            try:
                ret.return_value = prepare_job(task_cfg, Path(os.path.abspath(output_dir)), sweep_dir)
                ret.status = JobStatus.COMPLETED
            except Exception as error:
                ret.return_value = error
                ret.status = JobStatus.FAILED
        callbacks.on_job_end(config=config, job_return=ret)
        return ret

    @staticmethod
    def _job_yaml(config: DictConfig, task_cfg: DictConfig, hydra_cfg: DictConfig,
                  derived: Derived | None) -> tuple[str, str, str]:
        """The job's three .hydra files: from its template's YAML where SweepConfigs made its
        config from one (the keys it set there, and those _job sets, are the job's own)."""
        if derived is not None:
            template = derived.template
            if template.files is None:
                template.files = TemplateFiles(pickle.loads(template.blob))
            texts = template.files.job_yaml(config, derived.keys + LAUNCHER_KEYS)
            if texts is not None:
                return texts
        return job_yaml(config, task_cfg, hydra_cfg)


# What _prepare and _job set in each job's config (besides what SweepConfigs sets).
LAUNCHER_KEYS = ("hydra.job.id", "hydra.job.num", "hydra.runtime.output_dir")


def _write_text(path: Path, text: str) -> None:
    """path.write_text(text), except where the file holds that very text already (a relaunched
    sweep's jobs; its modification time then stays): ext4 flushes a file rewritten in place to
    disk (auto_da_alloc), which made these writes most of a relaunch's time. A file this process
    may not write is still written, to fail as before."""
    data = text.encode("utf-8")
    try:
        if path.stat().st_size == len(data) and os.access(path, os.W_OK, effective_ids=True) \
                and path.read_bytes() == data:  # (effective ids: what open() checks)
            return
    except OSError:
        pass  # no such file (or not one to read): write_text says what is wrong, if anything
    path.write_text(text, encoding="utf-8")


def _says_finished(run_dir: Path) -> bool:
    """Whether the run's summary says completed or diverged (a summary that cannot be read: no)."""
    from gradclip.records import FINISHED, RecordError, read_summary

    try:
        return (read_summary(run_dir) or {}).get("status") in FINISHED
    except RecordError:
        return False


def _holding(config: DictConfig, keys: list[str]) -> DictConfig:
    """A config of ``config``'s nodes at ``keys``, the nodes themselves (OmegaConf.masked_copy
    copies them). They stay children of ``config`` (as HydraConfig.set_config does for its
    hydra node), so interpolations, struct mode and read-only flags resolve as in ``config``,
    which still holds them too. The nodes go straight into the new config's content: they are
    valid nodes under these very keys already, and DictConfig's own assignment (which checks
    each, then makes the new config their parent) took a twentieth of a job's preparation."""
    held = DictConfig({})
    content = held.__dict__["_content"]
    for key in keys:
        content[key] = config._get_node(key)
    return held


def _train_populations(group: list) -> None:
    """A submitit task: train one population (gradclip.train.run_populations) in the task's process."""
    from gradclip import interrupts
    from gradclip.train import run_populations

    interrupts.install()
    run_populations([group])
