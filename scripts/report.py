"""Write results/REPORT.md: for each prediction of PAPER.md, the verdict and the numbers behind it.

    python scripts/report.py [--results results] [--scale default]

Reads only the tables in results/ (written by `scripts/figures.py collect`); every verdict is
computed from them here, none is written by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from gradclip.analysis import wilson_interval

ROOT = Path(__file__).resolve().parents[1]
# Rounding allowance for a ratio that is <= 1 in exact arithmetic, computed in float32.
FLOAT_TOLERANCE = 1e-5


def fmt(x: float) -> str:
    return f"{x:.4g}"


def span(values: pd.Series) -> str:
    """'0.8' or '0.6–1': the range of a set of fractions."""
    lo, hi = values.min(), values.max()
    return fmt(lo) if lo == hi else f"{fmt(lo)}–{fmt(hi)}"


def bounded_increments(results: Path) -> list[str]:
    table = pd.read_csv(results / "increments.csv")
    worst = table["worst_update_ratio"].max()
    holds = worst <= 1 + FLOAT_TOLERANCE
    lines = [f"**Verdict: {'holds' if holds else 'fails'}.** Over {int(table['runs'].sum())} clipped runs of "
             f"the stability sweep, the largest clipped-gradient ratio to its bound is {fmt(worst)} "
             f"(norm clipping: max ‖clipped g‖ / τ; AGC: max over units of ‖G_i‖ / (λ max(‖W_i‖, ε))); "
             "it must be ≤ 1 and is, up to float32 rounding."
             if holds else f"**Verdict: fails.** A clipped-gradient ratio reached {fmt(worst)} > 1.", "",
             "| method (granularity) | runs | worst clipped-gradient ratio | worst realised step ratio |",
             "|---|---|---|---|"]
    for row in table.sort_values("method_label").itertuples():
        lines.append(f"| {row.method_label} | {row.runs} | {fmt(row.worst_update_ratio)} | {fmt(row.worst_step_ratio)} |")
    realised = table["worst_step_ratio"].max()
    lines += ["", f"The realised float32 step ‖θ(n+1) − θ(n)‖ / a(n) reaches {fmt(realised)} of the bound: "
              "the difference from the clipped gradient is rounding of θ − a(n)ĝ, relatively larger "
              "as a(n) shrinks (figure: `paper_figures/increments.png`)."]
    return lines


def stability(results: Path) -> tuple[list[str], list[str]]:
    table = pd.read_csv(results / "stability.csv")
    bound, steps = table["bound"].iloc[0], int(table["steps"].iloc[0])
    lines, agc_lines = [], []
    verdicts = []
    for model, rows in table.groupby("model", sort=False):
        none = rows[rows["method"] == "none"].set_index("a0")["stable_fraction"]
        unstable_a0 = none[none < 0.5].index
        norm = rows[rows["method"] == "norm"]
        agc = rows[rows["method"] == "agc"]
        smallest = rows[rows["a0"] == rows["a0"].min()]
        if len(unstable_a0):
            at = norm[norm["a0"].isin(unstable_a0)]
            norm_min = at["stable_fraction"].min()
            none_max = none[unstable_a0].max()
            verdict = "holds" if norm_min == 1 else "partly" if norm_min > none_max else "fails"
            lines.append(f"- **{model}**: plain SGD is stable in fewer than half of the seeds at a0 in "
                         f"{{{', '.join(fmt(a) for a in unstable_a0)}}} (stable fraction {span(none[unstable_a0])}); "
                         f"at those a0 the stable fraction of norm clipping (every τ and granularity run) is "
                         f"{span(at['stable_fraction'])}. At the smallest a0 = {fmt(rows['a0'].min())} the stable "
                         f"fraction of every method is {span(smallest['stable_fraction'])}. Verdict: {verdict}.")
        else:
            verdict = "untested"
            lines.append(f"- **{model}**: plain SGD stayed stable over the whole grid; the grid does not "
                         "reach the unstable regime, so this problem does not test the claim.")
        verdicts.append(verdict)
        largest = rows["a0"].max()
        agc_top, norm_top = agc[agc["a0"] == largest], norm[norm["a0"] == largest]
        if not agc.empty:
            unstable_agc = agc[agc["stable_fraction"] < 1]
            first = unstable_agc.sort_values("a0").iloc[0] if len(unstable_agc) else None
            agc_lines.append(
                f"- **{model}**: at a0 = {fmt(largest)} the stable fraction of AGC is {span(agc_top['stable_fraction'])}, "
                f"of norm clipping {span(norm_top['stable_fraction'])}. "
                + (f"AGC first loses seeds at a0 = {fmt(first['a0'])} ({first['method_label']}, a0·λ = "
                   f"{fmt(first['a0'] * float(first['method_label'].split('=')[1].split()[0]))})."
                   if first is not None else "AGC never lost a seed on this grid."))
    tested = [v for v in verdicts if v != "untested"]
    overall = ("holds" if tested and all(v == "holds" for v in tested)
               else "fails" if tested and all(v == "fails" for v in tested) else "partly" if tested else "untested")
    seeds = int(table["runs"].max())
    all_stable_low = wilson_interval(seeds, seeds)[0]
    head = [f"**Verdict: {overall}.** Stable = finite with ‖θ_n‖ ≤ B = {bound:g} at every one of {steps} "
            f"steps; step sizes a(n) = a0 / (n+1)^0.75 (A1 holds); {seeds} seeds per point, 95% Wilson "
            f"intervals in `results/stability.csv` (figure: `paper_figures/stability.png`). Seed-level noise: "
            f"with {seeds} seeds a point where every seed is stable still has the interval "
            f"[{fmt(all_stable_low)}, 1]; `SCALE=full` (32 seeds) narrows it to "
            f"[{fmt(wilson_interval(32, 32)[0])}, 1].", ""]
    return head + lines, agc_lines


def agc_small_weights(results: Path) -> list[str]:
    path = results / "agc_units_by_decade.csv"
    if not path.is_file():
        return ["The per-unit step against ‖W_i‖ is not measured at this scale."]
    table = pd.read_csv(path)
    settings = pd.read_csv(results / "agc_settings.csv").iloc[0]
    lines = ["Per hidden unit of an MLP whose unit norms span four decades (`paper_figures/agc_small_weights.png`, "
             "`results/agc_units_by_decade.csv`); steps are divided by a(n). Median over units and logged steps, "
             "in the lowest and the highest decade of ‖W_i‖:", "",
             "| method | ‖W_i‖ (low / high decade) | absolute step ‖ΔW_i‖/a(n) (low / high) | "
             "relative step ‖ΔW_i‖/(a(n)‖W_i‖) (low / high) |", "|---|---|---|---|"]
    ends = {}
    for label, rows in table.groupby("method_label", sort=True):
        rows = rows.sort_values("decade")
        low, high = rows.iloc[0], rows.iloc[-1]
        ends[label.split()[0]] = (low, high)
        lines.append(f"| {label} | {fmt(low.weight_norm_median)} / {fmt(high.weight_norm_median)} | "
                     f"{fmt(low.abs_step_median)} / {fmt(high.abs_step_median)} | "
                     f"{fmt(low.rel_step_median)} / {fmt(high.rel_step_median)} |")
    if "agc" in ends:
        low, high = ends["agc"]
        absolute = low.abs_step_median > high.abs_step_median
        relative = low.rel_step_median > high.rel_step_median
        verdict = "holds" if absolute and relative else "fails" if not (absolute or relative) else "partly"
        lines = [f"**Verdict: {verdict}** (the claim 'very small weights get larger step sizes' under AGC: "
                 f"absolute steps {'grow' if absolute else 'shrink'} and relative steps "
                 f"{'grow' if relative else 'shrink'} towards small ‖W_i‖).", ""] + lines
        lines += ["", f"Under AGC (λ = {settings.clip_factor:g}, ε = {settings.eps:g}) the absolute step of the "
                  f"smallest units is {fmt(low.abs_step_median / high.abs_step_median)}× that of the largest: "
                  f"the reading 'small weights get larger absolute steps' **{'holds' if absolute else 'fails'}**. "
                  f"Their relative step is {fmt(low.rel_step_median / high.rel_step_median)}× that of the largest: "
                  f"the reading 'larger relative steps' **{'holds' if relative else 'fails'}**."]
        if "none" in ends:
            none_low = ends["none"][0]
            lines.append(f"Plain SGD's relative step in the lowest decade is {fmt(none_low.rel_step_median)}, "
                         f"AGC's {fmt(low.rel_step_median)}: AGC caps the relative step at λ = "
                         f"{settings.clip_factor:g} above ε, and by λε/‖W_i‖ below ε.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--scale", default="default")
    args = parser.parse_args()
    results = Path(args.results)
    stability_lines, agc_lines = stability(results)
    not_yet = "Not measured yet: its experiment is not in this repository yet."
    sections = [
        ("1. Bounded increments", bounded_increments(results)),
        ("2. Stability with high probability", stability_lines),
        ("3. Convergence of the averaged scaled gradient", [not_yet]),
        ("4. Step-size conditions", [not_yet]),
        ("5. The limit set and the clipping bias", [not_yet]),
        ("6. ODE tracking", [not_yet]),
        ("7. AGC and small weights", [*agc_small_weights(results), "",
                                      "Stability of AGC against classic clipping at large a0·λ "
                                      "(from the stability sweep):", "", *agc_lines]),
    ]
    text = ["# Report: which claims of Ramaswamy (2023) hold on these runs", "",
            f"Generated by `scripts/report.py` from the tables in `results/` (scale: {args.scale}). "
            "Predictions as numbered in PAPER.md.", ""]
    for title, lines in sections:
        text += [f"## {title}", "", *lines, ""]
    (results / "REPORT.md").write_text("\n".join(text))
    print(f"wrote {results / 'REPORT.md'}")


if __name__ == "__main__":
    main()
