"""Full-data evaluation of a whole population from ghost norms (gradclip.evaluation.PopulationEvaluation)
against the one-model-at-a-time evaluation from vmap(grad)'s per-example gradients
(gradclip.evaluation.evaluate), on every model ghost norms cover, for none, norm and AGC: the
numbers the convergence and step-size figures plot must not depend on which path computed them."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from test_ghost import CASES, between, problem

from gradclip.clipping import Clipper
from gradclip.evaluation import PopulationEvaluation, evaluate
from gradclip.gradients import PerSampleGradients
from gradclip.population import Population


def data_for(x, y, task):
    """A data set of 10 training and 5 test examples (chunks of 4 do not divide either)."""
    return SimpleNamespace(x_train=x[:10], y_train=y[:10], x_test=x[10:], y_test=y[10:], task=task)


# Every model in a population of three (the vmapped path), and a population of one (a single run,
# which calls the model itself) on a feed-forward and a recurrent model.
POPULATIONS = [(*case, 3) for case in CASES] + [(*case, 1) for case in CASES if case[0] in ("mlp", "lstm") and not case[1]
                                                and case[2] != (6, 3)]


@pytest.mark.parametrize("name,overrides,shape,members", POPULATIONS)
def test_population_evaluation_matches_evaluate(name, overrides, shape, members):
    """Every metric of every member agrees to 1e-5 relative: both sum the same products in
    different orders (~1e-7 relative per operation in float32). The chaotic deep_tanh and
    rnn_exploding run in float64, as in tests/test_ghost.py: there float32 rounding of the
    forward pass alone reaches 1e-4."""
    dtype = torch.float64 if name in ("deep_tanh", "rnn_exploding") else torch.float32
    models = []
    for seed in range(members):
        model, x, y, loss_fn = problem(name, overrides, shape, batch=15, dtype=dtype)
        if seed:  # another initialisation, the same data
            torch.manual_seed(seed)
            for p in model.parameters():
                p.data.add_(0.1 * torch.randn_like(p))
        models.append(model)
    task = "regression" if name == "linear" else "classification"
    data = data_for(x, y, task)
    names, params = map(list, zip(*models[0].named_parameters()))
    grads, _ = PerSampleGradients(models[0], loss_fn)(data.x_train, data.y_train)
    norms = Clipper("none", names=names).clip_samples(grads, params)[1].sample_grad_norm
    settings = [("none", {}), ("norm", dict(threshold=between(norms), eps=0.0)),
                ("agc", dict(clip_factor=0.01, exclude=[]))]
    for method, kwargs in settings:
        clippers = [Clipper(method, names=names, **kwargs) for _ in models]
        expected = [evaluate(m, PerSampleGradients(m, loss_fn), c, data, loss_fn, chunk=4)
                    for m, c in zip(models, clippers)]
        population = Population([copy.deepcopy(m) for m in models], loss_fn, Clipper.stacked(clippers), "batch")
        got = PopulationEvaluation(population, loss_fn, chunk=4)(data)
        assert len(got) == members
        for k, (want, have) in enumerate(zip(expected, got)):
            assert set(have) == set(want), method
            for key in want:
                assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-9), f"{method} member {k} {key}"


def test_the_runner_evaluates_populations_with_ghost_norms_and_says_so(make_cfg, tmp_path):
    """A run records which path computed its full-data rows; vmap(grad) where asked for."""
    from gradclip.runner import train

    for per_sample, expected in [("auto", "ghost"), ("vmap", "vmap: per_sample=vmap")]:
        cfg = make_cfg(f"per_sample={per_sample}", "steps=2", "eval_every=2", "clip=norm", "logger=none")
        summary = train(cfg, tmp_path / per_sample)
        assert summary["evaluation_gradients"] == expected
