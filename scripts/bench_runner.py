"""`make bench`: steps/s of the runner against a minimal hand-written loop doing the same work.

Both train the default MLP (40-100-100-10) on MNIST-1D, batch 64, norm clipping (tau = 1), SGD,
with W&B offline logging every 10 steps, at batch and at sample granularity. The runner also
does what the plain loop does not: divergence checks, step-size and increment bookkeeping and
the local record. Timings cover the training loop only (start-up and evaluation excluded); the
two are run alternately and the median of the per-pair ratios is reported, since this machine's
speed drifts. Target: runner >= 0.9x the plain loop.

    python scripts/bench_runner.py [--steps 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import wandb
from hydra import compose, initialize_config_dir

from gradclip.data import load_dataset
from gradclip.gradients import PerSampleGradients, per_example_loss
from gradclip.models import build_model
from gradclip.train import CONFIG_DIR, train


def runner_steps_per_s(granularity: str, steps: int, workdir: Path, seed: int) -> float:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "clip=norm", f"clip.granularity={granularity}", "schedule=constant", "logger=wandb",
            "logger.mode=offline", f"steps={steps}", "log_every=10", "eval_every=0", f"seed={seed}",
            "progress=false",
        ])
    summary = train(cfg, workdir / f"runner-{granularity}-{seed}")
    return summary["steps_per_s"]


def plain_steps_per_s(granularity: str, steps: int, workdir: Path, seed: int) -> float:
    """The loop a researcher would write by hand, with torch's own clipping."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train")
    torch.manual_seed(seed)
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_outputs)
    loss_fn = per_example_loss(data.task)
    per_sample = PerSampleGradients(model, loss_fn)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    generator = torch.Generator().manual_seed(seed)
    run = wandb.init(project="gradclip-bench", mode="offline", dir=str(workdir), reinit="create_new",
                     settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(data.num_train, (64,), generator=generator)
        x, y = data.x_train[idx], data.y_train[idx]
        if granularity == "sample":
            grads, losses = per_sample(x, y)
            norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]).norm(dim=0)
            scale = (1.0 / (norms + 1e-6)).clamp(max=1.0)
            for p, g in zip(params, grads):
                p.grad = torch.tensordot(scale, g, dims=1) / len(idx)
            loss = losses.mean()
        else:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 10 == 0:
            run.log({"train/loss": loss.item()}, step=step)
    elapsed = time.perf_counter() - start
    run.finish()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps, {args.repeats} alternating pairs")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for granularity in ("batch", "sample"):
            plain_steps_per_s(granularity, 50, workdir, seed=99)  # warm-up: imports, allocator, W&B
            runner, plain = [], []
            for seed in range(args.repeats):
                runner.append(runner_steps_per_s(granularity, args.steps, workdir, seed))
                plain.append(plain_steps_per_s(granularity, args.steps, workdir, seed))
            ratios = [r / p for r, p in zip(runner, plain)]
            print(f"{granularity:>6}: runner {statistics.median(runner):7.0f} steps/s, "
                  f"plain loop {statistics.median(plain):7.0f} steps/s, "
                  f"ratio median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
