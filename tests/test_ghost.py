"""Ghost norms and book-keeping (gradclip.ghost) against vmap(grad)'s per-example gradients
clipped by Clipper.clip_samples, which tests/test_models.py checks against one backward pass per
example and torch's and timm's clipping: per-example norms, AGC's per-unit clipping, the clipped
mean and the statistics, on every model of configs/model/, for a single run (a population of
one, as the runner calls it) and for each member of a population of three."""

from __future__ import annotations

import copy

import pytest
import torch
from test_models import CONFIG_DIR, MNIST1D, load

from gradclip.clipping import Clipper, unit_norms
from gradclip.ghost import GhostClipping, ghost_unsupported_reason
from gradclip.gradients import PerSampleGradients, per_example_loss
from gradclip.models import build_model
from gradclip.population import Population

# (YAML file, overrides, input shape): every file of configs/model/ and variants. Ghost norms
# cover the Linear, Conv1d and recurrent-cell models; the others must fall back (GHOSTLESS).
CASES = [
    ("mlp", {}, MNIST1D),
    ("mlp", {"bias": False, "depth": 0}, MNIST1D),
    ("deep_tanh", {}, MNIST1D),
    ("cnn1d", {}, MNIST1D),
    ("cnn1d", {"kernel_size": 3, "depth": 2}, (2, 17)),  # two channels, odd length
    ("rnn", {}, MNIST1D),
    ("rnn", {"nonlinearity": "relu"}, MNIST1D),
    ("rnn_exploding", {}, MNIST1D),
    ("lstm", {}, MNIST1D),
    ("lstm", {}, (6, 3)),  # 6 steps of 3 features: W_ih has 3 inputs
    ("linear", {}, (1,)),
    ("linear", {"bias": True, "init": "default"}, (3,)),
]
GHOSTLESS = [
    ("resnet", {"skip_init": 0.5}, MNIST1D, "blocks.0.alpha"),
    ("cnn1d", {"norm": "group"}, MNIST1D, "features.1.weight"),
    ("resnet18", {}, (3, 32, 32), "backbone.conv1.weight"),
]


def test_every_model_is_covered_or_falls_back():
    assert {p.stem for p in CONFIG_DIR.glob("*.yaml")} == {c[0] for c in CASES} | {c[0] for c in GHOSTLESS}


def between(values: torch.Tensor) -> float:
    """A threshold half-way (geometrically) between the two middle values: about half lie on
    each side, and none so close that rounding could move it across."""
    ordered = values.flatten().double().sort().values
    k = len(ordered) // 2
    return float((ordered[k - 1] * ordered[k]).sqrt())


def agc_factor(grads, params, mask) -> float:
    """An AGC factor that clips about half of the (example, unit) pairs AGC does not exempt."""
    return between(torch.cat([(unit_norms(g, lead=1) / unit_norms(p.detach()).clamp(min=1e-3)).flatten()
                              for g, p, active in zip(grads, params, mask) if active]))


def ghost(model, loss_fn, clipper, x, y):
    """Per-sample clipping as a single run does it: (clipped mean, ClipStats, losses) of one run."""
    population = Population([model], loss_fn, clipper, "sample")
    assert population.per_sample_gradients == "ghost"
    mean, stats, losses = population.sample_clipping(x.unsqueeze(0), y.unsqueeze(0))
    return [m[0] for m in mean], stats.member(0), losses[0]


def problem(name, overrides, shape, batch=6, dtype=torch.float32):
    torch.manual_seed(0)
    k = 1 if name == "linear" else 10
    model = build_model(load(name, **overrides), shape, k).to(dtype)
    x = torch.randn(batch, *shape, dtype=dtype)
    task = "regression" if name == "linear" else "classification"
    y = torch.randn(batch, k, dtype=dtype) if task == "regression" else torch.randint(0, k, (batch,))
    return model, x, y, per_example_loss(task)


@pytest.mark.parametrize("name,overrides,shape", CASES)
def test_ghost_matches_vmap(name, overrides, shape):
    """Norms, clipped means and statistics of none, norm and AGC (head exempt and not) agree to
    1e-5 relative in float32. Both sum the same products in different orders (the Gram form,
    book-keeping's one matrix product), ~1e-7 relative per operation. The chaotic deep_tanh and
    rnn_exploding run in float64: there float32 rounding of the forward pass alone grows to 1e-4."""
    dtype = torch.float64 if name in ("deep_tanh", "rnn_exploding") else torch.float32
    model, x, y, loss_fn = problem(name, overrides, shape, dtype=dtype)
    names, params = map(list, zip(*model.named_parameters()))
    grads, losses = PerSampleGradients(model, loss_fn)(x, y)
    norms = Clipper("none", names=names).clip_samples(grads, params)[1].sample_grad_norm
    head_only = all(n.startswith("head.") for n in names)
    settings = [("none", {}), ("norm", dict(threshold=between(norms), eps=1e-6)),
                ("agc", dict(clip_factor=agc_factor(grads, params, [True] * len(names)), exclude=[]))]
    if not head_only:
        mask = [not n.startswith("head.") for n in names]
        settings.append(("agc", dict(clip_factor=agc_factor(grads, params, mask), exclude=["head.*"])))
    close = dict(rtol=1e-5, atol=1e-7 if dtype == torch.float32 else 1e-12)
    for method, kwargs in settings:
        clipper = Clipper(method, names=names, **kwargs)
        assert ghost_unsupported_reason(model, clipper) is None
        expected, want = clipper.clip_samples(grads, params)
        mean, stats, ghost_losses = ghost(model, loss_fn, clipper, x, y)
        label = f"{method} {kwargs.get('exclude', '')}"
        torch.testing.assert_close(ghost_losses, losses, **close)
        torch.testing.assert_close(stats.sample_grad_norm, want.sample_grad_norm, **close, msg=lambda m: f"{label}: {m}")
        for j, key in enumerate(names):
            torch.testing.assert_close(mean[j], expected[j], **close, msg=lambda m: f"{label} {key}: {m}")
        for field in ("grad_norm", "clipped_grad_norm", "factor", "clip_fraction"):
            torch.testing.assert_close(torch.as_tensor(getattr(stats, field)).to(dtype),
                                       torch.as_tensor(getattr(want, field)).to(dtype), **close,
                                       msg=lambda m: f"{label} {field}: {m}")
        if method != "none":  # the comparison covers clipped and unclipped examples (units)
            assert 0 < float(want.clip_fraction) < 1, label


def test_the_gram_form_and_the_direct_form_agree(monkeypatch):
    """Conv1d and recurrent layers have both forms (chosen by cost): force each and compare."""
    from gradclip import ghost as module

    for name in ("cnn1d", "lstm"):
        model, x, y, loss_fn = problem(name, {}, MNIST1D)
        names = [n for n, _ in model.named_parameters()]
        clipper = Clipper("agc", names=names, clip_factor=0.01, exclude=[])
        results = []
        for direct in (False, True):
            monkeypatch.setattr(module, "direct_is_cheaper", lambda *_, direct=direct: direct)
            results.append(ghost(model, loss_fn, clipper, x, y))
        (mean_gram, stats_gram, _), (mean_direct, stats_direct, _) = results
        torch.testing.assert_close(stats_gram.sample_grad_norm, stats_direct.sample_grad_norm, rtol=1e-5, atol=0)
        torch.testing.assert_close(stats_gram.factor, stats_direct.factor, rtol=1e-5, atol=0)
        for a, b in zip(mean_gram, mean_direct):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,overrides,shape,parameter", GHOSTLESS)
def test_models_ghost_norms_do_not_cover_fall_back_to_vmap_and_say_why(name, overrides, shape, parameter):
    model, x, y, loss_fn = problem(name, overrides, shape, batch=2)
    names, params = map(list, zip(*model.named_parameters()))
    clipper = Clipper("norm", names=names, threshold=0.1)
    grads, want_losses = PerSampleGradients(model, loss_fn)(x, y)
    expected, want = clipper.clip_samples(grads, params)
    with pytest.raises(ValueError, match="ghost norms do not cover"):
        GhostClipping(Population([model], loss_fn, clipper, "batch"), loss_fn, clipper)
    population = Population([model], loss_fn, clipper, "sample")
    how = population.per_sample_gradients
    assert how.startswith("vmap: parameters outside Linear, Conv1d, RNNCell and LSTMCell layers") and parameter in how
    mean, stats, losses = population.sample_clipping(x.unsqueeze(0), y.unsqueeze(0))
    torch.testing.assert_close(losses[0], want_losses)
    for a, b in zip(mean, expected):
        torch.testing.assert_close(a[0], b)


def test_value_clipping_uses_vmap_and_ghost_is_chosen_otherwise():
    model, _, _, loss_fn = problem("mlp", {}, MNIST1D)
    names = [n for n, _ in model.named_parameters()]
    assert Population([model], loss_fn, Clipper("value", names=names, threshold=1.0), "sample").per_sample_gradients \
        == "vmap: value clipping clamps every element of every example's gradient"
    assert Population([model], loss_fn, Clipper("norm", names=names), "sample").per_sample_gradients == "ghost"


@pytest.mark.parametrize("name,method", [("cnn1d", "agc"), ("lstm", "norm"), ("mlp", "agc"), ("resnet", "norm"),
                                         ("linear", "norm"), ("linear", "agc")])
def test_each_member_of_a_population_is_clipped_as_its_own_run(name, method):
    """Three members with their own weights, batches and thresholds, clipped in one vmapped call
    (ghost norms; for the linear model, the pieces without a pass through it, as its training
    at batch granularity also takes them; vmap(grad) for the ResNet), against each member alone
    through vmap(grad). The linear model here has a bias and two outputs (a regression on 5
    inputs)."""
    linear = name == "linear"
    shape, batch, outputs = ((5,), 6, 2) if linear else (MNIST1D, 4, 10)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(load(name, **({"bias": True, "init": "default"} if linear else {})), shape, outputs))
    names = [n for n, _ in models[0].named_parameters()]
    values = [0.5, 2.0, 8.0] if linear else [0.02, 0.1, 0.5]
    key = "threshold" if method == "norm" else "clip_factor"
    alone = [(copy.deepcopy(m), Clipper(method, names=names, **{key: v})) for m, v in zip(models, values)]
    loss_fn = per_example_loss("regression" if linear else "classification")
    population = Population(models, loss_fn, Clipper.stacked([c for _, c in alone]), "sample")
    assert population.linear == linear and (population.per_sample_gradients == "ghost") == (name != "resnet")
    x = torch.randn(3, batch, *shape)
    y = torch.randn(3, batch, outputs) if linear else torch.randint(0, 10, (3, batch))
    mean, stats, losses = population.sample_clipping(x, y)
    for k, (model, clipper) in enumerate(alone):
        grads, want_losses = PerSampleGradients(model, loss_fn)(x[k], y[k])
        expected, want = clipper.clip_samples(grads, list(model.parameters()))
        close = dict(rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(losses[k], want_losses, **close)
        torch.testing.assert_close(stats.sample_grad_norm[k], want.sample_grad_norm, **close)
        torch.testing.assert_close(stats.factor[k], want.factor, **close)
        for a, b in zip(mean, expected):
            torch.testing.assert_close(a[k], b, **close)


def test_the_hooks_are_idle_outside_ghost_passes_and_change_nothing():
    model, x, y, loss_fn = problem("lstm", {}, MNIST1D)
    names = [n for n, _ in model.named_parameters()]
    before = model(x)
    ghost(model, loss_fn, Clipper("norm", names=names, threshold=0.1), x, y)
    assert any(m._forward_hooks for m in model.modules())
    assert all(float(p.grad.abs().sum()) == 0 for p in model.parameters())  # nothing accumulated into .grad
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
