"""Clipped SGD on one problem: ``python -m gradclip.train`` (Hydra; one run per job).

    theta(n+1) = theta(n) - a(n) * clipped gradient          (Ramaswamy 2023, eq. 1)

Each step: draw a mini-batch, take its gradient (the batch mean, or every example's through
torch.func), clip it (gradclip.clipping), step plain SGD with a(n) from gradclip.schedules,
then check cheaply for divergence. A diverged run stops, is recorded with its step and exits 0:
divergence is a result. Every ``log_every`` steps a ``train/`` row, every ``eval_every`` steps a
full-data ``eval/`` row (gradclip.evaluation) go to the local record (gradclip.records) and to
W&B (gradclip.tracking).

The loop never imports plotting: figures are built later from the records.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
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

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import gradclip
from gradclip.checks import ConfigError, require_choice, require_number
from gradclip.clipping import Clipper, make_clipper, total_norm, unit_norms, validate_clip_config
from gradclip.data import load_dataset, validate_data_config
from gradclip.evaluation import evaluate
from gradclip.gradients import PerSampleGradients, per_example_loss
from gradclip.models import build_model, per_sample_unsupported_reason, validate_model_config
from gradclip.records import RunRecorder, is_finished, read_summary
from gradclip.schedules import make_schedule, validate_schedule_config
from gradclip.tracking import LOGGERS, make_tracker

log = logging.getLogger("gradclip.train")

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


# -- configuration --------------------------------------------------------------------------------


def validate_config(cfg: Mapping) -> None:
    """Every check that needs no data or model: bad input fails here, before any work."""
    require_number(cfg, "cfg", "steps", lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1")
    require_number(cfg, "cfg", "batch_size", lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1")
    require_number(cfg, "cfg", "seed", lambda v: float(v).is_integer(), "an integer")
    require_number(cfg, "cfg", "log_every", lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1")
    require_number(cfg, "cfg", "eval_every", lambda v: v >= 0 and float(v).is_integer(), "an integer >= 0")
    require_number(cfg, "cfg", "eval_chunk", lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1")
    require_number(cfg, "cfg", "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    require_number(cfg, "cfg", "weight_decay", lambda v: v >= 0, ">= 0")
    require_number(cfg["divergence"], "divergence", "max_norm", lambda v: v > 0, "> 0")
    require_choice(cfg, "cfg", "device", ("auto", "cpu", "cuda"))
    require_choice(cfg, "cfg", "sampling", ("iid", "shuffle"))
    require_choice(cfg["logger"], "logger", "name", LOGGERS)
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch finds no CUDA device here; use device=auto or device=cpu")
    validate_clip_config(cfg["clip"])
    validate_schedule_config(cfg["schedule"])
    validate_model_config(cfg["model"])
    validate_data_config(cfg["data"])


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
    import numpy
    import omegaconf
    import torchvision
    import wandb

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "hydra": hydra.__version__, "omegaconf": omegaconf.__version__,
            "wandb": wandb.__version__, "gradclip": gradclip.__version__}


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


def train(cfg: DictConfig, run_dir: Path, reraise: bool = True) -> dict:
    """Run one job into ``run_dir``; return its summary. Bad input raises ConfigError before
    anything is written; a diverged run is a result; any other error is recorded as ``failed``
    (and re-raised when ``reraise``)."""
    validate_config(cfg)
    run_dir = Path(run_dir)
    if not cfg.rerun and is_finished(run_dir):
        summary = read_summary(run_dir)
        log.info("%s already holds a %s run; skipping (rerun=true to train again)", run_dir, summary["status"])
        return summary

    device = _resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
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
    clipper = make_clipper(cfg.clip, names)
    schedule = make_schedule(cfg.schedule, cfg.steps)

    config = OmegaConf.to_container(cfg, resolve=True)
    summary = {"status": "running", "diverged_step": None, "seed": cfg.seed, "device": str(device),
               "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "host": socket.gethostname(), "git": _git_state(), "versions": _versions(),
               "clipper": clipper.describe(), "num_parameters": sum(p.numel() for p in params)}
    recorder = RunRecorder(run_dir)
    recorder.start(config, summary)
    tracker = make_tracker(cfg.logger, run_dir, config)
    summary["wandb"] = tracker.run_path
    exit_code = 1
    try:
        summary |= _train_loop(cfg, model, names, params, clipper, schedule, data, device,
                               per_sample_reason, recorder, tracker)
        exit_code = 0
    except Exception as error:
        summary |= {"status": "failed", "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()}
        log.error("run failed: %s (recorded in %s)", summary["error"], run_dir / "summary.json")
        if reraise:
            raise
    finally:
        summary["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        recorder.write_summary(summary)
        recorder.close()
        tracker.finish(summary, exit_code)
    return summary


def _train_loop(cfg, model, names, params, clipper: Clipper, schedule, data, device,
                per_sample_reason, recorder, tracker) -> dict:
    """The SGD loop proper; returns the summary's results."""
    loss_fn = per_example_loss(data.task)
    per_sample = PerSampleGradients(model, loss_fn) if per_sample_reason is None else None
    sample_granularity = cfg.clip.granularity == "sample"
    optimizer = torch.optim.SGD(params, lr=schedule(0), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sampler = BatchSampler(data.num_train, cfg.batch_size, cfg.sampling,
                           torch.Generator().manual_seed(cfg.seed), device)
    agc_units = [(k, p) for k, (n, p) in enumerate(zip(names, params)) if clipper.method == "agc"
                 and n not in clipper.excluded]
    theta = flatten_parameters_(params)  # one vector: ||theta|| and theta(n+1) - theta(n) in one op each
    previous, initial = theta.clone(), theta.clone()
    offsets = [0, *itertools.accumulate(p.numel() for p in params)]
    # Maxima of ||theta(n+1) - theta(n)|| / a(n) (and AGC's unit-wise ratio) since the last row.
    row_step_ratio = max_step_ratio = row_unit_ratio = max_unit_ratio = 0.0
    max_param_norm = theta.norm().item()
    sum_a = sum_a2 = 0.0
    # Plain Python copies: reading a DictConfig in the hot loop costs more than the checks.
    steps, log_every, eval_every = int(cfg.steps), int(cfg.log_every), int(cfg.eval_every)
    max_norm = float(cfg.divergence.max_norm)

    def eval_row(step: int) -> None:
        if per_sample is None or not eval_every:
            return
        metrics = evaluate(model, per_sample, clipper, data, loss_fn, cfg.eval_chunk)
        row = {"step": step} | {f"eval/{k}": v for k, v in metrics.items()}
        recorder.log(row)
        tracker.log(row)

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
            grads, losses = per_sample(x, y)
            mean, stats = clipper.clip_samples(grads, params)
            for p, g in zip(params, mean):
                p.grad = g
            loss = losses.mean()
        else:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y).mean()
            loss.backward()
            stats = clipper.clip_batch_([p.grad for p in params], params)
            loss = losses = loss.detach()
        for group in optimizer.param_groups:
            group["lr"] = lr
        previous.copy_(theta)
        optimizer.step()

        with torch.no_grad():
            delta = theta - previous
            # Finite iff every gradient is: the per-example norms are at hand, ||mean g|| is not.
            grad_probe = stats.sample_grad_norm.max() if sample_granularity else stats.grad_norm
            watched = [loss, grad_probe, theta.norm(), delta.norm()]
            if agc_units:  # unit-wise: ||dW_i|| / (a(n) lambda max(||W_i||, eps)), W_i before the step
                watched.append(torch.stack([
                    (unit_norms(_view(delta, offsets, k, p)) / clipper.agc_unit_bound(_view(previous, offsets, k, p))).max()
                    for k, p in agc_units]).max() / lr)
            watched = torch.stack(watched).tolist()  # the step's one host sync
        loss_value, grad_probe, param_norm, step_norm = watched[:4]
        row_step_ratio = max(row_step_ratio, step_norm / lr)
        if agc_units:
            row_unit_ratio = max(row_unit_ratio, watched[4])
        max_param_norm = max(max_param_norm, param_norm if math.isfinite(param_norm) else math.inf)
        reason = _divergence(loss_value, grad_probe, param_norm, max_norm)
        if reason:
            status, diverged_step = "diverged", step

        if reason or step % log_every == 0 or step == steps:
            row = {"step": step, "train/loss": loss_value,
                   "train/scaled_loss": (losses / stats.factor).mean().item(),
                   "train/grad_norm": stats.grad_norm.item(), "train/clipped_grad_norm": stats.clipped_grad_norm.item(),
                   "train/clip_fraction": stats.clip_fraction.item(),
                   "train/clip_factor_mean": stats.factor.mean().item(), "train/clip_factor_max": stats.factor.max().item(),
                   "train/lr": lr, "train/sum_lr": sum_a, "train/sum_lr_sq": sum_a2,
                   "train/param_norm": param_norm, "train/dist_from_init": (theta - initial).norm().item(),
                   "train/max_step_ratio": row_step_ratio}
            if stats.sample_grad_norm is not None:
                row["train/sample_grad_norm_mean"] = stats.sample_grad_norm.mean().item()
                row["train/sample_grad_norm_max"] = stats.sample_grad_norm.max().item()
            if agc_units:
                row["train/max_unit_step_ratio"] = row_unit_ratio
            recorder.log(row)
            tracker.log(row)
            bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)
            max_step_ratio = max(max_step_ratio, row_step_ratio)
            max_unit_ratio = max(max_unit_ratio, row_unit_ratio)
            row_step_ratio = row_unit_ratio = 0.0
        if reason:
            log.info("diverged at step %d: %s", step, reason)
            break
        if eval_every and step % eval_every == 0 and step != steps:
            eval_row(step)
    bar.close()
    wall = time.perf_counter() - start
    if status == "completed":
        eval_row(steps)

    results = {"status": status, "diverged_step": diverged_step, "diverged_reason": reason,
               "steps_completed": step if status == "completed" else step - 1,
               "initial_param_norm": initial.norm().item(), "max_param_norm": max_param_norm,
               "max_step_ratio": max_step_ratio,
               "sum_lr": sum_a, "sum_lr_sq": sum_a2, "wall_time_s": wall,
               "steps_per_s": step / wall if wall > 0 else None, "final": dict(recorder.last_values)}
    if agc_units:
        results["max_unit_step_ratio"] = max_unit_ratio
    return results


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
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        # A crash in one job of a sweep is recorded as `failed` and the sweep goes on.
        summary = train(cfg, Path(hydra_cfg.runtime.output_dir), reraise=not multirun)
    except ConfigError as error:
        # One clear line, no traceback: the input is wrong, not the code.
        print(f"gradclip: bad input: {error}", file=sys.stderr)
        sys.exit(2)
    log.info("%s: %s after %s steps -> %s", summary["status"], summary.get("clipper"),
             summary.get("steps_completed"), hydra_cfg.runtime.output_dir)


main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(_job)

if __name__ == "__main__":
    main()
