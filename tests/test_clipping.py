"""Clipping semantics against torch, against timm's AGC formula, and the paper's bounds."""

import pytest
import torch
from torch import nn

from gradclip.checks import ConfigError
from gradclip.clipping import Clipper, make_clipper, per_sample_norms, total_norm, unit_norms
from references import timm_adaptive_clip_grad


class SmallNet(nn.Module):
    """Every layer type whose AGC units must match timm: Linear, Conv1d, Conv2d, RNNCell."""

    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(2, 4, 3)
        self.conv1 = nn.Conv1d(2, 3, 3)
        self.cell = nn.RNNCell(5, 6)
        self.head = nn.Linear(6, 3)


def random_grads(model, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * scale


def named(model):
    names, params = zip(*model.named_parameters())
    return list(names), list(params)


@pytest.mark.parametrize("scale", [1e-3, 0.1, 1.0, 100.0])
def test_norm_matches_torch_clip_grad_norm(scale):
    torch.manual_seed(0)
    model = SmallNet()
    random_grads(model, scale)
    names, params = named(model)
    ours = [p.grad.clone() for p in params]
    stats = Clipper("norm", threshold=1.0, eps=1e-6, names=names).clip_batch_(ours, params)
    returned = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
    assert torch.allclose(stats.grad_norm, returned)
    for g, p in zip(ours, params):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)
    assert stats.clipped == bool(returned > 1.0)


def test_norm_eps_zero_gives_the_papers_exact_factor():
    grads = [torch.tensor([3.0, 4.0])]  # norm 5
    stats = Clipper("norm", threshold=2.0, eps=0.0).clip_batch_(grads, [torch.zeros(2)])
    assert stats.factor.item() == pytest.approx(2.5)
    assert total_norm(grads).item() == pytest.approx(2.0, rel=1e-7)
    torch.testing.assert_close(grads[0], torch.tensor([1.2, 1.6]))


@pytest.mark.parametrize("exclude", [[], ["head.weight"], ["head.weight", "head.bias"]])
@pytest.mark.parametrize("scale", [1e-3, 0.5])
def test_agc_matches_timm_formula(exclude, scale):
    torch.manual_seed(0)
    model = SmallNet()
    random_grads(model, scale=scale)  # 1e-3: some units under their bound, left alone
    with torch.no_grad():
        model.head.bias.fill_(0.0)  # a zero bias exercises the eps floor
    names, params = named(model)
    ours = [p.grad.clone() for p in params]
    clipper = Clipper("agc", clip_factor=0.01, agc_eps=1e-3, exclude=exclude, names=names)
    stats = clipper.clip_batch_(ours, params)
    timm_adaptive_clip_grad([p for n, p in model.named_parameters() if n not in exclude])
    assert 0 < stats.clip_fraction.item() < 1 if scale < 0.1 else stats.clip_fraction.item() == 1
    for name, g, p in zip(names, ours, params):
        torch.testing.assert_close(g, p.grad, msg=name)
    assert clipper.excluded == exclude


def test_agc_exclusion_is_by_name_and_checked():
    model = SmallNet()
    names, _ = named(model)
    clipper = Clipper("agc", exclude=["head.*"], names=names)
    assert clipper.excluded == ["head.weight", "head.bias"]
    with pytest.raises(ConfigError, match=r"clip.exclude.*fc\.weight.*match no parameter.*head.weight"):
        Clipper("agc", exclude=["fc.weight"], names=names)


def test_agc_unit_norm_bound_holds_after_clipping():
    """optax's property test: each unit's clipped gradient norm <= lambda * max(||W_i||, eps)."""
    torch.manual_seed(1)
    model = SmallNet()
    random_grads(model, scale=10.0)
    names, params = named(model)
    grads = [p.grad for p in params]
    clipper = Clipper("agc", clip_factor=0.02, agc_eps=1e-3, names=names)
    stats = clipper.clip_batch_(grads, params)
    for g, p in zip(grads, params):
        assert torch.all(unit_norms(g) <= clipper.agc_unit_bound(p) * (1 + 1e-6))
    assert stats.clip_fraction.item() == 1.0  # with gradients this large every unit is clipped
    assert stats.factor.item() > 1.0


def test_value_matches_torch_clip_grad_value():
    torch.manual_seed(0)
    model = SmallNet()
    random_grads(model)
    names, params = named(model)
    ours = [p.grad.clone() for p in params]
    stats = Clipper("value", threshold=0.5, names=names).clip_batch_(ours, params)
    torch.nn.utils.clip_grad_value_(params, 0.5)
    for g, p in zip(ours, params):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)
    expected_fraction = sum((g.abs() >= 0.5).sum() for g in ours) / sum(g.numel() for g in ours)
    assert 0 < stats.clip_fraction.item() <= expected_fraction.item()


def test_none_leaves_gradients_alone():
    grads = [torch.randn(4, 3), torch.randn(4)]
    copies = [g.clone() for g in grads]
    stats = Clipper("none").clip_batch_(grads, [torch.zeros(4, 3), torch.zeros(4)])
    for g, c in zip(grads, copies):
        assert torch.equal(g, c)
    assert not stats.clipped and stats.factor.item() == 1.0


def sample_inputs(batch=16, seed=0):
    """Per-example gradients with norms spread over four decades, like a real batch."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen), torch.randn(3, 6, generator=gen)]
    scales = torch.logspace(-2, 2, batch)
    grads = [torch.randn(batch, *p.shape, generator=gen) * scales.view(-1, *[1] * p.ndim) for p in params]
    return grads, params


CLIPPERS = {
    "none": dict(),
    "norm": dict(threshold=1.0, eps=0.0),
    "agc": dict(clip_factor=0.05, agc_eps=1e-3),
    "value": dict(threshold=0.3),
}


@pytest.mark.parametrize("method", CLIPPERS)
def test_sample_clipping_is_the_mean_of_batch_clipped_examples(method):
    grads, params = sample_inputs()
    clipper = Clipper(method, **CLIPPERS[method])
    mean, stats = clipper.clip_samples(grads, params)
    singles = []
    for i in range(grads[0].shape[0]):
        one = [g[i].clone() for g in grads]
        one_stats = clipper.clip_batch_(one, params)
        singles.append(one)
        torch.testing.assert_close(stats.factor[i], one_stats.factor)
    for k, m in enumerate(mean):
        torch.testing.assert_close(m, torch.stack([s[k] for s in singles]).mean(0))
    torch.testing.assert_close(stats.sample_grad_norm, per_sample_norms(grads))
    torch.testing.assert_close(stats.grad_norm, total_norm([g.mean(0) for g in grads]))
    torch.testing.assert_close(stats.clipped_grad_norm, total_norm(mean))


@pytest.mark.parametrize("method", CLIPPERS)
def test_sample_and_batch_granularity_agree_at_batch_size_one(method):
    grads, params = sample_inputs(batch=1, seed=3)
    clipper = Clipper(method, **CLIPPERS[method])
    mean, sample_stats = clipper.clip_samples(grads, params)
    batch_grads = [g[0].clone() for g in grads]
    batch_stats = clipper.clip_batch_(batch_grads, params)
    for m, b in zip(mean, batch_grads):
        torch.testing.assert_close(m, b)
    torch.testing.assert_close(sample_stats.factor[0], batch_stats.factor)
    torch.testing.assert_close(sample_stats.clipped_grad_norm, batch_stats.clipped_grad_norm)


def test_per_sample_norm_factor_and_fraction():
    grads, params = sample_inputs(batch=8)
    tau = 1.0
    _, stats = Clipper("norm", threshold=tau, eps=0.0).clip_samples(grads, params)
    norms = per_sample_norms(grads)
    torch.testing.assert_close(stats.factor, torch.clamp(norms / tau, min=1.0))
    assert stats.clip_fraction.item() == pytest.approx((norms > tau).float().mean().item())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_bounded_increment_of_norm_clipping(seed, granularity):
    """||theta(n+1) - theta(n)|| <= a(n) tau for any gradients (prediction 1 of docs/CLAIMS.md)."""
    grads, params = sample_inputs(batch=32, seed=seed)
    grads = [g * 10.0 ** (seed - 2) for g in grads]
    tau, lr = 0.5, 0.3
    clipper = Clipper("norm", threshold=tau, eps=0.0)
    if granularity == "sample":
        direction, _ = clipper.clip_samples(grads, params)
    else:
        direction = [g.mean(0) for g in grads]
        clipper.clip_batch_(direction, params)
    new = [p - lr * d for p, d in zip(params, direction)]
    step = total_norm([n - p for n, p in zip(new, params)])
    assert step <= lr * tau * (1 + 1e-5)


@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_bounded_unit_increment_of_agc(granularity):
    """||Delta W_i|| <= a(n) lambda max(||W_i||, eps) for every unit, at either granularity."""
    grads, params = sample_inputs(batch=32, seed=7)
    params = [p * 1e-4 if k == 1 else p for k, p in enumerate(params)]  # a unit below the eps floor
    lr = 0.7
    clipper = Clipper("agc", clip_factor=0.01, agc_eps=1e-3)
    if granularity == "sample":
        direction, _ = clipper.clip_samples(grads, params)
    else:
        direction = [g.mean(0) for g in grads]
        clipper.clip_batch_(direction, params)
    for p, d in zip(params, direction):
        step = unit_norms(-lr * d)
        assert torch.all(step <= lr * clipper.agc_unit_bound(p) * (1 + 1e-5))


def test_make_clipper_from_config():
    clipper = make_clipper(
        {"method": "agc", "granularity": "sample", "clip_factor": 0.02, "eps": 1e-3, "exclude": ["b"]},
        names=["a", "b"],
    )
    assert (clipper.method, clipper.clip_factor, clipper.excluded) == ("agc", 0.02, ["b"])


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"method": "clamp", "granularity": "batch"}, r"clip.method='clamp' is not one of: none, norm, agc, value"),
        ({"method": "norm", "granularity": "example", "threshold": 1.0, "eps": 0.0}, r"clip.granularity='example' is not one of: batch, sample"),
        ({"method": "norm", "granularity": "batch", "threshold": 0.0, "eps": 0.0}, r"clip.threshold=0.0 .* > 0"),
        ({"method": "norm", "granularity": "batch", "threshold": -1, "eps": 0.0}, r"clip.threshold=-1 .* > 0"),
        ({"method": "norm", "granularity": "batch", "threshold": 1.0, "eps": -1e-6}, r"clip.eps=-1e-06 .* >= 0"),
        ({"method": "agc", "granularity": "batch", "clip_factor": 0.0, "eps": 1e-3}, r"clip.clip_factor=0.0 .* > 0"),
        ({"method": "agc", "granularity": "batch", "clip_factor": 0.01, "eps": -1.0}, r"clip.eps=-1.0 .* >= 0"),
        ({"method": "agc", "granularity": "batch", "clip_factor": 0.01, "eps": 1e-3, "exclude": "head.weight"}, r"clip.exclude=.* must be a list"),
        ({"method": "value", "granularity": "batch", "threshold": "big"}, r"clip.threshold='big' .* a number|clip.threshold='big' .* must be"),
    ],
)
def test_bad_clip_config_names_the_key(cfg, message):
    with pytest.raises(ConfigError, match=message):
        make_clipper(cfg, names=["head.weight"])
