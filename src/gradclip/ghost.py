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
every example's gradient), use ``vmap(grad)``; :func:`make_sample_clipping` chooses and says why.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradclip.clipping import Clipper, ClipStats, effective_factor, total_norm, unit_norms
from gradclip.gradients import LossFn, PerSampleGradients

COVERED = (nn.Linear, nn.Conv1d, nn.RNNCell, nn.LSTMCell)

# (mean of the clipped per-example gradients in parameter order, clip statistics, losses [B])
SampleClipping = Callable[[Tensor, Tensor], tuple[list[Tensor], ClipStats, Tensor]]


def ghost_unsupported_reason(model: nn.Module, clipper: Clipper) -> str | None:
    """None if ghost norms cover ``model`` and ``clipper``; otherwise why not, in a few words."""
    if clipper.method == "value":
        return "value clipping clamps every element of every example's gradient"
    owned = set()
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv1d) and (module.groups != 1 or module.dilation != (1,)
                                              or module.padding_mode != "zeros" or isinstance(module.padding, str)):
            return f"{path} is a Conv1d with groups, dilation, string padding or non-zero padding"
        if isinstance(module, COVERED):
            owned |= {id(p) for p in module.parameters(recurse=False)}
    outside = [name for name, p in model.named_parameters() if id(p) not in owned]
    if outside:
        shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
        return f"parameters outside Linear, Conv1d, RNNCell and LSTMCell layers ({shown})"
    return None


def make_sample_clipping(model: nn.Module, loss_fn: LossFn, clipper: Clipper) -> tuple[SampleClipping, str]:
    """The per-sample clipping step for this model and method, and how it is computed:
    ``"ghost"``, or ``"vmap: <why ghost norms do not apply>"`` (written to the run's record)."""
    reason = ghost_unsupported_reason(model, clipper)
    if reason is None:
        return GhostClipping(model, loss_fn, clipper), "ghost"
    per_sample = PerSampleGradients(model, loss_fn)
    params = list(model.parameters())

    def vmap_clipping(x: Tensor, y: Tensor):
        grads, losses = per_sample(x, y)
        mean, stats = clipper.clip_samples(grads, params)
        return mean, stats, losses

    return vmap_clipping, f"vmap: {reason}"


def direct_is_cheaper(positions: int, d_in: int, d_out: int) -> bool:
    """Whether G_i itself (T d_in d_out per example) costs less than the Gram form (T^2 (d_in + d_out))."""
    return positions * (d_in + d_out) >= d_in * d_out


class _Piece:
    """One parameter's share of the per-example gradients: activations ``a`` [B, T, d_in] and
    output gradients ``b`` [B, T, d_out] (a weight), or ``b`` alone (a bias: G_i = sum_t b_it).
    ``shared`` is a cache common to the parameters of one layer, which share ``b``."""

    def __init__(self, a: Tensor | None, b: Tensor, shape: torch.Size, shared: dict) -> None:
        self.a, self.b, self.shape, self.shared = a, b, shape, shared
        self.single = b.shape[1] == 1  # one position: plain matrices, no Gram form
        self._direct: Tensor | None = None
        if a is not None and not self.single and direct_is_cheaper(b.shape[1], a.shape[2], b.shape[2]):
            self._direct = torch.einsum("btj,bti->bji", b, a)

    def _b_summed(self) -> Tensor:
        """sum_t b_it, [B, d_out]: a bias's per-example gradient."""
        if "b_summed" not in self.shared:
            self.shared["b_summed"] = self.b[:, 0] if self.single else self.b.sum(1)
        return self.shared["b_summed"]

    def _b_sq(self) -> Tensor:
        if "b_sq" not in self.shared:
            self.shared["b_sq"] = self._b_summed().square().sum(1)
        return self.shared["b_sq"]

    def sq_norm(self) -> Tensor:
        """||G_i||^2 per example, [B]."""
        if self.a is None:
            return self._b_sq()
        if self._direct is not None:
            return self._direct.square().sum((1, 2))
        if self.single:
            return self.a[:, 0].square().sum(1) * self._b_sq()
        return (self.a @ self.a.transpose(1, 2) * (self.b @ self.b.transpose(1, 2))).sum((1, 2))

    def unit_sq_norms(self) -> Tensor:
        """||G_ij||^2 per example and AGC unit: [B, d_out] for a weight, [B, 1] for a bias."""
        if self.a is None:
            return self._b_sq().unsqueeze(1)
        if self._direct is not None:
            return self._direct.square().sum(2)
        if self.single:
            return self.a[:, 0].square().sum(1, keepdim=True) * self.b[:, 0].square()
        return ((self.a @ self.a.transpose(1, 2)) @ self.b * self.b).sum(1)

    def weighted_sum(self, scale: Tensor | None) -> Tensor:
        """sum_i s_i G_i in the parameter's shape; ``scale`` [B, d_out] or [B, 1] (None: 1)."""
        if self.a is None:
            b = self._b_summed()
            return (b.sum(0) if scale is None else (b * scale).sum(0)).view(self.shape)
        if self._direct is not None:
            weighted = self._direct if scale is None else self._direct * scale.unsqueeze(2)
            return weighted.sum(0).view(self.shape)
        if self.single:
            b = self.b[:, 0] if scale is None else self.b[:, 0] * scale
            return torch.mm(b.t(), self.a[:, 0]).view(self.shape)
        b = self.b if scale is None else self.b * scale.unsqueeze(1)
        return torch.einsum("btj,bti->ji", b, self.a).view(self.shape)


class GhostClipping:
    """Per-sample clipping of ``model`` by ``clipper`` from one forward and one backward pass:
    callable (x, y) -> (clipped mean in parameter order, ClipStats, per-example losses).

    The results equal Clipper.clip_samples on vmap(grad)'s per-example gradients up to float
    rounding (tests/test_ghost.py, every model of configs/model/).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, clipper: Clipper) -> None:
        reason = ghost_unsupported_reason(model, clipper)
        if reason:
            raise ValueError(f"ghost norms do not cover this model: {reason}")
        self.model, self.loss_fn, self.clipper = model, loss_fn, clipper
        self.modules = [m for m in model.modules() if isinstance(m, COVERED)]
        index = {id(p): k for k, p in enumerate(model.parameters())}
        self.params = list(model.parameters())
        # Per module: (parameter index, which activation feeds it: 0 = input, 1 = hidden state,
        # None = a bias) for each of its parameters.
        self.slots = []
        for m in self.modules:
            if isinstance(m, (nn.RNNCell, nn.LSTMCell)):
                pairs = [(m.weight_ih, 0), (m.weight_hh, 1), (m.bias_ih, None), (m.bias_hh, None)]
            else:
                pairs = [(m.weight, 0), (m.bias, None)]
            self.slots.append([(index[id(p)], source) for p, source in pairs if p is not None])
        agc = clipper.method == "agc"
        mask = clipper._clipped_mask or [True] * len(self.params)
        self.agc_active = [agc and active for active in mask]

    def __call__(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], ClipStats, Tensor]:
        calls: list[list] = [[] for _ in self.modules]
        handles = [m.register_forward_hook(_tap(m, calls[k])) for k, m in enumerate(self.modules)]
        try:
            losses = self.loss_fn(self.model(x), y)
        finally:
            for handle in handles:
                handle.remove()
        outputs = [z for module_calls in calls for _, z in module_calls]
        # Gradients of the SUMMED loss: example i's output gradient is that of its own loss.
        grads = iter(torch.autograd.grad(losses.sum(), outputs))
        pieces: list[_Piece | None] = [None] * len(self.params)
        for module, module_calls, slots in zip(self.modules, calls, self.slots):
            b = _stack([_as_positions(module, next(grads)) for _ in module_calls])
            inputs = [_stack([_activations(module, acts[j]) for acts, _ in module_calls]) for j in range(2)
                      if any(source == j for _, source in slots)]
            shared: dict = {}
            for k, source in slots:
                pieces[k] = _Piece(None if source is None else inputs[source], b, self.params[k].shape, shared)
        return self._clip(pieces, losses.detach())

    def _clip(self, pieces: list[_Piece], losses: Tensor):
        clipper = self.clipper
        if clipper.method == "agc":
            unit_sq = [p.unit_sq_norms() for p in pieces]
            sq_norms = torch.stack([u.sum(1) for u in unit_sq]).sum(0)
            scales, clipped_sq, clipped_units, units = [], torch.zeros_like(sq_norms), 0, 0
            for k, (u, param) in enumerate(zip(unit_sq, self.params)):
                if not self.agc_active[k]:
                    scales.append(None)
                    clipped_sq = clipped_sq + u.sum(1)
                    continue
                scale = clipper.agc_scale(u.sqrt(), unit_norms(param.detach()).reshape(1, -1))
                scales.append(scale)
                clipped_sq = clipped_sq + (scale.square() * u).sum(1)
                clipped_units = clipped_units + (scale < 1).sum()
                units += scale.numel()
            sample_norms = sq_norms.sqrt()
            fraction = torch.as_tensor(clipped_units / max(units, 1), dtype=torch.float32)
            factor = effective_factor(sample_norms, clipped_sq.sqrt())
        else:
            sample_norms = torch.stack([p.sq_norm() for p in pieces]).sum(0).sqrt()
            scale = clipper.sample_scale(sample_norms)
            factor, fraction = (lambda: 1.0 / scale), (lambda: (scale < 1).float().mean())
            scales = [(scale / len(losses)).unsqueeze(1)] * len(pieces)  # the 1/B of the mean folded in
        mean = [p.weighted_sum(s) for p, s in zip(pieces, scales)]
        if clipper.method == "agc":
            torch._foreach_div_(mean, len(losses))
        before = lambda: total_norm([p.weighted_sum(None) for p in pieces]) / len(losses)  # noqa: E731 - logged rows only
        return mean, ClipStats(before, lambda: total_norm(mean), factor, fraction, sample_norms), losses


def _tap(module: nn.Module, calls: list) -> Callable:
    """A forward hook that records (activations, pre-activation output) of each call; for a
    recurrent cell it recomputes the cell so that the pre-activation is in the graph."""
    if isinstance(module, nn.RNNCell):
        def hook(m, args, output):
            x, h = args[0], args[1] if len(args) > 1 and args[1] is not None else None
            h = x.new_zeros(x.shape[0], m.hidden_size) if h is None else h
            z = F.linear(x, m.weight_ih, m.bias_ih) + F.linear(h, m.weight_hh, m.bias_hh)
            calls.append(((x, h), z))
            return torch.tanh(z) if m.nonlinearity == "tanh" else torch.relu(z)
    elif isinstance(module, nn.LSTMCell):
        def hook(m, args, output):
            x = args[0]
            if len(args) > 1 and args[1] is not None:
                h, c = args[1]
            else:
                h = c = x.new_zeros(x.shape[0], m.hidden_size)
            z = F.linear(x, m.weight_ih, m.bias_ih) + F.linear(h, m.weight_hh, m.bias_hh)
            calls.append(((x, h), z))
            i, f, g, o = z.chunk(4, dim=1)  # torch's gate order
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c_new), c_new
    else:
        def hook(m, args, output):
            calls.append(((args[0],), output))
    return hook


def _activations(module: nn.Module, a: Tensor) -> Tensor:
    """A call's input as [B, T, d_in]: a Conv1d's input unfolded into its T output positions
    (channel-major, as weight.view(out, -1) is); any other input with its middle dims as T."""
    if isinstance(module, nn.Conv1d):
        (k,), (stride,), (pad,) = module.kernel_size, module.stride, module.padding
        a = F.pad(a, (pad, pad)).unfold(2, k, stride)  # [B, C_in, T, k]
        return a.permute(0, 2, 1, 3).reshape(a.shape[0], a.shape[2], -1)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _as_positions(module: nn.Module, b: Tensor) -> Tensor:
    """An output gradient as [B, T, d_out] (a Conv1d's [B, C_out, T] transposed)."""
    if isinstance(module, nn.Conv1d):
        return b.transpose(1, 2)
    return b.reshape(b.shape[0], -1, b.shape[-1])


def _stack(per_call: list[Tensor]) -> Tensor:
    """The calls of one module side by side along T."""
    return per_call[0] if len(per_call) == 1 else torch.cat(per_call, dim=1)
