"""Tests for gradclip.models: shapes, the `head` naming contract, per-sample gradients through
torch.func, initialisation, gradient explosion presets, and config errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from references import timm_adaptive_clip_grad

from gradclip.clipping import Clipper, unit_norms
from gradclip.gradients import PerSampleGradients, per_example_loss
from gradclip.models import (
    MODELS,
    ModelError,
    build_model,
    per_sample_unsupported_reason,
    validate_model_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"
MNIST1D = (40,)

# (YAML file, input shape, num_outputs)
YAML_CASES = [
    ("mlp", MNIST1D, 10),
    ("deep_tanh", MNIST1D, 10),
    ("cnn1d", MNIST1D, 10),
    ("rnn", MNIST1D, 10),
    ("lstm", MNIST1D, 10),
    ("rnn_exploding", MNIST1D, 10),
    ("resnet", MNIST1D, 10),
    ("resnet18", (1, 28, 28), 10),
    ("resnet18", (3, 32, 32), 10),
    ("linear", (1,), 1),
]


def load(name: str, **overrides: Any):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    return OmegaConf.merge(cfg, overrides)


def total_grad_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters()))


# ----------------------------------------------------------------------------- shapes and head


def test_every_yaml_is_covered():
    assert {p.stem for p in CONFIG_DIR.glob("*.yaml")} == {case[0] for case in YAML_CASES}


@pytest.mark.parametrize("name,shape,k", YAML_CASES)
def test_builds_from_yaml_and_forward_shape(name, shape, k):
    torch.manual_seed(0)
    cfg = load(name)
    validate_model_config(cfg)
    model = build_model(cfg, shape, k)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, k)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,shape,k", YAML_CASES)
def test_head_is_the_final_layer(name, shape, k):
    torch.manual_seed(0)
    model = build_model(load(name), shape, k)
    assert isinstance(model.head, nn.Linear)
    names = [n for n, _ in model.named_parameters()]
    head_names = ["head.weight"] + (["head.bias"] if model.head.bias is not None else [])
    assert names[-len(head_names):] == head_names
    assert sum(n.startswith("head.") for n in names) == len(head_names)
    # The head's output is the model's output.
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o))
    out = model(torch.randn(2, *shape))
    assert len(seen) == 1 and torch.equal(seen[0], out)


def test_model_names_match_yaml_names():
    names = {OmegaConf.load(p).name for p in CONFIG_DIR.glob("*.yaml")}
    assert names == set(MODELS)


def test_plain_mapping_uses_defaults():
    torch.manual_seed(0)
    model = build_model({"name": "mlp"}, MNIST1D, 10)
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(100, 40), (100, 100), (10, 100)]  # the 40-100-100-10 MLP


def test_alternative_input_layouts():
    torch.manual_seed(0)
    cnn = build_model(load("cnn1d"), (2, 40), 10)  # [C, L]
    assert cnn(torch.randn(3, 2, 40)).shape == (3, 10)
    res = build_model(load("resnet"), (2, 40), 10)
    assert res(torch.randn(3, 2, 40)).shape == (3, 10)
    rnn = build_model(load("rnn"), (40, 3), 10)  # [L, F]
    assert rnn(torch.randn(3, 40, 3)).shape == (3, 10)
    # Without a 1-channel / 1-feature axis, [B, L] means one channel / one feature per step.
    x = torch.randn(3, 40)
    cnn1 = build_model(load("cnn1d"), MNIST1D, 10)
    assert torch.equal(cnn1(x), cnn1(x[:, None, :]))
    rnn1 = build_model(load("rnn"), MNIST1D, 10)
    assert torch.equal(rnn1(x), rnn1(x[:, :, None]))


def test_resnet18_variants_build():
    torch.manual_seed(0)
    big = build_model(load("resnet18", small_input=False), (1, 64, 64), 7)
    assert big.backbone.conv1.kernel_size == (7, 7) and big.backbone.conv1.in_channels == 1
    assert big(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    small = build_model(load("resnet18"), (1, 28, 28), 10)
    assert small.backbone.conv1.kernel_size == (3, 3)
    assert isinstance(small.backbone.maxpool, nn.Identity)
    gn = [m for m in small.modules() if isinstance(m, nn.GroupNorm)]
    assert gn and all(m.num_groups == min(32, m.num_channels) for m in gn)
    batch = build_model(load("resnet18", norm="batch"), (3, 32, 32), 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in batch.modules())
    assert batch(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ----------------------------------------------------------------------------- per-sample grads


# (YAML file, overrides, input shape, batch size): every file of configs/model/, and variants
PER_SAMPLE_CASES = [
    ("mlp", {}, MNIST1D, 4),
    # Chaotic by design: in float32 the batched and single-example matmuls round differently and
    # 16 chaotic layers (or 40 steps of a recurrence with gain 2) amplify that to ~2e-4 relative,
    # so these two are checked in float64.
    ("deep_tanh", {}, MNIST1D, 4),
    ("cnn1d", {}, MNIST1D, 4),
    ("cnn1d", {"norm": "group"}, MNIST1D, 4),
    ("rnn", {}, MNIST1D, 4),
    ("rnn", {"nonlinearity": "relu"}, MNIST1D, 4),
    ("rnn_exploding", {}, MNIST1D, 4),
    ("lstm", {}, MNIST1D, 4),
    ("resnet", {"skip_init": 0.5}, MNIST1D, 4),  # nonzero alpha: block convs get gradients
    ("linear", {}, (1,), 4),
    ("linear", {"bias": True, "init": "default"}, (3,), 4),
    ("resnet18", {"norm": "group"}, (3, 32, 32), 2),
]


def test_every_model_has_a_per_sample_oracle():
    assert {p.stem for p in CONFIG_DIR.glob("*.yaml")} <= {case[0] for case in PER_SAMPLE_CASES}


def agc_factor_clipping_some(grads, params, clipped_mask) -> float:
    """An AGC factor lambda that clips about half of the (example, unit) pairs: the median of
    ||G_i|| / max(||W_i||, 1e-3) over the units AGC does not exempt."""
    ratios = [(unit_norms(g, lead=1) / unit_norms(p.detach()).clamp(min=1e-3)).flatten()
              for g, p, c in zip(grads, params, clipped_mask) if c]
    return float(torch.cat(ratios).median())


def reference_clip(method: str, params: list[torch.Tensor], grads: list[torch.Tensor], clipped: list[bool],
                   setting: float) -> list[torch.Tensor]:
    """One example's gradients clipped by the reference code: torch's clip_grad_norm_ and
    clip_grad_value_, and timm's adaptive_clip_grad (on the parameters AGC does not exempt)."""
    for p, g in zip(params, grads):
        p.grad = g.clone()
    if method == "norm":
        torch.nn.utils.clip_grad_norm_(params, max_norm=setting)  # eps = 1e-6, as the Clipper below
    elif method == "value":
        torch.nn.utils.clip_grad_value_(params, clip_value=setting)
    else:
        timm_adaptive_clip_grad([p for p, c in zip(params, clipped) if c], clip_factor=setting, eps=1e-3)
    return [p.grad for p in params]


@pytest.mark.parametrize("name,overrides,shape,batch", PER_SAMPLE_CASES)
def test_production_per_sample_path_matches_one_backward_pass_per_example(name, overrides, shape, batch):
    """PerSampleGradients + Clipper.clip_samples, as the runner uses them, against a plain loop
    of single-example backward passes (torch.autograd.grad) clipped one by one by torch's and
    timm's code, then averaged: per-example gradients, losses, norms and the clipped mean of
    norm, AGC (head exempt, as the default) and value clipping.

    Tolerance: float32 at atol = rtol = 1e-5. The batched (vmap) and single-example passes sum
    the same products in different orders, so they differ by rounding, ~1e-7 relative per
    operation, grown to ~1e-6 over a few layers; 1e-5 leaves room for that and no more (a wrong
    gradient, a missing 1/B or a norm over the wrong dims is off by far more). deep_tanh is
    and rnn_exploding are compared in float64 (see PER_SAMPLE_CASES)."""
    torch.manual_seed(0)
    k = 1 if name == "linear" else 10
    dtype = torch.float64 if name in ("deep_tanh", "rnn_exploding") else torch.float32
    model = build_model(load(name, **overrides), shape, k).to(dtype)
    assert per_sample_unsupported_reason(model) is None
    x = torch.randn(batch, *shape, dtype=dtype)
    task = "regression" if name == "linear" else "classification"
    y = torch.randn(batch, k, dtype=dtype) if task == "regression" else torch.randint(0, k, (batch,))
    loss_fn = per_example_loss(task)
    names, params = map(list, zip(*model.named_parameters()))

    grads, losses = PerSampleGradients(model, loss_fn)(x, y)
    oracle, oracle_losses = [], []
    for i in range(batch):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1]).sum()
        oracle.append(torch.autograd.grad(loss, params))
        oracle_losses.append(loss.detach())
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses, torch.stack(oracle_losses), **close)
    for j, key in enumerate(names):
        torch.testing.assert_close(grads[j], torch.stack([o[j] for o in oracle]), **close, msg=lambda m: f"{key}: {m}")
    assert any(bool(g.abs().sum() > 0) for g in grads)
    # The oracle's norms in float64: one float32 sum over resnet18's 11M squares is off by ~5e-4.
    norms = torch.stack([torch.cat([g.double().flatten() for g in o]).norm() for o in oracle]).to(dtype)

    exclude = [] if name == "linear" else ["head.*"]  # a linear model is only a head
    clipped_mask = [not n.startswith("head.") or not exclude for n in names]
    sizes = {  # about half the examples (norm), elements (value) and units (AGC) clipped
        "norm": float(norms.median()),
        "value": float(torch.cat([g.abs().flatten() for g in grads]).median()),
        "agc": agc_factor_clipping_some(grads, params, clipped_mask),
    }
    for method, setting in sizes.items():
        kwargs = {"norm": dict(threshold=setting, eps=1e-6), "value": dict(threshold=setting),
                  "agc": dict(clip_factor=setting, agc_eps=1e-3, exclude=exclude)}[method]
        mean, stats = Clipper(method, names=names, **kwargs).clip_samples(grads, params)
        expected = [torch.stack(ps).mean(0) for ps in zip(*(reference_clip(method, params, list(o), clipped_mask,
                                                                             setting) for o in oracle))]
        for j, key in enumerate(names):
            torch.testing.assert_close(mean[j], expected[j], **close, msg=lambda m: f"{method} {key}: {m}")
        # A float32 sum of N squares rounds by up to ~sqrt(N) 2^-24 relative: 2e-4 for N = 11M.
        torch.testing.assert_close(stats.sample_grad_norm, norms, atol=0, rtol=2e-4)
        assert 0 < float(stats.clip_fraction) < 1, method  # the comparison covers clipped and unclipped ones


def test_unsupported_reasons():
    torch.manual_seed(0)
    bn = build_model(load("resnet18", norm="batch"), (3, 32, 32), 10)
    reason = per_sample_unsupported_reason(bn)
    assert reason is not None and "BatchNorm" in reason and "model.norm=group" in reason

    class GRUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(1, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

    reason = per_sample_unsupported_reason(GRUNet())
    assert reason is not None and "GRU" in reason and "(gru)" in reason
    assert "RNN" in per_sample_unsupported_reason(nn.Sequential(nn.RNN(1, 4)))
    tracked = nn.Sequential(nn.Conv1d(1, 4, 3), nn.InstanceNorm1d(4, track_running_stats=True))
    assert "InstanceNorm1d" in per_sample_unsupported_reason(tracked)
    # Supported look-alikes.
    assert per_sample_unsupported_reason(nn.Sequential(nn.LSTM(1, 4), nn.GroupNorm(2, 4))) is None
    assert per_sample_unsupported_reason(nn.InstanceNorm1d(4)) is None


# ----------------------------------------------------------------------------- initialisation


def test_mlp_init_statistics():
    torch.manual_seed(0)
    gain = 2.5
    model = build_model(load("mlp", width=512, init_gain=gain), (256,), 512)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            expected = gain / math.sqrt(m.in_features)
            assert abs(m.weight.std().item() / expected - 1) < 0.02
            assert abs(m.weight.mean().item()) < 0.02 * expected
            assert torch.count_nonzero(m.bias) == 0


def test_mlp_without_bias():
    model = build_model(load("mlp", bias=False), MNIST1D, 10)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))


def test_linear_zero_init_is_exactly_zero():
    for bias in (False, True):
        model = build_model(load("linear", bias=bias), (1,), 1)
        params = list(model.parameters())
        assert len(params) == (2 if bias else 1)
        assert all(torch.count_nonzero(p) == 0 for p in params)
    # Location problem: x = ones, the output is theta . 1.
    model = build_model(load("linear"), (1,), 1)
    with torch.no_grad():
        model.head.weight.fill_(1.75)
    assert torch.equal(model(torch.ones(5, 1)), torch.full((5, 1), 1.75))


def test_linear_default_init_is_random():
    torch.manual_seed(0)
    model = build_model(load("linear", init="default", bias=True), (8,), 3)
    assert torch.count_nonzero(model.head.weight) == model.head.weight.numel()


def test_resnet_skip_init_zero_blocks_are_identity():
    torch.manual_seed(0)
    model = build_model(load("resnet"), MNIST1D, 10)
    assert len(model.blocks) == 3
    h = torch.randn(2, 32, 40)
    for block in model.blocks:
        assert block.alpha.shape == (1,) and block.alpha.item() == 0.0
        assert torch.equal(block(h), h)


def test_rnn_recurrent_init_is_scaled_orthogonal():
    torch.manual_seed(0)
    for cfg_name in ("rnn", "lstm"):
        model = build_model(load(cfg_name, recurrent_gain=1.5), MNIST1D, 10)
        for block in model.cell.weight_hh.split(64, dim=0):
            torch.testing.assert_close(block.T @ block, 1.5**2 * torch.eye(64), atol=1e-4, rtol=0)
        assert torch.count_nonzero(model.cell.bias_hh) == 0
        assert torch.count_nonzero(model.cell.bias_ih) == 0


# ----------------------------------------------------------------------------- explosion presets


def test_deep_tanh_gradients_explode():
    deep = load("deep_tanh")
    assert deep.name == "mlp" and deep.activation == "tanh" and deep.init_gain > 1
    norms = {}
    for gain in (1.0, float(deep.init_gain)):
        torch.manual_seed(0)
        model = build_model(OmegaConf.merge(deep, {"init_gain": gain}), MNIST1D, 10)
        x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
        F.cross_entropy(model(x), y).backward()
        norms[gain] = total_grad_norm(model)
    ratio = norms[float(deep.init_gain)] / norms[1.0]
    assert ratio > 100, ratio  # measured ~250 (see deep_tanh.yaml)


@pytest.mark.parametrize("cfg_name", ["rnn", "lstm"])
def test_recurrent_gain_explodes_recurrent_gradient(cfg_name):
    norms = {}
    for gain in (1.0, 3.0):
        torch.manual_seed(0)
        model = build_model(load(cfg_name, recurrent_gain=gain), MNIST1D, 10)
        x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
        F.cross_entropy(model(x), y).backward()
        norms[gain] = model.cell.weight_hh.grad.norm().item()
    # Measured ~9e4 for the tanh RNN, ~140 for the LSTM.
    assert norms[3.0] / norms[1.0] > 50, norms


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"name": "foo"}, r"model\.name='foo' is not one of: mlp, cnn1d, rnn, resnet, resnet18, linear"),
        ({}, r"model\.name=None is not one of"),
        ({"name": "mlp", "width": 0}, r"model\.width=0 must be an integer >= 1"),
        ({"name": "mlp", "width": 10.5}, r"model\.width=10\.5 must be an integer"),
        ({"name": "mlp", "width": True}, r"model\.width=True must be an integer"),
        ({"name": "mlp", "depth": -1}, r"model\.depth=-1 must be an integer >= 0"),
        ({"name": "mlp", "activation": "swish"}, r"model\.activation='swish' is not one of: relu, tanh, gelu"),
        ({"name": "mlp", "init_gain": -1.0}, r"model\.init_gain=-1\.0 must be a finite number >= 0"),
        ({"name": "mlp", "init_gain": float("nan")}, r"model\.init_gain=nan must be a finite number"),
        ({"name": "mlp", "bias": "yes"}, r"model\.bias='yes' must be true or false"),
        ({"name": "mlp", "widht": 10}, r"model\.widht is not a key of model\.name='mlp'; allowed keys: width"),
        ({"name": "cnn1d", "kernel_size": 4}, r"model\.kernel_size=4 must be an odd integer"),
        ({"name": "cnn1d", "depth": 0}, r"model\.depth=0 must be an integer >= 1"),
        ({"name": "cnn1d", "norm": "batch"}, r"model\.norm='batch' is not one of: none, group"),
        ({"name": "cnn1d", "norm": "group", "groups": 5}, r"model\.groups=5 must divide model\.channels=32"),
        ({"name": "rnn", "cell": "gru"}, r"model\.cell='gru' is not one of: rnn, lstm"),
        ({"name": "rnn", "hidden": 0}, r"model\.hidden=0 must be an integer >= 1"),
        ({"name": "rnn", "nonlinearity": "gelu"}, r"model\.nonlinearity='gelu' is not one of: tanh, relu"),
        ({"name": "rnn", "cell": "lstm", "nonlinearity": "relu"}, r"model\.nonlinearity='relu' is only allowed with model\.cell=rnn"),
        ({"name": "rnn", "recurrent_gain": -0.5}, r"model\.recurrent_gain=-0\.5 must be a finite number >= 0"),
        ({"name": "resnet", "blocks": -1}, r"model\.blocks=-1 must be an integer >= 0"),
        ({"name": "resnet", "skip_init": float("inf")}, r"model\.skip_init=inf must be a finite number"),
        ({"name": "resnet18", "norm": "layer"}, r"model\.norm='layer' is not one of: group, batch"),
        ({"name": "resnet18", "small_input": 1}, r"model\.small_input=1 must be true or false"),
        ({"name": "linear", "init": "ones"}, r"model\.init='ones' is not one of: zero, default"),
        ({"name": "linear", "width": 3}, r"model\.width is not a key of model\.name='linear'"),
    ],
)
def test_config_errors(cfg, match):
    with pytest.raises(ModelError, match=match):
        validate_model_config(cfg)
    with pytest.raises(ModelError, match=match):
        validate_model_config(OmegaConf.create(cfg))
    with pytest.raises(ModelError, match=match):
        build_model(cfg, MNIST1D, 10)


def test_missing_value_in_dictconfig():
    with pytest.raises(ModelError, match=r"could not be resolved"):
        validate_model_config(OmegaConf.create({"name": "mlp", "width": "???"}))


def test_model_error_is_value_error():
    assert issubclass(ModelError, ValueError)


@pytest.mark.parametrize(
    "name,shape,match",
    [
        ("resnet18", (40,), r"model\.name='resnet18' is for images .*\[C, H, W\].*MNIST-1D"),
        ("resnet18", (3, 32), r"model\.name='resnet18' is for images"),
        ("cnn1d", (1, 28, 28), r"model\.name='cnn1d' is for 1-D signals such as MNIST-1D.*resnet18"),
        ("resnet", (3, 32, 32), r"model\.name='resnet' is for 1-D signals"),
        ("rnn", (1, 28, 28), r"model\.name='rnn' is for sequences"),
        ("mlp", (), r"input_shape=\(\) must be a non-empty tuple"),
        ("mlp", (0, 4), r"input_shape=\(0, 4\) must be"),
    ],
)
def test_wrong_input_shape(name, shape, match):
    with pytest.raises(ModelError, match=match):
        build_model(load(name), shape, 10)


def test_bad_num_outputs():
    with pytest.raises(ModelError, match=r"num_outputs=0 must be an integer >= 1"):
        build_model(load("mlp"), MNIST1D, 0)


def test_mlp_unit_scale_decades_spreads_hidden_unit_norms():
    torch.manual_seed(0)
    plain = build_model({"name": "mlp"}, (40,), 10)
    torch.manual_seed(0)
    spread = build_model({"name": "mlp", "unit_scale_decades": 3.0}, (40,), 10)
    plain_norms = plain.hidden[0].weight.norm(dim=1)
    norms = spread.hidden[0].weight.norm(dim=1)
    assert plain_norms.max() / plain_norms.min() < 3  # rows of a Gaussian matrix: similar norms
    assert norms.max() / norms.min() > 100  # three decades of unit scales
    assert torch.equal(spread.head.weight, plain.head.weight)  # the head is not rescaled
