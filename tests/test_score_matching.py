"""Score matching objectives against closed forms, exact mixture scores and Monte Carlo.

Monte-Carlo comparisons use a tolerance of Z standard errors of the very quantity compared,
computed from the same samples; every random draw comes from a seeded generator, so the
tests are deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch

from dlai_diffusion import nets, score_matching, toy
from dlai_diffusion.score_matching import (
    dsm_loss,
    dsm_target,
    exact_score_matching_loss,
    explicit_score_matching_loss,
    hutchinson_trace,
    jacobian_trace,
    sliced_score_matching_loss,
)

Z = 4.0  # tolerance in standard errors (two-sided probability of a false alarm ~ 6e-5)

DTYPE = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Sample mean and its standard error."""
    return values.mean().item(), (values.std() / math.sqrt(values.numel())).item()


def mixture() -> toy.GaussianMixture:
    """A 2D mixture with unequal weights and widths, the ground truth of these tests."""
    means = [[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]]
    return toy.GaussianMixture(means, [0.4, 0.6, 0.5], [0.3, 0.5, 0.2], dtype=DTYPE)


AFFINE = [[-1.7, 0.4], [-0.9, -0.3]]


def affine_field(x: torch.Tensor) -> torch.Tensor:
    """s(x) = A x + b with a non-symmetric A: trace -1.7 - 0.3 = -2."""
    a = torch.tensor(AFFINE, dtype=x.dtype)
    b = torch.tensor([0.2, -0.5], dtype=x.dtype)
    return x @ a.T + b


def cubic_field(x: torch.Tensor) -> torch.Tensor:
    """f(x) = ||x||^2 x: Jacobian ||x||^2 I + 2 x x^T, divergence (d + 2) ||x||^2."""
    return x.pow(2).sum(1, keepdim=True) * x


def random_mlp(seed: int, dim: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return nets.ScoreMLP(dim, hidden=32, depth=2, cond=False, activation="tanh").to(DTYPE)


# --------------------------------------------------------------------------- traces


def test_jacobian_trace_of_an_affine_map_is_trace_a():
    x = torch.randn(7, 2, generator=gen(0), dtype=DTYPE)
    torch.testing.assert_close(jacobian_trace(affine_field, x), torch.full((7,), -2.0, dtype=DTYPE))


def test_jacobian_trace_of_a_nonlinear_field_is_its_divergence():
    x = torch.randn(6, 5, generator=gen(1), dtype=DTYPE)
    expected = (5 + 2) * x.pow(2).sum(1)
    torch.testing.assert_close(jacobian_trace(cubic_field, x), expected)


def test_jacobian_trace_matches_the_full_jacobian_of_a_network():
    net = random_mlp(0, dim=3)
    x = torch.randn(4, 3, generator=gen(2), dtype=DTYPE)
    full = [torch.autograd.functional.jacobian(lambda p: net(p[None])[0], row) for row in x]
    expected = torch.stack([jac.diagonal().sum() for jac in full])
    torch.testing.assert_close(jacobian_trace(net, x), expected)


def test_jacobian_trace_on_images_runs_over_all_pixels_and_under_no_grad():
    x = torch.randn(3, 2, 4, 4, generator=gen(3), dtype=DTYPE)
    with torch.no_grad():
        trace = jacobian_trace(torch.sin, x)
    torch.testing.assert_close(trace, x.cos().flatten(1).sum(1))
    assert not x.requires_grad, "the caller's tensor must be left alone"


def test_traces_can_return_the_output_of_the_same_forward_pass():
    x = torch.randn(5, 3, generator=gen(40), dtype=DTYPE)
    trace, out = jacobian_trace(cubic_field, x, return_output=True)
    torch.testing.assert_close(out, cubic_field(x))
    torch.testing.assert_close(trace, 5 * x.pow(2).sum(1))
    trace, out = hutchinson_trace(cubic_field, x, n_probes=3, generator=gen(41), return_output=True)
    torch.testing.assert_close(trace, hutchinson_trace(cubic_field, x, 3, generator=gen(41)))
    assert not out.requires_grad and not trace.requires_grad


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(distribution):
    x = torch.randn(4, 3, generator=gen(4), dtype=DTYPE)
    exact = jacobian_trace(cubic_field, x)
    copies = 3000  # one probe per copy: independent estimates for each of the 4 points
    estimates = hutchinson_trace(
        cubic_field, x.repeat(copies, 1), distribution=distribution, generator=gen(5)
    ).reshape(copies, 4)
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(copies)
    assert (se > 0).all()
    assert ((mean - exact).abs() < Z * se).all(), (mean, exact, se)


def test_rademacher_probes_have_smaller_variance_for_a_diagonal_dominant_jacobian():
    # J = ||x||^2 I + 2 x x^T: Gaussian variance 2 ||J||_F^2, Rademacher 2 sum_{i != j} J_ij^2
    x = torch.randn(1, 4, generator=gen(6), dtype=DTYPE).repeat(4000, 1)
    variances = {
        name: hutchinson_trace(cubic_field, x, distribution=name, generator=gen(7)).var().item()
        for name in ("rademacher", "gaussian")
    }
    jac = x[0].pow(2).sum() * torch.eye(4, dtype=DTYPE) + 2 * torch.outer(x[0], x[0])
    gaussian = 2 * jac.pow(2).sum().item()
    rademacher = 2 * (jac.pow(2).sum() - jac.diagonal().pow(2).sum()).item()
    assert variances["rademacher"] < 0.5 * variances["gaussian"]
    assert variances["gaussian"] == pytest.approx(gaussian, rel=0.1)
    assert variances["rademacher"] == pytest.approx(rademacher, rel=0.1)


def test_hutchinson_averages_its_probes_and_repeats_with_a_seed():
    x = torch.randn(5, 3, generator=gen(8), dtype=DTYPE)
    one = hutchinson_trace(cubic_field, x, n_probes=50, generator=gen(9))
    torch.testing.assert_close(one, hutchinson_trace(cubic_field, x, n_probes=50, generator=gen(9)))
    assert not torch.equal(one, hutchinson_trace(cubic_field, x, n_probes=50, generator=gen(10)))


def test_hutchinson_can_be_differentiated():
    weight = torch.tensor(0.7, dtype=DTYPE, requires_grad=True)
    x = torch.randn(5, 3, generator=gen(11), dtype=DTYPE)
    trace = hutchinson_trace(lambda p: weight * p.sin(), x, create_graph=True, generator=gen(12))
    (grad,) = torch.autograd.grad(trace.sum(), weight)
    # with Rademacher probes a diagonal Jacobian gives the exact trace: weight * sum cos(x)
    torch.testing.assert_close(grad, x.cos().sum())


# --------------------------------------------------------------------------- Hyvärinen


def test_exact_loss_and_its_gradient_for_a_linear_score_in_closed_form():
    # s(x) = A x: loss 0.5 mean x^T A^T A x + tr A, gradient A mean(x x^T) + I
    a = torch.tensor([[-1.0, 0.3], [0.5, -2.0]], dtype=DTYPE, requires_grad=True)
    x = torch.randn(64, 2, generator=gen(13), dtype=DTYPE)
    loss = exact_score_matching_loss(lambda p: p @ a.T, x)
    second_moment = x.T @ x / len(x)
    expected = 0.5 * torch.trace(a.detach() @ second_moment @ a.detach().T) + torch.trace(a)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, a)
    torch.testing.assert_close(grad, a.detach() @ second_moment + torch.eye(2, dtype=DTYPE))


def test_hyvarinen_loss_equals_fisher_divergence_minus_a_constant_of_the_data():
    """L_H(s) - 0.5 E_p||s - grad log p||^2 = -0.5 E_p||grad log p||^2 for every s (Eq. 9-10)."""
    p = mixture()
    x = p.sample(10_000, gen(14))
    true_score = p.score(x)
    constant = -0.5 * true_score.pow(2).sum(1)
    gaps, fishers = [], []
    for model in (affine_field, random_mlp(1)):
        hyvarinen = exact_score_matching_loss(model, x, reduction="none")
        fisher = explicit_score_matching_loss(model, x, p.score, reduction="none")
        gap = (hyvarinen - fisher).detach()
        mean, se = mean_and_se(gap - constant)  # E[tr J + s . grad log p] = 0 by parts
        assert abs(mean) < Z * se, (mean, se)
        gaps.append(gap)
        fishers.append(fisher.mean().item())
    mean, se = mean_and_se(gaps[0] - gaps[1])
    assert abs(mean) < Z * se
    # the two models really differ, so the agreement above is not trivial
    assert abs(fishers[0] - fishers[1]) > 5 * Z * se


def test_the_identity_fails_when_the_trace_has_the_wrong_sign():
    """The test above can fail: flipping the trace's sign breaks the identity by many SEs."""
    p = mixture()
    x = p.sample(10_000, gen(14))
    wrong = 0.5 * affine_field(x).pow(2).sum(1) - jacobian_trace(affine_field, x)
    fisher = explicit_score_matching_loss(affine_field, x, p.score, reduction="none")
    mean, se = mean_and_se(wrong - fisher + 0.5 * p.score(x).pow(2).sum(1))
    assert abs(mean) > 5 * Z * se


# --------------------------------------------------------------------------- sliced


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduction", [True, False])
def test_sliced_loss_is_an_unbiased_estimate_of_the_exact_loss(variance_reduction, distribution):
    net = random_mlp(2, dim=3)
    x = torch.randn(4, 3, generator=gen(15), dtype=DTYPE)
    exact = exact_score_matching_loss(net, x, reduction="none").detach()
    copies = 2000
    sliced = sliced_score_matching_loss(
        net,
        x.repeat(copies, 1),
        variance_reduction=variance_reduction,
        distribution=distribution,
        generator=gen(16),
        reduction="none",
    ).detach()
    sliced = sliced.reshape(copies, 4)
    mean, se = sliced.mean(0), sliced.std(0) / math.sqrt(copies)
    assert (se > 0).all()
    assert ((mean - exact).abs() < Z * se).all(), (mean, exact, se)


def test_sliced_loss_variances_match_their_closed_forms_for_an_affine_score():
    # s = A x + b, Gaussian v, S = (A + A^T) / 2: Var[v^T A v] = 2 ||S||_F^2 (SSM-VR), and
    # SSM adds Var[0.5 (v^T s)^2] = 0.5 ||s||^4 and twice the covariance s^T S s.
    x = torch.tensor([[1.5, -1.0]], dtype=DTYPE).repeat(40_000, 1)
    sym = 0.5 * (torch.tensor(AFFINE, dtype=DTYPE) + torch.tensor(AFFINE, dtype=DTYPE).T)
    s = affine_field(x[:1])[0]
    expected = {True: 2 * sym.pow(2).sum(), False: 2 * sym.pow(2).sum() + 0.5 * s.dot(s) ** 2}
    expected[False] = expected[False] + 2 * s @ sym @ s
    for vr in (True, False):
        losses = sliced_score_matching_loss(
            affine_field, x, variance_reduction=vr, generator=gen(18), reduction="none"
        )
        assert losses.var().item() == pytest.approx(expected[vr].item(), rel=0.1)
    assert expected[True] < 0.5 * expected[False]


def test_sliced_loss_on_images_with_a_diagonal_jacobian_is_exact():
    # Rademacher probes recover a diagonal Jacobian's trace exactly, whatever the shape
    x = torch.randn(3, 2, 4, 4, generator=gen(19), dtype=DTYPE)
    expected = 0.5 * x.sin().pow(2).flatten(1).sum(1) + x.cos().flatten(1).sum(1)
    for n_projections in (1, 3):
        loss = sliced_score_matching_loss(
            torch.sin, x, n_projections, distribution="rademacher", generator=gen(20)
        )
        torch.testing.assert_close(loss, expected.mean())


def test_sliced_loss_can_be_differentiated():
    net = random_mlp(4)
    x = torch.randn(16, 2, generator=gen(21), dtype=DTYPE)
    loss = sliced_score_matching_loss(net, x, n_projections=2, generator=gen(22))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# --------------------------------------------------------------------------- denoising


def test_dsm_target_is_minus_the_noise_over_sigma():
    x = torch.randn(10, 2, generator=gen(23), dtype=DTYPE)
    z = torch.randn(10, 2, generator=gen(24), dtype=DTYPE)
    sigma = 0.3
    torch.testing.assert_close(dsm_target(x, x + sigma * z, sigma), -z / sigma)


def test_dsm_loss_with_given_noise_is_the_formula_of_eq_16():
    x = torch.randn(10, 2, generator=gen(25), dtype=DTYPE)
    z = torch.randn(10, 2, generator=gen(26), dtype=DTYPE)
    loss = dsm_loss(affine_field, x, 0.5, noise=z, reduction="none")
    expected = 0.5 * (affine_field(x + 0.5 * z) + z / 0.5).pow(2).sum(1)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(dsm_loss(affine_field, x, 0.5, noise=z), expected.mean())
    torch.testing.assert_close(
        dsm_loss(affine_field, x, 0.5, noise=z, reduction="sum"), expected.sum()
    )


def test_dsm_loss_accepts_one_sigma_per_sample_and_images():
    x = torch.randn(4, 1, 3, 3, generator=gen(27), dtype=DTYPE)
    z = torch.randn(4, 1, 3, 3, generator=gen(28), dtype=DTYPE)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=DTYPE)
    loss = dsm_loss(torch.zeros_like, x, sigma, noise=z, reduction="none")
    torch.testing.assert_close(loss, 0.5 * z.pow(2).flatten(1).sum(1) / sigma**2)


def test_dsm_equals_score_matching_on_the_perturbed_density_up_to_a_constant():
    """DSM(s) - 0.5 E||s - grad log q_sigma||^2 = 0.5 d / sigma^2 - 0.5 E||grad log q_sigma||^2."""
    p, sigma = mixture(), 0.5
    q = p.perturb(sigma)
    x = p.sample(4000, gen(29))
    z = torch.randn(x.shape, generator=gen(30), dtype=DTYPE)
    x_tilde = x + sigma * z
    constant = 0.5 * z.pow(2).sum(1) / sigma**2 - 0.5 * q.score(x_tilde).pow(2).sum(1)
    gaps, losses = [], []
    for model in (affine_field, random_mlp(5)):
        denoising = dsm_loss(model, x, sigma, noise=z, reduction="none")
        explicit = explicit_score_matching_loss(model, x_tilde, q.score, reduction="none")
        gap = (denoising - explicit).detach()
        mean, se = mean_and_se(gap - constant)  # E[s(x~) . (target - grad log q)] = 0
        assert abs(mean) < Z * se, (mean, se)
        gaps.append(gap)
        losses.append(explicit.mean().item())
    mean, se = mean_and_se(gaps[0] - gaps[1])
    assert abs(mean) < Z * se
    assert abs(losses[0] - losses[1]) > 5 * Z * se
    # the constant itself: E||target||^2 = d / sigma^2 exactly
    expected = 0.5 * 2 / sigma**2 - 0.5 * q.score(x_tilde).pow(2).sum(1).mean().item()
    mean, se = mean_and_se(gaps[0])
    assert abs(mean - expected) < Z * se


def test_a_dsm_trained_network_learns_the_perturbed_score():
    """Adam on DSM at sigma = 0.5: the relative squared error to the exact score of q_sigma,
    on points drawn from q_sigma, ends below 5% (an untrained network is near 100%)."""
    p, sigma = mixture(), 0.5
    q = p.perturb(sigma).to(dtype=torch.float32)
    data = p.to(dtype=torch.float32).sample(20_000, gen(31))
    torch.manual_seed(6)
    net = nets.ScoreMLP(2, hidden=64, depth=2, cond=False)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    points = q.sample(4000, gen(34))
    exact = q.score(points)

    def relative_error() -> float:
        with torch.no_grad():
            return ((net(points) - exact).pow(2).sum(1).mean() / exact.pow(2).sum(1).mean()).item()

    assert relative_error() > 0.5
    g = gen(32)
    batch_gen = gen(33)
    for _ in range(400):
        batch = data[torch.randint(len(data), (256,), generator=batch_gen)]
        loss = dsm_loss(net, batch, sigma, generator=g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert relative_error() < 0.05, relative_error()


def test_dsm_loss_repeats_with_a_seeded_generator():
    x = torch.randn(8, 2, generator=gen(35))
    net = random_mlp(7).float()
    first = dsm_loss(net, x, 0.3, generator=gen(36))
    torch.testing.assert_close(first, dsm_loss(net, x, 0.3, generator=gen(36)))
    assert not torch.equal(first, dsm_loss(net, x, 0.3, generator=gen(37)))


# --------------------------------------------------------------------------- errors


def test_bad_arguments_are_named():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="x must"):
        exact_score_matching_loss(affine_field, torch.randn(5))
    with pytest.raises(ValueError, match="x must"):
        dsm_loss(affine_field, torch.arange(6).reshape(3, 2), 0.1)
    with pytest.raises(TypeError, match="x must"):
        jacobian_trace(affine_field, [[1.0, 2.0]])
    with pytest.raises(ValueError, match="sigma"):
        dsm_loss(affine_field, x, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        dsm_loss(affine_field, x, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        dsm_loss(affine_field, x, torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match="sigma"):
        dsm_loss(affine_field, x, "0.1")
    with pytest.raises(ValueError, match="noise"):
        dsm_loss(affine_field, x, 0.1, noise=torch.randn(5, 3))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_score_matching_loss(affine_field, x, n_projections=0)
    with pytest.raises(TypeError, match="n_probes"):
        hutchinson_trace(affine_field, x, n_probes=1.5)
    with pytest.raises(ValueError, match="distribution"):
        sliced_score_matching_loss(affine_field, x, distribution="uniform")
    with pytest.raises(ValueError, match="distribution"):
        hutchinson_trace(affine_field, x, distribution="normal")
    with pytest.raises(ValueError, match="reduction"):
        dsm_loss(affine_field, x, 0.1, reduction="avg")
    with pytest.raises(ValueError, match="score_net"):
        exact_score_matching_loss(lambda p: p[:, :1], x)
    with pytest.raises(ValueError, match="true_score_fn"):
        explicit_score_matching_loss(affine_field, x, lambda p: p.sum(1))


def test_relative_score_mse_is_the_mean_square_error_in_units_of_the_true_score():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(40), dtype=torch.float64)
    shift = torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64)
    got = score_matching.relative_score_mse(lambda y: -y + shift, lambda y: -y, x)
    assert got == pytest.approx(shift.pow(2).sum().item() / x.pow(2).sum(1).mean().item())
    assert score_matching.relative_score_mse(lambda y: 0 * y, lambda y: -y, x) == pytest.approx(1)
    assert score_matching.relative_score_mse(lambda y: -y, lambda y: -y, x) == 0
