"""Verdicts of scripts/report.py on hand-built tables: every branch can be reached."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("report", ROOT / "scripts" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)
figures_spec = importlib.util.spec_from_file_location("figures", ROOT / "scripts" / "figures.py")
figures = importlib.util.module_from_spec(figures_spec)
figures_spec.loader.exec_module(figures)


def increments(tmp_path, update_ratio):
    pd.DataFrame({"method_label": ["norm τ=1 (batch)"], "method": "norm", "granularity": "batch", "runs": [4],
                  "worst_update_ratio": update_ratio, "worst_step_ratio": update_ratio}).to_csv(
        tmp_path / "increments.csv", index=False)
    return report.bounded_increments(tmp_path)[0]


def test_bounded_increments_verdicts(tmp_path):
    assert increments(tmp_path, [1.0000004]).startswith("**Verdict: holds.**")
    assert increments(tmp_path, [1.1]).startswith("**Verdict: fails.**")
    pd.DataFrame(columns=["method_label", "runs", "worst_update_ratio", "worst_step_ratio"]).to_csv(
        tmp_path / "increments.csv", index=False)
    assert report.bounded_increments(tmp_path)[0].startswith("**Verdict: untested.**")


def stability_rows(norm, agc, none=(1.0, 0.0)):
    rows = []
    for method, label, fractions in [("none", "none", none), ("norm", "norm τ=1 (batch)", norm),
                                     ("agc", "agc λ=0.1 (batch)", agc)]:
        for a0, f in zip((1.0, 100.0), fractions):
            rows.append({"model": "MLP", "method_label": label, "method": method, "granularity": "batch", "a0": a0,
                         "runs": 8, "stable": int(8 * f), "stable_fraction": f, "wilson_low": 0.0, "wilson_high": 1.0,
                         "implied_by_increments": False, "bound": 1e4, "steps": 50, "failed_runs": 0})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("norm, agc, expected", [
    ((1.0, 1.0), (1.0, 1.0), "holds"),
    ((1.0, 1.0), (1.0, 0.5), "partly"),
    ((1.0, 0.0), (1.0, 0.0), "fails"),
])
def test_stability_verdicts(tmp_path, norm, agc, expected):
    stability_rows(norm, agc).to_csv(tmp_path / "stability.csv", index=False)
    assert report.stability(tmp_path)[0].startswith(f"**Verdict: {expected}**")


def test_stability_grid_that_never_destabilises_plain_sgd_is_untested(tmp_path):
    stability_rows((1.0, 1.0), (1.0, 1.0), none=(1.0, 1.0)).to_csv(tmp_path / "stability.csv", index=False)
    assert report.stability(tmp_path)[0].startswith("**Verdict: untested**")


def test_palette_tells_every_setting_apart():
    labels = ["none"] + [f"norm τ={t:g} ({g})" for t in (0.1, 1, 10) for g in ("batch", "sample")] + \
             [f"agc λ={v:g} ({g})" for v in (0.01, 0.1, 1) for g in ("batch", "sample")]
    styles = figures.palette(labels)
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == len(labels)
