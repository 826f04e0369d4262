"""A population (gradclip.population, gradclip.runner.train_population) against the same configs
run one by one (gradclip.runner.train, a population of one): every clipping method at both
granularities on the MLP, the 1-D CNN, the RNN and the linear model (whose population takes its
gradients without a pass through the model: gradclip.ghost.linear_outputs), members that differ
in seed, a0, p, tau and lambda, one member that diverges while the others go on, and the
evaluation rows."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from gradclip.clipping import Clipper
from gradclip.gradients import per_example_loss
from gradclip.models import build_model
from gradclip.population import Population
from gradclip.records import load_runs, load_theta
from gradclip.runner import train, train_population

SMALL = {"mlp": ["model.width=16"], "cnn1d": ["model=cnn1d", "model.channels=4", "model.depth=2"],
         "rnn": ["model=rnn", "model.hidden=8"],
         "linear": ["model=linear", "model.bias=true", "model.init=default", "data=linreg"]}
# Per member: seed, a0, p, and the setting of the method (tau of norm and value, lambda of AGC).
MEMBERS = [(0, 0.05, 0.6, 0.5, 0.02), (1, 0.1, 0.75, 1.0, 0.05), (2, 0.2, 1.0, 2.0, 0.1)]

# Float32 tolerance. A member's arithmetic is the single run's with the matrix products batched
# over the members (bmm instead of mm) and, per sample, norms summed in another order: ~1e-7
# relative per operation. A dozen steps of a non-chaotic net grow that to ~1e-6; 1e-4 leaves
# room and no more (a wrong member's batch, step size or threshold is off by far more).
CLOSE = dict(rel=1e-4, abs=1e-6)


def member_cfgs(make_cfg, model, method, granularity, *extra):
    cfgs = []
    for seed, a0, power, tau, lam in MEMBERS:
        setting = {"norm": [f"clip.threshold={tau}"], "value": [f"clip.threshold={tau / 10}"],
                   "agc": [f"clip.clip_factor={lam}", *(["clip.exclude=[]"] if model == "linear" else [])],
                   "none": []}[method]
        cfgs.append(make_cfg(*SMALL[model], f"clip={method}", f"clip.granularity={granularity}", f"seed={seed}",
                             f"schedule.a0={a0}", f"schedule.power={power}", "steps=8", "batch_size=8",
                             "log_every=2", "eval_every=0", *setting, *extra))
    return cfgs


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(single_dir, member_dir, single, member):
    for key in ("status", "diverged_step", "steps_completed", "clipper", "per_sample_gradients", "seed"):
        assert member[key] == single[key], key
    maxima = sorted(key for key in single if key.startswith("max_"))
    assert maxima == sorted(key for key in member if key.startswith("max_"))
    for key in ("initial_param_norm", "sum_lr", "sum_lr_sq", *maxima):
        assert member[key] == pytest.approx(single[key], **CLOSE), key
    expected, got = rows(single_dir), rows(member_dir)
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for want, have in zip(expected, got):
        assert have.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float) and math.isfinite(value):
                assert have[key] == pytest.approx(value, **CLOSE), (want["step"], key)
            else:
                assert have[key] == value, (want["step"], key)


@pytest.mark.parametrize("granularity", ["batch", "sample"])
@pytest.mark.parametrize("method", ["none", "norm", "agc", "value"])
@pytest.mark.parametrize("model", ["mlp", "cnn1d", "rnn", "linear"])
def test_a_population_trains_each_member_as_its_own_run(make_cfg, tmp_path, model, method, granularity):
    cfgs = member_cfgs(make_cfg, model, method, granularity)
    singles = [train(cfg, tmp_path / f"single{k}") for k, cfg in enumerate(cfgs)]
    population = train_population(cfgs, [tmp_path / f"member{k}" for k in range(len(cfgs))])
    for k, (single, member) in enumerate(zip(singles, population)):
        assert member["population_size"] == 3 and single["population_size"] == 1
        assert_same_run(tmp_path / f"single{k}", tmp_path / f"member{k}", single, member)
    assert len({s["final"]["train/loss"] for s in population}) == 3  # the members did differ


def test_a_diverging_member_stops_at_its_step_and_the_others_go_on(make_cfg, tmp_path):
    """Unclipped SGD on the MLP at a0 = 3 leaves the ball ||theta|| <= 200 at step 6;
    at a0 = 0.1 it does not. The record of each says the same as its single run. (Not the
    chaotic deep tanh MLP: there float rounding alone separates two runs within a few steps.)"""
    cfgs = [make_cfg(*SMALL["mlp"], "clip=none", "schedule=constant", f"schedule.a0={a0}", f"seed={seed}",
                     "steps=12", "batch_size=8", "log_every=4", "eval_every=0", "divergence.max_norm=200")
            for seed, a0 in [(0, 0.1), (1, 3.0), (2, 0.2)]]
    singles = [train(cfg, tmp_path / f"single{k}") for k, cfg in enumerate(cfgs)]
    assert [s["status"] for s in singles] == ["completed", "diverged", "completed"]
    population = train_population(cfgs, [tmp_path / f"member{k}" for k in range(3)])
    for k, (single, member) in enumerate(zip(singles, population)):
        assert member["diverged_reason"] == single["diverged_reason"]
        assert_same_run(tmp_path / f"single{k}", tmp_path / f"member{k}", single, member)
    assert population[1]["diverged_step"] == 6 and population[0]["steps_completed"] == population[2]["steps_completed"] == 12


def test_evaluation_rows_and_loaded_frames_are_those_of_single_runs(make_cfg, tmp_path):
    cfgs = member_cfgs(make_cfg, "mlp", "norm", "sample", "eval_every=4", "unit_log_every=4", "average_from=0.5")
    for k, cfg in enumerate(cfgs):
        train(cfg, tmp_path / "single" / f"run{k}")
    train_population(cfgs, [tmp_path / "population" / f"run{k}" for k in range(3)])
    for k in range(3):
        expected = rows(tmp_path / "single" / f"run{k}")
        assert [r["step"] for r in expected if "eval/H_norm" in r] == [0, 4, 8]
        assert_same_run(tmp_path / "single" / f"run{k}", tmp_path / "population" / f"run{k}",
                        *(json.loads((tmp_path / where / f"run{k}" / "summary.json").read_text())
                          for where in ("single", "population")))
        units = [(tmp_path / where / f"run{k}" / "units.jsonl").read_text().splitlines() for where in
                 ("single", "population")]
        assert len(units[0]) == len(units[1]) == 3
        # Each member's final theta and iterate averages are its single run's.
        single, member = (load_theta(tmp_path / where / f"run{k}") for where in ("single", "population"))
        assert member["steps"] == single["steps"] == {"average_from": 4, "average_late_from": 6}
        for which in ("final", "average", "average_late"):
            assert list(member[which]) == list(single[which]) == [
                *(f"hidden.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")), "head.weight", "head.bias"]
            for name, value in single[which].items():
                assert member[which][name] == pytest.approx(value, **CLOSE), (which, name)
    singles, _ = load_runs(tmp_path / "single")
    members, _ = load_runs(tmp_path / "population")
    assert list(members.columns) == list(singles.columns)


def test_finished_members_are_skipped_and_the_rest_train(make_cfg, tmp_path):
    cfgs = member_cfgs(make_cfg, "mlp", "norm", "batch")
    dirs = [tmp_path / f"run{k}" for k in range(3)]
    first = train(cfgs[1], dirs[1])
    again = train_population(cfgs, dirs)
    assert again[1]["skipped"] and again[1]["finished_at"] == first["finished_at"]
    assert [again[k].get("skipped") for k in (0, 2)] == [None, None]
    assert [a["population_size"] for a in (again[0], again[2])] == [2, 2]
    assert all(train_population(cfgs, dirs)[k]["skipped"] for k in range(3))


def test_configs_that_differ_in_more_than_population_keys_are_refused(make_cfg, tmp_path):
    cfgs = [make_cfg("batch_size=8"), make_cfg("batch_size=16")]
    with pytest.raises(ValueError, match="train them apart"):
        train_population(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()


def test_population_clipping_is_each_members_own():
    """One clip_batch_ / clip_samples call over members with thresholds [M] equals each member's
    own call with its own threshold: a norm per member, never across members."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (5,)]
    for method, key, values in [("norm", "threshold", [0.1, 1.0, 10.0]), ("agc", "clip_factor", [0.01, 0.1, 1.0]),
                                ("value", "threshold", [0.05, 0.5, 5.0])]:
        params = [torch.randn(3, *s, generator=gen) for s in shapes]
        grads = [torch.randn(3, *s, generator=gen) for s in shapes]
        sample_grads = [torch.randn(3, 4, *s, generator=gen) for s in shapes]
        together = Clipper(method, **{key: torch.tensor(values)})
        batch = [g.clone() for g in grads]
        stats = together.clip_batch_(batch, params, members=True)
        mean, sample_stats = together.clip_samples(sample_grads, params, members=True)
        for k, value in enumerate(values):
            alone = Clipper(method, **{key: value})
            own = [g[k].clone() for g in grads]
            own_stats = alone.clip_batch_(own, [p[k] for p in params])
            own_mean, own_sample_stats = alone.clip_samples([g[k] for g in sample_grads], [p[k] for p in params])
            for a, b, c, d in zip(batch, own, mean, own_mean):
                torch.testing.assert_close(a[k], b)
                torch.testing.assert_close(c[k], d)
            torch.testing.assert_close(stats.factor[k], own_stats.factor)
            torch.testing.assert_close(sample_stats.factor[k], own_sample_stats.factor)
            torch.testing.assert_close(sample_stats.clip_fraction[k], own_sample_stats.clip_fraction)


def test_a_population_of_one_keeps_the_models_own_parameters():
    """A single run trains its model in place (theta's row 0 is the model's parameters), so
    BatchNorm and everything else a plain forward pass does still work."""
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "width": 8}, (40,), 10)
    population = Population([model], per_example_loss("classification"), Clipper("norm"), "batch")
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(1, 4, 40), torch.randint(0, 10, (1, 4))
    population.clipped_gradient(x, y)
    population.sgd_step_([0.1])
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert torch.equal(population.theta[0], torch.cat([p.detach().flatten() for p in model.parameters()]))


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_linear_population_takes_each_members_own_mean_gradient(task):
    """The linear model's population at batch granularity takes its gradients from the output
    gradient alone (gradclip.ghost.linear_outputs, no pass through the model): against each
    member's own autograd gradient of its mean loss, unclipped, for both losses, with a bias and
    three outputs (so that a weight gradient transposed, or another member's, is caught)."""
    torch.manual_seed(0)
    models = [build_model({"name": "linear", "bias": True, "init": "default"}, (5,), 3) for _ in range(3)]
    alone = [copy.deepcopy(m) for m in models]
    loss_fn = per_example_loss(task)
    population = Population(models, loss_fn, Clipper("none"), "batch")
    x = torch.randn(3, 8, 5)
    y = torch.randn(3, 8, 3) if task == "regression" else torch.randint(0, 3, (3, 8))
    losses, _ = population.clipped_gradient(x, y)
    for k, model in enumerate(alone):
        own = loss_fn(model(x[k]), y[k])
        torch.testing.assert_close(losses[k], own.detach(), rtol=1e-6, atol=1e-7)
        grads = torch.autograd.grad(own.mean(), list(model.parameters()))
        for view, grad in zip(population.grad_views, grads):
            torch.testing.assert_close(view[k], grad, rtol=1e-5, atol=1e-7)
