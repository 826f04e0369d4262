"""The closed-form mean field, its root and its ODE, against answers known by hand."""

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from gradclip.meanfield import (batch_clipped_root, batch_clipped_root_location, clipped_mean_field, clipped_root, huber_objective,
                                least_squares, ode_path, scaled_loss_location, scaled_loss_minimiser_location,
                                scaled_loss_slope)


def test_huber_location_root_by_hand():
    """y = (0, 0, 10), tau = 1: for theta in (-1, 1), H = (2 theta - 1) / 3, so the root is 1/2;
    the mean 10/3 is far from it, the median 0 is its small-tau limit."""
    y = np.array([0.0, 0.0, 10.0])
    ones = np.ones(3)
    assert clipped_root(ones, y, 1.0)[0] == pytest.approx(0.5, abs=1e-12)
    assert clipped_root(ones, y, 0.01)[0] == pytest.approx(0.005, abs=1e-12)  # 2 theta - tau = 0
    assert clipped_root(ones, y, 100.0)[0] == pytest.approx(10 / 3, abs=1e-12)  # nothing clipped: the mean
    assert least_squares(ones, y)[0] == pytest.approx(10 / 3)


def test_mean_field_is_the_clipped_per_sample_gradient_and_the_objectives_gradient():
    rng = np.random.default_rng(0)
    x, y, theta, tau = rng.normal(size=(50, 3)), rng.standard_t(2, size=50), rng.normal(size=3), 0.7
    h = clipped_mean_field(theta, x, y, tau)
    g = (x @ theta - y)[:, None] * x  # per-sample gradients of 1/2 (x . theta - y)^2
    clipped = g / np.maximum(1, np.linalg.norm(g, axis=1) / tau)[:, None]
    np.testing.assert_allclose(h, clipped.mean(0), rtol=1e-12)
    assert np.linalg.norm(clipped, axis=1).max() <= tau * (1 + 1e-12)
    step = 1e-6
    numeric = [(huber_objective(theta + step * e, x, y, tau) - huber_objective(theta - step * e, x, y, tau)) / (2 * step)
               for e in np.eye(3)]
    np.testing.assert_allclose(h, numeric, rtol=1e-6, atol=1e-9)


def test_regression_root_solves_eq22_and_becomes_least_squares_for_large_tau():
    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(400), rng.normal(size=(400, 3))])  # with an intercept
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.lognormal(size=400)  # skewed noise: mean > median
    root = clipped_root(x, y, 0.5)
    assert np.linalg.norm(clipped_mean_field(root, x, y, 0.5)) < 1e-9
    assert np.linalg.norm(root - least_squares(x, y)) > 0.3  # the clipping bias, mostly in the intercept
    np.testing.assert_allclose(clipped_root(x, y, 1e6), least_squares(x, y), atol=1e-8)


def test_one_column_regression_agrees_with_the_bracketing_solver():
    rng = np.random.default_rng(2)
    y = rng.lognormal(size=300)
    scalar = clipped_root(np.ones(300), y, 0.3)
    two = clipped_root(np.column_stack([np.ones(300), np.zeros(300)]), y, 0.3)  # the Newton path, 2 parameters (singular Hessian)
    assert two[0] == pytest.approx(scalar[0], abs=1e-8)


def test_batch_clipping_fixed_point_moves_from_the_huber_root_to_the_mean():
    rng = np.random.default_rng(3)
    y, tau = rng.lognormal(size=2000), 0.1
    huber, mean = clipped_root(np.ones(2000), y, tau)[0], y.mean()
    one, one_error = batch_clipped_root_location(y, tau, batch_size=1, draws=400_000)
    two, two_error = batch_clipped_root_location(y, tau, batch_size=2, draws=400_000)
    big, _ = batch_clipped_root_location(y, tau, batch_size=256, draws=50_000)
    assert (one, one_error) == (huber, 0.0)  # a batch of one is per-sample clipping, exactly
    assert 0 < two_error < 0.01 and huber < two - 10 * two_error < two + 10 * two_error < mean
    assert abs(big - mean) < 0.05 < abs(huber - mean) / 5


def test_batch_fixed_point_standard_error_matches_its_spread_over_seeds():
    y = np.random.default_rng(6).standard_t(3, size=1000)
    roots, errors = zip(*(batch_clipped_root_location(y, 0.3, batch_size=8, draws=20_000, seed=s) for s in range(20)))
    assert np.std(roots, ddof=1) == pytest.approx(np.mean(errors), rel=0.4)


def test_ode_without_clipping_is_the_linear_flow():
    """tau -> inf: d theta/dt = -(A theta - b), A = X'X/n, b = X'y/n, so
    theta(t) = theta_LS + expm(-A t)(theta0 - theta_LS)."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(100, 3)), rng.normal(size=100)
    times = np.linspace(0, 5, 11)
    path = ode_path(x, y, 1e9, np.zeros(3), times)
    a, ls = x.T @ x / 100, least_squares(x, y)
    exact = np.array([ls + expm(-a * t) @ (np.zeros(3) - ls) for t in times])
    np.testing.assert_allclose(path, exact, atol=1e-9)


def test_ode_with_every_sample_clipped_moves_at_speed_tau():
    """Location problem, theta below every y_i by more than tau: H = -tau, so theta(t) = tau t,
    until it reaches the samples."""
    y = np.array([10.0, 11.0, 12.0])
    path = ode_path(np.ones(3), y, 0.5, [0.0], [0.0, 4.0, 8.0])
    np.testing.assert_allclose(path[:, 0], [0.0, 2.0, 4.0], atol=1e-10)
    late = ode_path(np.ones(3), y, 0.5, [0.0], [200.0])  # ... and ends at the root
    assert late[0, 0] == pytest.approx(clipped_root(np.ones(3), y, 0.5)[0], abs=1e-6)


def test_mean_field_matches_the_runners_per_sample_clipping():
    """The numpy H equals torch's per-sample clipping (gradclip.clipping) on the same data."""
    from gradclip.clipping import make_clipper
    from omegaconf import OmegaConf

    rng = np.random.default_rng(5)
    x, y, theta = rng.normal(size=(64, 5)), rng.standard_t(3, size=64), rng.normal(size=5)
    cfg = OmegaConf.create({"method": "norm", "granularity": "sample", "threshold": 0.8, "eps": 0.0})
    clipper = make_clipper(cfg, ["head.weight"])
    w = torch.tensor(theta, dtype=torch.float64).reshape(1, 5)
    g = torch.tensor((x @ theta - y)[:, None] * x).reshape(64, 1, 5)
    mean, _ = clipper.clip_samples([g], [w])
    np.testing.assert_allclose(mean[0].reshape(-1).numpy(), clipped_mean_field(theta, x, y, 0.8), rtol=1e-12)


def test_collect_design_matches_the_runners_parameter_order(make_cfg, tmp_path):
    """The limit-set and ODE tables rebuild each run's data with gradclip.collect.design (weight columns,
    then a column of ones for the bias): H from it at the logged theta equals the runner's own
    full-data eval/H_norm at the same step."""
    import json

    from gradclip.collect import design
    from gradclip.runner import train

    cfg = make_cfg("model=linear", "model.bias=true", "data=linreg", "data.dim=2", "data.bias=2.0",
                   "data.noise.dist=lognormal", "clip=norm", "clip.granularity=sample", "clip.eps=0",
                   "clip.threshold=0.5", "schedule=constant", "schedule.a0=0.5", "steps=200", "log_theta=true",
                   "eval_every=200", "log_every=200")
    train(cfg, tmp_path)
    last = {}
    for row in (json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()):
        if row["step"] == 200:  # the train/ and the eval/ row of the last step
            last |= row
    theta = np.array([last[f"train/theta_{i}"] for i in range(3)])
    x, y = design(tmp_path)
    assert x.shape == (1000, 3) and (x[:, 2] == 1).all()
    h = np.linalg.norm(clipped_mean_field(theta, x, y, 0.5))
    assert h == pytest.approx(last["eval/H_norm"], rel=1e-4)
    # near the root H is small, and a misordered theta (the bias first) would be far from it
    assert np.linalg.norm(clipped_mean_field(theta[[2, 0, 1]], x, y, 0.5)) > 3 * h


def test_ode_path_answers_times_in_any_order_from_one_integration():
    """Times given unsorted and repeated come back in the order given, as each asked alone."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(50, 2)), rng.normal(size=50)
    times = np.array([3.0, 0.5, 3.0, 0.0, 1.5])
    together = ode_path(x, y, 0.3, [1.0, -1.0], times)
    for t, row in zip(times, together):
        np.testing.assert_allclose(row, ode_path(x, y, 0.3, [1.0, -1.0], [0.0, t])[-1], rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(together[0], together[2])
    # ... and the flow is -H of clipped_mean_field
    from scipy.integrate import solve_ivp
    reference = solve_ivp(lambda t, th: -clipped_mean_field(th, x, y, 0.3), (0.0, 3.0), [1.0, -1.0],
                          method="DOP853", t_eval=[0.5, 1.5, 3.0], rtol=1e-10, atol=1e-12).y.T
    np.testing.assert_allclose(together[[1, 4, 0]], reference, rtol=1e-7, atol=1e-9)


def test_scaled_loss_matches_its_definition_and_its_minimiser_the_brute_force_one():
    """G(theta) = mean_i l_i / c_i by prefix sums against the sum itself; its minimiser against
    the best of a million-point grid, on a sample small enough to evaluate G directly."""
    rng = np.random.default_rng(4)
    y, tau = rng.lognormal(size=300), 0.8
    theta = np.linspace(-1.0, 6.0, 57)
    direct = [np.mean(np.where(np.abs(t - y) <= tau, 0.5 * (t - y) ** 2, 0.5 * tau * np.abs(t - y))) for t in theta]
    np.testing.assert_allclose(scaled_loss_location(theta, y, tau), direct, rtol=1e-12, atol=1e-14)
    fine = np.linspace(y.min(), y.max(), 1_000_001)
    values = scaled_loss_location(fine, y, tau)
    best = scaled_loss_minimiser_location(y, tau)
    assert scaled_loss_location([best], y, tau)[0] <= values.min() + 1e-12
    assert best == pytest.approx(fine[np.argmin(values)], abs=2 * (fine[1] - fine[0]))


def test_scaled_loss_minimiser_is_not_the_root_of_eq22():
    """l/c has half Huber's tail slope, so for skewed data its minimiser and the root of (22)
    differ; both run from the median (tau -> 0) to the mean (tau -> inf)."""
    rng = np.random.default_rng(5)
    y = rng.lognormal(size=5000)
    ones = np.ones(len(y))
    assert abs(scaled_loss_minimiser_location(y, 1.0) - clipped_root(ones, y, 1.0)[0]) > 0.1
    assert scaled_loss_minimiser_location(y, 1e4) == pytest.approx(y.mean(), abs=1e-9)
    assert scaled_loss_minimiser_location(y, 1e-4) == pytest.approx(np.median(y), abs=1e-3)


def test_scaled_loss_slope_is_its_derivative():
    rng = np.random.default_rng(6)
    y, tau, step = rng.exponential(size=200), 0.4, 1e-7
    theta = np.array([0.3, 0.9, 1.7])  # G is smooth away from the 400 kinks y_i +- tau
    numeric = (scaled_loss_location(theta + step, y, tau) - scaled_loss_location(theta - step, y, tau)) / (2 * step)
    np.testing.assert_allclose(scaled_loss_slope(theta, y, tau), numeric, rtol=1e-5, atol=1e-8)


def test_batch_fixed_point_of_a_regression_solves_its_sample_average_and_moves_to_least_squares():
    """The general solver on a regression with an intercept: its field (recomputed here from the
    same draws) is zero at the answer; batches of one give the root of eq. (22); large batches,
    whose mean gradient is rarely clipped, give nearly least squares."""
    rng = np.random.default_rng(8)
    x = np.column_stack([rng.normal(size=(500, 2)), np.ones(500)])
    y = x @ np.array([1.0, -1.0, 0.5]) + rng.lognormal(size=500)
    tau, draws = 1.0, 20_000
    fixed, error = batch_clipped_root(x, y, tau, 8, draws, seed=1)
    picks = np.random.default_rng(1).integers(500, size=(draws, 8))
    g = np.einsum("dbi,db->di", x[picks], x[picks] @ fixed - y[picks]) / 8
    clipped = g / np.maximum(1, np.linalg.norm(g, axis=1) / tau)[:, None]
    assert np.linalg.norm(clipped.mean(0)) < 1e-9 and np.all(error > 0)
    np.testing.assert_array_equal(batch_clipped_root(x, y, tau, 1)[0], clipped_root(x, y, tau))
    separation = np.linalg.norm(clipped_root(x, y, tau) - least_squares(x, y))
    assert np.linalg.norm(batch_clipped_root(x, y, tau, 256, 5_000)[0] - least_squares(x, y)) < separation / 20
