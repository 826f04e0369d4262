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

Zeros: :func:`zero_near` is Newton's method with the exact Jacobian of F (forward-mode autodiff,
torch.func.jacfwd) and backtracking on ||F||; a dense solve, because near a zero of a weakly
regularised network the Jacobian's condition number reaches 1e4 and more, where Krylov solvers
(GMRES from Jacobian-vector products) were measured to need tens of thousands of products. :func:`minimum_near`
finds theta_L by L-BFGS on L + lambda/2 ||theta||^2 (descent: a minimum, not a saddle or a
maximum, from where it starts), then polishes it with the same Newton iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import jacfwd

# ||F(theta)|| accepted as a zero: float64 sums over a few hundred examples reach ~1e-15; SGD's
# averaged iterates are ~1e-3 away, so this is far below anything the runs can resolve.
ZERO_TOLERANCE = 1e-10
# The parameters of gradclip.models.MLP with depth 1, in its order (theta's layout).
NAMES = ("hidden.0.weight", "hidden.0.bias", "head.weight", "head.bias")


@dataclass
class Zero:
    """Where an iteration ended: theta, ||F(theta)||, Newton steps, Jacobian-vector products
    (and L-BFGS iterations for a minimum); ``converged``: ||F|| <= ZERO_TOLERANCE."""

    theta: Tensor
    residual: float
    newton_steps: int
    jvps: int
    lbfgs_steps: int = 0

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
        weight = (1.0 / torch.clamp(norms / tau, min=1.0)).unsqueeze(1) / self.n  # 1 / (n c_i)
        d2, d1 = d2 * weight, d1 * weight
        mean = torch.cat([(d1.T @ self.x).reshape(-1), d1.sum(0), (d2.T @ h).reshape(-1), d2.sum(0)])
        return mean + self.lam * theta

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


def zero_near(field: TanhMLPField, theta0: Tensor, tau: float, max_steps: int = 40) -> Zero:
    """The zero of F_tau that Newton's method reaches from theta0 (near a zero, the nearest one).

    Each step solves J d = -F with the exact Jacobian J (forward-mode autodiff of F, torch.func's
    jacfwd: P Jacobian-vector products in one vectorised pass) by LU, then halves the step until
    ||F|| falls by at least 1e-4 of the step's promise; it stops where no step does."""
    theta = theta0.detach().to(torch.float64).clone()
    value = field(theta, tau)
    residual, step, products = value.norm().item(), 0, 0
    jacobian = jacfwd(lambda t: field(t, tau))
    while residual > ZERO_TOLERANCE and step < max_steps:
        step += 1
        products += field.size
        direction = torch.linalg.solve(jacobian(theta), -value)
        length = 1.0
        while True:
            trial = theta + length * direction
            trial_value = field(trial, tau)
            trial_residual = trial_value.norm().item()
            if trial_residual <= (1 - 1e-4 * length) * residual or length < 1e-6:
                break
            length /= 2
        if trial_residual >= residual:  # no descent along the Newton direction: stop where we are
            break
        theta, value, residual = trial, trial_value, trial_residual
    return Zero(theta, residual, step, products)


def minimum_near(field: TanhMLPField, theta0: Tensor, max_iter: int = 20_000) -> Zero:
    """theta_L: a minimum of L + lambda/2 ||theta||^2 reached by descent from theta0 (L-BFGS with
    a strong Wolfe line search, to ||F_inf|| ~ 1e-8), then polished by :func:`zero_near`."""
    theta = theta0.detach().to(torch.float64).clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([theta], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=0,
                                  history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = field.objective(theta)
        value.backward()
        return value

    optimiser.step(closure)
    iterations = optimiser.state[optimiser._params[0]]["n_iter"]
    polished = zero_near(field, theta.detach(), math.inf)
    polished.lbfgs_steps = int(iterations)
    return polished
