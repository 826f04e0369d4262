"""``hydra/launcher=population``: Hydra's basic launcher, with the training of the jobs grouped.

Each job is set up as the basic launcher sets it up (its folder, its ``.hydra`` files, Hydra's
callbacks) and checked (bad input, a finished or untouchable record: gradclip.train.prepare_job);
then the jobs that are to train and differ only in gradclip.config.POPULATION_KEYS train as
populations of at most ``max_members`` runs (gradclip.train.run_jobs), each writing the same job
folder and record that a job of its own would. A model that cannot train under vmap (BatchNorm)
falls back to one run at a time, with one log line saying why. Progress (runs done, model-steps/s,
time left) goes to stderr.
"""


import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.gradclip_launcher.population_launcher.PopulationLauncher"
    # The most runs one population trains at once (memory grows with it; 32-64 saturate a CPU).
    max_members: int = 64


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf,
                             provider="gradclip")


class PopulationLauncher(Launcher):
    def __init__(self, max_members: int = 64) -> None:
        self.max_members = int(max_members)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from gradclip import sweep
        from gradclip.train import prepare_job, run_jobs

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        if self.max_members < 1:
            raise ValueError(f"hydra.launcher.max_members={self.max_members} is not allowed: must be >= 1")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs as populations of up to {self.max_members} runs")
        runs, pending = [], []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.debug(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            ret = run_job(hydra_context=self.hydra_context, task_function=prepare_job, config=sweep_config,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            runs.append(ret)
            if ret.return_value is not None:
                pending.append(ret.return_value)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        progress = sweep.Progress(len(job_overrides), len(job_overrides) - len(pending),
                                  sum(int(job.cfg.steps) for job in pending))
        try:
            run_jobs(pending, self.max_members, progress)
        finally:
            progress.close()
        return runs
