"""The network's clipped mean field (gradclip.netfield) against the model itself, and its zeros."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.func import functional_call, grad, vmap

from gradclip.models import build_model
from gradclip.netfield import JACOBIAN_CHUNK, NAMES, ZERO_TOLERANCE, TanhMLPField, jacobian, minimum_near, zero_near


def small_problem(n=48, d=6, hidden=5, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    cfg = OmegaConf.create({"name": "mlp", "width": hidden, "depth": 1, "activation": "tanh", "init_gain": 1.0,
                            "bias": True, "unit_scale_decades": 0.0})
    torch.manual_seed(seed)
    model = build_model(cfg, (d,), classes).double()
    return x, y, model


@pytest.mark.parametrize("tau", [0.05, 0.5, math.inf])
def test_the_field_is_the_mean_of_the_models_own_clipped_per_example_gradients_plus_weight_decay(tau):
    """F_tau from its hand-written backpropagation equals the mean over examples of each
    example's gradient (torch.func on gradclip.models.MLP) divided by max(1, ||g_i|| / tau), plus
    lambda theta; at tau small every example is clipped, at tau = inf none is."""
    x, y, model = small_problem()
    params = {name: p.detach() for name, p in model.named_parameters()}
    assert tuple(params) == NAMES

    def loss(p, xi, yi):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xi[None].double(),)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([grads[name].reshape(len(y), -1) for name in NAMES], dim=1)
    norms = flat.norm(dim=1)
    expected = (flat / torch.clamp(norms / tau, min=1.0).unsqueeze(1)).mean(0)
    field = TanhMLPField(x.numpy(), y.numpy(), hidden=5, classes=3, lam=0.03)
    theta = field.flatten(params)
    torch.testing.assert_close(field.sample_norms(theta), norms, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(field(theta, tau), expected + 0.03 * theta, rtol=1e-12, atol=1e-14)
    clipped = (norms > tau).float().mean().item()
    assert clipped == (1.0 if tau == 0.05 else 0.0 if tau == math.inf else clipped)
    if tau == math.inf:  # the gradient of L + lambda/2 ||theta||^2
        t = theta.clone().requires_grad_(True)
        field.objective(t).backward()
        torch.testing.assert_close(t.grad, field(theta, tau), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tau", [0.5, math.inf])
def test_the_chunked_jacobian_is_jacfwds_bit_for_bit_and_at_tau_inf_the_symmetric_hessian(tau):
    """jacobian() pushes JACOBIAN_CHUNK tangents at a time (P = 73 here: a full chunk and a
    part) and gives torch.func.jacfwd's entries exactly; at tau = inf, the Jacobian of the
    gradient F_inf is the Hessian of L + lambda/2 ||theta||^2 (autograd's, independently)."""
    from torch.func import hessian, jacfwd

    x, y, model = small_problem(n=40, d=6, hidden=7, classes=3)
    field = TanhMLPField(x.numpy(), y.numpy(), hidden=7, classes=3, lam=0.03)
    theta = field.flatten({name: p.detach() for name, p in model.named_parameters()})
    assert JACOBIAN_CHUNK < field.size < 2 * JACOBIAN_CHUNK
    found = jacobian(lambda t: field(t, tau), theta)
    assert torch.equal(found, jacfwd(lambda t: field(t, tau))(theta))
    if tau == math.inf:
        torch.testing.assert_close(found, hessian(field.objective)(theta), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(found, found.T, rtol=1e-10, atol=1e-12)
    else:  # clipped, F_tau is not a gradient: its Jacobian is not symmetric
        assert (found - found.T).abs().max() > 1e-3 * found.abs().max()


def test_newton_finds_a_zero_of_the_clipped_field_and_lbfgs_a_minimum_of_the_loss_and_they_differ():
    x, y, model = small_problem()
    field = TanhMLPField(x.numpy(), y.numpy(), hidden=5, classes=3, lam=0.1)
    start = field.flatten({name: p.detach() for name, p in model.named_parameters()})
    loss_minimum = minimum_near(field, start)
    assert loss_minimum.converged and loss_minimum.lbfgs_steps > 0
    assert field(loss_minimum.theta, math.inf).norm() <= ZERO_TOLERANCE
    # Continuation from theta_L: the zero of F_tau moves away from it as tau falls. (With this
    # much weight decay the zeros exist all the way; with lambda = 0.03 one of them vanishes.)
    previous, distances = loss_minimum.theta, []
    for tau in (2.0, 1.0, 0.5, 0.25):
        zero = zero_near(field, previous, tau)
        assert zero.converged and zero.jvps > 0, (tau, zero.residual)
        assert field(zero.theta, tau).norm() <= ZERO_TOLERANCE
        distances.append((zero.theta - loss_minimum.theta).norm().item())
        previous = zero.theta
    assert distances == sorted(distances) and distances[-1] > 0.5
    # From a point near the zero, Newton comes back to the same zero.
    again = zero_near(field, previous + 1e-3 * torch.randn(field.size, generator=torch.Generator().manual_seed(1),
                                                            dtype=torch.float64), 0.25)
    assert again.converged and (again.theta - previous).norm() < 1e-8
    scores = field.scores(loss_minimum.theta, x.numpy(), y.numpy())
    assert 0 <= scores["acc"] <= 1 and scores["loss"] > 0


def test_anderson_refine_and_the_flow_reach_the_zero_newton_finds():
    """The fast paths collect uses, against Newton's method with the exact Jacobian: Anderson
    acceleration and refine() from a point near a zero of F_tau return to it, and the mean-field
    flow from theta_L ends at a zero that Newton's method confirms from where the flow slows
    down. F_tau has several zeros here: the flow from theta_L and continuation in tau reach
    different ones, so which zero is meant matters (collect compares the runs with the flow's)."""
    from gradclip.netfield import anderson, flow, refine, zero_along_flow

    x, y, model = small_problem()
    field = TanhMLPField(x.numpy(), y.numpy(), hidden=5, classes=3, lam=0.1)
    loss_minimum = minimum_near(field, field.flatten({n: p.detach() for n, p in model.named_parameters()}))
    newton = loss_minimum
    for tau in (2.0, 1.0, 0.5):  # continuation in tau, as in the test above
        newton = zero_near(field, newton.theta, tau)
    assert newton.converged and (newton.theta - loss_minimum.theta).norm() > 0.1
    near = newton.theta + 0.05 * torch.randn(field.size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for zero in (anderson(field, near, 0.5), refine(field, near, 0.5)):
        assert zero.converged and zero.flow_steps > 0 and (zero.theta - newton.theta).norm() < 1e-6
    theta, residual, steps = flow(field, loss_minimum.theta, 0.5, until=1e-4)
    assert residual <= 1e-4 < field(loss_minimum.theta, 0.5).norm() and steps > 0
    confirmed = zero_near(field, theta, 0.5)
    along = zero_along_flow(field, loss_minimum.theta, 0.5)
    assert confirmed.converged and along.converged and (along.theta - confirmed.theta).norm() < 1e-6
    assert (along.theta - newton.theta).norm() > 0.1  # another zero of the same field
    unclipped = refine(field, loss_minimum.theta + 1e-3, math.inf)  # tau = inf: back to the loss minimum
    assert unclipped.converged and (unclipped.theta - loss_minimum.theta).norm() < 1e-7


def test_the_canonical_form_is_the_same_for_permuted_and_sign_flipped_units_and_only_for_them():
    """Permuting the hidden units and negating some of them (tanh is odd) leaves the network's
    function, the field's norm and the canonical vector unchanged; another theta's differs."""
    x, y, model = small_problem()
    field = TanhMLPField(x.numpy(), y.numpy(), hidden=5, classes=3, lam=0.1)
    theta = field.flatten({n: p.detach() for n, p in model.named_parameters()})
    w1, b1, w2, b2 = (t.clone() for t in field.unflatten(theta))
    order, sign = torch.tensor([3, 0, 4, 1, 2]), torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    w1, b1, w2 = w1[order] * sign[:, None], b1[order] * sign, w2[:, order] * sign[None, :]
    other = torch.cat([w1.reshape(-1), b1, w2.reshape(-1), b2])
    assert (other - theta).norm() > 0.1
    torch.testing.assert_close(field.logits(other), field.logits(theta), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(field(other, 0.5).norm(), field(theta, 0.5).norm(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(field.canonical(other), field.canonical(theta), rtol=0, atol=1e-15)
    assert (field.canonical(theta + 1e-3) - field.canonical(theta)).norm() > 1e-3


def test_the_batch_field_is_the_mean_of_the_models_own_clipped_batch_gradients_plus_weight_decay(monkeypatch):
    """BatchClippedField against brute force on the model itself: for batches in which every
    example is drawn equally often (two rounds of a permutation cut into batches of 4, and one in
    which each batch holds two examples twice), its field equals the mean over the batches of
    each batch's mean per-example gradient (torch.func), divided by max(1, ||mean|| / tau), plus
    lambda theta; with such batches the ratio estimate of each example's clipping factor is that
    mean exactly. Some batches are clipped, some not; the Gram entries gathered a few batches at
    a time give the same norms."""
    from gradclip import netfield
    from gradclip.netfield import BatchClippedField

    x, y, model = small_problem()
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p, xi, yi):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xi[None].double(),)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([grads[name].reshape(len(y), -1) for name in NAMES], dim=1)
    generator = torch.Generator().manual_seed(3)
    rounds = [torch.randperm(48, generator=generator).view(-1, 4) for _ in range(2)]
    pairs = torch.randperm(48, generator=generator).view(-1, 2)
    batches = torch.cat([*rounds, pairs.repeat_interleave(2, dim=1)])  # (i, i, j, j): repeats, as iid draws make
    field = TanhMLPField(x.numpy(), y.numpy(), hidden=5, classes=3, lam=0.03)
    theta = field.flatten(params)
    means = flat[batches].mean(1)
    norms = means.norm(dim=1)
    tau = float(norms.median())
    assert (norms > tau).any() and (norms <= tau).any()
    expected = (means / torch.clamp(norms / tau, min=1.0).unsqueeze(1)).mean(0) + 0.03 * theta
    batch_field = BatchClippedField(field, 4, batches=batches.numpy())
    torch.testing.assert_close(batch_field.batch_norms(theta)[0], norms, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(batch_field(theta, tau), expected, rtol=1e-10, atol=1e-14)
    monkeypatch.setattr(netfield, "GATHER_CHUNK", 5 * 16)  # 5 batches of 4 at a time: of 48, the last chunk short
    chunked = BatchClippedField(field, 4, batches=batches.numpy())
    assert chunked.chunk == 5 and len(batches) == 48
    torch.testing.assert_close(chunked.batch_norms(theta)[0], batch_field.batch_norms(theta)[0], rtol=1e-14, atol=0)


@pytest.mark.parametrize("batch_size,tau", [(1, 0.3), (6, math.inf)])
def test_the_batch_field_is_the_per_sample_field_at_batch_one_and_the_loss_gradient_unclipped(batch_size, tau):
    """From i.i.d. draws: with batches of one, batch clipping is per-sample clipping and the
    field is F_tau exactly (each batch's factor is its example's); where no batch is clipped
    (tau = inf) every example keeps its weight 1/n, so it is F_inf, the gradient of the loss
    with weight decay, exactly: the draws add no noise where nothing is clipped."""
    from gradclip.netfield import BatchClippedField

    x, y, model = small_problem()
    field = TanhMLPField(x.numpy(), y.numpy(), hidden=5, classes=3, lam=0.03)
    theta = field.flatten({name: p.detach() for name, p in model.named_parameters()})
    batch_field = BatchClippedField(field, batch_size, draws=4000 // batch_size, seed=1)
    torch.testing.assert_close(batch_field(theta, tau), field(theta, tau), rtol=1e-12, atol=1e-14)


def test_the_fields_commute_with_the_order_and_signs_of_the_hidden_units():
    """collect computes the zeros of one loss minimum once, in its canonical frame, and compares
    every seed of that minimum there: that needs F(T theta) = T F(theta) for the map T that
    orders and signs the hidden units (TanhMLPField.transform), for both fields. A zero found
    from T theta_L is then T of the zero found from theta_L."""
    from gradclip.netfield import BatchClippedField, zero_along_flow

    x, y, model = small_problem()
    field = TanhMLPField(x.numpy(), y.numpy(), hidden=5, classes=3, lam=0.1)
    theta = field.flatten({name: p.detach() for name, p in model.named_parameters()})
    symmetry = field.symmetry(theta + torch.randn(field.size, generator=torch.Generator().manual_seed(4),
                                                  dtype=torch.float64))
    assert symmetry[1] != sorted(symmetry[1]) and (symmetry[0] < 0).any()  # a real permutation and flip
    moved = field.transform(theta, symmetry)
    batch_field = BatchClippedField(field, 4, draws=200, seed=0)
    for f in (field, batch_field):
        torch.testing.assert_close(f(moved, 0.5), field.transform(f(theta, 0.5), symmetry), rtol=1e-12, atol=1e-14)
    loss_minimum = minimum_near(field, theta)
    zero = zero_along_flow(field, loss_minimum.theta, 0.5)
    moved_zero = zero_along_flow(field, field.transform(loss_minimum.theta, symmetry), 0.5)
    assert zero.converged and (moved_zero.theta - field.transform(zero.theta, symmetry)).norm() < 1e-8


def test_the_loss_minimum_is_newtons_near_a_minimum_and_descents_near_a_saddle():
    """minimum_near's two paths. From a point near a minimum (each run starts at the runner's
    float32 minimum), Newton's method alone reaches the minimum that descent finds. From a point
    near a saddle, Newton's method reaches the saddle, which is_minimum rejects, and L-BFGS
    descends from the point to a minimum below it. The saddle: no input weights and no
    hidden-to-output weights (every gradient but the output bias's vanishes there), the output
    bias at its own stationary value."""
    from gradclip.netfield import is_minimum

    x, y, model = small_problem()
    field = TanhMLPField(x.numpy(), y.numpy(), hidden=5, classes=3, lam=0.1)
    descent = minimum_near(field, field.flatten({n: p.detach() for n, p in model.named_parameters()}))
    assert descent.converged and is_minimum(field, descent.theta)
    noise = torch.randn(field.size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    newton = minimum_near(field, descent.theta + 1e-4 * noise)
    assert newton.converged and newton.lbfgs_steps == 0 and (newton.theta - descent.theta).norm() < 1e-8
    saddle = zero_near(field, torch.zeros(field.size, dtype=torch.float64), math.inf)
    assert saddle.converged and saddle.theta[:-3].abs().max() == 0 and not is_minimum(field, saddle.theta)
    below = minimum_near(field, saddle.theta + 1e-6 * noise)
    assert below.converged and below.lbfgs_steps > 0 and is_minimum(field, below.theta)
    assert field.objective(below.theta) < field.objective(saddle.theta) - 1e-3
