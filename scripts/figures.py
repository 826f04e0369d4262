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
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from gradclip.analysis import (  # noqa: E402
    MIN_RECORDS, agc_stability_limits, agc_unit_summary, increment_table, label_setting, stability_table,
    trajectories, with_labels)
from gradclip.records import load_runs, load_units, load_wandb_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7, "figure.dpi": 150,
                     "savefig.bbox": "tight"})


# -- loading ----------------------------------------------------------------------------------------


def load(args, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    if args.source == "wandb":
        return load_wandb_runs(args.entity, args.project, {"group": experiment})
    runs, metrics = load_runs(Path(args.runs) / experiment)
    if runs.empty:
        raise SystemExit(f"no run records under {Path(args.runs) / experiment}: run the sweep first")
    return runs, metrics


def problem(runs: pd.DataFrame) -> pd.Series:
    """A readable name per run for the model: deep tanh MLP, MLP, exploding RNN."""
    deep = (runs["model.name"] == "mlp") & (runs.get("model.activation") == "tanh")
    rnn = runs["model.name"] == "rnn"
    return pd.Series(["deep tanh MLP" if d else "RNN" if r else runs.loc[i, "model.name"].upper()
                      for i, d, r in zip(runs.index, deep, rnn)], index=runs.index)


# -- stability (predictions 2 and 1) ------------------------------------------------------------------


def collect_stability(args) -> None:
    runs, metrics = load(args, "stability")
    runs["model.name"] = problem(runs)
    bounds = runs["divergence.max_norm"].unique()
    if len(bounds) != 1:
        raise SystemExit(f"stability runs use several bounds B = divergence.max_norm: {sorted(bounds)}")
    bound = float(bounds[0])
    results = Path(args.results)
    table = stability_table(runs, bound)
    first = runs.iloc[0]
    table = table.assign(bound=bound, steps=int(runs["steps"].max()), schedule=first["schedule.name"],
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
    paths.to_csv(results / "stability_trajectories.csv", index=False)
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
                         "linestyle": "--" if "(batch)" in label else "-"}
    return styles


def plot_stability(args) -> None:
    results, figures = Path(args.results), Path(args.figures)
    table = pd.read_csv(results / "stability.csv")
    paths = pd.read_csv(results / "stability_trajectories.csv")
    order = ["deep tanh MLP", "RNN", "MLP"]
    models = sorted(set(table["model"]), key=lambda m: order.index(m) if m in order else len(order))
    labels = sorted(set(table["method_label"]))
    styles = palette(labels)
    # Methods that agree would hide each other: each is drawn slightly to the side of its a0
    # (a dodge of up to ±0.2 decade in a0), with its 95% Wilson interval as an error bar.
    dodge = {label: 10 ** (0.05 * (k - (len(labels) - 1) / 2)) for k, label in enumerate(labels)}
    fig, axes = plt.subplots(2, 2, figsize=(7.5, 6.6), constrained_layout=True)
    axes = axes.flatten()
    for ax in axes[len(models):-1]:
        ax.axis("off")
    for ax, model in zip(axes, models):
        for label, rows in table[table["model"] == model].groupby("method_label", sort=True):
            rows = rows.sort_values("a0")
            st = styles[label]
            x = rows["a0"] * dodge[label]
            ax.errorbar(x, rows["stable_fraction"], yerr=[rows["stable_fraction"] - rows["wilson_low"],
                                                          rows["wilson_high"] - rows["stable_fraction"]],
                        marker="o", markersize=2.5, capsize=1.5, elinewidth=0.6, label=label, **st)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(schedule_label(table))
        ax.set_ylabel("stable fraction of seeds")
        n = int(table[table["model"] == model]["runs"].max())
        ax.set_title(f"{model}: {n} seeds, 95% Wilson intervals")
    ax = axes[-1]
    for (label, seed), rows in paths.groupby(["method_label", "seed"], sort=True):
        st = styles[label]
        ax.plot(rows["step"], rows["value"], **st)
        if (rows["summary.status"] == "diverged").all():  # mark where the run was stopped
            ax.plot(rows["step"].iloc[-1], rows["value"].iloc[-1], marker="x", color=st["color"], markersize=5)
    bound = float(table["bound"].iloc[0])
    ax.axhline(bound, color="red", linewidth=0.8, linestyle=":", label=f"bound B = {bound:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step n")
    ax.set_ylabel("||θ_n||")
    seeds = sorted(paths["seed"].unique())
    ax.set_title(f"{paths['model'].iloc[0]}, a0 = {paths['a0'].iloc[0]:g}, seeds {seeds[0]}-{seeds[-1]} (x: diverged)")
    handles, names = axes[0].get_legend_handles_labels()
    extra_handles, extra_names = ax.get_legend_handles_labels()
    fig.legend(handles + extra_handles, names + extra_names, loc="outside lower center", ncol=3, frameon=False,
               title="method (granularity: sample = clip each example, then average; batch = clip the mean)")
    steps = int(table["steps"].iloc[0])
    fig.suptitle(f"Stability of clipped SGD over {steps} steps on MNIST-1D\nstable = finite and ||θ_n|| ≤ B "
                 f"= {bound:g} at every step; AGC leaves the classifier head unclipped")
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


COLLECT = {"stability": collect_stability, "agc_small_weights": collect_agc_small_weights}
PLOT = {"stability": [plot_stability, plot_increments], "agc_small_weights": [plot_agc_small_weights]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="run records -> results/*.csv")
    collect.add_argument("experiment", choices=[*COLLECT, "all"])
    collect.add_argument("--runs", default=str(ROOT / "runs" / "default"), help="output_root of the sweeps")
    collect.add_argument("--source", choices=["local", "wandb"], default="local")
    collect.add_argument("--entity")
    collect.add_argument("--project", default="gradclip")
    plot = sub.add_parser("plot", help="results/*.csv -> paper_figures/*.png, *.pdf")
    plot.add_argument("experiment", choices=[*PLOT, "all"])
    plot.add_argument("--figures", default=str(ROOT / "paper_figures"))
    for p in (collect, plot):
        p.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args()
    Path(args.results).mkdir(parents=True, exist_ok=True)
    names = list(COLLECT if args.command == "collect" else PLOT) if args.experiment == "all" else [args.experiment]
    for name in names:
        if args.command == "collect":
            COLLECT[name](args)
        else:
            for plot_one in PLOT[name]:
                plot_one(args)


if __name__ == "__main__":
    main()
