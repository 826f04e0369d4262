"""Write results/REPORT.md: for each prediction of docs/CLAIMS.md, the verdict and the numbers behind it.

    python scripts/report.py [--results results] [--scale default]

Reads only the tables in results/ (written by `scripts/figures.py collect`); every verdict is
computed from them here, none is written by hand.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from gradclip.analysis import MIN_RECORDS, loglog_slope, wilson_interval

ROOT = Path(__file__).resolve().parents[1]
# Rounding allowance for a ratio that is <= 1 in exact arithmetic, computed in float32.
FLOAT_TOLERANCE = 1e-5


def fmt(x: float) -> str:
    return f"{x:.4g}"


def span(values: pd.Series) -> str:
    """'0.8' or '0.6–1': the range of a set of numbers."""
    lo, hi = values.min(), values.max()
    return fmt(lo) if lo == hi else f"{fmt(lo)}–{fmt(hi)}"


def verdict_of(fractions: pd.Series, unclipped: pd.Series) -> str:
    """holds: every seed stable where plain SGD mostly is not; partly: better than plain SGD;
    fails: no better."""
    if fractions.empty:
        return "untested"
    if fractions.min() == 1:
        return "holds"
    return "partly" if fractions.mean() > unclipped.mean() else "fails"


def combine(verdicts: list[str]) -> str:
    tested = [v for v in verdicts if v != "untested"]
    if not tested:
        return "untested"
    if all(v == tested[0] for v in tested):
        return tested[0]
    return "partly"


# -- prediction 1 -------------------------------------------------------------------------------------


def bounded_increments(results: Path) -> list[str]:
    table = pd.read_csv(results / "increments.csv")
    if table.empty:
        return ["**Verdict: untested.** The sweep has no clipped runs."]
    worst = table["worst_update_ratio"].max()
    realised = table["worst_step_ratio"].max()
    holds = worst <= 1 + FLOAT_TOLERANCE
    lines = [f"**Verdict: {'holds' if holds else 'fails'}.** Over {int(table['runs'].sum())} clipped runs of the "
             f"stability sweep (every problem and a0; steps that diverged are left out), the largest ratio of the "
             f"clipped gradient to its bound is {worst:.7g} (norm clipping: max ‖clipped g‖ / τ; AGC: max over the "
             f"units it clips, i.e. all but the classifier head, of ‖G_i‖ / (λ max(‖W_i‖, ε))): "
             + ("≤ 1 up to float32 rounding." if holds else "above 1."), "",
             "| method (granularity) | runs | worst clipped-gradient ratio | worst realised step ratio |",
             "|---|---|---|---|"]
    for row in table.sort_values("method_label").itertuples():
        lines.append(f"| {row.method_label} | {row.runs} | {row.worst_update_ratio:.7g} | {row.worst_step_ratio:.7g} |")
    lines += ["", f"The realised step ‖θ(n+1) − θ(n)‖ / a(n), computed from the float32 weights, reaches "
              f"{realised:.7g} of the bound. It differs from the clipped gradient only by the rounding of "
              "θ − a(n)ĝ, about ulp(θ)/a(n) relative to the step, which grows as a(n) shrinks "
              "(`paper_figures/increments.png`). Per-sample clipping stays below the bound: a mean of "
              "clipped examples that point different ways is shorter than each of them."]
    return lines


# -- prediction 2 and AGC's stability -------------------------------------------------------------------


def stability(results: Path) -> list[str]:
    table = pd.read_csv(results / "stability.csv")
    bound, steps = table["bound"].iloc[0], int(table["steps"].iloc[0])
    seeds = int(table["runs"].max())
    lines, classic, adaptive = [], [], []
    for model, rows in table.groupby("model", sort=False):
        none = rows[rows["method"] == "none"].set_index("a0")["stable_fraction"]
        unstable_a0 = none[none < 0.5].index
        if not len(unstable_a0):
            lines.append(f"- **{model}**: plain SGD stayed stable on the whole grid, which therefore does not "
                         "test the claim on this problem.")
            classic.append("untested")
            adaptive.append("untested")
            continue
        at = rows[rows["a0"].isin(unstable_a0)]
        norm, agc = at[at["method"] == "norm"], at[at["method"] == "agc"]
        classic.append(verdict_of(norm["stable_fraction"], none[unstable_a0]))
        adaptive.append(verdict_of(agc["stable_fraction"], none[unstable_a0]))
        implied = int(norm["implied_by_increments"].sum())
        smallest = rows[rows["a0"] == rows["a0"].min()]
        lines.append(
            f"- **{model}**: plain SGD is stable in fewer than half of the seeds at a0 ∈ "
            f"{{{', '.join(fmt(a) for a in unstable_a0)}}} (stable fraction {span(none[unstable_a0])}). There, "
            f"norm clipping's stable fraction is {span(norm['stable_fraction'])} (verdict: {classic[-1]}; "
            f"{implied} of these {len(norm)} points are implied by prediction 1, since "
            f"‖θ_0‖ + τ Σa(n) < B), AGC's is {span(agc['stable_fraction'])} (verdict: {adaptive[-1]}). "
            f"At the smallest a0 = {fmt(rows['a0'].min())} every method's stable fraction is "
            f"{span(smallest['stable_fraction'])}.")
    overall = combine([combine(classic), combine(adaptive)])
    failed = int(table["failed_runs"].iloc[0])
    head = [f"**Verdict: {overall}** (classic norm clipping: {combine(classic)}; AGC: {combine(adaptive)}). "
            f"Stable = finite with ‖θ_n‖ ≤ B = {bound:g} at every one of {steps} steps; {seeds} seeds per point; "
            f"{failed} runs crashed and are left out. Figure: `paper_figures/stability.png`; table with 95% "
            f"Wilson intervals: `results/stability.csv`. Seed-level noise: with {seeds} seeds, a point where "
            f"every seed is stable has the interval [{fmt(wilson_interval(seeds, seeds)[0])}, 1]; the full "
            f"scale's 32 seeds narrow it to [{fmt(wilson_interval(32, 32)[0])}, 1].", ""]
    caveat = ["", "Where ‖θ_0‖ + τ Σa(n) < B, norm clipping cannot leave the ball at all: its stability "
              "there is the bounded increment of prediction 1, not a probabilistic statement. At this scale "
              f"that covers {int(table['implied_by_increments'].sum())} of "
              f"{int((table['method'] == 'norm').sum())} norm-clipping points; the full scale (300 steps, "
              "τ up to 10) reaches beyond B."]
    return head + lines + caveat + ["", *agc_stability(results)]


def agc_stability(results: Path) -> list[str]:
    path = results / "agc_stability.csv"
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if table.empty:
        return []
    lines = ["AGC against classic clipping at large a0·λ (AGC's bound λ max(‖W_i‖, ε) grows with the "
             "weights; the classifier head is exempt and takes plain SGD steps). Per problem and AGC "
             "setting, the largest a0 at which every seed was stable and the first at which one was not "
             "(norm clipping's stable fractions at the same a0 are in the list above):", "",
             "| problem | AGC setting | largest a0, all stable | first a0 with a lost seed | a0·λ there |",
             "|---|---|---|---|---|"]
    for row in table.itertuples():
        first = "none on the grid" if math.isnan(row.first_unstable_a0) else fmt(row.first_unstable_a0)
        product = "–" if math.isnan(row.a0_times_lambda) else fmt(row.a0_times_lambda)
        lines.append(f"| {row.model} | {row.method_label} | {fmt(row.largest_all_stable_a0)} | {first} | {product} |")
    return lines


# -- prediction 7 -------------------------------------------------------------------------------------


def agc_small_weights(results: Path) -> list[str]:
    path = results / "agc_units_by_decade.csv"
    if not path.is_file():
        return ["The per-unit step against ‖W_i‖ is not measured at this scale."]
    table = pd.read_csv(path)
    table = table[table["records"] >= MIN_RECORDS]
    settings = pd.read_csv(results / "agc_settings.csv").iloc[0]
    lam, eps = float(settings["clip_factor"]), float(settings["eps"])
    eps_decade = math.floor(math.log10(eps))
    decades = sorted(set.intersection(*(set(g["decade"]) for _, g in table.groupby("method_label"))))
    if len(decades) < 2:
        return ["Too few units per decade of ‖W_i‖ to compare."]
    low, high = decades[0], decades[-1]
    by = table.set_index(["method_label", "decade"])
    lines = [f"Per hidden unit of a tanh MLP whose unit norms span four decades (`paper_figures/agc_small_weights.png`, "
             f"`results/agc_units_by_decade.csv`); steps divided by a(n); medians over units and logged steps in "
             f"the lowest and highest decade of ‖W_i‖ that every method populates with ≥ {MIN_RECORDS} records "
             f"(10^{low} and 10^{high}):", "",
             "| method | absolute step ‖ΔW_i‖/a(n), low / high | relative step ‖ΔW_i‖/(a(n)‖W_i‖), low / high |",
             "|---|---|---|"]
    labels = sorted(set(table["method_label"]))
    for label in labels:
        lo, hi = by.loc[(label, low)], by.loc[(label, high)]
        lines.append(f"| {label} | {fmt(lo.abs_step_median)} / {fmt(hi.abs_step_median)} | "
                     f"{fmt(lo.rel_step_median)} / {fmt(hi.rel_step_median)} |")
    agc = [label for label in labels if label.startswith("agc")]
    if not agc:
        return lines
    a = table[table["method_label"] == agc[0]].set_index("decade")
    above = a[a.index >= eps_decade + 1]
    below = a[a.index <= eps_decade - 1]
    absolute = a.loc[low, "abs_step_median"] > a.loc[high, "abs_step_median"]
    rel_above = above["rel_step_median"].max() / above["rel_step_median"].min() if len(above) > 1 else math.nan
    rel_below = (below["rel_step_median"].max() / above["rel_step_median"].median()
                 if len(below) and len(above) else math.nan)
    others = [label for label in labels if not label.startswith("agc")]
    smaller = {label: by.loc[(label, low), "rel_step_median"] / a.loc[low, "rel_step_median"] for label in others}
    relative_grows = rel_below > 2
    verdict = "partly" if relative_grows and not absolute else "holds" if absolute and relative_grows else "fails"
    lines = [f"**Verdict: {verdict}.** Under AGC (λ = {lam:g}, ε = {eps:g}), small weights get *smaller* absolute "
             f"steps ({fmt(a.loc[low, 'abs_step_median'] / a.loc[high, 'abs_step_median'])}× those of the "
             f"largest units), a relative step that is flat above ε (it varies by a factor "
             f"{fmt(rel_above)} across the decades from 10^{eps_decade + 1} up) and grows only below ε "
             f"(up to {fmt(rel_below)}× the level above ε), where the floor λε/‖W_i‖ allows it. Compared "
             "with the other methods AGC gives the smallest units much smaller relative steps: "
             + ", ".join(f"{label} {fmt(v)}× larger" for label, v in smaller.items())
             + ". The reading 'larger relative steps for very small weights' holds only below ε; "
             "'larger absolute steps' fails.", ""] + lines
    return lines


# -- prediction 3 -------------------------------------------------------------------------------------

# ||H|| "still falling" at the end of a run: its log-log slope over the last decade of steps is
# below this (a fall of at least ~11% per decade), and it ended below where it started.
FALLING_SLOPE = -0.05
# A group of runs made no progress when its training loss fell by less than this fraction: its
# ||H|| then says nothing about convergence.
NO_PROGRESS = 0.02


def is_falling(rows: pd.DataFrame) -> pd.Series:
    return (rows["H_slope_last_decade"] < FALLING_SLOPE) & (rows["H_final"] < rows["H_initial"])


def falling_verdict(rows: pd.DataFrame) -> str:
    if (rows["train_loss_final"] / rows["train_loss_initial"]).median() > 1 - NO_PROGRESS:
        return "untested"
    falling = is_falling(rows)
    return "holds" if falling.all() else "fails" if not falling.any() else "partly"


def convergence(results: Path) -> list[str]:
    path = results / "convergence_summary.csv"
    if not path.is_file():
        return ["Not measured at this scale."]
    table = pd.read_csv(path)
    first = table.iloc[0]
    lines = ["| model | method (granularity) | a0 | seeds | training loss, start → end | ‖H‖ at n = 0 | ‖H‖ at the end | "
             "end / start | slope of log ‖H‖ over the last decade | ‖H‖ still falling | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = {}
    for (model, label, a0), rows in table.groupby(["model", "method_label", "a0"], sort=True):
        verdict = falling_verdict(rows)
        verdicts.setdefault(label, []).append(verdict)
        lines.append(f"| {model} | {label} | {fmt(a0)} | {len(rows)} | {fmt(rows['train_loss_initial'].median())} → "
                     f"{fmt(rows['train_loss_final'].median())} | {span(rows['H_initial'])} | {span(rows['H_final'])} | "
                     f"{span(rows['H_ratio'])} | {span(rows['H_slope_last_decade'])} | "
                     f"{int(is_falling(rows).sum())}/{len(rows)} | "
                     + ("untested: no progress" if verdict == "untested" else verdict) + " |")
    by_method = {label: combine(v) for label, v in verdicts.items()}
    overall = combine(list(by_method.values()))
    steps = int(table["last_step"].max())
    summary = "; ".join(f"{label}: {v}" for label, v in by_method.items())
    head = [f"**Verdict: {overall}** ({summary}), on a horizon of {steps} steps. The theory says ‖H(θ_n)‖ → 0 and "
            "gives no rate, so a finite run can only show whether ‖H‖ is still falling at its end: here, whether "
            f"the log-log slope of ‖H‖ over the last decade of steps is below {FALLING_SLOPE} and ‖H‖ ended below "
            f"its start, in every seed. A setting whose training loss fell by less than {NO_PROGRESS:.0%} made no "
            f"progress and is untested. {first['data']}, ‖H‖ over the whole training set with per-example "
            f"gradients, step sizes a(n) = a0 / (n + {first['n0']:g})^{first['power']:g}; figure "
            "`paper_figures/convergence.png`, table `results/convergence_summary.csv`.", ""]
    notes = []
    for label, rows in table.groupby("method_label"):
        if label.startswith("agc") and (rows["H_ratio"] > 1).any():
            growth = (rows["param_norm_final"] / rows["param_norm_initial"]).groupby(rows["a0"])
            notes.append(f"Under {label} ‖H‖ ended above its start in {int((rows['H_ratio'] > 1).sum())} of "
                         f"{len(rows)} runs (end / start up to {fmt(rows['H_ratio'].max())}), while ‖θ‖ grew by a "
                         "factor " + ", ".join(f"{span(g)} at a0 = {fmt(a0)}" for a0, g in growth) + ". AGC's bound "
                         "λ max(‖W_i‖, ε) scales with the weights, so the clipped mean field can grow with them. "
                         "Where AGC trained at all, it does not show on this horizon the convergence the paper claims "
                         "for it under its extra assumption (A3), which the paper does not state precisely.")
    return head + lines + ([""] + notes if notes else [])


# -- prediction 4 -------------------------------------------------------------------------------------

A1_LOW, A1_HIGH = 0.5, 1.0
# The noise of a constant step vanished (the premise of a noise floor fails) when the mean
# per-example gradient norm fell by this factor over the run.
NOISE_VANISHED = 10.0


def pooled_slope(paths: pd.DataFrame) -> float:
    """log-log slope of ||H|| over the last decade of steps, all seeds' points pooled."""
    last = paths["step"].max()
    return loglog_slope(paths["step"], paths["value"], last / 10)


def step_sizes(results: Path) -> list[str]:
    path = results / "step_sizes.csv"
    if not path.is_file():
        return ["Not measured at this scale."]
    table = pd.read_csv(path)
    paths = pd.read_csv(results / "step_sizes_paths.csv")
    paths = paths[paths["metric"] == "H_norm"]
    powers = sorted(table["power"].unique())
    lines = ["Final ‖H(θ_n)‖ (full training set; median over seeds, and the range) by the exponent p of "
             "a(n) = a0 / (n + 1)^p:", "",
             "| problem | " + " | ".join(f"p = {fmt(p)}" for p in powers) + " |",
             "|---|" + "---|" * len(powers)]
    findings, verdicts = [], []
    for problem, rows in table.groupby("problem", sort=True):
        median = rows.groupby("power")["H_final"].median()
        lines.append(f"| {problem} | " + " | ".join(
            f"{fmt(median[p])} ({span(rows.loc[rows['power'] == p, 'H_final'])})" if p in median else "–"
            for p in powers) + " |")
        a1 = median[(median.index > A1_LOW) & (median.index <= A1_HIGH)]
        best_p, best_a1 = a1.idxmin(), a1.min()
        mine = paths[paths["problem"] == problem]
        parts = []
        if 0 in median.index:
            constant = rows[rows["power"] == 0]
            noise_drop = (constant["sample_grad_initial"] / constant["sample_grad_final"]).median()
            slope = pooled_slope(mine[mine["power"] == 0])
            if noise_drop >= NOISE_VANISHED:
                verdicts.append("untested")
                parts.append(f"A constant step: untested. Its per-example gradients shrank {fmt(noise_drop)}× over "
                             f"the run (training loss {fmt(constant['train_loss_final'].median())} at the end): the "
                             "model fits the training set, so the noise a floor would come from vanishes, and "
                             f"‖H‖ ends at {fmt(median[0])}, {fmt(median[0] / best_a1)}× the best A1 schedule's "
                             f"{fmt(best_a1)} (p = {fmt(best_p)}).")
            else:
                floor = median[0] > 2 * best_a1 and slope >= FALLING_SLOPE
                verdicts.append("holds" if floor else "fails")
                parts.append(f"A constant step ends at ‖H‖ = {fmt(median[0])}, {fmt(median[0] / best_a1)}× the best "
                             f"A1 schedule's {fmt(best_a1)} (p = {fmt(best_p)}), and its ‖H‖ over the last decade "
                             f"has slope {fmt(slope)} (seeds pooled; per-example gradients shrank only "
                             f"{fmt(noise_drop)}×): " + ("a noise floor." if floor else "no noise floor."))
        low = median[(median.index > 0) & (median.index <= A1_LOW)]
        if len(low):
            worse = low.min() > 2 * best_a1
            parts.append("p ≤ 0.5 (Σa² = ∞) ends at " + ", ".join(f"{fmt(v)} (p = {fmt(p)})" for p, v in low.items())
                         + (": worse than the best A1 schedule." if worse else
                            ": as low as the best A1 schedule, so here Σa² < ∞ was not needed (it is a sufficient "
                            "condition, not a necessary one)."))
        frozen = rows[rows["power"] > 1]
        if len(frozen):
            inside = (frozen["final_displacement"] <= frozen["frozen_radius"]).all()
            slope = pooled_slope(mine[mine["power"] > 1])
            stuck = frozen["H_final"].median() > 2 * best_a1 and abs(slope) < -FALLING_SLOPE
            parts.append(f"p > 1 moves θ by at most {fmt(frozen['final_displacement'].max())} from θ_0, inside the "
                         f"freeze radius τ Σ_{{n≥0}} a(n) = {span(frozen['frozen_radius'])} "
                         f"({'every' if inside else 'NOT every'} run; this follows from prediction 1); after the last "
                         f"step θ can move at most τ Σ_{{n≥N}} a(n) = {span(frozen['remaining_radius'])} more. Its ‖H‖ "
                         f"ends at {fmt(frozen['H_final'].median())}, {fmt(frozen['H_final'].median() / best_a1)}× the "
                         f"best A1 schedule's, with slope {fmt(slope)} over the last decade: "
                         + ("frozen short of the root." if stuck else "not frozen short of the root."))
            verdicts.append("holds" if inside and stuck else "fails")
        parts.append(f"Within A1 the final ‖H‖ spans {span(a1)} with p (the theory gives no rate).")
        findings.append(f"- **{problem}**: " + " ".join(parts))
    overall = combine(verdicts)
    head = [f"**Verdict: {overall}.** Per-sample norm clipping; 0.5 < p ≤ 1 is assumption A1. A noise floor: a "
            f"constant step ends more than 2× above the best A1 schedule and its ‖H‖ no longer falls (slope ≥ "
            f"{FALLING_SLOPE}); a freeze: p > 1 ends more than 2× above it with |slope| < {-FALLING_SLOPE}. Figure "
            "`paper_figures/step_sizes.png`, table `results/step_sizes.csv`.", ""]
    return head + findings + [""] + lines


# -- prediction 5 -------------------------------------------------------------------------------------

# The clipping bias is resolved at a point where the root of eq. (22) and the mean are this many
# times further apart than the final iterate is from the nearer of the two.
RESOLVED = 5.0


def limit_set(results: Path) -> list[str]:
    path = results / "limit_set.csv"
    if not path.is_file():
        return ["Not measured at this scale."]
    table = pd.read_csv(path)
    keys = ["problem", "noise", "granularity", "tau"]
    medians = table.groupby(keys, sort=True).median(numeric_only=True).reset_index()
    sample = medians[medians["granularity"] == "sample"]
    error = sample[["dist_to_root", "dist_to_mean"]].min(axis=1)
    resolved = sample[sample["root_to_mean"] > RESOLVED * error]
    closer = resolved["dist_to_root"] < resolved["dist_to_mean"]
    verdict = "untested" if resolved.empty else "holds" if closer.all() else "partly" if closer.any() else "fails"
    first = table.iloc[0]
    biggest = sample.loc[sample["root_to_mean"].idxmax()]
    # Points whose iterate is still far from the root, by the same factor against the median
    # point: the runs there had not converged.
    unconverged = sample[sample["dist_to_root"] > RESOLVED * sample["dist_to_root"].median()]
    lines = [f"**Verdict: {verdict}.** The prediction: per-sample clipped SGD ends at the root of eq. (22), "
             "computed independently (gradclip.meanfield: Brent's method on the location problem, where the root is "
             "the Huber estimate, and a trust-region Newton method on the convex Huber-type objective for "
             f"regression), not at the mean / least-squares solution. At the {len(resolved)} of {len(sample)} "
             f"(problem, noise, τ) points where the two are more than {RESOLVED:g}× further apart than the final "
             f"iterate is from the nearer one, it is nearer the root at {int(closer.sum())}. The largest bias is at "
             f"{biggest['problem']}, {biggest['noise']} noise, τ = {fmt(biggest['tau'])}: the root lies "
             f"{fmt(biggest['root_to_mean'])} from the mean, and the iterate {fmt(biggest['dist_to_root'])} from the "
             f"root and {fmt(biggest['dist_to_mean'])} from the mean. "
             + (f"Not converged in {int(first['steps'])} steps (more than {RESOLVED:g}× the median point's "
                f"{fmt(sample['dist_to_root'].median())} from the root): "
                + ", ".join(f"{r.problem}, {r.noise}, τ = {fmt(r.tau)} ({fmt(r.dist_to_root)})"
                            for r in unconverged.itertuples())
                + " (near the root H's slope is the fraction of unclipped samples, small at small τ). "
                if len(unconverged) else "")
             + "Steps of "
             f"{int(first['batch_size'])} samples, medians over seeds; figure `paper_figures/limit_set.png`, table "
             "`results/limit_set.csv`.", "",
             "| problem | noise | τ | ‖root − mean‖ | per-sample: ‖θ_n − root‖ | per-sample: ‖θ_n − mean‖ |",
             "|---|---|---|---|---|---|"]
    for row in sample.itertuples():
        lines.append(f"| {row.problem} | {row.noise} | {fmt(row.tau)} | {fmt(row.root_to_mean)} | "
                     f"{fmt(row.dist_to_root)} | {fmt(row.dist_to_mean)} |")
    batch = medians[medians["granularity"] == "batch"]
    if len(batch) and "dist_to_batch_root" in batch:
        apart = batch[batch["batch_root_to_root"] > RESOLVED * batch[["dist_to_batch_root", "dist_to_root"]].min(axis=1)]
        nearer = apart["dist_to_batch_root"] < apart["dist_to_root"]
        lines += ["", f"Batch clipping (the mean of {int(first['batch_size'])} gradients, clipped) on the location problem "
                  "has another fixed point: the Huber estimate of the distribution of batch means (gradclip.meanfield, "
                  f"Monte Carlo over {int(batch['batch_root_draws'].iloc[0])} batches; standard error at most "
                  f"{fmt(batch['batch_root_error'].max())}). At the {len(apart)} of {len(batch)} points where it and "
                  f"the root of (22) are more than {RESOLVED:g}× further apart than the final iterate is from the "
                  f"nearer one, the iterate is nearer the batch fixed point at {int(nearer.sum())}.", "",
                  "| noise | τ | batch: ‖θ_n − its fixed point‖ | batch: ‖θ_n − root of (22)‖ | batch: ‖θ_n − mean‖ |",
                  "|---|---|---|---|---|"]
        for row in batch.itertuples():
            lines.append(f"| {row.noise} | {fmt(row.tau)} | {fmt(row.dist_to_batch_root)} | {fmt(row.dist_to_root)} | "
                         f"{fmt(row.dist_to_mean)} |")
    lines += ["", *network_bias(results)]
    return lines


def network_bias(results: Path) -> list[str]:
    path = results / "convergence_summary.csv"
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    lines = [f"On a network (the convergence runs of section 3, {table['data'].iloc[0]}): the unclipped "
             "‖mean_i ∇ℓ_i‖ against ‖H(θ_n)‖ at the start and the end of each run (medians over seeds):", "",
             "| model | method (granularity) | a0 | ‖mean ∇ℓ‖ at the start | ‖mean ∇ℓ‖ at the end | ‖H‖ at the end | "
             "‖mean ∇ℓ‖ / ‖H‖ at the start | at the end |", "|---|---|---|---|---|---|---|---|"]
    for (model, label, a0), rows in table.groupby(["model", "method_label", "a0"], sort=True):
        lines.append(f"| {model} | {label} | {fmt(a0)} | {fmt(rows['mean_grad_initial'].median())} | "
                     f"{fmt(rows['mean_grad_final'].median())} | {fmt(rows['H_final'].median())} | "
                     f"{fmt((rows['mean_grad_initial'] / rows['H_initial']).median())} | "
                     f"{fmt(rows['grad_over_H_final'].median())} |")
    norm = table[table["method_label"].str.startswith("norm")]
    if len(norm):
        grew = sorted(model for model, rows in norm.groupby("model")
                      if rows["mean_grad_final"].median() > rows["mean_grad_initial"].median())
        start = norm["mean_grad_initial"] / norm["H_initial"]
        grad_change = norm["mean_grad_final"] / norm["mean_grad_initial"]
        lines += ["", f"Under norm clipping ‖H‖ ends at {span(norm['H_ratio'])}× its start while ‖mean ∇ℓ‖ ends at "
                  f"{span(grad_change)}× its start (" + ("larger than it started on " + ", ".join(grew) if grew else
                                                         "smaller on every model") + "), so the ratio grows from "
                  f"{span(start)} at the start to {span(norm['grad_over_H_final'])} at the end: the iterates "
                  "approach a zero of the clipped mean field, not a stationary point of the training loss, which is "
                  "how claim 3 of the paper reads eq. (22)."]
    return lines


# -- prediction 6 -------------------------------------------------------------------------------------


def ode_tracking(results: Path) -> list[str]:
    path = results / "ode_gaps.csv"
    if not path.is_file():
        return ["Not measured at this scale."]
    gaps = pd.read_csv(path)
    median = gaps.groupby("a0")["max_gap"].median().sort_index(ascending=False)
    shrinks = bool((median.diff().dropna() < 0).all())
    verdict = "holds" if shrinks and len(median) > 1 else "fails"
    horizon = gaps["horizon"].min()
    mean_path = results / "ode_seed_mean_gaps.csv"
    mean = pd.read_csv(mean_path).set_index("a0")["max_gap_of_seed_mean"] if mean_path.is_file() else pd.Series()
    lines = [f"**Verdict: {verdict}.** The largest gap max_{{t(n) ≤ {fmt(horizon)}}} ‖θ_n − θ(t(n))‖ between the "
             "iterates and the solution of dθ/dt = −H(θ) (integrated by gradclip.meanfield with an 8th-order "
             "Runge-Kutta method) "
             + ("shrinks at every step down the grid of a0" if shrinks else "does NOT shrink at every step down the grid")
             + f"; on log-log axes it falls like a0^{fmt(log_slope(median))} (single-sample noise alone would give "
             "0.5)."]
    if len(mean) > 1:
        seeds = int(pd.read_csv(mean_path)["seeds"].min())
        lines[0] += (f" The mean of the {seeds} seeds' iterates, whose noise is smaller but whose bias is not, is at "
                     f"most {span(mean)} from the ODE and falls like a0^{fmt(log_slope(mean))}; it is "
                     f"{span(mean / median)}× the single-seed gap, against 1/√{seeds} = {fmt(seeds ** -0.5)} if the "
                     "gap were noise alone.")
    lines[0] += " Figure `paper_figures/ode_tracking.png`, table `results/ode_gaps.csv`."
    lines += ["", "| a0 | seeds | largest gap (median over seeds) | range over seeds | largest gap of the seeds' mean |",
              "|---|---|---|---|---|"]
    for a0, value in median.items():
        lines.append(f"| {fmt(a0)} | {int((gaps['a0'] == a0).sum())} | {fmt(value)} | "
                     f"{span(gaps.loc[gaps['a0'] == a0, 'max_gap'])} | {fmt(mean[a0]) if a0 in mean else '–'} |")
    return lines


def log_slope(values: pd.Series) -> float:
    """Slope of log(value) against log(index): the exponent of a power law."""
    return float(np.polyfit(np.log(values.index), np.log(values.values), 1)[0]) if len(values) > 1 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--scale", default="default", help="the scale the tables come from, for the header")
    args = parser.parse_args()
    results = Path(args.results)
    sections = [
        ("1. Bounded increments", bounded_increments(results)),
        ("2. Stability with high probability", stability(results)),
        ("3. Convergence of the averaged scaled gradient", convergence(results)),
        ("4. Step-size conditions", step_sizes(results)),
        ("5. The limit set and the clipping bias", limit_set(results)),
        ("6. ODE tracking", ode_tracking(results)),
        ("7. AGC and small weights", [*agc_small_weights(results), "",
                                      "AGC's stability at large a0·λ: see the table at the end of section 2."]),
    ]
    text = ["# Report: which claims of Ramaswamy (2023) hold on these runs", "",
            f"Generated by `scripts/report.py` from the tables in `results/` (scale: {args.scale}). "
            "Predictions as numbered in docs/CLAIMS.md (the paper, its claims and the predictions, stated in full); every verdict is computed from the tables.", ""]
    for title, lines in sections:
        text += [f"## {title}", "", *lines, ""]
    (results / "REPORT.md").write_text("\n".join(text))
    print(f"wrote {results / 'REPORT.md'}")


if __name__ == "__main__":
    main()
