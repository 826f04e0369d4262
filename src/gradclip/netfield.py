"""Eq. (22) on a network: the clipped mean field of a one-hidden-layer MLP on a whole training set,
in closed form and float64, and its zeros near a point.

For the MLP f(x) = W2 tanh(W1 x + b1) + b2 with cross-entropy loss l_i, per-sample norm clipping
with threshold tau and the paper's exact factor c_i = max(1, ||g_i|| / tau) (``clip.eps=0``), and
weight decay lambda added to the clipped gradient (as the runner adds it), SGD's mean field is

    F_tau(theta) = (1/n) sum_i g_i(theta) / c_i(theta) + lambda theta,      g_i = grad l_i,

whose zeros are those of eq. (22) with weight decay. With tau = inf it is the gradient of
L(theta) + lambda/2 ||theta||^2, the training loss with L2: its zeros are the loss's stationary
points. F_tau is not a gradient (the c_i depend on theta), so its zero theta_H is not the
minimiser of any scaled loss, and not theta_L, the nearby minimum of the training loss.

The per-sample gradients are written out by hand from backpropagation through the two layers:
with p_i = softmax(f(x_i)), h_i = tanh(W1 x_i + b1),

    d2_i = p_i - e_{y_i},   grad_{W2} l_i = d2_i h_i^T,   grad_{b2} l_i = d2_i,
    d1_i = (W2^T d2_i) * (1 - h_i^2),   grad_{W1} l_i = d1_i x_i^T,   grad_{b1} l_i = d1_i,

so ||g_i||^2 = ||d2_i||^2 (||h_i||^2 + 1) + ||d1_i||^2 (||x_i||^2 + 1) (the ghost norm of
Goodfellow 2015 and Opacus, exact for these two Linear layers) and the clipped mean is two
weighted matrix products: no per-example gradient is ever formed. This shares no code with the
training loop (gradclip.ghost, gradclip.clipping), so the two check each other
(tests/test_netfield.py against torch.func's per-example gradients of the model itself).

Zeros, all in float64 on the whole training set:

- :func:`refine`, the zero at or near a point (an averaged iterate): :func:`anderson`, Anderson
  acceleration of the Euler map theta - F_tau(theta) of the mean-field flow (F only, no
  Jacobian: 0.03-0.5 s a point on the 40-16-10 MLP), finished by Newton's method where it crawls;
- :func:`zero_along_flow`, where the mean-field ODE dtheta/dt = -F_tau(theta) from a point ends
  (Euler steps to ||F|| <= 1e-3, then the same): the zero the ODE method predicts for SGD started
  there. F_tau can have several zeros (tests/test_netfield.py: the flow from theta_L and
  continuation in tau reach different ones), so which one is meant matters;
- :func:`zero_near`, Newton's method with the exact Jacobian (forward-mode autodiff, :func:`jacobian`) and
  backtracking on ||F||: the independent check of the two above, and their last resort. Near a
  zero of a weakly regularised network the Jacobian's condition number reaches 1e4 (the smallest
  eigenvalue of the Hessian of L + lambda/2 ||theta||^2 at theta_L was 1.8e-4 with lambda =
  0.05), where a Jacobian a step (0.5-1 s) was measured to stall from half the averaged iterates
  and Krylov solvers to need thousands of products;
- :func:`minimum_near`, theta_L: Newton's method on the gradient of L + lambda/2 ||theta||^2,
  kept where it reaches a minimum (a positive definite Hessian, :func:`is_minimum`) no higher than
  where it started; else L-BFGS on it (descent: a minimum, not a saddle or a maximum, from where
  it starts), then polished by Newton's method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import jvp, vmap

from gradclip.start import lbfgs

# ||F(theta)|| accepted as a zero: float64 sums over a few hundred examples reach ~1e-15; at
# 1e-10 a zero is within ~1e-6 even along the field's slowest directions, while SGD's averaged
# iterates lie 0.02-0.2 from it: far below anything the runs can resolve.
ZERO_TOLERANCE = 1e-10
# Anderson acceleration keeps this many earlier values of the Euler map (30 converged in 30-230
# evaluations where 10 needed up to 2,500).
ANDERSON_MEMORY = 30
# Newton's method finishes an unconverged Anderson result from this ||F|| on.
NEWTON_FROM = 1e-6
# minimum_near's first try: Newton's method from where the runs started (a float32 minimum) took
# 2-4 steps at the full scale; one that needs more than this is left to L-BFGS.
NEWTON_FIRST_STEPS = 8
# is_minimum's margin: the smallest Hessian eigenvalue must exceed this fraction of the largest, so
# that rounding (~1e-13 relative in float64) cannot make a flat saddle pass as a minimum.
MINIMUM_CURVATURE = 1e-9
# jacobian() pushes this many tangents through F at a time: on the 40-16-10 MLP (P = 826) a
# Jacobian took 0.79 s in chunks of 64 against 1.34 s in one pass of all P, whose intermediates
# (P x n x width floats, 54 MB) the allocator maps and faults in afresh at every call; the
# entries are the same bits either way (tests/test_netfield.py).
JACOBIAN_CHUNK = 64
# BatchClippedField gathers at most this many Gram entries at a time (32 MB of float64).
GATHER_CHUNK = 4_000_000
# The parameters of gradclip.models.MLP with depth 1, in its order (theta's layout).
NAMES = ("hidden.0.weight", "hidden.0.bias", "head.weight", "head.bias")


@dataclass
class Zero:
    """Where an iteration ended: theta, ||F(theta)||, Newton steps, Jacobian-vector products,
    L-BFGS iterations (a minimum) and evaluations of F by Anderson acceleration and the flow
    (``flow_steps``); ``converged``: ||F|| <= ZERO_TOLERANCE."""

    theta: Tensor
    residual: float
    newton_steps: int
    jvps: int
    lbfgs_steps: int = 0
    flow_steps: int = 0

    @property
    def converged(self) -> bool:
        return self.residual <= ZERO_TOLERANCE


class TanhMLPField:
    """F_tau on one training set (x [n, d], integer labels y [n]) with weight decay ``lam``, for
    the tanh MLP of ``hidden`` units and ``classes`` outputs; theta is a float64 vector laid out
    as gradclip.models.MLP's parameters (:data:`NAMES`)."""

    def __init__(self, x, y, hidden: int, classes: int, lam: float) -> None:
        self.x = torch.as_tensor(np.asarray(x), dtype=torch.float64).reshape(len(y), -1)
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.int64)
        self.n, self.d = self.x.shape
        self.hidden, self.classes, self.lam = int(hidden), int(classes), float(lam)
        self.onehot = torch.nn.functional.one_hot(self.y, self.classes).double()
        self.x_sq = (self.x * self.x).sum(1)
        self.shapes = ((self.hidden, self.d), (self.hidden,), (self.classes, self.hidden), (self.classes,))
        self.size = sum(math.prod(shape) for shape in self.shapes)

    # -- layout --------------------------------------------------------------------------------

    def unflatten(self, theta: Tensor) -> list[Tensor]:
        return [piece.view(shape) for piece, shape in zip(theta.split([math.prod(s) for s in self.shapes]),
                                                            self.shapes)]

    def flatten(self, params: dict) -> Tensor:
        """theta from parameters by name (a model's state, or a theta.npz group)."""
        return torch.cat([torch.as_tensor(np.asarray(params[name]), dtype=torch.float64).reshape(-1)
                          for name in NAMES])

    # -- the field -----------------------------------------------------------------------------

    def logits(self, theta: Tensor, x: Tensor | None = None) -> Tensor:
        w1, b1, w2, b2 = self.unflatten(theta)
        return torch.tanh((self.x if x is None else x) @ w1.T + b1) @ w2.T + b2

    def sample_norms(self, theta: Tensor) -> Tensor:
        """||g_i|| of every training example."""
        return self._pieces(theta)[3]

    def _pieces(self, theta: Tensor):
        w1, b1, w2, b2 = self.unflatten(theta)
        h = torch.tanh(self.x @ w1.T + b1)
        d2 = torch.softmax(h @ w2.T + b2, dim=1) - self.onehot
        d1 = (d2 @ w2) * (1 - h * h)
        norms = ((d2 * d2).sum(1) * ((h * h).sum(1) + 1) + (d1 * d1).sum(1) * (self.x_sq + 1)).sqrt()
        return h, d2, d1, norms

    def __call__(self, theta: Tensor, tau: float) -> Tensor:
        """F_tau(theta); tau = inf: the gradient of L + lambda/2 ||theta||^2."""
        h, d2, d1, norms = self._pieces(theta)
        return self.weighted_sum(h, d2, d1, 1.0 / torch.clamp(norms / tau, min=1.0) / self.n) + self.lam * theta

    def weighted_sum(self, h: Tensor, d2: Tensor, d1: Tensor, weight: Tensor) -> Tensor:
        """sum_i weight_i g_i from the pieces of :meth:`_pieces`: two weighted matrix products."""
        d2, d1 = d2 * weight.unsqueeze(1), d1 * weight.unsqueeze(1)
        return torch.cat([(d1.T @ self.x).reshape(-1), d1.sum(0), (d2.T @ h).reshape(-1), d2.sum(0)])

    def symmetry(self, theta: Tensor) -> tuple[Tensor, list[int]]:
        """The sign and order of the hidden units that bring theta to its canonical form
        (:meth:`canonical`)."""
        w1, b1, _, _ = self.unflatten(theta)
        first = torch.where(b1 != 0, b1, w1[:, 0])
        sign = torch.where(first < 0, -1.0, 1.0).to(theta.dtype)
        w1, b1 = w1 * sign[:, None], b1 * sign
        return sign, sorted(range(self.hidden), key=lambda j: (b1[j].item(), *w1[j].tolist()))

    def transform(self, theta: Tensor, symmetry: tuple[Tensor, list[int]]) -> Tensor:
        """theta with its hidden units flipped and ordered by ``symmetry`` (another theta's
        :meth:`symmetry`): an orthogonal map that leaves distances and the network's function
        unchanged, and under which F_tau is equivariant."""
        sign, order = symmetry
        w1, b1, w2, b2 = self.unflatten(theta)
        w1, b1, w2 = w1 * sign[:, None], b1 * sign, w2 * sign[None, :]
        return torch.cat([w1[order].reshape(-1), b1[order], w2[:, order].reshape(-1), b2])

    def canonical(self, theta: Tensor) -> Tensor:
        """theta with its hidden units in a standard order and sign: the network computes the same
        function with its units permuted, and with a unit's incoming weights, bias and outgoing
        weights all negated (tanh is odd). Each unit is flipped so that its bias is >= 0 (its
        first incoming weight where the bias is 0), then the units are sorted by (bias, incoming
        weights): two thetas of one minimum reached from different seeds become one vector."""
        return self.transform(theta, self.symmetry(theta))

    def objective(self, theta: Tensor) -> Tensor:
        """L(theta) + lambda/2 ||theta||^2, whose gradient is F_inf."""
        return torch.nn.functional.cross_entropy(self.logits(theta), self.y) + 0.5 * self.lam * theta.dot(theta)

    def scores(self, theta: Tensor, x, y) -> dict[str, float]:
        """Mean cross-entropy and accuracy of theta on (x, y) (no weight decay)."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64).reshape(len(y), -1)
        y = torch.as_tensor(np.asarray(y), dtype=torch.int64)
        logits = self.logits(theta, x)
        return {"loss": torch.nn.functional.cross_entropy(logits, y).item(),
                "acc": (logits.argmax(1) == y).double().mean().item()}


class BatchClippedField:
    """SGD's mean field under *batch* norm clipping on the same network and data (docs/CLAIMS.md,
    experiment 12): the mini-batch's mean gradient is clipped, not each example's,

        F^B_tau(theta) = E_b[ gbar_b / max(1, ||gbar_b|| / tau) ] + lambda theta,
        gbar_b = (1/B) sum_{i in b} g_i,

    over batches b of B examples drawn i.i.d. with replacement (the runner's ``sampling=iid``).
    By exchangeability of the draws, E_b[gbar_b / c_b] = (1/n) sum_i g_i w_i with w_i =
    E[count_b(i) / c_b] / E[count_b(i)] (count_b(i): how often example i is in batch b): each
    example's mean clipping factor over the batches that hold it, counted as often as they hold
    it. w_i is estimated over ``draws`` batches fixed by ``seed`` (the sample-average
    approximation) as that ratio, sum_b count_b(i) / c_b over sum_b count_b(i), so every example
    keeps its weight 1/n where no batch is clipped: the field is then F_inf exactly, and the
    estimate's noise is only the spread of 1/c_b among the batches that hold an example (with
    B = 1 none: it is F_tau exactly, per-sample clipping's field). A plain mean over batches
    would weight each example by how often it happened to be drawn, noise that the field's
    flattest directions (curvature ~2e-4 at theta_L) amplify ~1e4-fold.

    ||gbar_b||^2 = (1/B^2) sum_{i,j in b} g_i . g_j, from the per-example Gram matrix in closed
    form, g_i . g_j = (d2_i . d2_j)(h_i . h_j + 1) + (d1_i . d1_j)(x_i . x_j + 1), gathered B^2
    entries a batch (a chunk of batches at a time): no batch or per-example gradient is ever
    formed. ``batches`` [draws, B] may be given instead (tests)."""

    def __init__(self, field: TanhMLPField, batch_size: int, draws: int = 0, seed: int = 0, batches=None) -> None:
        self.field, self.size, self.lam = field, field.size, field.lam
        if batches is None:
            batches = np.random.default_rng(seed).integers(field.n, size=(draws, batch_size))
        self.batches = torch.as_tensor(np.asarray(batches), dtype=torch.int64)
        self.draws, self.batch_size = self.batches.shape
        self.flat = self.batches.reshape(-1)
        self.appearances = torch.bincount(self.flat, minlength=field.n).to(torch.float64)  # sum_b count_b(i)
        if (self.appearances == 0).any():
            raise ValueError(f"{int((self.appearances == 0).sum())} examples are in none of the {self.draws} "
                             "batches: draw more")
        self.x_gram = field.x @ field.x.T + 1
        # Each batch's B^2 entries of the flattened Gram matrix, indexed once (torch.take on them
        # is twice as fast as indexing rows and columns at every evaluation, and sums the same
        # numbers in the same order).
        self.pairs = (self.batches[:, :, None] * field.n + self.batches[:, None, :]).reshape(self.draws, -1)
        self.chunk = max(1, GATHER_CHUNK // self.batch_size ** 2)  # batches gathered at a time

    def batch_norms(self, theta: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """||gbar_b|| of every batch, and the pieces h, d2, d1 of :meth:`TanhMLPField._pieces`."""
        h, d2, d1, _ = self.field._pieces(theta)
        gram = ((d2 @ d2.T) * (h @ h.T + 1) + (d1 @ d1.T) * self.x_gram).reshape(-1)
        squared = torch.cat([gram.take(part).sum(1) for part in self.pairs.split(self.chunk)])
        return squared.clamp(min=0).sqrt() / self.batch_size, (h, d2, d1)

    def __call__(self, theta: Tensor, tau: float) -> Tensor:
        norms, (h, d2, d1) = self.batch_norms(theta)
        factor = 1.0 / torch.clamp(norms / tau, min=1.0)  # 1 / c_b
        per_draw = factor.repeat_interleave(self.batch_size)  # each example draw's batch factor
        totals = torch.zeros(self.field.n, dtype=torch.float64).index_add_(0, self.flat, per_draw)
        return self.field.weighted_sum(h, d2, d1, totals / self.appearances / self.field.n) + self.lam * theta


def jacobian(function, theta: Tensor) -> Tensor:
    """The Jacobian of ``function`` at theta by forward-mode autodiff (torch.func's jacfwd, in
    chunks of JACOBIAN_CHUNK tangents: torch.func.vmap over jvp along the unit vectors)."""
    basis = torch.eye(theta.numel(), dtype=theta.dtype)
    return vmap(lambda tangent: jvp(function, (theta,), (tangent,))[1], chunk_size=JACOBIAN_CHUNK)(basis).T


def zero_near(field: TanhMLPField, theta0: Tensor, tau: float, max_steps: int = 60) -> Zero:
    """The zero of F_tau that Newton's method reaches from theta0 (near a zero, the nearest one).

    Each step solves J d = -F with the exact Jacobian J (forward-mode autodiff of F, torch.func's
    :func:`jacobian`: P Jacobian-vector products, vectorised) by LU, then halves the step until
    ||F|| falls by at least 1e-4 of the step's promise. A Jacobian is kept for the next steps
    while each cuts ||F|| at least fourfold (the chord method: near a zero that is most of
    Newton's gain for one LU instead of one per step); a step that does not descend with an old
    Jacobian is retried with a fresh one, and the iteration stops where even that does not."""
    theta = theta0.detach().to(torch.float64).clone()
    value = field(theta, tau)
    residual, step, products = value.norm().item(), 0, 0
    factors = None
    while residual > ZERO_TOLERANCE and step < max_steps:
        step += 1
        fresh = factors is None
        if fresh:
            products += field.size
            factors = torch.linalg.lu_factor(jacobian(lambda t: field(t, tau), theta))
        direction = torch.linalg.lu_solve(*factors, -value.unsqueeze(1)).squeeze(1)
        length = 1.0
        while True:
            trial = theta + length * direction
            trial_value = field(trial, tau)
            trial_residual = trial_value.norm().item()
            if trial_residual <= (1 - 1e-4 * length) * residual or length < 1e-6:
                break
            length /= 2
        if trial_residual >= residual:  # no descent: a fresh Jacobian, or (with one) stop where we are
            if fresh:
                break
            factors = None
            continue
        if trial_residual > residual / 4:
            factors = None
        theta, value, residual = trial, trial_value, trial_residual
    return Zero(theta, residual, step, products)


def minimum_near(field: TanhMLPField, theta0: Tensor, max_iter: int = 20_000) -> Zero:
    """theta_L: a minimum of L + lambda/2 ||theta||^2 at or near theta0. First Newton's method on
    its gradient F_inf (:func:`zero_near`), kept if it converges to a minimum no higher than
    theta0 (:func:`is_minimum`): from the runner's float32 L-BFGS result, where each run starts,
    it takes a few steps. Otherwise (it stalls, or reaches a saddle or a maximum, as from a
    start near a saddle) L-BFGS with a strong Wolfe line search from theta0 (descent: a minimum)
    to ||F_inf|| ~ 1e-8, then polished by Newton's method. L-BFGS alone took 4-25 s a seed on
    the 40-16-10 MLP: the flattest directions (curvature ~2e-4) make it crawl."""
    theta0 = theta0.detach().to(torch.float64)
    newton = zero_near(field, theta0, math.inf, max_steps=NEWTON_FIRST_STEPS)
    if newton.converged and is_minimum(field, newton.theta) and field.objective(newton.theta) <= field.objective(theta0):
        return newton
    theta = theta0.clone().requires_grad_(True)
    iterations = lbfgs([theta], lambda: field.objective(theta), tolerance_grad=1e-9, max_iter=max_iter)
    polished = zero_near(field, theta.detach(), math.inf)
    polished.lbfgs_steps = iterations
    polished.newton_steps += newton.newton_steps
    polished.jvps += newton.jvps
    return polished


def is_minimum(field: TanhMLPField, theta: Tensor) -> bool:
    """Whether the Hessian of L + lambda/2 ||theta||^2 at theta (the Jacobian of F_inf, exact by
    forward-mode autodiff, symmetric up to rounding) is positive definite, with a margin: its
    smallest eigenvalue above MINIMUM_CURVATURE of its largest (at the full scale's minima the
    smallest was about 1.8e-4; the saddle near one seed's start had -2.7e-5)."""
    hessian = jacobian(lambda t: field(t, math.inf), theta.detach().to(torch.float64))
    eigenvalues = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    return bool(eigenvalues[0] > MINIMUM_CURVATURE * eigenvalues[-1].abs())


def flow(field: TanhMLPField, theta0: Tensor, tau: float, until: float = 1e-3,
         max_steps: int = 50_000) -> tuple[Tensor, float, int]:
    """Euler steps of unit length along the mean-field ODE theta' = -F_tau(theta) (the ODE that
    SGD's iterates track, prediction 6) from theta0 until ||F|| <= ``until``; the step halves
    where ||F|| would more than double (too long for the field's stiffest direction). Returns
    theta, ||F(theta)|| and the number of steps."""
    theta = theta0.detach().to(torch.float64).clone()
    value = field(theta, tau)
    residual, steps, length = value.norm().item(), 0, 1.0
    while residual > until and steps < max_steps:
        trial = theta - length * value
        trial_value = field(trial, tau)
        trial_residual = trial_value.norm().item()
        if not math.isfinite(trial_residual) or trial_residual > 2 * residual:
            length /= 2
            continue
        theta, value, residual, steps = trial, trial_value, trial_residual, steps + 1
    return theta, residual, steps


def anderson(field: TanhMLPField, theta0: Tensor, tau: float, memory: int = ANDERSON_MEMORY,
             max_steps: int = 2_000) -> Zero:
    """A zero of F_tau near theta0 by Anderson acceleration (Walker and Ni 2011) of the Euler map
    G(theta) = theta - F_tau(theta), whose fixed points are the zeros of F_tau: each step mixes the
    last ``memory`` values of G by least squares on their residuals, and the history restarts
    where ||F|| has not halved in ``memory`` steps (stagnation). It needs F only (no Jacobian): on
    the 40-16-10 MLP it reached ||F|| <= 1e-10 from averaged iterates in 30-800 evaluations
    (0.03-0.5 s), where Newton's method spent a Jacobian (0.5-1 s) a step and stalled from half
    of them. Returns the best point it visited (``flow_steps``: evaluations of F)."""
    theta = theta0.detach().to(torch.float64).clone()
    images, residuals = [], []
    best, best_theta, since = math.inf, theta, 0
    for step in range(max_steps + 1):
        value = field(theta, tau)
        residual = value.norm().item()
        if not math.isfinite(residual):
            break
        if residual < best:
            since = 0 if residual < best / 2 else since + 1
            best, best_theta = residual, theta
        else:
            since += 1
        if residual <= ZERO_TOLERANCE or step == max_steps:
            break
        if since > memory:  # stagnating: forget the history, go on from here
            images, residuals, since = [], [], 0
        images.append(theta - value)
        residuals.append(-value)
        if len(residuals) > memory + 1:
            images.pop(0)
            residuals.pop(0)
        theta = images[-1]
        if len(residuals) > 1:
            d_residual = torch.stack([b - a for a, b in zip(residuals, residuals[1:])], 1)
            d_image = torch.stack([b - a for a, b in zip(images, images[1:])], 1)
            gamma = torch.linalg.lstsq(d_residual, residuals[-1].unsqueeze(1), driver="gelsd").solution.squeeze(1)
            theta = images[-1] - d_image @ gamma
    return Zero(best_theta, best, 0, 0, flow_steps=step + 1)


def _polish(field: TanhMLPField, zero: Zero, tau: float) -> Zero:
    """Newton's method (:func:`zero_near`, a few steps) from an Anderson result that came within
    NEWTON_FROM of a zero but not to it, where the field is nearly singular and Anderson crawls
    (a Jacobian costs 1 s: from farther away Newton did not converge either, measured)."""
    if zero.converged or zero.residual > NEWTON_FROM:
        return zero
    newton = zero_near(field, zero.theta, tau, max_steps=4)
    if newton.residual >= zero.residual:
        return zero
    newton.flow_steps = zero.flow_steps
    return newton


def refine(field: TanhMLPField, theta0: Tensor, tau: float) -> Zero:
    """The zero of F_tau at or near a point (an averaged iterate), deterministically: Anderson
    acceleration from it (:func:`anderson`), then Newton's method from its best point if it did
    not converge; where neither converges, the same from where the mean-field flow from the point
    reaches ||F|| <= 1e-3 (:func:`flow`). ``flow_steps`` counts the evaluations of F."""
    zero = _polish(field, anderson(field, theta0, tau), tau)
    if zero.converged:
        return zero
    theta, _, steps = flow(field, theta0, tau)
    again = _polish(field, anderson(field, theta, tau), tau)
    again.flow_steps += steps + zero.flow_steps
    again.newton_steps += zero.newton_steps
    again.jvps += zero.jvps
    return again if again.residual <= zero.residual else zero


def zero_along_flow(field: TanhMLPField | BatchClippedField, theta0: Tensor, tau: float,
                    max_steps: int = 2_000) -> Zero:
    """Where the mean-field ODE theta' = -F_tau(theta) from theta0 ends: the flow (:func:`flow`)
    to ||F|| <= 1e-3, then Anderson acceleration to the zero it is approaching (what the ODE
    method predicts for SGD started at theta0). A BatchClippedField is not polished by Newton's
    method: its Jacobian would be formed through every batch's Gram entries, P times.
    ``max_steps``: Anderson's evaluations of F at most."""
    theta, _, steps = flow(field, theta0, tau)
    zero = anderson(field, theta, tau, max_steps=max_steps)
    if isinstance(field, TanhMLPField):
        zero = _polish(field, zero, tau)
    zero.flow_steps += steps
    return zero
