"""The mean field H of eq. (22) for linear least squares, in closed form, and what follows from it.

For the loss l_i(theta) = 1/2 (x_i . theta - y_i)^2, per-sample norm clipping with threshold tau
and the paper's exact factor c_i = max(1, ||g_i|| / tau) (``clip.eps=0``) gives

    g_i / c_i = r_i x_i / max(1, |r_i| ||x_i|| / tau),        r_i = x_i . theta - y_i,

which is the gradient of Huber's loss rho_k(r_i) with threshold k_i = tau / ||x_i|| (Huber 1964).
So H(theta) = mean_i g_i / c_i is the gradient of the convex F(theta) = mean_i rho_{k_i}(r_i), and
the root of eq. (22) is F's minimiser: for the location problem (x_i = 1) the Huber location
estimate with threshold tau, which runs from the median (tau -> 0) to the mean (tau -> inf), while
the mean (least squares) minimises the training loss (docs/CLAIMS.md, the gap in claim 3).

Batch clipping clips the mini-batch mean instead; on the location problem its fixed point is the
Huber estimate of the distribution of batch means, computed here by Monte Carlo over batches.

Everything is float64 numpy/scipy and shares no code with the torch training loop, so the two
can check each other (tests/test_meanfield.py, and the limit-set experiment).
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp
from scipy.optimize import brentq, minimize, root

# |H(root)| accepted from the solvers; the float64 arithmetic allows far less, SGD far more.
ROOT_TOLERANCE = 1e-9


def _as_arrays(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    x = x.reshape(len(y), -1)
    return x, y


def clipped_mean_field(theta, x, y, tau: float) -> np.ndarray:
    """H(theta) = mean_i r_i x_i / max(1, |r_i| ||x_i|| / tau) (eq. 22's mean field)."""
    return _mean_field(x, y, tau)(np.asarray(theta, dtype=np.float64).reshape(-1))


def _mean_field(x, y, tau: float):
    """H as a function of theta alone, with ||x_i|| computed once (an ODE solver calls it often)."""
    x, y = _as_arrays(x, y)
    norms = np.linalg.norm(x, axis=1)

    def field(theta: np.ndarray) -> np.ndarray:
        residual = x @ theta - y
        return (residual / np.maximum(1.0, np.abs(residual) * norms / tau)) @ x / len(y)

    return field


def huber_objective(theta, x, y, tau: float) -> float:
    """F(theta) = mean_i rho_{k_i}(r_i), k_i = tau / ||x_i||, whose gradient is H."""
    x, y = _as_arrays(x, y)
    residual = np.abs(x @ np.asarray(theta, dtype=np.float64).reshape(-1) - y)
    k = tau / np.linalg.norm(x, axis=1)
    return float(np.mean(np.where(residual <= k, 0.5 * residual**2, k * residual - 0.5 * k**2)))


def huber_hessian(theta, x, y, tau: float) -> np.ndarray:
    """The Hessian of F where it exists: mean_i x_i x_i^T over the samples left unclipped."""
    x, y = _as_arrays(x, y)
    residual = np.abs(x @ np.asarray(theta, dtype=np.float64).reshape(-1) - y)
    inside = residual * np.linalg.norm(x, axis=1) <= tau
    return x[inside].T @ x[inside] / len(y)


def least_squares(x, y) -> np.ndarray:
    """The minimiser of the training loss mean_i l_i: the mean for the location problem."""
    x, y = _as_arrays(x, y)
    return np.linalg.lstsq(x, y, rcond=None)[0]


def clipped_root(x, y, tau: float) -> np.ndarray:
    """The root of eq. (22), H(theta) = 0, for per-sample norm clipping with threshold tau.

    One parameter: H is continuous and increasing, so Brent's method on the bracket
    [min y_i / x_i, max y_i / x_i] finds it to machine precision. Several: the minimiser of the
    convex F by a trust-region Newton method with F's exact Hessian, from the least-squares
    solution (H is piecewise linear, so Newton steps end on the root). Either way |H(root)| is
    checked.
    """
    x, y = _as_arrays(x, y)
    if x.shape[1] == 1:
        moving = x[:, 0] != 0  # an x_i = 0 contributes nothing to H
        ratios = y[moving] / x[moving, 0]
        lo, hi = ratios.min(), ratios.max()
        if lo == hi:
            return np.array([lo])
        root = np.array([brentq(lambda t: clipped_mean_field([t], x, y, tau)[0], lo, hi, xtol=1e-14, rtol=1e-15)])
    else:
        result = minimize(huber_objective, least_squares(x, y), args=(x, y, tau), jac=clipped_mean_field,
                          hess=huber_hessian, method="trust-exact", options={"gtol": ROOT_TOLERANCE / 10, "maxiter": 1000})
        root = result.x
    residual = np.linalg.norm(clipped_mean_field(root, x, y, tau))
    if residual > ROOT_TOLERANCE:
        raise RuntimeError(f"the root of eq. (22) was not found: ||H(theta)|| = {residual:.3g} at the solver's end")
    return root


def _scaled_loss_pieces(theta, y, tau: float):
    """Sorted-target bookkeeping behind G and G': per theta, the targets within tau (their count,
    sum and sum of squares) and how many lie below theta - tau and above theta + tau."""
    y = np.sort(np.asarray(y, dtype=np.float64).reshape(-1))
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    s1, s2 = np.concatenate([[0.0], np.cumsum(y)]), np.concatenate([[0.0], np.cumsum(y**2)])
    lo, hi = np.searchsorted(y, theta - tau, "left"), np.searchsorted(y, theta + tau, "right")
    return theta, y, s1, lo, hi, hi - lo, s1[hi] - s1[lo], s2[hi] - s2[lo]


def scaled_loss_location(theta, y, tau: float) -> np.ndarray:
    """The mean scaled training loss G(theta) = mean_i l_i / c_i of the location problem, at each
    of ``theta``: l_i / c_i = r^2 / 2 for |r| <= tau and tau |r| / 2 beyond (r = theta - y_i).

    This is the "average scaled training loss" of claim 3 read literally. It is not F: its
    derivative is r inside and tau sign(r) / 2 outside, half of Huber's tail, so its minimiser
    is not the root of eq. (22). Sorted targets and prefix sums make each theta cost log n.
    """
    theta, y, s1, lo, hi, count, total, squares = _scaled_loss_pieces(theta, y, tau)
    inside = 0.5 * (count * theta**2 - 2 * theta * total + squares)
    below = 0.5 * tau * (lo * theta - s1[lo])  # y_i < theta - tau
    above = 0.5 * tau * ((s1[-1] - s1[hi]) - (len(y) - hi) * theta)  # y_i > theta + tau
    return (inside + below + above) / len(y)


def scaled_loss_slope(theta, y, tau: float) -> np.ndarray:
    """G'(theta): mean_i of r_i inside [-tau, tau] and tau sign(r_i) / 2 outside. It falls by
    tau / (2n) wherever a target leaves the window and rises continuously within it."""
    theta, y, s1, lo, hi, count, total, _ = _scaled_loss_pieces(theta, y, tau)
    return (count * theta - total + 0.5 * tau * (lo - (len(y) - hi))) / len(y)


SCALED_LOSS_GRID = 20_001


def scaled_loss_minimiser_location(y, tau: float) -> float:
    """The minimiser of G (scaled_loss_location): the global minimum of G on a grid of
    SCALED_LOSS_GRID points spanning the targets (G is not convex: each sample bends it down
    where it leaves [theta - tau, theta + tau]), refined by Brent's method on G' between the grid
    point's neighbours (G' only falls by jumps, so a sign change from - to + there is a
    continuous crossing: a minimum). It runs from the median (tau -> 0) to the mean (tau -> inf)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    grid = np.linspace(y.min(), y.max(), SCALED_LOSS_GRID)
    best = int(np.argmin(scaled_loss_location(grid, y, tau)))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]

    def slope(t: float) -> float:
        return float(scaled_loss_slope([t], y, tau)[0])

    if lo < hi and slope(lo) < 0 < slope(hi):
        return float(brentq(slope, lo, hi, xtol=1e-14, rtol=1e-15))
    return float(grid[best])  # at the edge of the targets' range, or G' is zero on a grid point


def batch_clipped_root_location(y, tau: float, batch_size: int, draws: int = 200_000,
                                seed: int = 0) -> tuple[float, float]:
    """batch_clipped_root for the location problem (inputs all ones): the fixed point of batch
    clipping, clip(theta - mean(y_B), -tau, tau) zero on average over batches, which is Huber's
    estimate of the distribution of batch means; and its Monte Carlo standard error."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    root, error = batch_clipped_root(np.ones((len(y), 1)), y, tau, batch_size, draws, seed)
    return float(root[0]), float(error[0])


# batch_clipped_root builds the batches' A_B and b_B this many draws at a time.
BATCH_CHUNK = 4096


def batch_clipped_root(x, y, tau: float, batch_size: int, draws: int = 200_000,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The fixed point of batch norm clipping for least squares with i.i.d. batches of
    ``batch_size`` (drawn with replacement, as training draws them), and its Monte Carlo
    standard error per component.

    The clipped batch gradient is clip(g_B(theta)), g_B = A_B theta - b_B the batch's mean
    gradient and clip the rescaling to norm at most tau; the fixed point is the root of its
    expectation over batches, replaced here by the mean over ``draws`` batches fixed by ``seed``
    (the sample-average approximation; its error is the M-estimator's sqrt(diag(J^-1 S J^-T) /
    draws), S the covariance of the clipped batch gradients and J their mean Jacobian). Solved by
    Powell's hybrid method with that exact Jacobian, from the root of eq. (22). A batch of one is
    per-sample clipping: its fixed point is that root exactly, with no Monte Carlo error.
    """
    x, y = _as_arrays(x, y)
    per_sample = clipped_root(x, y, tau)
    if batch_size == 1:
        return per_sample, np.zeros_like(per_sample)
    rng = np.random.default_rng(seed)
    a = np.empty((draws, x.shape[1], x.shape[1]))
    b = np.empty((draws, x.shape[1]))
    # [chunk, B, d] at a time (B = 256 would not fit whole); numpy draws the indices serially, so
    # the batches do not depend on the chunk.
    for start in range(0, draws, BATCH_CHUNK):
        picks = rng.integers(len(y), size=(min(BATCH_CHUNK, draws - start), batch_size))
        xb, yb = x[picks], y[picks]
        a[start:start + len(picks)] = np.einsum("cbi,cbj->cij", xb, xb) / batch_size
        b[start:start + len(picks)] = np.einsum("cbi,cb->ci", xb, yb) / batch_size

    def clipped(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = a @ theta - b
        norm = np.linalg.norm(g, axis=1)
        return g / np.maximum(1.0, norm / tau)[:, None], g, norm

    def field(theta: np.ndarray) -> np.ndarray:
        return clipped(theta)[0].mean(0)

    def jacobian(theta: np.ndarray) -> np.ndarray:
        _, g, norm = clipped(theta)
        outside = norm > tau
        unit = g / np.where(norm > 0, norm, 1.0)[:, None]
        # Inside the ball: A_B. Outside: tau / ||g|| (I - u u^T) A_B, u = g / ||g||.
        projected = a - np.einsum("ci,cj,cjk->cik", unit, unit, a)
        scale = (tau / np.where(outside, norm, 1.0))[:, None, None]
        return np.where(outside[:, None, None], scale * projected, a).mean(0)

    solution = root(field, per_sample, jac=jacobian, method="hybr", options={"xtol": 1e-14})
    residual = np.linalg.norm(field(solution.x))
    if residual > ROOT_TOLERANCE:
        raise RuntimeError(f"batch clipping's fixed point was not found: ||field|| = {residual:.3g} at the solver's end")
    psi, slope = clipped(solution.x)[0], jacobian(solution.x)
    if np.linalg.cond(slope) > 1e12:  # a flat field (every batch clipped, no curvature): no error bound
        return solution.x, np.full_like(solution.x, np.inf)
    inverse = np.linalg.inv(slope)
    covariance = inverse @ np.atleast_2d(np.cov(psi, rowvar=False)) @ inverse.T
    return solution.x, np.sqrt(np.clip(np.diag(covariance), 0.0, None) / draws)


def ode_path(x, y, tau: float, theta0, times) -> np.ndarray:
    """The solution of d theta / dt = -H(theta) from theta0 at ``times`` (rows, in the order
    given), by an 8th-order Runge-Kutta method with error control (tolerances far below SGD's
    noise). One integration serves every time asked for: pass them all at once."""
    field = _mean_field(x, y, tau)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    grid, where = np.unique(times, return_inverse=True)
    theta0 = np.asarray(theta0, dtype=np.float64).reshape(-1)
    if grid.max() == 0.0:  # nothing to integrate (solve_ivp wants a span)
        return np.tile(theta0, (len(times), 1))
    solution = solve_ivp(lambda t, theta: -field(theta), (0.0, float(grid.max())), theta0,
                         method="DOP853", t_eval=grid, rtol=1e-10, atol=1e-12)
    if not solution.success:
        raise RuntimeError(f"ODE integration failed: {solution.message}")
    return solution.y.T[where.reshape(-1)]
