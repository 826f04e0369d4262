"""Verdicts (gradclip.verdicts) on hand-built tables, checked on the data: every branch can be reached;
and scripts/report.py renders REPORT.md from verdicts.json alone."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradclip import verdicts
from script_modules import script

ROOT = Path(__file__).resolve().parents[1]
report, figures = script("report"), script("figures")


def increments(tmp_path, update_ratio):
    pd.DataFrame({"method_label": ["norm τ=1 (batch)"], "method": "norm", "granularity": "batch", "runs": [4],
                  "worst_update_ratio": update_ratio, "worst_step_ratio": update_ratio}).to_csv(
        tmp_path / "increments.csv", index=False)
    return verdicts.assess_increments(tmp_path)["verdict"]


def test_bounded_increments_verdicts(tmp_path):
    assert increments(tmp_path, [1 + 0.9 * verdicts.FLOAT_TOLERANCE]) == "holds"  # rounding
    assert increments(tmp_path, [1 + 1.1 * verdicts.FLOAT_TOLERANCE]) == "fails"  # just past it
    pd.DataFrame(columns=["method_label", "runs", "worst_update_ratio", "worst_step_ratio"]).to_csv(
        tmp_path / "increments.csv", index=False)
    assert verdicts.assess_increments(tmp_path)["verdict"] == "untested"


def stability_rows(norm, agc, none=(1.0, 0.0), implied=False, runs=8):
    """Stable fractions at a0 = 1 and 100 for plain SGD (8 seeds), norm clipping and AGC (``runs``
    seeds) on one model."""
    rows = []
    for method, label, fractions in [("none", "none", none), ("norm", "norm τ=1 (batch)", norm),
                                     ("agc", "agc λ=0.1 (batch)", agc)]:
        seeds = 8 if method == "none" else runs
        for a0, f in zip((1.0, 100.0), fractions):
            rows.append({"model": "MLP", "method_label": label, "method": method, "granularity": "batch", "a0": a0,
                         "runs": seeds, "stable": round(seeds * f), "stable_fraction": f, "wilson_low": 0.0,
                         "wilson_high": 1.0, "implied_by_increments": implied and method == "norm", "bound": 1e4,
                         "steps": 50, "failed_runs": 0})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("norm, agc, expected", [
    ((1.0, 1.0), (1.0, 1.0), "holds"),
    ((1.0, 1.0), (1.0, 0.125), "partly"),   # AGC: 1 of 8 stable where plain SGD is not
    ((1.0, 1.0), (1.0, 0.5), "holds"),      # AGC: 4 of 8, untested: it does not count against norm
    ((1.0, 0.0), (1.0, 0.0), "fails"),
])
def test_stability_verdicts(tmp_path, norm, agc, expected):
    stability_rows(norm, agc).to_csv(tmp_path / "stability.csv", index=False)
    assert verdicts.assess_stability(tmp_path)["verdict"] == expected


@pytest.mark.parametrize("stable, runs, expected", [(8, 8, "holds"), (7, 8, "holds"), (6, 8, "untested"),
                                                   (4, 4, "holds"), (3, 3, "untested"), (1, 8, "fails")])
def test_a_stability_point_is_decided_by_its_seeds(tmp_path, stable, runs, expected):
    """Where plain SGD is unstable (0 of ``runs``), a method's point by the Wilson interval of its
    stable fraction: 7 of 8 [0.53, 0.98] holds, 6 of 8 [0.41, 0.93] cannot decide."""
    stability_rows((1.0, stable / runs), (1.0, 1.0), runs=runs).to_csv(tmp_path / "stability.csv", index=False)
    a = verdicts.assess_stability(tmp_path)
    assert a["problems"][0]["unstable_a0"] == [100.0]  # plain SGD: 0 of 8, so the point is judged
    assert a["parts"]["norm"] == expected


@pytest.mark.parametrize("none, judged", [((1.0, 0.0), True), ((1.0, 1 / 8), True), ((1.0, 2 / 8), False)])
def test_plain_sgd_must_be_unstable_by_its_wilson_interval(tmp_path, none, judged):
    """A point judges the methods where plain SGD's Wilson interval lies below one half: 1 of 8
    stable [0.02, 0.47] does, 2 of 8 [0.07, 0.59] does not (the grid then tests nothing)."""
    stability_rows((1.0, 1.0), (1.0, 1.0), none=none).to_csv(tmp_path / "stability.csv", index=False)
    a = verdicts.assess_stability(tmp_path)
    assert (a["problems"][0]["unstable_a0"] == [100.0]) == judged
    assert a["verdict"] == ("holds" if judged else "untested")


def test_stability_grid_that_never_destabilises_plain_sgd_is_untested(tmp_path):
    stability_rows((1.0, 1.0), (1.0, 1.0), none=(1.0, 1.0)).to_csv(tmp_path / "stability.csv", index=False)
    assert verdicts.assess_stability(tmp_path)["verdict"] == "untested"


def test_stability_that_prediction_1_implies_is_not_a_test(tmp_path):
    """Norm clipping stable only where ||theta_0|| + tau sum a(n) < B: 'implied by prediction 1',
    and the overall verdict rests on AGC alone; an implied point that lost a seed (a non-finite
    loss with bounded weights) is judged all the same."""
    stability_rows((1.0, 1.0), (1.0, 0.125), implied=True).to_csv(tmp_path / "stability.csv", index=False)
    a = verdicts.assess_stability(tmp_path)
    assert a["parts"] == {"norm": verdicts.IMPLIED, "agc": "fails"} and a["verdict"] == "fails"
    assert a["problems"][0]["arms"]["norm"]["implied_points"] == 1  # one unstable a0
    stability_rows((1.0, 0.0), (1.0, 1.0), implied=True).to_csv(tmp_path / "stability.csv", index=False)
    assert verdicts.assess_stability(tmp_path)["parts"]["norm"] == "fails"


def test_stability_judges_norm_clipping_on_its_tested_points_only(tmp_path):
    """An implied, stable point (tau = 0.1) beside a tested one that fails like plain SGD (tau = 10):
    the implied point must not lift the verdict to 'partly'."""
    rows = stability_rows((1.0, 1.0), (1.0, 1.0))
    tested = rows[rows["method"] == "norm"].assign(method_label="norm τ=10 (batch)")
    tested.loc[tested["a0"] == 100.0, ["stable_fraction", "stable"]] = 0.0, 0
    rows.loc[rows["method"] == "norm", "implied_by_increments"] = True
    pd.concat([rows, tested]).to_csv(tmp_path / "stability.csv", index=False)
    arm = verdicts.assess_stability(tmp_path)["problems"][0]["arms"]["norm"]
    assert arm["verdict"] == "fails" and arm["implied_points"] == 1 and arm["tested_stable_fraction"] == [0.0, 0.0]


def test_stability_judges_agc_with_the_head_clipped_apart(tmp_path):
    rows = stability_rows((1.0, 1.0), (1.0, 1.0))
    clipped = rows[rows["method"] == "agc"].assign(method_label="agc λ=0.1 (batch, head clipped)", stable_fraction=0.0,
                                                   stable=0)
    pd.concat([rows, clipped]).to_csv(tmp_path / "stability.csv", index=False)
    a = verdicts.assess_stability(tmp_path)
    assert a["parts"] == {"norm": "holds", "agc": "holds", "agc_head_clipped": "fails"} and a["verdict"] == "partly"


def test_combine():
    assert verdicts.combine(["holds", "untested", verdicts.IMPLIED]) == "holds"
    assert verdicts.combine(["holds", "fails"]) == "partly"
    assert verdicts.combine([verdicts.IMPLIED, "untested"]) == verdicts.IMPLIED
    assert verdicts.combine(["untested"]) == "untested"


def test_every_experiment_has_its_tables_and_its_figures_and_plotting_needs_no_torch():
    """figures.py names the experiments by its plots; gradclip.collect must know the same ones, and
    `collect --jobs N` orders every one of them. Plotting alone (make figures) does not import
    torch (collect does, for the data sets)."""
    from gradclip.collect import COLLECT

    assert list(figures.PLOT) == list(COLLECT)
    assert sorted(figures.COLLECT_ORDER) == sorted(COLLECT)
    probe = "import runpy, sys; runpy.run_path(sys.argv[1]); print('torch' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe, str(ROOT / "scripts" / "figures.py")],
                              capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"


def test_palette_tells_every_setting_apart():
    labels = ["none"] + [f"norm τ={t:g} ({g})" for t in (0.1, 1, 10) for g in ("batch", "sample")] + \
             [f"agc λ={v:g} ({g})" for v in (0.01, 0.1, 1) for g in ("batch", "sample")]
    styles = figures.palette(labels)
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == len(labels)


def convergence_rows(slopes, ratios, label="norm τ=1 (sample)", final_loss=1.0, points=12, growth=1.2):
    """One setting, a seed per slope; ``growth``: ||theta|| end / start, one for all or one a seed."""
    growths = growth if isinstance(growth, list) else [growth] * len(slopes)
    return pd.DataFrame([{"model": "MLP", "method_label": label, "a0": 30.0, "seed": k, "last_step": 5000,
                          "H_initial": 1.0, "H_final": r, "H_min": r, "H_slope": s, "H_slope_points": points,
                          "H_ratio": r, "mean_grad_initial": 0.5, "mean_grad_final": 0.5, "grad_over_H_final": 0.5 / r,
                          "param_norm_initial": 10.0, "param_norm_final": 10.0 * g, "train_loss_initial": 2.3,
                          "train_loss_final": final_loss, "power": 0.75, "n0": 10, "data": "MNIST-1D"}
                         for k, (s, r, g) in enumerate(zip(slopes, ratios, growths))])


def convergence_verdict(tmp_path, rows: pd.DataFrame) -> dict:
    rows.to_csv(tmp_path / "convergence_summary.csv", index=False)
    return verdicts.assess_convergence(tmp_path)["groups"][0]


FALLING, FLAT = [-0.3] * 4, [0.0] * 4


@pytest.mark.parametrize("slopes, ratios, final_loss, expected", [
    (FALLING, [0.1] * 4, 1.0, "holds"),
    ([-0.3, -0.3, -0.3, 0.0], [0.1] * 4, 1.0, "untested"),  # 3 of 4 falling: Wilson [0.30, 0.95] straddles 0.5
    (FLAT, [0.9] * 4, 1.0, "fails"),                        # ||H|| went flat in every seed
    (FALLING, [1.5] * 4, 1.0, "fails"),                     # falling at the end, but above its start
    (FLAT, [3.0] * 4, 2.29, "untested"),                    # the training loss did not move: no progress
    (FALLING, [0.999] * 4, 1.0, "holds"),                   # falling, and just below its start
    (FALLING, [1.001] * 4, 1.0, "fails"),                   # falling, but just above its start
])
def test_convergence_verdicts(tmp_path, slopes, ratios, final_loss, expected):
    assert convergence_verdict(tmp_path, convergence_rows(slopes, ratios, final_loss=final_loss))["verdict"] == expected


@pytest.mark.parametrize("satisfied, seeds, expected", [
    (4, 4, "holds"), (3, 3, "untested"), (7, 8, "holds"), (6, 8, "untested"), (1, 4, "untested"), (0, 4, "fails"),
    (1, 8, "fails"), (0, 3, "untested"), (0, 0, "untested")])
def test_a_rule_decided_per_seed_needs_its_wilson_interval_clear_of_one_half(satisfied, seeds, expected):
    """The boundaries of MOST: Wilson (95%) of 4/4 is [0.51, 1] and of 3/3 [0.44, 1]; 7/8 [0.53,
    0.98] and 6/8 [0.41, 0.93]; 0/4 [0, 0.49] and 1/8 [0.02, 0.47], 1/4 [0.05, 0.70]."""
    verdict, (low, high) = verdicts.seeds_verdict(satisfied, seeds)
    assert verdict == expected
    if seeds:
        assert (low > verdicts.MOST) == (expected == "holds") and (high < verdicts.MOST) == (expected == "fails")


@pytest.mark.parametrize("slope, expected", [(verdicts.FALLING_SLOPE - 1e-3, "holds"), (verdicts.FALLING_SLOPE + 1e-3, "fails")])
def test_convergence_slope_threshold(tmp_path, slope, expected):
    assert convergence_verdict(tmp_path, convergence_rows([slope] * 4, [0.5] * 4))["verdict"] == expected


@pytest.mark.parametrize("points, expected", [(verdicts.MIN_EVALUATIONS, "holds"), (verdicts.MIN_EVALUATIONS - 1, "untested")])
def test_a_slope_needs_its_evaluations(tmp_path, points, expected):
    group = convergence_verdict(tmp_path, convergence_rows(FALLING, [0.1] * 4, points=points))
    assert group["verdict"] == expected and group["evaluations"] == points
    assert group["why"] == ("" if expected == "holds" else f"fewer than {verdicts.MIN_EVALUATIONS} evaluations")


@pytest.mark.parametrize("loss, expected", [(2.3 * (1 - verdicts.NO_PROGRESS) - 1e-3, "holds"),
                                            (2.3 * (1 - verdicts.NO_PROGRESS) + 1e-3, "untested")])
def test_no_progress_threshold(tmp_path, loss, expected):
    assert convergence_verdict(tmp_path, convergence_rows(FALLING, [0.1] * 4, final_loss=loss))["verdict"] == expected


@pytest.mark.parametrize("label, growth, expected", [
    ("agc λ=0.1 (sample, head clipped)", verdicts.A3_GROWTH - 1e-3, "fails"),
    ("agc λ=0.1 (sample, head clipped)", verdicts.A3_GROWTH + 1e-3, "hypothesis not met"),
    ("norm τ=1 (sample)", verdicts.A3_GROWTH + 1e-3, "fails")])  # A3 is AGC's hypothesis only
def test_agc_whose_weights_grow_past_a3_is_no_test_of_the_claim(tmp_path, label, growth, expected):
    rows = convergence_rows(FLAT, [3.0] * 4, label=label, growth=growth)
    a = (rows.to_csv(tmp_path / "convergence_summary.csv", index=False), verdicts.assess_convergence(tmp_path))[1]
    assert a["groups"][0]["verdict"] == expected
    assert a["verdict"] == expected  # and a part whose hypothesis is not met is not a failure of the claim


@pytest.mark.parametrize("grown, expected", [
    (8, "hypothesis not met"), (7, "hypothesis not met"),  # 7 of 8 past 2x: Wilson [0.53, 0.98], above one half
    (6, "untested"), (2, "untested"),   # 6/8 [0.41, 0.93] and 2/8 [0.07, 0.59]: the seeds cannot tell
    (1, "fails"), (0, "fails"),         # 1/8 [0.02, 0.47]: A3 holds, so the claim is tested (||H|| is flat)
])
def test_a3_is_decided_per_seed(tmp_path, grown, expected):
    rows = convergence_rows(FLAT * 2, [3.0] * 8, label="agc λ=0.1 (sample, head clipped)",
                            growth=[verdicts.A3_GROWTH * 1.01] * grown + [verdicts.A3_GROWTH * 0.99] * (8 - grown))
    group = convergence_verdict(tmp_path, rows)
    assert group["verdict"] == expected
    assert (group["why"] == "too few seeds to tell whether A3 holds") == (grown in (2, 6))


def test_a3_is_looked_at_before_progress(tmp_path):
    """AGC whose weights grew past A3 in every seed and whose loss did not move: its hypothesis is
    not met, whatever the progress."""
    rows = convergence_rows(FLAT, [3.0] * 4, label="agc λ=0.1 (sample, head clipped)", final_loss=2.29, growth=2.5)
    assert convergence_verdict(tmp_path, rows)["verdict"] == "hypothesis not met"


def test_a_cut_no_seed_crosses_leaves_too_few_seeds_to_their_own_reason(tmp_path):
    """3 seeds cannot decide anything; where none made too little progress, that is the reason
    given, not progress; where one did, progress is what cannot be told."""
    group = convergence_verdict(tmp_path, convergence_rows([-0.3] * 3, [0.1] * 3))
    assert (group["verdict"], group["why"]) == ("untested", "too few seeds agree")
    rows = convergence_rows([-0.3] * 3, [0.1] * 3).assign(train_loss_final=[1.0, 1.0, 2.29])
    assert convergence_verdict(tmp_path, rows)["why"] == "too few seeds to tell whether it progressed"


def test_a_seed_without_a_loss_is_left_out_of_the_progress_cut(tmp_path):
    """As a median leaves it out: 4 seeds without progress and one NaN decide (4 of 4, Wilson
    [0.51, 1]); counted as a seed that progressed, 4 of 5 ([0.38, 0.96]) could not."""
    rows = convergence_rows(FALLING + [-0.3], [0.1] * 5).assign(train_loss_final=[2.29] * 4 + [math.nan])
    assert convergence_verdict(tmp_path, rows)["why"] == "no progress"


def test_a3_unrecorded_in_one_seed_cannot_be_checked(tmp_path):
    rows = convergence_rows(FLAT, [3.0] * 4, label="agc λ=0.1 (sample, head clipped)", growth=[2.5, 2.5, 2.5, math.nan])
    assert convergence_verdict(tmp_path, rows)["verdict"] == "untested"


@pytest.mark.parametrize("idle, expected, why", [
    (8, "untested", "no progress"), (7, "untested", "no progress"),
    (6, "untested", "too few seeds to tell whether it progressed"),
    (2, "untested", "too few seeds to tell whether it progressed"),
    (1, "holds", ""), (0, "holds", ""),
])
def test_no_progress_is_decided_per_seed(tmp_path, idle, expected, why):
    """``idle`` of 8 seeds whose training loss fell by just less than NO_PROGRESS (the others by
    just more); every seed's ||H|| is falling."""
    rows = convergence_rows(FALLING * 2, [0.1] * 8)
    idle_loss, moved_loss = (2.3 * (1 - verdicts.NO_PROGRESS * f) for f in (0.99, 1.01))
    rows["train_loss_final"] = [idle_loss] * idle + [moved_loss] * (8 - idle)
    group = convergence_verdict(tmp_path, rows)
    assert (group["verdict"], group["why"]) == (expected, why)


def test_parts_whose_hypothesis_is_not_met_do_not_count_against_tested_ones():
    assert verdicts.combine(["holds", "hypothesis not met", "untested"]) == "holds"
    assert verdicts.combine(["fails", "hypothesis not met"]) == "fails"
    assert verdicts.combine(["hypothesis not met", "untested"]) == "hypothesis not met"
    assert verdicts.combine(["implied by prediction 1", "hypothesis not met"]) == "implied by prediction 1"


def test_agc_grid_names_the_a0_lambda_where_H_falls_and_where_it_grows(tmp_path):
    rows = []
    for lam, a0, slope, ratio, loss, growth in [(0.01, 0.03, 0.1, 1.01, 2.29, 1.0), (0.1, 0.3, -0.3, 0.5, 1.0, 1.1),
                                                (0.01, 3.0, -0.2, 0.8, 1.0, 1.1), (0.1, 3.0, 0.4, 5.0, 1.0, 1.5),
                                                (0.1, 30.0, 0.4, 50.0, 1.0, 40.0)]:
        rows.append(convergence_rows([slope] * 4, [ratio] * 4, label=f"agc λ={lam:g} (sample, head clipped)",
                                     final_loss=loss, growth=growth).assign(a0=a0))
    pd.concat(rows).to_csv(tmp_path / "convergence_summary.csv", index=False)
    a = verdicts.assess_convergence(tmp_path)
    c = a["agc_condition"]["MLP"]
    assert c["a0_lambda_grid"] == [0.0003, 0.03, 0.3, 3.0]  # 3 x 0.1 and 0.3 x 0.1 rounded to one value each
    assert c["falling_most_seeds"] == [0.03] and c["grew_every_seed"] == [0.3, 3.0] and c["no_progress"] == [0.0003]
    assert c["hypothesis_not_met"] == [3.0] and c["separated"]
    assert a["parts"]["agc λ=0.1 (sample, head clipped)"] == "partly"  # holds at 0.03, fails at 0.3, HNM at 3
    rows[1] = rows[1].assign(H_slope=0.2, H_final=3.0, H_ratio=3.0)  # a0*lambda = 0.03 grows too
    pd.concat(rows).to_csv(tmp_path / "convergence_summary.csv", index=False)
    c = verdicts.assess_convergence(tmp_path)["agc_condition"]["MLP"]
    assert c["falling_most_seeds"] == [0.03] and c["grew_every_seed"] == [0.03, 0.3, 3.0] and not c["separated"]


@pytest.mark.parametrize("other_growth, named", [(1.1 * (1 + 0.9e-3), True), (1.1 * (1 + 1.1e-3), False)])
def test_agc_settings_of_one_a0_lambda_that_ran_alike_are_named_one_experiment(tmp_path, other_growth, named):
    """lambda = 0.001 at a0 = 30 and lambda = 0.01 at a0 = 3 (a0 * lambda = 0.03 both): the report says
    they are one experiment where their ratios agree to a part in a thousand, and not otherwise."""
    rows = [convergence_rows([0.1] * 4, [1.5] * 4, label=f"agc λ={lam:g} (sample, head clipped)",
                             growth=growth).assign(a0=a0) for lam, a0, growth in [(0.001, 30.0, 1.1), (0.01, 3.0, other_growth)]]
    pd.concat(rows).to_csv(tmp_path / "convergence_summary.csv", index=False)
    assessed = verdicts.plain(verdicts.assess_convergence(tmp_path))
    text = "\n".join(report.render_convergence(json.loads(json.dumps(assessed))))
    assert ("The rows of MLP at a0·λ = 0.03 (λ = 0.001 at a0 = 30 and λ = 0.01 at a0 = 3) agree" in text) == named
    assert ("one experiment, not two" in text) == named


def step_size_rows(tmp_path, constant_final, frozen_final, frozen_displacement=0.5, noise_drop=1.5, seeds=4,
                   slope=0.0, points=12):
    """A regression whose A1 schedules end at ||H|| = 0.01; ||H|| is flat (late slope ``slope``)
    for p = 0 and 1.5 in every seed."""
    rows = []
    for p, final in [(0.0, constant_final), (0.3, 0.01), (0.75, 0.01), (1.5, frozen_final)]:
        rows += [{"problem": "regression", "power": p, "seed": seed, "a0": 1.0, "tau": 1.0, "last_step": 5000,
                  "H_initial": 0.2, "H_final": final, "H_slope": slope if p in (0.0, 1.5) else -0.5,
                  "H_slope_points": points, "final_displacement": frozen_displacement if p > 1 else 1.0,
                  "frozen_radius": 2.6 if p > 1 else float("inf"), "remaining_radius": 0.03 if p > 1 else float("inf"),
                  "sum_lr": 2.5, "train_loss_final": 0.1, "sample_grad_initial": 3.0,
                  "sample_grad_final": 3.0 / noise_drop} for seed in range(seeds)]
    pd.DataFrame(rows).to_csv(tmp_path / "step_sizes.csv", index=False)


@pytest.mark.parametrize("constant, frozen, displacement, noise_drop, expected", [
    (0.05, 0.1, 0.5, 1.5, "holds"),       # a floor at p = 0, frozen short of the root for p = 1.5
    (0.01, 0.1, 0.5, 1.5, "partly"),      # no floor: a constant step did as well as A1
    (0.05, 0.1, 3.0, 1.5, "partly"),      # moved beyond tau * sum a(n): the freeze bound failed
    (0.01, 0.01, 0.5, 1.5, "fails"),
    (0.001, 0.1, 0.5, 100.0, "holds"),    # the noise vanished: the floor is untested, the freeze holds
])
def test_step_size_verdicts(tmp_path, constant, frozen, displacement, noise_drop, expected):
    step_size_rows(tmp_path, constant, frozen, displacement, noise_drop)
    a = verdicts.assess_step_sizes(tmp_path)
    assert a["verdict"] == expected
    assert (a["problems"][0]["constant"]["verdict"] == "untested") == (noise_drop > verdicts.NOISE_VANISHED)


@pytest.mark.parametrize("change, expected", [
    ({}, "holds"),
    ({"constant_final": 0.01 * verdicts.ABOVE_BEST * 1.001}, "holds"),   # just above 2x the best A1 schedule
    ({"constant_final": 0.01 * verdicts.ABOVE_BEST * 0.999}, "fails"),   # just below
    ({"slope": verdicts.FALLING_SLOPE + 1e-3}, "holds"),                  # flat enough: a floor, still frozen
    ({"slope": verdicts.FALLING_SLOPE - 1e-3}, "fails"),                  # still falling: neither
    ({"points": verdicts.MIN_EVALUATIONS - 1}, "untested"),
    ({"seeds": 3}, "untested"),                                           # 3 of 3 cannot decide
    ({"noise_drop": verdicts.NOISE_VANISHED * 0.999}, "holds"),
    ({"slope": -verdicts.FALLING_SLOPE + 1e-3}, "partly"),               # rising: a floor, but not frozen
    ({"frozen_final": 0.01 * verdicts.ABOVE_BEST * 1.001}, "holds"),     # just above 2x: frozen short
    ({"frozen_final": 0.01 * verdicts.ABOVE_BEST * 0.999}, "partly"),    # just below: not frozen
    ({"frozen_displacement": 2.6 * 0.999}, "holds"),                     # moved just less than tau x sum a(n)
    ({"frozen_displacement": 2.6 * 1.001}, "partly"),                    # just more: not frozen by the bound
])
def test_step_size_rules_at_their_boundaries(tmp_path, change, expected):
    """Each threshold of prediction 4's per-seed rules, from both sides (both rules share the
    slope and the factor over the best A1 schedule; the freeze also needs |slope| < 0.05)."""
    step_size_rows(tmp_path, **{"constant_final": 0.05, "frozen_final": 0.1} | change)
    a = verdicts.assess_step_sizes(tmp_path)
    entry = a["problems"][0]
    if "frozen_final" in change:  # the freeze alone moves
        assert entry["constant"]["verdict"] == "holds" and entry["freeze"]["verdict"] == {"holds": "holds"}.get(
            expected, "fails")
    elif "constant_final" in change:  # the floor alone moves
        assert entry["constant"]["verdict"] == expected and entry["freeze"]["verdict"] == "holds"
    else:
        assert a["verdict"] == expected, entry


def test_a_floor_in_3_of_4_seeds_cannot_decide(tmp_path):
    """As at the default scale: one seed's ||H|| still falls at the end."""
    step_size_rows(tmp_path, 0.05, 0.1)
    table = pd.read_csv(tmp_path / "step_sizes.csv")
    table.loc[(table["power"] == 0) & (table["seed"] == 0), "H_slope"] = verdicts.FALLING_SLOPE - 1e-3
    table.to_csv(tmp_path / "step_sizes.csv", index=False)
    constant = verdicts.assess_step_sizes(tmp_path)["problems"][0]["constant"]
    assert (constant["verdict"], constant["floor_seeds"], constant["why"]) == ("untested", 3, "too few seeds agree")


def test_a_constant_step_whose_noise_vanished_is_untested(tmp_path):
    step_size_rows(tmp_path, 0.05, 0.1, noise_drop=verdicts.NOISE_VANISHED)  # (at the threshold itself)
    constant = verdicts.assess_step_sizes(tmp_path)["problems"][0]["constant"]
    assert constant["verdict"] == "untested" and constant["why"] == "the noise vanished"


@pytest.mark.parametrize("vanished, why", [(8, "the noise vanished"), (7, "the noise vanished"),
                                          (6, "too few seeds to tell whether the noise vanished"),
                                          (2, "too few seeds to tell whether the noise vanished"), (1, ""), (0, "")])
def test_vanished_noise_is_decided_per_seed(tmp_path, vanished, why):
    """``vanished`` of 8 seeds whose constant-step run's per-example gradients shrank just past
    NOISE_VANISHED-fold (the others just short of it)."""
    step_size_rows(tmp_path, 0.05, 0.1, seeds=8)
    table = pd.read_csv(tmp_path / "step_sizes.csv")
    constant = table.index[table["power"] == 0]
    drops = [verdicts.NOISE_VANISHED * 1.01] * vanished + [verdicts.NOISE_VANISHED * 0.99] * (8 - vanished)
    table.loc[constant, "sample_grad_final"] = table.loc[constant, "sample_grad_initial"] / drops
    table.to_csv(tmp_path / "step_sizes.csv", index=False)
    c = verdicts.assess_step_sizes(tmp_path)["problems"][0]["constant"]
    assert (c["verdict"], c["why"]) == ("untested" if why else "holds", why)


def limit_rows(dist_to_root, dist_to_mean, root_to_mean=0.5, seeds=4, nearer=None):
    """One location point, ``seeds`` seeds alike, of which ``nearer`` (default: as the distances
    say) ended nearer the root than the mean."""
    rows = []
    for seed in range(seeds):
        to_root, to_mean = dist_to_root, dist_to_mean
        if nearer is not None:
            to_root, to_mean = (min(to_root, to_mean), max(to_root, to_mean))[:: 1 if seed < nearer else -1]
        rows.append({"problem": "location", "noise": "lognormal", "tau": 0.3, "granularity": "sample", "seed": seed,
                     "batch_size": 32, "steps": 6000, "dist_to_root": to_root, "dist_to_mean": to_mean,
                     "root_to_mean": root_to_mean})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("to_root, to_mean, root_to_mean, expected", [
    (0.01, 0.49, 0.5, "holds"),
    (0.49, 0.01, 0.5, "fails"),       # SGD ended at the mean
    (0.01, 0.02, 0.02, "untested"),   # root and mean too close to tell apart
])
def test_limit_set_verdicts(tmp_path, to_root, to_mean, root_to_mean, expected):
    limit_rows(to_root, to_mean, root_to_mean).to_csv(tmp_path / "limit_set.csv", index=False)
    assert verdicts.assess_limit_set(tmp_path)["verdict"] == expected


@pytest.mark.parametrize("change, expected", [
    ({"root_to_mean": 0.01 * verdicts.RESOLVED * 1.001}, "holds"),   # just resolved
    ({"root_to_mean": 0.01 * verdicts.RESOLVED * 0.999}, "untested"),  # just not
    ({"nearer": 4}, "holds"), ({"nearer": 3}, "untested"), ({"nearer": 1}, "untested"), ({"nearer": 0}, "fails"),
    ({"seeds": 3, "nearer": 3}, "untested"),                          # 3 of 3 cannot decide
])
def test_limit_set_rules_at_their_boundaries(tmp_path, change, expected):
    """A point resolves where root and mean lie RESOLVED x further apart than the (median) iterate
    from the nearer one; there the seeds nearer the root decide through the Wilson interval."""
    limit_rows(**{"dist_to_root": 0.01, "dist_to_mean": 0.49} | change).to_csv(tmp_path / "limit_set.csv", index=False)
    assert verdicts.assess_limit_set(tmp_path)["verdict"] == expected


@pytest.mark.parametrize("factor, converged", [(0.999, True), (1.001, False)])
def test_a_limit_set_point_far_from_both_candidates_has_not_converged(tmp_path, factor, converged):
    """A point whose iterate lies RESOLVED x the median point's distance from the nearer of the
    root and the mean, or more, had not converged and is untested; just inside, it is judged."""
    error = 0.01 * verdicts.RESOLVED * factor  # three points 0.01 from the root: the median distance is 0.01
    near = [limit_rows(0.01, 0.99, root_to_mean=1.0).assign(tau=tau) for tau in (1.0, 3.0, 10.0)]
    far = limit_rows(error, 1.0 - error, root_to_mean=1.0).assign(tau=0.1)
    pd.concat([*near, far]).to_csv(tmp_path / "limit_set.csv", index=False)
    a = verdicts.assess_limit_set(tmp_path)
    point = {p["tau"]: p for p in a["sample"]}[0.1]
    assert point["resolved"] == converged and point["verdict"] == ("holds" if converged else "untested")
    assert [p["tau"] for p in a["unconverged"]] == ([] if converged else [0.1])


def test_a_point_that_ends_at_the_mean_fails_among_points_that_end_at_the_root(tmp_path):
    """A run that ends at the mean has converged (to the wrong point): it is judged, not set aside."""
    near = [limit_rows(0.01, 0.49).assign(tau=tau) for tau in (1.0, 3.0, 10.0)]
    at_mean = limit_rows(0.49, 0.01).assign(tau=0.1)
    pd.concat([*near, at_mean]).to_csv(tmp_path / "limit_set.csv", index=False)
    a = verdicts.assess_limit_set(tmp_path)
    assert a["resolved"] == 4 and a["resolved_verdicts"] == {"holds": 3, "fails": 1, "untested": 0}
    assert a["verdict"] == "partly" and not a["unconverged"]


def test_a_point_whose_runs_did_not_converge_resolves_nothing(tmp_path):
    """Far from the root against the median point (RESOLVED x its distance): not converged, so
    not resolved, whatever its distances say; listed as such."""
    near = [limit_rows(0.01, 0.49).assign(tau=tau) for tau in (1.0, 3.0, 10.0)]
    far = limit_rows(0.01 * verdicts.RESOLVED * 1.01, 5.0, root_to_mean=5.0).assign(tau=0.1)  # far from both
    pd.concat([*near, far]).to_csv(tmp_path / "limit_set.csv", index=False)
    a = verdicts.assess_limit_set(tmp_path)
    assert a["points"] == 4 and a["resolved"] == 3 and a["verdict"] == "holds"
    assert [r["tau"] for r in a["unconverged"]] == [0.1]
    assert [r["verdict"] for r in a["sample"] if r["tau"] == 0.1] == ["untested"]


A0S = tuple(float(a0) for a0 in np.geomspace(0.1, 0.001, verdicts.MIN_A0))  # log-spaced, just enough


def ode_rows(tmp_path, exponent, seeds=4, a0s=A0S):
    """Each seed's largest gap falls like a0^exponent."""
    pd.DataFrame([{"a0": a0, "seed": seed, "max_gap": 0.5 * (a0 / 0.1) ** exponent, "mean_gap": 0.1, "final_gap": 0.1,
                   "horizon": 6.0} for a0 in a0s for seed in range(seeds)]).to_csv(tmp_path / "ode_gaps.csv", index=False)
    return verdicts.assess_ode_tracking(tmp_path)


@pytest.mark.parametrize("exponent, seeds, a0s, expected", [
    (0.5, 4, A0S, "holds"),
    (-verdicts.FALLING_SLOPE + 1e-3, 4, A0S, "holds"),    # just shrinking enough
    (-verdicts.FALLING_SLOPE - 1e-3, 4, A0S, "fails"),    # just not
    (-0.2, 4, A0S, "fails"),                              # the gap grows as a0 falls
    (0.5, 3, A0S, "untested"),                            # 3 of 3 cannot decide
    (0.5, 4, A0S[:-1], "untested"),                       # one value of a0 fewer than MIN_A0
])
def test_ode_tracking_verdicts(tmp_path, exponent, seeds, a0s, expected):
    a = ode_rows(tmp_path, exponent, seeds, a0s)
    assert a["verdict"] == expected
    if expected == "holds":
        assert a["exponent"] == pytest.approx(exponent) and a["seed_exponents"] == pytest.approx([exponent] * 2)


@pytest.mark.parametrize("apart, nearer, expected", [
    (0.5 * verdicts.RESOLVED * 1.01, 4, "holds"),      # the flows far enough apart; every seed nearer the clipped ODE
    (0.5 * verdicts.RESOLVED * 0.99, 4, "untested"),   # too close together to tell which one the runs track
    (0.5 * verdicts.RESOLVED * 1.01, 0, "fails"),      # nearer the unclipped flow: clipping's own part not seen
])
def test_ode_tracking_tells_the_clipped_ode_from_the_unclipped_flow(tmp_path, apart, nearer, expected):
    """At the smallest a0 (gaps 0.5 to the clipped ODE), the seeds nearer it than the unclipped
    gradient flow decide, where the two flows lie RESOLVED x further apart than that gap."""
    rows = [{"a0": a0, "seed": seed, "max_gap": 0.5 * (a0 / 0.001) ** 0.5, "mean_gap": 0.1, "final_gap": 0.1,
             "horizon": 6.0, "max_gap_unclipped": (1.0 if seed < nearer else 0.1) * apart}
            for a0 in A0S for seed in range(4)]
    pd.DataFrame(rows).to_csv(tmp_path / "ode_gaps.csv", index=False)
    pd.DataFrame({"t": [0.0, 1.0], "flows_apart": [0.0, apart]}).to_csv(tmp_path / "ode_solution.csv", index=False)
    a = verdicts.assess_ode_tracking(tmp_path)
    assert a["tracking_verdict"] == "holds" and a["clipped_ode"]["verdict"] == expected
    assert a["verdict"] == {"holds": "holds", "untested": "holds", "fails": "partly"}[expected]


def test_the_unclipped_flow_cannot_stand_in_for_tracking_the_data_cannot_decide(tmp_path):
    """Tracking untested (two values of a0) and the clipped ODE told apart: still untested."""
    rows = [{"a0": a0, "seed": seed, "max_gap": 0.5 * (a0 / 0.001) ** 0.5, "mean_gap": 0.1, "final_gap": 0.1,
             "horizon": 6.0, "max_gap_unclipped": 10.0} for a0 in (0.01, 0.001) for seed in range(4)]
    pd.DataFrame(rows).to_csv(tmp_path / "ode_gaps.csv", index=False)
    pd.DataFrame({"t": [0.0, 1.0], "flows_apart": [0.0, 10.0]}).to_csv(tmp_path / "ode_solution.csv", index=False)
    a = verdicts.assess_ode_tracking(tmp_path)
    assert a["clipped_ode"]["verdict"] == "holds"
    assert (a["verdict"], a["why"]) == ("untested", f"fewer than {verdicts.MIN_A0} values of a0")


def test_missing_tables_say_not_measured(tmp_path):
    everything = verdicts.assess_all(tmp_path, "smoke")
    assert {p["verdict"] for p in everything["predictions"].values()} == {verdicts.NOT_MEASURED}
    assert "Not measured at this scale." in report.render(everything)


def test_report_is_rendered_from_verdicts_json(tmp_path):
    """report.py writes verdicts.json (strict JSON: no nan) and renders REPORT.md from the file: a
    verdict edited in the file is the verdict the report prints."""
    stability_rows((1.0, 1.0), (1.0, 0.125)).to_csv(tmp_path / "stability.csv", index=False)
    limit_rows(0.01, 0.49).to_csv(tmp_path / "limit_set.csv", index=False)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), "--results", str(tmp_path),
                           "--scale", "smoke"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "verdicts.json").read_text())
    assert data["predictions"]["stability"]["verdict"] == "partly"
    assert data["predictions"]["limit_set"]["verdict"] == "holds"
    text = (tmp_path / "REPORT.md").read_text()
    assert "## 2. Stability with high probability\n\n**Verdict: partly**" in text
    data["predictions"]["limit_set"]["verdict"] = "fails"
    assert "## 5. The limit set and the clipping bias\n\n**Verdict: fails.**" in report.render(data)
    other = json.loads(json.dumps(data))
    other["scale"], other["predictions"]["stability"]["verdict"] = "default", "holds"
    assert "| 2. Stability with high probability | partly (norm: holds; AGC: fails) | holds (norm: holds; AGC: fails) |" \
        in report.render(data, other)


def agc_unit_rows(tmp_path, agc_rel, agc_abs, seeds=8, small_units=50):
    """Per-run ratios of small to large units' steps: AGC's from the arguments (one per seed, or
    one for all), plain SGD's much larger relative steps at step 1."""
    rows = []
    for seed in range(seeds):
        rel = agc_rel[seed] if isinstance(agc_rel, list) else agc_rel
        for label, rel_ratio, abs_ratio, rel1 in [("agc λ=0.01 (sample)", rel, agc_abs, 0.005),
                                                  ("none", 3.0, 0.9, 60.0)]:
            rows.append({"method_label": label, "seed": seed, "small_units": small_units, "large_units": 50,
                         "rel_ratio": rel_ratio, "abs_ratio": abs_ratio, "rel_ratio_step1": rel_ratio,
                         "abs_ratio_step1": abs_ratio, "rel_small_step1": rel1, "small_growth": 1.0})
    pd.DataFrame(rows).to_csv(tmp_path / "agc_unit_ratios.csv", index=False)
    pd.DataFrame({"clip_factor": [0.01], "eps": [1e-3], "large_from": [100.0], "min_units": [10], "steps": [500],
                  "lr": [0.05]}).to_csv(tmp_path / "agc_settings.csv", index=False)


RATIO = verdicts.SMALL_OVER_LARGE


@pytest.mark.parametrize("agc_rel, agc_abs, relative, absolute, expected", [
    (RATIO * 1.01, 0.003, "holds", "fails", "partly"),  # relative reading just holds, absolute fails
    (RATIO * 1.01, 1.01, "holds", "holds", "holds"),    # both readings hold (absolute just past 1)
    (RATIO * 1.01, 0.99, "holds", "fails", "partly"),   # absolute just short of 1
    (RATIO * 0.99, 0.003, "fails", "fails", "fails"),   # relative step just short of the threshold
    ([RATIO * 1.01] * 6 + [RATIO * 0.99] * 2, 1.01, "untested", "holds", "holds"),  # 6 of 8 straddle 1/2
])
def test_agc_small_weights_verdicts(tmp_path, agc_rel, agc_abs, relative, absolute, expected):
    agc_unit_rows(tmp_path, agc_rel, agc_abs)
    a = verdicts.assess_agc_small_weights(tmp_path)
    assert (a["relative"], a["absolute"], a["verdict"]) == (relative, absolute, expected)
    assert a["agc_rel_small_step1_over"] == {"none": pytest.approx(0.005 / 60.0)} and a["agc_below_at_step1"] == {
        "none": 8}
    assert report.render_agc_small_weights(json.loads(json.dumps(verdicts.plain(a))))[0].startswith(
        f"**Verdict: {expected}**")


def test_agc_small_weights_untested_with_few_seeds_or_units(tmp_path):
    agc_unit_rows(tmp_path, RATIO * 10, 0.003, seeds=3)   # 3 of 3 seeds do not decide
    assert verdicts.assess_agc_small_weights(tmp_path)["relative"] == "untested"
    agc_unit_rows(tmp_path, float("nan"), float("nan"))   # every run had a class under MIN_UNITS
    a = verdicts.assess_agc_small_weights(tmp_path)
    assert a["verdict"] == "untested" and a["methods"][0]["judged_seeds"] == 0


def test_renderers_take_missing_values(tmp_path):
    """A value that does not exist (nan, None in verdicts.json) renders as '–', not a crash."""
    increments(tmp_path, [float("nan")])
    a = json.loads(json.dumps(verdicts.plain(verdicts.assess_increments(tmp_path))))
    assert a["worst_update_ratio"] is None and "–" in report.render_increments(a)[0]


def test_the_repository_cites_only_its_own_files_for_what_it_tests():
    """The paper, its claims and the predictions are stated in docs/CLAIMS.md: no tracked file
    may send a reader to a briefing outside the repository."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    texts = [path for path in tracked if path.endswith((".py", ".md", ".yaml", ".yml", ".toml", "Makefile"))]
    assert "docs/CLAIMS.md" in texts
    citing = [path for path in texts if any(name in (ROOT / path).read_text(encoding="utf-8")
                                            for name in ("../shared", "PAPER.md", "REFERENCES.md"))
              and path != "tests/test_report.py"]
    assert citing == []


@pytest.mark.parametrize("batch_root, expected_resolved", [
    (0.1, 1),     # 0.1 from the mean and 0.4 from the root, the iterate 0.002 from it: resolved from both
    (0.005, 0),   # as near the mean as the iterate is (within 5x): it cannot be told from the mean
    (5 * 0.002 * 1.001, 1),  # just more than 5x the iterate's 0.002 from it: resolved
    (5 * 0.002 * 0.999, 0),  # just less: not
])
def test_batch_clipping_fixed_point_must_stand_apart_from_the_root_and_the_mean(tmp_path, batch_root, expected_resolved):
    """Batch clipping's fixed point is judged only where the runs can tell it from the root of
    (22) and, apart, from the mean; there 4 of 4 seeds nearer it hold."""
    theta = batch_root + 0.002
    rows = [{"problem": "location", "noise": "lognormal", "tau": 0.3, "granularity": granularity, "seed": seed,
             "batch_size": 32, "steps": 6000, "mean": "0.0", "root": 0.5, "theta": theta, "batch_root": batch_root,
             "dist_to_batch_root": 0.002, "dist_to_root": abs(theta - 0.5), "dist_to_mean": abs(theta),
             "root_to_mean": 0.5, "batch_root_to_root": abs(batch_root - 0.5), "batch_root_error": 1e-4,
             "batch_root_draws": 1000}
            for seed in range(4) for granularity in ("sample", "batch")]
    pd.DataFrame(rows).to_csv(tmp_path / "limit_set.csv", index=False)
    b = verdicts.assess_limit_set(tmp_path)["batch"]
    assert b["resolved_from_root"] == 1 and b["resolved"] == expected_resolved
    assert b["resolved_verdicts"]["holds"] == expected_resolved


def assessed(tmp_path, experiment: str, rows: list[dict], section: str | None = None) -> dict:
    """Write ``rows`` as the experiment's table, assess it (gradclip.verdicts) for its section (or
    for ``section``, another read of the same table), check that the section renders from the
    JSON-ready verdicts with the verdict first, and return them."""
    pd.DataFrame(rows).to_csv(tmp_path / f"{experiment}.csv", index=False)
    section = section or experiment
    a = getattr(verdicts, f"assess_{section}")(tmp_path)
    assert getattr(report, f"render_{section}")(json.loads(json.dumps(verdicts.plain(a))))[0].startswith(
        f"**Verdict: {a['verdict']}**")
    return a


def bias_rows(tmp_path, symmetric_thetas, skewed_thetas, scale=1.0):
    """clipping_bias.csv: one symmetric point (mean 0, root 0, scale ``scale``) and one skewed
    point (root 0, mean 1, l/c minimiser -0.5), a row per seed's averaged iterate."""
    rows = []
    for noise, symmetric, thetas, root, mean, scaled in [("gaussian", True, symmetric_thetas, 0.0, 0.0, 0.0),
                                                         ("lognormal", False, skewed_thetas, 0.0, 1.0, -0.5)]:
        for seed, theta in enumerate(thetas):
            rows.append({"noise": noise, "symmetric": symmetric, "tau": 1.0, "seed": seed, "steps": 1000,
                         "averaged_over": 10, "theta_avg": theta, "theta_late": theta, "theta_final": theta,
                         "root": root, "mean": mean,
                         "median": root, "scaled_min": scaled, "sigma": scale, "scale": scale, "H_final": 0.0})
    a = assessed(tmp_path, "clipping_bias", rows)
    return {p["noise"]: p for p in a["points"]}, a


TOL = verdicts.NO_BIAS


@pytest.mark.parametrize("bias, expected", [(0.99 * TOL, "holds"), (1.01 * TOL, "fails")])
def test_symmetric_noise_has_no_bias_within_its_tolerance(tmp_path, bias, expected):
    points, _ = bias_rows(tmp_path, [bias] * 8, [0.0] * 8, scale=1.0)
    assert points["gaussian"]["verdict"] == expected


@pytest.mark.parametrize("spread, expected", [(0.49 * TOL, "holds"), (0.51 * TOL, "untested")])
def test_symmetric_noise_is_untested_where_the_seeds_are_too_spread(tmp_path, spread, expected):
    """Eight seeds at +-d have standard deviation d sqrt(8/7): too noisy past half the tolerance."""
    d = spread / np.sqrt(8 / 7)
    points, _ = bias_rows(tmp_path, [d, -d] * 4, [0.0] * 8)
    assert points["gaussian"]["resolved"] == (expected == "holds") and points["gaussian"]["verdict"] == expected


@pytest.mark.parametrize("theta, vs_mean, vs_scaled", [
    (0.01, "holds", "holds"),                          # at the root
    (0.99, "fails", "untested"),                      # at the mean: the root and l/c too close for it
    (-0.49, "untested", "fails"),                      # at the l/c minimiser: nearer the root than the mean, unresolved
    (1 / verdicts.RESOLVED * 0.99, "holds", "untested"),  # just inside the resolution vs the mean (0.5 away from l/c)
    (1 / verdicts.RESOLVED * 1.01, "untested", "untested"),  # just outside
])
def test_skewed_noise_ends_at_the_root(tmp_path, theta, vs_mean, vs_scaled):
    points, a = bias_rows(tmp_path, [0.0] * 8, [theta] * 8)
    p = points["lognormal"]
    assert (p["vs_mean"]["verdict"], p["vs_scaled"]["verdict"]) == (vs_mean, vs_scaled)
    assert a["parts"]["symmetric: no bias"] == "holds"


def batch_rows(tmp_path, batch_position, sample_position=1.0, batch_root_position=0.4, seeds=8):
    """batch_fixed_point.csv for a location problem whose root of eq. (22) is at 1 and mean at 0
    (positions are then coordinates), with batch clipping's fixed point at ``batch_root_position``
    for B = 16; every seed's averaged iterate at the positions given (B = 1: both at 1)."""
    rows = []
    for granularity, batch, position, fixed in [("sample", 1, 1.0, 1.0), ("batch", 1, 1.0, 1.0),
                                                ("sample", 16, sample_position, batch_root_position),
                                                ("batch", 16, batch_position, batch_root_position)]:
        for seed in range(seeds):
            rows.append({"problem": "location", "noise": "lognormal", "granularity": granularity, "batch_size": batch,
                         "tau": 0.3, "seed": seed, "steps": 1000, "averaged_over": 10,
                         "dist_to_root": abs(position - 1), "dist_to_mean": abs(position),
                         "dist_to_batch_root": abs(position - fixed), "root_to_mean": 1.0,
                         "batch_root_to_root": abs(fixed - 1), "batch_root_to_mean": abs(fixed),
                         "batch_root_error": 0.001, "batch_root_draws": 1000, "position": position,
                         "batch_root_position": fixed, "theta": f"{position}"})
    a = assessed(tmp_path, "batch_fixed_point", rows)
    return a


@pytest.mark.parametrize("batch_position, sample_position, expected", [
    (0.4, 1.0, ("holds", "holds", "holds")),        # each at its own fixed point
    (1.0, 1.0, ("holds", "fails", "untested")),     # batch runs at the root (0.6 from the fixed point: unresolved vs mean)
    (0.0, 1.0, ("holds", "untested", "fails")),     # batch runs at the mean
    (0.4, 0.0, ("partly", "holds", "holds")),       # per-sample runs at the mean at B = 16 (at the root at B = 1)
])
def test_batch_fixed_point_verdicts(tmp_path, batch_position, sample_position, expected):
    a = batch_rows(tmp_path, batch_position, sample_position)
    assert tuple(a["parts"].values()) == expected
    assert a["batch_one_largest_difference"] == 0.0


def test_batch_fixed_point_too_near_the_mean_is_untested(tmp_path):
    """A fixed point 0.02 from the mean, runs 0.005 from it: resolved from the root, but not from
    the mean, whose distance is not RESOLVED times the runs' error; just beyond it, it is."""
    error = 0.005
    a = batch_rows(tmp_path, 0.02 - error, batch_root_position=0.02)
    assert a["parts"]["batch: its own fixed point, not the root"] == "holds"
    assert a["parts"]["batch: its own fixed point, not the mean"] == "untested"  # 0.02 < 5 x 0.005 (to the mean: 0.015)
    a = batch_rows(tmp_path, 0.2 - error, batch_root_position=0.2)
    assert a["parts"]["batch: its own fixed point, not the mean"] == "holds"


@pytest.mark.parametrize("factor, near, error", [(1.001, 0.01, 0.0), (0.999, 0.01, 0.0),      # against the runs
                                                (1.001, 0.001, 0.01), (0.999, 0.001, 0.01)])  # the answer's error
def test_a_closed_form_comparison_is_resolved_past_the_runs_distance_and_the_answers_error(factor, near, error):
    """Two candidates are told apart where they lie RESOLVED x further apart than the median seed
    lies from the nearer one and than the candidate's own numerical error, not at the boundary."""
    apart = factor * verdicts.RESOLVED * max(near, error)
    r = verdicts._nearer(pd.Series([near] * 4), pd.Series([apart] * 4), apart, error)
    assert r["resolved"] == (factor > 1) and r["verdict"] == ("holds" if factor > 1 else "untested")


@pytest.mark.parametrize("factor", [1.001, 0.999])
def test_batch_fixed_point_near_the_mean_is_judged_only_past_its_monte_carlo_error(tmp_path, factor):
    """Runs at batch clipping's own fixed point (distance 0), which lies RESOLVED x its Monte Carlo
    error (0.001) from the mean, times ``factor``: told from the mean only beyond that."""
    a = batch_rows(tmp_path, 0.005 * factor, batch_root_position=0.005 * factor)
    assert a["parts"]["batch: its own fixed point, not the root"] == "holds"
    assert a["parts"]["batch: its own fixed point, not the mean"] == ("holds" if factor > 1 else "untested")


@pytest.mark.parametrize("drift, resolved", [(0.49 * TOL, True), (0.51 * TOL, False)])
def test_symmetric_noise_is_untested_where_the_runs_still_drift(tmp_path, drift, resolved):
    """Every seed 0.9 tolerance below the mean over the second half but nearer it over the last
    quarter: a transient, not a bias, once the drift passes half the tolerance."""
    bias_rows(tmp_path, [-0.9 * TOL] * 8, [0.0] * 8)
    table = pd.read_csv(tmp_path / "clipping_bias.csv")
    symmetric = table["symmetric"]
    table.loc[symmetric, "theta_late"] = table.loc[symmetric, "theta_avg"] + drift
    table.to_csv(tmp_path / "clipping_bias.csv", index=False)
    point = {p["noise"]: p for p in verdicts.assess_clipping_bias(tmp_path)["points"]}["gaussian"]
    assert point["resolved"] == resolved and point["verdict"] == ("holds" if resolved else "untested")


def label_noise_rows(tmp_path, sample_memorised, sample_fit=0.7, batch_memorised=0.4, seeds=8):
    """label_noise.csv with, for every seed, plain SGD at a0 = 1 and 10 fitting (clean 0.5,
    memorised 0.2) and (0.9, 0.6): its curve reads memorised 0.4 at clean fit 0.7. Per-sample
    clipping (one value or one per seed) and batch clipping sit at clean fit ``sample_fit`` and 0.7."""
    base = {"tau": 1.0, "label_noise": 0.4, "imbalance": 1.0, "n_train": 1000, "steps": 3000, "status": "completed",
            "train_acc": 0.5, "test_acc": 0.3, "recovered": 0.1, "test_acc_minority": 0.3, "test_acc_majority": 0.3}
    memorised = sample_memorised if isinstance(sample_memorised, list) else [sample_memorised] * seeds
    rows = []
    for seed in range(seeds):
        rows += [base | {"method_label": "none", "method": "none", "granularity": "batch", "a0": 1, "seed": seed,
                         "clean_fit": 0.5, "memorised": 0.2},
                 base | {"method_label": "none", "method": "none", "granularity": "batch", "a0": 10, "seed": seed,
                         "clean_fit": 0.9, "memorised": 0.6},
                 base | {"method_label": "norm τ=1 (sample)", "method": "norm", "granularity": "sample", "a0": 30,
                         "seed": seed, "clean_fit": sample_fit, "memorised": memorised[seed]},
                 base | {"method_label": "norm τ=1 (batch)", "method": "norm", "granularity": "batch", "a0": 3,
                         "seed": seed, "clean_fit": 0.7, "memorised": batch_memorised}]
    a = assessed(tmp_path, "label_noise", rows)
    return a


@pytest.mark.parametrize("memorised, expected", [
    (0.399, "holds"),            # just below plain SGD's 0.4 at the same clean fit, in every seed
    (0.401, "fails"),            # just above
    ([0.399] * 4 + [0.401] * 4, "untested"),  # the seeds split
    ([0.399] * 7 + [0.401], "holds"),         # 7 of 8: Wilson's lower bound 0.53 > 0.5
    ([0.399] * 6 + [0.401] * 2, "untested"),  # 6 of 8: 0.41
])
def test_label_noise_rule_reads_plain_sgds_curve_at_the_same_clean_fit(tmp_path, memorised, expected):
    a = label_noise_rows(tmp_path, memorised)
    assert a["verdict"] == expected
    point = next(p for p in a["points"] if p["granularity"] == "sample")
    assert point["judged"] == 8 and point["plain_memorised"] == pytest.approx(0.4)
    # The control sits exactly on plain SGD's curve: a tie in every seed, neither less nor more, not judged.
    control = next(p for p in a["points"] if p["granularity"] == "batch")
    assert control["judged"] == 0 and a["batch"] == {"holds": 0, "fails": 0, "untested": 1}
    # The check on the interpolation: the curve is a straight line, so PCHIP reads the same 0.4.
    assert (point["memorises_less_pchip"], point["judged_pchip"]) == (point["memorises_less"], 8)
    # Best a0 only where a method ran a grid (plain SGD); equal accuracies are not "above".
    assert [(b["method_label"], b["a0"], b["seeds_over_plain"]) for b in a["best"]] == [("none", 1, None)]


def test_label_noise_outside_plain_sgds_range_is_not_judged(tmp_path):
    """Clean fit 0.95 lies beyond plain SGD's best (0.9): no comparison, untested; at 0.9 there is one."""
    assert label_noise_rows(tmp_path, 0.1, sample_fit=0.95)["verdict"] == "untested"
    a = label_noise_rows(tmp_path, 0.599, sample_fit=0.9)
    assert a["verdict"] == "holds" and a["points"][1]["plain_memorised"] == pytest.approx(0.6)


def test_label_noise_settings_without_a_plain_sgd_grid_are_not_compared(tmp_path):
    """At 20% noise plain SGD runs one a0 only: no curve, so no clipped point there (only the
    accuracy is reported)."""
    label_noise_rows(tmp_path, 0.3)
    table = pd.read_csv(tmp_path / "label_noise.csv")
    extra = table[table["a0"].isin([10, 30])].assign(label_noise=0.2)
    pd.concat([table, extra]).to_csv(tmp_path / "label_noise.csv", index=False)
    a = verdicts.assess_label_noise(tmp_path)
    assert {p["label_noise"] for p in a["points"]} == {0.4} and a["verdict"] == "holds"
    assert {(p["label_noise"], p["method_label"]) for p in a["accuracy"]} >= {(0.2, "none"), (0.2, "norm τ=1 (sample)")}


@pytest.mark.parametrize("interval, expected", [([0.351, 0.37], "above it"), ([0.349, 0.37], "the intervals overlap"),
                                                 ([0.33, 0.3401], "the intervals overlap"), ([0.3, 0.339], "below it")])
def test_label_noise_settings_not_judged_say_above_or_below_only_where_the_intervals_are_apart(interval, expected):
    """The settings the verdict does not judge (here 20% noise; 40% is judged): each clipping
    method's clean test accuracy against plain SGD's [0.34, 0.35], just inside and just outside."""
    plain = {"label_noise": 0.2, "imbalance": 1.0, "method_label": "none", "test_acc": 0.345, "interval": [0.34, 0.35],
             "memorised": 0.7, "clean_fit": 0.9, "test_acc_minority": 0.3}
    clipped = dict(plain, method_label="norm τ=1 (sample)", test_acc=0.36, interval=interval, memorised=0.4,
                   clean_fit=0.8)
    judged = dict(plain, label_noise=0.4)
    lines = report._label_noise_unjudged({"points": [judged], "accuracy": [judged, plain, clipped]})
    assert lines[0] == "" and len(lines) == 2 and lines[1].startswith("- 20% label noise, one a0 per method: ")
    assert f"norm τ=1 (sample) 0.36 ({expected}), memorising 0.4 of the flipped labels against 0.7 at a clean fit " \
           "of 0.8 against 0.9 (reported, not judged)." in lines[1]


def eq22_rows(tmp_path, to_h, to_l, apart, seeds=8, converged=True, minima=None, flow=0.0):
    """eq22_network.csv: an unclipped control (its averages 0.05 from theta_L) and one clipped
    tau = 1 whose every seed has ||avg - theta_H|| = to_h, ||avg - theta_L|| = to_l, ||theta_H -
    theta_L|| = apart and theta_H at ``flow`` from the ODE's zero (seed 0's zeros found or not:
    ``converged``); each seed its own loss minimum, or ``minima`` of them shared round-robin."""
    base = {"weight_decay": 0.05, "a0": 2.0, "power": 0.5, "batch_size": 64, "steps": 1000, "width": 16,
            "n_train": 512, "status": "completed", "dist_late_avg": 0.01, "dist_start_L": 0.001,
            "clipped_at_H": 1.0, "clipped_at_L": 1.0, "train_acc_H": 0.3, "train_acc_L": 0.35, "test_acc_L": 0.27}
    rows = []
    for seed in range(seeds):
        minimum = {"minimum": seed % (minima or seeds), "norm_L": 3.0, "L_found": True, "flow_found": True}
        rows.append(base | minimum | {"method_label": "none", "granularity": "none", "tau": math.inf, "seed": seed,
                                      "dist_avg_H": 0.05,
                                      "dist_avg_L": 0.05, "dist_H_L": 0.0, "dist_H_flow": 0.0, "H_found": True,
                                      "test_acc_H": 0.27, "train_acc_H": 0.35})
        rows.append(base | minimum | {"method_label": "norm τ=1 (sample)", "granularity": "sample", "tau": 1.0, "seed": seed,
                                      "dist_avg_H": to_h, "dist_avg_L": to_l, "dist_H_L": apart, "dist_H_flow": flow,
                                      "H_found": converged or seed > 0, "test_acc_H": 0.28 + 0.001 * seed})
    return assessed(tmp_path, "eq22_network", rows)


@pytest.mark.parametrize("to_h, apart, expected", [
    (0.1, 0.51, "holds"),       # apart just over 5x the nearer distance: resolved, every seed at theta_H
    (0.1, 0.49, "untested"),    # just under: the runs cannot tell the two zeros apart
    (0.6, 3.1, "fails"),        # resolved, every seed nearer theta_L (to_l = 0.5 < 0.6)
])
def test_eq22_network_rule_is_decided_per_loss_minimum_at_resolved_points(tmp_path, to_h, apart, expected):
    a = eq22_rows(tmp_path, to_h, 0.5, apart)
    point = next(p for p in a["points"] if p["tau"] == 1.0)
    assert point["verdict"] == a["verdict"] == expected and point["minima"] == a["minima"] == 8
    assert a["control"]["returns_to_L"] == 8 and a["resolution"] == 0.05 and not a["started_off_L_seeds"]
    assert point["test"]["words"] == "buys" and point["train"]["words"] == "costs"


def test_eq22_network_a_seed_whose_zeros_were_not_found_does_not_count(tmp_path):
    """4 of 4 minima at theta_H decide (holds); with one seed's zeros not found, 3 of 4 do not. A
    theta_H that is not the zero the ODE from theta_L ends at still is a zero (counted apart)."""
    assert eq22_rows(tmp_path, 0.1, 0.5, 2.0, seeds=4)["verdict"] == "holds"
    a = eq22_rows(tmp_path, 0.1, 0.5, 2.0, seeds=4, converged=False)
    point = next(p for p in a["points"] if p["tau"] == 1.0)
    assert (point["seeds_at_H"], point["unconverged"], point["minima_at_H"], a["verdict"]) == (3, 1, 3, "untested")
    other = eq22_rows(tmp_path, 0.1, 0.5, 2.0, seeds=4, flow=verdicts.SAME_ZERO * 1.01)
    assert other["verdict"] == "holds" and next(p for p in other["points"] if p["tau"] == 1.0)["same_as_flow"] == 0


def batch_network_rows(tmp_path, to_b, apart, error=0.0, seeds=8, found=True, large_b=None):
    """eq22_network.csv with the batch-size arm at tau = 0.5 (beside section 11's control and a
    per-sample run at B = 64, 0.1 from theta_H and 1.9 from theta_L, theta_H 2.0 from theta_L).
    Batch clipping at B = 4: each seed's average to_b from theta_B and 1.5 from theta_H, 2.5 from
    theta_L; theta_B ``apart`` from theta_H and apart + 0.5 from theta_L, with error ``error``
    (seed 0's theta_B found or not), position 0.8. At B = 16 the same, or ``large_b`` =
    (to_b, apart from theta_H, apart from theta_L): theta_B near theta_L, position 0.1. Each seed
    its own loss minimum."""
    base = {"weight_decay": 0.05, "a0": 2.0, "power": 0.5, "steps": 1000, "width": 16, "n_train": 512,
            "n_examples": 512, "status": "completed", "dist_late_avg": 0.01, "dist_start_L": 0.001, "norm_L": 3.0,
            "L_found": True, "H_found": True, "flow_found": True, "test_acc_avg": 0.27, "test_acc_L": 0.27,
            "train_acc_L": 0.35, "clipped_at_H": 1.0, "clipped_at_L": 1.0}
    rows = []
    for seed in range(seeds):
        rows.append(base | {"granularity": "none", "method_label": "none", "tau": math.inf, "batch_size": 64,
                            "seed": seed, "minimum": seed, "dist_avg_H": 0.05, "dist_avg_L": 0.05, "dist_H_L": 0.0,
                            "dist_H_flow": 0.0, "test_acc_H": 0.27, "train_acc_H": 0.35})
        rows.append(base | {"granularity": "sample", "method_label": "norm τ=0.5 (sample)", "tau": 0.5,
                            "batch_size": 64, "seed": seed, "minimum": seed, "dist_avg_H": 0.1, "dist_avg_L": 1.9,
                            "dist_H_L": 2.0, "dist_H_flow": 0.0, "dist_avg_flow": 0.1, "dist_flow_L": 2.0,
                            "position_avg": 0.95, "test_acc_H": 0.27, "train_acc_H": 0.3})
        for batch, position, (near, to_h, apart_h, apart_l) in (
                (4, 0.8, (to_b, 1.5, apart, apart + 0.5)),
                (16, 0.1, (large_b[0], 2.0, large_b[1], large_b[2]) if large_b else (to_b, 1.5, apart, apart + 0.5))):
            rows.append(base | {"granularity": "batch", "method_label": "norm τ=0.5 (batch)", "tau": 0.5,
                                "batch_size": batch, "seed": seed, "minimum": seed, "dist_avg_B": near,
                                "dist_avg_flow": to_h, "dist_avg_L": 2.5, "dist_flow_L": 2.0, "dist_B_flow": apart_h,
                                "dist_B_L": apart_l, "B_error": error, "B_monte_carlo_error": error / 2,
                                "B_found": found or seed > 0, "B_draws": 64 * 512 // batch, "position_B": position,
                                "position_avg": position, "clipped_batches_at_B": 0.5, "test_acc_B": 0.27})
    return assessed(tmp_path, "eq22_network", rows, section="batch_network")


@pytest.mark.parametrize("to_b, apart, error, expected", [
    (0.1, 0.51, 0.0, "holds"),      # apart just over 5x the averages' distance to theta_B: resolved
    (0.1, 0.49, 0.0, "untested"),   # just under (theta_L, 0.99 from theta_B, still resolved: see below)
    (0.01, 0.51, 0.1, "holds"),     # apart just over 5x theta_B's error
    (0.01, 0.49, 0.1, "untested"),  # just under: theta_B is not known well enough to tell
    (7.6, 7.6, 0.0, "fails"),       # resolved (5 x 1.5 < 7.6, a triangle with 7.6 and 1.5): every seed nearer theta_H
])
def test_batch_network_rule_is_decided_per_loss_minimum_at_resolved_points(tmp_path, to_b, apart, error, expected):
    a = batch_network_rows(tmp_path, to_b, apart, error)
    assert a["parts"]["batch: θ_B, not θ_H"] == expected
    assert a["parts"]["per-sample: θ_H at every B"] == "holds" and a["tau"] == 0.5
    assert a["batch_sizes"] == [4, 16, 64] and a["moves_towards_L"] and a["draws_per_example"] == 64
    batch = [p for p in a["points"] if p["granularity"] == "batch"]
    assert [p["position_B"] for p in batch] == [0.8, 0.1] and all(p["B_vs_H"]["minima"] == 8 for p in batch)
    # Section 11 reads only its own tau grid: the batch arm changes nothing there.
    assert verdicts.assess_eq22_network(tmp_path)["seeds"] == [8, 8]


def test_batch_network_is_untested_unless_both_batch_rules_are_decided(tmp_path):
    """Per-sample clipping alone repeats section 11. At B = 4 (the averages 0.2 from theta_B,
    theta_B 0.49 from theta_H and 0.99 from theta_L) nothing is resolved; at B = 16 theta_B is
    2.0 from theta_H but 0.3 from theta_L, just under 5x the averages' 0.061: the theta_L rule is
    untested everywhere, so is the section; 0.31 from theta_L (just over) decides it."""
    a = batch_network_rows(tmp_path, 0.2, 0.49, large_b=(0.061, 2.0, 0.3))
    assert a["parts"]["batch: θ_B, not θ_L"] == "untested" and a["parts"]["batch: θ_B, not θ_H"] == "holds"
    assert a["verdict"] == "untested"
    a = batch_network_rows(tmp_path, 0.2, 0.49, large_b=(0.061, 2.0, 0.31))
    assert a["parts"]["batch: θ_B, not θ_L"] == "holds" and a["verdict"] == "holds"
    large = next(p for p in a["points"] if p["batch_size"] == 16)
    assert large["B_vs_L"]["apart"] == 0.31 and large["B_vs_H"]["apart"] == 2.0  # each rule its own distance


def test_batch_network_a_seed_whose_batch_fixed_point_was_not_found_does_not_count(tmp_path):
    """8 of 8 minima at theta_B decide; with one seed's theta_B not found, 7 of 8 still do (Wilson
    interval above one half), and that seed is counted as not; with no batch runs the section is
    not measured."""
    a = batch_network_rows(tmp_path, 0.1, 2.0, found=False)
    point = next(p for p in a["points"] if p["granularity"] == "batch")
    assert (point["unfound"], point["B_vs_H"]["minima_nearer"], point["B_vs_H"]["seeds_nearer"]) == (1, 7, 7)
    a = batch_network_rows(tmp_path, 0.1, 2.0, seeds=4, found=False)
    assert a["parts"]["batch: θ_B, not θ_H"] == "untested"  # 3 of 4 cannot decide
    assert eq22_rows(tmp_path, 0.1, 0.5, 2.0) and verdicts.assess_batch_network(tmp_path)["verdict"] == "not measured"


def test_eq22_network_seeds_of_one_loss_minimum_are_one_trial(tmp_path):
    """8 seeds all at theta_H but from 2 loss minima are 2 trials: too few to decide; from 4
    minima, one seed not at theta_H (its zero not found) takes its whole minimum with it; the
    accuracies and their change are means over minima, each the mean of its seeds."""
    a = eq22_rows(tmp_path, 0.1, 0.5, 2.0, seeds=8, minima=2)
    point = next(p for p in a["points"] if p["tau"] == 1.0)
    assert (point["seeds_at_H"], point["minima_at_H"], point["minima"], a["verdict"]) == (8, 2, 2, "untested")
    # seeds 0, 2, 4, 6 are minimum 0 (test accuracy at theta_H 0.283 on average), 1, 3, 5, 7 minimum 1 (0.284)
    assert point["test"]["acc_H"] == pytest.approx(0.2835) and point["test"]["change"] == pytest.approx(0.0135)
    a = eq22_rows(tmp_path, 0.1, 0.5, 2.0, seeds=8, minima=4, converged=False)
    point = next(p for p in a["points"] if p["tau"] == 1.0)
    assert (point["seeds_at_H"], point["minima_at_H"], point["minima"]) == (7, 3, 4)
