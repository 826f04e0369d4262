"""Clipped SGD on one problem: ``python -m gradclip.train`` (Hydra; one run per job).

    theta(n+1) = theta(n) - a(n) * clipped gradient          (Ramaswamy 2023, eq. 1)

Each step: draw a mini-batch, take its gradient (the batch mean, or every example's through
torch.func), clip it (gradclip.clipping), step plain SGD with a(n) from gradclip.schedules,
then check cheaply for divergence. A diverged run stops, is recorded with its step and exits 0:
divergence is a result. Every ``log_every`` steps a ``train/`` row, and every ``eval_every`` steps
and/or at ``eval_log_points`` log-spaced steps a full-data ``eval/`` row (gradclip.evaluation),
go to the local record (gradclip.records) and to W&B (gradclip.tracking).

The loop never imports plotting: figures are built later from the records.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import logging
import math
import multiprocessing
import os
import platform
import re
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from gradclip import interrupts  # standard library only: installed before torch loads (~2 s)


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
import numpy as np
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

import gradclip
from gradclip import sweep
from gradclip.checks import ConfigError, require_choice, require_int, require_known_keys, require_number
from gradclip.clipping import Clipper, make_clipper, unit_norms, validate_clip_config
from gradclip.data import load_dataset, validate_data_config
from gradclip.evaluation import evaluate
from gradclip.ghost import make_sample_clipping
from gradclip.gradients import PerSampleGradients, per_example_loss
from gradclip.models import build_model, per_sample_unsupported_reason, validate_model_config
from gradclip.records import (CONFIG_FILE, SUMMARY_FILE, RecordError, RecordWriteError, RunRecorder, RunState, flatten,
                              process_identity, remedy, run_state)
from gradclip.schedules import make_schedule, validate_schedule_config
from gradclip.tracking import NullTracker, make_tracker, validate_logger_config

log = logging.getLogger("gradclip.train")

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


# -- configuration --------------------------------------------------------------------------------


def _schema_keys() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The top-level keys of configs/train.yaml (its config groups included) and those of its
    ``divergence`` section: the schema that a key added with ``+`` must belong to."""
    with open(Path(CONFIG_DIR) / "train.yaml") as f:
        primary = yaml.safe_load(f)
    groups = [next(iter(entry)) for entry in primary["defaults"] if isinstance(entry, dict)]
    top = [key for key in primary if key not in ("defaults", "hydra")] + groups
    return tuple(top), tuple(primary["divergence"])


TOP_KEYS, DIVERGENCE_KEYS = _schema_keys()


def validate_config(cfg: Mapping) -> None:
    """Every check that needs no data or model: bad input fails here, before any work."""
    require_known_keys(cfg, "cfg", TOP_KEYS, "configs/train.yaml")
    require_known_keys(cfg["divergence"], "divergence", DIVERGENCE_KEYS)
    require_int(cfg, "cfg", "steps", lambda v: v >= 1, "an integer >= 1")
    require_int(cfg, "cfg", "batch_size", lambda v: v >= 1, "an integer >= 1")
    require_int(cfg, "cfg", "seed", lambda v: 0 <= v < 2**63, "an integer >= 0")
    require_int(cfg, "cfg", "log_every", lambda v: v >= 1, "an integer >= 1")
    require_int(cfg, "cfg", "eval_every", lambda v: v >= 0, "an integer >= 0 (0: no evaluation)")
    require_int(cfg, "cfg", "eval_log_points", lambda v: v >= 0, "an integer >= 0 (0: none)")
    require_int(cfg, "cfg", "eval_chunk", lambda v: v >= 1, "an integer >= 1")
    require_int(cfg, "cfg", "unit_log_every", lambda v: v >= 0, "an integer >= 0 (0: off)")
    if cfg.get("threads") is not None:
        require_int(cfg, "cfg", "threads", lambda v: v >= 1, "null or an integer >= 1")
    require_number(cfg, "cfg", "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    require_number(cfg, "cfg", "weight_decay", lambda v: v >= 0, ">= 0")
    require_number(cfg["divergence"], "divergence", "max_norm", lambda v: v > 0, "> 0")
    require_choice(cfg, "cfg", "device", ("auto", "cpu", "cuda"))
    require_choice(cfg, "cfg", "sampling", ("iid", "shuffle"))
    require_choice(cfg, "cfg", "progress", (True, False, "auto"))
    require_choice(cfg, "cfg", "log_theta", (True, False))
    require_choice(cfg, "cfg", "deterministic", (True, False))
    require_choice(cfg, "cfg", "rerun", (True, False))
    validate_logger_config(cfg["logger"])
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch finds no CUDA device here; use device=auto or device=cpu")
    validate_clip_config(cfg["clip"])
    validate_schedule_config(cfg["schedule"], cfg["steps"])
    validate_model_config(cfg["model"])
    validate_data_config(cfg["data"])


# Keys that do not change a run's results: a finished record with other values for them is
# still this run's record (the same keys are left out of sweep directory names).
NON_RESULT_KEYS = ("name", "output_root", "logger", "progress", "rerun", "device", "threads",
                   "eval_chunk", "data.root", "model.preset")


def _result_config(config: dict) -> dict:
    """The resolved config, flattened, without NON_RESULT_KEYS (and what lies under them)."""
    return {key: value for key, value in flatten(config).items()
            if not any(key == skip or key.startswith(skip + ".") for skip in NON_RESULT_KEYS)}


def _existing_record(state: RunState, run_dir: Path, config: dict, rerun: bool) -> dict | None:
    """The summary of a finished run of this same config (``state``: what run_dir holds), or
    None: train afresh.

    Nothing is overwritten that a relaunch should keep: a finished record of a different config
    is bad input (re-launching after a change of defaults must not return stale results), a
    record that cannot be read is an error until ``rerun=true``, and a record that a live
    process is writing is never touched. Interrupted, dead and failed runs train again.
    """
    if state.corrupt and not rerun:
        raise RecordError(state.reason.removeprefix("corrupt record: "))
    if state.status == "running" and state.summary.get("process") != process_identity():
        raise RecordError(f"{run_dir} is being written by a live process ({state.reason}): not starting a "
                          "second copy; wait for it or stop it")
    if rerun or not state.finished:
        return None
    if state.config is None:
        raise RecordError(f"{run_dir} holds a finished summary but no {CONFIG_FILE}: {remedy(run_dir)}")
    recorded, current = _result_config(state.config), _result_config(config)
    differ = sorted(key for key in recorded.keys() | current.keys() if recorded.get(key) != current.get(key))
    if differ:
        raise ConfigError(f"{run_dir} holds a finished run of another config (differing keys: "
                          f"{', '.join(differ)}); use rerun=true to replace it, or another name= or output_root=")
    return state.summary


# log_theta writes one column per parameter: meant for the closed-form problems' tiny models.
MAX_LOGGED_THETA = 64


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


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# -- provenance -----------------------------------------------------------------------------------


def _git_state() -> dict:
    """The commit of the code that ran, and whether tracked files had uncommitted changes."""
    repo = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _versions() -> dict:
    import omegaconf
    import torchvision

    # wandb's version from its metadata: importing it (for logger=none) costs a second and
    # leaves temporary folders behind if the process is killed.
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "hydra": hydra.__version__, "omegaconf": omegaconf.__version__,
            "wandb": importlib.metadata.version("wandb"), "gradclip": gradclip.__version__}


# -- the run --------------------------------------------------------------------------------------


class BatchSampler:
    """Mini-batch indices: i.i.d. with replacement (the paper's setting) or shuffled epochs."""

    def __init__(self, n: int, batch_size: int, mode: str, generator: torch.Generator, device) -> None:
        self.n, self.batch_size, self.mode, self.generator, self.device = n, batch_size, mode, generator, device
        self._order, self._pos = torch.empty(0, dtype=torch.long), 0

    def __call__(self) -> torch.Tensor:
        if self.mode == "iid":
            idx = torch.randint(self.n, (self.batch_size,), generator=self.generator)
        else:
            if self._pos + self.batch_size > len(self._order):  # a new epoch; drop the ragged tail
                self._order, self._pos = torch.randperm(self.n, generator=self.generator), 0
            idx = self._order[self._pos : self._pos + self.batch_size]
            self._pos += self.batch_size
        return idx.to(self.device)


def train(cfg: DictConfig, run_dir: Path, reraise: bool = True, wandb_dir: Path | None = None) -> dict:
    """Run one job into ``run_dir``; return its summary. W&B (``logger=wandb``) writes under
    ``<wandb_dir>/wandb``: by default the run's own folder; a sweep passes its own, shared.

    Bad input raises ConfigError, and a record that must not be touched RecordError, before
    anything is written. A diverged run is a result. A stop signal (gradclip.interrupts) ends
    the run at a step boundary as ``interrupted``. An error while building the data or the
    model raises before the record begins; any error after that is recorded as ``failed``
    and re-raised when ``reraise``, except a write error (a full disk), whose message names the
    file. If even the final summary cannot be written, the returned summary says so under
    ``summary_write_error``.
    """
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:  # e.g. schedule.a0=${oops}
        raise ConfigError(f"the config cannot be resolved: {str(error).splitlines()[0]} "
                          f"(key {getattr(error, 'full_key', '?')})") from None
    validate_config(cfg)
    run_dir = Path(run_dir)
    state = run_state(run_dir)  # read once: the existing record, and an earlier attempt's W&B files
    finished = _existing_record(state, run_dir, config, bool(cfg.rerun))
    if finished:
        return finished | {"skipped": True}

    device = _resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.use_deterministic_algorithms(bool(cfg.deterministic), warn_only=True)
    torch.manual_seed(cfg.seed)

    data = load_dataset(cfg.data).to(device)
    if cfg.batch_size > data.num_train:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {data.num_train} training "
                          f"examples of data={data.name}; use batch_size <= {data.num_train}")
    model = build_model(cfg.model, data.input_shape, data.num_outputs).to(device)
    per_sample_reason = per_sample_unsupported_reason(model)
    if cfg.clip.granularity == "sample" and per_sample_reason:
        raise ConfigError(f"clip.granularity=sample needs per-example gradients, but {per_sample_reason}; "
                          "use clip.granularity=batch or another model")
    names, params = map(list, zip(*model.named_parameters()))
    num_parameters = sum(p.numel() for p in params)
    if cfg.log_theta and num_parameters > MAX_LOGGED_THETA:
        raise ConfigError(f"log_theta=true logs every parameter, but model={cfg.model.name} has {num_parameters} "
                          f"(at most {MAX_LOGGED_THETA}); use log_theta=false or a smaller model")
    clipper = make_clipper(cfg.clip, names)
    schedule = make_schedule(cfg.schedule, cfg.steps)

    previous_wandb = state.summary.get("wandb")
    summary = {"status": "running", "diverged_step": None, "seed": cfg.seed, "device": str(device),
               "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "host": socket.gethostname(), "process": process_identity(), "git": _git_state(),
               "versions": _versions(), "clipper": clipper.describe(), "num_parameters": num_parameters}
    recorder = RunRecorder(run_dir)
    tracker = NullTracker()
    exit_code = 1
    try:
        recorder.start(config, summary)
        tracker = make_tracker(cfg.logger, Path(wandb_dir or run_dir), config, previous_wandb)
        summary["wandb"] = tracker.run_path
        if tracker.run_path:  # the record names its W&B run from the start
            recorder.write_summary(summary)
        summary |= _train_loop(cfg, model, names, params, clipper, schedule, data, device, recorder, tracker)
        signum = interrupts.received()
        exit_code = interrupts.exit_code(signum) if summary["status"] == "interrupted" else 0
    except KeyboardInterrupt:  # train() called from a program that has no stop handler (a notebook)
        summary |= {"status": "interrupted", "interrupted_reason": "KeyboardInterrupt in the calling program"}
        raise
    except Exception as error:
        summary |= {"status": "failed", "error": str(error) if isinstance(error, RecordWriteError)
                    else f"{type(error).__name__}: {error}"}
        if not isinstance(error, RecordWriteError):  # a write error needs no traceback: it names the file
            summary["traceback"] = traceback.format_exc()
        summary.setdefault("steps_completed", recorder.final_values().get("step"))  # the last step logged
        if reraise and not isinstance(error, RecordWriteError):
            raise
    finally:
        try:  # the rows reach the disk before a summary can call the run complete
            recorder.close_rows()
        except RecordWriteError as error:
            if summary["status"] != "failed":
                summary |= {"status": "failed", "error": str(error)}
                exit_code = 1
        summary["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            recorder.write_summary(summary)
        except RecordWriteError as error:
            summary["summary_write_error"] = str(error)
        recorder.close()
        tracker.finish(summary, exit_code)
    return summary


class Maxima:
    """The largest value of each quantity since the last logged row, and over the whole run."""

    def __init__(self) -> None:
        self.since_row: dict[str, float] = {}
        self.run: dict[str, float] = {}

    def update(self, **values: float) -> None:
        for key, value in values.items():
            value = value if math.isfinite(value) else math.inf  # NaN must not vanish from a max
            self.since_row[key] = max(self.since_row.get(key, -math.inf), value)

    def flush(self) -> dict[str, float]:
        """Return the maxima since the last row and start a new interval."""
        row, self.since_row = self.since_row, {}
        for key, value in row.items():
            self.run[key] = max(self.run.get(key, -math.inf), value)
        return row


def _unit_row(step, lr, names, params, previous, delta, offsets) -> dict:
    """Per unit (AGC's units: rows of a weight, a whole bias) ||W_i|| before the step and ||Delta W_i||."""
    units = {}
    for k, (name, p) in enumerate(zip(names, params)):
        units[name] = {"weight_norm": unit_norms(_view(previous, offsets, k, p)).flatten().tolist(),
                       "step_norm": unit_norms(_view(delta, offsets, k, p)).flatten().tolist()}
    return {"step": step, "lr": lr, "units": units}


def _agc_unit_ratio(vectors: list[torch.Tensor], weights: list[torch.Tensor], clipper: Clipper) -> torch.Tensor:
    """max over units of ||v_i|| / (lambda max(||W_i||, eps)). With eps = 0 a zero unit has bound 0:
    a zero v_i there counts as 0 (it kept its bound), a non-zero one as inf."""
    return torch.stack([torch.nan_to_num(unit_norms(v) / clipper.agc_unit_bound(w), nan=0.0).max()
                        for v, w in zip(vectors, weights)]).max()


def _train_loop(cfg, model, names, params, clipper: Clipper, schedule, data, device, recorder, tracker) -> dict:
    """The SGD loop proper; returns the summary's results."""
    loss_fn = per_example_loss(data.task)
    # Evaluation runs in eval mode, where torch.func handles BatchNorm too.
    per_sample = PerSampleGradients(model, loss_fn)
    sample_granularity = cfg.clip.granularity == "sample"
    # Per-sample clipping from ghost norms where they cover the model, else vmap(grad).
    sample_clipping, per_sample_how = (make_sample_clipping(model, loss_fn, clipper) if sample_granularity
                                       else (None, None))
    optimizer = torch.optim.SGD(params, lr=schedule(0), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sampler = BatchSampler(data.num_train, cfg.batch_size, cfg.sampling,
                           torch.Generator().manual_seed(cfg.seed), device)
    agc_index = [k for k, n in enumerate(names) if clipper.method == "agc" and n not in clipper.excluded]
    theta = flatten_parameters_(params)  # one vector: ||theta|| and theta(n+1) - theta(n) in one op each
    previous, initial = theta.clone(), theta.clone()
    offsets = [0, *itertools.accumulate(p.numel() for p in params)]
    maxima = Maxima()
    maxima.update(param_norm=theta.norm().item())
    sum_a = sum_a2 = eval_seconds = 0.0
    # Plain Python copies: reading a DictConfig in the hot loop costs more than the checks.
    steps, log_every = int(cfg.steps), int(cfg.log_every)
    eval_at = evaluation_steps(steps, int(cfg.eval_every), int(cfg.eval_log_points))
    unit_log_every, log_theta = int(cfg.unit_log_every), bool(cfg.log_theta)
    max_norm = float(cfg.divergence.max_norm)

    def eval_row(step: int) -> float:
        """Log a full-data row if ``step`` is due one; return the seconds it took (kept out of the
        training speed)."""
        if step not in eval_at:
            return 0.0
        start = time.perf_counter()
        metrics = evaluate(model, per_sample, clipper, data, loss_fn, cfg.eval_chunk)
        row = {"step": step} | {f"eval/{k}": v for k, v in metrics.items()}
        recorder.log(row)
        tracker.log(row)
        return time.perf_counter() - start

    show_bar = cfg.progress is True or (cfg.progress == "auto" and sys.stderr.isatty()
                                        and HydraConfig.initialized() and HydraConfig.get().mode != RunMode.MULTIRUN)
    eval_row(0)
    start = time.perf_counter()
    status, diverged_step, reason, step = "completed", None, None, 0
    bar = tqdm(range(1, steps + 1), disable=not show_bar, desc=clipper.describe(), leave=False)
    for step in bar:
        lr = schedule(step - 1)
        sum_a += lr
        sum_a2 += lr * lr
        idx = sampler()
        x, y = data.x_train[idx], data.y_train[idx]
        if sample_granularity:
            mean, stats, losses = sample_clipping(x, y)
            for p, g in zip(params, mean):
                p.grad = g
            loss = losses.mean()
        else:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y).mean()
            loss.backward()
            stats = clipper.clip_batch_([p.grad for p in params], params)
            loss = losses = loss.detach()
        # Finite iff every gradient is: the per-example norms are at hand, ||mean g|| is not.
        grad_probe = stats.sample_grad_norm.max() if sample_granularity else stats.grad_norm
        # ||clipped g|| is the increment / a(n) of plain SGD in exact arithmetic; the realised
        # ||theta(n+1) - theta(n)|| / a(n) below also carries float32 rounding (about
        # ulp(theta) / a(n), large once a(n) is tiny), momentum and weight decay.
        watched = [loss, grad_probe, stats.clipped_grad_norm]
        if agc_index:  # the same unit-wise, against the weights before the step
            watched.append(_agc_unit_ratio([params[k].grad for k in agc_index], [params[k] for k in agc_index], clipper))
        for group in optimizer.param_groups:
            group["lr"] = lr
        previous.copy_(theta)
        optimizer.step()

        with torch.no_grad():
            delta = theta - previous
            watched += [theta.norm(), delta.norm()]
            if agc_index:
                watched.append(_agc_unit_ratio([_view(delta, offsets, k, params[k]) for k in agc_index],
                                               [_view(previous, offsets, k, params[k]) for k in agc_index], clipper) / lr)
            values = torch.stack(watched).tolist()  # the step's one host sync
        loss_value, grad_probe_value, update_norm = values[:3]
        param_norm, step_norm = values[-2:] if not agc_index else values[-3:-1]
        reason = _divergence(loss_value, grad_probe_value, param_norm, max_norm)
        maxima.update(param_norm=param_norm)
        if reason:
            status, diverged_step = "diverged", step
        else:  # the increment bounds are about finite steps; a diverging step's values are in its row
            maxima.update(update_norm=update_norm, step_ratio=step_norm / lr)
            if agc_index:
                maxima.update(unit_update_ratio=values[3], unit_step_ratio=values[-1])
        if unit_log_every and (step == 1 or step % unit_log_every == 0):
            recorder.log_units(_unit_row(step, lr, names, params, previous, delta, offsets))

        # A stop signal (SIGTERM from SLURM, Ctrl-C) ends the run here, at a step boundary, with
        # this step's row written: the record says how far it got.
        stop = interrupts.received() if step < steps else None  # after the last step it is done
        if reason or stop or step % log_every == 0 or step == steps:
            row = {"step": step, "train/loss": loss_value,
                   "train/scaled_loss": (losses / stats.factor).mean().item(),
                   "train/grad_norm": stats.grad_norm.item(), "train/clipped_grad_norm": update_norm,
                   "train/clip_fraction": stats.clip_fraction.item(),
                   "train/clip_factor_mean": stats.factor.mean().item(), "train/clip_factor_max": stats.factor.max().item(),
                   "train/lr": lr, "train/sum_lr": sum_a, "train/sum_lr_sq": sum_a2,
                   "train/param_norm": param_norm, "train/dist_from_init": (theta - initial).norm().item()}
            if log_theta:
                row |= {f"train/theta_{i}": v for i, v in enumerate(theta.tolist())}
            if stats.sample_grad_norm is not None:
                row["train/sample_grad_norm_mean"] = stats.sample_grad_norm.mean().item()
                row["train/sample_grad_norm_max"] = stats.sample_grad_norm.max().item()
            since_row = maxima.flush()
            row |= {f"train/max_{key}": since_row[key] for key in MAXIMA_LOGGED if key in since_row}
            recorder.log(row)
            tracker.log(row)
            bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
        if reason:
            log.info("diverged at step %d: %s", step, reason)
            break
        if stop:
            status = "interrupted"
            break
        # Drop this step's per-example tensors before the next step allocates its own: holding
        # both makes glibc map and unmap them every step (measured: a quarter of the speed).
        mean = stats = losses = None
        if step != steps:
            eval_seconds += eval_row(step)
    bar.close()
    wall = time.perf_counter() - start - eval_seconds
    if status == "completed":
        eval_row(steps)

    maxima.flush()
    if status == "interrupted":
        reason = f"{interrupts.name(stop)} after step {step} of {steps}"
    return {"status": status, "diverged_step": diverged_step,
            ("interrupted_reason" if status == "interrupted" else "diverged_reason"): reason,
            "steps_completed": step, "initial_param_norm": initial.norm().item(),
            **({"initial_theta": initial.tolist()} if log_theta else {}),
            **{f"max_{key}": value for key, value in maxima.run.items()},
            "sum_lr": sum_a, "sum_lr_sq": sum_a2, "per_sample_gradients": per_sample_how, "wall_time_s": wall,
            "steps_per_s": step / wall if wall > 0 else None, "final": recorder.final_values()}


# Per-interval maxima logged in each train/ row as train/max_<key>.
MAXIMA_LOGGED = ("update_norm", "step_ratio", "unit_update_ratio", "unit_step_ratio")


def flatten_parameters_(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Move the parameters into one contiguous vector, each parameter becoming a view of it.

    The optimizer's in-place updates then change the vector, so ||theta|| and the increment
    theta(n+1) - theta(n) cost one operation each instead of one per tensor.
    """
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        start = 0
        for p in params:
            p.data = flat[start : start + p.numel()].view_as(p)
            start += p.numel()
    return flat


def _view(flat: torch.Tensor, offsets: list[int], k: int, like: torch.Tensor) -> torch.Tensor:
    """Parameter k's slice of a flat vector, in its shape."""
    return flat[offsets[k] : offsets[k + 1]].view_as(like)


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


# -- Hydra entry point ----------------------------------------------------------------------------


def _dirname(override_dirname: str) -> str:
    """A job's directory name from its overrides: readable, filesystem-safe, short enough."""
    name = re.sub(r"[^A-Za-z0-9=,._+-]", "_", override_dirname) or "default"
    if len(name) > 150:
        name = name[:120] + "-" + hashlib.sha1(override_dirname.encode()).hexdigest()[:12]
    return name


OmegaConf.register_new_resolver("gradclip_dirname", _dirname, replace=True)


def _job(cfg: DictConfig) -> None:
    """One Hydra job: train, then say in one line what happened, and exit with a code that says
    it (a single run) or note it in the sweep's journal (gradclip.sweep: a job's failure never
    stops the other jobs, and the sweep's report and exit code count it)."""
    global _job_began
    _job_began = True
    if not interrupts.installed():  # a worker process of the joblib launcher
        interrupts.install(_idle_worker_exits)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN

    def outcome(kind: str, detail: str = "", code: int = 1) -> None:
        """Journal this job's outcome in a sweep; end the process of a single run with ``code``."""
        if multirun:
            sweep.record_job(Path(hydra_cfg.sweep.dir), run_dir.name, kind, detail)
        elif code:
            sys.exit(code)

    signum = interrupts.received()
    if signum:
        if not multirun:
            print(f"gradclip: stopped by {interrupts.name(signum)} before the run began; nothing recorded",
                  file=sys.stderr)
        outcome("not_started", f"{interrupts.name(signum)} before the job began", interrupts.exit_code(signum))
        _stop_sweep(signum)
        return
    outcome("started", code=0)
    sweep.job_here = True
    try:
        # A crash in one job of a sweep is recorded as `failed` and the sweep goes on.
        summary = train(cfg, run_dir, reraise=not multirun,
                        wandb_dir=Path(hydra_cfg.sweep.dir).resolve() if multirun else None)
    except ConfigError as error:
        # One clear line, no traceback: the input is wrong, not the code.
        print(f"gradclip: bad input: {error}", file=sys.stderr)
        if multirun:
            _record_if_empty(run_dir, {"status": "failed", "bad_input": True, "error": str(error)})
        return outcome("bad_input", str(error), 2)
    except RecordError as error:  # a record that must not be touched: corrupt, or live elsewhere
        print(f"gradclip: {error}", file=sys.stderr)
        return outcome("failed", str(error), 1)
    except Exception as error:  # a crash before the record began (building the model, the data)
        if not multirun:
            raise  # Hydra prints the traceback
        message = f"{type(error).__name__}: {error}"
        print(f"gradclip: run failed: {message}", file=sys.stderr)
        _record_if_empty(run_dir, {"status": "failed", "error": message, "traceback": traceback.format_exc()})
        return outcome("failed", message, 1)
    finally:
        sweep.job_here = False

    status = summary["status"]
    if summary.get("skipped"):
        log.info("%s already holds this %s run; skipped (rerun=true trains it again)", run_dir, status)
        return outcome("skipped", code=0)
    if status == "failed":
        recorded = (f"and its summary could not be written either ({summary['summary_write_error']})"
                    if "summary_write_error" in summary else f"recorded in {run_dir / SUMMARY_FILE}")
        print(f"gradclip: run failed: {summary['error']}; {recorded}", file=sys.stderr)
        return outcome("failed", summary["error"], 1)
    if status == "interrupted":
        signum = interrupts.received()
        again = " (the same command trains it again)" if multirun else ""
        print(f"gradclip: interrupted by {summary['interrupted_reason']}; recorded in {run_dir / SUMMARY_FILE}{again}",
              file=sys.stderr)
        outcome("interrupted", summary["interrupted_reason"], interrupts.exit_code(signum))
        _stop_sweep(signum)
        return
    log.info("%s: %s after %s steps -> %s", status, summary.get("clipper"), summary.get("steps_completed"), run_dir)
    outcome(status, summary.get("diverged_reason") or "", code=0)


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


if __name__ == "__main__":
    main()
