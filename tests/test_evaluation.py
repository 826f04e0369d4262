"""Full-data evaluation of a whole population from ghost norms (gradclip.evaluation.PopulationEvaluation)
against the one-model-at-a-time evaluation from vmap(grad)'s per-example gradients
(gradclip.evaluation.evaluate), on every model ghost norms cover, for none, norm and AGC: the
numbers the convergence and step-size figures plot must not depend on which path computed them."""

from __future__ import annotations

import copy
import math
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


# Every layer type ghost norms cover (Linear, Conv1d, RNNCell, LSTMCell), in a population of three
# that trains at batch granularity (evaluation brings its own ghost norms): the models of
# tests/test_ghost.py but the deep tanh MLP and the exploding RNN (the MLP and the RNN with other
# gains, chaotic enough to need float64) and, for time, one RNN and the LSTM on 6 steps instead
# of 40; the MLP and the CNN also at sample granularity (evaluation then shares the training's
# ghost norms); and populations of one (a single run, which calls the model itself).
BATCH = [c for c in CASES if c[0] in ("mlp", "cnn1d", "linear") or (c[0] == "rnn" and not c[1])
         or (c[0] == "lstm" and c[2] == (6, 3))]
POPULATIONS = ([(*case, 3, "batch") for case in BATCH]
               + [(*case, 3, "sample") for case in BATCH if case[0] in ("mlp", "cnn1d") and not case[1]]
               + [(*case, 1, "batch") for case in BATCH if case[0] in ("mlp", "lstm") and not case[1]])


@pytest.mark.parametrize("name,overrides,shape,members,granularity", POPULATIONS)
def test_population_evaluation_matches_evaluate(name, overrides, shape, members, granularity):
    """Every metric of every member agrees to 1e-5 relative: both sum the same products in
    different orders (~1e-7 relative per operation in float32). Members differ in their weights and in their settings (tau,
    lambda); a member that diverged and was retired leaves the others' numbers unchanged."""
    dtype = torch.float32
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
    tau = between(Clipper("none", names=names).clip_samples(grads, params)[1].sample_grad_norm)
    spread = [1.0, 0.5, 2.0][:members]  # each member its own setting
    settings = [("none", [{}] * members), ("norm", [dict(threshold=tau * f, eps=0.0) for f in spread]),
                ("agc", [dict(clip_factor=0.01 * f, exclude=[]) for f in spread])]
    if not all(n.startswith("head.") for n in names):
        settings.append(("agc", [dict(clip_factor=0.01 * f, exclude=["head.*"]) for f in spread]))
    for method, kwargs in settings:
        clippers = [Clipper(method, names=names, **k) for k in kwargs]
        expected = [evaluate(m, PerSampleGradients(m, loss_fn), c, data, loss_fn, chunk=4)
                    for m, c in zip(models, clippers)]
        population = Population([copy.deepcopy(m) for m in models], loss_fn, Clipper.stacked(clippers), granularity)
        evaluation = PopulationEvaluation(population, loss_fn, chunk=4)
        assert (evaluation.ghost is getattr(population, "sample_clipping", None)) == (granularity == "sample")
        got = evaluation(data)
        assert len(got) == members
        retired = None
        if members > 1:  # member 1 diverged: its weights are zeroed, the others go on
            population.retire_(1)
            retired = evaluation(data)
        for k, want in enumerate(expected):
            for have in [got[k]] + ([retired[k]] if retired and k != 1 else []):
                assert set(have) == set(want), method
                for key in want:
                    assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-9), \
                        f"{method} {kwargs[k]} {granularity} member {k} {key}"
        if retired:
            assert all(math.isfinite(v) for v in retired[1].values())


def test_the_runner_evaluates_populations_with_ghost_norms_and_says_so(make_cfg, tmp_path):
    """A run records which path computed its full-data rows; vmap(grad) where asked for."""
    from gradclip.runner import train

    for per_sample, expected in [("auto", "ghost"), ("vmap", "vmap: per_sample=vmap")]:
        cfg = make_cfg(f"per_sample={per_sample}", "steps=2", "eval_every=2", "clip=norm", "logger=none")
        summary = train(cfg, tmp_path / per_sample)
        assert summary["evaluation_gradients"] == expected
