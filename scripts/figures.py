"""Figures from run records, in two stages:

    python scripts/figures.py collect stability --runs runs/default   # records -> results/*.csv
    python scripts/figures.py plot all                                # results/*.csv -> paper_figures/

``collect`` reads the local run records (or, with ``--source wandb --entity E --project P``, an
online W&B project) and writes the tidy table behind each figure into ``results/``. ``plot``
reads only those tables, so ``make figures`` rebuilds every figure without training. Each figure
is written as PNG and PDF and says which algorithm and which granularity every curve is.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from gradclip.analysis import (  # noqa: E402
    MIN_RECORDS, agc_stability_limits, agc_unit_summary, convergence_summary, eval_paths, freeze_table,
    increment_table, label_setting, ode_gap_summary, ode_seed_mean_gap, stability_table, total_schedule_sum, trajectories, with_labels)
from gradclip.data import load_dataset  # noqa: E402
from gradclip.meanfield import batch_clipped_root_location, clipped_root, least_squares, ode_path  # noqa: E402
from gradclip.records import CONFIG_FILE, load_runs, load_units, load_wandb_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7, "figure.dpi": 150,
                     "savefig.bbox": "tight"})


# -- loading ----------------------------------------------------------------------------------------


def load(args, experiment: str, keep_failed: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An experiment's runs and metrics, local records or W&B. Only results enter a table:
    completed and diverged runs (and failed ones where ``keep_failed``: the stability table
    counts them). Interrupted, live and failed runs, and jobs that never had a config (bad
    input, a corrupt record), are named here and left out."""
    if args.source == "wandb":
        runs, metrics = load_wandb_runs(args.entity, args.project, {"group": experiment})
    else:
        runs, metrics = load_runs(Path(args.runs) / experiment)
    statuses = ["completed", "diverged"] + (["failed"] if keep_failed else [])
    configured = runs["seed"].notna() if "seed" in runs else pd.Series(False, index=runs.index)
    kept = runs["summary.status"].isin(statuses) & configured
    for _, run in runs[~kept].iterrows():
        print(f"figures: {experiment}: left out {run['run_id']} ({run['summary.status']}: {run['reason']})")
    runs = runs[kept]
    if runs.empty:
        raise SystemExit(f"no finished runs of {experiment} in {args.source} records: run the sweep first")
    return runs, metrics[metrics["run_id"].isin(runs["run_id"])]


PROBLEMS = {"deep_tanh": "deep tanh MLP", "rnn_exploding": "RNN", "lstm": "LSTM", "mlp": "MLP",
            "cnn1d": "CNN1D", "resnet": "1-D ResNet", "linear": "linear"}


def problem(runs: pd.DataFrame) -> pd.Series:
    """A readable name per run for the model: its preset's name (deep tanh MLP, exploding RNN,
    LSTM) where it has one, else the model's."""
    preset = runs["model.preset"] if "model.preset" in runs else pd.Series(None, index=runs.index, dtype=object)
    names = preset.where(preset.notna(), runs["model.name"])
    return names.map(lambda name: PROBLEMS.get(name, str(name).upper()))


DATA_LABEL = {"mnist1d": "MNIST-1D"}
NOISE_LABEL = {"gaussian": "gaussian noise", "lognormal": "skewed noise (lognormal)",
               "student_t": "heavy-tailed noise (student-t, 3 d.o.f.)"}


# -- stability (predictions 2 and 1) ------------------------------------------------------------------


def collect_stability(args) -> None:
    runs, metrics = load(args, "stability", keep_failed=True)
    runs["model.name"] = problem(runs)
    bounds = runs["divergence.max_norm"].unique()
    if len(bounds) != 1:
        raise SystemExit(f"stability runs use several bounds B = divergence.max_norm: {sorted(bounds)}")
    bound = float(bounds[0])
    results = Path(args.results)
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
    print(f"stability: {len(runs)} runs -> {results}/stability.csv, agc_stability.csv, increments.csv, "
          "stability_trajectories.csv")


def schedule_label(table: pd.DataFrame) -> str:
    row = table.iloc[0]
    if row["schedule"] == "robbins_monro":
        return f"step size a0 of a(n) = a0 / (n+{row['n0']:g})^{row['power']:g}"
    return f"step size a0 ({row['schedule']} schedule)"


SHADES = {"norm": ["#6baed6", "#2171b5", "#08306b"], "agc": ["#74c476", "#238b45", "#00441b"],
          "value": ["#fd8d3c", "#d94801", "#7f2704"]}


def palette(labels) -> dict[str, dict]:
    """Line style per method label: one colour family per method, darker for a larger setting
    (tau, lambda); solid for per-sample clipping, dashed for batch clipping."""
    settings: dict[str, list[float]] = {}
    for label in labels:
        if label != "none":
            method, value = label_setting(label)
            settings.setdefault(method, []).append(value)
    styles = {}
    for label in labels:
        if label == "none":
            styles[label] = {"color": "black", "linestyle": "-", "linewidth": 1.6}
            continue
        method, value = label_setting(label)
        rank = sorted(set(settings[method])).index(value)
        styles[label] = {"color": SHADES[method][min(rank, 2)], "linewidth": 1.2,
                         "linestyle": "--" if "(batch" in label else "-"}
    return styles


def method_order(labels) -> list[str]:
    """none first, then norm clipping, then AGC (head exempt before head clipped), each by its
    setting, batch before sample."""
    def key(label: str):
        if label == "none":
            return (0, 0.0, False, "")
        method, value = label_setting(label)
        return ({"norm": 1, "agc": 2, "value": 3}[method], "head clipped" in label or "exempt" in label, value,
                "sample" in label)
    return sorted(labels, key=key)


def plot_stability(args) -> None:
    """One heatmap per problem: the stable fraction of the seeds per method (rows) and a0 (columns),
    written in each cell, so that it stays readable at any number of seeds and methods; cells
    where norm clipping's stability is implied by prediction 1 (||θ_0|| + τ Σa(n) < B) are marked.
    The last panel draws ||θ_n|| of the first seeds where the methods differ most."""
    results, figures = Path(args.results), Path(args.figures)
    table = pd.read_csv(results / "stability.csv")
    paths = pd.read_csv(results / "stability_trajectories.csv")
    order = ["deep tanh MLP", "RNN", "MLP", "LSTM", "1-D ResNet"]
    models = sorted(set(table["model"]), key=lambda m: order.index(m) if m in order else len(order))
    styles = palette(sorted(set(table["method_label"])))
    columns = 2
    rows_of = {m: table[table["model"] == m]["method_label"].nunique() for m in models}
    panel_rows = math.ceil((len(models) + 1) / columns)
    heights = []
    for r in range(panel_rows):
        heights.append(max([rows_of[m] for m in models[r * columns:(r + 1) * columns]] + [6]))
    fig, axes = plt.subplots(panel_rows, columns, figsize=(11, 0.33 * sum(heights) + 1.6 * panel_rows),
                             gridspec_kw={"height_ratios": heights}, constrained_layout=True)
    axes = axes.flatten()
    for ax in axes[len(models) + 1:]:
        ax.axis("off")
    cmap = plt.get_cmap("RdYlBu")
    for ax, model in zip(axes, models):
        rows = table[table["model"] == model]
        labels = method_order(set(rows["method_label"]))
        a0s = sorted(set(rows["a0"]))
        grid = rows.pivot_table(index="method_label", columns="a0", values="stable_fraction").reindex(labels)[a0s]
        ax.imshow(grid.to_numpy(float), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for (i, label), (j, a0) in ((il, ja) for il in enumerate(labels) for ja in enumerate(a0s)):
            cell = rows[(rows["method_label"] == label) & (rows["a0"] == a0)]
            if cell.empty:
                continue
            cell = cell.iloc[0]
            text = f"{cell['stable_fraction']:.2f}".rstrip("0").rstrip(".") if 0 < cell["stable_fraction"] < 1 \
                else f"{cell['stable_fraction']:.0f}"
            implied = bool(cell["implied_by_increments"])
            ax.text(j, i, text + ("*" if implied else ""), ha="center", va="center", fontsize=7,
                    color="black" if 0.2 < cell["stable_fraction"] < 0.8 else "white")
        ax.set_xticks(range(len(a0s)), [f"{a:g}" for a in a0s])
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for tick, label in zip(ax.get_yticklabels(), labels):
            tick.set_color(styles[label]["color"])
        ax.set_xlabel("a0")
        n, steps = int(rows["runs"].max()), int(rows["steps"].max())
        ax.set_title(f"{model}: {steps} steps, {n} seeds per cell", fontsize=9)
    ax = axes[len(models)]
    for (label, seed), rows in paths.groupby(["method_label", "seed"], sort=True):
        st = styles[label]
        ax.plot(rows["step"], rows["value"], **st, label=label if seed == paths["seed"].min() else None)
        if (rows["summary.status"] == "diverged").all():  # mark where the run was stopped
            ax.plot(rows["step"].iloc[-1], rows["value"].iloc[-1], marker="x", color=st["color"], markersize=5)
    bound = float(table["bound"].iloc[0])
    ax.axhline(bound, color="red", linewidth=0.8, linestyle=":", label=f"bound B = {bound:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step n")
    ax.set_ylabel("||θ_n||")
    seeds = sorted(paths["seed"].unique())
    ax.set_title(f"{paths['model'].iloc[0]}, a0 = {paths['a0'].iloc[0]:g}, seeds {seeds[0]}-{seeds[-1]} (x: diverged)",
                 fontsize=9)
    ax.legend(fontsize=6, ncol=2, frameon=False)
    fig.suptitle(f"Stability of clipped SGD on MNIST-1D: the fraction of seeds with ||θ_n|| finite and ≤ B = {bound:g} "
                 f"at every step\n{schedule_label(table)}; * = norm clipping's ||θ_0|| + τ Σa(n) < B, so stability "
                 "there is implied by prediction 1, not tested; dashed/batch = clip the mini-batch mean, sample = "
                 "clip each example; AGC exempts the classifier head unless marked", fontsize=9)
    save(fig, figures / "stability")


def plot_increments(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    table = pd.read_csv(results / "increments.csv").sort_values("method_label")
    fig, ax = plt.subplots(figsize=(5.5, 0.32 * len(table) + 1.2), constrained_layout=True)
    y = range(len(table))
    ax.scatter(table["worst_update_ratio"], y, marker="o", color="#3182bd",
               label="clipped gradient (exact-arithmetic increment / a(n))")
    ax.scatter(table["worst_step_ratio"], y, marker="x", color="#e6550d", label="realised float32 step / a(n)")
    for k, row in enumerate(table.itertuples()):
        ax.annotate(f"{row.worst_update_ratio:.7g} / {row.worst_step_ratio:.7g}", (row.worst_update_ratio, k),
                    xytext=(-6, 5), textcoords="offset points", ha="right", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_yticks(list(y), table["method_label"])
    ax.set_xlabel("worst ratio to the bound over all runs (norm: τ; AGC: λ max(||W_i||, ε) per unit)")
    ax.set_title("Bounded increments (prediction 1), worst over every run of the stability sweep\n"
                 "(all problems and a0; labels: clipped gradient / realised float32 step; AGC: clipped units)")
    ax.legend(loc="lower left", frameon=False)
    save(fig, figures / "increments")


def save(fig, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".png"))
    fig.savefig(stem.with_suffix(".pdf"), metadata={"CreationDate": None})  # same figure, same bytes
    plt.close(fig)
    print(f"wrote {stem}.png and .pdf")


# -- AGC and small weights (prediction 7) ----------------------------------------------------------


def collect_agc_small_weights(args) -> None:
    runs, _ = load(args, "agc_small_weights")
    runs = with_labels(runs)
    frames = []
    for row in runs.itertuples():
        units = load_units(row.run_id) if args.source == "local" else None
        if units is None or units.empty:
            raise SystemExit(f"{row.run_id} has no units.jsonl (per-unit records need the local files)")
        units = units[units["param"].str.match(r"hidden\.\d+\.weight")].copy()  # rows AGC clips
        units["method_label"] = row.method_label
        units["seed"] = row.seed
        frames.append(units)
    units = pd.concat(frames, ignore_index=True)
    units["abs_step"] = units["step_norm"] / units["lr"]  # ||Delta W_i|| / a(n)
    units["rel_step"] = units["abs_step"] / units["weight_norm"]  # ||Delta W_i|| / (a(n) ||W_i||)
    results = Path(args.results)
    units.to_csv(results / "agc_units.csv", index=False)
    agc_unit_summary(units).to_csv(results / "agc_units_by_decade.csv", index=False)
    eps = runs.loc[runs["clip.method"] == "agc", "clip.eps"]
    lam = runs.loc[runs["clip.method"] == "agc", "clip.clip_factor"]
    pd.DataFrame({"clip_factor": lam.values[:1], "eps": eps.values[:1]}).to_csv(results / "agc_settings.csv", index=False)
    print(f"agc_small_weights: {len(units)} unit records -> {results}/agc_units.csv, agc_units_by_decade.csv")


def plot_agc_small_weights(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    units = pd.read_csv(results / "agc_units.csv")
    summary = pd.read_csv(results / "agc_units_by_decade.csv")
    settings = pd.read_csv(results / "agc_settings.csv").iloc[0]
    colors = {"none": "black", "norm": "#3182bd", "agc": "#31a354", "value": "#e6550d"}
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.0), constrained_layout=True)
    for label, rows in units.groupby("method_label", sort=True):
        color = colors[label.split()[0]]
        med = summary[(summary["method_label"] == label) & (summary["records"] >= MIN_RECORDS)]
        for ax, column in zip(axes, ("abs_step", "rel_step")):
            moved = rows[rows[column] > 0]  # a log axis cannot show a unit that did not move
            ax.scatter(moved["weight_norm"], moved[column], s=1.5, alpha=0.15, color=color, linewidths=0)
            ax.plot(med["weight_norm_median"], med[f"{column}_median"], color=color, marker="o", markersize=3,
                    label=f"{label}: median per decade of ||W_i|| (≥ {MIN_RECORDS} records)")
    w = units["weight_norm"].sort_values().to_numpy()
    lam, eps = float(settings["clip_factor"]), float(settings["eps"])
    bound = lam * pd.Series(w).clip(lower=eps)
    axes[0].plot(w, bound, color="#31a354", linestyle=":", label=f"AGC bound λ max(||W_i||, ε), λ={lam:g}, ε={eps:g}")
    axes[1].plot(w, bound / w, color="#31a354", linestyle=":")
    for ax, ylabel in zip(axes, ("absolute step ||ΔW_i|| / a(n)", "relative step ||ΔW_i|| / (a(n) ||W_i||)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("unit weight norm ||W_i|| before the step")
        ax.set_ylabel(ylabel)
    axes[0].set_title("absolute step per unit")
    axes[1].set_title("relative step per unit")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
    steps = units["step"].max()
    fig.suptitle(f"Hidden-layer units of a tanh MLP on MNIST-1D, per-sample clipping, constant a(n) = "
                 f"{units['lr'].iloc[0]:g}, steps 1-{steps}")
    save(fig, figures / "agc_small_weights")


# -- convergence (prediction 3; the network half of prediction 5) --------------------------------------


def collect_convergence(args) -> None:
    runs, metrics = load(args, "convergence")
    runs["model"] = problem(runs)
    info = runs[["run_id", "model", "schedule.a0"]].rename(columns={"schedule.a0": "a0"})
    paths = eval_paths(runs, metrics).merge(info, on="run_id")
    summary = convergence_summary(paths).merge(info, on="run_id")
    first = runs.iloc[0]
    summary = summary.assign(power=first["schedule.power"], n0=first["schedule.n0"],
                             data=DATA_LABEL.get(first["data.name"], first["data.name"]))
    results = Path(args.results)
    paths.drop(columns="run_id").to_csv(results / "convergence.csv", index=False)
    summary.drop(columns="run_id").to_csv(results / "convergence_summary.csv", index=False)
    print(f"convergence: {len(runs)} runs -> {results}/convergence.csv, convergence_summary.csv")


CONVERGENCE_PANELS = {"H_norm": "||H(θ_n)|| = ||mean_i ∇ℓ_i / c_i||", "mean_grad_norm": "||mean_i ∇ℓ_i|| (unclipped)",
                      "train_loss": "training loss mean_i ℓ_i", "scaled_loss": "scaled loss mean_i ℓ_i / c_i"}


def plot_convergence(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    paths = pd.read_csv(results / "convergence.csv")
    summary = pd.read_csv(results / "convergence_summary.csv")
    models = sorted(paths["model"].unique())
    a0s = sorted(paths["a0"].unique())
    labels = sorted(paths["method_label"].unique())
    colors = {label: ("#2171b5" if label.startswith("norm") else "#238b45") for label in labels}
    widths = {a0: 0.6 + 0.8 * k for k, a0 in enumerate(a0s)}
    fig, axes = plt.subplots(len(models), 4, figsize=(10, 2.4 * len(models) + 0.9), constrained_layout=True,
                             squeeze=False)
    for row, model in zip(axes, models):
        for ax, (metric, ylabel) in zip(row, CONVERGENCE_PANELS.items()):
            chosen = paths[(paths["model"] == model) & (paths["metric"] == metric) & (paths["step"] > 0)]
            for (label, a0, seed), line in chosen.groupby(["method_label", "a0", "seed"], sort=True):
                ax.plot(line["step"], line["value"], color=colors[label], linewidth=widths[a0],
                        linestyle="-" if a0 == a0s[-1] else "--", alpha=0.8,
                        label=f"{label}, a0={a0:g}" if seed == chosen["seed"].min() else None)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("step n")
            ax.set_ylabel(ylabel)
        row[0].set_title(f"{model}")
    handles, names = axes[0][0].get_legend_handles_labels()
    first = summary.iloc[0]
    fig.legend(handles, names, loc="outside lower center", ncol=4, frameon=False,
               title=f"per-sample clipping (granularity: sample); one line per seed; "
                     f"a(n) = a0 / (n + {first['n0']:g})^{first['power']:g}")
    fig.suptitle(f"Convergence of the averaged scaled gradient on {first['data']} (prediction 3): full training set, "
                 "per-example gradients; c_i of the run's method (AGC: ||g_i|| / ||clipped g_i||)")
    save(fig, figures / "convergence")


# -- step sizes (prediction 4) ---------------------------------------------------------------------------


def step_size_problem(runs: pd.DataFrame) -> pd.Series:
    """'MLP on MNIST-1D' or 'regression, student_t noise': the problem a step-size run is on."""
    return pd.Series([f"{m.upper()} on MNIST-1D" if d == "mnist1d" else
                      f"regression, {NOISE_LABEL.get(n, n)}" if d == "linreg" else f"{m} on {d}"
                      for m, d, n in zip(runs["model.name"], runs["data.name"],
                                         runs.get("data.noise.dist", pd.Series("", index=runs.index)))],
                     index=runs.index)


def collect_step_sizes(args) -> None:
    runs, metrics = load(args, "step_sizes")
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
    results = Path(args.results)
    paths.drop(columns="run_id").to_csv(results / "step_sizes_paths.csv", index=False)
    distance.drop(columns=["run_id", "metric"]).to_csv(results / "step_sizes_distance.csv", index=False)
    summary.drop(columns="run_id").to_csv(results / "step_sizes.csv", index=False)
    print(f"step_sizes: {len(runs)} runs -> {results}/step_sizes.csv, step_sizes_paths.csv, step_sizes_distance.csv")


def power_colors(powers) -> dict[float, tuple]:
    """A colour per exponent p; the A1 range 0.5 < p <= 1 in the middle of the map."""
    cmap = plt.get_cmap("viridis")
    powers = sorted(powers)
    return {p: cmap(k / max(len(powers) - 1, 1)) for k, p in enumerate(powers)}


def plot_step_sizes(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    summary = pd.read_csv(results / "step_sizes.csv")
    paths = pd.read_csv(results / "step_sizes_paths.csv")
    distance = pd.read_csv(results / "step_sizes_distance.csv")
    problems = sorted(summary["problem"].unique())
    colors = power_colors(summary["power"].unique())
    fig, axes = plt.subplots(len(problems), 3, figsize=(10, 2.7 * len(problems) + 0.8), constrained_layout=True,
                             squeeze=False)
    for row, name in zip(axes, problems):
        mine = summary[summary["problem"] == name]
        ax = row[0]
        ax.axvspan(0.5, 1.0, color="#dddddd", label="A1 holds: 0.5 < p ≤ 1")
        ax.scatter(mine["power"], mine["H_final"], color="black", s=8, label="final ||H(θ_n)||, each seed")
        medians = mine.groupby("power")["H_final"].median()
        ax.plot(medians.index, medians.values, color="black", linewidth=0.8, label="median over seeds")
        ax.scatter(mine["power"], mine["H_initial"], color="grey", marker="_", s=40, label="||H(θ_0)||")
        ax.set_yscale("log")
        ax.set_xlabel("exponent p of a(n) = a0 / (n+1)^p")
        ax.set_ylabel("||H|| at the last step")
        ax.set_title(f"{name}\na0 = {mine['a0'].iloc[0]:g}, {mine['last_step'].max()} steps")
        ax = row[1]
        h = paths[(paths["problem"] == name) & (paths["metric"] == "H_norm") & (paths["step"] > 0)]
        for (power, seed), line in h.groupby(["power", "seed"]):
            ax.plot(line["step"], line["value"], color=colors[power], linewidth=0.9,
                    label=f"p = {power:g}" if seed == h["seed"].min() else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step n")
        ax.set_ylabel("||H(θ_n)|| (full training set)")
        ax.set_title("one line per seed")
        ax = row[2]
        for (power, seed), line in distance[distance["problem"] == name].groupby(["power", "seed"]):
            ax.plot(line["step"], line["value"], color=colors[power], linewidth=0.9)
        for power, radius in mine.groupby("power")["frozen_radius"].first().items():
            if math.isfinite(radius):
                ax.axhline(radius, color="black", linestyle=":", linewidth=1,
                           label=f"freeze radius τ Σ_{{n≥0}} a(n) = {radius:.3g} (p = {power:g}, {name.split(',')[0]})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step n")
        ax.set_ylabel("||θ_n − θ_0||")
        ax.set_title("distance from the start")
    handles, names = axes[0][0].get_legend_handles_labels()
    for ax in [axes[0][1], *axes[:, 2]]:
        more, more_names = ax.get_legend_handles_labels()
        handles, names = handles + more, names + more_names
    fig.legend(handles, names, loc="outside lower center", ncol=5, frameon=False)
    fig.suptitle(f"Step-size conditions (prediction 4): norm clipping τ = {summary['tau'].iloc[0]:g}, "
                 "granularity: sample (each example clipped, then averaged)")
    save(fig, figures / "step_sizes")


# -- the limit set (prediction 5) ----------------------------------------------------------------------


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


def collect_limit_set(args) -> None:
    if args.source == "wandb":
        raise SystemExit("limit_set needs the training data of each run: collect it from local records")
    runs, metrics = load(args, "limit_set")
    rows, roots = [], {}
    for _, run in runs[runs["summary.status"] == "completed"].iterrows():
        x, y = design(run["run_id"])
        tau, noise = float(run["clip.threshold"]), run["data.noise.dist"]
        problem_name = {"linreg": "regression"}.get(run["data.name"], run["data.name"])
        key = (problem_name, noise, tau, run["data.seed"])
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
    results = Path(args.results)
    table.to_csv(results / "limit_set.csv", index=False)
    print(f"limit_set: {len(table)} runs -> {results}/limit_set.csv")


LIMIT_FLOOR = 1e-4  # the bottom of the axes: smaller distances (a root equal to the mean) are cut off


def plot_limit_set(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    table = pd.read_csv(results / "limit_set.csv")
    problems = sorted(table["problem"].unique(), key=lambda p: p != "location")  # location first
    noises = [n for n in NOISE_LABEL if n in set(table["noise"])]
    taus = sorted(table["tau"].unique())
    fig, axes = plt.subplots(len(problems), len(noises), figsize=(3.3 * len(noises), 2.8 * len(problems) + 1.0),
                             constrained_layout=True, squeeze=False)
    styles = {("sample", "dist_to_root"): dict(color="#2171b5", marker="o", label="per-sample: ||θ_n − root of (22)||"),
              ("sample", "dist_to_mean"): dict(color="#2171b5", marker="x", linestyle="--",
                                              label="per-sample: ||θ_n − least squares (mean)||"),
              ("batch", "dist_to_batch_root"): dict(color="#d94801", marker="s",
                                                   label="batch: |θ_n − batch-clipping fixed point|"),
              ("batch", "dist_to_root"): dict(color="#d94801", marker="o", linestyle=":",
                                             label="batch: |θ_n − root of (22)|"),
              ("batch", "dist_to_mean"): dict(color="#d94801", marker="x", linestyle="--",
                                             label="batch: |θ_n − mean|")}
    for row, name in zip(axes, problems):
        for ax, noise in zip(row, noises):
            mine = table[(table["problem"] == name) & (table["noise"] == noise)]
            gap = mine.groupby("tau")["root_to_mean"].first()
            ax.plot(gap.index, gap.values, color="grey", linewidth=3, alpha=0.4, label="||root of (22) − mean||")
            for (granularity, column), style in styles.items():
                chosen = mine[mine["granularity"] == granularity]
                if chosen.empty or column not in chosen or chosen[column].isna().all():
                    continue
                medians = chosen.groupby("tau")[column].median()
                ax.plot(medians.index, medians.values, markersize=3.5, linewidth=1, **style)
            ax.set_xscale("log")
            ax.set_xticks(taus, [f"{t:g}" for t in taus])
            ax.minorticks_off()
            ax.set_yscale("log")
            ax.set_ylim(bottom=LIMIT_FLOOR)
            ax.set_xlabel("clipping threshold τ")
            ax.set_ylabel("distance at the last step (median of seeds)")
            ax.set_title(f"{name}: {NOISE_LABEL[noise]}")
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="outside lower center", ncol=3, frameon=False)
    first = table.iloc[0]
    fig.suptitle(f"Where clipped SGD ends (prediction 5): norm clipping with c = max(1, ||g||/τ), {first['steps']} "
                 f"steps of {first['batch_size']} samples, a(n) = {first['a0']:g}/(n+{first['n0']:g})^{first['power']:g}\nper-sample = clip each example, then "
                 f"average; batch = clip the mean; distances below {LIMIT_FLOOR:g} are off the bottom of the axes")
    save(fig, figures / "limit_set")


# -- ODE tracking (prediction 6) ---------------------------------------------------------------------------


def collect_ode_tracking(args) -> None:
    if args.source == "wandb":
        raise SystemExit("ode_tracking needs the training data of each run: collect it from local records")
    runs, metrics = load(args, "ode_tracking")
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
    # One integration, read at the plotting grid and at every run's own times (not interpolated).
    ode = ode_path(x, y, tau, theta0, np.concatenate([grid, *(t for _, t, _, _ in logged)]))
    solution, ode = ode[:len(grid)], np.split(ode[len(grid):], np.cumsum([len(t) for _, t, _, _ in logged])[:-1])
    frames = []
    for (run, t, steps, iterates), at_t in zip(logged, ode):
        frame = pd.DataFrame(iterates, columns=[f"theta_{n}" for n in names])
        frame = frame.join(pd.DataFrame(at_t, columns=[f"ode_{n}" for n in names]))
        frames.append(frame.assign(run_id=run["run_id"], a0=run["schedule.a0"], seed=run["seed"], step=steps, t=t,
                                   gap=np.linalg.norm(iterates - at_t, axis=1)))
    paths = pd.concat(frames, ignore_index=True)
    gaps = ode_gap_summary(paths)
    results = Path(args.results)
    paths.drop(columns="run_id").to_csv(results / "ode_paths.csv", index=False, float_format="%.7g")
    gaps.drop(columns="run_id").to_csv(results / "ode_gaps.csv", index=False)
    ode_seed_mean_gap(paths).to_csv(results / "ode_seed_mean_gaps.csv", index=False)
    pd.DataFrame(solution, columns=[f"ode_{n}" for n in names]).assign(t=grid, tau=tau).to_csv(
        results / "ode_solution.csv", index=False, float_format="%.7g")
    print(f"ode_tracking: {len(runs)} runs -> {results}/ode_paths.csv, ode_gaps.csv, ode_seed_mean_gaps.csv, "
          "ode_solution.csv")


COMPONENT_LABEL = {"b": "intercept b (head.bias)"}


def plot_ode_tracking(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    paths = pd.read_csv(results / "ode_paths.csv")
    gaps = pd.read_csv(results / "ode_gaps.csv")
    solution = pd.read_csv(results / "ode_solution.csv")
    components = [c.removeprefix("ode_") for c in solution.columns if c.startswith("ode_")]
    a0s = sorted(paths["a0"].unique(), reverse=True)
    cmap = plt.get_cmap("plasma")
    colors = {a0: cmap(0.85 * k / max(len(a0s) - 1, 1)) for k, a0 in enumerate(a0s)}
    fig, axes = plt.subplots(1, len(components) + 1, figsize=(3.0 * (len(components) + 1), 3.2),
                             constrained_layout=True)
    seed = paths["seed"].min()
    for ax, name in zip(axes, components):
        label = COMPONENT_LABEL.get(name, f"weight {name} (head.weight)")
        for a0 in a0s:
            line = paths[(paths["a0"] == a0) & (paths["seed"] == seed)]
            ax.plot(line["t"], line[f"theta_{name}"], color=colors[a0], linewidth=0.8, label=f"SGD, a(n) = {a0:g}")
        ax.plot(solution["t"], solution[f"ode_{name}"], color="black", linestyle="--", linewidth=1.2,
                label="ODE dθ/dt = −H(θ)")
        ax.set_xlabel("ODE time t(n) = Σ_{k<n} a(k)")
        ax.set_ylabel(label)
        ax.set_title(f"{label}, seed {seed}")
    ax = axes[-1]
    ax.scatter(gaps["a0"], gaps["max_gap"], color="black", s=8, label="each seed")
    medians = gaps.groupby("a0")["max_gap"].median()
    ax.plot(medians.index, medians.values, color="black", label="median over seeds")
    mean_gaps = pd.read_csv(results / "ode_seed_mean_gaps.csv")
    ax.plot(mean_gaps["a0"], mean_gaps["max_gap_of_seed_mean"], color="grey", marker="o", markerfacecolor="white",
            markersize=4, label=f"the mean of the {mean_gaps['seeds'].min()} seeds' iterates")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("constant step size a(n) = a0")
    ax.set_ylabel(f"max over t(n) ≤ {gaps['horizon'].min():.3g} of ||θ_n − θ(t(n))||")
    ax.set_title("gap to the ODE")
    handles, names = axes[0].get_legend_handles_labels()
    more, more_names = ax.get_legend_handles_labels()
    fig.legend(handles + more, names + more_names, loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle(f"ODE tracking (prediction 6): per-sample norm clipping (τ = {solution['tau'].iloc[0]:g}, one sample "
                 "per step, constant a(n) = a0) on a regression with heavy-tailed noise,\nagainst the ODE of its "
                 "full-data mean field H (granularity: sample)")
    save(fig, figures / "ode_tracking")


COLLECT = {"stability": collect_stability, "agc_small_weights": collect_agc_small_weights,
           "convergence": collect_convergence, "step_sizes": collect_step_sizes, "limit_set": collect_limit_set,
           "ode_tracking": collect_ode_tracking}
PLOT = {"stability": [plot_stability, plot_increments], "agc_small_weights": [plot_agc_small_weights],
        "convergence": [plot_convergence], "step_sizes": [plot_step_sizes], "limit_set": [plot_limit_set],
        "ode_tracking": [plot_ode_tracking]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="run records -> results/*.csv")
    collect.add_argument("experiment", nargs="+", choices=[*COLLECT, "all"])
    collect.add_argument("--runs", default=str(ROOT / "runs" / "default"), help="output_root of the sweeps")
    collect.add_argument("--source", choices=["local", "wandb"], default="local")
    collect.add_argument("--entity")
    collect.add_argument("--project", default="gradclip")
    plot = sub.add_parser("plot", help="results/*.csv -> paper_figures/*.png, *.pdf")
    plot.add_argument("experiment", nargs="+", choices=[*PLOT, "all"])
    plot.add_argument("--figures", default=str(ROOT / "paper_figures"))
    for p in (collect, plot):
        p.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args()
    Path(args.results).mkdir(parents=True, exist_ok=True)
    names = list(COLLECT if args.command == "collect" else PLOT) if "all" in args.experiment else args.experiment
    for name in names:
        if args.command == "collect":
            COLLECT[name](args)
        else:
            for plot_one in PLOT[name]:
                plot_one(args)


if __name__ == "__main__":
    main()
