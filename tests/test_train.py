"""The runner on real configs: records, determinism, divergence, bounds, idempotence, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gradclip.checks import ConfigError
from gradclip.data import Dataset
from gradclip.records import load_runs
from gradclip.runner import train


def read_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_its_record(make_cfg, tmp_path):
    summary = train(make_cfg("clip=norm", "clip.granularity=sample"), tmp_path)
    assert summary["status"] == "completed" and summary["diverged_step"] is None
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["clip"] == {"method": "norm", "granularity": "sample", "threshold": 1.0, "eps": 1e-6}
    assert config["data"]["root"].startswith("/")  # resolved, not an interpolation
    rows = read_rows(tmp_path)
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    eval_steps = [r["step"] for r in rows if "eval/H_norm" in r]
    assert train_steps == [5, 10, 15, 20, 25, 30]
    assert eval_steps == [0, 10, 20, 30]
    last = rows[-1]
    for key in ("eval/H_norm", "eval/mean_grad_norm", "eval/scaled_loss", "eval/train_loss",
                "eval/train_acc", "eval/test_loss", "eval/test_acc", "eval/param_norm"):
        assert key in last
    first_train = next(r for r in rows if "train/loss" in r)
    for key in ("train/scaled_loss", "train/grad_norm", "train/clipped_grad_norm", "train/clip_fraction",
                "train/clip_factor_mean", "train/clip_factor_max", "train/lr", "train/sum_lr",
                "train/sum_lr_sq", "train/param_norm", "train/dist_from_init", "train/max_step_ratio",
                "train/sample_grad_norm_max"):
        assert key in first_train
    # a(n) = 0.1 / (n + 1)^0.75 and its running sums, as logged at step 5 (updates n = 0..4)
    a = [0.1 / (n + 1) ** 0.75 for n in range(5)]
    assert first_train["train/lr"] == pytest.approx(a[-1])
    assert first_train["train/sum_lr"] == pytest.approx(sum(a))
    assert first_train["train/sum_lr_sq"] == pytest.approx(sum(x * x for x in a))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == "completed" and saved["steps_completed"] == 30
    assert saved["final"]["eval/H_norm"] == last["eval/H_norm"]
    for key in ("python", "torch", "torchvision", "hydra", "wandb"):
        assert saved["versions"][key]
    assert set(saved["git"]) == {"commit", "dirty"} and saved["device"] == "cpu" and saved["seed"] == 0
    assert saved["wall_time_s"] > 0


@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_same_seed_same_metrics(make_cfg, tmp_path, granularity):
    cfg = make_cfg("clip=agc", f"clip.granularity={granularity}", "seed=3")
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")
    other = make_cfg("clip=agc", f"clip.granularity={granularity}", "seed=4")
    train(other, tmp_path / "c")
    assert read_rows(tmp_path / "a") != read_rows(tmp_path / "c")


def in_fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (where nothing is imported yet), stripped."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_deterministic_setting_reaches_torch_without_loading_inductor():
    """gradclip.runner.use_deterministic_algorithms sets torch's flag (warn-only) both ways, and
    in a fresh process it does so without importing torch._inductor, as torch's own call would."""
    probe = """
import sys, torch
from gradclip.runner import use_deterministic_algorithms
states = []
for mode in (True, False, True):
    use_deterministic_algorithms(mode)
    states.append((torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()))
print(states, "torch._inductor.config" in sys.modules)
"""
    assert in_fresh_python(probe) == "[(True, True), (False, True), (True, True)] False"


def test_recorded_torchvision_version_is_the_packages_own_without_its_import():
    """provenance reads torchvision's version from its version file (its import costs 1.4 s a
    process): in a fresh process, without importing torchvision, the string its import gives,
    build tag included."""
    probe = """
import sys
from gradclip.provenance import versions
recorded = versions()["torchvision"]
imported = "torchvision" in sys.modules
import torchvision
print(recorded == torchvision.__version__, imported)
"""
    assert in_fresh_python(probe) == "True False"


def test_a_run_built_to_diverge_does_and_is_a_result(make_cfg, tmp_path):
    cfg = make_cfg("clip=none", "model=deep_tanh", "schedule=constant", "schedule.a0=50.0", "steps=200")
    summary = train(cfg, tmp_path)
    assert summary["status"] == "diverged"
    assert 1 <= summary["diverged_step"] <= 200 and summary["diverged_reason"]
    assert summary["steps_completed"] == summary["diverged_step"]  # the diverging update was applied
    rows = read_rows(tmp_path)
    assert rows[-1]["step"] == summary["diverged_step"]  # the diverging step is logged
    # final values are those of the diverging step, not of the evaluation at step 0
    assert summary["final"]["step"] == summary["diverged_step"]
    assert not [k for k in summary["final"] if k.startswith("eval/")]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def one_example(monkeypatch, x: float, y: float) -> None:
    """The run's data: one regression example (x, y), so that each divergence branch can be
    reached on purpose by the real loop."""
    data = Dataset("one_example", "regression", torch.tensor([[x]]), torch.tensor([[y]]),
                   torch.tensor([[x]]), torch.tensor([[y]]), 1)
    monkeypatch.setattr("gradclip.runner.load_dataset", lambda cfg: data)


LINEAR = ["model=linear", "clip=none", "batch_size=1", "eval_every=0", "schedule=constant"]


@pytest.mark.parametrize(
    "x, y, a0, reason",
    [
        # loss 1/2 (theta x - y)^2 at theta_0 = 0 is NaN: a NaN in the data
        (float("nan"), 1.0, 0.1, "non-finite loss"),
        # loss 1/2 (1e10)^2 is finite, its gradient -1e10 * 1e30 overflows float32
        (1e30, 1e10, 0.1, "non-finite gradient"),
        # loss and gradient finite (50, -10), the step a0 * 10 = 1e39 overflows theta
        (1.0, 10.0, 1e38, "non-finite weights"),
    ],
)
def test_each_non_finite_branch_of_divergence_is_reached_and_named(make_cfg, tmp_path, monkeypatch, x, y, a0, reason):
    one_example(monkeypatch, x, y)
    summary = train(make_cfg(*LINEAR, f"schedule.a0={a0}"), tmp_path)
    assert (summary["status"], summary["diverged_step"], summary["diverged_reason"]) == ("diverged", 1, reason)
    assert read_rows(tmp_path)[-1]["step"] == 1


def test_the_norm_bound_branch_names_the_norm_and_the_bound(make_cfg, tmp_path, monkeypatch):
    one_example(monkeypatch, 1.0, 10.0)  # theta_1 = 0 + 1.0 * 10: ||theta_1|| = 10 > B = 5
    summary = train(make_cfg(*LINEAR, "schedule.a0=1.0", "divergence.max_norm=5"), tmp_path)
    assert (summary["status"], summary["diverged_step"]) == ("diverged", 1)
    assert summary["diverged_reason"] == "||theta|| = 10 > divergence.max_norm = 5"


def test_the_same_run_clipped_stays_stable(make_cfg, tmp_path):
    cfg = make_cfg("clip=norm", "clip.threshold=0.1", "model=deep_tanh", "schedule=constant",
                   "schedule.a0=50.0", "steps=200", "eval_every=0")
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed"
    # ||theta|| can grow by at most sum a(n) tau = 200 * 50 * 0.1 from its start
    assert summary["max_param_norm"] <= summary["initial_param_norm"] + 200 * 50 * 0.1
    assert not [r for r in read_rows(tmp_path) if "eval/H_norm" in r]  # eval_every=0: no evaluation


def test_norm_clipping_bounds_every_increment(make_cfg, tmp_path):
    for granularity in ("batch", "sample"):
        cfg = make_cfg("clip=norm", "clip.threshold=0.05", "clip.eps=0", f"clip.granularity={granularity}",
                       "schedule=constant", "schedule.a0=0.5", "log_every=1")
        summary = train(cfg, tmp_path / granularity)
        rows = [r for r in read_rows(tmp_path / granularity) if "train/loss" in r]
        ratios = [r["train/max_step_ratio"] for r in rows]
        # and so the iterates stay within tau * sum a(n) of the start
        assert all(r["train/dist_from_init"] <= 0.05 * r["train/sum_lr"] * (1 + 1e-5) for r in rows)
        assert max(ratios) <= 0.05 * (1 + 1e-5)
        if granularity == "batch":  # the bound is reached: every mean gradient is clipped to tau
            assert min(ratios) > 0.05 * (1 - 1e-5)
        else:  # a mean of clipped examples pointing different ways is shorter than tau
            assert 0 < max(ratios) < 0.05
        assert summary["max_step_ratio"] == pytest.approx(max(ratios))


@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_agc_bounds_every_unit_increment(make_cfg, tmp_path, granularity):
    cfg = make_cfg("clip=agc", "clip.clip_factor=0.001", f"clip.granularity={granularity}",
                   "schedule=constant", "schedule.a0=0.5")
    summary = train(cfg, tmp_path)
    # The clipped gradient obeys the unit bound to float precision ...
    assert summary["max_unit_update_ratio"] <= 1 + 1e-5
    # ... the realised float32 step W - a g is rounded to ~6e-8 |W| per element, and with
    # lambda = 1e-3 the step is ~5e-4 |W|: its ratio can exceed 1 by ~1e-4 from rounding alone.
    assert summary["max_unit_step_ratio"] <= 1 + 1e-3
    if granularity == "batch":  # with lambda this small, some unit is clipped to its bound
        assert summary["max_unit_update_ratio"] > 1 - 1e-5


def test_agc_with_eps_zero_and_zero_weights_still_reports_its_bound(make_cfg, tmp_path):
    """Zero-initialised biases have bound lambda * 0 = 0: their 0/0 ratio must not hide the rest."""
    cfg = make_cfg("clip=agc", "clip.clip_factor=0.001", "clip.eps=0", "schedule=constant", "schedule.a0=0.5")
    summary = train(cfg, tmp_path)
    assert 1 - 1e-5 < summary["max_unit_update_ratio"] <= 1 + 1e-5


def test_tiny_step_sizes_the_bound_holds_for_the_update_not_for_rounded_weights(make_cfg, tmp_path):
    """At a(n) = 1e-6 float32 rounding of theta dominates the realised step; the update itself
    (the clipped gradient) still obeys ||g|| <= tau exactly."""
    cfg = make_cfg("clip=norm", "clip.threshold=0.05", "clip.eps=0", "schedule=constant", "schedule.a0=1e-6")
    summary = train(cfg, tmp_path)
    assert summary["max_update_norm"] <= 0.05 * (1 + 1e-6)
    # per element a * g is far below ulp(theta): most weights do not move at all, others by an ulp
    assert abs(summary["max_step_ratio"] / 0.05 - 1) > 1e-2


def test_finished_record_is_not_run_again(make_cfg, tmp_path):
    cfg = make_cfg("clip=none")
    first = train(cfg, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    second = train(cfg, tmp_path)
    assert second == first | {"skipped": True}
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    rerun = train(make_cfg("clip=none", "rerun=true"), tmp_path)
    assert "skipped" not in rerun and rerun["status"] == "completed"
    # a new attempt: every file of the record was written again
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert all(after[name] > before[name] for name in ("summary.json", "config.yaml", "metrics.jsonl"))
    assert read_rows(tmp_path) == [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_a_failed_run_is_recorded(make_cfg, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    # The full-data evaluation fails, on either path (ghost norms for every member at once, or
    # vmap(grad) one member at a time).
    monkeypatch.setattr("gradclip.runner.PopulationEvaluation.__call__", boom)
    monkeypatch.setattr("gradclip.runner.evaluate", boom)
    for path in ("auto", "vmap"):
        with pytest.raises(RuntimeError):
            train(make_cfg(f"per_sample={path}"), tmp_path / path)
        summary = json.loads((tmp_path / path / "summary.json").read_text())
        assert summary["status"] == "failed" and "simulated" in summary["error"]
        assert summary["evaluation_gradients"] == ("ghost" if path == "auto" else "vmap: per_sample=vmap")
    assert train(make_cfg(), tmp_path / "sweep-job", reraise=False)["status"] == "failed"


def test_wandb_failure_keeps_the_local_record(make_cfg, tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise ConnectionError("wandb service unreachable (simulated)")

    monkeypatch.setattr(wandb, "init", broken_init)
    summary = train(make_cfg("logger=wandb"), tmp_path)
    assert summary["status"] == "completed" and summary["wandb"] is None
    assert len(read_rows(tmp_path)) > 5


def test_wandb_failure_while_logging_keeps_the_local_record(make_cfg, tmp_path, monkeypatch):
    import wandb.sdk.wandb_run as wandb_run

    def broken_log(self, *args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(wandb_run.Run, "log", broken_log)
    summary = train(make_cfg("logger=wandb"), tmp_path)
    assert summary["status"] == "completed"
    assert [r["step"] for r in read_rows(tmp_path) if "train/loss" in r] == [5, 10, 15, 20, 25, 30]


def test_wandb_offline_mirrors_the_run_row_by_row(make_cfg, tmp_path):
    """The offline .wandb file, read back with W&B's own reader (`wandb leet inspect --json`),
    holds every row of metrics.jsonl with the same values (W&B merges the rows of one step)."""
    summary = train(make_cfg("logger=wandb", "logger.mode=offline"), tmp_path)
    offline = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and summary["wandb"] == str(offline[0].parent)
    wandb_cli = Path(sys.executable).parent / "wandb"
    dump = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(offline[0])],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    history = [json.loads(line)["history"]["item"] for line in dump.splitlines() if '"type": "history"' in line
               or '"type":"history"' in line]
    assert history, dump[:500]
    by_step: dict[int, dict] = {}
    for row in read_rows(tmp_path):
        by_step.setdefault(row["step"], {}).update(row)
    mirrored = {item["step"]: {k: v for k, v in item.items() if not k.startswith("_")} for item in history}
    assert mirrored == by_step


def test_records_load_into_frames(make_cfg, tmp_path):
    for seed in (0, 1):
        train(make_cfg("clip=norm", f"seed={seed}"), tmp_path / f"seed{seed}")
    runs, metrics = load_runs(tmp_path)
    assert sorted(runs["seed"]) == [0, 1]
    assert set(runs["summary.status"]) == {"completed"}
    assert {"clip.method", "clip.threshold", "schedule.a0", "model.name", "summary.max_param_norm"} <= set(runs.columns)
    assert list(metrics.columns) == ["run_id", "step", "metric", "value"]
    h = metrics[metrics.metric == "eval/H_norm"]
    assert len(h) == 2 * 4 and set(h.run_id) == set(runs.run_id)


def test_evaluation_h_is_the_huber_mean_field_on_the_location_problem(make_cfg, tmp_path):
    """At theta = 0: H = mean_i clip(theta - y_i, -tau, tau) exactly, mean grad = -mean(y)."""
    cfg = make_cfg("model=linear", "data=location", "data.noise.dist=lognormal", "clip=norm",
                   "clip.threshold=0.5", "clip.eps=0", "steps=1", "eval_every=1")
    train(cfg, tmp_path)
    first = read_rows(tmp_path)[0]
    from gradclip.data import load_dataset

    y = load_dataset(cfg.data).y_train.double().squeeze(1)
    assert first["step"] == 0
    assert first["eval/H_norm"] == pytest.approx(abs(torch.clamp(-y, -0.5, 0.5).mean().item()), rel=1e-5)
    assert first["eval/mean_grad_norm"] == pytest.approx(abs(y.mean().item()), rel=1e-5)
    assert first["eval/train_loss"] == pytest.approx(0.5 * (y**2).mean().item(), rel=1e-5)


def test_log_spaced_evaluation_and_logged_theta(make_cfg, tmp_path):
    """eval_log_points adds log-spaced full-data rows; log_theta logs theta itself, whose last
    value is the model's parameter and whose distance from initial_theta is dist_from_init."""
    cfg = make_cfg("model=linear", "data=linreg", "clip=norm", "clip.granularity=sample", "steps=100",
                   "log_every=10", "eval_every=0", "eval_log_points=5", "log_theta=true")
    summary = train(cfg, tmp_path)
    rows = read_rows(tmp_path)
    assert [r["step"] for r in rows if "eval/H_norm" in r] == [0, 1, 3, 10, 32, 100]
    last = [r for r in rows if "train/loss" in r][-1]
    theta = torch.tensor([last[f"train/theta_{i}"] for i in range(5)])
    assert summary["initial_theta"] == [0.0] * 5  # model.init=zero
    assert theta.norm().item() == pytest.approx(last["train/dist_from_init"], rel=1e-6)
    assert theta.norm().item() == pytest.approx(last["train/param_norm"], rel=1e-6)
    assert "train/theta_5" not in last


def test_iterate_averages_are_the_means_of_the_iterates_and_go_with_the_final_theta(make_cfg, tmp_path):
    """average_from = 0.5 over 40 steps: theta.npz holds the final theta and the means of
    theta(n) over n > 20 and n > 30 (checked against theta logged at every step); a relaunch
    over the finished record keeps it; a run that does not complete leaves no theta.npz."""
    from gradclip.records import load_theta

    cfg = make_cfg("model=linear", "data=linreg", "clip=norm", "clip.granularity=sample", "steps=40",
                   "log_every=1", "eval_every=0", "log_theta=true", "average_from=0.5")
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["theta_file"] == "theta.npz"
    assert (summary["average_from_step"], summary["average_late_from_step"]) == (20, 30)
    rows = [r for r in read_rows(tmp_path / "run") if "train/loss" in r]
    path = np.array([[r[f"train/theta_{i}"] for i in range(5)] for r in rows], dtype=np.float64)
    saved = load_theta(tmp_path / "run")
    assert saved["steps"] == {"average_from": 20, "average_late_from": 30}
    assert list(saved["final"]) == ["head.weight"] and saved["final"]["head.weight"].shape == (1, 5)
    assert np.array_equal(saved["final"]["head.weight"][0], path[-1].astype(np.float32))
    assert np.array_equal(saved["initial"]["head.weight"][0], np.float32(summary["initial_theta"]))
    np.testing.assert_allclose(saved["average"]["head.weight"][0], path[20:].mean(0), rtol=1e-12)
    np.testing.assert_allclose(saved["average_late"]["head.weight"][0], path[30:].mean(0), rtol=1e-12)
    assert saved["average"]["head.weight"].dtype == np.float64
    stamp = (tmp_path / "run" / "theta.npz").stat().st_mtime_ns
    assert train(cfg, tmp_path / "run")["skipped"] and (tmp_path / "run" / "theta.npz").stat().st_mtime_ns == stamp
    diverged = train(make_cfg("model=linear", "data=linreg", "clip=none", "schedule.a0=1e3", "steps=40",
                              "eval_every=0", "average_from=0.5"), tmp_path / "diverged")
    assert diverged["status"] == "diverged" and not (tmp_path / "diverged" / "theta.npz").exists()


@pytest.mark.parametrize("fraction, starts", [(0, (0, 50)), (0.29, (29, 64)), (0.5, (50, 75))])
def test_averaging_windows_start_after_the_exact_fraction_of_the_steps(make_cfg, tmp_path, fraction, starts):
    """n > f * steps, computed exactly (0.29 * 100 is 28.999999999999996 in floating point)."""
    summary = train(make_cfg("model=linear", "data=linreg", "steps=100", "eval_every=0", f"average_from={fraction}"),
                    tmp_path)
    assert (summary["average_from_step"], summary["average_late_from_step"]) == starts


def test_a_relaunch_removes_an_earlier_attempts_theta_and_a_damaged_one_is_named(make_cfg, tmp_path, monkeypatch):
    import gradclip.records as records

    cfg = make_cfg("model=linear", "data=linreg", "steps=10", "eval_every=0", "average_from=0.5")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "theta.npz").write_bytes(b"not an npz")
    with pytest.raises(records.RecordError, match=r"theta.npz: cannot be read .* rerun=true trains this run again"):
        records.load_theta(tmp_path / "run")
    seen, start = [], records.RunRecorder.start

    def watched_start(self, config, summary):
        start(self, config, summary)
        seen.append((self.run_dir / "theta.npz").exists())

    monkeypatch.setattr(records.RunRecorder, "start", watched_start)
    assert train(cfg, tmp_path / "run")["status"] == "completed"
    assert seen == [False] and records.load_theta(tmp_path / "run")["steps"]["average_from"] == 5


# -- bad input: one clear error before any work, naming the key ---------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["clip=norm", "clip.threshold=0"], r"clip.threshold=0 .* > 0"),
        (["clip=norm", "clip.threshold=-1"], r"clip.threshold=-1 .* > 0"),
        (["clip=agc", "clip.clip_factor=0"], r"clip.clip_factor=0 .* > 0"),
        (["clip=agc", "clip.clip_factor=-0.01"], r"clip.clip_factor=-0.01 .* > 0"),
        (["clip=agc", "clip.eps=-1e-3"], r"clip.eps=-0.001 .* >= 0"),
        (["clip=agc", "clip.exclude=[fc.weight]"], r"clip.exclude .*fc.weight.* match no parameter"),
        (["clip.method=clamp"], r"clip.method='clamp' is not one of: none, norm, agc, value"),
        (["clip.granularity=example"], r"clip.granularity='example' is not one of: batch, sample"),
        (["schedule=robbins_monro", "schedule.power=-0.5"], r"schedule.power=-0.5 .* in \[0, 10\]"),
        (["schedule.name=linear"], r"schedule.name='linear' is not one of"),
        (["steps=0"], r"steps=0 .* integer >= 1"),
        (["steps=-5"], r"steps=-5 .* integer >= 1"),
        (["batch_size=0"], r"batch_size=0 .* integer >= 1"),
        (["batch_size=5000"], r"batch_size=5000 is larger than the 4000 training examples of data=mnist1d"),
        (["model.name=transformer"], r"model.name='transformer' is not one of: mlp, cnn1d, rnn"),
        (["data.name=imagenet"], r"data.name='imagenet' is not one of: mnist1d, digits"),
        (["device=tpu"], r"device='tpu' is not one of: auto, cpu, cuda"),
        (["logger.name=tensorboard"], r"logger.name='tensorboard' is not one of: none, wandb"),
        (["divergence.max_norm=0"], r"divergence.max_norm=0 .* > 0"),
        (["batch_size=16.0"], r"batch_size=16.0 .* integer >= 1"),
        (["seed=1.5"], r"seed=1.5 .* integer >= 0"),
        (["threads=-3"], r"threads=-3 .* null or an integer >= 1"),
        (["eval_log_points=-1"], r"eval_log_points=-1 .* integer >= 0"),
        (["log_theta=yes"], r"log_theta='yes' is not one of: True, False"),
        (["average_from=1"], r"average_from=1 is not allowed: must be a finite number in \[0, 1\) \(or null: off\)"),
        (["data.n_train=5000"], r"data.n_train=5000 must be null \(all 4000\) or an integer in \[1, 4000\]"),
        (["log_theta=true"], r"log_theta=true logs every parameter, but model=mlp has 15210 \(at most 64\)"),
        (["model=linear", "data=location", "clip=agc"], r"clip.exclude=\['head.\*'\] exempts every parameter"),
    ],
)
def test_bad_input_fails_before_any_work(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(make_cfg(*overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_input_loses_nothing_already_written(make_cfg, tmp_path):
    train(make_cfg("clip=norm"), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ConfigError):
        train(make_cfg("clip=norm", "clip.threshold=-1", "rerun=true"), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_a_finished_record_of_another_config_is_not_returned_as_this_one(make_cfg, tmp_path):
    train(make_cfg("clip=norm"), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"holds a finished run of another config .*clip.threshold"):
        train(make_cfg("clip=norm", "clip.threshold=2.0"), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # keys that do not change results (logger, progress, ...) still find the record
    assert train(make_cfg("clip=norm", "logger=wandb"), tmp_path)["status"] == "completed"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def fake_images(monkeypatch):
    images = Dataset("fake_images", "classification", torch.rand(8, 3, 32, 32), torch.randint(10, (8,)),
                     torch.rand(4, 3, 32, 32), torch.randint(10, (4,)), 10)
    monkeypatch.setattr("gradclip.runner.load_dataset", lambda cfg: images)


def test_a_batchnorm_model_trains_at_batch_granularity_and_is_evaluated(make_cfg, tmp_path, monkeypatch):
    fake_images(monkeypatch)
    cfg = make_cfg("model=resnet18", "model.norm=batch", "batch_size=4", "steps=2", "eval_every=1", "eval_chunk=4")
    assert train(cfg, tmp_path)["status"] == "completed"
    assert [r["step"] for r in read_rows(tmp_path) if "eval/H_norm" in r] == [0, 1, 2]


def test_sample_granularity_with_a_model_torch_func_cannot_handle(make_cfg, tmp_path, monkeypatch):
    """resnet18 with BatchNorm: the error names the layer and the way out, before training."""
    fake_images(monkeypatch)
    cfg = make_cfg("model=resnet18", "model.norm=batch", "clip.granularity=sample", "batch_size=4")
    with pytest.raises(ConfigError, match=r"clip.granularity=sample .*BatchNorm.* clip.granularity=batch"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unit_log_records_every_units_weight_and_step(make_cfg, tmp_path):
    from gradclip.records import load_units

    cfg = make_cfg("clip=agc", "clip.clip_factor=0.01", "unit_log_every=10", "schedule=constant", "schedule.a0=0.1")
    train(cfg, tmp_path)
    units = load_units(tmp_path)
    assert sorted(units["step"].unique()) == [1, 10, 20, 30]
    one_step = units[units.step == 10]
    # MLP 40-100-100-10: 100 + 100 + 10 weight rows, and one unit per bias
    assert len(one_step) == 100 + 1 + 100 + 1 + 10 + 1
    hidden = one_step[one_step.param == "hidden.0.weight"]
    # AGC's bound holds unit by unit (float32 rounding aside)
    bound = 0.1 * 0.01 * hidden["weight_norm"].clip(lower=1e-3)
    assert (hidden["step_norm"] <= bound * (1 + 1e-3)).all()


# -- behaviour that the experiments rely on, each against a value known by hand ---------------------


def theta_rows(run_dir):
    return {r["step"]: r for r in read_rows(run_dir) if "train/theta_0" in r}


def test_momentum_and_weight_decay_follow_torch_sgd_by_hand(make_cfg, tmp_path, monkeypatch):
    """One example, x = 1, y = 10, theta_0 = 0: g_n = theta_n - 10 (+ wd theta_n), v = mu v + g,
    theta <- theta - a v (torch's SGD), after clipping: the logged theta follows it step by step."""
    one_example(monkeypatch, 1.0, 10.0)
    mu, wd, a, tau = 0.9, 0.1, 0.05, 3.0
    cfg = make_cfg(*LINEAR, "clip=norm", "clip.threshold=3.0", "clip.eps=0", f"schedule.a0={a}", f"momentum={mu}",
                   f"weight_decay={wd}", "steps=6", "log_every=1", "log_theta=true")
    train(cfg, tmp_path)
    theta, v, expected = 0.0, 0.0, {}
    for n in range(1, 7):
        g = theta - 10.0
        g = g * min(1.0, tau / abs(g))  # clipped first, then weight decay and momentum
        v = mu * v + g + wd * theta
        theta -= a * v
        expected[n] = theta
    got = {n: row["train/theta_0"] for n, row in theta_rows(tmp_path).items()}
    assert got == pytest.approx(expected, rel=1e-5)


def test_scaled_losses_divide_each_loss_by_its_clipping_factor(make_cfg, tmp_path, monkeypatch):
    """theta_0 = 0, x = 1, y = 10: loss 50, gradient -10, c = max(1, 10 / tau) = 10 at tau = 1, so
    the scaled loss is 5, in the training row of step 1 and the full-data row of step 0."""
    one_example(monkeypatch, 1.0, 10.0)
    cfg = make_cfg(*LINEAR, "clip=norm", "clip.threshold=1.0", "clip.eps=0", "clip.granularity=sample",
                   "schedule.a0=0.01", "steps=1", "log_every=1", "eval_every=1")
    train(cfg, tmp_path)
    rows = {(r["step"], "eval/H_norm" in r): r for r in read_rows(tmp_path)}
    assert rows[(0, True)]["eval/scaled_loss"] == pytest.approx(5.0)
    assert rows[(0, True)]["eval/train_loss"] == pytest.approx(50.0)
    assert rows[(1, False)]["train/scaled_loss"] == pytest.approx(5.0)
    assert rows[(1, False)]["train/loss"] == pytest.approx(50.0)


def test_shuffled_sampling_visits_every_example_once_an_epoch():
    from gradclip.runner import BatchSampler

    sampler = BatchSampler(10, 3, "shuffle", [torch.Generator().manual_seed(0)])
    epochs = [torch.cat([sampler()[0] for _ in range(3)]) for _ in range(4)]  # 3 batches of 3; 1 left over
    for drawn in epochs:
        assert len(set(drawn.tolist())) == 9  # no repeat within an epoch; the ragged tail is dropped
    assert len({tuple(e.tolist()) for e in epochs}) == 4  # a new order each epoch
    iid = BatchSampler(10, 3, "iid", [torch.Generator().manual_seed(0)])
    assert any(len(set(torch.cat([iid()[0] for _ in range(3)]).tolist())) < 9 for _ in range(20))


@pytest.mark.parametrize("indices", [None, 2 * 32 * 3])  # chunks of 256 steps; of 3 (the memory cap)
def test_iid_batches_drawn_in_chunks_are_those_drawn_one_step_at_a_time(monkeypatch, indices):
    """The sampler draws several steps per generator call; each member's batches are the ones a
    call per step from its own generator gives, across chunk boundaries."""
    from gradclip import runner
    from gradclip.runner import SAMPLE_CHUNK, BatchSampler

    if indices:
        monkeypatch.setattr(runner, "SAMPLE_CHUNK_INDICES", indices)
    seeds, steps = [3, 7], SAMPLE_CHUNK + 5
    sampler = BatchSampler(1000, 32, "iid", [torch.Generator().manual_seed(s) for s in seeds])
    drawn = torch.stack([sampler() for _ in range(steps)], dim=1)  # [members, steps, batch]
    for k, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        one_by_one = torch.stack([torch.randint(1000, (32,), generator=generator) for _ in range(steps)])
        assert torch.equal(drawn[k], one_by_one)


def test_shuffled_batches_of_a_population_are_each_members_own():
    from gradclip.runner import BatchSampler

    together = BatchSampler(10, 3, "shuffle", [torch.Generator().manual_seed(s) for s in (1, 2)])
    alone = [BatchSampler(10, 3, "shuffle", [torch.Generator().manual_seed(s)]) for s in (1, 2)]
    for _ in range(7):  # across epochs
        batches = together()
        for k, sampler in enumerate(alone):
            assert torch.equal(batches[k], sampler()[0])


def test_a_run_with_shuffled_sampling_differs_from_iid(make_cfg, tmp_path):
    train(make_cfg("eval_every=0", "sampling=shuffle"), tmp_path / "shuffle")
    train(make_cfg("eval_every=0"), tmp_path / "iid")
    assert read_rows(tmp_path / "shuffle") != read_rows(tmp_path / "iid")
    assert yaml.safe_load((tmp_path / "shuffle" / "config.yaml").read_text())["sampling"] == "shuffle"


@pytest.mark.parametrize("left", ["failed", "running-dead"])
def test_a_relaunch_over_a_failed_or_dead_record_trains_again(make_cfg, tmp_path, left):
    cfg = make_cfg("eval_every=0")
    train(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    if left == "failed":
        summary |= {"status": "failed", "error": "RuntimeError: out of memory"}
    else:  # the process that wrote it is gone
        summary |= {"status": "running", "process": summary["process"] | {"start_ticks": -1}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    again = train(cfg, tmp_path)
    assert "skipped" not in again and again["status"] == "completed"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_long_job_names_are_cut_with_a_hash_that_keeps_them_apart():
    from gradclip.train import _dirname

    base = ",".join(f"model.key{i}=value{i}" for i in range(12))
    one, two = _dirname(base + ",seed=1"), _dirname(base + ",seed=2")
    assert one != two and len(one) == len(two) == 133 and one[:120] == two[:120] == base[:120]
    assert _dirname("clip.threshold=1.0,seed=0") == "clip.threshold=1.0,seed=0"
    assert _dirname("data.root=/tmp/x y") == "data.root=_tmp_x_y" and _dirname("") == "default"


def test_batch_clipping_of_batches_of_one_is_per_sample_clipping(make_cfg, tmp_path):
    """A batch of one example is that example: both algorithms take the same steps, on the
    location problem (theta one number) and on a regression with an intercept (the per-sample
    path computes its norms from ghost factors, the batch path from the gradient itself, so they
    agree up to float32 rounding)."""
    for problem in (["+experiment=batch_fixed_point"],
                    ["+experiment=batch_fixed_point", "data=linreg", "model.bias=true", "clip.threshold=1.0"]):
        thetas = {}
        for granularity in ("batch", "sample"):
            cfg = make_cfg(*problem, "batch_size=1", f"clip.granularity={granularity}", "steps=200", "log_every=1",
                           "eval_every=0", "logger=none")
            run_dir = tmp_path / f"{problem[-1]}-{granularity}"
            train(cfg, run_dir)
            thetas[granularity] = [[v for k, v in row.items() if k.startswith("train/theta_")]
                                   for row in read_rows(run_dir) if "train/loss" in row]
        batch, sample = np.array(thetas["batch"]), np.array(thetas["sample"])
        assert batch.shape == sample.shape == (200, 1 if len(problem) == 1 else 6)
        np.testing.assert_allclose(batch, sample, rtol=1e-5, atol=1e-6)  # float32 rounding of the norms apart
