"""Aggregations behind the figures, on hand-built records with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from gradclip.analysis import (
    LARGE_FROM, MIN_UNITS, agc_stability_limits, convergence_summary, eval_paths, freeze_table, increment_table,
    late_slope, ode_gap_summary, ode_seed_mean_gap, schedule_sum, stability_table, total_schedule_sum, trajectories,
    unit_step_ratios, wilson_interval)


# n/(n + z^2) is the lower end when every trial succeeds: 8 / 11.8415 = 0.6756
@pytest.mark.parametrize("k, n, low, high", [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
                                             (8, 8, 0.6756, 1.0)])
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_of_no_trials_is_undefined():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def run(method, a0, seed, status, max_norm, granularity="batch", **extra):
    return {"run_id": f"{method}-{granularity}-{a0}-{seed}", "model.name": "mlp", "clip.method": method,
            "clip.granularity": granularity, "clip.threshold": 1.0 if method == "norm" else math.nan,
            "clip.clip_factor": 0.1 if method == "agc" else math.nan, "schedule.a0": a0, "seed": seed,
            "summary.status": status, "summary.max_param_norm": max_norm,
            "summary.diverged_step": 3.0 if status == "diverged" else math.nan, "summary.initial_param_norm": 5.0,
            "steps": 4, "schedule.name": "constant", **extra}


def test_stability_table_counts_bound_and_status():
    runs = pd.DataFrame([
        run("none", 1.0, 0, "completed", 50.0), run("none", 1.0, 1, "completed", 50.0),
        run("none", 10.0, 0, "completed", 500.0),  # finite but above B = 100: unstable
        run("none", 10.0, 1, "diverged", math.inf, **{"summary.diverged_reason": "non-finite gradient"}),
        run("none", 10.0, 2, "failed", math.nan),  # a crash is neither: left out
        run("norm", 10.0, 0, "completed", 60.0, "sample"), run("norm", 10.0, 1, "completed", 99.0, "sample"),
    ])
    table = stability_table(runs, bound=100.0).set_index(["method_label", "a0"])
    assert table.loc[("none", 1.0), ["runs", "stable", "stable_fraction"]].tolist() == [2, 2, 1.0]
    assert table.loc[("none", 10.0), ["runs", "stable", "stable_fraction"]].tolist() == [2, 0, 0.0]
    assert table.loc[("none", 10.0), "wilson_high"] == pytest.approx(wilson_interval(0, 2)[1])
    assert table.loc[("norm τ=1 (sample)", 10.0), "stable_fraction"] == 1.0
    assert table.loc[("none", 10.0), "median_diverged_step"] == 3.0
    assert table.loc[("none", 10.0), "non_finite"] == 1  # the other was lost to the bound B
    # ||theta_0|| + tau * sum a = 5 + 1 * 4 * 10 = 45 < B = 100: norm clipping cannot reach B there
    assert table.loc[("norm τ=1 (sample)", 10.0), "implied_by_increments"]
    assert not table.loc[("none", 10.0), "implied_by_increments"]
    assert not stability_table(runs, bound=40.0).set_index(["method_label", "a0"]).loc[
        ("norm τ=1 (sample)", 10.0), "implied_by_increments"]


@pytest.mark.parametrize("bound, implied", [(45.001, True), (45.0, False), (44.999, False)])
def test_a_point_is_implied_by_increments_only_where_the_reach_is_strictly_below_the_bound(bound, implied):
    """||theta_0|| + tau sum a(n) = 5 + 1 x 4 x 10 = 45 against B just above, at and just below it."""
    runs = pd.DataFrame([run("norm", 10.0, seed, "completed", 40.0, "sample") for seed in range(2)])
    table = stability_table(runs, bound=bound).set_index(["method_label", "a0"])
    assert table.loc[("norm τ=1 (sample)", 10.0), "implied_by_increments"] == implied


def test_schedule_sum_matches_the_schedule():
    rm = pd.Series({"steps": 3, "schedule.name": "robbins_monro", "schedule.a0": 2.0, "schedule.n0": 1.0,
                    "schedule.power": 1.0})
    assert schedule_sum(rm) == pytest.approx(2.0 * (1 + 1 / 2 + 1 / 3))


def test_agc_stability_limits():
    table = pd.DataFrame({"model": "m", "method": "agc", "method_label": "agc λ=0.1 (batch)",
                          "a0": [1.0, 10.0, 100.0], "stable_fraction": [1.0, 1.0, 0.5]})
    row = agc_stability_limits(table).iloc[0]
    assert (row.largest_all_stable_a0, row.first_unstable_a0, row.a0_times_lambda) == (10.0, 100.0, 10.0)


def test_unit_step_ratios_class_units_by_their_initial_norm():
    """A small unit that grows past every threshold stays small: the classes are fixed at step 1."""
    eps, rows = 1e-3, []
    for unit in range(2 * MIN_UNITS):
        small = unit < MIN_UNITS
        w0 = 1e-4 if small else LARGE_FROM * eps
        for step, w in ((1, w0), (50, 1.0 if small else w0)):  # the small units grow to 1 by step 50
            abs_step = (2e-4 if step == 1 else 0.5) if small else 1e-2
            rows.append({"method_label": "agc", "seed": 0, "param": "hidden.0.weight", "unit": unit, "step": step,
                         "weight_norm": w, "abs_step": abs_step, "rel_step": abs_step / w})
    units = pd.DataFrame(rows)
    row = unit_step_ratios(units, eps).iloc[0]
    assert (row.small_units, row.large_units) == (MIN_UNITS, MIN_UNITS)
    assert row.rel_ratio_step1 == pytest.approx(2.0 / 0.1)  # (2e-4 / 1e-4) / (1e-2 / 0.1)
    assert row.abs_ratio_step1 == pytest.approx(2e-4 / 1e-2)
    assert row.rel_small == pytest.approx((2.0 + 0.5) / 2) and row.rel_ratio == pytest.approx(1.25 / 0.1)
    assert row.small_growth == pytest.approx(1e4)
    fewer = unit_step_ratios(units[units["unit"] > 0], eps).iloc[0]  # MIN_UNITS - 1 small units
    assert math.isnan(fewer.rel_ratio) and math.isnan(fewer.abs_ratio)


def test_increment_table_takes_the_worst_ratio_per_method():
    runs = pd.DataFrame([
        run("norm", 1.0, 0, "completed", 1.0, **{"summary.max_update_norm": 0.5, "summary.max_step_ratio": 0.5}),
        run("norm", 1.0, 1, "completed", 1.0, **{"summary.max_update_norm": 1.0, "summary.max_step_ratio": 1.00002}),
        run("agc", 1.0, 0, "completed", 1.0, **{"summary.max_update_norm": 3.0, "summary.max_step_ratio": 3.0,
                                                "summary.max_unit_update_ratio": 0.7, "summary.max_unit_step_ratio": 0.8}),
        run("none", 1.0, 0, "completed", 1.0, **{"summary.max_update_norm": 9.0, "summary.max_step_ratio": 9.0}),
    ])
    table = increment_table(runs).set_index("method_label")
    assert list(table.index) == ["agc λ=0.1 (batch)", "norm τ=1 (batch)"]  # unclipped runs have no bound
    assert table.loc["norm τ=1 (batch)", ["runs", "worst_update_ratio", "worst_step_ratio"]].tolist() == [2, 1.0, 1.00002]
    assert table.loc["agc λ=0.1 (batch)", ["worst_update_ratio", "worst_step_ratio"]].tolist() == [0.7, 0.8]


def test_trajectories_start_from_the_initial_norm():
    runs = pd.DataFrame([run("none", 10.0, 0, "diverged", 1e9, **{"summary.initial_param_norm": 7.0}),
                         run("none", 1.0, 0, "completed", 8.0, **{"summary.initial_param_norm": 7.0})])
    metrics = pd.DataFrame({"run_id": ["none-batch-10.0-0"] * 2 + ["none-batch-1.0-0"], "step": [5, 10, 5],
                            "metric": "train/param_norm", "value": [50.0, 1e9, 7.5]})
    paths = trajectories(runs, metrics, "train/param_norm", **{"schedule.a0": 10.0})
    assert paths["step"].tolist() == [0, 5, 10] and paths["value"].tolist() == [7.0, 50.0, 1e9]
    assert set(paths["summary.status"]) == {"diverged"}


def test_late_slope_fits_the_second_half_in_log_time_robustly():
    """Theil-Sen over the evaluations at n >= sqrt(N): a power law's exponent; a fall that
    stopped reads as the plateau; one outlying point (the last) moves it little, where least
    squares would follow it; and it says how many evaluations it rests on."""
    n = np.unique(np.geomspace(1, 10_000, 21).round()).astype(int)
    slope, points = late_slope(n, 3.0 * n**-0.5)
    assert slope == pytest.approx(-0.5) and points == int((n >= 100).sum()) == 11
    assert late_slope(n, np.minimum(1.0, 50.0 / n).clip(0.2))[0] == pytest.approx(0.0, abs=1e-12)
    outlier = 3.0 * n**-0.5
    outlier[-1] *= 100  # one bad last evaluation
    assert late_slope(n, outlier)[0] == pytest.approx(-0.5, abs=0.1)
    late = n >= 100
    least_squares = np.polyfit(np.log(n[late]), np.log(outlier[late]), 1)[0]
    assert least_squares > -0.1  # least squares: the last point alone cancels the fall
    assert late_slope([0, 1, 10, 100], [5.0, 1.0, 0.1, 0.01]) == (pytest.approx(-1.0), 2)  # step 0 skipped
    assert math.isnan(late_slope([0, 5], [1.0, 1.0])[0])


def test_convergence_summary_from_eval_paths():
    runs = pd.DataFrame([{"run_id": "r", "clip.method": "norm", "clip.threshold": 1.0, "clip.granularity": "sample",
                          "seed": 0}])
    steps = [0, 1, 10, 100, 1000]
    h = [2.0, 1.0, 0.1, 0.01, 0.001]
    rows = [("r", s, "eval/H_norm", v) for s, v in zip(steps, h)]
    rows += [("r", s, "eval/mean_grad_norm", 0.5) for s in steps] + [("r", 5, "train/loss", 9.0)]
    metrics = pd.DataFrame(rows, columns=["run_id", "step", "metric", "value"])
    paths = eval_paths(runs, metrics)
    assert set(paths["metric"]) == {"H_norm", "mean_grad_norm"} and (paths["method_label"] == "norm τ=1 (sample)").all()
    row = convergence_summary(paths).iloc[0]
    assert row["H_initial"] == 2.0 and row["H_final"] == 0.001 and row["H_ratio"] == pytest.approx(5e-4)
    assert row["H_slope"] == pytest.approx(-1.0) and row["H_slope_points"] == 2  # steps >= sqrt(1000): 100, 1000
    assert row["grad_over_H_final"] == pytest.approx(500.0)


def test_total_schedule_sum_is_the_hurwitz_zeta():
    run = pd.Series({"schedule.a0": 0.5, "schedule.n0": 1, "schedule.power": 2.0, "steps": 200_000,
                     "schedule.name": "robbins_monro"})
    assert total_schedule_sum(run) == pytest.approx(0.5 * math.pi**2 / 6)
    assert schedule_sum(run) == pytest.approx(total_schedule_sum(run), rel=1e-5)  # the partial sum approaches it
    assert total_schedule_sum(run.copy().replace({2.0: 1.0})) == math.inf  # p = 1: sum a(n) diverges
    tail = 0.5 * (math.pi**2 / 6 - sum(1 / m**2 for m in range(1, 101)))  # a(100) + a(101) + ...
    assert total_schedule_sum(run, start=100) == pytest.approx(tail, rel=1e-5)  # what is left after 100 steps
    with pytest.raises(ValueError, match="robbins_monro only"):
        total_schedule_sum(run.copy().replace({"robbins_monro": "cosine"}))


def test_freeze_table_compares_displacement_with_tau_times_the_step_sum():
    schedule = {"schedule.name": "robbins_monro", "schedule.a0": 1.0, "schedule.n0": 1, "schedule.power": 2.0}
    runs = pd.DataFrame([{"run_id": "r", "clip.method": "norm", "clip.threshold": 2.0, **schedule},
                         {"run_id": "u", "clip.method": "none", "clip.threshold": math.nan, **schedule}])
    metrics = pd.DataFrame([("r", 1, "train/dist_from_init", 1.0), ("r", 1, "train/sum_lr", 1.0),
                            ("r", 2, "train/dist_from_init", 3.0), ("r", 2, "train/sum_lr", 1.25),
                            ("u", 2, "train/dist_from_init", 9.0), ("u", 2, "train/sum_lr", 1.25)],
                           columns=["run_id", "step", "metric", "value"])
    table = freeze_table(runs, metrics)
    assert list(table["run_id"]) == ["r"]  # unclipped runs have no tau
    row = table.iloc[0]
    assert row["worst_displacement_ratio"] == pytest.approx(3.0 / 2.5)  # > 1: a violated bound shows
    assert row["final_displacement"] == 3.0 and row["frozen_radius"] == pytest.approx(2.0 * math.pi**2 / 6)


def test_ode_gap_summary():
    paths = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 2, "a0": [0.1] * 3 + [0.01] * 2, "seed": 0,
                          "t": [0.0, 1.0, 2.0, 0.0, 2.0], "gap": [0.0, 0.3, 0.1, 0.0, 0.02]})
    table = ode_gap_summary(paths).set_index("run_id")
    assert table.loc["a", "max_gap"] == 0.3 and table.loc["a", "final_gap"] == 0.1
    assert table.loc["a", "mean_gap"] == pytest.approx(0.4 / 3) and table.loc["b", "horizon"] == 2.0


def test_ode_seed_mean_gap_averages_out_noise_but_not_bias():
    """Two seeds whose iterates sit at ode + 0.1 + noise and ode + 0.1 - noise: each seed is 0.5
    away, their mean exactly the bias 0.1."""
    rows = []
    for seed, sign in ((0, 1.0), (1, -1.0)):
        for step in (0, 1, 2):
            rows.append({"a0": 0.1, "seed": seed, "step": step, "theta_w1": 1.0 + 0.1 + sign * 0.4, "ode_w1": 1.0,
                         "theta_b": 2.0 + sign * 0.3, "ode_b": 2.0})
    table = ode_seed_mean_gap(pd.DataFrame(rows))
    assert table.iloc[0]["seeds"] == 2
    assert table.iloc[0]["max_gap_of_seed_mean"] == pytest.approx(0.1)
