"""The collect step: run records in, the tidy tables behind every figure and verdict out.

``collect(name, source)`` reads one experiment's run records (local files under
``source.runs/<experiment>/``, or an online W&B project) and writes its tables into
``source.results``: the stable fractions and their Wilson intervals, the full-data ||H|| paths, the
roots of eq. (22) each limit-set run is compared with (gradclip.meanfield), the ODE solutions and
gaps, the per-unit AGC steps. The aggregations themselves live in gradclip.analysis; this module
picks the runs, names the problems and writes the files. Plots (scripts/figures.py) and verdicts
(gradclip.verdicts) read only these tables.

``source`` is any object with ``runs``, ``results``, ``source`` ('local' or 'wandb'), ``entity``
and ``project`` (the command line's namespace, or :class:`Source`).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from gradclip import interrupts
from gradclip.analysis import (
    LARGE_FROM, MIN_UNITS, agc_stability_limits, convergence_summary, eval_paths, freeze_table, increment_table,
    ode_gap_summary, ode_seed_mean_gap, stability_table, total_schedule_sum, trajectories, unit_step_ratios,
    with_labels)
from gradclip.data import SYMMETRIC_NOISE, load_dataset
from gradclip.labels import NOISE_LABEL
from gradclip.meanfield import (
    batch_clipped_root, batch_clipped_root_location, clipped_root, least_squares, ode_path,
    scaled_loss_minimiser_location)
from gradclip.records import CONFIG_FILE, load_runs, load_units, load_wandb_runs


@dataclass
class Source:
    """Where the records are and where the tables go."""

    runs: Path
    results: Path
    source: str = "local"
    entity: str | None = None
    project: str = "gradclip"


def load(source, experiment: str, keep_failed: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An experiment's runs and metrics, local records or W&B. Only results enter a table:
    completed and diverged runs (and failed ones where ``keep_failed``: the stability table
    counts them). Interrupted, live and failed runs, and jobs that never had a config (bad
    input, a corrupt record), are named here and left out."""
    if source.source == "wandb":
        runs, metrics = load_wandb_runs(source.entity, source.project, {"group": experiment})
    else:
        runs, metrics = load_runs(Path(source.runs) / experiment)
    statuses = ["completed", "diverged"] + (["failed"] if keep_failed else [])
    configured = runs["seed"].notna() if "seed" in runs else pd.Series(False, index=runs.index)
    kept = runs["summary.status"].isin(statuses) & configured
    for _, run in runs[~kept].iterrows():
        print(f"figures: {experiment}: left out {run['run_id']} ({run['summary.status']}: {run['reason']})")
    runs = runs[kept]
    if runs.empty:
        raise SystemExit(f"no finished runs of {experiment} in {source.source} records: run the sweep first")
    return runs, metrics[metrics["run_id"].isin(runs["run_id"])]


PROBLEMS = {"deep_tanh": "deep tanh MLP", "rnn_exploding": "exploding RNN", "rnn": "RNN", "lstm": "LSTM",
            "mlp": "MLP", "cnn1d": "CNN1D", "resnet": "1-D ResNet", "linear": "linear"}


def problem(runs: pd.DataFrame) -> pd.Series:
    """A readable name per run for the model: its preset's name (deep tanh MLP, exploding RNN,
    LSTM) where it has one, else the model's."""
    preset = runs["model.preset"] if "model.preset" in runs else pd.Series(None, index=runs.index, dtype=object)
    names = preset.where(preset.notna(), runs["model.name"])
    return names.map(lambda name: PROBLEMS.get(name, str(name).upper()))


DATA_LABEL = {"mnist1d": "MNIST-1D"}


def collect_stability(source) -> str:
    runs, metrics = load(source, "stability", keep_failed=True)
    runs["model.name"] = problem(runs)
    bounds = runs["divergence.max_norm"].unique()
    if len(bounds) != 1:
        raise SystemExit(f"stability runs use several bounds B = divergence.max_norm: {sorted(bounds)}")
    bound = float(bounds[0])
    results = Path(source.results)
    table = stability_table(runs, bound)
    first = runs.iloc[0]
    table = table.assign(bound=bound, schedule=first["schedule.name"],
                         power=first.get("schedule.power"), n0=first.get("schedule.n0"),
                         failed_runs=int((runs["summary.status"] == "failed").sum()))
    table.to_csv(results / "stability.csv", index=False)
    agc_stability_limits(table).to_csv(results / "agc_stability.csv", index=False)
    increment_table(runs).to_csv(results / "increments.csv", index=False)
    # ||theta_n|| of the first seeds on one problem (the deep tanh MLP where present) at the a0
    # where the methods' stable fractions differ most: what divergence looks like there.
    model = "deep tanh MLP" if (table["model"] == "deep tanh MLP").any() else table["model"].iloc[0]
    spread = table[table["model"] == model].groupby("a0")["stable_fraction"].agg(lambda f: f.max() - f.min())
    a0 = float(spread[spread == spread.max()].index.max())
    chosen = runs[(runs["model.name"] == model) & (runs["seed"] < 3)]
    paths = trajectories(chosen, metrics, "train/param_norm", **{"schedule.a0": a0})
    paths = paths.assign(a0=a0, model=model)
    paths.drop(columns="run_id").to_csv(results / "stability_trajectories.csv", index=False)
    return f"{len(runs)} runs"


def collect_agc_small_weights(source) -> str:
    runs, _ = load(source, "agc_small_weights")
    runs = with_labels(runs)
    frames = []
    for row in runs.itertuples():
        units = load_units(row.run_id) if source.source == "local" else None
        if units is None or units.empty:
            raise SystemExit(f"{row.run_id} has no units.jsonl (per-unit records need the local files)")
        units = units[units["param"].str.match(r"hidden\.\d+\.weight")].copy()  # rows AGC clips
        units["method_label"] = row.method_label
        units["seed"] = row.seed
        frames.append(units)
    units = pd.concat(frames, ignore_index=True)
    units["abs_step"] = units["step_norm"] / units["lr"]  # ||Delta W_i|| / a(n)
    units["rel_step"] = units["abs_step"] / units["weight_norm"]  # ||Delta W_i|| / (a(n) ||W_i||)
    agc = runs[runs["clip.method"] == "agc"]
    if agc.empty:
        raise SystemExit("agc_small_weights: no AGC run (its eps sets the classes of units)")
    lam, eps = float(agc["clip.clip_factor"].iloc[0]), float(agc["clip.eps"].iloc[0])
    results = Path(source.results)
    # Step 1 only (every method of a seed on the same weights and batch): the figure's scatter.
    first = units[units["step"] == units["step"].min()]
    first[["method_label", "seed", "weight_norm", "abs_step", "rel_step"]].to_csv(
        results / "agc_units_step1.csv", index=False)
    unit_step_ratios(units, eps).to_csv(results / "agc_unit_ratios.csv", index=False)
    pd.DataFrame({"clip_factor": [lam], "eps": [eps], "large_from": [LARGE_FROM], "min_units": [MIN_UNITS],
                  "steps": [int(units["step"].max())], "lr": [float(units["lr"].iloc[0])]}).to_csv(results / "agc_settings.csv", index=False)
    return f"{len(runs)} runs, {len(units)} unit records"


def collect_convergence(source) -> str:
    runs, metrics = load(source, "convergence")
    runs["model"] = problem(runs)
    info = runs[["run_id", "model", "schedule.a0"]].rename(columns={"schedule.a0": "a0"})
    paths = eval_paths(runs, metrics).merge(info, on="run_id")
    summary = convergence_summary(paths).merge(info, on="run_id")
    first = runs.iloc[0]
    summary = summary.assign(power=first["schedule.power"], n0=first["schedule.n0"],
                             data=DATA_LABEL.get(first["data.name"], first["data.name"]))
    results = Path(source.results)
    paths.drop(columns="run_id").to_csv(results / "convergence.csv", index=False)
    summary.drop(columns="run_id").to_csv(results / "convergence_summary.csv", index=False)
    return f"{len(runs)} runs"


def step_size_problem(runs: pd.DataFrame) -> pd.Series:
    """'MLP on MNIST-1D' or 'regression, student_t noise': the problem a step-size run is on."""
    return pd.Series([f"{m.upper()} on MNIST-1D" if d == "mnist1d" else
                      f"regression, {NOISE_LABEL.get(n, n)}" if d == "linreg" else f"{m} on {d}"
                      for m, d, n in zip(runs["model.name"], runs["data.name"],
                                         runs.get("data.noise.dist", pd.Series("", index=runs.index)))],
                     index=runs.index)


def collect_step_sizes(source) -> str:
    runs, metrics = load(source, "step_sizes")
    runs["problem"] = step_size_problem(runs)
    info = runs[["run_id", "problem", "schedule.power", "schedule.a0"]].rename(
        columns={"schedule.power": "power", "schedule.a0": "a0"})
    paths = eval_paths(runs, metrics, names=("H_norm", "train_loss")).merge(info, on="run_id")
    freeze = freeze_table(runs, metrics)
    summary = convergence_summary(paths).merge(info, on="run_id").merge(freeze, on="run_id")
    by_id = runs.set_index("run_id").loc[summary["run_id"]]
    summary["sum_lr"] = by_id["summary.sum_lr"].to_numpy()
    summary["tau"] = by_id["clip.threshold"].to_numpy()
    # How far theta can still move after the last step: tau sum_{n >= steps} a(n) (finite for p > 1).
    summary["remaining_radius"] = [row["clip.threshold"] * total_schedule_sum(row, start=int(row["steps"]))
                                   for _, row in by_id.iterrows()]
    # The noise a constant step leaves behind comes from the per-example gradients: their mean norm
    # in the first and the last logged batch.
    noise = trajectories(runs, metrics, "train/sample_grad_norm_mean").sort_values("step").groupby("run_id")["value"]
    summary["sample_grad_initial"] = noise.first().loc[summary["run_id"]].to_numpy()
    summary["sample_grad_final"] = noise.last().loc[summary["run_id"]].to_numpy()
    distance = trajectories(runs, metrics, "train/dist_from_init").merge(info, on="run_id")
    results = Path(source.results)
    paths.drop(columns="run_id").to_csv(results / "step_sizes_paths.csv", index=False)
    distance.drop(columns=["run_id", "metric"]).to_csv(results / "step_sizes_distance.csv", index=False)
    summary.drop(columns="run_id").to_csv(results / "step_sizes.csv", index=False)
    return f"{len(runs)} runs"


def needs_local_records(source, experiment: str) -> None:
    """The tables that compare each run with answers computed from its training data regenerate
    that data from the run's local config.yaml: W&B records do not hold it."""
    if source.source == "wandb":
        raise SystemExit(f"{experiment} needs the training data of each run: collect it from local records")


def theta_path(metrics: pd.DataFrame, run_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run's logged theta (log_theta=true): the steps n, the ODE times t(n) = sum_{k<n} a(k)
    logged with them, and theta_n as rows (components in the flat parameter order)."""
    rows = metrics[metrics["run_id"] == run_id]
    wide = rows[rows["metric"].str.startswith("train/theta_") | (rows["metric"] == "train/sum_lr")].pivot_table(
        index="step", columns="metric", values="value").sort_index()
    columns = sorted((c for c in wide.columns if c.startswith("train/theta_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    return wide.index.to_numpy(), wide["train/sum_lr"].to_numpy(), wide[columns].to_numpy()


def design(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """The training inputs (with a column of ones for a model with a bias, in the order of the
    flat parameter vector: weight, then bias) and targets of a run, regenerated from its config."""
    config = OmegaConf.load(Path(run_dir) / CONFIG_FILE)
    data = load_dataset(config.data)
    x, y = data.x_train.double().numpy().reshape(data.num_train, -1), data.y_train.double().numpy().reshape(-1)
    if config.model.bias:
        x = np.column_stack([x, np.ones(len(y))])
    return x, y


# Monte Carlo batches behind batch clipping's fixed point on the location problem.


BATCH_ROOT_DRAWS = 400_000


def collect_limit_set(source) -> str:
    needs_local_records(source, "limit_set")
    runs, metrics = load(source, "limit_set")
    rows, roots, designs = [], {}, {}
    for _, run in runs[runs["summary.status"] == "completed"].iterrows():
        x, y = training_design(run, designs)
        tau, noise, problem_name = float(run["clip.threshold"]), run["data.noise.dist"], closed_form_problem(run)
        key = (data_key(run), run["model.bias"], tau)
        if key not in roots:
            roots[key] = (clipped_root(x, y, tau), least_squares(x, y))
        root, mean = roots[key]
        theta = theta_path(metrics, run["run_id"])[2][-1]
        row = {"problem": problem_name, "noise": noise, "tau": tau, "granularity": run["clip.granularity"],
               "seed": run["seed"], "batch_size": run["batch_size"], "steps": run["steps"],
               "a0": run["schedule.a0"], "power": run["schedule.power"], "n0": run["schedule.n0"],
               "dist_to_root": float(np.linalg.norm(theta - root)), "dist_to_mean": float(np.linalg.norm(theta - mean)),
               "root_to_mean": float(np.linalg.norm(root - mean)),
               "H_final": run["summary.final.eval/H_norm"], "mean_grad_final": run["summary.final.eval/mean_grad_norm"],
               "theta": " ".join(f"{v:.6g}" for v in theta), "root": " ".join(f"{v:.6g}" for v in root),
               "mean": " ".join(f"{v:.6g}" for v in mean)}
        if problem_name == "location" and run["clip.granularity"] == "batch":
            batch_key = (*key, int(run["batch_size"]))
            if batch_key not in roots:
                roots[batch_key] = batch_clipped_root_location(y, tau, int(run["batch_size"]), BATCH_ROOT_DRAWS)
            batch_root, error = roots[batch_key]
            row |= {"batch_root": batch_root, "batch_root_error": error, "batch_root_draws": BATCH_ROOT_DRAWS,
                    "dist_to_batch_root": float(abs(theta[0] - batch_root)),
                    "batch_root_to_root": float(abs(batch_root - root[0]))}
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["problem", "noise", "granularity", "tau", "seed"])
    results = Path(source.results)
    table.to_csv(results / "limit_set.csv", index=False)
    return f"{len(table)} runs"


def collect_clipping_bias(source) -> str:
    runs, averaged = completed_with_averages(source, "clipping_bias")
    designs, candidates, rows = {}, {}, []
    for _, run in runs.iterrows():
        noise, tau, key = run["data.noise.dist"], float(run["clip.threshold"]), data_key(run)
        y = training_design(run, designs)[1]
        if (key, tau) not in candidates:
            candidates[(key, tau)] = {"root": float(clipped_root(np.ones(len(y)), y, tau)[0]),
                                      "scaled_min": scaled_loss_minimiser_location(y, tau)}
        theta = averaged[run["run_id"]]  # (theta is one number here)
        sigma = float(np.std(y))
        rows.append({"noise": noise, "symmetric": noise in SYMMETRIC_NOISE, "tau": tau, "seed": run["seed"],
                     "steps": run["steps"], "averaged_over": theta["count"],
                     "theta_avg": float(theta["average"][0]), "theta_late": float(theta["late"][0]),
                     "theta_final": float(theta["last"][0]),
                     **candidates[(key, tau)], "mean": float(np.mean(y)), "median": float(np.median(y)),
                     "sigma": sigma, "scale": min(sigma, sigma**2 / tau),
                     "H_final": run["summary.final.eval/H_norm"]})
    table = pd.DataFrame(rows).sort_values(["symmetric", "noise", "tau", "seed"], ascending=[False, True, True, True])
    results = Path(source.results)
    table.to_csv(results / "clipping_bias.csv", index=False)
    return f"{len(table)} runs"


def averaged_thetas(metrics: pd.DataFrame, runs: pd.DataFrame) -> dict[str, dict[str, np.ndarray | int]]:
    """Per run (log_theta=true): ``average``, theta averaged over the iterates logged in the second
    half of the run (steps >= steps / 2: the midpoint counts), ``count``, how many they are,
    ``late``, the average over the last quarter alone (steps >= 3 steps / 4), whose distance from
    ``average`` shows a run still drifting, and ``last``, the last logged theta; components in the
    flat parameter order."""
    logged = metrics[metrics["metric"].str.startswith("train/theta_") & metrics["run_id"].isin(runs["run_id"])]
    logged = logged.assign(component=logged["metric"].str.rsplit("_", n=1).str[1].astype(int))
    steps = logged["run_id"].map(dict(zip(runs["run_id"], runs["steps"])))

    def average(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.groupby(["run_id", "component"])["value"].mean().unstack("component").sort_index(axis=1)

    half, late = logged[logged["step"] >= steps / 2], logged[logged["step"] >= 3 * steps / 4]
    means, late_means = average(half), average(late)
    counts = half.groupby("run_id")["step"].nunique()
    last = logged.sort_values("step").groupby(["run_id", "component"])["value"].last().unstack("component")
    # (runs of models of different sizes leave the columns they lack empty)
    return {run_id: {"average": row.dropna().to_numpy(), "count": int(counts[run_id]),
                     "late": late_means.loc[run_id].dropna().to_numpy(), "last": last.loc[run_id].dropna().to_numpy()}
            for run_id, row in means.iterrows()}


def completed_with_averages(source, experiment: str) -> tuple[pd.DataFrame, dict]:
    """An experiment's completed runs (log_theta=true) and their averaged thetas
    (:func:`averaged_thetas`), from local records."""
    needs_local_records(source, experiment)
    runs, metrics = load(source, experiment)
    runs = runs[runs["summary.status"] == "completed"]
    return runs, averaged_thetas(metrics, runs)


def closed_form_problem(run: pd.Series) -> str:
    """'location' or 'regression': the closed-form problem a run trains on."""
    return {"linreg": "regression"}.get(run["data.name"], run["data.name"])


def training_design(run: pd.Series, designs: dict) -> tuple[np.ndarray, np.ndarray]:
    """:func:`design` of a run, regenerated once for all runs with the same data settings and
    model bias (``designs`` is the cache)."""
    key = (data_key(run), run["model.bias"])
    if key not in designs:
        designs[key] = design(run["run_id"])
    return designs[key]


def data_key(run: pd.Series) -> tuple:
    """Every data setting of a run (its data.* config but the cache folder): runs with equal keys
    train on the same data, so the answers computed from it can be shared."""
    return tuple(sorted((key, str(value)) for key, value in run.items()
                        if key.startswith("data.") and key != "data.root"))


# Batches behind batch clipping's fixed point in batch_fixed_point (its Monte Carlo error is in the table).
BATCH_FIXED_POINT_DRAWS = 100_000


def collect_batch_fixed_point(source) -> str:
    runs, averaged = completed_with_averages(source, "batch_fixed_point")
    designs, answers, rows = {}, {}, []
    for _, run in runs.iterrows():
        problem_name = closed_form_problem(run)
        tau, batch, key = float(run["clip.threshold"]), int(run["batch_size"]), (data_key(run), run["model.bias"])
        x, y = training_design(run, designs)
        if (key, tau) not in answers:
            answers[(key, tau)] = (clipped_root(x, y, tau), least_squares(x, y))
        root, mean = answers[(key, tau)]
        if (key, tau, batch) not in answers:
            answers[(key, tau, batch)] = batch_clipped_root(x, y, tau, batch, BATCH_FIXED_POINT_DRAWS)
        batch_root, error = answers[(key, tau, batch)]
        theta, averaged_over = averaged[run["run_id"]]["average"], averaged[run["run_id"]]["count"]
        apart = np.linalg.norm(root - mean)
        # Position 0: the mean, 1: the root (nan where the two coincide: nothing is clipped).
        axis = (root - mean) / apart**2 if apart > 0 else np.full_like(root, np.nan)

        def distance(a, b):
            return float(np.linalg.norm(a - b))

        rows.append({"problem": problem_name, "noise": run["data.noise.dist"], "granularity": run["clip.granularity"],
                     "batch_size": batch, "tau": tau, "seed": run["seed"], "steps": run["steps"],
                     "averaged_over": averaged_over, "dist_to_root": distance(theta, root),
                     "dist_to_mean": distance(theta, mean), "dist_to_batch_root": distance(theta, batch_root),
                     "root_to_mean": distance(root, mean), "batch_root_to_root": distance(batch_root, root),
                     "batch_root_to_mean": distance(batch_root, mean),
                     "batch_root_error": float(np.linalg.norm(error)), "batch_root_draws": BATCH_FIXED_POINT_DRAWS,
                     "position": float((theta - mean) @ axis), "batch_root_position": float((batch_root - mean) @ axis),
                     "theta": " ".join(repr(float(v)) for v in theta)})  # exact: B = 1's two runs are compared
    table = pd.DataFrame(rows).sort_values(["problem", "granularity", "batch_size", "seed"])
    results = Path(source.results)
    table.to_csv(results / "batch_fixed_point.csv", index=False)
    return f"{len(table)} runs"


def collect_ode_tracking(source) -> str:
    needs_local_records(source, "ode_tracking")
    runs, metrics = load(source, "ode_tracking")
    runs = runs[runs["summary.status"] == "completed"]
    problems = runs[["data.seed", "clip.threshold", "model.bias"]].drop_duplicates()
    if len(problems) != 1 or len({tuple(t) for t in runs["summary.initial_theta"]}) != 1:
        raise SystemExit("ode_tracking compares every run with one ODE: its runs must share data, tau and theta_0")
    first = runs.iloc[0]
    theta0 = np.asarray(first["summary.initial_theta"], dtype=float)
    # Components by name, in the flat parameter order: head.weight, then head.bias.
    names = [f"w{i + 1}" for i in range(len(theta0) - bool(first["model.bias"]))] + (["b"] if first["model.bias"] else [])
    x, y = design(first["run_id"])
    tau = float(first["clip.threshold"])
    horizon = float(runs["summary.sum_lr"].min())  # every run reaches this ODE time
    grid = np.linspace(0.0, horizon, 601)
    logged = []
    for _, run in runs.iterrows():
        logged_steps, logged_t, logged_theta = theta_path(metrics, run["run_id"])
        # t(n) = sum_{k<n} a(k) is logged with theta_n; theta_0 sits at t = 0.
        t = np.concatenate([[0.0], logged_t])
        steps = np.concatenate([[0], logged_steps])
        iterates = np.vstack([theta0, logged_theta])
        keep = t <= horizon * (1 + 1e-9)
        logged.append((run, t[keep], steps[keep], iterates[keep]))
    # One integration of each flow, read at the plotting grid and at every run's own times (not
    # interpolated): the clipped ODE d theta/dt = -H(theta), and beside it the unclipped gradient
    # flow d theta/dt = -grad L(theta) (tau = inf), from which clipping's own part in the tracking
    # is told apart.
    times = np.concatenate([grid, *(t for _, t, _, _ in logged)])
    splits = np.cumsum([len(t) for _, t, _, _ in logged])[:-1]
    ode, flow = ode_path(x, y, tau, theta0, times), ode_path(x, y, math.inf, theta0, times)
    solution, unclipped = ode[:len(grid)], flow[:len(grid)]
    ode, flow = np.split(ode[len(grid):], splits), np.split(flow[len(grid):], splits)
    frames = []
    for (run, t, steps, iterates), at_t, flow_at_t in zip(logged, ode, flow):
        frame = pd.DataFrame(iterates, columns=[f"theta_{n}" for n in names])
        frame = frame.join(pd.DataFrame(at_t, columns=[f"ode_{n}" for n in names]))
        frames.append(frame.assign(run_id=run["run_id"], a0=run["schedule.a0"], seed=run["seed"], step=steps, t=t,
                                   gap=np.linalg.norm(iterates - at_t, axis=1),
                                   gap_unclipped=np.linalg.norm(iterates - flow_at_t, axis=1)))
    paths = pd.concat(frames, ignore_index=True)
    gaps = ode_gap_summary(paths)
    results = Path(source.results)
    paths.drop(columns="run_id").to_csv(results / "ode_paths.csv", index=False, float_format="%.7g")
    gaps.drop(columns="run_id").to_csv(results / "ode_gaps.csv", index=False)
    ode_seed_mean_gap(paths).to_csv(results / "ode_seed_mean_gaps.csv", index=False)
    pd.DataFrame(solution, columns=[f"ode_{n}" for n in names]).join(
        pd.DataFrame(unclipped, columns=[f"flow_{n}" for n in names])).assign(
        t=grid, tau=tau, flows_apart=np.linalg.norm(solution - unclipped, axis=1)).to_csv(
        results / "ode_solution.csv", index=False, float_format="%.7g")
    return f"{len(runs)} runs"


def collect_label_noise(source) -> str:
    """Per run: the clean test accuracy (the runner's last evaluation), and, from the final theta
    (theta.npz) on the regenerated training set, the fit to each kind of label: ``clean_fit``,
    the share of correctly labelled examples predicted as labelled; ``memorised``, the share of
    flipped examples predicted as their wrong label; ``recovered``, the share of flipped examples
    predicted as their true label; and the test accuracy on the minority classes (5-9, those an
    imbalance thins) and on the others."""
    import torch

    from gradclip.models import build_model
    from gradclip.records import load_theta

    needs_local_records(source, "label_noise")
    runs, _ = load(source, "label_noise")
    runs = with_labels(runs)
    splits, rows = {}, []
    for _, run in runs.iterrows():
        row = {"method_label": run["method_label"], "method": run["clip.method"],
               "granularity": run["clip.granularity"], "tau": run.get("clip.threshold"), "a0": run["schedule.a0"],
               "label_noise": run["data.label_noise"], "imbalance": run["data.imbalance"],
               "n_train": run["data.n_train"], "seed": run["seed"], "steps": run["steps"],
               "status": run["summary.status"], "train_acc": run.get("summary.final.eval/train_acc"),
               "test_acc": run.get("summary.final.eval/test_acc")}
        if run["summary.status"] == "completed":  # (a diverged run has no final theta)
            config = OmegaConf.load(Path(run["run_id"]) / CONFIG_FILE)
            key = data_key(run)
            if key not in splits:  # the training set as trained on, its labels before the noise, the test set
                noisy = load_dataset(config.data)
                clean = load_dataset(OmegaConf.merge(config.data, {"label_noise": 0.0}))
                splits[key] = (noisy, clean.y_train)
            noisy, true_labels = splits[key]
            model = build_model(config.model, noisy.input_shape, noisy.num_outputs)
            model.load_state_dict({name: torch.from_numpy(value) for name, value in
                                   load_theta(run["run_id"])["final"].items()})
            model.eval()
            with torch.no_grad():
                train_pred, test_pred = model(noisy.x_train).argmax(1), model(noisy.x_test).argmax(1)
            flipped = noisy.y_train != true_labels
            minority = noisy.y_test >= noisy.num_outputs // 2
            right = test_pred == noisy.y_test
            row |= {"clean_fit": (train_pred[~flipped] == noisy.y_train[~flipped]).double().mean().item(),
                    "memorised": (train_pred[flipped] == noisy.y_train[flipped]).double().mean().item()
                    if flipped.any() else math.nan,
                    "recovered": (train_pred[flipped] == true_labels[flipped]).double().mean().item()
                    if flipped.any() else math.nan,
                    "test_acc_minority": right[minority].double().mean().item(),
                    "test_acc_majority": right[~minority].double().mean().item()}
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["imbalance", "label_noise", "method_label", "a0", "seed"])
    results = Path(source.results)
    table.to_csv(results / "label_noise.csv", index=False)
    return f"{len(table)} runs"


def _eq22_network_seed(task: dict) -> list[dict]:
    """The rows of one seed's runs of eq22_network (in a worker process: one thread, its own
    copy of the training set). theta_L: the loss minimum the runs started at (each run's initial
    theta, the runner's L-BFGS result in float32), refined in float64 by Newton's method, or by
    L-BFGS and Newton's method where that does not reach a minimum (gradclip.netfield.minimum_near:
    a minimum, never a saddle); theta_H, for the unclipped and
    per-sample runs: the zero of F_tau at or near the run's averaged iterate
    (gradclip.netfield.refine). Each row also carries, for :func:`_eq22_network_minimum`, its
    thetas in the canonical frame of its theta_L (the hidden units ordered and signed by
    TanhMLPField.symmetry), where the zeros computed once per loss minimum are compared with it.
    theta_H from the average is found for the runs of section 11's tau grid (``tau_grid``: no
    clipping or per-sample clipping at the unclipped runs' batch size); section 12 compares
    every run with the ODE's zero instead."""
    import torch

    from gradclip.netfield import TanhMLPField, minimum_near, refine
    from gradclip.records import load_theta

    torch.set_num_threads(1)
    data = load_dataset(task["data"])
    field = TanhMLPField(data.x_train.numpy(), data.y_train.numpy(), task["width"], data.num_outputs,
                         task["weight_decay"])
    splits = {"train": (data.x_train.numpy(), data.y_train.numpy()), "test": (data.x_test.numpy(), data.y_test.numpy())}
    minima, rows = {}, []
    for run in task["runs"]:
        row, tau = dict(run["row"]), run["row"]["tau"]
        if row["status"] != "completed":  # a diverged run has no averaged iterate
            rows.append(row)
            continue
        saved = load_theta(run["run_id"])
        if not saved["initial"]:
            raise SystemExit(f"eq22_network: {run['run_id']}/theta.npz has no initial theta (written by runs "
                             "since a7e88ea): rerun=true trains it again")
        start, average = field.flatten(saved["initial"]), field.flatten(saved["average"])
        late = field.flatten(saved["average_late"])
        key = start.numpy().tobytes()
        if key not in minima:
            minima[key] = minimum_near(field, start)
        loss_minimum = minima[key]
        theta_l = loss_minimum.theta
        symmetry = field.symmetry(theta_l)
        row |= {"n_examples": field.n, "dist_avg_L": (average - theta_l).norm().item(),
                "dist_late_avg": (late - average).norm().item(), "dist_start_L": (start - theta_l).norm().item(),
                "norm_L": theta_l.norm().item(), "residual_L": loss_minimum.residual, "L_found": loss_minimum.converged}
        named = {"L": theta_l, "avg": average}
        if run["tau_grid"]:  # theta_H from the average: per-sample clipping's zero (section 11)
            row |= {"residual_avg": field(average, tau).norm().item(),
                    "clipped_at_L": (field.sample_norms(theta_l) > tau).double().mean().item()}
            zero = refine(field, average, tau)
            theta_h = named["H"] = zero.theta
            row |= {"dist_avg_H": (average - theta_h).norm().item(), "dist_H_L": (theta_h - theta_l).norm().item(),
                    "residual_H": zero.residual, "H_found": zero.converged, "field_evaluations": zero.flow_steps,
                    "newton_steps": zero.newton_steps,
                    "clipped_at_H": (field.sample_norms(theta_h) > tau).double().mean().item(),
                    "_canonical_H": field.transform(theta_h, symmetry).numpy()}
        for name, theta in named.items():
            for split, (x, y) in splits.items():
                scores = field.scores(theta, x, y)
                row |= {f"{split}_acc_{name}": scores["acc"], f"{split}_loss_{name}": scores["loss"]}
        rows.append(row | {"_canonical_L": field.canonical(theta_l).numpy(),
                           "_canonical_avg": field.transform(average, symmetry).numpy()})
    return rows


# Two seeds' loss minima are one where their canonical forms (TanhMLPField.canonical: hidden
# units in a standard order and sign) lie within this: both are found to ||F|| <= 1e-10, which
# leaves them ~1e-7 apart along the flattest directions; distinct minima measured 1e-3 and more.
SAME_MINIMUM = 1e-4


def _number_minima(rows: list[dict]) -> dict[int, np.ndarray]:
    """Give each completed row ``minimum``, the number of its loss minimum (0, 1, ... in order of
    the first seed that reached it): seeds of one minimum differ only in SGD's noise. Returns
    each minimum's canonical theta_L (its first seed's)."""
    representatives: list[np.ndarray] = []
    for row in sorted(rows, key=lambda r: (r["seed"], -r["tau"], r["granularity"], r["batch_size"])):
        canonical = row.get("_canonical_L")
        if canonical is None:
            continue
        same = [k for k, rep in enumerate(representatives) if np.linalg.norm(canonical - rep) <= SAME_MINIMUM]
        if not same:
            representatives.append(canonical)
        row["minimum"] = same[0] if same else len(representatives) - 1
    return dict(enumerate(representatives))


# Batch clipping's fixed point (gradclip.netfield.BatchClippedField) is estimated twice, from
# two sets of batches, each of BATCH_DRAWS_PER_EXAMPLE x n example draws (B = 4: 8,192 batches of
# the 512 examples): the two estimates' mean is theta_B. In a pilot on one minimum at tau = 0.5
# with 8x these draws, the two sets' zeros lay 0.024 (B = 4), 0.013 (16) and 0.002 (64) apart,
# and took 20-75 s a set where these take a few. Anderson acceleration stops after
# BATCH_ZERO_STEPS evaluations: the batch field has a kink wherever a batch's norm crosses tau,
# and at B = 4 it crawls from ||F|| ~ 2e-6 (1,200 more evaluations moved that zero by 0.03). So
# each set's zero is then given BATCH_ZERO_STEPS / 2 more, and theta_B's error is half the two
# sets' distance (Monte Carlo) plus the larger of their last moves (the solver: both sets start
# from theta_L and stop alike, an error the two would share). A zero counts as found at
# ||F|| <= BATCH_ZERO_FOUND.
BATCH_DRAWS_PER_EXAMPLE = 64
BATCH_SETS = (0, 1)
BATCH_ZERO_STEPS = 400
BATCH_ZERO_FOUND = 1e-5


def _eq22_network_minimum(task: dict) -> dict:
    """Zeros computed once per loss minimum (in a worker process), in its canonical frame, from
    its representative theta_L (a task asks for some of them: ``taus``, ``batch_points``): for
    each tau of per-sample clipping, theta_H_flow, where the mean-field ODE from theta_L ends
    (gradclip.netfield.zero_along_flow: the zero the ODE method predicts for SGD started there,
    found without the runs); for each (tau, B) of batch clipping, theta_B, the zero that the
    batch field's ODE from theta_L reaches, from each set of batches, with the training and test
    accuracy there. The seeds of a minimum share these exactly: F_tau
    and the batch field are equivariant under the order and signs of the hidden units."""
    import torch

    from gradclip.netfield import BatchClippedField, TanhMLPField, anderson, zero_along_flow

    torch.set_num_threads(1)
    data = load_dataset(task["data"])
    field = TanhMLPField(data.x_train.numpy(), data.y_train.numpy(), task["width"], data.num_outputs,
                         task["weight_decay"])
    theta_l = torch.as_tensor(task["theta_L"], dtype=torch.float64)
    flows = {}
    for tau in task["taus"]:
        zero = zero_along_flow(field, theta_l, tau) if math.isfinite(tau) else None
        flows[tau] = None if zero is None else {"theta": zero.theta.numpy(), "residual": zero.residual,
                                               "found": zero.converged, "evaluations": zero.flow_steps}
    batches = {}
    for tau, batch in task["batch_points"]:
        draws = max(1, BATCH_DRAWS_PER_EXAMPLE * field.n // batch)
        found, moves = [], []
        for seed in BATCH_SETS:
            batch_field = BatchClippedField(field, batch, draws, seed=seed)
            first = zero_along_flow(batch_field, theta_l, tau, max_steps=BATCH_ZERO_STEPS)
            more = anderson(batch_field, first.theta, tau, max_steps=BATCH_ZERO_STEPS // 2)
            more.flow_steps += first.flow_steps
            found.append(more)
            moves.append((more.theta - first.theta).norm().item())
        theta_b = torch.stack([z.theta for z in found]).mean(0)
        monte_carlo = (found[0].theta - found[1].theta).norm().item() / 2
        entry = {"theta": theta_b.numpy(), "error": monte_carlo + max(moves), "monte_carlo_error": monte_carlo,
                 "solver_move": max(moves), "residual": max(z.residual for z in found),
                 "found": all(z.residual <= BATCH_ZERO_FOUND for z in found),
                 "evaluations": sum(z.flow_steps for z in found), "draws": draws,
                 "clipped_batches": (batch_field.batch_norms(theta_b)[0] > tau).double().mean().item()}
        for split, (x, y) in {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}.items():
            entry[f"{split}_acc_B"] = field.scores(theta_b, x.numpy(), y.numpy())["acc"]
        batches[(tau, batch)] = entry
    return {"minimum": task["minimum"], "flows": flows, "batches": batches}


def _eq22_network_fits(config, run_id: str) -> None:
    """gradclip.netfield's fields are those of a one-hidden-layer tanh MLP with biases under no
    clipping or norm clipping (per sample or per batch, drawn i.i.d.) with the exact factor
    (clip.eps=0), and theta_L is where the run started (start=loss_minimum): a run of anything
    else would be compared with the wrong field or minimum, so it stops collect, naming the run."""
    model, clip = config.model, config.clip
    problems = [f"model.{key}={model.get(key)!r} (needs {want!r})" for key, want in
                (("name", "mlp"), ("depth", 1), ("activation", "tanh"), ("bias", True)) if model.get(key) != want]
    if config.get("start") != "loss_minimum":
        problems.append(f"start={config.get('start')!r} (needs 'loss_minimum': theta_L is where the run began)")
    if config.get("momentum", 0) != 0:
        problems.append(f"momentum={config.get('momentum')} (needs 0: the fields are plain SGD's)")
    if clip.method not in ("none", "norm"):
        problems.append(f"clip.method={clip.method} (needs none or norm)")
    elif clip.method == "norm" and clip.eps != 0:
        problems.append(f"clip.eps={clip.eps} (needs 0, the exact factor)")
    if clip.method == "norm" and clip.granularity == "batch" and config.get("sampling") != "iid":
        problems.append(f"sampling={config.get('sampling')} (batch clipping's field is over i.i.d. batches: needs iid)")
    if problems:
        raise SystemExit(f"eq22_network: {run_id} cannot be compared with the field of gradclip.netfield: "
                         + "; ".join(problems))


def _position(theta: np.ndarray, theta_l: np.ndarray, theta_h: np.ndarray) -> float:
    """theta's coordinate along the segment from theta_L (0) to theta_H (1)."""
    axis = theta_h - theta_l
    return float((theta - theta_l) @ axis / (axis @ axis))


def _pool_map(function, tasks: list) -> list:
    """``function`` over ``tasks`` in one worker process per core (spawned: each imports torch
    once), a task at a time to whichever is free, or here for a single task (a process costs
    seconds to start). Leaving early (an error, or a stop signal's exit in this process)
    terminates the workers: the tasks they had are not finished in the background."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(len(tasks), os.cpu_count() or 1))
    if workers == 1:
        return [function(task) for task in tasks]
    # (concurrent.futures, not multiprocessing.Pool: it hands a task's SystemExit back, and a
    # worker that dies breaks the pool, where Pool waits for that task's result for ever)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        return list(pool.map(function, tasks))
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()  # the executor has no terminate of its own
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def collect_eq22_network(source) -> str:
    """Eq. (22) on a network (docs/CLAIMS.md, experiments 11 and 12): per run, its averaged
    iterate against theta_H, the zero of the clipped mean field F_tau = H + lambda theta near it,
    against theta_L, the minimum of the loss with weight decay that it started at, and, for batch
    clipping, against theta_B, the zero of batch clipping's own mean field; with the training and
    test accuracy at each (gradclip.netfield). Two passes, each in one worker process per core:
    the seeds (theta_L and theta_H from each average), then the loss minima the seeds reached
    (the zeros that depend on theta_L only: the ODE's end and theta_B), compared in the canonical
    frame of each seed's theta_L."""
    needs_local_records(source, "eq22_network")
    runs, _ = load(source, "eq22_network")
    runs = with_labels(runs)
    tasks: dict[tuple, dict] = {}
    for _, run in runs.iterrows():
        config = OmegaConf.load(Path(run["run_id"]) / CONFIG_FILE)
        _eq22_network_fits(config, run["run_id"])
        tau = float(run["clip.threshold"]) if run["clip.method"] == "norm" else math.inf
        row = {"method_label": run["method_label"], "tau": tau, "seed": int(run["seed"]),
               "granularity": run["clip.granularity"] if run["clip.method"] == "norm" else "none",
               "weight_decay": float(run["weight_decay"]), "a0": run["schedule.a0"], "power": run["schedule.power"],
               "batch_size": int(run["batch_size"]), "steps": int(run["steps"]), "width": int(run["model.width"]),
               "n_train": run["data.n_train"], "status": run["summary.status"]}
        key = (data_key(run), row["width"], row["weight_decay"], row["seed"])
        task = tasks.setdefault(key, {"data": OmegaConf.to_container(config.data, resolve=True),
                                      "width": row["width"], "weight_decay": row["weight_decay"], "runs": []})
        task["runs"].append({"run_id": run["run_id"], "row": row})
    unclipped = runs.loc[runs["clip.method"] == "none", "batch_size"]
    grid_batch = int((unclipped if len(unclipped) else runs["batch_size"]).mode().iloc[0]) if len(runs) else None
    for task in tasks.values():
        for run in task["runs"]:
            run["tau_grid"] = run["row"]["granularity"] != "batch" and run["row"]["batch_size"] == grid_batch
    if len({key[:3] for key in tasks}) > 1:  # (the zeros of a loss minimum are shared by its seeds)
        raise SystemExit("eq22_network: the runs differ in data, width or weight decay; collect compares one design "
                         "(" + "; ".join(sorted({str(key[:3]) for key in tasks})) + ")")
    rows = [row for seed_rows in _pool_map(_eq22_network_seed, list(tasks.values())) for row in seed_rows]
    representatives = _number_minima(rows)
    first = next(iter(tasks.values()), None)
    done = [row for row in rows if "minimum" in row]
    # Where there are batch points enough for every core twice, one task per batch point of each
    # minimum (the costliest: up to 17 s each at the full scale), then one for all its ODE zeros:
    # tasks of a few seconds to a quarter minute, which two workers share evenly where one task a
    # minimum left one worker idle at the end (full scale: 7 minima, 28 points). With fewer, one
    # task a minimum, so that a single minimum is done here, not in a pool of processes that
    # each import torch (the smoke scale: one minimum, one point).
    minimum_tasks = []
    points_of = {m: sorted({(r["tau"], r["batch_size"]) for r in done
                            if r["minimum"] == m and r["granularity"] == "batch"}) for m in representatives}
    split = sum(map(len, points_of.values())) >= 2 * (os.cpu_count() or 1)
    for m, theta in representatives.items():
        mine = {"minimum": m, "theta_L": theta, "data": first["data"], "width": first["width"],
                "weight_decay": first["weight_decay"]}
        taus = sorted({r["tau"] for r in done if r["minimum"] == m})
        if split:
            minimum_tasks += [mine | {"taus": [], "batch_points": [point]} for point in points_of[m]]
            minimum_tasks.append(mine | {"taus": taus, "batch_points": []})
        else:
            minimum_tasks.append(mine | {"taus": taus, "batch_points": points_of[m]})
    minimum_tasks.sort(key=lambda task: not task["batch_points"])  # (the batch points first)
    zeros: dict[int, dict] = {}
    for result in _pool_map(_eq22_network_minimum, minimum_tasks):
        mine = zeros.setdefault(result["minimum"], {"flows": {}, "batches": {}})
        mine["flows"] |= result["flows"]
        mine["batches"] |= result["batches"]
    for row in rows:
        if "minimum" not in row:
            continue
        mine, average, tau = zeros[row["minimum"]], row.pop("_canonical_avg"), row["tau"]
        theta_l = representatives[row["minimum"]]
        flow = mine["flows"].get(tau)  # theta_H_flow: where the ODE from theta_L ends (none at tau = inf)
        canonical_h = row.pop("_canonical_H", None)
        if flow is not None:  # the average against it, and its place between theta_L (0) and it (1)
            row |= {"dist_avg_flow": float(np.linalg.norm(average - flow["theta"])),
                    "dist_flow_L": float(np.linalg.norm(flow["theta"] - theta_l)), "residual_H_flow": flow["residual"],
                    "flow_found": flow["found"], "flow_evaluations": flow["evaluations"],
                    "position_avg": _position(average, theta_l, flow["theta"])}
            if canonical_h is not None:
                row["dist_H_flow"] = float(np.linalg.norm(canonical_h - flow["theta"]))
        elif canonical_h is not None:  # tau = inf: the flow of F_inf from theta_L stays there
            row |= {"dist_H_flow": float(np.linalg.norm(canonical_h - theta_l)), "flow_found": row["L_found"],
                    "residual_H_flow": row["residual_L"]}
        if row["granularity"] == "batch":
            point = mine["batches"][(tau, row["batch_size"])]
            theta_b = point["theta"]
            row |= {"dist_avg_B": float(np.linalg.norm(average - theta_b)),
                    "dist_B_L": float(np.linalg.norm(theta_b - theta_l)),
                    "dist_B_flow": float(np.linalg.norm(theta_b - flow["theta"])),
                    "position_B": _position(theta_b, theta_l, flow["theta"]), "B_error": point["error"],
                    "B_monte_carlo_error": point["monte_carlo_error"], "B_solver_move": point["solver_move"],
                    "B_found": point["found"], "residual_B": point["residual"], "B_draws": point["draws"],
                    "B_evaluations": point["evaluations"], "clipped_batches_at_B": point["clipped_batches"],
                    "train_acc_B": point["train_acc_B"], "test_acc_B": point["test_acc_B"]}
        row.pop("_canonical_L", None)
    table = pd.DataFrame(rows).sort_values(["granularity", "batch_size", "tau", "seed"],
                                           ascending=[True, True, False, True])
    results = Path(source.results)
    table.to_csv(results / "eq22_network.csv", index=False)
    return f"{len(table)} runs"


COLLECT = {"stability": collect_stability, "agc_small_weights": collect_agc_small_weights,
           "convergence": collect_convergence, "step_sizes": collect_step_sizes, "limit_set": collect_limit_set,
           "ode_tracking": collect_ode_tracking, "clipping_bias": collect_clipping_bias,
           "batch_fixed_point": collect_batch_fixed_point, "label_noise": collect_label_noise,
           "eq22_network": collect_eq22_network}


def collect(name: str, source) -> None:
    """Write experiment ``name``'s tables into ``source.results``, all at once: they are written
    into a folder of their own inside it and moved in (os.replace, atomic each) once every one is
    complete, with the stop signals held while they move. A collect that is stopped (a signal, a
    full disk, an error) leaves the tables of the last complete one, never half a file or the
    tables of two collects side by side (short of a rename that fails half-way through the moves,
    or a SIGKILL, which leaves the hidden folder behind)."""
    results = Path(source.results)
    results.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=results))
    try:
        counted = COLLECT[name](Source(runs=source.runs, results=staging, source=source.source,
                                       entity=getattr(source, "entity", None),
                                       project=getattr(source, "project", "gradclip")))
        tables = sorted(staging.iterdir())
        held = interrupts.SIGNALS if threading.current_thread() is threading.main_thread() else ()
        signal.pthread_sigmask(signal.SIG_BLOCK, held)  # (a stop signal waits until all are in)
        try:
            for table in tables:
                os.replace(table, results / table.name)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{name}: {counted} -> {results}/{', '.join(t.name for t in tables)}")
