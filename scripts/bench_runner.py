"""`make bench`: the speed and memory of the training loop, as ratios measured side by side.

All on the default MLP (40-100-100-10) on MNIST-1D, batch 64, norm clipping (tau = 1), SGD:

1. a single run against a minimal hand-written loop doing the same work (W&B offline every 10
   steps), at batch and at sample granularity; target: runner >= 0.9x the plain loop;
2. a single run's per-sample step (ghost norms) against its batch step; target: <= 1.5x the time;
3. a population of 32 members (seeds 0-31) against single runs, in model-steps/s: batch
   clipping against the single runner's batch steps/s (target >= 3x), and per-sample clipping
   against the single runner with per-example gradients from vmap(grad) (``per_sample=vmap``,
   the only per-sample path before ghost norms; target >= 8x);
4. the peak memory of a population of 128 deep tanh MLPs with per-sample clipping (< 4 GB);
5. one command of the default stability sweep end to end (``python -m gradclip.train -m
   +experiment=stability clip=norm clip.threshold=0.1,1.0 clip.granularity=batch,sample``: 576
   runs of 50 steps on three models, W&B offline, from process start to the sweep's report) in
   model-steps/s, against the same runs trained by the population engine alone in one process
   (composed configs, grouped, train_population, no W&B); target: at least half. At 2 threads
   also the same sweep with ``hydra.launcher.workers=2`` (two 1-thread worker processes, what
   ``make reproduce`` does on 2 cores) against the same engine;
6. one full-data evaluation (||H||, ||mean grad||, scaled loss, losses and accuracies over the
   4,000 MNIST-1D training examples) of 6 members, per-sample norm clipping: the whole population
   from ghost norms (what the loop uses) against one member at a time from vmap(grad), on the MLP
   and the 1-D CNN.

Timings cover the training loop only (start-up and evaluation excluded). Single runs and the plain
loop alternate and the median of the per-pair ratios is reported, since this machine's speed
drifts. Everything runs at 1 and at 2 threads (torch.set_num_threads).

    python scripts/bench_runner.py [--steps 1000] [--repeats 5] [--threads 1 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gradclip.config import CONFIG_DIR
from gradclip.data import load_dataset
from gradclip.gradients import PerSampleGradients, per_example_loss
from gradclip.models import build_model
from gradclip.records import load_runs
from gradclip.runner import train, train_population


def compose_run(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["clip=norm", "schedule=constant", "eval_every=0", "progress=false",
                                           *overrides])


LOGGER = ["logger=wandb", "logger.mode=offline"]  # --logger none: W&B off in every measurement


def runner_steps_per_s(granularity: str, steps: int, workdir: Path, seed: int, device: str, *extra: str) -> float:
    cfg = compose_run(f"clip.granularity={granularity}", *LOGGER, f"steps={steps}",
                      "log_every=10", f"seed={seed}", f"device={device}", *extra)
    # A folder of its own each time: a finished record there would be returned, not trained again.
    run_dir = workdir / f"runner-{granularity}-{seed}-{'-'.join(extra)}-{time.monotonic_ns()}"
    return train(cfg, run_dir, reraise=True)["steps_per_s"]


def population_model_steps_per_s(granularity: str, members: int, steps: int, workdir: Path, device: str,
                                 *extra: str) -> float:
    cfgs = [compose_run(f"clip.granularity={granularity}", "logger=none", f"steps={steps}", "log_every=10",
                        f"seed={seed}", f"device={device}", *extra) for seed in range(members)]
    name = f"population-{granularity}-{members}-{time.monotonic_ns()}"
    summaries = train_population(cfgs, [workdir / name / str(seed) for seed in range(members)])
    return members * steps / summaries[0]["wall_time_s"]


def plain_steps_per_s(granularity: str, steps: int, workdir: Path, seed: int, device: str) -> float:
    """The loop a researcher would write by hand, with torch's own clipping."""
    cfg = compose_run()
    torch.manual_seed(seed)
    data = load_dataset(cfg.data).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_outputs).to(device)
    loss_fn = per_example_loss(data.task)
    per_sample = PerSampleGradients(model, loss_fn)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    generator = torch.Generator().manual_seed(seed)
    run = None
    if LOGGER[0] == "logger=wandb":
        import wandb

        run = wandb.init(project="gradclip-bench", mode="offline", dir=str(workdir), reinit="create_new",
                         settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(data.num_train, (64,), generator=generator).to(device)
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
            value = loss.item()
            if run is not None:
                run.log({"train/loss": value}, step=step)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if run is not None:
        run.finish()
    return steps / elapsed


STABILITY = ["+experiment=stability", "clip=norm", "clip.threshold=0.1,1.0", "clip.granularity=batch,sample"]


def sweep_end_to_end(workdir: Path, threads: int, device: str, workers: int = 1) -> float:
    """Model-steps/s of one default stability sweep as a user runs it, from process start to
    the report, with ``workers`` worker processes of ``threads`` threads each."""
    root = workdir / f"e2e-{threads}-{workers}-{time.monotonic_ns()}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gradclip.train", "-m", *STABILITY, f"output_root={root}", LOGGER[0],
                    f"threads={threads}", f"device={device}", f"hydra.launcher.workers={workers}"],
                   check=True, capture_output=True, cwd=workdir)
    wall = time.perf_counter() - start
    runs, _ = load_runs(root)
    return runs["summary.steps_completed"].sum() / wall


def stability_end_to_end(workdir: Path, threads: int, device: str) -> tuple[float, float]:
    """Model-steps/s of one default stability sweep as a user runs it, and of the population
    engine alone on the same runs."""
    end_to_end = sweep_end_to_end(workdir, threads, device)

    from gradclip.config import population_key
    cfgs = []
    for model in ("deep_tanh", "rnn_exploding", "mlp"):
        for a0 in ("0.1", "1", "3", "10", "100", "1000"):
            for seed in range(8):
                for tau in ("0.1", "1.0"):
                    for granularity in ("batch", "sample"):
                        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                            cfgs.append(compose("train", overrides=[
                                "+experiment=stability", "clip=norm", f"clip.threshold={tau}",
                                f"clip.granularity={granularity}", f"model={model}", f"schedule.a0={a0}",
                                f"seed={seed}", "logger=none", f"device={device}"]))
    groups: dict[str, list] = {}
    for cfg in cfgs:
        groups.setdefault(population_key(OmegaConf.to_container(cfg, resolve=True)), []).append(cfg)
    steps, start = 0, time.perf_counter()
    for k, group in enumerate(groups.values()):
        summaries = train_population(group, [workdir / f"raw-{threads}-{k}-{i}" for i in range(len(group))])
        steps += sum(s["steps_completed"] for s in summaries)
    return end_to_end, steps / (time.perf_counter() - start)


def evaluation_seconds(model: str, members: int, device: str) -> tuple[float, float]:
    """Seconds of one full-data evaluation of ``members`` members: one member at a time from
    vmap(grad) (gradclip.evaluation.evaluate), and the population at once from ghost norms."""
    from gradclip.clipping import Clipper, make_clipper
    from gradclip.evaluation import PopulationEvaluation, evaluate
    from gradclip.population import Population

    cfg = compose_run(f"model={model}", "clip.granularity=sample", f"device={device}")
    data = load_dataset(cfg.data).to(device)
    models = []
    for seed in range(members):
        torch.manual_seed(seed)
        models.append(build_model(cfg.model, data.input_shape, data.num_outputs).to(device))
    names = [name for name, _ in models[0].named_parameters()]
    clippers = [make_clipper(cfg.clip, names) for _ in models]
    loss_fn = per_example_loss(data.task)
    start = time.perf_counter()
    for m, clipper in zip(models, clippers):
        evaluate(m, PerSampleGradients(m, loss_fn), clipper, data, loss_fn, cfg.eval_chunk)
    one_at_a_time = time.perf_counter() - start
    population = Population(models, loss_fn, Clipper.stacked(clippers).to(device), "sample")
    together = PopulationEvaluation(population, loss_fn, cfg.eval_chunk)
    start = time.perf_counter()
    together(data)
    return one_at_a_time, time.perf_counter() - start


def peak_memory_gb(members: int, steps: int, threads: int, device: str) -> float:
    """Peak resident memory (CPU) or peak allocated GPU memory of a population of deep tanh MLPs
    with per-sample norm clipping, in a process of its own."""
    code = f"""
import json, resource, sys, tempfile, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_runner import compose_run
from gradclip.runner import train_population
torch.set_num_threads({threads})
cfgs = [compose_run("model=deep_tanh", "clip.granularity=sample", "logger=none", "steps={steps}",
                    "seed=" + str(seed), "device={device}") for seed in range({members})]
with tempfile.TemporaryDirectory() as tmp:
    train_population(cfgs, [tmp + "/" + str(seed) for seed in range({members})])
gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
print(json.dumps({{"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "gpu": gpu}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    return (measured["gpu"] if device == "cuda" else measured["rss"]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--logger", default="wandb", choices=["wandb", "none"],
                        help="W&B offline logging in every measurement (the default), or none")
    args = parser.parse_args()
    if args.logger == "none":
        LOGGER[:] = ["logger=none"]
    print(f"torch {torch.__version__}, device {args.device}, {args.steps} steps, {args.repeats} alternating pairs")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(f"\n-- {threads} thread(s)")
            single = {}
            for granularity in ("batch", "sample"):
                plain_steps_per_s(granularity, 50, workdir, 99, args.device)  # warm-up: imports, allocator, W&B
                runner, plain = [], []
                for seed in range(args.repeats):
                    runner.append(runner_steps_per_s(granularity, args.steps, workdir, seed, args.device))
                    plain.append(plain_steps_per_s(granularity, args.steps, workdir, seed, args.device))
                ratios = [r / p for r, p in zip(runner, plain)]
                single[granularity] = statistics.median(runner)
                print(f"1. {granularity:>6}: runner {single[granularity]:7.0f} steps/s, plain loop "
                      f"{statistics.median(plain):7.0f} steps/s, ratio median {statistics.median(ratios):.3f} "
                      f"(min {min(ratios):.3f}, max {max(ratios):.3f}; target >= 0.9)")
            print(f"2. per-sample step / batch step (single run, ghost norms): "
                  f"{single['batch'] / single['sample']:.2f}x the time (target <= 1.5)")
            vmap_single = statistics.median(runner_steps_per_s("sample", args.steps // 2, workdir, seed, args.device,
                                                               "per_sample=vmap") for seed in range(3))
            steps = max(args.steps // 4, 50)
            for granularity, baseline, label, target in (
                    ("batch", single["batch"], "the single runner, batch", 3),
                    ("sample", vmap_single, "the single runner with vmap(grad) per-sample gradients", 8)):
                pop = statistics.median(population_model_steps_per_s(granularity, args.members, steps, workdir,
                                                                     args.device) for _ in range(3))
                print(f"3. population of {args.members}, {granularity}: {pop:7.0f} model-steps/s against "
                      f"{baseline:7.0f} of {label}: {pop / baseline:.1f}x (target >= {target})")
            memory = peak_memory_gb(128, 20, threads, args.device)
            print(f"4. population of 128 deep tanh MLPs, per-sample: peak memory {memory:.2f} GB (target < 4)")
            end_to_end, raw = stability_end_to_end(workdir, threads, args.device)
            print(f"5. stability sweep (576 runs): {end_to_end:7.0f} model-steps/s end to end, {raw:7.0f} in the "
                  f"population engine alone: {end_to_end / raw:.2f} (target >= 0.5)")
            if threads > 1 and args.device == "cpu":
                side_by_side = sweep_end_to_end(workdir, 1, args.device, workers=threads)
                print(f"5. the same sweep in {threads} 1-thread worker processes: {side_by_side:7.0f} model-steps/s "
                      f"end to end: {side_by_side / raw:.2f} of the {threads}-thread engine alone")
            for model in ("mlp", "cnn1d"):
                vmapped, ghosted = evaluation_seconds(model, 6, args.device)
                print(f"6. full-data evaluation of 6 {model} members: {vmapped:.2f} s one at a time (vmap(grad)), "
                      f"{ghosted:.2f} s together (ghost norms): {vmapped / ghosted:.1f}x")


if __name__ == "__main__":
    main()
