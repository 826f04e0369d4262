"""Models for the clipped-SGD experiments, built from a ``model`` config.

Every model returns outputs ``[B, num_outputs]`` and names its final layer ``head`` (an
``nn.Linear``), so that adaptive gradient clipping can exempt ``head.weight`` / ``head.bias`` by
name. Models must also support per-example gradients through ``torch.func``
(``vmap(grad(...))`` over ``functional_call``), which rules out modules whose running statistics
are updated in the forward pass (BatchNorm in train mode) and fused recurrent kernels
(``nn.RNN``, ``nn.GRU``): normalisation is GroupNorm or none, and recurrent nets step a cell in a
Python loop. ``resnet18`` with ``norm=batch`` is the one deliberate exception;
:func:`per_sample_unsupported_reason` reports it.

Models (config files under ``configs/model/``):

- ``mlp``: fully connected net; ``deep_tanh.yaml`` is a deep tanh preset with exploding gradients.
- ``cnn1d``: 1-D CNN for MNIST-1D.
- ``rnn``: Elman RNN or LSTM reading the signal one value per step (``lstm.yaml``).
- ``resnet``: normalizer-free 1-D ResNet with SkipInit for MNIST-1D.
- ``resnet18``: torchvision ResNet-18 for images (MNIST, CIFAR-10).
- ``linear``: a single linear map, for closed-form problems.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from gradclip.checks import BOOL, FINITE, ConfigError, Rule, int_at_least, is_int, number_at_least, one_of

MODELS: tuple[str, ...] = ("mlp", "cnn1d", "rnn", "resnet", "resnet18", "linear")
ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "gelu")


class ModelError(ConfigError):
    """A bad model config or input shape; the message names ``model.<key>`` and what is allowed."""


# ----------------------------------------------------------------------------- config checking


_ODD: Rule = ("an odd integer >= 1", lambda v: is_int(v) and v >= 1 and v % 2 == 1)

# Per model: key -> (default, rule). The YAML files under configs/model/ repeat these defaults.
_SPECS: dict[str, dict[str, tuple[Any, Rule]]] = {
    "mlp": {
        "width": (100, int_at_least(1)),
        "depth": (2, int_at_least(0)),
        "activation": ("relu", one_of(*ACTIVATIONS)),
        "init_gain": (1.0, number_at_least(0.0)),
        "bias": (True, BOOL),
        "unit_scale_decades": (0.0, number_at_least(0.0)),
    },
    "cnn1d": {
        "channels": (32, int_at_least(1)),
        "kernel_size": (5, _ODD),
        "depth": (3, int_at_least(1)),
        "activation": ("relu", one_of(*ACTIVATIONS)),
        "norm": ("none", one_of("none", "group")),
        "groups": (8, int_at_least(1)),
    },
    "rnn": {
        "cell": ("rnn", one_of("rnn", "lstm")),
        "hidden": (64, int_at_least(1)),
        "nonlinearity": ("tanh", one_of("tanh", "relu")),
        "recurrent_gain": (1.0, number_at_least(0.0)),
    },
    "resnet": {
        "channels": (32, int_at_least(1)),
        "kernel_size": (3, _ODD),
        "blocks": (3, int_at_least(0)),
        "activation": ("relu", one_of(*ACTIVATIONS)),
        "skip_init": (0.0, FINITE),
    },
    "resnet18": {
        "norm": ("group", one_of("group", "batch")),
        "small_input": (True, BOOL),
    },
    "linear": {
        "bias": (False, BOOL),
        "init": ("zero", one_of("zero", "default")),
    },
}


def _resolve(cfg: Mapping[str, Any] | DictConfig) -> tuple[str, dict[str, Any]]:
    """Return the model name and its keys with defaults filled in, or raise ModelError."""
    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except Exception as e:  # missing (???) or broken interpolation
            raise ModelError(f"model config could not be resolved: {e}") from e
    if not isinstance(cfg, Mapping):
        raise ModelError(f"model config must be a mapping with a 'name' key; got {type(cfg).__name__}")
    name = cfg.get("name")
    if name not in MODELS:
        raise ModelError(f"model.name={name!r} is not one of: {', '.join(MODELS)}")
    spec = _SPECS[name]
    # Unknown keys are rejected so that a typo (model.widht) does not silently use the default.
    # ``preset`` names a preset file (deep_tanh is an mlp): a label, not a setting.
    unknown = sorted(str(k) for k in cfg if k not in ("name", "preset") and k not in spec)
    if unknown:
        raise ModelError(
            f"model.{unknown[0]} is not a key of model.name={name!r}; "
            f"allowed keys: {', '.join(spec) or '(none)'}"
        )
    if not isinstance(cfg.get("preset", ""), str):
        raise ModelError(f"model.preset={cfg['preset']!r} must be a name (a string)")
    params = {key: cfg.get(key, default) for key, (default, _) in spec.items()}
    for key, (_, (allowed, ok)) in spec.items():
        value = params[key]
        if not ok(value):
            verb = "is not" if allowed.startswith("one of") else "must be"
            raise ModelError(f"model.{key}={value!r} {verb} {allowed}")
    # Cross-key checks.
    if name == "cnn1d" and params["norm"] == "group" and params["channels"] % params["groups"]:
        raise ModelError(
            f"model.groups={params['groups']} must divide model.channels={params['channels']} "
            "when model.norm=group"
        )
    if name == "rnn" and params["cell"] == "lstm" and params["nonlinearity"] != "tanh":
        raise ModelError(
            f"model.nonlinearity={params['nonlinearity']!r} is only allowed with model.cell=rnn; "
            "with model.cell=lstm it must be 'tanh' (nn.LSTMCell has fixed tanh/sigmoid gates)"
        )
    return name, params


def validate_model_config(cfg: Mapping[str, Any] | DictConfig) -> None:
    """Check the model config's name, keys and values (cheap: nothing is constructed)."""
    _resolve(cfg)


# ----------------------------------------------------------------------------- models


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}[name]()


class MLP(nn.Module):
    """Fully connected net, for MNIST-1D (default 40-100-100-10) and the deep tanh preset.

    Every Linear, the head included, has weights ~ N(0, init_gain^2 / fan_in) and zero biases,
    so ``init_gain`` scales the whole network: with tanh, gains well above 1 put a deep net in
    the chaotic regime, where gradients explode with depth. With ``unit_scale_decades`` = d > 0
    each hidden unit's weight row is then multiplied by 10^-u, u ~ U(0, d), so that unit norms
    span d decades: the AGC experiment needs units with small weights.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        width: int,
        depth: int,
        activation: str,
        init_gain: float,
        bias: bool,
        unit_scale_decades: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width, bias=bias), _activation(activation)]
            d = width
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_outputs, bias=bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, init_gain / math.sqrt(m.in_features))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if unit_scale_decades > 0:
            with torch.no_grad():
                for m in self.hidden:
                    if isinstance(m, nn.Linear):
                        u = torch.rand(m.out_features, 1) * unit_scale_decades
                        m.weight.mul_(10.0 ** -u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x.reshape(x.shape[0], -1)))


class CNN1d(nn.Module):
    """1-D CNN for MNIST-1D: ``depth`` Conv1d layers ("same" padding; stride 2 after the first),
    optional GroupNorm, then flatten (as in the MNIST-1D reference CNN) and ``head``.

    Accepts ``[B, L]`` (one channel) or ``[B, C, L]``.
    """

    def __init__(
        self,
        in_channels: int,
        length: int,
        num_outputs: int,
        channels: int,
        kernel_size: int,
        depth: int,
        activation: str,
        norm: str,
        groups: int,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            stride = 1 if i == 0 else 2
            layers.append(nn.Conv1d(c, channels, kernel_size, stride=stride, padding=pad))
            if norm == "group":
                layers.append(nn.GroupNorm(groups, channels))
            layers.append(_activation(activation))
            length = (length + 2 * pad - kernel_size) // stride + 1
            c = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * length, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))


def cell_preactivation(cell: nn.RNNCell | nn.LSTMCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """z = W_ih x + b_ih + W_hh h + b_hh of a recurrent cell (all four LSTM gates at once)."""
    return F.linear(x, cell.weight_ih, cell.bias_ih) + F.linear(h, cell.weight_hh, cell.bias_hh)


def rnn_cell_output(z: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """An Elman cell's new state from its pre-activation."""
    return torch.tanh(z) if nonlinearity == "tanh" else torch.relu(z)


def lstm_cell_output(z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An LSTM cell's new (h, c) from its gates' pre-activation (torch's order i, f, g, o)."""
    i, f, g, o = z.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class RNNCell(nn.RNNCell):
    """nn.RNNCell (same parameters, names and initialisation) computed from its equation,
    h' = act(W_ih x + b_ih + W_hh h + b_hh): torch.func.vmap has no batching rule for the fused
    cell kernel, and a population (gradclip.population) vmaps the forward pass over its members."""

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return rnn_cell_output(cell_preactivation(self, x, h), self.nonlinearity)


class LSTMCell(nn.LSTMCell):
    """nn.LSTMCell computed from its equations, for the same reason as :class:`RNNCell`."""

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        return lstm_cell_output(cell_preactivation(self, x, h), c)


class RecurrentNet(nn.Module):
    """Elman RNN (``cell=rnn``) or LSTM reading a signal one step at a time, for MNIST-1D:
    ``[B, L]`` is L steps of one feature, ``[B, L, F]`` L steps of F features. ``head`` reads the
    last hidden state.

    The cell is stepped in a Python loop and computed from its equations (torch.func cannot
    vmap nn.RNN, nn.GRU or the fused cell kernels). The recurrent matrix (each gate's block, for
    the LSTM) is initialised orthogonal times ``recurrent_gain``: above 1, gradients explode
    over long sequences.
    Biases start at zero.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        cell: str,
        hidden: int,
        nonlinearity: str,
        recurrent_gain: float,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.cell: RNNCell | LSTMCell
        if cell == "lstm":
            self.cell = LSTMCell(in_features, hidden)
        else:
            self.cell = RNNCell(in_features, hidden, nonlinearity=nonlinearity)
        with torch.no_grad():
            for block in self.cell.weight_hh.split(hidden, dim=0):
                nn.init.orthogonal_(block, gain=recurrent_gain)
            self.cell.bias_ih.zero_()
            self.cell.bias_hh.zero_()
        self.head = nn.Linear(hidden, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        h = x.new_zeros(x.shape[0], self.hidden_size)
        if isinstance(self.cell, nn.LSTMCell):
            c = h
            for t in range(x.shape[1]):
                h, c = self.cell(x[:, t], (h, c))
        else:
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)
        return self.head(h)


class SkipInitBlock(nn.Module):
    """Residual block ``x + alpha * conv(act(conv(x)))`` with a learnable scalar ``alpha``.

    ``alpha`` starts at ``skip_init`` (0: the block is the identity at init), which is what lets
    a ResNet train without normalisation (SkipInit, De & Smith 2020). It is stored with shape
    [1] so that unit-wise clipping treats it like a bias entry.
    """

    def __init__(self, channels: int, kernel_size: int, activation: str, skip_init: float) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        self.act = _activation(activation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        self.alpha = nn.Parameter(torch.full((1,), float(skip_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.conv2(self.act(self.conv1(x)))


class ResNet1d(nn.Module):
    """Small normalizer-free 1-D ResNet for MNIST-1D: stem Conv1d, ``blocks`` SkipInit residual
    blocks, global average pooling, ``head``.

    Normalizer-free as in SkipInit (De & Smith, 2020) and NFNets (Brock et al., 2021, who
    introduced adaptive gradient clipping to train such nets), so per-example gradients work.
    Accepts ``[B, L]`` (one channel) or ``[B, C, L]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        channels: int,
        kernel_size: int,
        blocks: int,
        activation: str,
        skip_init: float,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv1d(in_channels, channels, kernel_size, padding=kernel_size // 2)
        self.act = _activation(activation)
        self.blocks = nn.Sequential(
            *(SkipInitBlock(channels, kernel_size, activation, skip_init) for _ in range(blocks))
        )
        self.head = nn.Linear(channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        h = self.blocks(self.act(self.stem(x)))
        return self.head(self.act(h).mean(dim=-1))


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


class ResNet18(nn.Module):
    """torchvision ResNet-18 for images ``[B, C, H, W]`` (MNIST, CIFAR-10), with the classifier
    moved from ``fc`` to ``head`` so that clipping can exempt it by name.

    ``norm=group`` (GroupNorm, min(32, channels) groups) supports per-example gradients;
    ``norm=batch`` does not. ``small_input`` uses a 3x3 stride-1 first conv and no max-pool, the
    usual variant for 28x28 / 32x32 inputs.
    """

    def __init__(self, in_channels: int, num_outputs: int, norm: str, small_input: bool) -> None:
        super().__init__()
        from torchvision.models import resnet18  # imported here: torchvision is slow to import

        norm_layer = _group_norm if norm == "group" else nn.BatchNorm2d
        net = resnet18(weights=None, num_classes=num_outputs, norm_layer=norm_layer)
        if small_input:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        # Same init torchvision gives its own conv1.
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        head = net.fc
        net.fc = nn.Identity()
        self.backbone = net
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class LinearModel(nn.Module):
    """A single linear map ``head`` from the flattened input, for closed-form problems.

    With ``bias=false``, ``init=zero`` and input x = ones of shape [1], the model is the scalar
    location theta, starting exactly at theta_0 = 0.
    """

    def __init__(self, in_features: int, num_outputs: int, bias: bool, init: str) -> None:
        super().__init__()
        self.head = nn.Linear(in_features, num_outputs, bias=bias)
        if init == "zero":
            nn.init.zeros_(self.head.weight)
            if self.head.bias is not None:
                nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------- building

_SIGNAL_HINT = "use mlp, cnn1d, rnn or resnet for MNIST-1D"
_IMAGE_HINT = "use resnet18 or mlp for images"


def _shape_error(name: str, expected: str, input_shape: tuple[int, ...], hint: str) -> ModelError:
    return ModelError(
        f"model.name={name!r} is for {expected}; got input_shape={input_shape} ({hint})"
    )


def build_model(
    cfg: Mapping[str, Any] | DictConfig, input_shape: tuple[int, ...], num_outputs: int
) -> nn.Module:
    """Build the model ``cfg.name`` for inputs of shape ``input_shape`` (one example, no batch
    dimension) and ``num_outputs`` outputs. Uses torch's global RNG for initialisation."""
    name, p = _resolve(cfg)
    input_shape = tuple(input_shape)
    if not input_shape or not all(is_int(d) and d >= 1 for d in input_shape):
        raise ModelError(f"input_shape={input_shape} must be a non-empty tuple of positive integers")
    if not is_int(num_outputs) or num_outputs < 1:
        raise ModelError(f"num_outputs={num_outputs!r} must be an integer >= 1")
    in_features = math.prod(input_shape)

    if name == "mlp":
        return MLP(in_features, num_outputs, **p)
    if name == "linear":
        return LinearModel(in_features, num_outputs, **p)
    if name in ("cnn1d", "resnet"):
        if len(input_shape) not in (1, 2):
            raise _shape_error(
                name, "1-D signals such as MNIST-1D, input shape [L] or [C, L]", input_shape,
                _IMAGE_HINT,
            )
        channels = 1 if len(input_shape) == 1 else input_shape[0]
        if name == "cnn1d":
            return CNN1d(channels, input_shape[-1], num_outputs, **p)
        return ResNet1d(channels, num_outputs, **p)
    if name == "rnn":
        if len(input_shape) not in (1, 2):
            raise _shape_error(
                name, "sequences such as MNIST-1D, input shape [L] or [L, F]", input_shape,
                _IMAGE_HINT,
            )
        features = 1 if len(input_shape) == 1 else input_shape[1]
        return RecurrentNet(features, num_outputs, **p)
    # resnet18
    if len(input_shape) != 3:
        raise _shape_error(
            name, "images such as MNIST or CIFAR-10, input shape [C, H, W]", input_shape,
            _SIGNAL_HINT,
        )
    return ResNet18(input_shape[0], num_outputs, **p)


def per_sample_unsupported_reason(model: nn.Module) -> str | None:
    """None if torch.func per-example gradients work for ``model``; otherwise a short reason.

    A static check on module types: BatchNorm (and InstanceNorm with running statistics) update
    buffers in the forward pass, and nn.RNN / nn.GRU run fused kernels; vmap supports neither.
    """
    for path, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, _BatchNorm) or (isinstance(m, _InstanceNorm) and m.track_running_stats):
            return (
                f"model contains nn.{kind} ({path}), whose running statistics torch.func cannot "
                "update per example; use model.norm=group"
            )
        if isinstance(m, (nn.RNN, nn.GRU)):
            return (
                f"model contains nn.{kind} ({path}), whose fused kernel torch.func cannot vmap; "
                "use model.name=rnn (a loop over cells)"
            )
    return None
