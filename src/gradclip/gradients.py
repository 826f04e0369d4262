"""Per-example losses and gradients through torch.func.

``vmap(grad(...))`` over ``functional_call`` gives every example's gradient in one batched
pass (the recipe of the torch.func per-sample-gradients tutorial). It needs models without
in-place buffer updates (no BatchNorm in train mode) and without fused recurrent kernels
(no nn.RNN / nn.GRU): see ``gradclip.models.per_sample_unsupported_reason``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]


def per_example_loss(task: str) -> LossFn:
    """Loss per example, shape [B]: cross-entropy, or 1/2 ||f(x) - y||^2 for regression.

    The 1/2 makes the location problem's gradient exactly theta - x, as in docs/CLAIMS.md.
    """
    if task == "classification":
        return lambda out, y: F.cross_entropy(out, y, reduction="none")
    if task == "regression":
        return lambda out, y: 0.5 * (out - y).pow(2).flatten(1).sum(1)
    raise ValueError(f"unknown task {task!r}: expected classification or regression")


def accuracy_count(out: Tensor, y: Tensor, task: str) -> Tensor:
    """Number of correct predictions (classification); 0 for regression."""
    if task != "classification":
        return torch.zeros((), device=out.device)
    return (out.argmax(1) == y).sum()


class PerSampleGradients:
    """Callable (x, y) -> (per-example gradients in parameter order, per-example losses).

    Gradients are taken at the model's current parameters; each has a leading batch dim.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]

        def loss_of_one(params: dict, buffers: dict, x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(model, (params, buffers), (x.unsqueeze(0),))
            return loss_fn(out, y.unsqueeze(0)).sum()

        self._fn = vmap(grad_and_value(loss_of_one), in_dims=(None, None, 0, 0))

    def __call__(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        return self.of(params, buffers, x, y)

    def of(self, params: dict, buffers: dict, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor]:
        """The same at the given parameters (a population member's, under vmap)."""
        grads, losses = self._fn(params, buffers, x, y)
        return [grads[n] for n in self.names], losses
