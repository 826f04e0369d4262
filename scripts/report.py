"""Write results/REPORT.md: for each prediction of PAPER.md, the verdict and the numbers behind it.

    python scripts/report.py [--results results] [--scale default]

Reads only the tables in results/ (written by `scripts/figures.py collect`); every verdict is
computed from them here, none is written by hand.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from gradclip.analysis import MIN_RECORDS, wilson_interval

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--scale", default="default", help="the scale the tables come from, for the header")
    args = parser.parse_args()
    results = Path(args.results)
    not_yet = "Not measured yet: its experiment is not in this repository yet."
    sections = [
        ("1. Bounded increments", bounded_increments(results)),
        ("2. Stability with high probability", stability(results)),
        ("3. Convergence of the averaged scaled gradient", [not_yet]),
        ("4. Step-size conditions", [not_yet]),
        ("5. The limit set and the clipping bias", [not_yet]),
        ("6. ODE tracking", [not_yet]),
        ("7. AGC and small weights", [*agc_small_weights(results), "",
                                      "AGC's stability at large a0·λ: see the table at the end of section 2."]),
    ]
    text = ["# Report: which claims of Ramaswamy (2023) hold on these runs", "",
            f"Generated by `scripts/report.py` from the tables in `results/` (scale: {args.scale}). "
            "Predictions as numbered in PAPER.md; every verdict is computed from the tables.", ""]
    for title, lines in sections:
        text += [f"## {title}", "", *lines, ""]
    (results / "REPORT.md").write_text("\n".join(text))
    print(f"wrote {results / 'REPORT.md'}")


if __name__ == "__main__":
    main()
