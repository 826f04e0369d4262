"""The collect step (gradclip.collect) on small hand-built records whose answers are known:
the limit-set distances, and the ODE tables' time alignment (theta_n sits at t(n) = sum_{k<n} a(k))."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from gradclip.collect import BATCH_FIXED_POINT_DRAWS, Source, collect, design
from gradclip.data import load_dataset
from gradclip.meanfield import batch_clipped_root, ode_path
from gradclip.records import RunRecorder



def write_record(run_dir: Path, config: dict, thetas: list, sum_lr: list, summary: dict) -> None:
    """A completed run that logged theta_n (train/theta_<i>) with t(n) at steps 1, 2, ..."""
    recorder = RunRecorder(run_dir)
    recorder.start(config, {"status": "running"})
    for step, (theta, t) in enumerate(zip(thetas, sum_lr), start=1):
        recorder.log({"step": step, "train/sum_lr": t} | {f"train/theta_{i}": float(v) for i, v in enumerate(theta)})
    recorder.write_summary({"status": "completed", "final": recorder.final_values()} | summary)
    recorder.close()


def huber_location_by_bisection(y: np.ndarray, tau: float) -> float:
    """The root of mean_i clip(theta - y_i, -tau, tau), which increases with theta: bisection."""
    lo, hi = float(y.min()), float(y.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(mid - y, -tau, tau).mean() < 0 else (lo, mid)
    return (lo + hi) / 2


def test_limit_set_distances_are_those_of_the_logged_theta(make_cfg, tmp_path):
    config = OmegaConf.to_container(make_cfg("+experiment=limit_set", "data.noise.dist=lognormal",
                                             "clip.threshold=0.5", "clip.granularity=sample", tiny=False), resolve=True)
    y = load_dataset(config["data"]).y_train.double().numpy().ravel()
    mean, root = float(y.mean()), huber_location_by_bisection(y, 0.5)
    assert abs(root - mean) > 0.1  # skewed noise: the two can be told apart
    final = {"eval/H_norm": 0.0, "eval/mean_grad_norm": 0.0}
    for seed, theta in [(1, root), (2, mean)]:
        write_record(tmp_path / "limit_set" / f"seed={seed}", config | {"seed": seed}, [[theta]], [1.0],
                     {"final": final})
    collect("limit_set", Source(runs=tmp_path, results=tmp_path))
    table = pd.read_csv(tmp_path / "limit_set.csv").set_index("seed")
    at_root, at_mean = table.loc[1], table.loc[2]
    assert at_root["dist_to_root"] == pytest.approx(0, abs=1e-6)
    assert at_root["dist_to_mean"] == pytest.approx(abs(root - mean), rel=1e-6)
    assert at_mean["dist_to_mean"] == pytest.approx(0, abs=1e-6)
    assert at_mean["dist_to_root"] == pytest.approx(abs(root - mean), rel=1e-6)
    assert at_mean["root_to_mean"] == pytest.approx(abs(root - mean), rel=1e-6)


def test_a_collect_that_stops_half_way_leaves_the_last_complete_tables(monkeypatch, tmp_path, capsys):
    """collect moves an experiment's tables into results only once every one is written: one
    that fails after its first table (a full disk, a signal's exit) leaves the tables of the last
    complete collect, and no half-written file or folder beside them."""
    import gradclip.collect as module

    def two_tables(source, fail: bool) -> str:
        pd.DataFrame({"x": [2]}).to_csv(Path(source.results) / "a.csv", index=False)
        if fail:
            raise SystemExit("no space left on device")
        pd.DataFrame({"x": [2]}).to_csv(Path(source.results) / "b.csv", index=False)
        return "2 runs"

    results = tmp_path / "results"
    results.mkdir()
    for name in ("a.csv", "b.csv"):
        (results / name).write_text("x\n1\n")
    monkeypatch.setitem(module.COLLECT, "limit_set", lambda source: two_tables(source, fail=True))
    with pytest.raises(SystemExit, match="no space"):
        collect("limit_set", Source(runs=tmp_path, results=results))
    assert sorted(p.name for p in results.iterdir()) == ["a.csv", "b.csv"]
    assert all((results / name).read_text() == "x\n1\n" for name in ("a.csv", "b.csv"))
    monkeypatch.setitem(module.COLLECT, "limit_set", lambda source: two_tables(source, fail=False))
    collect("limit_set", Source(runs=tmp_path, results=results))
    assert sorted(p.name for p in results.iterdir()) == ["a.csv", "b.csv"]
    assert all(pd.read_csv(results / name)["x"].tolist() == [2] for name in ("a.csv", "b.csv"))
    assert capsys.readouterr().out == f"limit_set: 2 runs -> {results}/a.csv, b.csv\n"


def test_a_task_that_exits_in_the_collects_pool_ends_the_collect_and_does_not_hang_it():
    """eq22_network's pool (gradclip.collect._pool_map, two spawned processes) hands a task's
    SystemExit (its "rerun=true trains it again" line) back to the collect; multiprocessing.Pool
    would lose that task's result and wait for it for ever."""
    import sys

    from gradclip.collect import _pool_map

    with pytest.raises(SystemExit, match="no initial theta"):
        _pool_map(sys.exit, ["no initial theta", "no initial theta"])


def test_ode_tables_compare_theta_n_with_the_ode_at_t_n(make_cfg, tmp_path):
    """A run whose logged theta_n is the ODE's solution at t(n) has gap 0 at every step; one
    whose theta_n is the solution at t(n+1) (off by one step) has gaps of about a ||H||."""
    config = OmegaConf.to_container(make_cfg("+experiment=ode_tracking", "schedule.a0=0.1", tiny=False), resolve=True)
    root = tmp_path / "ode_tracking"
    write_record(root / "probe", config, [[0.0, 0.0, 0.0]], [0.1], {"initial_theta": [0.0, 0.0, 0.0]})
    x, y = design(root / "probe")
    theta0, a, steps = np.zeros(3), 0.1, 40
    t = a * np.arange(1, steps + 2)  # t(n) = sum_{k<n} a(k) = n a, for n = 1 .. steps + 1
    exact = ode_path(x, y, 1.0, theta0, t)
    summary = {"initial_theta": theta0.tolist(), "sum_lr": float(t[steps - 1])}
    write_record(root / "probe", config | {"seed": 0}, exact[:steps], t[:steps], summary)
    write_record(root / "shifted", config | {"seed": 1}, exact[1:], t[:steps], summary)
    collect("ode_tracking", Source(runs=tmp_path, results=tmp_path))
    paths = pd.read_csv(tmp_path / "ode_paths.csv")
    aligned, shifted = paths[paths.seed == 0], paths[paths.seed == 1]
    assert list(aligned.step) == list(range(steps + 1)) and aligned.t.iloc[0] == 0  # theta_0 at t = 0
    assert aligned.gap.max() < 1e-6
    assert shifted.gap.iloc[1:].min() > 1e-3
    # Beside it, the unclipped gradient flow (tau = inf) from the same theta_0: the aligned run's
    # gap to it is the distance between the two flows, which the solution table also holds.
    flow = ode_path(x, y, np.inf, theta0, np.concatenate([[0.0], t[:steps]]))
    assert np.allclose(aligned.gap_unclipped, np.linalg.norm(np.vstack([theta0, exact[:steps]]) - flow, axis=1),
                       atol=1e-6)
    solution = pd.read_csv(tmp_path / "ode_solution.csv")
    assert {"flow_w1", "flow_w2", "flow_b", "flows_apart"} <= set(solution.columns)
    assert solution.flows_apart.iloc[0] == 0 and solution.flows_apart.max() > 1e-3  # tau = 1 clips here
    gaps = pd.read_csv(tmp_path / "ode_gaps.csv")
    assert (gaps.max_gap_unclipped > 0).all()


def test_clipping_bias_averages_the_second_half_and_computes_the_candidates(make_cfg, tmp_path):
    """theta logged at steps 1..10 of a 10-step run: the average is over steps 5..10; the root of
    eq. (22), the mean and the l/c minimiser are those of the run's regenerated targets."""
    config = OmegaConf.to_container(make_cfg("+experiment=clipping_bias", "data.noise.dist=exponential",
                                             "clip.threshold=0.5", "steps=10", "data.n_train=2000", tiny=False),
                                    resolve=True)
    thetas = [[float(k)] for k in range(1, 11)]
    write_record(tmp_path / "clipping_bias" / "probe", config, thetas, list(range(1, 11)),
                 {"final": {"eval/H_norm": 0.0}})
    collect("clipping_bias", Source(runs=tmp_path, results=tmp_path))
    row = pd.read_csv(tmp_path / "clipping_bias.csv").iloc[0]
    y = load_dataset(config["data"]).y_train.double().numpy().ravel()
    assert row.theta_avg == pytest.approx(np.mean(range(5, 11))) and row.averaged_over == 6
    assert row.theta_final == 10.0 and not row.symmetric
    assert row.root == pytest.approx(huber_location_by_bisection(y, 0.5), abs=1e-9)
    assert row["mean"] == pytest.approx(y.mean()) and row.sigma == pytest.approx(y.std())
    assert row.scale == pytest.approx(min(y.std(), y.std() ** 2 / 0.5))
    assert abs(row.scaled_min - row.root) > 0.02  # l/c's minimiser is not the root


def test_batch_fixed_point_table_places_each_run_between_the_mean_and_the_root(make_cfg, tmp_path):
    """Three batch-clipping runs (B = 4) whose iterates sit at the mean, at the root of eq. (22)
    and at batch clipping's fixed point over the second half: positions 0, 1 and the fixed point's
    own, and distance 0 to the matching answer; the first half does not count."""
    config = OmegaConf.to_container(make_cfg("+experiment=batch_fixed_point", "batch_size=4",
                                             "clip.granularity=batch", "steps=4", tiny=False), resolve=True)
    y = load_dataset(config["data"]).y_train.double().numpy().ravel()
    root, mean = huber_location_by_bisection(y, 0.3), float(y.mean())
    fixed = batch_clipped_root(np.ones((len(y), 1)), y, 0.3, 4, BATCH_FIXED_POINT_DRAWS)[0][0]
    for seed, theta in enumerate([mean, root, fixed]):
        write_record(tmp_path / "batch_fixed_point" / f"seed={seed}", config | {"seed": seed},
                     [[9.0], [theta], [theta], [theta]], [1.0, 2.0, 3.0, 4.0], {"final": {}})
    collect("batch_fixed_point", Source(runs=tmp_path, results=tmp_path))
    table = pd.read_csv(tmp_path / "batch_fixed_point.csv").set_index("seed")
    assert list(table["averaged_over"]) == [3, 3, 3]  # steps 2, 3, 4 of 4
    at_mean, at_root, at_fixed = (table.loc[k] for k in range(3))
    assert (at_mean["position"], at_root["position"]) == (pytest.approx(0, abs=1e-6), pytest.approx(1, abs=1e-6))
    assert at_mean["dist_to_mean"] < 1e-6 and at_root["dist_to_root"] < 1e-6 and at_fixed["dist_to_batch_root"] < 1e-6
    assert at_fixed["position"] == pytest.approx(at_fixed["batch_root_position"], abs=1e-6)
    assert at_fixed["batch_root_position"] == pytest.approx((fixed - mean) / (root - mean), rel=1e-9)
    assert 0.05 < at_fixed["batch_root_position"] < 0.95  # between the two, apart from both


def test_label_noise_table_splits_the_fit_between_correct_and_flipped_labels(make_cfg, tmp_path):
    """Two short runs of the label-noise experiment: collect reads each final theta on the
    regenerated training set; the fits to the correct (600) and flipped (400) labels add up to
    the runner's own training accuracy on the noisy labels, and a flipped example is never both
    memorised and recovered."""
    from gradclip.runner import train

    for a0 in (1, 10):
        summary = train(make_cfg("+experiment=label_noise", "steps=40", "eval_every=40", f"schedule.a0={a0}",
                                 "logger=none", tiny=False), tmp_path / "label_noise" / f"a0={a0}")
        assert summary["status"] == "completed" and summary["theta_file"] == "theta.npz"
    collect("label_noise", Source(runs=tmp_path, results=tmp_path))
    table = pd.read_csv(tmp_path / "label_noise.csv")
    assert list(table["a0"]) == [1, 10] and set(table["label_noise"]) == {0.4} and set(table["n_train"]) == {1000}
    split = (600 * table["clean_fit"] + 400 * table["memorised"]) / 1000
    assert split.to_numpy() == pytest.approx(table["train_acc"].to_numpy(), abs=2e-3)
    assert (table["memorised"] + table["recovered"] <= 1).all() and (table["memorised"] > 0).all()
    assert table["test_acc"].between(0, 1).all() and table["test_acc_minority"].notna().all()


def test_eq22_network_table_compares_each_average_with_the_zeros_found_from_it(make_cfg, tmp_path):
    """Two short runs of eq22_network from the same loss minimum, unclipped and clipped at
    tau = 0.25: collect finds theta_L (where both started, to float32 rounding) and, from each
    average, theta_H; unclipped, theta_H is theta_L and the ODE's end too; clipped, every example
    is clipped at theta_H, which lies away from theta_L, and the ODE from theta_L ends at a zero
    too (200 steps are too few for the run to reach that one: not asserted)."""
    from gradclip.runner import train

    small = ["+experiment=eq22_network", "steps=200", "eval_every=200", "data.n_train=64", "model.width=6",
             "batch_size=16", "logger=none"]
    sample = ["clip=norm", "clip.eps=0", "clip.granularity=sample", "clip.threshold=0.25"]
    batch = ["clip=norm", "clip.eps=0", "clip.granularity=batch", "clip.threshold=0.25", "batch_size=8"]
    for name, extra in (("none", []), ("clipped", sample), ("batch", batch)):
        assert train(make_cfg(*small, *extra, tiny=False), tmp_path / "eq22_network" / name)["status"] == "completed"
    collect("eq22_network", Source(runs=tmp_path, results=tmp_path))
    table = pd.read_csv(tmp_path / "eq22_network.csv").set_index("method_label")
    assert list(table.index) == ["norm τ=0.25 (batch)", "none", "norm τ=0.25 (sample)"]
    assert list(table["tau"]) == [0.25, math.inf, 0.25] and list(table["batch_size"]) == [8, 16, 16]
    assert table[["H_found", "L_found", "flow_found"]].iloc[1:].all().all() and (table["dist_start_L"] < 1e-3).all()
    assert list(table["minimum"]) == [0, 0, 0]  # every run started at the one loss minimum
    none, clipped, batched = table.loc["none"], table.loc["norm τ=0.25 (sample)"], table.loc["norm τ=0.25 (batch)"]
    assert none["dist_H_L"] < 1e-6 and none["dist_avg_H"] == pytest.approx(none["dist_avg_L"], abs=1e-6)
    assert clipped["clipped_at_H"] == 1 and clipped["dist_H_L"] > 0.1 and clipped["residual_H_flow"] <= 1e-10
    # Batch clipping: theta_H is where per-sample clipping's ODE from theta_L ends (here not the zero
    # found from the clipped run's short average: the field has several), theta_B batch clipping's
    # own zero, between theta_L and theta_H.
    assert batched["dist_flow_L"] > 0.1 and batched["flow_found"] and pd.isna(batched["dist_avg_H"])
    assert batched["B_found"] and 0 < batched["B_monte_carlo_error"] <= batched["B_error"] < 0.1 * batched["dist_B_L"]
    assert 0 < batched["position_B"] < 1 and batched["dist_B_L"] > 0.1 and batched["dist_B_flow"] > 0.1
    assert clipped["dist_flow_L"] == pytest.approx(batched["dist_flow_L"], abs=1e-12)  # one minimum: one ODE zero
    assert batched["B_draws"] == 64 * 64 // 8 and batched["clipped_batches_at_B"] > 0
    for column in ("train_acc_H", "test_acc_L", "train_acc_avg", "test_acc_B"):
        assert table[column].dropna().between(0, 1).all()


def test_eq22_network_refuses_a_run_its_field_does_not_describe(make_cfg, tmp_path):
    """torch's clipping factor (eps > 0), batches drawn in epochs (or another model) would be
    compared with the wrong field: collect stops, naming the run and what it needs, before any work."""
    from gradclip.runner import train

    cfg = make_cfg("+experiment=eq22_network", "steps=4", "eval_every=0", "data.n_train=32", "model.width=4",
                   "batch_size=8", "logger=none", "clip=norm", "clip.granularity=batch", "sampling=shuffle", tiny=False)
    train(cfg, tmp_path / "eq22_network" / "batch")
    with pytest.raises(SystemExit, match=r"eq22_network: .*batch cannot be compared .*clip.eps=1e-06 \(needs 0, "
                                         r"the exact factor\); sampling=shuffle \(.*needs iid\)"):
        collect("eq22_network", Source(runs=tmp_path, results=tmp_path))
    assert not (tmp_path / "eq22_network.csv").exists()
