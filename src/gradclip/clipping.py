"""Gradient clipping: none, classic norm clipping, adaptive gradient clipping (AGC) and value clipping.

Each method works at two granularities:

* ``batch``: clip the mini-batch MEAN gradient g = mean_i g_i (what training code usually does).
* ``sample``: clip every example's gradient g_i first, then average, as in the update rule of
  Ramaswamy (2023), theta <- theta - a(n) * grad l(theta, x, y) / c(theta, x, y).

The two are different algorithms with different fixed points: per-sample clipping has rest
points where mean_i g_i / c_i = 0 (eq. 22 of the paper); batch clipping's, where the mean over
batches of the clipped batch means is zero, which is plain SGD's rest point only as the batch
means stop being clipped (large B), and per-sample clipping's at B = 1 (docs/CLAIMS.md,
experiments 9 and 12).

Semantics follow the reference implementations named below (docs/CLAIMS.md gives the clipping
factor of each method in the paper's terms):

* ``norm``: torch.nn.utils.clip_grad_norm_: every gradient is multiplied by
  min(1, tau / (||g|| + eps)) with one norm over all parameters. torch hard-codes eps = 1e-6;
  here it is a setting and eps = 0 gives the paper's c = max(1, ||g|| / tau) exactly.
* ``agc``: timm.utils.agc.adaptive_clip_grad (Brock et al. 2021, "High-performance large-scale
  image recognition without normalization"): for each output unit i of a weight (dim 0 of a
  PyTorch Linear/Conv/RNN weight; a tensor of ndim <= 1 is one unit) with max_i =
  lambda * max(||W_i||, eps), the unit's gradient is scaled by max_i / max(||G_i||, 1e-6) where
  ||G_i|| > max_i. Parameters are exempted by name (fnmatch patterns), not by position.
* ``value``: torch.nn.utils.clip_grad_value_ (element-wise clamp). A baseline only: it changes
  the gradient's direction and is not one of the paper's methods.

Every call returns a :class:`ClipStats`. The clipping factor ``c`` is reported per example at
``sample`` granularity and as one number at ``batch`` granularity. For ``norm`` it is the exact
factor 1 / min(1, tau / (||g|| + eps)); for ``agc`` and ``value``, which have no single factor,
it is the effective factor ||g|| / ||g_clipped|| (1 where the gradient is zero).
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from gradclip.checks import ConfigError, require_choice, require_known_keys, require_number

METHODS = ("none", "norm", "agc", "value")
GRANULARITIES = ("batch", "sample")
# The keys of each method (configs/clip/<method>.yaml).
KEYS = {"none": ("method", "granularity"), "norm": ("method", "granularity", "threshold", "eps"),
        "agc": ("method", "granularity", "clip_factor", "eps", "exclude"),
        "value": ("method", "granularity", "threshold")}

# timm's floor on a unit's gradient norm before dividing by it.
_AGC_MIN_GRAD_NORM = 1e-6


class ClipStats:
    """What one clipping call did. Tensors stay on the gradients' device (no host sync).

    grad_norm:          ||mean_i g_i||, the norm of the mini-batch gradient before clipping.
    clipped_grad_norm:  ||update direction|| after clipping (mean of clipped g_i for ``sample``).
    factor:             c >= 1; shape [B] for ``sample``, [] for ``batch``.
    clip_fraction:      fraction clipped: of examples (norm, sample), of units (agc), of
                        elements (value); 0 or 1 for norm at batch granularity.
    sample_grad_norm:   ||g_i|| per example, shape [B]; None at ``batch`` granularity.

    With ``members=True`` every value has a leading member dim M ([M], [M, B]); ``member(k)``
    gives member k's values without it.

    Each value may be given as a zero-argument function: it is then computed on first access
    and kept, so a training loop that logs every k steps pays for a statistic only then.
    """

    FIELDS = ("grad_norm", "clipped_grad_norm", "factor", "clip_fraction", "sample_grad_norm")

    def __init__(self, grad_norm, clipped_grad_norm, factor, clip_fraction, sample_grad_norm=None) -> None:
        self._values = dict(zip(self.FIELDS, (grad_norm, clipped_grad_norm, factor, clip_fraction, sample_grad_norm)))

    def __getattr__(self, name: str):
        if name not in ClipStats.FIELDS:
            raise AttributeError(name)
        value = self._values[name]
        if callable(value):
            value = self._values[name] = value()
        return value

    def member(self, k: int) -> ClipStats:
        """Member k's statistics, without the member dim (each still computed on first access)."""
        def pick(field: str):
            value = getattr(self, field)
            return None if value is None else value[k]

        return ClipStats(*(functools.partial(pick, field) for field in ClipStats.FIELDS))

    @property
    def clipped(self) -> bool:
        """Whether anything was clipped (forces a host sync)."""
        return bool(self.clip_fraction > 0)


def total_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The 2-norm of all tensors together, as one vector."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def member_norms(tensors: Sequence[Tensor], lead: int = 1) -> Tensor:
    """The 2-norm over all tensors together, per index of their ``lead`` leading dims (members;
    members and examples): shape ``tensors[0].shape[:lead]``.

    One member is reduced exactly as torch.nn.utils.clip_grad_norm_ reduces (a norm per tensor,
    then the norm of those), so that a single run clips bit for bit as torch does.
    """
    shape = tensors[0].shape[:lead]
    if math.prod(shape) == 1:
        return total_norm(tensors).reshape(shape)
    # vector_norm reduces without a squared copy of the (per-example) gradients.
    norms = [torch.linalg.vector_norm(t.reshape(*shape, -1), dim=-1) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms), dim=0)


def per_sample_norms(tensors: Sequence[Tensor]) -> Tensor:
    """Per-example 2-norm over all tensors of shape [B, ...] together: shape [B]."""
    return member_norms(tensors, lead=1)


def unit_norms(tensor: Tensor, lead: int = 0) -> Tensor:
    """Norm of each output unit, keepdim so that it broadcasts against ``tensor``.

    A unit is a slice along dim 0 (PyTorch weights are output-first); a tensor of ndim <= 1 (a
    bias, a gain) is a single unit, as in timm's ``unitwise_norm``. The ``lead`` leading dims
    (members, examples) are kept.
    """
    if tensor.ndim - lead <= 1:
        dims = tuple(range(lead, tensor.ndim))
    else:
        dims = tuple(range(lead + 1, tensor.ndim))
    if not dims:  # a scalar parameter
        return tensor.abs()
    return torch.linalg.vector_norm(tensor, dim=dims, keepdim=True)


def effective_factor(before: Tensor, after: Tensor) -> Tensor:
    """||g|| / ||g_clipped||: 1 for a zero gradient, inf if clipping zeroed a non-zero one."""
    return torch.where(before == 0, 1.0, before / after)


def per_member(value: float | Tensor, ndim: int) -> float | Tensor:
    """A setting (a number, or one value per member, shape [M]) shaped to broadcast against a
    tensor of ``ndim`` dims whose first is the member."""
    return value.view(-1, *[1] * (ndim - 1)) if isinstance(value, Tensor) else value


class Clipper:
    """One clipping method with its settings, bound to a model's named parameters.

    ``clip_batch_`` clips mean gradients in place; ``clip_samples`` clips per-example gradients
    and returns their mean. Parameters are passed in the order of ``names``.

    With ``members=True`` every tensor has a leading member dim M (a population of runs,
    gradclip.population; a single run is M = 1), each member is clipped on its own (a norm per
    member, never across members), and ``threshold`` and ``clip_factor`` may be tensors [M],
    one value per member. Without it, tensors are one run's.
    """

    def __init__(
        self,
        method: str = "none",
        *,
        threshold: float | Tensor = 1.0,
        eps: float = 1e-6,
        clip_factor: float | Tensor = 0.01,
        agc_eps: float = 1e-3,
        exclude: Sequence[str] = (),
        names: Sequence[str] = (),
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"clip.method={method!r} is not one of: {', '.join(METHODS)}")
        self.method = method
        self.threshold = threshold if isinstance(threshold, Tensor) else float(threshold)
        self.eps = float(eps)
        self.clip_factor = clip_factor if isinstance(clip_factor, Tensor) else float(clip_factor)
        self.agc_eps = float(agc_eps)
        self.names = list(names)
        self.exclude = list(exclude) if method == "agc" else []
        self.excluded = [n for n in self.names if any(fnmatch.fnmatchcase(n, p) for p in self.exclude)]
        unmatched = [p for p in self.exclude if not any(fnmatch.fnmatchcase(n, p) for n in self.names)]
        if self.names and unmatched:
            raise ConfigError(
                f"clip.exclude pattern(s) {unmatched} match no parameter; the model's parameters are: "
                + ", ".join(self.names)
            )
        if self.names and len(self.excluded) == len(self.names):
            raise ConfigError(
                f"clip.exclude={self.exclude} exempts every parameter ({', '.join(self.names)}), so AGC "
                "would be plain SGD; use clip.exclude=[] for a model that is only a head"
            )
        self._clipped_mask = [n not in self.excluded for n in self.names]

    @classmethod
    def stacked(cls, clippers: Sequence[Clipper]) -> Clipper:
        """One clipper for a population whose members' clippers are ``clippers`` (the same method,
        eps and exclusions; thresholds and AGC factors become tensors [M])."""
        if len(clippers) == 1:
            return clippers[0]
        first = clippers[0]
        return cls(first.method, threshold=torch.tensor([c.threshold for c in clippers]), eps=first.eps,
                   clip_factor=torch.tensor([c.clip_factor for c in clippers]), agc_eps=first.agc_eps,
                   exclude=first.exclude, names=first.names)

    def to(self, device: torch.device) -> Clipper:
        """Move per-member settings to ``device``."""
        for key in ("threshold", "clip_factor"):
            if isinstance(getattr(self, key), Tensor):
                setattr(self, key, getattr(self, key).to(device))
        return self

    def clipped_mask(self, count: int) -> list[bool]:
        """Per parameter, whether the method clips it (AGC exempts some by name)."""
        return self._clipped_mask or [True] * count

    # -- batch granularity ---------------------------------------------------------------------

    def clip_batch_(self, grads: list[Tensor], params: list[Tensor], members: bool = False) -> ClipStats:
        """Clip the mini-batch gradients ``grads`` in place."""
        if not members:
            return self.clip_batch_([g.unsqueeze(0) for g in grads], [p.unsqueeze(0) for p in params],
                                    members=True).member(0)
        before = member_norms(grads)
        if self.method == "none":
            return ClipStats(before, before, torch.ones_like(before), torch.zeros_like(before))
        if self.method == "norm":
            scale = (per_member(self.threshold, 1) / (before + self.eps)).clamp(max=1.0)
            if len(scale) == 1:
                torch._foreach_mul_(grads, scale[0])  # as clip_grad_norm_ does
            else:
                for g in grads:
                    g.mul_(per_member(scale, g.ndim))
            return ClipStats(before, lambda: before * scale, lambda: 1.0 / scale, lambda: (scale < 1).float())
        if self.method == "value":
            n_clipped = sum((g.abs() > per_member(self.threshold, g.ndim)).flatten(1).sum(1) for g in grads)
            for g in grads:
                bound = per_member(self.threshold, g.ndim)
                g.clamp_(-bound, bound)
            after = member_norms(grads)
            return ClipStats(before, after, effective_factor(before, after), n_clipped / (_numel(grads) // len(before)))
        clipped, fraction = self._agc_clip(grads, params, lead=1)
        torch._foreach_copy_(grads, clipped)
        after = member_norms(grads)
        return ClipStats(before, after, effective_factor(before, after), fraction)

    # -- sample granularity --------------------------------------------------------------------

    def clip_samples(self, grads: list[Tensor], params: list[Tensor],
                     members: bool = False) -> tuple[list[Tensor], ClipStats]:
        """Clip every example's gradient (tensors [B, ...], or [M, B, ...] with ``members``)
        and return the mean over examples."""
        if not members:
            mean, stats = self.clip_samples([g.unsqueeze(0) for g in grads], [p.unsqueeze(0) for p in params],
                                            members=True)
            return [m[0] for m in mean], stats.member(0)
        count, batch = grads[0].shape[:2]
        sample_norms = member_norms(grads, lead=2)
        if self.method in ("none", "norm"):
            scale = self.sample_scale(sample_norms)
            # One factor per example: the clipped mean is a weighted sum, with no clipped copy.
            mean = [torch.bmm(scale.unsqueeze(1), g.reshape(count, batch, -1)).view(g.shape[:1] + g.shape[2:]) / batch
                    for g in grads]
            factor, fraction = (lambda: 1.0 / scale), (lambda: (scale < 1).float().mean(1))
        else:
            if self.method == "value":
                bounds = [per_member(self.threshold, g.ndim) for g in grads]
                clipped = [g.clamp(-b, b) for g, b in zip(grads, bounds)]
                fraction = sum((g.abs() > b).flatten(1).sum(1) for g, b in zip(grads, bounds)) / (_numel(grads) // count)
            else:
                clipped, fraction = self._agc_clip(grads, params, lead=2)
            mean = [c.mean(1) for c in clipped]
            factor = effective_factor(sample_norms, member_norms(clipped, lead=2))
        before = lambda: member_norms([g.mean(1) for g in grads])  # noqa: E731 - a pass over all gradients
        return mean, ClipStats(before, lambda: member_norms(mean), factor, fraction, sample_norms)

    def sample_scale(self, norms: Tensor) -> Tensor:
        """Per-example factors 1 / c_i of ``none`` (1) and ``norm``: min(1, tau / (||g_i|| + eps));
        ``norms`` [M, B]."""
        if self.method == "none":
            return torch.ones_like(norms)
        return (per_member(self.threshold, norms.ndim) / (norms + self.eps)).clamp(max=1.0)

    # -- helpers -------------------------------------------------------------------------------

    def _agc_clip(self, grads: list[Tensor], params: list[Tensor], lead: int) -> tuple[list[Tensor], Tensor]:
        """AGC-clipped copies of ``grads`` ([M, ...] or [M, B, ...]: ``lead`` 1 or 2) and, per
        member, the fraction of (example,) unit pairs clipped."""
        clipped, clipped_units, units = [], 0, 0
        for g, p, active in zip(grads, params, self.clipped_mask(len(grads)), strict=True):
            if not active:
                clipped.append(g)
                continue
            weight_norms = unit_norms(p.detach(), lead=1)
            scale = self.agc_scale(unit_norms(g, lead=lead), weight_norms.unsqueeze(1) if lead == 2 else weight_norms)
            clipped.append(g * scale)
            clipped_units = clipped_units + (scale < 1).flatten(1).sum(1)
            units += scale[0].numel()
        return clipped, torch.as_tensor(clipped_units / max(units, 1), dtype=torch.float32)

    def agc_scale(self, grad_norm: Tensor, weight_norm: Tensor) -> Tensor:
        """timm's rule: scale max_norm / max(||G_i||, 1e-6) where ||G_i|| > max_norm, else 1, with
        max_norm = lambda max(||W_i||, eps). Leading dim: the member."""
        max_norm = weight_norm.clamp(min=self.agc_eps) * per_member(self.clip_factor, weight_norm.ndim)
        scale = max_norm / grad_norm.clamp(min=_AGC_MIN_GRAD_NORM)
        return torch.where(grad_norm > max_norm, scale, torch.ones_like(scale))

    def agc_unit_bound(self, param: Tensor, members: bool = False) -> Tensor:
        """lambda * max(||W_i||, eps) per unit: the most a unit's clipped gradient can have."""
        if not members:
            return unit_norms(param.detach()).clamp(min=self.agc_eps) * self.clip_factor
        return unit_norms(param.detach(), lead=1).clamp(min=self.agc_eps) * per_member(self.clip_factor, param.ndim)

    def describe(self) -> str:
        """A short human-readable name, e.g. 'norm(tau=1)' or 'agc(lambda=0.01)'."""
        return {
            "none": "none",
            "norm": f"norm(tau={self.threshold:g})",
            "agc": f"agc(lambda={self.clip_factor:g}, eps={self.agc_eps:g})",
            "value": f"value(v={self.threshold:g})",
        }[self.method]


def _numel(tensors: Sequence[Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def validate_clip_config(cfg: Mapping) -> None:
    """Check a ``clip`` config before any work; raise ConfigError naming the key."""
    require_choice(cfg, "clip", "method", METHODS)
    require_choice(cfg, "clip", "granularity", GRANULARITIES)
    method = cfg["method"]
    require_known_keys(cfg, "clip", KEYS[method], f"clip.method={method}")
    if method in ("norm", "value"):
        require_number(cfg, "clip", "threshold", lambda v: v > 0, "> 0")
    if method == "norm":
        require_number(cfg, "clip", "eps", lambda v: v >= 0, ">= 0 (0 gives the paper's exact factor)")
    if method == "agc":
        require_number(cfg, "clip", "clip_factor", lambda v: v > 0, "> 0")
        require_number(cfg, "clip", "eps", lambda v: v >= 0, ">= 0 (the paper's (A3) wants > 0)")
        exclude = cfg.get("exclude", [])
        if isinstance(exclude, str) or not all(isinstance(p, str) for p in exclude):
            raise ConfigError(
                f"clip.exclude={exclude!r} must be a list of parameter names or patterns, "
                "e.g. [head.weight] (NFNets) or [head.weight, head.bias] (timm)"
            )


def make_clipper(cfg: Mapping, names: Sequence[str]) -> Clipper:
    """Build a Clipper from a validated ``clip`` config and the model's parameter names."""
    validate_clip_config(cfg)
    method = cfg["method"]
    kwargs: dict = {"names": names}
    if method in ("norm", "value"):
        kwargs["threshold"] = cfg["threshold"]
    if method == "norm":
        kwargs["eps"] = cfg["eps"]
    if method == "agc":
        kwargs.update(clip_factor=cfg["clip_factor"], agc_eps=cfg["eps"], exclude=list(cfg.get("exclude", [])))
    return Clipper(method, **kwargs)
