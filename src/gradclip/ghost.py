"""Per-sample clipping without per-example gradients: ghost norms and book-keeping.

Per-sample clipping needs every example's gradient norm ||g_i|| (and, for AGC, the norm of
every example's gradient on every unit), then the mean of the clipped gradients
(1/B) sum_i s_i g_i. ``vmap(grad)`` (gradclip.gradients) materialises all B per-example
gradients to get them. For the layers the experiments use, both follow from what one ordinary
backward pass already has: each layer's input activations a and the gradient b of the summed
loss with respect to its output z = W a + c. Example i's gradient on the weight is
G_i = sum_t b_it a_it^T, summed over the positions t where the weight is applied (time steps
of a recurrent cell, positions of a convolution, 1 for a plain Linear), so

* ||G_i||^2 = ||a_i||^2 ||b_i||^2 for one position, and in general the Gram form
  sum_{t,s} (a_it . a_is)(b_it . b_is) ("ghost norm", Goodfellow 2015; Li et al. 2022; Opacus's
  ``grad_sample_mode="ghost"``), or ||G_i||^2 itself where that is cheaper (the "mixed ghost
  norm" of Bu et al. 2022, fastDP): Gram costs T^2 (d_in + d_out) per example, G_i T d_in d_out;
* AGC's unit j (row j of the weight): ||G_ij||^2 = sum_{t,s} (a_it . a_is) b_itj b_isj;
* a bias: ||sum_t b_it||^2; it is one AGC unit, as in timm's ``unitwise_norm``;
* the clipped mean needs no second backward pass: with scales s_ij (one per example for norm
  clipping, one per example and unit for AGC) it is (1/B) sum_{i,t} (s_i . b_it) a_it^T, one
  matrix product per weight, as in a plain backward pass ("book-keeping", Bu et al. 2023).

Layers covered: ``nn.Linear``, ``nn.Conv1d`` (zero padding, no dilation or groups, unfolded so
that each output position is a t), ``nn.RNNCell`` and ``nn.LSTMCell`` (W_ih sees x_t, W_hh sees
h_(t-1), both share the pre-activation gradient; each cell call is a t). A recurrent cell's
pre-activation is not one of its outputs, so during this pass a hook recomputes the cell from
its equations with the pre-activation exposed. A model with any parameter outside these layers
(the 1-D ResNet's residual gains, GroupNorm), and value clipping (which clamps every element of
every example's gradient), use ``vmap(grad)``: gradclip.population chooses, and the run's
summary says which and why (``per_sample_gradients``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradclip.clipping import Clipper, ClipStats, effective_factor, member_norms, unit_norms
from gradclip.gradients import LossFn
from gradclip.models import cell_preactivation, lstm_cell_output, rnn_cell_output

COVERED = (nn.Linear, nn.Conv1d, nn.RNNCell, nn.LSTMCell)


def ghost_unsupported_reason(model: nn.Module, clipper: Clipper) -> str | None:
    """None if ghost norms cover ``model`` and ``clipper``; otherwise why not, in a few words."""
    if clipper.method == "value":
        return "value clipping clamps every element of every example's gradient"
    owned = set()
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv1d) and (module.groups != 1 or module.dilation != (1,)
                                              or module.padding_mode != "zeros" or isinstance(module.padding, str)):
            return f"{path} is a Conv1d with groups, dilation, string padding or a padding mode other than zeros"
        if isinstance(module, COVERED):
            owned |= {id(p) for p in module.parameters(recurse=False)}
    outside = [name for name, p in model.named_parameters() if id(p) not in owned]
    if outside:
        shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
        return f"parameters outside Linear, Conv1d, RNNCell and LSTMCell layers ({shown})"
    return None


def direct_is_cheaper(positions: int, d_in: int, d_out: int) -> bool:
    """Whether G_i itself (T d_in d_out per example) costs less than the Gram form (T^2 (d_in + d_out))."""
    return positions * (d_in + d_out) >= d_in * d_out


class _Piece:
    """One parameter's share of the per-example gradients of every member: activations ``a``
    [M, B, T, d_in] and output gradients ``b`` [M, B, T, d_out] (a weight), or ``b`` alone (a
    bias: G_i = sum_t b_it). ``shared`` is a cache common to the parameters of one layer, which
    share ``b`` (and, per scale, the scaled ``b``)."""

    def __init__(self, a: Tensor | None, b: Tensor, shape: torch.Size, shared: dict) -> None:
        self.shape, self.shared = shape, shared
        self.single = b.shape[2] == 1  # one position: plain matrices [M, B, d], no Gram form
        self.a = None if a is None else (a[:, :, 0] if self.single else a)
        self.b = b[:, :, 0] if self.single else b
        self._direct: Tensor | None = None
        if a is not None and not self.single and direct_is_cheaper(b.shape[2], a.shape[3], b.shape[3]):
            self._direct = torch.einsum("mbtj,mbti->mbji", b, a)

    def _b_summed(self) -> Tensor:
        """sum_t b_it, [M, B, d_out]: a bias's per-example gradient."""
        if "b_summed" not in self.shared:
            self.shared["b_summed"] = self.b if self.single else self.b.sum(2)
        return self.shared["b_summed"]

    def _b_sq(self) -> Tensor:
        if "b_sq" not in self.shared:
            summed = self._b_summed()
            self.shared["b_sq"] = torch.linalg.vecdot(summed, summed)
        return self.shared["b_sq"]

    def sq_norm(self) -> Tensor:
        """||G_i||^2 per member and example, [M, B]."""
        if self.a is None:
            return self._b_sq()
        if self._direct is not None:
            return self._direct.square().sum((-2, -1))
        if self.single:
            return torch.linalg.vecdot(self.a, self.a) * self._b_sq()
        return (self.a @ self.a.transpose(-2, -1) * (self.b @ self.b.transpose(-2, -1))).sum((-2, -1))

    def unit_sq_norms(self) -> Tensor:
        """||G_ij||^2 per member, example and AGC unit: [M, B, d_out] for a weight, [M, B, 1]
        for a bias."""
        if self.a is None:
            return self._b_sq().unsqueeze(-1)
        if self._direct is not None:
            return self._direct.square().sum(-1)
        if self.single:
            return torch.linalg.vecdot(self.a, self.a).unsqueeze(-1) * self.b.square()
        return ((self.a @ self.a.transpose(-2, -1)) @ self.b * self.b).sum(2)

    def _scaled_b(self, scale: Tensor | None) -> Tensor:
        """b (summed over positions for a bias) times the per-example scale, shared by a layer's
        parameters that use the same scale (norm clipping: one per example)."""
        b = self._b_summed() if self.a is None else self.b
        if scale is None:
            return b
        key = ("scaled", id(scale), self.a is None)
        if key not in self.shared:
            self.shared[key] = b * (scale if self.single or self.a is None else scale.unsqueeze(2))
        return self.shared[key]

    def weighted_sum(self, scale: Tensor | None) -> Tensor:
        """sum_i s_i G_i per member, [M, *shape]; ``scale`` [M, B, d_out] or [M, B, 1] (None: 1)."""
        members = self.b.shape[0]
        if self.a is None:
            return self._scaled_b(scale).sum(1).view(members, *self.shape)
        if self._direct is not None:
            weighted = self._direct if scale is None else self._direct * scale.unsqueeze(-1)
            return weighted.sum(1).view(members, *self.shape)
        if self.single:
            return torch.bmm(self._scaled_b(scale).transpose(1, 2), self.a).view(members, *self.shape)
        return torch.einsum("mbtj,mbti->mji", self._scaled_b(scale), self.a).view(members, *self.shape)


class _Tape:
    """What the layer hooks do: nothing (``off``), note each call's output shape (``shapes``),
    or record each call's activations and add its zero tensor (``record``)."""

    def __init__(self) -> None:
        self.mode, self.deltas, self.acts, self.next, self.shapes = "off", None, None, 0, []


class GhostClipping:
    """Per-sample clipping of every member of a population (gradclip.population.Population,
    which a single run also is) from one forward and one backward pass: callable
    (x [M, B, ...], y [M, B, ...]) -> (clipped means [M, *shape] in parameter order, ClipStats,
    per-example losses [M, B]).

    The output gradients b are those of zero tensors added to each layer's output (its
    pre-activation, for a recurrent cell): inputs of the forward pass, so that the same code
    runs under torch.func.vmap over the members. For gradclip.models.LinearModel there is no
    pass through the model: a and b follow from the input and the loss (:func:`linear_outputs`).
    The results equal Clipper.clip_samples on vmap(grad)'s per-example gradients up to float
    rounding (tests/test_ghost.py).
    """

    def __init__(self, members, loss_fn: LossFn, clipper: Clipper) -> None:
        reason = ghost_unsupported_reason(members.model, clipper)
        if reason:
            raise ValueError(f"ghost norms do not cover this model: {reason}")
        self.members, self.loss_fn, self.clipper = members, loss_fn, clipper
        model = members.model
        self.modules = [m for m in model.modules() if isinstance(m, COVERED)]
        index = {id(p): k for k, p in enumerate(model.parameters())}
        # Per module: (parameter index, which activation feeds it: 0 = input, 1 = hidden state,
        # None = a bias) for each of its parameters.
        self.slots = []
        for m in self.modules:
            if isinstance(m, (nn.RNNCell, nn.LSTMCell)):
                pairs = [(m.weight_ih, 0), (m.weight_hh, 1), (m.bias_ih, None), (m.bias_hh, None)]
            else:
                pairs = [(m.weight, 0), (m.bias, None)]
            self.slots.append([(index[id(p)], source) for p, source in pairs if p is not None])
        self.agc_active = [clipper.method == "agc" and active for active in clipper.clipped_mask(len(index))]
        self._deltas: dict[tuple, tuple] = {}  # per batch shape: a zero tensor per layer call; each layer's calls
        self._tape = _Tape()
        self._hooks = [m.register_forward_hook(self._tap(k)) for k, m in enumerate(self.modules)]

    def __call__(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], ClipStats, Tensor]:
        pieces, losses = self._pieces_of(x, y)
        with torch.no_grad():
            return self._clip(pieces, losses)

    def with_unclipped(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], ClipStats, Tensor, list[Tensor]]:
        """As calling it, and also each member's unclipped SUM of per-example gradients
        sum_i G_i ([M, *shape] per parameter): what a full-data evaluation needs beside H."""
        pieces, losses = self._pieces_of(x, y)
        with torch.no_grad():
            return *self._clip(pieces, losses), [p.weighted_sum(None) for p in pieces]

    def _pieces_of(self, x: Tensor, y: Tensor) -> tuple[list[_Piece], Tensor]:
        """One forward and one backward pass (none for a LinearModel: :meth:`_linear_pieces`):
        every parameter's activations and output gradients, and the per-example losses [M, B]."""
        if self.members.linear:
            return self._linear_pieces(x, y)
        deltas, calls_of = self._zeros_for(x)
        members = self.members
        # Gradients of the SUMMED loss: example i's output gradient is that of its own loss.
        if members.size == 1:  # the model itself, as a plain forward pass (Population.over_members)
            out, acts = self._forward(None, deltas, x[0])
            losses = self.loss_fn(out, y[0]).unsqueeze(0)
            grads = [g.unsqueeze(0) for g in torch.autograd.grad(losses.sum(), deltas)]
            acts = [tuple(a.unsqueeze(0) for a in call) for call in acts]
        else:
            out, acts = members.over_members(self._forward, deltas, x)
            losses = members.losses(out, y)
            grads = torch.autograd.grad(losses.sum(), deltas)
        with torch.no_grad():  # the activations are part of the forward graph: record nothing more
            return self._pieces(calls_of, acts, grads), losses.detach()

    def _linear_pieces(self, x: Tensor, y: Tensor) -> tuple[list[_Piece], Tensor]:
        """The same for gradclip.models.LinearModel, from :func:`linear_outputs` (no pass through
        the model)."""
        a, b, losses = linear_outputs(self.members, x, y)
        return self._pieces([[0]], [(a,)], [b]), losses

    def _pieces(self, calls_of: list[list[int]], acts, grads) -> list[_Piece]:
        """Each parameter's activations and output gradients, over all calls of its layer
        (``calls_of[j]``: the indices of layer j's calls, in order)."""
        pieces: list[_Piece | None] = [None] * len(self.members.shapes)
        for module, slots, calls in zip(self.modules, self.slots, calls_of):
            b = _stack([_as_positions(module, grads[i]) for i in calls])
            sources = sorted({source for _, source in slots if source is not None})
            inputs = {s: _stack([_activations(module, acts[i][s].detach()) for i in calls]) for s in sources}
            shared: dict = {}
            for k, source in slots:
                pieces[k] = _Piece(None if source is None else inputs[source], b, self.members.shapes[k], shared)
        return pieces

    def _forward(self, params, deltas, x):
        """One member's forward pass with its layers tapped (inside Population.over_members)."""
        tape = self._tape
        tape.mode, tape.deltas, tape.acts, tape.next = "record", deltas, [], 0
        try:
            out = self.members.call_model(params, x)
            return out, tape.acts
        finally:
            tape.mode, tape.deltas, tape.acts = "off", None, None

    def _tap(self, k: int) -> Callable:
        """Forward hook of covered layer k, registered once and idle outside this class's own
        forward passes: records the activations of each call and adds that call's zero tensor
        to its output (for a recurrent cell, to its pre-activation, for which the cell is
        recomputed from its equations)."""
        module, tape = self.modules[k], self._tape

        def delta_of(acts: tuple, z: Tensor) -> Tensor | None:
            """Record a call; the zero tensor to add to its output (None: finding shapes)."""
            if tape.mode == "shapes":
                tape.shapes.append((k, z.shape))
                return None
            tape.acts.append(acts)
            tape.next += 1
            return tape.deltas[tape.next - 1]

        if isinstance(module, (nn.RNNCell, nn.LSTMCell)):
            lstm = isinstance(module, nn.LSTMCell)

            def hook(m, args, output):
                if tape.mode == "off":
                    return None
                x = args[0]
                state = args[1] if len(args) > 1 and args[1] is not None else None
                zeros = x.new_zeros(x.shape[0], m.hidden_size)
                h, c = (state if lstm else (state, None)) if state is not None else (zeros, zeros)
                z = cell_preactivation(m, x, h)
                delta = delta_of((x, h), z)
                z = z if delta is None else z + delta
                return lstm_cell_output(z, c) if lstm else rnn_cell_output(z, m.nonlinearity)
        else:
            def hook(m, args, output):
                if tape.mode == "off":
                    return None
                delta = delta_of((args[0],), output)
                return None if delta is None else output + delta
        return hook

    def _zeros_for(self, x: Tensor) -> tuple[list[Tensor], list[list[int]]]:
        """One zero tensor [M, *z.shape] per layer call of a batch shaped like ``x`` (z.shape
        alone for a population of one), and per layer the indices of its calls: found once per
        batch shape, by a pass of member 0 without gradients."""
        key = tuple(x.shape[1:])
        if key not in self._deltas:
            members, tape = self.members, self._tape
            tape.mode, tape.shapes = "shapes", []
            try:
                with torch.no_grad():
                    params = None if members.size == 1 else {n: v[0] for n, v in zip(members.names, members.views)}
                    members.call_model(params, x[0])
            finally:
                tape.mode = "off"
            lead = () if members.size == 1 else (members.size,)
            deltas = [torch.zeros(*lead, *shape, dtype=x.dtype, device=x.device, requires_grad=True)
                      for _, shape in tape.shapes]
            self._deltas[key] = (deltas, [[i for i, (k, _) in enumerate(tape.shapes) if k == j]
                                          for j in range(len(self.modules))])
        return self._deltas[key]

    def _clip(self, pieces: list[_Piece], losses: Tensor):
        clipper, members, batch = self.clipper, self.members, losses.shape[1]
        if clipper.method == "agc":
            unit_sq = [p.unit_sq_norms() for p in pieces]
            scales = []
            for k, (u, param) in enumerate(zip(unit_sq, members.views)):
                if not self.agc_active[k]:
                    scales.append(None)
                    continue
                weight_norms = unit_norms(param.detach(), lead=1).reshape(members.size, 1, -1)
                scales.append(clipper.agc_scale(u.sqrt(), weight_norms))
            mean = [p.weighted_sum(s) for p, s in zip(pieces, scales)]
            torch._foreach_div_(mean, batch)
            # The statistics below are read at logged steps only (ClipStats computes a function
            # on first access): at every step they cost about a tenth of an AGC step. (They refer
            # to each other, not through the ClipStats that holds them: a cycle would keep each
            # step's pieces alive until the garbage collector found it.)
            @functools.cache
            def sample_norms() -> Tensor:
                return torch.stack([u.sum(-1) for u in unit_sq]).sum(0).sqrt()

            def fraction() -> Tensor:
                active = [scale for scale in scales if scale is not None]
                clipped = sum(((scale < 1).flatten(1).sum(1) for scale in active), 0)
                return torch.as_tensor(clipped / max(sum(scale[0].numel() for scale in active), 1),
                                       dtype=torch.float32)

            def factor() -> Tensor:
                clipped_sq = torch.zeros_like(unit_sq[0][..., 0])
                for u, scale in zip(unit_sq, scales):
                    clipped_sq = clipped_sq + (u.sum(-1) if scale is None else (scale.square() * u).sum(-1))
                return effective_factor(sample_norms(), clipped_sq.sqrt())
        else:
            sample_norms = torch.stack([p.sq_norm() for p in pieces]).sum(0).sqrt()
            scale = clipper.sample_scale(sample_norms)
            factor, fraction = (lambda: 1.0 / scale), (lambda: (scale < 1).float().mean(1))
            folded = (scale / batch).unsqueeze(-1)  # the 1/B of the mean folded into the scales
            mean = [p.weighted_sum(folded) for p in pieces]
        before = lambda: member_norms([p.weighted_sum(None) for p in pieces]) / batch  # noqa: E731 - logged rows only
        return mean, ClipStats(before, lambda: member_norms(mean), factor, fraction, sample_norms), losses


def linear_outputs(members, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For a population of gradclip.models.LinearModel (out = x W^T + c on the flattened input
    x): the activations a = x [M, B, d_in], the output gradients b [M, B, d_out] of the summed
    loss and the per-example losses [M, B], with no pass through the model: the output is one
    batched product, and b comes from autograd through the loss alone. Each example's gradient
    is then b_i a_i^T on the weight and b_i on the bias. On the closed-form problems' models (1
    to 6 parameters) the general pass, vmap over functional_call with the layer hooks and a
    backward pass through them, was most of a step's time (measured for 20 members: 1.7 ms a
    step with it at per-sample granularity, 0.8-0.9 ms without; at batch granularity 0.84 ms
    against 0.64 ms)."""
    a = x.reshape(x.shape[0], x.shape[1], -1).detach()
    weight = members.views[0].detach()  # [M, d_out, d_in]
    if len(members.views) > 1:  # the bias, added as nn.Linear adds it (addmm: c + x W^T)
        out = torch.baddbmm(members.views[1].detach().unsqueeze(1), a, weight.transpose(1, 2))
    else:
        out = torch.bmm(a, weight.transpose(1, 2))
    out.requires_grad_(True)
    losses = members.losses(out, y)
    (b,) = torch.autograd.grad(losses.sum(), out)
    return a, b, losses.detach()


def _activations(module: nn.Module, a: Tensor) -> Tensor:
    """A call's input [M, B, ...] as [M, B, T, d_in]: a Conv1d's input unfolded into its T output
    positions (channel-major, as weight.view(out, -1) is); any other input with its middle
    dims as T."""
    members, batch = a.shape[:2]
    if isinstance(module, nn.Conv1d):
        (k,), (stride,), (pad,) = module.kernel_size, module.stride, module.padding
        a = F.pad(a, (pad, pad)).unfold(-1, k, stride)  # [M, B, C_in, T, k]
        return a.permute(0, 1, 3, 2, 4).reshape(members, batch, a.shape[3], -1)
    return a.reshape(members, batch, -1, a.shape[-1])


def _as_positions(module: nn.Module, b: Tensor) -> Tensor:
    """An output gradient [M, B, ...] as [M, B, T, d_out] (a Conv1d's [M, B, C_out, T] transposed)."""
    if isinstance(module, nn.Conv1d):
        return b.transpose(2, 3)
    return b.reshape(b.shape[0], b.shape[1], -1, b.shape[-1])


def _stack(per_call: list[Tensor]) -> Tensor:
    """The calls of one layer side by side along T."""
    return per_call[0] if len(per_call) == 1 else torch.cat(per_call, dim=2)
