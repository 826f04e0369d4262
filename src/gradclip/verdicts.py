"""Verdicts as data: for each prediction of docs/CLAIMS.md, the verdict and the numbers behind it.

Each ``assess_*`` function reads the tables that ``scripts/figures.py collect`` writes into
``results/`` and returns a plain dict (JSON-ready: floats, ints, strings, lists, None for a value
that does not exist) holding its ``verdict``, the rule's thresholds and every number the report
quotes. ``assess_all`` gathers them; ``scripts/report.py`` writes the result as
``results/verdicts.json`` and renders ``results/REPORT.md`` from that file alone, so no number in
the report is computed outside this module, and the tests check the rules on data.

Verdict labels: ``holds`` / ``partly`` / ``fails``; ``untested`` where the data cannot decide
(plain SGD never failed, the run made no progress, the two candidates are too close to tell
apart, too few seeds or evaluations); ``implied by prediction 1`` where norm clipping's
stability follows from its bounded increments by arithmetic (||theta_0|| + tau sum a(n) < B);
``hypothesis not met`` where the runs break a hypothesis of the claim (AGC's weights grew
without control, against A3); ``not measured`` where the scale did not run the experiment.
Where a rule is decided per seed, the verdict comes from the Wilson interval on the fraction of
seeds that satisfy it: ``holds`` if the whole interval lies above MOST, ``fails`` if it lies
below, ``untested`` if it straddles it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from gradclip.analysis import label_setting, loglog_theil_sen, mean_interval, wilson_interval

NOT_MEASURED = "not measured"
UNTESTED = "untested"
IMPLIED = "implied by prediction 1"
HYPOTHESIS_NOT_MET = "hypothesis not met"

# Rounding allowance for a ratio that is <= 1 in exact arithmetic, computed in float32.
FLOAT_TOLERANCE = 1e-5
# ||H|| "still falling" at the end of a run: the robust (Theil-Sen) log-log slope of ||H|| over
# the second half of the run in log time is below this (a fall of at least ~11% per decade), and
# ||H|| ended below where it started.
FALLING_SLOPE = -0.05
# That slope needs at least this many evaluations of ||H||: a setting with a run that has fewer
# is untested.
MIN_EVALUATIONS = 10
# A rule decided per seed holds where the Wilson interval (95%) on the fraction of seeds that
# satisfy it lies wholly above this, and fails where it lies wholly below (most seeds must agree
# and the seeds must be enough to say so: 4 of 4 decide, 3 of 3 do not).
MOST = 0.5
# ODE tracking: a seed's gap is judged over at least this many values of a0, as every slope a
# rule reads (its slope against log a0, like the others against log n).
MIN_A0 = MIN_EVALUATIONS
# A3, AGC's extra hypothesis, read as "the weights stay under control": a seed breaks it where its
# ||theta|| ended more than this many times its start (a setting: see _gate).
A3_GROWTH = 2.0
# A run made no progress when its training loss fell by less than this fraction: its ||H|| then
# says nothing about convergence.
NO_PROGRESS = 0.02
# Assumption A1 on the exponent p of a(n) = a0 / (n + n0)^p: 0.5 < p <= 1.
A1_LOW, A1_HIGH = 0.5, 1.0
# The noise of a constant step vanished in a run (the premise of a noise floor fails) when its
# mean per-example gradient norm fell by this factor or more.
NOISE_VANISHED = 10.0
# A floor or a freeze: the final ||H|| more than this many times the best A1 schedule's.
ABOVE_BEST = 2.0
# The clipping bias is resolved at a point where the root of eq. (22) and the mean are this many
# times further apart than the final iterate is from the nearer of the two.
RESOLVED = 5.0
# Symmetric noise leaves no bias where the averaged iterate is within this fraction of Koloskova et
# al.'s scale min(sigma, sigma^2 / tau) of the mean (the skewed noises' biases |root - mean| are
# 0.23-0.30 of it where tau is below sigma, and fall to 0.05 and below as tau passes it).
NO_BIAS = 0.02
# AGC gives small units larger relative steps where their median relative step is at least this
# many times that of the large units of the same run.
SMALL_OVER_LARGE = 2.0


def plain(value):
    """A JSON-ready copy: numpy scalars to Python, nan to None, +-inf to 'inf' / '-inf'."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    return value


def pair(values) -> list[float]:
    """[smallest, largest] of a set of numbers."""
    values = pd.Series(values, dtype=float)
    return [float(values.min()), float(values.max())]


def combine(verdicts: list[str]) -> str:
    """One verdict from several: untested parts (and parts implied by prediction 1, or whose
    hypothesis was not met) do not count against the tested ones; agreeing parts keep their
    verdict, disagreeing ones make 'partly'."""
    tested = [v for v in verdicts if v not in (UNTESTED, IMPLIED, HYPOTHESIS_NOT_MET, NOT_MEASURED)]
    if not tested:
        return next((v for v in (IMPLIED, HYPOTHESIS_NOT_MET) if v in verdicts), UNTESTED)
    return tested[0] if all(v == tested[0] for v in tested) else "partly"


def seeds_verdict(satisfied: int, seeds: int) -> tuple[str, list[float]]:
    """A rule decided per seed: its verdict from the Wilson interval on the fraction of seeds
    that satisfy it (see MOST), and the interval."""
    low, high = wilson_interval(satisfied, seeds)
    verdict = UNTESTED if seeds == 0 else "holds" if low > MOST else "fails" if high < MOST else UNTESTED
    return verdict, [low, high]


def _gate(values: pd.Series, applies) -> str:
    """A condition that sets a setting aside (its runs made no progress, broke A3, lost their
    noise), ``applies`` to each seed's value, decided per seed like every rule: "yes" where the
    Wilson interval on the fraction of seeds it applies to lies above MOST, "no" where it lies
    below or where it applies to no seed (so that a setting of too few seeds to decide anything
    says so, not this), and "undecided" otherwise (the setting is then untested: its seeds
    cannot say whether it is a test of the claim). A seed without a value (NaN) is left out, as
    a median leaves it out."""
    values = values[values.notna()]
    hits = int(applies(values).sum())
    verdict = seeds_verdict(hits, len(values))[0]
    return "no" if hits == 0 else {"holds": "yes", "fails": "no"}.get(verdict, "undecided")


def tally(verdicts) -> dict[str, int]:
    """How many of ``verdicts`` (those of a rule's points) hold, fail and are untested."""
    verdicts = list(verdicts)
    return {v: verdicts.count(v) for v in ("holds", "fails", UNTESTED)}


def _read(results: Path, name: str) -> pd.DataFrame | None:
    """A table of results/, None if the experiment did not write it (an empty file: no rows)."""
    path = results / name
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


# -- prediction 1 -------------------------------------------------------------------------------------


def assess_increments(results: Path) -> dict:
    table = _read(results, "increments.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    if table.empty:
        return {"verdict": UNTESTED, "runs": 0}
    worst = float(table["worst_update_ratio"].max())
    return {"verdict": "holds" if worst <= 1 + FLOAT_TOLERANCE else "fails", "tolerance": FLOAT_TOLERANCE,
            "runs": int(table["runs"].sum()), "worst_update_ratio": worst,
            "worst_step_ratio": float(table["worst_step_ratio"].max()),
            "methods": table.sort_values("method_label")[["method_label", "runs", "worst_update_ratio",
                                                          "worst_step_ratio"]].to_dict("records")}


# -- prediction 2 and AGC's stability -------------------------------------------------------------------


def _arm(rows: pd.DataFrame) -> dict:
    """One method's points at the a0 where plain SGD is unstable. Norm clipping's points where
    ||theta_0|| + tau sum a(n) < B are implied by prediction 1 and judge nothing, unless a seed
    was lost there all the same (a non-finite loss or gradient with bounded weights): the verdict
    rests on the other points; with none left, the arm is 'implied by prediction 1'."""
    if rows.empty:
        return {"verdict": UNTESTED, "points": 0}
    implied = rows["implied_by_increments"].astype(bool)
    judged = rows[~implied | (rows["stable_fraction"] < 1)]
    point_verdicts = [seeds_verdict(int(r.stable), int(r.runs))[0] for r in judged.itertuples()]
    verdict = combine(point_verdicts) if point_verdicts else IMPLIED
    tested = rows[~implied]
    lost = rows[implied & (rows["stable_fraction"] < 1)]
    return {"verdict": verdict, "points": len(rows), "implied_points": int(implied.sum()),
            "judged_verdicts": tally(point_verdicts),
            "implied_points_that_lost_seeds": len(lost),
            "implied_lost_non_finite": int(lost["non_finite"].sum()) if "non_finite" in lost else None,
            "implied_lost_runs": int((lost["runs"] - lost["stable"]).sum()),
            "stable_fraction": pair(rows["stable_fraction"]),
            "tested_stable_fraction": pair(tested["stable_fraction"]) if len(tested) else None}


ARMS = ("norm", "agc", "agc_head_clipped")  # AGC with clip.exclude=[] is judged apart from the default


def assess_stability(results: Path) -> dict:
    table = _read(results, "stability.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    head_clipped = table["method_label"].str.endswith(", head clipped)")
    arm_of = np.where(table["method"] == "norm", "norm",
                      np.where(table["method"] == "agc", np.where(head_clipped, "agc_head_clipped", "agc"), "other"))
    table = table.assign(arm=arm_of)
    problems, by_arm = [], {arm: [] for arm in ARMS}
    for model, rows in table.groupby("model", sort=False):
        none = rows[rows["method"] == "none"].set_index("a0")
        # plain SGD is unstable where the Wilson interval of its stable fraction lies below MOST
        unstable_a0 = none[[seeds_verdict(int(r.stable), int(r.runs))[0] == "fails" for r in none.itertuples()]].index
        none = none["stable_fraction"]
        entry = {"model": model, "steps": int(rows["steps"].max()), "seeds": int(rows["runs"].max()),
                 "unstable_a0": list(unstable_a0), "arms": {}}
        if len(unstable_a0):
            at = rows[rows["a0"].isin(unstable_a0)]
            entry["unclipped_stable_fraction"] = pair(none[unstable_a0])
            smallest = rows[rows["a0"] == rows["a0"].min()]
            entry["smallest_a0"] = float(rows["a0"].min())
            entry["smallest_a0_stable_fraction"] = pair(smallest["stable_fraction"])
            for arm in ARMS:
                if (rows["arm"] == arm).any():
                    entry["arms"][arm] = _arm(at[at["arm"] == arm])
                    by_arm[arm].append(entry["arms"][arm]["verdict"])
        problems.append(entry)
    parts = {arm: combine(verdicts) for arm, verdicts in by_arm.items() if verdicts}
    if not any(by_arm.values()):
        parts = {arm: UNTESTED for arm in ARMS if (table["arm"] == arm).any()}
    norm = table[table["method"] == "norm"]
    limits = _read(results, "agc_stability.csv")
    return {"verdict": combine(list(parts.values())), "parts": parts, "bound": float(table["bound"].iloc[0]),
            "most": MOST, "seeds": int(table["runs"].max()), "failed_runs": int(table["failed_runs"].iloc[0]),
            "all_stable_interval": pair(wilson_interval(int(table["runs"].max()), int(table["runs"].max()))),
            "implied_points": int(norm["implied_by_increments"].sum()), "norm_points": len(norm),
            "problems": problems,
            "agc_limits": [] if limits is None else limits.to_dict("records")}


# -- prediction 3 -------------------------------------------------------------------------------------


def is_falling(rows: pd.DataFrame) -> pd.Series:
    return (rows["H_slope"] < FALLING_SLOPE) & (rows["H_final"] < rows["H_initial"])


UNDECIDED_PROGRESS = "too few seeds to tell whether it progressed"
IDLE = ("no progress", UNDECIDED_PROGRESS)  # the reasons of a setting untested for its progress
# AGC settings of one model and one a0*lambda are one experiment where their ||H|| and ||theta||
# ratios agree to this relative tolerance at both ends of their ranges over seeds (AGC that clips
# every unit at every step moves by a0*lambda alone).
SAME_TRAJECTORY = 1e-3


def falling_verdict(rows: pd.DataFrame) -> tuple[str, str, list[float]]:
    """A setting's verdict on prediction 3, why where it is untested or its hypothesis not met,
    and the Wilson interval on the fraction of seeds whose ||H|| is still falling. Two conditions
    set a setting aside, each decided per seed (:func:`_gate`): no progress (a seed's training
    loss fell by less than NO_PROGRESS: untested), and for AGC a broken A3 (a seed's ||theta||
    grew past A3_GROWTH: hypothesis not met; not recorded: untested); a condition the seeds
    cannot decide leaves the setting untested. A3 is looked at first: a hypothesis not met is not a
    test of the claim, however far the runs got. Else the seeds decide, through :func:`_per_seed`."""
    verdict, why, interval = _per_seed(is_falling(rows), rows)
    if rows["method_label"].iloc[0].startswith("agc"):  # (a hypothesis not met: whatever the progress)
        growth = rows["param_norm_final"] / rows["param_norm_initial"]
        if growth.isna().any():
            return UNTESTED, "‖θ‖ not recorded (A3 cannot be checked)", interval
        broken = _gate(growth, lambda g: g > A3_GROWTH)
        if broken == "yes":
            return HYPOTHESIS_NOT_MET, f"‖θ‖ grew past {A3_GROWTH:g}× (A3)", interval
        if broken == "undecided":
            return UNTESTED, "too few seeds to tell whether A3 holds", interval
    progress = _gate(rows["train_loss_final"] / rows["train_loss_initial"], lambda r: r > 1 - NO_PROGRESS)
    if progress != "no":
        return UNTESTED, "no progress" if progress == "yes" else UNDECIDED_PROGRESS, interval
    return verdict, why, interval


def assess_convergence(results: Path) -> dict:
    table = _read(results, "convergence_summary.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    groups, verdicts = [], {}
    for (model, label, a0), rows in table.groupby(["model", "method_label", "a0"], sort=True):
        verdict, why, interval = falling_verdict(rows)
        verdicts.setdefault(label, []).append(verdict)
        groups.append({"model": model, "method_label": label, "a0": a0, "seeds": len(rows),
                       "last_step": int(rows["last_step"].max()), "verdict": verdict, "why": why,
                       "falling_interval": interval,
                       "evaluations": int(rows["H_slope_points"].min()),
                       "train_loss_initial": rows["train_loss_initial"].median(),
                       "train_loss_final": rows["train_loss_final"].median(),
                       "H_initial": pair(rows["H_initial"]), "H_final": pair(rows["H_final"]),
                       "H_ratio": pair(rows["H_ratio"]), "H_slope": pair(rows["H_slope"]),
                       "falling": int(is_falling(rows).sum()),
                       "param_growth": pair(rows["param_norm_final"] / rows["param_norm_initial"])})
    parts = {label: combine(v) for label, v in verdicts.items()}
    first = table.iloc[0]
    agc = [g for g in groups if g["method_label"].startswith("agc")]
    grid = []
    for g in agc:
        lam = label_setting(g["method_label"])[1]
        product = float(f"{g['a0'] * lam:.6g}")  # 3 x 0.1 is 0.30000000000000004 in floats
        grid.append({"model": g["model"], "method_label": g["method_label"], "lambda": lam, "a0": g["a0"],
                     "a0_lambda": product, "falling": g["falling"], "seeds": g["seeds"], "verdict": g["verdict"],
                     "why": g["why"], "grew": g["why"] not in IDLE and g["H_ratio"][0] > 1,
                     "H_ratio": g["H_ratio"], "param_growth": g["param_growth"]})
    grid.sort(key=lambda g: (g["model"], g["a0_lambda"], g["lambda"]))
    condition = {}
    for model in sorted({g["model"] for g in grid}):
        mine = [g for g in grid if g["model"] == model]
        falling = sorted({g["a0_lambda"] for g in mine if g["verdict"] == "holds"})
        grew = sorted({g["a0_lambda"] for g in mine if g["grew"]})
        idle = sorted({g["a0_lambda"] for g in mine if g["why"] in IDLE})
        uncontrolled = sorted({g["a0_lambda"] for g in mine if g["verdict"] == HYPOTHESIS_NOT_MET})
        condition[model] = {"a0_lambda_grid": sorted({g["a0_lambda"] for g in mine}),
                            "falling_most_seeds": falling, "grew_every_seed": grew, "no_progress": idle,
                            "hypothesis_not_met": uncontrolled,
                            # the two sets lie on either side of one a0*lambda: a condition the data point to
                            "separated": bool(falling and grew and max(falling) < min(grew))}
    return {"verdict": combine(list(parts.values())), "parts": parts, "falling_slope": FALLING_SLOPE,
            "min_evaluations": MIN_EVALUATIONS, "most": MOST, "a3_growth": A3_GROWTH, "no_progress": NO_PROGRESS,
            "data": first["data"], "n0": first["n0"], "power": first["power"],
            "horizons": {m: int(rows["last_step"].max()) for m, rows in table.groupby("model")},
            "groups": groups, "agc_grid": grid, "agc_condition": condition, "same_trajectory": SAME_TRAJECTORY,
            "agc_alike": _alike_settings(grid)}


def _alike_settings(grid: list[dict]) -> list[dict]:
    """The pairs of AGC settings of one model and one a0*lambda whose ||H|| and ||theta|| ratios
    agree to SAME_TRAJECTORY at both ends of their ranges over seeds: one experiment, not two."""
    def alike(g: dict, h: dict) -> bool:
        return all(math.isclose(x, y, rel_tol=SAME_TRAJECTORY) for key in ("H_ratio", "param_growth")
                   for x, y in zip(g[key], h[key]))

    return [{"model": g["model"], "a0_lambda": g["a0_lambda"],
             "settings": [{"lambda": g["lambda"], "a0": g["a0"]}, {"lambda": h["lambda"], "a0": h["a0"]}]}
            for i, g in enumerate(grid) for h in grid[i + 1:]
            if (g["model"], g["a0_lambda"]) == (h["model"], h["a0_lambda"]) and alike(g, h)]


# -- prediction 4 -------------------------------------------------------------------------------------


def assess_step_sizes(results: Path) -> dict:
    """Prediction 4, decided per seed (:func:`seeds_verdict`). A noise floor: a constant step's
    run ends more than ABOVE_BEST times above the best A1 schedule's median ||H|| and its ||H||
    no longer falls (late slope >= FALLING_SLOPE); untested where the noise it would come from
    vanished (per-example gradients shrank NOISE_VANISHED-fold: the model fits its data; decided
    per seed, :func:`_gate`). A
    freeze: a p > 1 run stays inside its freeze radius and ends more than ABOVE_BEST times above
    the best A1 schedule with |late slope| < -FALLING_SLOPE. p <= 0.5 is reported, not judged:
    with clipping the noise is bounded, so Sigma a^2 = infinity need not show."""
    table = _read(results, "step_sizes.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    problems, verdicts = [], []
    for problem, rows in table.groupby("problem", sort=True):
        median = rows.groupby("power")["H_final"].median()
        a1 = median[(median.index > A1_LOW) & (median.index <= A1_HIGH)]
        best_p, best_a1 = float(a1.idxmin()), float(a1.min())
        entry = {"problem": problem, "best_a1_power": best_p, "best_a1_H": best_a1, "a1_H": pair(a1),
                 "H_final": [{"power": p, "median": median[p], "range": pair(rows.loc[rows["power"] == p, "H_final"])}
                             for p in median.index]}
        if 0 in median.index:
            constant = rows[rows["power"] == 0]
            drops = constant["sample_grad_initial"] / constant["sample_grad_final"]
            noise_drop = float(drops.median())
            floor = (constant["H_final"] > ABOVE_BEST * best_a1) & (constant["H_slope"] >= FALLING_SLOPE)
            verdict, why, interval = _per_seed(floor, constant)
            vanished = _gate(drops, lambda d: d >= NOISE_VANISHED)
            if vanished != "no":
                verdict, why = UNTESTED, ("the noise vanished" if vanished == "yes"
                                          else "too few seeds to tell whether the noise vanished")
            verdicts.append(verdict)
            entry["constant"] = {"verdict": verdict, "why": why, "H": median[0], "over_best": median[0] / best_a1,
                                 "slope": pair(constant["H_slope"]), "noise_drop": noise_drop,
                                 "seeds": len(constant), "floor_seeds": int(floor.sum()),
                                 "interval": interval,
                                 "train_loss_final": constant["train_loss_final"].median()}
        low = median[(median.index > 0) & (median.index <= A1_LOW)]
        if len(low):
            entry["no_square_sum"] = {"H": [{"power": p, "median": v} for p, v in low.items()],
                                      "worse": bool(low.min() > ABOVE_BEST * best_a1)}
        frozen = rows[rows["power"] > 1]
        if len(frozen):
            inside = frozen["final_displacement"] <= frozen["frozen_radius"]
            stuck = (frozen["H_final"] > ABOVE_BEST * best_a1) & (frozen["H_slope"].abs() < -FALLING_SLOPE)
            verdict, why, interval = _per_seed(inside & stuck, frozen)
            verdicts.append(verdict)
            entry["freeze"] = {"verdict": verdict, "why": why, "inside": int(inside.sum()), "stuck": int(stuck.sum()),
                               "seeds": len(frozen), "interval": interval,
                               "slope": pair(frozen["H_slope"]), "displacement": frozen["final_displacement"].max(),
                               "radius": pair(frozen["frozen_radius"]), "remaining": pair(frozen["remaining_radius"]),
                               "H": frozen["H_final"].median(), "over_best": frozen["H_final"].median() / best_a1}
        problems.append(entry)
    return {"verdict": combine(verdicts), "falling_slope": FALLING_SLOPE, "above_best": ABOVE_BEST,
            "noise_vanished": NOISE_VANISHED, "min_evaluations": MIN_EVALUATIONS, "most": MOST,
            "powers": sorted(table["power"].unique()), "problems": problems}


def _per_seed(satisfied: pd.Series, rows: pd.DataFrame) -> tuple[str, str, list[float]]:
    """The verdict of a per-seed rule over a setting's runs ``rows`` (untested if any run has
    fewer than MIN_EVALUATIONS evaluations behind its slope), why where it is untested, and the
    Wilson interval on the fraction of seeds that satisfy it."""
    verdict, interval = seeds_verdict(int(satisfied.sum()), len(rows))
    if rows["H_slope_points"].min() < MIN_EVALUATIONS:
        return UNTESTED, f"fewer than {MIN_EVALUATIONS} evaluations", interval
    return verdict, "too few seeds agree" if verdict == UNTESTED else "", interval


# -- prediction 5 -------------------------------------------------------------------------------------


def assess_limit_set(results: Path) -> dict:
    """Prediction 5. A (problem, noise, tau) point of per-sample clipping is resolved where the
    root of eq. (22) and the mean are RESOLVED times further apart than the median final iterate
    is from the nearer of the two, and its runs converged (that distance is not RESOLVED times the
    median point's); at a resolved point the seeds whose iterate ended nearer the root than the
    mean decide, through :func:`seeds_verdict`."""
    table = _read(results, "limit_set.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    keys = ["problem", "noise", "granularity", "tau"]
    medians = table.groupby(keys, sort=True).median(numeric_only=True).reset_index()
    sample = medians[medians["granularity"] == "sample"].copy()
    # Points whose iterate is still far from both candidates (the nearer of the root and the mean,
    # so that a run that ends at the mean counts as converged, and can fail), by the same factor
    # against the median point: the runs there had not converged, and resolve nothing.
    error = sample[["dist_to_root", "dist_to_mean"]].min(axis=1)
    converged = error <= RESOLVED * error.median()
    sample["resolved"] = (sample["root_to_mean"] > RESOLVED * error) & converged
    runs = table[table["granularity"] == "sample"].assign(nearer=lambda t: t["dist_to_root"] < t["dist_to_mean"])
    counts = runs.groupby(["problem", "noise", "tau"])["nearer"].agg(["sum", "size"]).astype(int)
    sample = sample.join(counts.rename(columns={"sum": "seeds_nearer_root", "size": "seeds"}),
                         on=["problem", "noise", "tau"])
    sample["verdict"] = [seeds_verdict(r.seeds_nearer_root, r.seeds)[0] if r.resolved else UNTESTED
                         for r in sample.itertuples()]
    resolved = sample[sample["resolved"]]
    closer = resolved["dist_to_root"] < resolved["dist_to_mean"]
    verdict = UNTESTED if resolved.empty else combine(list(resolved["verdict"]))
    first = table.iloc[0]
    biggest = sample.loc[sample["root_to_mean"].idxmax()]
    columns = ["problem", "noise", "tau", "root_to_mean", "dist_to_root", "dist_to_mean"]
    result = {"verdict": verdict, "resolved_factor": RESOLVED, "most": MOST, "points": len(sample),
              "resolved": len(resolved), "nearer_root": int(closer.sum()),
              "resolved_verdicts": tally(resolved["verdict"]),
              "batch_size": int(first["batch_size"]), "seeds": pair(sample["seeds"]),
              "steps": {p: int(rows["steps"].max()) for p, rows in table.groupby("problem")},
              "largest_bias": biggest[columns].to_dict(), "median_error": error.median(),
              "unconverged": sample.loc[~converged, columns].to_dict("records"),
              "sample": sample[columns + ["resolved", "seeds", "seeds_nearer_root", "verdict"]].to_dict("records")}
    batch = table[table["granularity"] == "batch"]
    if len(batch) and "dist_to_batch_root" in batch:
        result["batch"] = _batch_fixed_point(batch)
    result["network"] = _network_bias(results)
    return result


def _batch_fixed_point(batch: pd.DataFrame) -> dict:
    """Batch clipping's own fixed point (the Huber estimate of the batch means) at each (noise,
    tau) point: resolved from the root of eq. (22) and, apart, from the mean, each where the two
    are RESOLVED times further apart than the median iterate is from the nearer one; where it is
    resolved from both, the seeds that ended nearer it than either decide (:func:`seeds_verdict`)."""
    batch = batch.assign(batch_root_to_mean=(batch["batch_root"] - pd.to_numeric(batch["mean"], errors="coerce")).abs())
    batch = batch.assign(nearer=(batch["dist_to_batch_root"] < batch["dist_to_root"])
                         & (batch["dist_to_batch_root"] < batch["dist_to_mean"]))
    points = batch.groupby(["noise", "tau"], sort=True).agg(
        dist_to_batch_root=("dist_to_batch_root", "median"), dist_to_root=("dist_to_root", "median"),
        dist_to_mean=("dist_to_mean", "median"), batch_root_to_root=("batch_root_to_root", "median"),
        batch_root_to_mean=("batch_root_to_mean", "median"), seeds=("seed", "size"),
        seeds_nearer=("nearer", "sum")).reset_index()
    from_root = points["batch_root_to_root"] > RESOLVED * points[["dist_to_batch_root", "dist_to_root"]].min(axis=1)
    from_mean = points["batch_root_to_mean"] > RESOLVED * points[["dist_to_batch_root", "dist_to_mean"]].min(axis=1)
    points["resolved"] = from_root & from_mean
    points["verdict"] = [seeds_verdict(int(r.seeds_nearer), int(r.seeds))[0] if r.resolved else UNTESTED
                         for r in points.itertuples()]
    resolved = points[points["resolved"]]
    return {"points": len(points), "resolved_from_root": int(from_root.sum()), "resolved_from_mean": int(from_mean.sum()),
            "resolved": len(resolved),
            "nearer_batch_root": int(((resolved["dist_to_batch_root"] < resolved["dist_to_root"])
                                      & (resolved["dist_to_batch_root"] < resolved["dist_to_mean"])).sum()),
            "resolved_verdicts": tally(resolved["verdict"]),
            "draws": int(batch["batch_root_draws"].iloc[0]), "largest_error": batch["batch_root_error"].max(),
            "rows": points[["noise", "tau", "dist_to_batch_root", "dist_to_root", "dist_to_mean", "batch_root_to_mean",
                            "resolved", "seeds", "seeds_nearer", "verdict"]].to_dict("records")}


def _network_bias(results: Path) -> dict | None:
    """Prediction 5 on a network: the unclipped mean gradient against H in the convergence runs."""
    table = _read(results, "convergence_summary.csv")
    if table is None:
        return None
    rows = []
    for (model, label, a0), group in table.groupby(["model", "method_label", "a0"], sort=True):
        rows.append({"model": model, "method_label": label, "a0": a0,
                     "mean_grad_initial": group["mean_grad_initial"].median(),
                     "mean_grad_final": group["mean_grad_final"].median(), "H_final": group["H_final"].median(),
                     "ratio_initial": (group["mean_grad_initial"] / group["H_initial"]).median(),
                     "ratio_final": group["grad_over_H_final"].median()})
    result = {"data": table["data"].iloc[0], "rows": rows}
    norm = table[table["method_label"].str.startswith("norm")]
    if len(norm):
        result["norm"] = {
            "H_ratio": pair(norm["H_ratio"]), "grad_change": pair(norm["mean_grad_final"] / norm["mean_grad_initial"]),
            "grad_grew_on": sorted(model for model, group in norm.groupby("model")
                                   if group["mean_grad_final"].median() > group["mean_grad_initial"].median()),
            "ratio_initial": pair(norm["mean_grad_initial"] / norm["H_initial"]),
            "ratio_final": pair(norm["grad_over_H_final"])}
    return result


# -- prediction 6 -------------------------------------------------------------------------------------


def log_slope(values: pd.Series) -> float:
    """Slope of log(value) against log(index): the exponent of a power law."""
    return float(np.polyfit(np.log(values.index), np.log(values.values), 1)[0]) if len(values) > 1 else math.nan


def assess_ode_tracking(results: Path) -> dict:
    """Prediction 6, decided per seed: a seed tracks the ODE if its largest gap shrinks with a0,
    the Theil-Sen slope of log gap against log a0 over its a0 grid (at least MIN_A0 values) above
    -FALLING_SLOPE (the gap at least ~11% smaller per decade of a0); the seeds through
    :func:`seeds_verdict`. Clipping's own part: where the clipped ODE and the unclipped gradient
    flow lie RESOLVED times further apart (at most, over the window) than the median iterate at
    the smallest a0 is from the clipped ODE, the seeds whose iterates at the smallest a0 ended
    nearer the clipped ODE than the unclipped flow decide whether it is the clipped ODE they
    track; the two parts combine into the verdict."""
    gaps = _read(results, "ode_gaps.csv")
    if gaps is None:
        return {"verdict": NOT_MEASURED}
    median = gaps.groupby("a0")["max_gap"].median().sort_index(ascending=False)
    shrinks = bool((median.diff().dropna() < 0).all())
    exponents = gaps.groupby("seed").apply(lambda g: loglog_theil_sen(g["a0"], g["max_gap"]), include_groups=False)
    tracking = exponents > -FALLING_SLOPE
    verdict, interval = seeds_verdict(int(tracking.sum()), len(exponents))
    why = "too few seeds agree" if verdict == UNTESTED else ""
    if gaps.groupby("seed")["a0"].nunique().min() < MIN_A0:
        verdict, why = UNTESTED, f"fewer than {MIN_A0} values of a0"
    tracking_verdict = verdict
    clipped = _clipped_not_unclipped(gaps, _read(results, "ode_solution.csv"))
    if clipped and tracking_verdict != UNTESTED:  # (it cannot stand in for tracking the data cannot decide)
        verdict = combine([tracking_verdict, clipped["verdict"]])
    means = _read(results, "ode_seed_mean_gaps.csv")
    mean = means.set_index("a0")["max_gap_of_seed_mean"] if means is not None else pd.Series(dtype=float)
    result = {"verdict": verdict, "why": why, "tracking_verdict": tracking_verdict, "clipped_ode": clipped,
              "shrinks": shrinks, "horizon": gaps["horizon"].min(),
              "exponent": log_slope(median), "seed_exponents": pair(exponents), "tracking_seeds": int(tracking.sum()),
              "seeds": len(exponents), "interval": interval, "min_exponent": -FALLING_SLOPE, "most": MOST,
              "rows": [{"a0": a0, "seeds": int((gaps["a0"] == a0).sum()), "max_gap": value,
                        "max_gap_unclipped": (gaps.loc[gaps["a0"] == a0, "max_gap_unclipped"].median()
                                              if "max_gap_unclipped" in gaps else None),
                        "range": pair(gaps.loc[gaps["a0"] == a0, "max_gap"]),
                        "seed_mean_gap": mean[a0] if a0 in mean else None} for a0, value in median.items()]}
    if len(mean) > 1:
        seeds = int(means["seeds"].min())
        result["seed_mean"] = {"seeds": seeds, "gap": pair(mean), "exponent": log_slope(mean),
                               "over_single": pair(mean / median), "noise_only": seeds ** -0.5}
    return result


def _clipped_not_unclipped(gaps: pd.DataFrame, solution: pd.DataFrame | None) -> dict | None:
    """Whether the iterates at the smallest a0 track the clipped ODE rather than the unclipped
    gradient flow (see :func:`assess_ode_tracking`); None where the tables do not hold both."""
    if solution is None or "flows_apart" not in solution or "max_gap_unclipped" not in gaps:
        return None
    smallest = gaps[gaps["a0"] == gaps["a0"].min()]
    apart = float(solution["flows_apart"].max())
    nearer = int((smallest["max_gap"] < smallest["max_gap_unclipped"]).sum())
    resolved = apart > RESOLVED * float(smallest["max_gap"].median())
    verdict, interval = seeds_verdict(nearer, len(smallest))
    return {"verdict": verdict if resolved else UNTESTED, "resolved": resolved, "resolved_factor": RESOLVED,
            "a0": float(smallest["a0"].iloc[0]),
            "flows_apart": apart, "gap": float(smallest["max_gap"].median()),
            "gap_unclipped": float(smallest["max_gap_unclipped"].median()), "nearer_clipped": nearer,
            "seeds": len(smallest), "interval": interval}


# -- prediction 7 -------------------------------------------------------------------------------------


def assess_agc_small_weights(results: Path) -> dict:
    """Prediction 7, decided per seed within each run: a unit is small if its initial norm is below
    eps and large from LARGE_FROM x eps (gradclip.analysis.unit_step_ratios). The relative
    reading (small units' relative step at least SMALL_OVER_LARGE x the large units') and the
    absolute reading (small units' absolute step larger) are each judged on AGC's seeds; the
    verdict combines the two. The other methods' ratios and AGC's step-1 relative step over
    theirs (same weights, same batch) are reported, not judged."""
    ratios = _read(results, "agc_unit_ratios.csv")
    if ratios is None:
        return {"verdict": NOT_MEASURED}
    settings = pd.read_csv(results / "agc_settings.csv").iloc[0]
    result = {"verdict": UNTESTED, "lambda": float(settings["clip_factor"]), "eps": float(settings["eps"]),
              "large_from": float(settings["large_from"]), "min_units": int(settings["min_units"]),
              "steps": int(settings["steps"]), "small_over_large": SMALL_OVER_LARGE}
    methods = []
    for label, runs in ratios.groupby("method_label", sort=True):
        judged = runs.dropna(subset=["rel_ratio", "abs_ratio"])
        relative, rel_interval = seeds_verdict(int((judged["rel_ratio"] > SMALL_OVER_LARGE).sum()), len(judged))
        absolute, abs_interval = seeds_verdict(int((judged["abs_ratio"] > 1.0).sum()), len(judged))
        methods.append({"method_label": label, "seeds": len(runs), "judged_seeds": len(judged),
                        "small_units": float(runs["small_units"].median()),
                        "large_units": float(runs["large_units"].median()),
                        "rel_ratio": float(judged["rel_ratio"].median()), "abs_ratio": float(judged["abs_ratio"].median()),
                        "rel_ratio_step1": float(judged["rel_ratio_step1"].median()),
                        "rel_ratio_range": [float(judged["rel_ratio"].min()), float(judged["rel_ratio"].max())],
                        "abs_ratio_range": [float(judged["abs_ratio"].min()), float(judged["abs_ratio"].max())],
                        "relative": relative, "relative_interval": rel_interval,
                        "relative_seeds": int((judged["rel_ratio"] > SMALL_OVER_LARGE).sum()),
                        "absolute": absolute, "absolute_interval": abs_interval,
                        "absolute_seeds": int((judged["abs_ratio"] > 1.0).sum()),
                        "small_growth": float(runs["small_growth"].median())})
    result["methods"] = methods
    agc = [m for m in methods if m["method_label"].startswith("agc")]
    if not agc:
        return result | {"why": "no AGC run"}
    agc = agc[0]
    by_seed = ratios.set_index(["method_label", "seed"])["rel_small_step1"]
    ours = by_seed.xs(agc["method_label"])
    over, below, pairs = {}, {}, {}
    for m in methods:
        if m is not agc:
            ratio = (ours / by_seed.xs(m["method_label"])).dropna()
            over[m["method_label"]], below[m["method_label"]] = float(ratio.median()), int((ratio < 1).sum())
            pairs[m["method_label"]] = len(ratio)
    others = [m for m in methods if m is not agc]
    return result | {"verdict": combine([agc["relative"], agc["absolute"]]), "agc_label": agc["method_label"],
                     "relative": agc["relative"], "absolute": agc["absolute"], "agc_rel_small_step1_over": over,
                     "agc_below_at_step1": below, "agc_pairs_at_step1": pairs,
                     "agc_least_relative_step1": all(agc["rel_ratio_step1"] < m["rel_ratio_step1"] for m in others),
                     "others_small_growth": [min(m["small_growth"] for m in others),
                                             max(m["small_growth"] for m in others)] if others else None}


# -- the clipping bias against tau and the noise shape --------------------------------------------------


def _nearer(to_candidate: pd.Series, to_other: pd.Series, apart: float, error: float = 0.0) -> dict:
    """Per seed, is the iterate nearer the candidate than the other answer (distances per seed),
    decided where the two lie ``apart`` more than RESOLVED times the median seed's distance to
    the nearer of them, and RESOLVED times the candidate's own numerical ``error`` (else
    untested: the runs, or the computed answer, cannot tell them apart)."""
    near = float(np.median(np.minimum(to_candidate, to_other)))
    nearer = int((to_candidate < to_other).sum())
    resolved = bool(apart > RESOLVED * max(near, error))
    return {"apart": float(apart), "seeds_nearer": nearer, "resolved": resolved,
            "verdict": seeds_verdict(nearer, len(to_candidate))[0] if resolved else UNTESTED}


def assess_clipping_bias(results: Path) -> dict:
    """The bias of per-sample clipping on the location problem, per (noise, tau) point, decided
    per seed on the averaged iterate theta_avg (:func:`seeds_verdict`):

    * symmetric noise, no bias: a seed holds where |theta_avg - mean| <= NO_BIAS x the scale
      min(sigma, sigma^2 / tau) of Koloskova et al. (2023); a point is untested where the seeds'
      spread (their standard deviation), or their drift (the median distance between the second
      half's and the last quarter's averages), exceeds half that tolerance;
    * skewed noise, the root of eq. (22): a seed holds where theta_avg is nearer the root than the
      mean (and, as a second rule, than the minimiser of the mean scaled loss l/c); a point is
      resolved for a rule where the two candidates are RESOLVED times further apart than the
      median seed is from the nearer of them.

    The bias against Koloskova's scale is reported, not judged."""
    table = _read(results, "clipping_bias.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    table = table.assign(bias=table["theta_avg"] - table["mean"], to_root=(table["theta_avg"] - table["root"]).abs(),
                         to_mean=(table["theta_avg"] - table["mean"]).abs(),
                         to_scaled=(table["theta_avg"] - table["scaled_min"]).abs())
    points = []
    order = {noise: k for k, noise in enumerate(dict.fromkeys(table["noise"]))}  # as collect sorts: symmetric first
    groups = sorted(table.groupby(["noise", "tau"]), key=lambda item: (order[item[0][0]], item[0][1]))
    for (noise, tau), rows in groups:
        first = rows.iloc[0]
        point = {"noise": noise, "symmetric": bool(first["symmetric"]), "tau": tau, "seeds": len(rows),
                 "scale": first["scale"], "sigma": first["sigma"], "root_bias": first["root"] - first["mean"],
                 "scaled_bias": first["scaled_min"] - first["mean"], "bias": rows["bias"].median(),
                 "spread": rows["theta_avg"].std(ddof=1) if len(rows) > 1 else math.nan,
                 "bias_over_scale": (rows["to_mean"] / rows["scale"]).median(),
                 "root_bias_over_scale": abs(first["root"] - first["mean"]) / first["scale"]}
        point["drift"] = float((rows["theta_avg"] - rows["theta_late"]).abs().median())
        if point["symmetric"]:
            tolerance = NO_BIAS * point["scale"]
            point["tolerance"] = tolerance
            point["seeds_unbiased"] = int((rows["to_mean"] <= tolerance).sum())
            # Judged only where the seeds are precise enough (their spread) and the runs had settled
            # (the second half's average near the last quarter's: a run still climbing from theta_0
            # would show its transient as a bias).
            point["resolved"] = bool(point["spread"] <= tolerance / 2 and point["drift"] <= tolerance / 2)
            point["verdict"] = (seeds_verdict(point["seeds_unbiased"], len(rows))[0] if point["resolved"]
                                else UNTESTED)
        else:
            point["vs_mean"] = _nearer(rows["to_root"], rows["to_mean"], abs(first["root"] - first["mean"]))
            point["vs_scaled"] = _nearer(rows["to_root"], rows["to_scaled"], abs(first["root"] - first["scaled_min"]))
        points.append(point)
    symmetric = [p for p in points if p["symmetric"]]
    skewed = [p for p in points if not p["symmetric"]]
    # (combine of no parts is untested)
    parts = {"symmetric: no bias": combine([p["verdict"] for p in symmetric]),
             "skewed: root, not mean": combine([p["vs_mean"]["verdict"] for p in skewed]),
             "skewed: root, not l/c minimiser": combine([p["vs_scaled"]["verdict"] for p in skewed])}
    noises = {}
    for noise, rows in table.groupby("noise", sort=False):
        mine = [p for p in points if p["noise"] == noise]
        noises[noise] = {"symmetric": bool(rows["symmetric"].iloc[0]), "sigma": float(rows["sigma"].iloc[0]),
                         "largest_root_bias": max(abs(p["root_bias"]) for p in mine),
                         "largest_root_bias_over_scale": max(p["root_bias_over_scale"] for p in mine),
                         "largest_bias_over_scale": max(p["bias_over_scale"] for p in mine)}
    first = table.iloc[0]
    return {"verdict": combine(list(parts.values())), "parts": parts, "no_bias": NO_BIAS, "resolved_factor": RESOLVED,
            "steps": int(first["steps"]), "averaged_over": int(table["averaged_over"].min()),
            "seeds": pair(table.groupby(["noise", "tau"]).size()), "taus": sorted(table["tau"].unique()),
            "noises": noises, "points": points,
            "tallies": {"symmetric": tally(p["verdict"] for p in symmetric),
                        "vs_mean": tally(p["vs_mean"]["verdict"] for p in skewed),
                        "vs_scaled": tally(p["vs_scaled"]["verdict"] for p in skewed)}}


# -- batch clipping's fixed point against the batch size ------------------------------------------------


def assess_batch_fixed_point(results: Path) -> dict:
    """Per (problem, granularity, B) point, decided per seed on the averaged iterate
    (:func:`_nearer`): per-sample runs end nearer the root of eq. (22) than the mean at every B;
    batch runs (B > 1) end nearer batch clipping's own fixed point than the root, and, where it
    stands apart from the mean too, nearer it than the mean. At B = 1 the two algorithms are one:
    the largest difference of the averaged iterates of a seed's two runs is reported."""
    table = _read(results, "batch_fixed_point.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    points = []
    for (problem, granularity, batch), rows in table.groupby(["problem", "granularity", "batch_size"], sort=True):
        first = rows.iloc[0]
        point = {"problem": problem, "granularity": granularity, "batch_size": int(batch), "seeds": len(rows),
                 "position": float(rows["position"].median()), "batch_root_position": float(first["batch_root_position"]),
                 "root_to_mean": float(first["root_to_mean"]), "batch_root_to_mean": float(first["batch_root_to_mean"]),
                 "batch_root_error": float(first["batch_root_error"]),
                 "dist_to_root": float(rows["dist_to_root"].median()),
                 "dist_to_batch_root": float(rows["dist_to_batch_root"].median())}
        if granularity == "sample":
            point["root_vs_mean"] = _nearer(rows["dist_to_root"], rows["dist_to_mean"], first["root_to_mean"])
        elif batch > 1:
            point["batch_vs_root"] = _nearer(rows["dist_to_batch_root"], rows["dist_to_root"],
                                             first["batch_root_to_root"], first["batch_root_error"])
            point["batch_vs_mean"] = _nearer(rows["dist_to_batch_root"], rows["dist_to_mean"],
                                             first["batch_root_to_mean"], first["batch_root_error"])
        points.append(point)
    sample = [p for p in points if p["granularity"] == "sample"]
    batch = [p for p in points if p["granularity"] == "batch" and p["batch_size"] > 1]
    parts = {"per-sample: the root at every B": combine([p["root_vs_mean"]["verdict"] for p in sample]),
             "batch: its own fixed point, not the root": combine([p["batch_vs_root"]["verdict"] for p in batch]),
             "batch: its own fixed point, not the mean": combine([p["batch_vs_mean"]["verdict"] for p in batch])}
    ones = table[table["batch_size"] == 1].pivot_table(index=["problem", "seed"], columns="granularity",
                                                       values="theta", aggfunc="first")
    same = None
    if {"batch", "sample"} <= set(ones.columns) and len(ones.dropna()):
        def vector(text) -> np.ndarray:  # (a one-number theta reads back as a float)
            return np.array(str(text).split(), dtype=float)

        same = max(float(np.max(np.abs(vector(b) - vector(s))))
                   for b, s in ones.dropna()[["batch", "sample"]].itertuples(index=False))
    first = table.iloc[0]
    return {"verdict": combine(list(parts.values())), "parts": parts, "resolved_factor": RESOLVED,
            "steps": {p: int(rows["steps"].max()) for p, rows in table.groupby("problem")},
            "tau": {p: float(rows["tau"].iloc[0]) for p, rows in table.groupby("problem")},
            "noise": str(first["noise"]), "draws": int(first["batch_root_draws"]),
            "largest_error": float(table["batch_root_error"].max()),
            "seeds": pair(table.groupby(["problem", "granularity", "batch_size"]).size()),
            "batch_sizes": sorted(int(b) for b in table["batch_size"].unique()),
            "batch_one_largest_difference": same, "points": points,
            "tallies": {"sample": tally(p["root_vs_mean"]["verdict"] for p in sample),
                        "batch_vs_root": tally(p["batch_vs_root"]["verdict"] for p in batch),
                        "batch_vs_mean": tally(p["batch_vs_mean"]["verdict"] for p in batch)}}


def memorised_at_matched_fit(table: pd.DataFrame) -> pd.DataFrame:
    """Each clipped run at a noisy setting against plain SGD of its seed and setting at the same
    clean fit: plain SGD's runs over its grid of a0 trace memorised against clean_fit, and that
    curve (sorted by clean fit) is read at the run's clean fit, linearly between its points
    (``plain_memorised``) and, as a check on the interpolation, by a monotone cubic (PCHIP,
    ``plain_memorised_pchip``). Only settings where plain SGD ran a grid (two a0 or more) are
    compared. A run whose clean fit lies outside the curve's range has no comparison (nan), nor
    has one that equals the curve (a tie: a run that fits every label, at the end of a curve that
    does too, is neither less nor more)."""
    from scipy.interpolate import PchipInterpolator

    noisy = table[(table["label_noise"] > 0) & table["clean_fit"].notna()]
    plain_runs = noisy[noisy["method"] == "none"]
    curves = {}
    for key, rows in plain_runs.groupby(["imbalance", "label_noise", "seed"]):
        curve = rows.groupby("clean_fit")["memorised"].mean()  # (equal clean fits: their mean)
        if len(curve) >= 2:
            curves[key] = (curve.index.to_numpy(), curve.to_numpy())
    gridded = {key[:2] for key in curves}
    on_grid = np.array([(i, n) in gridded for i, n in zip(noisy["imbalance"], noisy["label_noise"])], dtype=bool)
    clipped = noisy[(noisy["method"] != "none").to_numpy() & on_grid].copy()
    linear, cubic = [], []
    for run in clipped.itertuples():
        curve = curves.get((run.imbalance, run.label_noise, run.seed))
        if curve is None or not curve[0][0] <= run.clean_fit <= curve[0][-1]:
            linear.append(math.nan)
            cubic.append(math.nan)
            continue
        linear.append(float(np.interp(run.clean_fit, *curve)))
        cubic.append(float(PchipInterpolator(*curve)(run.clean_fit)))
    clipped = clipped.assign(plain_memorised=linear, plain_memorised_pchip=cubic)
    for reading in ("plain_memorised", "plain_memorised_pchip"):
        tie = (clipped["memorised"] - clipped[reading]).abs() <= FLOAT_TOLERANCE * 1e-4  # (interpolation rounding)
        clipped.loc[tie, reading] = math.nan
    return clipped.assign(memorises_less=lambda t: t["memorised"] < t["plain_memorised"],
                          difference=lambda t: t["memorised"] - t["plain_memorised"])


def assess_label_noise(results: Path) -> dict:
    """Per-sample clipping as a robust loss (issue: does it fit mislabelled examples less?),
    decided per seed at each noisy setting and a0 of a clipped method: the seed holds where the
    run memorises fewer of the flipped labels than plain SGD of the same seed at the same clean
    fit (:func:`memorised_at_matched_fit`); seeds without a comparison are left out, and a point
    is decided through :func:`seeds_verdict`. The verdict is per-sample clipping's (its points
    combined); batch clipping, which only rescales the step, is the control, judged by the same
    rule and reported. Test accuracies (mean and 95% interval over seeds) are reported for every
    method, a0 and setting, not judged."""
    table = _read(results, "label_noise.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    matched = memorised_at_matched_fit(table)
    points = []
    for (label, noise, imbalance, a0), rows in matched.groupby(["method_label", "label_noise", "imbalance", "a0"],
                                                                 sort=True):
        judged = rows[rows["plain_memorised"].notna()]
        verdict, interval = seeds_verdict(int(judged["memorises_less"].sum()), len(judged))
        pchip = rows[rows["plain_memorised_pchip"].notna()]
        points.append({"difference": judged["difference"].mean(), "difference_interval": list(mean_interval(
                           judged["difference"])),
                       "memorises_less_pchip": int((pchip["memorised"] < pchip["plain_memorised_pchip"]).sum()),
                       "judged_pchip": len(pchip),
                       "method_label": label, "granularity": rows["granularity"].iloc[0], "label_noise": noise,
                       "imbalance": imbalance, "a0": a0, "seeds": len(rows), "judged": len(judged),
                       "memorises_less": int(judged["memorises_less"].sum()), "verdict": verdict,
                       "interval": interval, "clean_fit": rows["clean_fit"].mean(),
                       "memorised": rows["memorised"].mean(), "plain_memorised": judged["plain_memorised"].mean(),
                       "recovered": rows["recovered"].mean()})
    accuracy = []
    for (imbalance, noise, label, a0), rows in table.groupby(["imbalance", "label_noise", "method_label", "a0"],
                                                             sort=True):
        accuracy.append({"imbalance": imbalance, "label_noise": noise, "method_label": label, "a0": a0,
                         "seeds": len(rows), "diverged": int((rows["status"] == "diverged").sum()),
                         "test_acc": rows["test_acc"].mean(), "interval": list(mean_interval(rows["test_acc"])),
                         "train_acc": rows["train_acc"].mean(), "clean_fit": rows["clean_fit"].mean(),
                         "memorised": rows["memorised"].mean(),
                         "test_acc_minority": rows["test_acc_minority"].mean(),
                         "test_acc_majority": rows["test_acc_majority"].mean()})
    by = {granularity: [p for p in points if p["granularity"] == granularity] for granularity in ("sample", "batch")}
    verdict = combine([p["verdict"] for p in by["sample"]]) if by["sample"] else UNTESTED
    plain_runs = table[table["method"] == "none"]
    # Each method at its best a0 (by mean test accuracy) where it ran a grid: the accuracy a user
    # who tunes the step size gets; per seed against plain SGD at its own best a0.
    best = []
    for (noise, imbalance, label), rows in table[table["label_noise"] > 0].groupby(
            ["label_noise", "imbalance", "method_label"], sort=True):
        means = rows.groupby("a0")["test_acc"].mean()
        if len(means) >= 2:
            mine = rows[rows["a0"] == means.idxmax()].set_index("seed")["test_acc"]
            best.append({"label_noise": noise, "imbalance": imbalance, "method_label": label, "grid": len(means),
                         "a0": means.idxmax(), "test_acc": means.max(), "interval": list(mean_interval(mine)),
                         "seeds_over_plain": None, "seeds": len(mine), "_by_seed": mine})
    for entry in best:
        plain_best = next((b for b in best if b["method_label"] == "none" and b["label_noise"] == entry["label_noise"]
                           and b["imbalance"] == entry["imbalance"]), None)
        if plain_best is not None and entry["method_label"] != "none":
            paired = pd.concat([entry["_by_seed"], plain_best["_by_seed"]], axis=1, join="inner")
            entry["seeds_over_plain"] = int((paired.iloc[:, 0] > paired.iloc[:, 1]).sum())
            entry["seeds"] = len(paired)
    for entry in best:
        del entry["_by_seed"]
    return {"verdict": verdict, "most": MOST, "points": points, "sample": tally(p["verdict"] for p in by["sample"]),
            "batch": tally(p["verdict"] for p in by["batch"]), "accuracy": accuracy, "best": best,
            "seeds": pair(table.groupby(["imbalance", "label_noise", "method_label", "a0"]).size()),
            "steps": int(table["steps"].max()), "n_train": int(table["n_train"].iloc[0]),
            "plain_a0": sorted(plain_runs.loc[plain_runs["label_noise"] > 0, "a0"].unique().tolist())}


# Two zeros found from different points are the same zero where they lie within this distance
# (both found to ||F|| <= 1e-10; the field's slowest directions turn that into up to ~1e-6).
SAME_ZERO = 1e-4


def _accuracy_change(rows: pd.DataFrame, split: str) -> dict:
    """Accuracy at theta_H and at theta_L, and their difference, as means over the distinct loss
    minima (each the mean of its seeds: collect's ``minimum``), the difference's 95% interval
    over minima, and in words: 'costs' or 'buys' where the interval excludes 0, else 'neither'."""
    per_minimum = rows.groupby("minimum")[[f"{split}_acc_H", f"{split}_acc_L"]].mean()
    change = per_minimum[f"{split}_acc_H"] - per_minimum[f"{split}_acc_L"]
    low, high = mean_interval(change)
    words = "costs" if high < 0 else "buys" if low > 0 else "neither"
    return {"change": change.mean(), "interval": [low, high], "minima_up": int((change > 0).sum()),
            "minima_down": int((change < 0).sum()), "words": words,
            "acc_H": per_minimum[f"{split}_acc_H"].mean(), "acc_L": per_minimum[f"{split}_acc_L"].mean()}


def _over_minima(to_candidate: pd.Series, to_other: pd.Series, minimum: pd.Series, apart: float,
                 error: float = 0.0) -> dict:
    """:func:`_nearer` per seed, then decided over the loss minima the seeds reached (collect's
    ``minimum``): the seeds of one minimum differ only in SGD's noise, so the minima are the
    trials, and a minimum counts where all its seeds are nearer the candidate (pass a seed whose
    candidate was not found at distance inf: it counts as not)."""
    nearer = _nearer(to_candidate, to_other, apart, error)
    minima = (to_candidate < to_other).groupby(minimum).all()
    return nearer | {"minima_nearer": int(minima.sum()), "minima": len(minima),
                     "verdict": seeds_verdict(int(minima.sum()), len(minima))[0] if nearer["resolved"] else UNTESTED}


def eq22_tau_grid(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of experiment 11's tau grid: the unclipped and per-sample runs at the batch size
    of the unclipped control (experiment 12's other batch sizes and batch clipping excluded)."""
    if "granularity" not in table:  # (a table from before experiment 12: the grid alone)
        return table
    table = table[table["granularity"] != "batch"]
    control = table[~np.isfinite(table["tau"])]
    sizes = (control if len(control) else table)["batch_size"]
    return table[table["batch_size"] == sizes.mode().iloc[0]] if len(sizes) else table


def eq22_batch_arm(table: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """Experiment 12's rows of the eq22_network table: its tau (that of the batch-clipped runs)
    and the completed per-sample and batch runs there; (nan, no rows) where no batch run
    completed."""
    done = table[table["status"] == "completed"]
    if "granularity" not in done or not (done["granularity"] == "batch").any():
        return math.nan, done.iloc[:0]
    tau = float(done.loc[done["granularity"] == "batch", "tau"].min())
    return tau, done[(done["tau"] == tau) & (done["granularity"] != "none")]


def assess_eq22_network(results: Path) -> dict:
    """Eq. (22) on a network, at a converged point. Per tau of per-sample clipping: a seed is at
    a zero of eq. (22) where its averaged iterate lies nearer theta_H (the zero of H + lambda
    theta found from it) than theta_L (the loss minimum it started at): an average that stayed
    at theta_L fails this, since theta_L is no zero of the clipped field; a seed whose zeros were
    not found (theta_H or theta_L: collect's H_found, L_found) counts as not. Whether theta_H is
    the zero that the mean-field ODE from theta_L ends at (SAME_ZERO), a prediction made without
    the run, is reported beside it: the paper's claim is the zero set, and F_tau can have several
    zeros. The seeds of one loss minimum (collect's ``minimum``: the same up to the order and
    signs of the hidden units) are one trial: a minimum counts where all its seeds do, and the minima decide through
    :func:`seeds_verdict`, at points resolved by the rule of the closed-form problems
    (||theta_H - theta_L||, median over seeds, more than RESOLVED times the median distance from
    the average to the nearer of the two); elsewhere untested. Reported beside it: how far the
    unclipped runs' averages lie from theta_L (the runs' own resolution), the runs that did not
    start within that of theta_L, and the training and test accuracy at theta_H against theta_L
    (:func:`_accuracy_change`, not judged)."""
    table = _read(results, "eq22_network.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    table = eq22_tau_grid(table)
    done = table[table["status"] == "completed"]
    control = done[~np.isfinite(done["tau"])]
    resolution = control["dist_avg_L"].median() if len(control) else math.nan
    points = []
    for tau, rows in done.groupby("tau", sort=True):
        converged = rows["H_found"].astype(bool) & rows["L_found"].astype(bool)
        point = {"tau": tau, "seeds": len(rows), "minima": int(rows["minimum"].nunique()),
                 "diverged": int(((table["tau"] == tau) & (table["status"] == "diverged")).sum()),
                 "unconverged": int((~converged).sum()), "dist_avg_H": rows["dist_avg_H"].median(),
                 "dist_avg_L": rows["dist_avg_L"].median(), "dist_H_L": rows["dist_H_L"].median(),
                 "dist_H_L_range": pair(rows["dist_H_L"]), "clipped_at_H": rows["clipped_at_H"].median(),
                 "drift": rows["dist_late_avg"].median(),
                 "train": _accuracy_change(rows, "train"), "test": _accuracy_change(rows, "test")}
        if math.isfinite(tau):  # the closed-form rule per seed, then decided over minima
            nearer = _over_minima(rows["dist_avg_H"].where(converged, math.inf), rows["dist_avg_L"],
                                  rows["minimum"], point["dist_H_L"])
            point |= {"same_as_flow": int((rows["dist_H_flow"] <= SAME_ZERO).sum()),
                      "seeds_at_H": nearer["seeds_nearer"], "minima_at_H": nearer["minima_nearer"],
                      "resolved": nearer["resolved"], "verdict": nearer["verdict"]}
        else:  # the control: the unclipped runs' averages against the minimum they started at
            point |= {"verdict": None, "returns_to_L": int((converged & (rows["dist_H_L"] <= SAME_ZERO)).sum())}
        points.append(point)
    clipped = [p for p in points if math.isfinite(p["tau"])]
    verdict = combine([p["verdict"] for p in clipped]) if clipped else UNTESTED
    first = table.iloc[0]
    control_point = next((p for p in points if not math.isfinite(p["tau"])), None)
    return {"verdict": verdict, "resolved_factor": RESOLVED, "most": MOST, "same_zero": SAME_ZERO,
            "points": points[::-1], "control": control_point, "tally": tally(p["verdict"] for p in clipped),
            "seeds": pair([p["seeds"] for p in points]), "minima": int(done["minimum"].nunique()),
            "steps": int(table["steps"].max()), "batch_size": int(first["batch_size"]),
            "n_train": None if pd.isna(first["n_train"]) else int(first["n_train"]), "width": int(first["width"]),
            "weight_decay": float(first["weight_decay"]), "a0": float(first["a0"]), "power": float(first["power"]),
            "norm_L_range": pair(done["norm_L"]), "resolution": resolution,
            "started_off_L_seeds": sorted(done.loc[done["dist_start_L"] > resolution, "seed"].unique().tolist()),
            "largest_start_offset": done["dist_start_L"].max(),
            "L_accuracy": {"train": done["train_acc_L"].mean(), "test": done["test_acc_L"].mean(),
                           "test_range": pair(done["test_acc_L"])}}


def assess_batch_network(results: Path) -> dict:
    """Batch clipping's fixed point against the batch size B on the network of experiment 11
    (its table, at the tau of its batch-clipped runs). Three answers per loss minimum, found
    without the runs: theta_L (where every run started), theta_H (where per-sample clipping's
    mean-field ODE from theta_L ends: collect's ``flow``) and theta_B (batch clipping's own zero,
    where its ODE from theta_L ends: gradclip.netfield.BatchClippedField). Per (granularity, B),
    decided per seed and then over loss minima (:func:`_over_minima`) at points resolved as in
    section 9:

    * per-sample clipping at every B: the average nearer theta_H than theta_L (its limit should
      not move with B);
    * batch clipping (B > 1): the average nearer theta_B than theta_H, and than theta_L, where the
      two lie RESOLVED times further apart than the averages lie from the nearer and than
      theta_B's error (Monte Carlo and solver); a seed whose theta_B, theta_H or theta_L was not
      found counts as not.

    The section is untested unless both batch rules are decided somewhere: per-sample clipping
    alone repeats section 11. Reported, not judged: where theta_B lies between theta_L (0) and
    theta_H (1) at each B (the expectation: from theta_H at B = 1 towards theta_L, the mean's
    answer, as B grows), and the test accuracy there."""
    table = _read(results, "eq22_network.csv")
    if table is None:
        return {"verdict": NOT_MEASURED}
    tau, arm = eq22_batch_arm(table)
    if not len(arm):
        return {"verdict": NOT_MEASURED}
    everything = table[(table["tau"] == tau) & (table["granularity"] != "none")]
    points = []
    for (granularity, batch), rows in arm.groupby(["granularity", "batch_size"], sort=True):
        found = rows["flow_found"].astype(bool) & rows["L_found"].astype(bool)
        point = {"granularity": granularity, "batch_size": int(batch), "seeds": len(rows),
                 "minima": int(rows["minimum"].nunique()),
                 "diverged": int(((everything["granularity"] == granularity) & (everything["batch_size"] == batch)
                                  & (everything["status"] != "completed")).sum()),
                 "dist_avg_H": rows["dist_avg_flow"].median(), "dist_avg_L": rows["dist_avg_L"].median(),
                 "dist_H_L": rows["dist_flow_L"].median(), "position_avg": rows["position_avg"].median(),
                 "test_acc_avg": rows["test_acc_avg"].mean()}
        if granularity == "sample":
            point["H_vs_L"] = _over_minima(rows["dist_avg_flow"].where(found, math.inf), rows["dist_avg_L"],
                                           rows["minimum"], point["dist_H_L"])
        else:
            found &= rows["B_found"].astype(bool)
            to_b, error = rows["dist_avg_B"].where(found, math.inf), float(rows["B_error"].max())
            per_minimum = rows.groupby("minimum")[["position_B", "dist_B_L", "dist_B_flow", "test_acc_B",
                                                   "clipped_batches_at_B"]].first()
            point |= {"dist_avg_B": rows["dist_avg_B"].median(), "B_error": error,
                      "B_monte_carlo_error": float(rows["B_monte_carlo_error"].max()),
                      "unfound": int((~found).sum()), "position_B": per_minimum["position_B"].median(),
                      "position_B_range": pair(per_minimum["position_B"]), "dist_B_L": per_minimum["dist_B_L"].median(),
                      "dist_B_H": per_minimum["dist_B_flow"].median(), "test_acc_B": per_minimum["test_acc_B"].mean(),
                      "clipped_batches_at_B": per_minimum["clipped_batches_at_B"].median(),
                      "draws_per_example": float((rows["B_draws"] * rows["batch_size"] / rows["n_examples"]).iloc[0]),
                      "B_vs_H": _over_minima(to_b, rows["dist_avg_flow"], rows["minimum"],
                                             float(rows["dist_B_flow"].median()), error),
                      "B_vs_L": _over_minima(to_b, rows["dist_avg_L"], rows["minimum"],
                                             float(rows["dist_B_L"].median()), error)}
        points.append(point)
    sample = [p for p in points if p["granularity"] == "sample"]
    batch = [p for p in points if p["granularity"] == "batch"]
    parts = {"per-sample: θ_H at every B": combine([p["H_vs_L"]["verdict"] for p in sample]),
             "batch: θ_B, not θ_H": combine([p["B_vs_H"]["verdict"] for p in batch]),
             "batch: θ_B, not θ_L": combine([p["B_vs_L"]["verdict"] for p in batch])}
    decided = UNTESTED not in (parts["batch: θ_B, not θ_H"], parts["batch: θ_B, not θ_L"])
    positions = [p["position_B"] for p in batch]
    first = arm.iloc[0]
    return {"verdict": combine(list(parts.values())) if decided else UNTESTED, "parts": parts, "tau": tau,
            "resolved_factor": RESOLVED, "points": points, "steps": int(arm["steps"].max()),
            "seeds": pair([p["seeds"] for p in points]), "minima": int(arm["minimum"].nunique()),
            "batch_sizes": sorted(int(b) for b in everything["batch_size"].unique()), "n_train": int(first["n_examples"]),
            "diverged": int((everything["status"] != "completed").sum()),
            # None with one batch size; else whether theta_B never moves back towards theta_H as B grows
            "moves_towards_L": None if len(positions) < 2 else bool(
                all(b <= a for a, b in zip(positions, positions[1:])) and positions[-1] < positions[0]),
            "largest_error": max((p["B_error"] for p in batch), default=math.nan),
            "largest_monte_carlo_error": max((p["B_monte_carlo_error"] for p in batch), default=math.nan),
            "draws_per_example": batch[0]["draws_per_example"] if batch else math.nan,
            "tallies": {"sample": tally(p["H_vs_L"]["verdict"] for p in sample),
                        "batch_vs_H": tally(p["B_vs_H"]["verdict"] for p in batch),
                        "batch_vs_L": tally(p["B_vs_L"]["verdict"] for p in batch)}}


SECTIONS = {  # key: (number, title, assess)
    "bounded_increments": (1, "Bounded increments", assess_increments),
    "stability": (2, "Stability with high probability", assess_stability),
    "convergence": (3, "Convergence of the averaged scaled gradient", assess_convergence),
    "step_sizes": (4, "Step-size conditions", assess_step_sizes),
    "limit_set": (5, "The limit set and the clipping bias", assess_limit_set),
    "ode_tracking": (6, "ODE tracking", assess_ode_tracking),
    "agc_small_weights": (7, "AGC and small weights", assess_agc_small_weights),
    "clipping_bias": (8, "The bias against τ and the noise shape", assess_clipping_bias),
    "batch_fixed_point": (9, "Batch clipping's fixed point against the batch size", assess_batch_fixed_point),
    "label_noise": (10, "Label noise: per-sample clipping as a robust loss", assess_label_noise),
    "eq22_network": (11, "Eq. (22) on a network, at a converged point", assess_eq22_network),
    "batch_network": (12, "Batch clipping's fixed point on the network", assess_batch_network),
}


def assess_all(results: Path, scale: str) -> dict:
    """Every prediction's verdict and numbers, JSON-ready (what results/verdicts.json holds)."""
    return {"scale": scale, "predictions": {key: plain({"number": number, "title": title} | assess(results))
                                            for key, (number, title, assess) in SECTIONS.items()}}
