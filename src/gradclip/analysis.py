"""Aggregations behind the figures and the report: pandas in, tidy tables out.

Everything here reads the frames of :func:`gradclip.records.load_runs` (one row per run, and
the metrics in long form) and never the training code, so figures can be rebuilt from records
alone.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import zeta
from scipy.stats import binomtest, t as student_t, theilslopes

from gradclip.labels import agc_exemption


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's); (nan, nan) for no trials."""
    if trials == 0:
        return math.nan, math.nan
    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean of ``values`` (nan ignored); (nan, nan) below two values."""
    values = pd.Series(values, dtype=float).dropna()
    if len(values) < 2:
        return math.nan, math.nan
    half = float(student_t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return float(values.mean()) - half, float(values.mean()) + half


def method_label(row: pd.Series) -> str:
    """'none', 'norm τ=1 (sample)', 'agc λ=0.1 (batch)': the algorithm and its granularity. AGC
    exempts the classifier head by default (clip.exclude=[head.*], as timm); any other exemption is
    named: 'agc λ=0.1 (batch, head clipped)' for clip.exclude=[], which clips every unit."""
    method = row["clip.method"]
    if method == "none":
        return "none"
    symbol, key = {"norm": ("τ", "clip.threshold"), "value": ("v", "clip.threshold"),
                   "agc": ("λ", "clip.clip_factor")}[method]
    where = row["clip.granularity"]
    exemption = agc_exemption(method, row.get("clip.exclude"))
    return f"{method} {symbol}={row[key]:g} ({where}{', ' + exemption if exemption else ''})"


def label_setting(label: str) -> tuple[str, float]:
    """The method and its setting (tau, lambda or v) back from a label: 'agc λ=0.1 (batch)' ->
    ('agc', 0.1)."""
    method, setting = label.split()[:2]
    return method, float(setting.split("=")[1])


def with_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """Add a ``method_label`` column; unclipped runs are one method whatever their granularity."""
    runs = runs.copy()
    runs["method_label"] = runs.apply(method_label, axis=1)
    return runs


def is_stable(runs: pd.DataFrame, bound: float) -> pd.Series:
    """Stable: the run completed (every loss, gradient and weight finite) with ||theta_n|| <= bound
    at every step. Failed runs (crashes) are neither, and are left out by the callers."""
    return (runs["summary.status"] == "completed") & (runs["summary.max_param_norm"] <= bound)


def stability_table(runs: pd.DataFrame, bound: float) -> pd.DataFrame:
    """Stable fraction with its 95% Wilson interval per (model, method, a0).

    ``implied_by_increments`` marks norm-clipping points whose stability follows from
    prediction 1 alone: ||theta_n|| <= ||theta_0|| + tau sum_n a(n) < B for every seed, so the
    seeds cannot fail there and the point is no test of prediction 2.
    """
    runs = with_labels(runs[runs["summary.status"].isin(["completed", "diverged"])])
    runs["stable"] = is_stable(runs, bound)
    keys = ["model.name", "method_label", "clip.method", "clip.granularity", "schedule.a0"]
    rows = []
    for key, group in runs.groupby(keys, dropna=False, sort=True):
        stable, n = int(group["stable"].sum()), len(group)
        lo, hi = wilson_interval(stable, n)
        first = group.iloc[0]
        sum_a = schedule_sum(first)
        reach = group["summary.initial_param_norm"].max() + first.get("clip.threshold", math.nan) * sum_a
        reasons = group.get("summary.diverged_reason", pd.Series(dtype=object)).fillna("").astype(str)
        rows.append(dict(zip(keys, key)) | {
            "runs": n, "stable": stable, "stable_fraction": stable / n, "wilson_low": lo, "wilson_high": hi,
            # lost to a non-finite loss, gradient or weight rather than to ||theta|| > B
            "non_finite": int(reasons.str.startswith("non-finite").sum()),
            "median_diverged_step": group["summary.diverged_step"].median(), "steps": int(first["steps"]), "sum_lr": sum_a,
            "implied_by_increments": bool(first["clip.method"] == "norm" and reach < bound)})
    return pd.DataFrame(rows).rename(columns={"model.name": "model", "clip.method": "method",
                                              "clip.granularity": "granularity", "schedule.a0": "a0"})


def schedule_sum(run: pd.Series) -> float:
    """sum_{n < steps} a(n) of a run's Robbins-Monro or constant schedule, from its config."""
    n = np.arange(int(run["steps"]))
    if run["schedule.name"] == "constant":
        return float(run["schedule.a0"] * len(n))
    if run["schedule.name"] == "robbins_monro":
        return float(np.sum(run["schedule.a0"] / (n + run["schedule.n0"]) ** run["schedule.power"]))
    raise ValueError(f"schedule {run['schedule.name']!r}: sum a(n) is computed for constant and robbins_monro only")


def agc_stability_limits(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, AGC setting): the largest a0 at which every seed was stable, the first a0 at
    which one was not, and a0 * lambda there (AGC's bound grows with ||W||: prediction 7)."""
    rows = []
    for (model, label), group in table[table["method"] == "agc"].groupby(["model", "method_label"], sort=True):
        group = group.sort_values("a0")
        lam = label_setting(label)[1]
        lost = group[group["stable_fraction"] < 1]
        kept = group[group["stable_fraction"] == 1]
        first_lost = lost["a0"].iloc[0] if len(lost) else math.nan
        rows.append({"model": model, "method_label": label, "clip_factor": lam,
                     "largest_all_stable_a0": kept["a0"].max() if len(kept) else math.nan,
                     "first_unstable_a0": first_lost, "a0_times_lambda": first_lost * lam})
    return pd.DataFrame(rows)


def increment_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Worst bounded-increment ratio per method over every run of a sweep (prediction 1).

    For norm clipping the bound is ||theta(n+1) - theta(n)|| <= a(n) tau: ``update_ratio`` is
    max ||clipped g|| / tau (exact arithmetic) and ``step_ratio`` max ||Delta theta|| / (a(n) tau)
    as realised in float32. For AGC the unit-wise bound ||Delta W_i|| <= a(n) lambda
    max(||W_i||, eps) gives ``update_ratio`` = max_unit_update_ratio and ``step_ratio`` =
    max_unit_step_ratio. Both must be <= 1 (up to rounding for the realised one).
    """
    runs = with_labels(runs[runs["clip.method"].isin(["norm", "agc"])])
    if runs.empty:
        return pd.DataFrame(columns=["method_label", "runs", "worst_update_ratio", "worst_step_ratio"])
    norm = runs["clip.method"] == "norm"
    tau = runs["clip.threshold"].where(norm)
    runs["update_ratio"] = np.where(norm, runs["summary.max_update_norm"] / tau,
                                    runs.get("summary.max_unit_update_ratio"))
    runs["step_ratio"] = np.where(norm, runs["summary.max_step_ratio"] / tau,
                                  runs.get("summary.max_unit_step_ratio"))
    table = runs.groupby(["method_label", "clip.method", "clip.granularity"]).agg(
        runs=("update_ratio", "size"), worst_update_ratio=("update_ratio", "max"),
        worst_step_ratio=("step_ratio", "max"))
    return table.reset_index().rename(columns={"clip.method": "method", "clip.granularity": "granularity"})


def trajectories(runs: pd.DataFrame, metrics: pd.DataFrame, metric: str, **selection) -> pd.DataFrame:
    """One metric over steps for the runs matching ``selection`` (config key -> value), long form
    with the run's method label and seed."""
    chosen = with_labels(runs)
    for key, value in selection.items():
        chosen = chosen[np.isclose(chosen[key], value)] if isinstance(value, float) else chosen[chosen[key] == value]
    rows = metrics[(metrics["metric"] == metric) & metrics["run_id"].isin(chosen["run_id"])]
    if metric == "train/param_norm":  # the first row is logged after some steps: add theta_0
        start = pd.DataFrame({"run_id": chosen["run_id"], "step": 0, "metric": metric,
                              "value": chosen["summary.initial_param_norm"]})
        rows = pd.concat([start, rows], ignore_index=True)
    info = chosen[["run_id", "method_label", "seed", "summary.status"]]
    return rows.merge(info, on="run_id").sort_values(["method_label", "seed", "step"])


# A unit is "small" if its norm at initialisation is below AGC's floor eps, and "large" if it is at
# least LARGE_FROM times eps (two decades above the floor). Units are classed by their initial norm,
# never by the norm they reach: a class then holds the same units for every method of a seed (a
# seed fixes the initialisation), and a method whose small units grow keeps them in the class.
LARGE_FROM = 100.0
# A run's class with fewer units than this gives no ratio.
MIN_UNITS = 10


def unit_step_ratios(units: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Per run (``method_label``, ``seed``), the median step of its small units over that of its
    large units (prediction 7), absolute (``abs_ratio``) and relative (``rel_ratio``), over every
    logged step, and the same at step 1 alone (``*_ratio_step1``), where every method of a seed has
    the same weights and the same batch; with the small units' medians (``abs_small``,
    ``rel_small``, ``*_small_step1``) and their median norm at the last logged step over the first
    (``small_growth``).

    ``units`` has one row per (run, logged step, unit) with ``method_label``, ``seed``, ``param``,
    ``unit``, ``step``, ``weight_norm`` (before the step), ``abs_step`` = ||Delta W_i|| / a(n)
    and ``rel_step`` = abs_step / ||W_i||. A class with fewer than MIN_UNITS units gives nan ratios.
    """
    rows = []
    for (label, seed), run in units.groupby(["method_label", "seed"], sort=True):
        initial = run[run["step"] == run["step"].min()].set_index(["param", "unit"])["weight_norm"]
        small_units, large_units = initial < eps, initial >= LARGE_FROM * eps
        run = run.join(initial.rename("initial_norm"), on=["param", "unit"])
        small, large = run["initial_norm"] < eps, run["initial_norm"] >= LARGE_FROM * eps
        enough = min(small_units.sum(), large_units.sum()) >= MIN_UNITS
        row = {"method_label": label, "seed": seed, "small_units": int(small_units.sum()),
               "large_units": int(large_units.sum())}
        for suffix, window in (("", run["step"] > 0), ("_step1", run["step"] == run["step"].min())):
            for kind in ("abs", "rel"):
                column = f"{kind}_step"
                row[f"{kind}_small{suffix}"] = float(run.loc[small & window, column].median())
                large_median = float(run.loc[large & window, column].median())
                row[f"{kind}_ratio{suffix}"] = row[f"{kind}_small{suffix}"] / large_median if enough else math.nan
        last = run["step"] == run["step"].max()
        row["small_growth"] = float(run.loc[small & last, "weight_norm"].median() / initial[small_units].median())
        rows.append(row)
    return pd.DataFrame(rows)


# -- convergence and step sizes (predictions 3 and 4) --------------------------------------------------


def late_slope(steps, values) -> tuple[float, int]:
    """The slope of log(value) against log(step) over the second half of a run in log time (the
    evaluations at steps >= sqrt(last step), with step, value > 0), fitted robustly (Theil-Sen:
    the median of the slopes between every two points, scipy's), and the number of evaluations
    it rests on: -1 for values that fall like 1/n, 0 for a plateau; one outlying point, such as
    the last, cannot set it. nan with fewer than 2 points."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = (steps > 0) & (values > 0) & np.isfinite(values)
    if keep.any():
        keep &= steps >= math.sqrt(steps[keep].max())
    if keep.sum() < 2:
        return math.nan, int(keep.sum())
    return loglog_theil_sen(steps[keep], values[keep]), int(keep.sum())


def loglog_theil_sen(x, y) -> float:
    """The Theil-Sen slope of log(y) against log(x) (scipy's: the median of the slopes between
    every two points); x and y positive; nan with fewer than 2 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return math.nan
    return float(theilslopes(np.log(y), np.log(x))[0])


def eval_paths(runs: pd.DataFrame, metrics: pd.DataFrame,
               names=("H_norm", "mean_grad_norm", "train_loss", "scaled_loss", "param_norm")) -> pd.DataFrame:
    """The full-data ``eval/`` metrics of every run in long form, with its method label and seed."""
    rows = metrics[metrics["metric"].isin([f"eval/{name}" for name in names])].copy()
    rows["metric"] = rows["metric"].str.removeprefix("eval/")
    info = with_labels(runs)[["run_id", "method_label", "seed"]]
    return rows.merge(info, on="run_id").sort_values(["run_id", "metric", "step"], ignore_index=True)


def convergence_summary(paths: pd.DataFrame) -> pd.DataFrame:
    """Per run, from :func:`eval_paths`: ||H|| at step 0 and at the end, its smallest value, the
    robust log-log slope of ||H|| over the second half of the run in log time (:func:`late_slope`)
    and how many evaluations it rests on, the unclipped ||mean grad l_i|| at the start and the end
    beside ||H|| (prediction 5 on a network), ||theta|| and the training loss at the start and the
    end."""
    rows = []
    for run_id, run in paths.groupby("run_id", sort=True):
        h = run[run["metric"] == "H_norm"].sort_values("step")
        grad = run[run["metric"] == "mean_grad_norm"].sort_values("step")
        weights = run[run["metric"] == "param_norm"].sort_values("step")
        loss = run[run["metric"] == "train_loss"].sort_values("step")
        slope, points = late_slope(h["step"], h["value"])
        rows.append({"run_id": run_id, "method_label": run["method_label"].iloc[0], "seed": run["seed"].iloc[0],
                     "last_step": int(h["step"].max()), "H_initial": h["value"].iloc[0], "H_final": h["value"].iloc[-1],
                     "H_min": h["value"].min(), "H_slope": slope, "H_slope_points": points,
                     "mean_grad_initial": grad["value"].iloc[0] if len(grad) else math.nan,
                     "mean_grad_final": grad["value"].iloc[-1] if len(grad) else math.nan,
                     "param_norm_initial": weights["value"].iloc[0] if len(weights) else math.nan,
                     "param_norm_final": weights["value"].iloc[-1] if len(weights) else math.nan,
                     "train_loss_initial": loss["value"].iloc[0] if len(loss) else math.nan,
                     "train_loss_final": loss["value"].iloc[-1] if len(loss) else math.nan})
    table = pd.DataFrame(rows)
    table["H_ratio"] = table["H_final"] / table["H_initial"]
    table["grad_over_H_final"] = table["mean_grad_final"] / table["H_final"]
    return table


def total_schedule_sum(run: pd.Series, start: int = 0) -> float:
    """sum_{n >= start} a(n) of a Robbins-Monro schedule a0 / (n + n0)^p: a0 zeta(p, start + n0)
    (Hurwitz zeta) for p > 1, where the sum is finite; inf otherwise."""
    if run["schedule.name"] != "robbins_monro":
        raise ValueError(f"schedule {run['schedule.name']!r}: the infinite sum of a(n) is computed for robbins_monro only")
    p = float(run["schedule.power"])
    return float(run["schedule.a0"] * zeta(p, start + float(run["schedule.n0"]))) if p > 1 else math.inf


def freeze_table(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per norm-clipped run: the displacement ||theta_n - theta_0|| against its bound tau sum_{k<n} a(k)
    (prediction 1 summed over steps), worst over the logged rows, and the final displacement against
    the bound of the whole infinite schedule, tau sum_{n>=0} a(n), finite for p > 1 (prediction 4)."""
    wide = metrics[metrics["metric"].isin(["train/dist_from_init", "train/sum_lr"])].pivot_table(
        index=["run_id", "step"], columns="metric", values="value").reset_index()
    rows = []
    for _, run in runs[runs["clip.method"] == "norm"].iterrows():
        mine = wide[wide["run_id"] == run["run_id"]].sort_values("step")
        tau = float(run["clip.threshold"])
        rows.append({"run_id": run["run_id"],
                     "worst_displacement_ratio": float((mine["train/dist_from_init"] / (tau * mine["train/sum_lr"])).max()),
                     "final_displacement": float(mine["train/dist_from_init"].iloc[-1]),
                     "frozen_radius": tau * total_schedule_sum(run)})
    return pd.DataFrame(rows)


# -- ODE tracking (prediction 6) ------------------------------------------------------------------------


def ode_gap_summary(paths: pd.DataFrame) -> pd.DataFrame:
    """Per run (rows of ``paths``: run_id, a0, seed, t, gap = ||theta_n - theta(t_n)|| and, where
    logged, gap_unclipped to the unclipped gradient flow): the largest and the mean gap over the
    window, and the gap at its end; the largest gap to the unclipped flow."""
    aggregates = dict(max_gap=("gap", "max"), mean_gap=("gap", "mean"), final_gap=("gap", "last"),
                      horizon=("t", "max"))
    if "gap_unclipped" in paths:
        aggregates["max_gap_unclipped"] = ("gap_unclipped", "max")
    return paths.sort_values("t").groupby(["run_id", "a0", "seed"]).agg(**aggregates).reset_index()


def ode_seed_mean_gap(paths: pd.DataFrame) -> pd.DataFrame:
    """Per a0: the largest ||mean over seeds of theta_n - theta(t(n))|| over the window. Averaging
    the seeds shrinks the noise of the iterates (by sqrt(seeds)) but not a systematic bias of the
    discretisation, so this gap separates the two. ``paths`` has theta_<c> and ode_<c> columns
    per component c, and a0, seed, step."""
    components = [c.removeprefix("theta_") for c in paths.columns if c.startswith("theta_")]
    rows = []
    for a0, group in paths.groupby("a0", sort=True):
        mean = group.groupby("step")[[f"theta_{c}" for c in components] + [f"ode_{c}" for c in components]].mean()
        gap = np.linalg.norm(mean[[f"theta_{c}" for c in components]].to_numpy()
                             - mean[[f"ode_{c}" for c in components]].to_numpy(), axis=1)
        rows.append({"a0": a0, "seeds": group["seed"].nunique(), "max_gap_of_seed_mean": float(gap.max())})
    return pd.DataFrame(rows)
