"""Figures from run records, in two stages:

    python scripts/figures.py collect stability --runs runs/full      # records -> results/*.csv
    python scripts/figures.py plot all                                # results/*.csv -> paper_figures/

``collect`` reads the local run records (or, with ``--source wandb --entity E --project P``, an
online W&B project) and writes the tidy table behind each figure into ``results/``
(gradclip.collect, which computes what the tables need: roots, ODE solutions, aggregations). ``plot``
reads only those tables, so ``make figures`` rebuilds every figure without training. Each figure
is written as PNG and PDF and says which algorithm and which granularity every curve is.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gradclip.analysis import label_setting, mean_interval  # noqa: E402
from gradclip.labels import NOISE_LABEL  # noqa: E402
from gradclip.verdicts import SMALL_OVER_LARGE, eq22_batch_arm, eq22_tau_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7, "figure.dpi": 150,
                     "savefig.bbox": "tight"})


# -- stability (predictions 2 and 1) ------------------------------------------------------------------


def schedule_label(table: pd.DataFrame) -> str:
    row = table.iloc[0]
    if row["schedule"] == "robbins_monro":
        return f"step size a0 of a(n) = a0 / (n+{row['n0']:g})^{row['power']:g}"
    return f"step size a0 ({row['schedule']} schedule)"


def legend_entries(axes) -> tuple[list, list[str]]:
    """The legend entries of several axes, each label once (for one legend under the figure)."""
    handles, names = [], []
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    return handles, names


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
    order = ["deep tanh MLP", "exploding RNN", "MLP", "LSTM", "1-D ResNet"]
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
    # The PNG's draw has laid the figure out; the PDF keeps that layout rather than solving it
    # again (constrained layout is most of a figure's drawing time).
    fig.set_layout_engine("none")
    fig.savefig(stem.with_suffix(".pdf"), metadata={"CreationDate": None})  # same figure, same bytes
    plt.close(fig)
    print(f"wrote {stem}.png and .pdf")


# -- AGC and small weights (prediction 7) ----------------------------------------------------------


def plot_agc_small_weights(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    first = pd.read_csv(results / "agc_units_step1.csv")
    ratios = pd.read_csv(results / "agc_unit_ratios.csv")
    settings = pd.read_csv(results / "agc_settings.csv").iloc[0]
    lam, eps, large_from = float(settings["clip_factor"]), float(settings["eps"]), float(settings["large_from"])
    colors = {"none": "black", "norm": "#3182bd", "agc": "#31a354", "value": "#e6550d"}
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.1), constrained_layout=True)
    labels = sorted(set(first["method_label"]))
    for label in labels:
        rows = first[(first["method_label"] == label)]
        for ax, column in zip(axes, ("abs_step", "rel_step")):
            moved = rows[rows[column] > 0]  # a log axis cannot show a unit that did not move
            ax.scatter(moved["weight_norm"], moved[column], s=2, alpha=0.3, color=colors[label.split()[0]],
                       linewidths=0, label=f"{label} ({rows['seed'].nunique()} seeds)")
    w = np.sort(first["weight_norm"].to_numpy())
    bound = lam * np.maximum(w, eps)
    axes[0].plot(w, bound, color="#31a354", linestyle=":", label=f"AGC bound λ max(||W_i||, ε), λ={lam:g}, ε={eps:g}")
    axes[1].plot(w, bound / w, color="#31a354", linestyle=":")
    for ax, ylabel in zip(axes, ("absolute step ||ΔW_i|| / a(n)", "relative step ||ΔW_i|| / (a(n) ||W_i||)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("||W_i|| at initialisation")
        ax.set_ylabel(ylabel)
        for edge in (eps, large_from * eps):
            ax.axvline(edge, color="grey", linewidth=0.6, linestyle="--")
    axes[0].set_title("step 1: absolute step per unit")
    axes[1].set_title("step 1: relative step per unit")
    # Right: per run, small units' median step over large units', over every logged step.
    ax = axes[2]
    for x, label in enumerate(labels):
        rows = ratios[ratios["method_label"] == label]
        jitter = np.linspace(-0.12, 0.12, len(rows)) if len(rows) > 1 else np.zeros(1)
        color = colors[label.split()[0]]
        ax.scatter(x - 0.18 + jitter, rows["rel_ratio"], s=10, color=color, marker="o",
                   label="relative step" if x == 0 else None)
        ax.scatter(x + 0.18 + jitter, rows["abs_ratio"], s=10, color=color, marker="x",
                   label="absolute step" if x == 0 else None)
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.axhline(SMALL_OVER_LARGE, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("small units' median step / large units'")
    ax.set_title(f"per run (seed), steps 1-{int(settings['steps'])}")
    ax.legend(loc="best", frameon=False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=4, frameon=False, markerscale=3)
    fig.suptitle(f"Hidden units of a tanh MLP on MNIST-1D, per-sample clipping, constant a(n) = "
                 f"{float(settings['lr']):g}; "
                 f"small: ||W_i|| < ε at initialisation, large: ≥ {large_from * eps:g} (dashed)")
    save(fig, figures / "agc_small_weights")


# -- convergence (prediction 3; the network half of prediction 5) --------------------------------------


CONVERGENCE_PANELS = {"H_norm": "||H(θ_n)|| = ||mean_i ∇ℓ_i / c_i||", "mean_grad_norm": "||mean_i ∇ℓ_i|| (unclipped)",
                      "train_loss": "training loss mean_i ℓ_i", "scaled_loss": "scaled loss mean_i ℓ_i / c_i"}


def plot_convergence(args) -> None:
    """One row per (model, method): the four full-data metrics against n on log-log axes, one
    thin line per seed, coloured by a0 (norm clipping) or by a0·λ (AGC, whose bound scales with
    λ and whose steps with a0), so that a grid of settings stays readable."""
    results, figures = Path(args.results), Path(args.figures)
    paths = pd.read_csv(results / "convergence.csv")
    summary = pd.read_csv(results / "convergence_summary.csv")
    paths = paths[paths["step"] > 0]
    paths["family"] = paths["method_label"].str.split().str[0]
    paths["setting"] = paths.apply(lambda r: label_setting(r["method_label"])[1], axis=1)
    paths["product"] = paths["a0"] * np.where(paths["family"] == "agc", paths["setting"], 1.0)
    rows = sorted(paths.groupby(["model", "family"]).groups)
    fig, axes = plt.subplots(len(rows), 4, figsize=(11, 2.5 * len(rows) + 0.8), constrained_layout=True, squeeze=False)
    for axes_row, (model, family) in zip(axes, rows):
        mine = paths[(paths["model"] == model) & (paths["family"] == family)]
        products = sorted(mine["product"].unique())
        cmap = plt.get_cmap("viridis" if family == "agc" else "Blues")
        shade = {v: cmap(0.15 + 0.75 * k / max(len(products) - 1, 1)) if family == "agc" else
                 cmap(0.45 + 0.5 * k / max(len(products) - 1, 1)) for k, v in enumerate(products)}
        for ax, (metric, ylabel) in zip(axes_row, CONVERGENCE_PANELS.items()):
            chosen = mine[mine["metric"] == metric]
            for (label, a0, seed), line in chosen.groupby(["method_label", "a0", "seed"], sort=True):
                product = line["product"].iloc[0]
                name = (f"λ={label_setting(label)[1]:g}, a0={a0:g} (a0·λ={product:g})" if family == "agc"
                        else f"{label}, a0={a0:g}")
                ax.plot(line["step"], line["value"], color=shade[product], linewidth=0.8, alpha=0.7,
                        label=name if seed == chosen["seed"].min() else None)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("step n")
            ax.set_ylabel(ylabel)
        labels = sorted(mine["method_label"].unique())
        seeds = mine.groupby(["method_label", "a0"])["seed"].nunique()
        settings = ", ".join(f"{v:g}" for v in sorted(mine["setting"].unique()))
        what = labels[0] if len(labels) == 1 else f"{family} over {'λ' if family == 'agc' else 'τ'} ∈ {{{settings}}} and a0"
        count = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
        axes_row[0].set_title(f"{model}: {what}, {count} seeds", loc="left")
        handles, names = axes_row[0].get_legend_handles_labels()
        order = sorted(range(len(names)), key=lambda i: names[i])
        axes_row[-1].legend([handles[i] for i in order], [names[i] for i in order], fontsize=6, frameon=False,
                            loc="upper left", bbox_to_anchor=(1.0, 1.0))
    first = summary.iloc[0]
    fig.suptitle(f"Convergence of the averaged scaled gradient on {first['data']} (prediction 3): full training set, "
                 "per-example gradients; c_i of the run's method (AGC: ||g_i|| / ||clipped g_i||)\n"
                 f"per-sample clipping; one line per seed; a(n) = a0 / (n + {first['n0']:g})^{first['power']:g}")
    save(fig, figures / "convergence")


# -- step sizes (prediction 4) ---------------------------------------------------------------------------


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
    handles, names = legend_entries(axes.flat)
    fig.legend(handles, names, loc="outside lower center", ncol=3, frameon=False)
    first = table.iloc[0]
    steps = ", ".join(f"{int(n)} ({problem})" for problem, n in table.groupby("problem")["steps"].max().items())
    fig.suptitle(f"Where clipped SGD ends (prediction 5): norm clipping with c = max(1, ||g||/τ), steps {steps} "
                 f"of {first['batch_size']} samples, a(n) = {first['a0']:g}/(n+{first['n0']:g})^{first['power']:g}\nper-sample = clip each example, then "
                 f"average; batch = clip the mean; distances below {LIMIT_FLOOR:g} are off the bottom of the axes")
    save(fig, figures / "limit_set")


# -- ODE tracking (prediction 6) ---------------------------------------------------------------------------


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
        if f"flow_{name}" in solution:
            ax.plot(solution["t"], solution[f"flow_{name}"], color="grey", linestyle=":", linewidth=1.2,
                    label="unclipped gradient flow dθ/dt = −∇L(θ)")
        ax.set_xlabel("ODE time t(n) = Σ_{k<n} a(k)")
        ax.set_ylabel(label)
        ax.set_title(f"{label}, seed {seed}")
    ax = axes[-1]
    ax.scatter(gaps["a0"], gaps["max_gap"], color="black", s=8, label="each seed")
    medians = gaps.groupby("a0")["max_gap"].median()
    ax.plot(medians.index, medians.values, color="black", label="median over seeds")
    if "max_gap_unclipped" in gaps:
        unclipped = gaps.groupby("a0")["max_gap_unclipped"].median()
        ax.plot(unclipped.index, unclipped.values, color="grey", linestyle=":",
                label="median gap to the unclipped flow")
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


# -- the clipping bias against tau and the noise shape -------------------------------------------------


def plot_clipping_bias(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    table = pd.read_csv(results / "clipping_bias.csv")
    noises = list(dict.fromkeys(table["noise"]))  # symmetric first, as collect sorts them
    fig, axes = plt.subplots(2, len(noises), figsize=(2.6 * len(noises), 5.0), constrained_layout=True,
                             squeeze=False)
    for top, bottom, noise in zip(axes[0], axes[1], noises):
        rows = table[table["noise"] == noise]
        point = rows.groupby("tau").first()
        taus = point.index.to_numpy()
        # Top: the bias theta - mean of each seed's averaged iterate, beside the three candidates.
        jitter = np.exp(np.random.default_rng(0).uniform(-0.08, 0.08, len(rows)))  # seeds side by side
        top.scatter(rows["tau"] * jitter, rows["theta_avg"] - rows["mean"], s=3, color="black", alpha=0.4,
                    linewidths=0, label="averaged iterate − mean (each seed)")
        top.plot(taus, point["root"] - point["mean"], color="#d62728", label="root of eq. (22) (Huber) − mean")
        top.plot(taus, point["scaled_min"] - point["mean"], color="#1f77b4", linestyle="--",
                 label="minimiser of mean ℓ/c − mean")
        top.plot(taus, point["median"] - point["mean"], color="grey", linestyle=":", label="median − mean")
        top.axhline(0.0, color="grey", linewidth=0.6)
        top.set_xscale("log")
        top.set_title(NOISE_LABEL[noise], fontsize=8)
        top.set_ylabel("θ − mean of the targets")
        # Bottom: the size of the bias in units of Koloskova et al.'s scale min(sigma, sigma^2 / tau).
        bias = (rows["theta_avg"] - rows["mean"]).abs() / rows["scale"]
        medians = bias.groupby(rows["tau"]).median()
        bottom.plot(medians.index, medians.values, color="black", marker="o", markersize=3,
                    label="|averaged iterate − mean| / scale (median of seeds)")
        bottom.plot(taus, (point["root"] - point["mean"]).abs() / point["scale"], color="#d62728",
                    label="|root − mean| / scale")
        bottom.axhline(1.0, color="grey", linewidth=0.6)
        bottom.set_xscale("log")
        bottom.set_yscale("log")
        bottom.set_ylim(1e-4, 3)
        bottom.set_xlabel("clipping threshold τ")
        bottom.set_ylabel("bias / min(σ, σ²/τ)")
    handles, names = legend_entries(axes.flat)
    fig.legend(handles, names, loc="outside lower center", ncol=3, frameon=False, markerscale=2)
    first = table.iloc[0]
    fig.suptitle(f"The clipping bias on the location problem: per-sample norm clipping, {int(first['steps'])} steps, "
                 f"θ averaged over the second half of each run, {table['seed'].nunique()} seeds; "
                 "σ: the noise's standard deviation")
    save(fig, figures / "clipping_bias")


# -- batch clipping's fixed point against the batch size ------------------------------------------------


def plot_batch_fixed_point(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    table = pd.read_csv(results / "batch_fixed_point.csv")
    problems = sorted(table["problem"].unique())
    fig, axes = plt.subplots(1, len(problems), figsize=(4.2 * len(problems), 3.4), constrained_layout=True,
                             squeeze=False)
    styles = {"batch": {"color": "#d62728", "marker": "o"}, "sample": {"color": "#1f77b4", "marker": "s"}}
    for ax, problem in zip(axes[0], problems):
        rows = table[table["problem"] == problem]
        fixed = rows.groupby("batch_size")["batch_root_position"].first()
        ax.plot(fixed.index, fixed.values, color="black", linestyle="--", label="batch clipping's fixed point")
        ax.axhline(1.0, color="#1f77b4", linewidth=0.8, linestyle=":", label="root of eq. (22)")
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":", label="mean (least squares)")
        for granularity, style in styles.items():
            mine = rows[rows["granularity"] == granularity]
            shift = 1.06 if granularity == "sample" else 1 / 1.06  # side by side
            ax.scatter(mine["batch_size"] * shift, mine["position"], s=4, alpha=0.35, color=style["color"],
                       linewidths=0)
            medians = mine.groupby("batch_size")["position"].median()
            ax.plot(medians.index * shift, medians.values, color=style["color"], marker=style["marker"], markersize=4,
                    linewidth=1, label=f"{'per-sample' if granularity == 'sample' else 'batch'} clipping: averaged "
                    "iterates (median; dots: seeds)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B")
        ax.set_ylabel("position: 0 = mean, 1 = root of eq. (22)")
        first = rows.iloc[0]
        ax.set_title(f"{problem}, {first['noise']} noise, τ = {first['tau']:g}, {int(first['steps'])} steps")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle("Where batch and per-sample clipping end, against the batch size (position along the line from the "
                 "mean to the root of eq. (22))")
    save(fig, figures / "batch_fixed_point")


LABEL_NOISE_STYLE = {"none": {"color": "black", "marker": "o"}, "sample": {"color": "#1f77b4", "marker": "s"},
                     "batch": {"color": "#d62728", "marker": "^"}}


def plot_label_noise(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    table = pd.read_csv(results / "label_noise.csv")
    kind = np.where(table["method"] == "none", "none", table["granularity"])
    table = table.assign(kind=kind)
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.6), constrained_layout=True)
    noisy = table[(table["label_noise"] == table["label_noise"].max()) & (table["imbalance"] == 1)]
    ax = axes[0]
    for name, rows in noisy.groupby("kind", sort=False):
        style = LABEL_NOISE_STYLE[name]
        ax.scatter(rows["clean_fit"], rows["memorised"], s=6, alpha=0.35, color=style["color"], linewidths=0)
        means = rows.groupby("a0")[["clean_fit", "memorised"]].mean()
        ax.plot(means["clean_fit"], means["memorised"], color=style["color"], marker=style["marker"], markersize=4,
                linewidth=1, label=f"{rows['method_label'].iloc[0]} (mean over seeds at each a0; dots: runs)")
        for a0, point in means.iterrows():
            ax.annotate(f"{a0:g}", (point["clean_fit"], point["memorised"]), xytext=(3, -8),
                        textcoords="offset points", fontsize=6, color=style["color"])
    ax.set_xlabel("clean fit: correctly labelled training examples fitted")
    ax.set_ylabel("memorised: flipped labels fitted")
    ax.set_title(f"{noisy['label_noise'].max():.0%} label noise: memorisation against clean fit\n(a0 next to each mean)")
    ax.legend(loc="upper left", frameon=False, fontsize=6)
    ax = axes[1]
    for name, rows in noisy.groupby("kind", sort=False):
        style = LABEL_NOISE_STYLE[name]
        means = rows.groupby("a0")["test_acc"].mean()
        low, high = np.array([mean_interval(cell) for _, cell in rows.groupby("a0")["test_acc"]]).T
        ax.errorbar(means.index, means, yerr=[means - low, high - means], color=style["color"], marker=style["marker"], markersize=4,
                    linewidth=1, capsize=2, label=rows["method_label"].iloc[0])
    ax.set_xscale("log")
    ax.set_xlabel("a0 (a(n) = a0 / (n + n0)^p)")
    ax.set_ylabel("clean test accuracy (mean, 95% t-interval)")
    ax.set_title("Test accuracy against the step size\n(clipping needs a larger a0 for the same progress)")
    ax.legend(loc="lower right", frameon=False, fontsize=6)
    ax = axes[2]
    settings = table.groupby(["imbalance", "label_noise"], sort=True).size().index.tolist()
    names = [f"{noise:.0%} noise" if imbalance == 1 else f"{imbalance:g}:1 imbalance" for imbalance, noise in settings]
    for offset, (name, rows) in zip((-0.2, 0.0, 0.2), table.groupby("kind", sort=False)):
        style = LABEL_NOISE_STYLE[name]
        a0 = rows.groupby("a0")[["imbalance", "label_noise"]].apply(lambda r: len(r.drop_duplicates())).idxmax()
        mine = rows[rows["a0"] == a0]
        label = f"{rows['method_label'].iloc[0]}, a0 = {a0:g}"
        for k, (imbalance, noise) in enumerate(settings):
            cell = mine[(mine["imbalance"] == imbalance) & (mine["label_noise"] == noise)]["test_acc"]
            if len(cell):
                low, high = mean_interval(cell)
                ax.errorbar(k + offset, cell.mean(), yerr=[[cell.mean() - low], [high - cell.mean()]], color=style["color"], marker=style["marker"],
                            markersize=4, capsize=2, label=label)
                label = None  # one legend entry per method
    ax.legend(loc="lower left", frameon=False, fontsize=6)
    ax.set_xticks(range(len(settings)), names)
    ax.set_ylabel("clean test accuracy (mean, 95% t-interval)")
    ax.set_title("Test accuracy by setting (each method at one a0)")
    fig.suptitle(f"Label noise on the MNIST-1D MLP ({int(table['n_train'].iloc[0])} training examples, "
                 f"{int(table['steps'].max())} steps): does per-sample clipping fit mislabelled examples less?")
    save(fig, figures / "label_noise")


def plot_eq22_network(args) -> None:
    """Left: per seed, the averaged iterate's distance to theta_H (the zero of eq. 22 found from
    it) and to theta_L (the loss minimum the run started at), and ||theta_H - theta_L||, against
    tau (no clipping at the right). Right: test and training accuracy at theta_H and theta_L."""
    results, figures = Path(args.results), Path(args.figures)
    table = eq22_tau_grid(pd.read_csv(results / "eq22_network.csv"))
    table = table[table["status"] == "completed"]
    finite = sorted(t for t in table["tau"].unique() if math.isfinite(t))
    # tau = inf (no clipping) drawn one step past the largest tau, on the same log axis.
    place = {t: t for t in finite} | {math.inf: (finite[-1] * 2 if finite else 1.0)}
    x = table["tau"].map(place)

    def tau_axis(ax, label: str) -> None:
        ax.set_xscale("log")
        ax.set_xticks(list(place.values()), [f"{t:g}" if math.isfinite(t) else "∞\n(none)" for t in place])
        ax.minorticks_off()
        ax.set_xlabel(label)

    jitter = np.exp(np.random.default_rng(0).uniform(-0.06, 0.06, len(table)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    ax = axes[0]
    for column, color, label in (("dist_avg_H", "#d62728", "‖θ̄ − θ_H‖: average to the zero of eq. (22)"),
                                 ("dist_avg_L", "#1f77b4", "‖θ̄ − θ_L‖: average to the loss minimum it started at")):
        ax.scatter(x * jitter, table[column], s=5, alpha=0.4, color=color, linewidths=0)
        medians = table.groupby(x)[column].median()
        ax.plot(medians.index, medians, color=color, marker="o", markersize=3, linewidth=1, label=label + " (median; dots: seeds)")
    clipped = table[np.isfinite(table["tau"])]  # (at tau = inf theta_H is theta_L: 0, off a log axis)
    medians = clipped.groupby("tau")["dist_H_L"].median()
    ax.plot(medians.index, medians, color="black", linestyle="--", linewidth=1, label="‖θ_H − θ_L‖ (median)")
    ax.set_yscale("log")
    tau_axis(ax, "clipping threshold τ (per-sample norm clipping)")
    ax.set_ylabel("distance in parameter space")
    ax.set_title("Where the averaged iterate ends: at θ_H (eq. 22) or at θ_L (loss minimum)?")
    ax.legend(loc="lower left", frameon=False, fontsize=6)
    ax = axes[1]
    # Seeds that started at one loss minimum (collect's ``minimum``) are one trial: each
    # minimum's mean over its seeds, then the mean and interval over minima.
    minima = table.assign(x=x)
    for split, style in (("test", "-"), ("train", ":")):
        for name, color in (("H", "#d62728"), ("L", "#1f77b4")):
            column = f"{split}_acc_{name}"
            per_minimum = minima.groupby(["x", "minimum"])[column].mean()
            means = per_minimum.groupby(level="x").mean()
            low, high = np.array([mean_interval(cell) for _, cell in per_minimum.groupby(level="x")]).T
            ax.errorbar(means.index, means, yerr=[means - low, high - means], color=color, linestyle=style, marker="o",
                        markersize=3, linewidth=1, capsize=2, label=f"{split} accuracy at θ_{name}")
    tau_axis(ax, "clipping threshold τ")
    ax.set_ylabel("accuracy (mean over the loss minima, 95% t-interval)")
    ax.set_title("Does the bias cost or buy accuracy? θ_H against θ_L")
    ax.legend(loc="best", frameon=False, fontsize=6)
    save(fig, figures / "eq22_network")


def plot_batch_network(args) -> None:
    """Where batch and per-sample clipping end on the network against the batch size: position
    along the segment from theta_L (0) to theta_H (1), the averaged iterates (median; dots: seeds)
    and theta_B, batch clipping's own fixed point (median over loss minima, with its Monte Carlo
    error; at B = 1 it is theta_H)."""
    results, figures = Path(args.results), Path(args.figures)
    tau, arm = eq22_batch_arm(pd.read_csv(results / "eq22_network.csv"))
    if not len(arm):
        return
    fig, ax = plt.subplots(figsize=(6.2, 4.0), constrained_layout=True)
    batch = arm[arm["granularity"] == "batch"]
    fixed = batch.groupby(["batch_size", "minimum"])[["position_B", "B_error", "dist_flow_L"]].first()
    fixed = fixed.assign(error=fixed["B_error"] / fixed["dist_flow_L"]).groupby(level="batch_size").median()
    # (at B = 1 batch clipping is per-sample clipping: theta_B is theta_H, position 1, by definition)
    ax.plot([1, *fixed.index], [1.0, *fixed["position_B"]], color="black", linestyle="--", linewidth=1, label="θ_B: batch clipping's fixed point "
            "(median over minima; at B = 1, θ_H)")
    ax.errorbar(fixed.index, fixed["position_B"], yerr=fixed["error"], color="black", linestyle="none", capsize=2)
    ax.axhline(1.0, color="#1f77b4", linewidth=0.8, linestyle=":", label="θ_H: zero of eq. (22) where its ODE from θ_L ends")
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":", label="θ_L: the loss minimum every run started at")
    for granularity, color, marker, shift in (("batch", "#d62728", "o", 1 / 1.06), ("sample", "#1f77b4", "s", 1.06)):
        mine = arm[arm["granularity"] == granularity]
        ax.scatter(mine["batch_size"] * shift, mine["position_avg"], s=5, alpha=0.35, color=color, linewidths=0)
        medians = mine.groupby("batch_size")["position_avg"].median()
        ax.plot(medians.index * shift, medians.values, color=color, marker=marker, markersize=4, linewidth=1,
                label=f"{'per-sample' if granularity == 'sample' else 'batch'} clipping: averaged iterates "
                "(median; dots: seeds)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("position: 0 = θ_L, 1 = θ_H")
    ax.set_title(f"The network of eq22_network at τ = {tau:g}: where clipped SGD ends against B "
                 f"({int(arm['steps'].max()):,} steps)", fontsize=9)
    ax.legend(loc="lower left", frameon=False, fontsize=6)
    save(fig, figures / "batch_network")


PLOT = {"stability": [plot_stability, plot_increments], "agc_small_weights": [plot_agc_small_weights],
        "convergence": [plot_convergence], "step_sizes": [plot_step_sizes], "limit_set": [plot_limit_set],
        "ode_tracking": [plot_ode_tracking], "clipping_bias": [plot_clipping_bias],
        "batch_fixed_point": [plot_batch_fixed_point], "label_noise": [plot_label_noise],
        "eq22_network": [plot_eq22_network, plot_batch_network]}


# The order in which `collect` takes the experiments (with --jobs N, hands them out): the longest
# first, so that no process is left with a long one at the end (longest processing time first). One process each,
# at the full scale (the full run at 0b8b658; each with about 3 s of start): eq22_network 394 s
# (in two processes of its own: the searches for zeros), ode_tracking 28 s, stability 20 s,
# clipping_bias 19 s, label_noise 17 s, limit_set 14 s, batch_fixed_point 13 s, step_sizes 6 s,
# convergence 4 s, agc_small_weights 4 s.
COLLECT_ORDER = ["eq22_network", "ode_tracking", "stability", "clipping_bias", "label_noise", "limit_set",
                 "batch_fixed_point", "step_sizes", "convergence", "agc_small_weights"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="run records -> results/*.csv")
    collect.add_argument("experiment", nargs="+", choices=[*PLOT, "all"])  # (gradclip.collect.COLLECT's names)
    collect.add_argument("--runs", default=str(ROOT / "runs" / "full"),
                         help="output_root of the sweeps (runs/full made the committed results/)")
    collect.add_argument("--source", choices=["local", "wandb"], default="local")
    collect.add_argument("--entity")
    collect.add_argument("--project", default="gradclip")
    plot = sub.add_parser("plot", help="results/*.csv -> paper_figures/*.png, *.pdf")
    plot.add_argument("experiment", nargs="+", choices=[*PLOT, "all"])
    plot.add_argument("--figures", default=str(ROOT / "paper_figures"))
    for p in (collect, plot):
        p.add_argument("--results", default=str(ROOT / "results"))
        p.add_argument("--jobs", type=int, default=1, help="processes side by side, one experiment (collect) or "
                                                         "figure (plot) each at a time")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs} is not allowed: must be >= 1")
    Path(args.results).mkdir(parents=True, exist_ok=True)
    names = list(PLOT) if "all" in args.experiment else args.experiment
    if args.command == "collect":
        names = sorted(names, key=COLLECT_ORDER.index)
    tasks = [(args.command, name, k) for name in names
             for k in range(1 if args.command == "collect" else len(PLOT[name]))]
    # A stop signal ends this command as an exit (128 + its number), so that what it has begun
    # cleans up after itself (gradclip.collect's half-written tables).
    stops = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    for signum in stops:
        signal.signal(signum, lambda signum, frame: sys.exit(128 + signum))
    if args.jobs == 1 or len(tasks) == 1:
        for task in tasks:
            _do(task, args)
        return
    # Fresh processes (spawn): collect imports torch, which must not be forked mid-run. A stop
    # signal ends this command once the tasks under way are done, and starts no other; it is
    # held while the pool starts its processes and takes the tasks (an exit half-way through a
    # submit could leave a process waiting for work that never comes).
    pool = None
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        pool = ProcessPoolExecutor(min(args.jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(_do, task, args) for task in tasks]
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        for done in futures:
            done.result()  # the first failure ends the command with its traceback
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _do(task: tuple[str, str, int], args) -> None:
    """One experiment's tables (collect) or one of its figures (plot)."""
    command, name, k = task
    if command == "collect":
        from gradclip.collect import collect  # (torch, for the data sets: plotting needs neither)

        collect(name, args)
    else:
        PLOT[name][k](args)


if __name__ == "__main__":
    main()
