"""Energies, Boltzmann densities and quadrature against closed forms (lecture 01)."""

from __future__ import annotations

import math

import pytest
import torch

from dlai_diffusion import energy
from dlai_diffusion.toy import GaussianMixture

BOX = ((-8.0, 8.0), (-8.0, 8.0))
A = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)  # a correlated precision


def _mixture() -> GaussianMixture:
    means = [[-2.0, 0.5], [1.0, -1.0], [1.5, 2.0]]
    return GaussianMixture(means, [0.4, 0.8, 0.6], [0.2, 0.5, 0.3], dtype=torch.float64)


def _quadratic(precision: torch.Tensor):
    """0.5 x^T A x written directly, independent of energy.gaussian_energy."""
    return lambda x: 0.5 * torch.einsum("...i,ij,...j->...", x, precision, x)


# --------------------------------------------------------------------------- partition function


@pytest.mark.parametrize("offset", [0.0, 3.7, -2.5, 1000.0])
def test_mixture_energy_with_offset_has_z_exp_minus_offset(offset):
    e = energy.mixture_energy(_mixture(), offset=offset)
    assert e.log_z == -offset
    log_z = energy.log_partition_function(e, BOX, n=256)
    assert abs(float(log_z) + offset) < 1e-8  # offset 1000: exp(-E) underflows, log-space not


def test_gaussian_quadratic_energy_has_z_2pi_over_sqrt_det():
    exact = 2 * math.pi / math.sqrt(float(torch.linalg.det(A)))
    z = energy.partition_function(_quadratic(A), BOX, n=300)
    assert abs(float(z) / exact - 1) < 1e-8
    assert abs(math.exp(energy.gaussian_energy(A).log_z) / exact - 1) < 1e-12


@pytest.mark.parametrize("temperature", [0.25, 1.0, 4.0])
def test_temperature_scales_gaussian_z_linearly(temperature):
    exact = 2 * math.pi * temperature / math.sqrt(float(torch.linalg.det(A)))
    box = ((-25.0, 25.0), (-25.0, 25.0))
    z = energy.partition_function(_quadratic(A), box, n=400, temperature=temperature)
    assert abs(float(z) / exact - 1) < 1e-8


def test_every_registered_energy_integrates_to_its_exact_z():
    for name, e in energy.ENERGIES.items():
        assert e.log_z is not None and e.dim == 2, name
        log_z = float(energy.log_partition_function(e, n=256))
        assert abs(log_z - e.log_z) < 2e-6, (name, log_z, e.log_z)


def test_closed_forms_of_double_well_and_ring_match_1d_quadrature():
    # Independent check of the Bessel and erf formulas by fine 1D integrals (trapezoid).
    u = torch.linspace(-4, 4, 200_001, dtype=torch.float64)
    one_d = torch.trapezoid(torch.exp(-3.0 * (u**2 - 1) ** 2), u)
    expected = math.log(float(one_d)) + 0.5 * math.log(2 * math.pi)
    assert abs(energy.double_well_energy(3.0).log_z - expected) < 1e-9
    r = torch.linspace(0, 6, 200_001, dtype=torch.float64)
    radial = torch.trapezoid(2 * math.pi * r * torch.exp(-0.5 * ((r - 1.5) / 0.4) ** 2), r)
    assert abs(energy.ring_energy(1.5, 0.4).log_z - math.log(float(radial))) < 1e-9


def test_banana_is_a_volume_preserving_shear_of_a_gaussian():
    b, s1, s2 = 0.7, 1.1, 0.3
    banana = energy.banana_energy(b, (s1, s2))
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sheared = torch.stack([x[:, 0], x[:, 1] + b * (x[:, 0] ** 2 - s1**2)], dim=1)
    gaussian = energy.gaussian_energy(
        torch.diag(torch.tensor([s1**-2, s2**-2], dtype=torch.float64))
    )
    torch.testing.assert_close(banana(x), gaussian(sheared))
    assert abs(banana.log_z - gaussian.log_z) < 1e-12
    for curvature in (0.7, -0.7):  # bounds hold the mass whichever way it bends
        bent = energy.banana_energy(curvature, (s1, s2))
        assert abs(float(energy.log_partition_function(bent, n=400)) - bent.log_z) < 1e-5


def test_midpoint_rule_error_is_second_order_when_the_integrand_is_not_small_at_the_edges():
    exact = (1 - math.exp(-1)) ** 2  # integral of exp(-x1 - x2) over [0, 1]^2
    errors = [
        abs(float(energy.partition_function(lambda x: x.sum(-1), ((0, 1), (0, 1)), n)) - exact)
        for n in (8, 16, 32, 64)
    ]
    ratios = [a / b for a, b in zip(errors, errors[1:], strict=False)]
    assert all(3.9 < r < 4.1 for r in ratios), ratios  # halving h divides the error by 4


def test_quadrature_converges_fast_for_integrands_that_vanish_at_the_edges():
    exact = 2 * math.pi / math.sqrt(float(torch.linalg.det(A)))
    errors = [
        abs(float(energy.partition_function(_quadratic(A), BOX, n)) / exact - 1)
        for n in (6, 8, 12, 16, 32)
    ]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 1e-3 and errors[-1] < 1e-10, errors


@pytest.mark.parametrize("dim", [1, 2, 3, 4])
def test_grid_z_of_isotropic_gaussian_is_2pi_to_the_half_d(dim):
    z = energy.grid_partition_function(lambda x: 0.5 * x.pow(2).sum(-1), dim, (-7, 7), 20)
    assert abs(float(z) / (2 * math.pi) ** (dim / 2) - 1) < 1e-7


def test_chunked_evaluation_matches_one_pass_and_grid_order():
    e = energy.ENERGIES["banana"]
    whole = energy.log_partition_function(e, n=64)
    chunked = energy.log_partition_function(e, n=64, chunk_size=1000)
    torch.testing.assert_close(whole, chunked)
    points, log_volume = energy.quadrature_grid(((0, 1), (10, 14)), 4)
    assert points.shape == (16, 2) and math.isclose(log_volume, math.log(0.25))
    torch.testing.assert_close(points[1], torch.tensor([0.125, 11.5], dtype=torch.float64))
    chunks = list(energy._grid_chunks(((0, 1), (10, 14)), 4, torch.float64, None, 3))
    torch.testing.assert_close(torch.cat(chunks), points)


# --------------------------------------------------------------------------- Boltzmann densities


@pytest.mark.parametrize("name", sorted(energy.ENERGIES))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_boltzmann_density_integrates_to_one(name, temperature):
    e = energy.ENERGIES[name]
    box = tuple((2 * lo, 2 * hi) for lo, hi in e.bounds)  # the mass spreads as T grows
    log_z = None if temperature == 1.0 else energy.log_partition_function(e, box, 200, temperature)
    points, log_volume = energy.quadrature_grid(box, 333)  # another grid than log_z's
    p = energy.boltzmann_density(e, points, temperature, log_z=log_z)
    assert abs(float(p.sum()) * math.exp(log_volume) - 1) < 1e-5


def test_boltzmann_log_density_of_mixture_energy_is_the_mixture_log_prob():
    mixture = _mixture()
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e = energy.mixture_energy(mixture, offset=5.0)
    torch.testing.assert_close(energy.boltzmann_log_density(e, x), mixture.log_prob(x))
    # Eq. 2 with temperature: log p_T = -E / T - log Z_T.
    log_z = torch.tensor(0.3, dtype=torch.float64)
    expected = -e(x) / 2.0 - log_z
    torch.testing.assert_close(energy.boltzmann_log_density(e, x, 2.0, log_z), expected)


def test_energy_gradient_is_minus_the_score_and_follows_dtype():
    mixture = _mixture()
    e = energy.mixture_energy(mixture)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(e(x).sum(), x)
    torch.testing.assert_close(-grad, mixture.score(x.detach()))  # notes Eq. 8
    for e in energy.ENERGIES.values():
        out = e(torch.zeros(3, 4, 2, dtype=torch.float32) + 0.1)
        assert out.shape == (3, 4) and out.dtype == torch.float32


# --------------------------------------------------------------------------- gradient of log Z


def test_gradient_of_log_z_is_minus_the_model_expectation_of_de_dtheta():
    box = ((-10.0, 10.0), (-10.0, 10.0))
    for theta in (0.5, 2.0):  # log Z = log(2 pi) - log theta, so d/dtheta log Z = -1 / theta
        grad = energy.log_partition_gradient(lambda t: energy.gaussian_energy(t), theta, box)
        assert abs(float(grad) + 1 / theta) < 1e-8
        t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        (autograd,) = torch.autograd.grad(energy.log_partition_function(_iso(t), box), t)
        assert abs(float(autograd) + 1 / theta) < 1e-8
    # Double well: compare with finite differences of the exact (Bessel) log Z.
    h, a = 1e-5, 1.5
    exact = (energy.double_well_energy(a + h).log_z - energy.double_well_energy(a - h).log_z) / (
        2 * h
    )
    grad = energy.log_partition_gradient(energy.double_well_energy, a, ((-3, 3), (-7, 7)))
    assert abs(float(grad) - exact) < 1e-7
    at_t2 = energy.log_partition_gradient(energy.gaussian_energy, 1.0, box, temperature=2.0)
    assert abs(float(at_t2) + 1.0) < 1e-8  # Z_T = 2 pi T / theta: still -1 / theta


def _iso(theta):
    return lambda x: 0.5 * theta * x.pow(2).sum(-1)


def test_boltzmann_expectation_gives_gaussian_moments():
    e = energy.gaussian_energy(A, mean=[1.0, -0.5])
    mean = energy.boltzmann_expectation(e, lambda x: x)
    torch.testing.assert_close(mean, torch.tensor([1.0, -0.5], dtype=torch.float64))
    second = energy.boltzmann_expectation(e, lambda x: (x[:, 0] - 1) * (x[:, 1] + 0.5))
    assert abs(float(second) - float(torch.linalg.inv(A)[0, 1])) < 1e-8


# --------------------------------------------------------------------------- Bayes


def test_bayes_posterior_evidence_and_density_match_closed_forms():
    prior, sigma = _mixture(), 0.6
    y = torch.tensor([0.8, 0.3], dtype=torch.float64)

    def log_likelihood(x):  # y = x + sigma z
        return -0.5 * ((x - y) ** 2).sum(-1) / sigma**2 - math.log(2 * math.pi * sigma**2)

    posterior = energy.bayes_posterior(prior.log_prob, log_likelihood, BOX, n=400)
    exact_evidence = float(prior.perturb(sigma).log_prob(y))  # Eq. 6: p(y) = (p * N_sigma)(y)
    assert abs(posterior.log_z - exact_evidence) < 1e-8
    s2 = prior.stds**2
    exact = GaussianMixture(
        (prior.means * sigma**2 + y * s2[:, None]) / (s2[:, None] + sigma**2),
        (s2 * sigma**2 / (s2 + sigma**2)).sqrt(),
        torch.softmax(prior.perturb(sigma).log_prob_components(y), dim=0),
    )
    x = exact.sample(100, torch.Generator().manual_seed(3))
    torch.testing.assert_close(energy.boltzmann_log_density(posterior, x), exact.log_prob(x))
    points, log_volume = energy.quadrature_grid(BOX, 301)
    total = energy.boltzmann_density(posterior, points).sum() * math.exp(log_volume)
    assert abs(float(total) - 1) < 1e-8


# --------------------------------------------------------------------------- cost of the grid


def test_quadrature_cost_counts_evaluations_and_extrapolates():
    rows = energy.quadrature_cost(dims=(1, 2, 3), n_per_dim=8, extrapolate_to=(3, 10, 784))
    assert [r.dim for r in rows] == [1, 2, 3, 10, 784]
    for r in rows[:3]:
        assert r.measured and r.evaluations == 8**r.dim and r.seconds > 0
        assert r.relative_error < 1e-3
    assert not rows[3].measured and rows[3].evaluations == 8**10
    assert math.isclose(rows[4].log10_evaluations, 784 * math.log10(8))
    assert rows[4].seconds == math.inf and math.isfinite(rows[4].log10_seconds)
    per_call = [r.log10_seconds - r.log10_evaluations for r in rows[2:]]
    assert max(per_call) - min(per_call) < 1e-9  # same cost per evaluation as the largest d


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(bounds=((1, -1), (0, 1))), ValueError, "lo < hi"),
        (dict(bounds=((0, math.inf), (0, 1))), ValueError, "finite"),
        (dict(bounds=((0, 1),)), ValueError, "2 \\(lo, hi\\) pairs"),
        (dict(bounds=(0, 1)), TypeError, "pairs"),
        (dict(n=0), ValueError, "n must be a positive int"),
        (dict(n=2.5), TypeError, "n must be a positive int"),
        (dict(n=True), TypeError, "bool"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(temperature=math.nan), ValueError, "temperature"),
        (dict(temperature="hot"), TypeError, "temperature"),
    ],
)
def test_bad_quadrature_arguments_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        energy.log_partition_function(energy.ENERGIES["ring"], **kwargs)


def test_other_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="bounds are needed"):
        energy.log_partition_function(lambda x: x.sum(-1))
    with pytest.raises(ValueError, match="log_z is needed"):
        energy.boltzmann_log_density(lambda x: x.sum(-1), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="log_z is needed when temperature"):
        energy.boltzmann_log_density(energy.ENERGIES["ring"], torch.zeros(3, 2), temperature=2.0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\)"):
        energy.ENERGIES["gaussian"](torch.zeros(4, 3))
    with pytest.raises(ValueError, match="positive definite"):
        energy.gaussian_energy([[1.0, 0.0], [0.0, -1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        energy.gaussian_energy([[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(TypeError, match="GaussianMixture"):
        energy.mixture_energy("not a mixture")
    with pytest.raises(ValueError, match="width"):
        energy.ring_energy(1.0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        energy.boltzmann_density(energy.ENERGIES["ring"], torch.zeros(1, 2), temperature=0)
    with pytest.raises(ValueError, match="dim"):
        energy.grid_partition_function(lambda x: x.sum(-1), 0)


# --------------------------------------------------------------------------- exercise checks


def _mixture_energy(x, means, stds, weights):
    d = x.shape[-1]
    squared = ((x[:, None, :] - means) ** 2).sum(-1)
    log_normal = -0.5 * squared / stds**2 - d * torch.log(stds) - 0.5 * d * math.log(2 * math.pi)
    return -torch.logsumexp(torch.log(weights) + log_normal, dim=1)


def _naive_mixture_energy(x, means, stds, weights):  # right, but underflows far from the modes
    return -torch.log(torch.exp(-_mixture_energy(x, means, stds, weights)))


def _log_partition_2d(e, bounds, n, temperature=1.0):
    return energy.log_partition_function(e, bounds, n, temperature)


def _bayes_update(prior, likelihood, cell_area):
    joint = prior * likelihood
    evidence = joint.sum() * cell_area
    return joint / evidence, evidence


def _stub(*args):
    raise NotImplementedError()


def test_lecture01_checks_accept_right_answers():
    from dlai_diffusion.checks import lecture01 as check

    check.mixture_energy(_mixture_energy)
    check.mixture_energy(_mixture_energy, far=True)
    check.mixture_energy(lambda *a: _mixture_energy(*a).numpy())  # numpy answers are fine
    check.log_partition_2d(_log_partition_2d)
    check.bayes_update(_bayes_update)
    check.bayes_update(_bayes_update, numpy=True)


@pytest.mark.parametrize(
    "name, answer, kwargs, message",
    [
        ("mixture_energy", _stub, {}, "not implemented yet"),
        ("mixture_energy", lambda *a: _mixture_energy(*a) + 0.1, {}, "differs from -log p"),
        ("mixture_energy", lambda *a: _mixture_energy(*a)[:-1], {}, "should have shape"),
        ("mixture_energy", _naive_mixture_energy, {"far": True}, "logsumexp"),
        ("log_partition_2d", _stub, {}, "not implemented yet"),
        ("log_partition_2d", lambda e, b, n, t=1.0: _log_partition_2d(e, b, n), {}, "T = 0.5"),
        (
            "log_partition_2d",
            lambda e, b, n, t=1.0: torch.log(_log_partition_2d(e, b, n, t).exp()),
            {},
            "log space",
        ),
        ("bayes_update", _stub, {}, "not implemented yet"),
        ("bayes_update", lambda p, l, a: _bayes_update(p, l, 1.0), {}, "evidence"),
        ("bayes_update", lambda p, l, a: (p * l, _bayes_update(p, l, a)[1]), {}, "integrate"),
        ("bayes_update", lambda p, l, a: _bayes_update(p, l, a)[0], {}, "pair"),
    ],
)
def test_lecture01_checks_reject_wrong_answers(name, answer, kwargs, message):
    from dlai_diffusion.checks import lecture01 as check

    with pytest.raises(AssertionError, match=message):
        getattr(check, name)(answer, **kwargs)
