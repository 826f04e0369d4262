"""A population: M runs of one architecture on one data set, trained as one vectorised program.

The members share the model's architecture, the data, the batch size, the number of steps and
the clipping method; each has its own initialisation and mini-batches (its seed), its own step
sizes and its own clipping threshold tau or AGC factor lambda (gradclip.config.POPULATION_KEYS).
Member k computes exactly what a single run of its config computes, up to float rounding: its
own gradient, clipped with its own norm (never one across members), and its own SGD step.

Storage: the parameters of all members are one matrix theta [M, P], each member's row its
parameters flattened in the model's order, so that ||theta||, the increment and the SGD update
are one operation for the whole population.

The forward pass follows torch's model-ensembling recipe: torch.func.functional_call under
torch.func.vmap over the members, with views of theta as the parameters; gradients come from
ordinary autograd through it. A population of one (a single run) calls the model itself, whose
parameters are views of theta[0], and so pays nothing for vmap: `python -m gradclip.train` is a
population of one. The closed-form problems' linear model (gradclip.models.LinearModel) needs
neither: its output is one batched product and its gradients follow from the output gradient
(gradclip.ghost.linear_outputs), where vmap's own cost was most of a step.

Per-sample clipping uses ghost norms (gradclip.ghost) where they cover the model, else
per-example gradients from vmap(grad) over the examples inside the vmap over the members.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gradclip.clipping import Clipper, ClipStats
from gradclip.ghost import GhostClipping, ghost_unsupported_reason, linear_outputs
from gradclip.gradients import LossFn, PerSampleGradients
from gradclip.models import LinearModel, per_sample_unsupported_reason


class PopulationUnsupported(ValueError):
    """These runs cannot train side by side under vmap (the model's layers); train them apart."""


def population_unsupported_reason(model: nn.Module) -> str | None:
    """None if members of this model can be trained side by side under vmap; otherwise why not
    (such configs run one per job)."""
    for path, module in model.named_modules():
        if type(module) in (nn.RNNCell, nn.LSTMCell, nn.GRUCell):  # gradclip.models' cells are subclasses
            return f"model contains nn.{type(module).__name__} ({path}), whose fused kernel torch.func cannot vmap"
    return per_sample_unsupported_reason(model)


class Population:
    """M members' parameters, gradients and SGD state; one step of clipped SGD for all of them.

    ``models``: one freshly initialised model per member (each built after seeding with the
    member's seed, as a single run builds its own). ``clipper`` holds the members' settings:
    ``threshold`` and ``clip_factor`` as tensors [M] (or numbers shared by all). ``per_sample``:
    ``auto`` (ghost norms where they cover the model) or ``vmap`` (per-example gradients always).
    """

    def __init__(self, models: Sequence[nn.Module], loss_fn: LossFn, clipper: Clipper, granularity: str,
                 momentum: float = 0.0, weight_decay: float = 0.0, per_sample: str = "auto") -> None:
        self.size = len(models)
        self.model = models[0]
        self.loss_fn, self.clipper, self.granularity = loss_fn, clipper, granularity
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.names = [name for name, _ in self.model.named_parameters()]
        self.shapes = [p.shape for p in self.model.parameters()]
        self.offsets = [0, *itertools.accumulate(p.numel() for p in self.model.parameters())]
        if self.size > 1:
            reason = population_unsupported_reason(self.model)
            if reason:
                raise PopulationUnsupported(reason)
        with torch.no_grad():
            self.theta = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])
        if self.size == 1:
            # The model's own parameters become views of theta[0]: a plain forward and backward
            # pass, and in-place updates of theta move the model.
            for k, p in enumerate(self.model.parameters()):
                p.data = self.theta[0, self.offsets[k] : self.offsets[k + 1]].view(self.shapes[k])
        else:  # self.model is a template for functional_call: its own weights are not used
            self.theta.requires_grad_(True)  # the views below are the inputs of each step's gradient
        self.views = self.member_views(self.theta)
        # The linear model's gradients need no pass through it (gradclip.ghost.linear_outputs).
        self.linear = type(self.model) is LinearModel
        self.grad = torch.zeros_like(self.theta, requires_grad=False)
        self.grad_views = self.member_views(self.grad)
        if self.size == 1:  # backward() accumulates into .grad in place: into self.grad
            for p, view in zip(self.model.parameters(), self.grad_views):
                p.grad = view[0]
        self._momentum_buffer: Tensor | None = None
        self._buffers = dict(self.model.named_buffers())
        self._per_sample = None
        self.per_sample_gradients: str | None = None
        if granularity == "sample":
            reason = ghost_unsupported_reason(self.model, clipper) if per_sample == "auto" else "per_sample=vmap"
            if reason is None:
                self.sample_clipping = GhostClipping(self, loss_fn, clipper)
                self.per_sample_gradients = "ghost"
            else:
                self._per_sample = PerSampleGradients(self.model, loss_fn)
                self.sample_clipping = self._vmap_sample_clipping
                self.per_sample_gradients = f"vmap: {reason}"

    # -- parameters -------------------------------------------------------------------------------

    def member_views(self, flat: Tensor) -> list[Tensor]:
        """Per parameter, its [M, *shape] view of a [M, P] matrix laid out like theta."""
        return [flat[:, self.offsets[k] : self.offsets[k + 1]].view(self.size, *shape)
                for k, shape in enumerate(self.shapes)]

    def over_members(self, fn: Callable, *args: Tensor):
        """``fn(params, *member_args)`` for every member, with ``args`` [M, ...]; the results
        (tensors, or lists and tuples of them) come back with the member dim in front.

        ``params`` maps names to one member's parameters for functional_call; for a population
        of one it is None: call the model itself (:meth:`call_model`)."""
        if self.size == 1:
            return _nested(lambda t: t.unsqueeze(0), fn(None, *_nested(lambda t: t[0], args)))
        params = dict(zip(self.names, self.views))
        return vmap(fn, in_dims=(0, *[0] * len(args)))(params, *args)

    def call_model(self, params: dict | None, x: Tensor) -> Tensor:
        """The model's output for one member's batch (inside :meth:`over_members`)."""
        if params is None:
            return self.model(x)
        return functional_call(self.model, (params, self._buffers), (x,))

    def forward(self, x: Tensor) -> Tensor:
        """Outputs [M, B, ...] for inputs [M, B, ...]."""
        return self.over_members(self.call_model, x)

    def losses(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-example losses [M, B] of outputs [M, B, ...] against targets [M, B, ...]."""
        return self.loss_fn(out.flatten(0, 1), y.flatten(0, 1)).view(out.shape[:2])

    # -- one step ---------------------------------------------------------------------------------

    def clipped_gradient(self, x: Tensor, y: Tensor) -> tuple[Tensor, ClipStats]:
        """Every member's clipped gradient at its own batch (x [M, B, ...], y [M, B, ...]) into
        ``self.grad``; returns the per-example losses [M, B] and the clipping statistics."""
        if self.granularity == "sample":
            mean, stats, losses = self.sample_clipping(x, y)
            torch._foreach_copy_(self.grad_views, mean)
            return losses, stats
        if self.size == 1:  # the plain training step, with .grad views of self.grad (see __init__)
            losses = self.loss_fn(self.model(x[0]), y[0])
            self.grad.zero_()
            losses.mean().backward()
            losses = losses.unsqueeze(0)
        elif self.linear:  # each example's gradient is b_i a_i^T (and b_i): their mean
            a, b, losses = linear_outputs(self, x, y)
            with torch.no_grad():
                grads = [torch.bmm(b.transpose(1, 2), a), b.sum(1)][: len(self.views)]
                torch.cat([g.reshape(self.size, -1) for g in grads], dim=1, out=self.grad).div_(x.shape[1])
        else:
            losses = self.losses(self.forward(x), y)
            grads = torch.autograd.grad(losses.mean(1).sum(), self.views)
            torch.cat([g.reshape(self.size, -1) for g in grads], dim=1, out=self.grad)
        stats = self.clipper.clip_batch_(self.grad_views, self.views, members=True)
        return losses.detach(), stats

    @torch.no_grad()  # torch.func.grad differentiates inside; nothing is recorded outside
    def _vmap_sample_clipping(self, x: Tensor, y: Tensor):
        """Per-sample clipping from materialised per-example gradients (models ghost norms do
        not cover, and value clipping)."""
        def per_example(params, xb, yb):
            if params is None:
                params = {name: p.detach() for name, p in self.model.named_parameters()}
            return self._per_sample.of(params, self._buffers, xb, yb)

        grads, losses = self.over_members(per_example, x, y)
        mean, stats = self.clipper.clip_samples(list(grads), self.views, members=True)
        return mean, stats, losses

    @torch.no_grad()
    def sgd_step_(self, lr: list[float]) -> None:
        """theta <- theta - a(n) d with d the clipped gradient, plus weight decay and momentum as
        torch.optim.SGD applies them (dampening 0, no Nesterov); ``lr``: a(n) of each member."""
        direction = self.grad
        if self.weight_decay:
            direction = direction.add(self.theta, alpha=self.weight_decay)
        if self.momentum:
            if self._momentum_buffer is None:
                self._momentum_buffer = direction.clone()
            else:
                self._momentum_buffer.mul_(self.momentum).add_(direction)
            direction = self._momentum_buffer
        if self.size == 1:
            self.theta.add_(direction, alpha=-lr[0])  # as torch.optim.SGD
        else:
            self.theta.sub_(torch.tensor(lr, dtype=self.theta.dtype, device=self.theta.device).view(-1, 1) * direction)

    @torch.no_grad()
    def retire_(self, member: int) -> None:
        """A member that has finished (diverged) takes no more steps: its parameters and momentum
        are zeroed so that its arithmetic stays finite and cheap while the others go on."""
        self.theta[member] = 0.0
        if self._momentum_buffer is not None:
            self._momentum_buffer[member] = 0.0

    def member_model(self, member: int, scratch: nn.Module | None) -> nn.Module:
        """A model holding one member's current parameters (for evaluation): the model itself for
        a population of one, else ``scratch`` (a model of the same architecture) loaded."""
        if self.size == 1:
            return self.model
        with torch.no_grad():
            for p, view in zip(scratch.parameters(), self.views):
                p.copy_(view[member])
        return scratch


def _nested(fn: Callable[[Tensor], Tensor], value):
    """``fn`` applied to every tensor in nested lists and tuples (torch's pytree does the same at
    ten times the cost, which a population of one would pay every step)."""
    if isinstance(value, Tensor):
        return fn(value)
    return type(value)(_nested(fn, item) for item in value)
