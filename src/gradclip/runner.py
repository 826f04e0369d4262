"""Clipped SGD: the training loop, for one run or a population of runs trained together.

    theta(n+1) = theta(n) - a(n) * clipped gradient          (Ramaswamy 2023, eq. 1)

Each step: every member draws its mini-batch, takes its gradient (the batch mean, or every
example's: gradclip.ghost / torch.func), clips it with its own settings (gradclip.clipping),
steps plain SGD with its own a(n) (gradclip.schedules), then the loop checks each member cheaply
for divergence. A diverged member stops and is recorded with its step (divergence is a result);
the others go on. Every ``log_every`` steps a ``train/`` row, and every ``eval_every`` steps
and/or at ``eval_log_points`` log-spaced steps a full-data ``eval/`` row (gradclip.evaluation),
go to each member's local record (gradclip.records) and to W&B (gradclip.tracking).

A single run (``train``) is a population of one (gradclip.population): the same loop, the same
records. The loop never imports plotting: figures are built later from the records.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from tqdm import tqdm

from gradclip import interrupts
from gradclip.checks import ConfigError
from gradclip.clipping import Clipper, make_clipper, unit_norms
from gradclip.config import population_key, resolve_config, resolve_device, validate_config
from gradclip.data import load_dataset
from gradclip.evaluation import PopulationEvaluation, evaluate
from gradclip.ghost import ghost_unsupported_reason
from gradclip.gradients import PerSampleGradients, per_example_loss
from gradclip.models import build_model, per_sample_unsupported_reason
from gradclip.population import Population
from gradclip.provenance import git_state, versions
from gradclip.records import THETA_FILE, RecordWriteError, RunRecorder, process_identity, run_state
from gradclip.resume import existing_record
from gradclip.schedules import Schedule, make_schedule
from gradclip.start import CACHE_FOLDER, cached_loss_minimum
from gradclip.tracking import NullTracker, make_tracker

log = logging.getLogger("gradclip.train")

# log_theta writes one column per parameter: meant for the closed-form problems' tiny models.
MAX_LOGGED_THETA = 64
# The leading keys of a train/ row, in the order a single run has always written them.
TRAIN_ROW_ORDER = ("step", "train/loss", "train/scaled_loss", "train/grad_norm", "train/clipped_grad_norm",
                   "train/clip_fraction", "train/clip_factor_mean", "train/clip_factor_max", "train/lr",
                   "train/sum_lr", "train/sum_lr_sq", "train/param_norm", "train/dist_from_init")
# Per-interval maxima logged in each train/ row as train/max_<key>.
MAXIMA_LOGGED = ("update_norm", "step_ratio", "unit_update_ratio", "unit_step_ratio")


def evaluation_steps(steps: int, every: int, log_points: int) -> set[int]:
    """The steps after which a full-data row is logged: every ``every`` steps and at ``log_points``
    log-spaced steps in [1, steps] (for log-log plots against n); with any of them, also step 0
    (before training) and the last step."""
    chosen = set(range(every, steps, every)) if every else set()
    if log_points:
        chosen |= {int(round(n)) for n in np.geomspace(1, steps, log_points)}
    if every or log_points:
        chosen |= {0, steps}
    return chosen


# I.i.d. batches are drawn up to this many steps at a time (fewer where members x batch size is
# large, to hold at most SAMPLE_CHUNK_INDICES indices): one generator call per member per chunk,
# not per step. The CPU generator draws serially, so the indices are those of one call per step
# (tests/test_train.py checks it): records do not depend on the chunk.
SAMPLE_CHUNK = 256
SAMPLE_CHUNK_INDICES = 1 << 22


class BatchSampler:
    """Each member's mini-batch indices for a step, as a tensor [M, batch_size]: i.i.d. with
    replacement (the paper's setting) or shuffled epochs; member k draws from ``generators[k]``
    alone, so a member's batches are those of its single run."""

    def __init__(self, n: int, batch_size: int, mode: str, generators: Sequence[torch.Generator]) -> None:
        self.n, self.batch_size, self.mode, self.generators = n, batch_size, mode, list(generators)
        self._chunk, self._step = torch.empty(len(self.generators), 0, batch_size, dtype=torch.long), 0
        self._orders, self._pos = [], n  # (the first call starts an epoch)

    def __call__(self) -> torch.Tensor:
        if self.mode == "iid":
            if self._step == self._chunk.shape[1]:
                chunk = max(1, min(SAMPLE_CHUNK, SAMPLE_CHUNK_INDICES // (len(self.generators) * self.batch_size)))
                self._chunk = torch.stack([torch.randint(self.n, (chunk, self.batch_size), generator=g)
                                           for g in self.generators])
                self._step = 0
            self._step += 1
            return self._chunk[:, self._step - 1]
        if self._pos + self.batch_size > self.n:  # a new epoch for every member; drop the ragged tail
            self._orders, self._pos = [torch.randperm(self.n, generator=g) for g in self.generators], 0
        idx = torch.stack([order[self._pos: self._pos + self.batch_size] for order in self._orders])
        self._pos += self.batch_size
        return idx


class Maxima:
    """Per member, the largest value of each quantity since its last logged row, and over its
    whole run: arrays over the population, updated for every member at once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.since_row: dict[str, np.ndarray] = {}
        self.run: dict[str, np.ndarray] = {}

    def update(self, where: np.ndarray, **values: np.ndarray) -> None:
        """Fold in ``values`` (arrays over the members) for the members in the mask ``where``."""
        for key, value in values.items():
            value = np.where(np.isfinite(value), value, math.inf)  # NaN must not vanish from a max
            since = self.since_row.setdefault(key, np.full(self.size, -math.inf))
            np.maximum(since, np.where(where, value, -math.inf), out=since)

    def flush(self, k: int) -> dict[str, float]:
        """Member k's maxima since its last row (the quantities it has any of), and a new interval."""
        row = {}
        for key, since in self.since_row.items():
            if since[k] > -math.inf:
                row[key] = float(since[k])
                run = self.run.setdefault(key, np.full(self.size, -math.inf))
                run[k] = max(run[k], since[k])
                since[k] = -math.inf
        return row

    def over_run(self, k: int) -> dict[str, float]:
        return {key: float(run[k]) for key, run in self.run.items() if run[k] > -math.inf}


@dataclass
class Member:
    """One run of a population: its config, its record, its schedule and whether it still trains
    (the running sums and maxima are the loop's, as arrays over the population)."""

    cfg: DictConfig
    config: dict  # resolved
    run_dir: Path
    clipper: Clipper  # its own settings (numbers): its description, its evaluation
    schedule: Schedule
    recorder: RunRecorder
    summary: dict
    tracker: NullTracker = field(default_factory=NullTracker)
    active: bool = True  # still training
    started: bool = False  # its record has begun


def train(cfg: DictConfig, run_dir: Path, reraise: bool = True, wandb_dir: Path | None = None) -> dict:
    """Run one job into ``run_dir``; return its summary: a population of one
    (:func:`train_population`, whose docstring says what is raised and recorded)."""
    return train_population([cfg], [run_dir], reraise, [wandb_dir])[0]


def use_deterministic_algorithms(mode: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=True)``, without its import of
    torch._inductor (1.8 s in every process and worker here), which it makes only to set
    inductor's own flag for torch.compile: gradclip compiles nothing. Where inductor is loaded
    already, or torch lacks the setter, the public call does it all."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        setter(mode, warn_only=True)


def train_population(cfgs: Sequence[DictConfig], run_dirs: Sequence[Path], reraise: bool = True,
                     wandb_dirs: Sequence[Path | None] | None = None, progress=None) -> list[dict]:
    """Train the runs ``cfgs`` (one population: they may differ only in POPULATION_KEYS of
    gradclip.config) into ``run_dirs``; return their summaries, in order. W&B
    (``logger=wandb``) writes under ``<wandb_dir>/wandb``: by default each run's own folder; a
    sweep passes its own, shared. ``progress`` (gradclip.sweep.Progress) hears of every step.

    Bad input raises ConfigError, and a record that must not be touched RecordError, before
    anything is written. A finished record of the same config is returned as it is (with
    ``skipped``), and that run is not trained again. A diverged run is a result. A stop signal
    (gradclip.interrupts) ends every run at a step boundary as ``interrupted``. An error while
    building the data or the models raises before the records begin; any error after that is
    recorded as ``failed`` in every unfinished record and re-raised when ``reraise``, except a
    write error (a full disk), whose message names the file. If even the final summary cannot
    be written, the returned summary says so under ``summary_write_error``.
    """
    configs = []
    for cfg in cfgs:
        configs.append(resolve_config(cfg))
        validate_config(cfg)
    if len({population_key(config) for config in configs}) > 1:
        raise ValueError("these configs differ in more than the keys a population may vary "
                         "(gradclip.config.POPULATION_KEYS); train them apart")
    run_dirs = [Path(d) for d in run_dirs]
    wandb_dirs = list(wandb_dirs or [None] * len(cfgs))
    results: list[dict | None] = [None] * len(cfgs)
    states = [run_state(run_dir) for run_dir in run_dirs]  # read once: the record, earlier W&B files
    todo = []
    for k, (cfg, config, run_dir, state) in enumerate(zip(cfgs, configs, run_dirs, states)):
        finished = existing_record(state, run_dir, config, bool(cfg.rerun))
        if finished:
            results[k] = finished | {"skipped": True}
        else:
            todo.append(k)
    if not todo:
        return results

    cfg = cfgs[todo[0]]  # what the members share
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    use_deterministic_algorithms(bool(cfg.deterministic))
    # Full float32 on GPUs too: cuDNN's default TF32 convolutions keep 10 bits of mantissa, which
    # moves a CNN run by ~1e-3 relative within a few steps (measured on an H100: a population
    # member and its single run then differ by more than float32 rounding).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    data = load_dataset(cfg.data).to(device)
    if cfg.batch_size > data.num_train:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {data.num_train} training "
                          f"examples of data={data.name}; use batch_size <= {data.num_train}")
    loss_fn = per_example_loss(data.task)
    models, starts = [], {}
    for k in todo:  # each member's initialisation is the one its single run would have
        torch.manual_seed(cfgs[k].seed)
        models.append(build_model(cfg.model, data.input_shape, data.num_outputs).to(device))
        if cfg.start == "loss_minimum":  # members of one seed share the search (gradclip.start)
            if cfgs[k].seed not in starts:
                key = {name: configs[k][name] for name in ("data", "model", "seed", "weight_decay")}
                key["data"] = {name: value for name, value in key["data"].items() if name != "root"}
                starts[cfgs[k].seed] = (models[-1], cached_loss_minimum(
                    models[-1], data.x_train, data.y_train, loss_fn, float(cfg.weight_decay), key,
                    run_dirs[k].parent / CACHE_FOLDER, read=not cfgs[k].rerun))
            else:
                models[-1].load_state_dict(starts[cfgs[k].seed][0].state_dict())
    per_sample_reason = per_sample_unsupported_reason(models[0])
    if cfg.clip.granularity == "sample" and per_sample_reason:
        raise ConfigError(f"clip.granularity=sample needs per-example gradients, but {per_sample_reason}; "
                          "use clip.granularity=batch or another model")
    names = [name for name, _ in models[0].named_parameters()]
    num_parameters = sum(p.numel() for p in models[0].parameters())
    if cfg.log_theta and num_parameters > MAX_LOGGED_THETA:
        raise ConfigError(f"log_theta=true logs every parameter, but model={cfg.model.name} has {num_parameters} "
                          f"(at most {MAX_LOGGED_THETA}); use log_theta=false or a smaller model")
    clippers = [make_clipper(cfgs[k].clip, names) for k in todo]
    scratch = copy.deepcopy(models[0]) if len(todo) > 1 else None  # evaluates one member at a time
    population = Population(models, loss_fn, Clipper.stacked(clippers).to(device), cfg.clip.granularity,
                            cfg.momentum, cfg.weight_decay, cfg.per_sample)

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    provenance = {"host": socket.gethostname(), "process": process_identity(), "git": git_state(),
                  "versions": versions()}
    members = []
    for k, clipper in zip(todo, clippers):
        summary = {"status": "running", "diverged_step": None, "seed": cfgs[k].seed, "device": str(device),
                   "started_at": started, **provenance, "clipper": clipper.describe(),
                   "num_parameters": num_parameters, "per_sample_gradients": population.per_sample_gradients,
                   "population_size": len(todo),
                   **({"start": starts[cfgs[k].seed][1]} if starts else {})}
        members.append(Member(cfgs[k], configs[k], run_dirs[k], clipper, make_schedule(cfgs[k].schedule, cfg.steps),
                              RunRecorder(run_dirs[k]), summary))
    sampler = BatchSampler(data.num_train, cfg.batch_size, cfg.sampling,
                           [torch.Generator().manual_seed(cfgs[k].seed) for k in todo])
    try:
        for index, (k, member) in enumerate(zip(todo, members)):
            try:
                member.recorder.start(member.config, member.summary)
            except RecordWriteError as error:  # this run's folder cannot be written: it alone fails
                member.started = True
                _finish(member, {"status": "failed", "error": str(error), "steps_completed": 0}, 1)
                population.retire_(index)
                continue
            member.started = True
            member.tracker = make_tracker(member.cfg.logger, Path(wandb_dirs[k] or member.run_dir), member.config,
                                          states[k].summary.get("wandb"))
            member.summary["wandb"] = member.tracker.run_path
            if member.tracker.run_path:  # the record names its W&B run from the start
                member.recorder.write_summary(member.summary)
        _loop(cfg, population, members, sampler, data, loss_fn, scratch, progress)
    except KeyboardInterrupt:  # train() called from a program that has no stop handler (a notebook)
        _end_unfinished(members, {"status": "interrupted",
                                  "interrupted_reason": "KeyboardInterrupt in the calling program"})
        raise
    except Exception as error:
        failure = {"status": "failed", "error": str(error) if isinstance(error, RecordWriteError)
                   else f"{type(error).__name__}: {error}"}
        if not isinstance(error, RecordWriteError):  # a write error needs no traceback: it names the file
            failure["traceback"] = traceback.format_exc()
        _end_unfinished(members, failure)
        if reraise and not isinstance(error, RecordWriteError):
            raise
    finally:  # anything else that stops the loop (a BaseException of the caller's)
        _end_unfinished(members, {"status": "failed", "error": "the run was stopped from outside"})
    for k, member in zip(todo, members):
        results[k] = member.summary
    return results


def _end_unfinished(members: list[Member], result: dict) -> None:
    """Record ``result`` for every member still running. A member whose record had not begun
    is not written (its folder keeps what it held): its summary says so."""
    for member in members:
        if member.active and member.started:
            _finish(member, result | {"steps_completed": member.recorder.final_values().get("step")}, 1)
        elif member.active:
            member.active = False
            member.summary |= result | {"summary_write_error": "its record had not begun"}


def _finish(member: Member, result: dict, exit_code: int) -> None:
    """Write a member's final summary (its rows reach the disk first) and close its W&B run."""
    member.active = False
    summary = member.summary
    summary |= result
    try:  # the rows reach the disk before a summary can call the run complete
        member.recorder.close_rows()
    except RecordWriteError as error:
        if summary["status"] != "failed":
            summary |= {"status": "failed", "error": str(error)}
            exit_code = 1
    summary["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        member.recorder.write_summary(summary)
    except RecordWriteError as error:
        summary["summary_write_error"] = str(error)
    member.recorder.close()
    member.tracker.finish(summary, exit_code)


def _loop(cfg: DictConfig, population: Population, members: list[Member], sampler: BatchSampler, data, loss_fn,
          scratch, progress=None) -> None:
    """The SGD loop proper: steps every member to the end, to its divergence or to a stop signal,
    and finishes each member's record as it ends."""
    size, theta = population.size, population.theta
    device = theta.device
    sample_granularity = cfg.clip.granularity == "sample"
    clipper = population.clipper
    agc_index = [k for k, n in enumerate(population.names) if clipper.method == "agc" and n not in clipper.excluded]
    previous, initial = theta.detach().clone(), theta.detach().clone()
    delta = torch.zeros_like(previous)
    previous_views, delta_views = population.member_views(previous), population.member_views(delta)
    maxima = Maxima(size)
    sum_a, sum_a2 = np.zeros(size), np.zeros(size)  # sum of a(n) and of a(n)^2 so far
    schedules = list(dict.fromkeys(member.schedule for member in members))  # members often share one
    which = np.array([schedules.index(member.schedule) for member in members])
    maxima.update(np.ones(size, dtype=bool), param_norm=initial.norm(dim=1).double().cpu().numpy())
    # Plain Python copies: reading a DictConfig in the hot loop costs more than the checks.
    steps, log_every = int(cfg.steps), int(cfg.log_every)
    eval_at = evaluation_steps(steps, int(cfg.eval_every), int(cfg.eval_log_points))
    unit_log_every, log_theta = int(cfg.unit_log_every), bool(cfg.log_theta)
    max_norm = float(cfg.divergence.max_norm)
    eval_seconds = 0.0
    # Iterate averaging (average_from = f): the running sums of theta(n) over n > f * steps and
    # over n > (1 + f) / 2 * steps, in float64 so that thousands of float32 iterates add up
    # exactly enough; a completed run saves both averages with its final theta (theta.npz).
    averaging = None
    if cfg.average_from is not None:
        fraction = Fraction(str(cfg.average_from))  # exact: int(0.29 * 100) would be 28
        averaging = {"starts": (math.floor(fraction * steps), math.floor((1 + fraction) / 2 * steps)),
                     "sums": torch.zeros(2, *theta.shape, dtype=torch.float64, device=device)}
    # Full-data rows: every member at once from ghost norms where they cover the model and the
    # method (gradclip.evaluation.PopulationEvaluation), else one member at a time from
    # vmap(grad); the summary names which (evaluation_gradients).
    population_eval = eval_per_sample = None
    if eval_at:
        reason = ghost_unsupported_reason(population.model, population.clipper) if cfg.per_sample == "auto" \
            else "per_sample=vmap"
        if reason is None:
            population_eval = PopulationEvaluation(population, loss_fn, cfg.eval_chunk)
        else:
            eval_per_sample = PerSampleGradients(population.model if size == 1 else scratch, loss_fn)
        for member in members:
            member.summary["evaluation_gradients"] = "ghost" if reason is None else f"vmap: {reason}"

    def eval_rows(step: int) -> float:
        """Log a full-data row for each active member if ``step`` is due one; return the seconds
        it took (kept out of the training speed)."""
        if step not in eval_at:
            return 0.0
        start = time.perf_counter()
        together = population_eval(data) if population_eval else None
        for k, member in enumerate(members):
            if member.active:
                if together:
                    metrics = together[k]
                else:
                    model = population.member_model(k, scratch)
                    metrics = evaluate(model, eval_per_sample, member.clipper, data, loss_fn, cfg.eval_chunk)
                row = {"step": step} | {f"eval/{key}": value for key, value in metrics.items()}
                try:
                    member.recorder.log(row)
                except RecordWriteError as error:
                    write_failed(k, step, error)
                    continue
                member.tracker.log(row)
        return time.perf_counter() - start

    def write_failed(k: int, step: int, error: RecordWriteError) -> None:
        """A member whose record cannot be written (a full disk, a quota) fails, naming its
        file; the others go on."""
        finish(k, step, {"status": "failed", "error": str(error)}, 1)
        population.retire_(k)

    def finish(k: int, step: int, result: dict, exit_code: int = 0) -> None:
        member = members[k]
        maxima.flush(k)
        if averaging and result["status"] == "completed":
            try:  # before the summary: a completed record has its theta.npz
                member.recorder.write_theta(_theta_arrays(population, k, step, averaging, initial))
                result = result | {"theta_file": THETA_FILE, "average_from_step": averaging["starts"][0],
                                   "average_late_from_step": averaging["starts"][1]}
            except RecordWriteError as error:
                result, exit_code = result | {"status": "failed", "error": str(error)}, 1
        wall = time.perf_counter() - start - eval_seconds
        _finish(member, result | {
            "steps_completed": step, "initial_param_norm": float(initial[k].norm()),
            **({"initial_theta": initial[k].tolist()} if log_theta else {}),
            **{f"max_{key}": value for key, value in maxima.over_run(k).items()},
            "sum_lr": float(sum_a[k]), "sum_lr_sq": float(sum_a2[k]), "wall_time_s": wall,
            "steps_per_s": step / wall if wall > 0 else None, "final": member.recorder.final_values()}, exit_code)
        if progress is not None:
            progress.run_done(skipped_steps=steps - step)

    show_bar = cfg.progress is True or (cfg.progress == "auto" and sys.stderr.isatty()
                                        and HydraConfig.initialized() and HydraConfig.get().mode != RunMode.MULTIRUN)
    if not any(member.active for member in members):  # no record could begin
        return
    start = time.perf_counter()
    eval_rows(0)
    start = time.perf_counter()  # the clock starts after the first evaluation
    step = 0
    bar = tqdm(range(1, steps + 1), disable=not show_bar, leave=False,
               desc=members[0].clipper.describe() if size == 1 else f"population of {size}")
    for step in bar:
        active = np.fromiter((member.active for member in members), dtype=bool, count=size)
        lrs = np.where(active, np.array([schedule(step - 1) for schedule in schedules])[which], 0.0)
        stepping = int((lrs > 0).sum())
        sum_a += lrs
        sum_a2 += lrs * lrs
        idx = sampler().to(device)
        losses, stats = population.clipped_gradient(data.x_train[idx], data.y_train[idx])

        # What the divergence rule and the bounds of prediction 1 watch, per member, by name.
        # Finite iff every gradient is: the per-example norms are at hand, ||mean g|| is not.
        watched = {"loss": losses.mean(1),
                   "grad_probe": stats.sample_grad_norm.amax(1) if sample_granularity else stats.grad_norm,
                   # ||clipped g|| is the increment / a(n) of plain SGD in exact arithmetic; the
                   # realised ||theta(n+1) - theta(n)|| / a(n) below also carries float32 rounding
                   # (about ulp(theta) / a(n), large once a(n) is tiny), momentum and weight decay.
                   "update_norm": stats.clipped_grad_norm}
        with torch.no_grad():
            if agc_index:  # the same unit-wise, against the weights before the step
                watched["unit_update_ratio"] = _agc_unit_ratio(population.grad_views, population.views, agc_index,
                                                               clipper)
            previous.copy_(theta)
            population.sgd_step_(lrs)
            torch.sub(theta, previous, out=delta)
            if averaging and step > averaging["starts"][0]:
                averaging["sums"][0] += theta
                if step > averaging["starts"][1]:
                    averaging["sums"][1] += theta
            watched |= {"param_norm": torch.linalg.vector_norm(theta, dim=1),
                        "step_norm": torch.linalg.vector_norm(delta, dim=1)}
            if agc_index:
                lr_column = torch.tensor(lrs, dtype=theta.dtype, device=device)
                watched["unit_step_ratio"] = _agc_unit_ratio(delta_views, previous_views, agc_index,
                                                             clipper) / lr_column
            # The step's one host sync: every watched value of every member.
            values = dict(zip(watched, torch.stack(list(watched.values())).double().cpu().numpy()))

        # A stop signal (SIGTERM from SLURM, Ctrl-C) ends the runs here, at a step boundary, with
        # this step's rows written: the records say how far they got.
        stop = interrupts.received() if step < steps else None  # after the last step they are done
        # Members are judged all at once; only a member whose step is not finite or whose weights
        # left the ball (odd) gets its reason spelled out.
        sane = (np.isfinite(values["loss"]) & np.isfinite(values["grad_probe"]) & np.isfinite(values["param_norm"])
                & (values["param_norm"] <= max_norm))
        odd = active & ~sane
        reasons = [None] * size
        for k in np.flatnonzero(odd):
            reasons[k] = _divergence(values["loss"][k], values["grad_probe"][k], values["param_norm"][k], max_norm)
        due = active.copy() if stop or step % log_every == 0 or step == steps else odd
        rows = _train_rows(step, population, losses, stats, initial, values, lrs, sum_a, sum_a2, due, log_theta) \
            if due.any() else {}
        maxima.update(active, param_norm=values["param_norm"])
        # The increment bounds are about finite steps; a diverging step's are in its row.
        with np.errstate(divide="ignore", invalid="ignore"):  # (a retired member's a(n) is 0)
            bounded = {"update_norm": values["update_norm"], "step_ratio": values["step_norm"] / lrs}
        if agc_index:
            bounded |= {"unit_update_ratio": values["unit_update_ratio"], "unit_step_ratio": values["unit_step_ratio"]}
        maxima.update(active & sane, **bounded)
        units_due = unit_log_every and (step == 1 or step % unit_log_every == 0)
        for k in map(int, np.flatnonzero(active if units_due else due)):
            member = members[k]
            try:
                if units_due:
                    member.recorder.log_units(_unit_row(step, lrs[k], population.names, previous_views, delta_views, k))
                if k in rows:
                    since_row = maxima.flush(k)
                    row = rows[k] | {f"train/max_{key}": since_row[key] for key in MAXIMA_LOGGED if key in since_row}
                    member.recorder.log(row)
                    member.tracker.log(row)
            except RecordWriteError as error:
                write_failed(k, step, error)
                continue
            if reasons[k]:
                log.info("diverged at step %d: %s", step, reasons[k])
                finish(k, step, {"status": "diverged", "diverged_step": step, "diverged_reason": reasons[k]})
                population.retire_(k)
            elif stop:
                finish(k, step, {"status": "interrupted",
                                 "interrupted_reason": f"{interrupts.name(stop)} after step {step} of {steps}"},
                       interrupts.exit_code(stop))
        if progress is not None:
            progress.advance(stepping)
        if rows and size == 1 and 0 in rows:
            bar.set_postfix(loss=f"{rows[0]['train/loss']:.4g}", refresh=False)
        if not any(member.active for member in members):
            break
        # Drop this step's per-example tensors before the next step allocates its own: holding
        # both makes glibc map and unmap them every step (measured: a quarter of the speed).
        losses = stats = None
        if step != steps:
            eval_seconds += eval_rows(step)
    bar.close()
    if any(member.active for member in members):
        wall_end = time.perf_counter()
        eval_rows(steps)
        eval_seconds += time.perf_counter() - wall_end  # the final evaluation is not training time
        for k, member in enumerate(members):
            if member.active:
                finish(k, step, {"status": "completed", "diverged_reason": None})


def _train_rows(step, population, losses, stats, initial, values, lrs, sum_a, sum_a2, due,
                log_theta) -> dict[int, dict]:
    """The ``train/`` row of each member due one at this step (one host sync for all)."""
    factor = stats.factor if stats.factor.ndim == 2 else stats.factor.unsqueeze(1)
    columns = {"train/scaled_loss": (losses / factor).mean(1), "train/grad_norm": stats.grad_norm,
               "train/clip_fraction": stats.clip_fraction, "train/clip_factor_mean": factor.mean(1),
               "train/clip_factor_max": factor.amax(1),
               "train/dist_from_init": (population.theta.detach() - initial).norm(dim=1)}
    if stats.sample_grad_norm is not None:
        columns["train/sample_grad_norm_mean"] = stats.sample_grad_norm.mean(1)
        columns["train/sample_grad_norm_max"] = stats.sample_grad_norm.amax(1)
    computed = dict(zip(columns, torch.stack([c.to(losses.dtype) for c in columns.values()]).tolist()))
    theta = population.theta.detach().tolist() if log_theta else None
    rows = {}
    for k in map(int, np.flatnonzero(due)):
        row = {"step": step, "train/loss": values["loss"][k], **{key: column[k] for key, column in computed.items()},
               "train/clipped_grad_norm": values["update_norm"][k], "train/lr": lrs[k],
               "train/sum_lr": float(sum_a[k]), "train/sum_lr_sq": float(sum_a2[k]),
               "train/param_norm": values["param_norm"][k]}
        row = {key: row[key] for key in TRAIN_ROW_ORDER} | {key: value for key, value in row.items()
                                                           if key not in TRAIN_ROW_ORDER}
        if theta is not None:
            row |= {f"train/theta_{i}": v for i, v in enumerate(theta[k])}
        rows[k] = row
    return rows


def _theta_arrays(population: Population, k: int, steps: int, averaging: dict, initial: torch.Tensor) -> dict:
    """Member k's initial and final theta and its two iterate averages, per parameter by name
    (theta.npz)."""
    flat = {"initial": initial[k], "final": population.theta[k].detach()}
    for which, start, total in zip(("average", "average_late"), averaging["starts"], averaging["sums"]):
        flat[which] = total[k] / (steps - start)
    arrays = {f"steps/{which}_from": start for which, start in zip(("average", "average_late"), averaging["starts"])}
    for which, vector in flat.items():
        for name, lo, hi, shape in zip(population.names, population.offsets, population.offsets[1:],
                                       population.shapes):
            arrays[f"{which}/{name}"] = vector[lo:hi].view(shape).cpu().numpy()
    return arrays


def _unit_row(step: int, lr: float, names, previous_views, delta_views, k: int) -> dict:
    """Per unit (AGC's units: rows of a weight, a whole bias) ||W_i|| before the step and ||Delta W_i||."""
    units = {}
    for name, before, change in zip(names, previous_views, delta_views):
        units[name] = {"weight_norm": unit_norms(before[k]).flatten().tolist(),
                       "step_norm": unit_norms(change[k]).flatten().tolist()}
    return {"step": step, "lr": lr, "units": units}


def _agc_unit_ratio(vectors: list[torch.Tensor], weights: list[torch.Tensor], index: list[int],
                    clipper: Clipper) -> torch.Tensor:
    """Per member, max over AGC's units of ||v_i|| / (lambda max(||W_i||, eps)); tensors [M, ...].
    With eps = 0 a zero unit has bound 0: a zero v_i there counts as 0 (it kept its bound), a
    non-zero one as inf."""
    ratios = [torch.nan_to_num(unit_norms(vectors[k], lead=1) / clipper.agc_unit_bound(weights[k], members=True),
                               nan=0.0).flatten(1).amax(1) for k in index]
    return torch.stack(ratios).amax(0)


def _divergence(loss: float, grad_norm: float, param_norm: float, max_norm: float) -> str | None:
    """Why this step counts as diverged, or None."""
    if not math.isfinite(loss):
        return "non-finite loss"
    if not math.isfinite(grad_norm):
        return "non-finite gradient"
    if not math.isfinite(param_norm):
        return "non-finite weights"
    if param_norm > max_norm:
        return f"||theta|| = {param_norm:.3g} > divergence.max_norm = {max_norm:g}"
    return None
