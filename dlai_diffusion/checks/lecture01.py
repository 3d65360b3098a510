"""Checks for the exercises of lecture 01: energy, partition function, Bayes' rule.

Each check calls the student's function on several inputs, compares the result with an
independent reference (the exact mixture of :mod:`dlai_diffusion.toy`, closed forms of the
Gaussian integral and of Gaussian posteriors) and prints a short confirmation, or raises
``AssertionError`` saying what is wrong. Answers may use torch or numpy.
"""

from __future__ import annotations

import math

import torch

from .. import energy as _energy
from ..toy import GaussianMixture
from . import as_float64 as _as_tensor
from . import call_student as _call

__all__ = ["bayes_update", "log_partition_2d", "mixture_energy"]

_F64 = torch.float64


def _mixtures() -> list[GaussianMixture]:
    return [
        GaussianMixture([[0.0, 0.0]], [1.0], [1.0], dtype=_F64),
        GaussianMixture(
            [[-2.0, 0.5], [1.0, -1.0], [1.5, 2.0]], [0.4, 0.8, 0.6], [0.2, 0.5, 0.3], dtype=_F64
        ),
        GaussianMixture([[3.0, -1.0], [-1.0, 2.5]], [0.3, 1.2], [0.7, 0.3], dtype=_F64),
    ]


def _number(value, what: str = "log Z") -> float:
    """A single number (python, numpy or tensor) as a float."""
    tensor = _as_tensor(value, what)
    assert tensor.numel() == 1, f"{what} should be a single number, got shape {tuple(tensor.shape)}"
    return float(tensor.reshape(()))


# --------------------------------------------------------------------------- exercise (a)


def mixture_energy(fn, *, far: bool = False) -> None:
    """Exercise (a): ``fn(x, means, stds, weights)`` is the energy -log p(x) of the mixture.

    Compared with ``toy.GaussianMixture.energy`` at random points of three mixtures, and
    exp(-E) must integrate to 1 over the plane. With ``far=True`` the points lie far from
    every mode, where only a log-sum-exp avoids log(0).
    """
    generator = torch.Generator().manual_seed(0)
    for k, mixture in enumerate(_mixtures()):
        scale = 40.0 if far else 2.5
        x = scale * torch.randn(500, 2, generator=generator, dtype=_F64)
        expected = mixture.energy(x)
        got = _as_tensor(_call(fn, x, mixture.means, mixture.stds, mixture.weights), "E(x)")
        assert got.shape == expected.shape, (
            f"mixture {k}: E(x) for x of shape {tuple(x.shape)} should have shape "
            f"{tuple(expected.shape)}, got {tuple(got.shape)}"
        )
        assert torch.isfinite(got).all(), f"mixture {k}: E(x) is not finite at some points" + (
            " far from the modes: combine the components with torch.logsumexp" if far else ""
        )
        error = float((got - expected).abs().max())
        assert error < 1e-6 * (1 + float(expected.abs().max())), (
            f"mixture {k}: E(x) differs from -log p(x) by up to {error:.3g}. Check the Gaussian "
            "normaliser (2 pi s_k^2)^(d/2), the weights, and the minus sign."
        )
    if not far:
        mixture = _mixtures()[1]

        def energy_of(points):
            return _as_tensor(fn(points, mixture.means, mixture.stds, mixture.weights), "E(x)")

        z = math.exp(float(_energy.log_partition_function(energy_of, ((-6, 6), (-6, 6)), 300)))
        assert abs(z - 1) < 1e-6, f"exp(-E) should integrate to 1 (E = -log p), got {z:.6g}"
    if far:
        print("✔ mixture energy matches -log p far from every mode (computed stably)")
    else:
        print("✔ mixture energy matches -log p at 1500 random points; exp(-E) integrates to 1")


# --------------------------------------------------------------------------- exercise (b)


def log_partition_2d(fn) -> None:
    """Exercise (b): ``fn(energy, bounds, n, temperature)`` returns log Z_T by quadrature.

    References: Z_T = 2 pi T / sqrt(det A) for E = x^T A x / 2, and Z = exp(-c) for a mixture
    energy -log p + c, including c = 800 where exp(-E) underflows unless one works in logs.
    Also checks that exp(-E / T) / Z_T then integrates to one on an independent grid.
    """
    precision = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=_F64)
    gaussian = _energy.gaussian_energy(precision)
    box = ((-12.0, 12.0), (-12.0, 12.0))
    for temperature in (0.5, 1.0, 3.0):
        exact = math.log(2 * math.pi * temperature / math.sqrt(float(torch.linalg.det(precision))))
        got = _number(_call(fn, gaussian, box, 200, temperature))
        assert abs(got - exact) < 1e-3, (
            f"Gaussian energy x^T A x / 2 at T = {temperature}: log Z should be {exact:.5f}, got "
            f"{got:.5f}. Remember the cell area and to divide the energy by T."
        )
        points, log_volume = _energy.quadrature_grid(box, 301)
        density = torch.exp(-gaussian(points) / temperature - got)
        total = float(density.sum()) * math.exp(log_volume)
        assert abs(total - 1) < 2e-3, f"exp(-E/T) / Z_T integrates to {total:.5f}, not 1"
    mixture = _mixtures()[1]
    for offset in (0.0, 5.0, 800.0):
        energy = _energy.mixture_energy(mixture, offset)
        got = _number(_call(fn, energy, ((-6.0, 6.0), (-6.0, 6.0)), 200, 1.0))
        hint = " Work in log space: torch.logsumexp(-E / T) + log(cell area)." if offset else ""
        assert abs(got + offset) < 1e-3, (
            f"mixture energy -log p + {offset:g}: log Z should be {-offset:g}, got {got:.5g}.{hint}"
        )
    print(
        "✔ log Z matches the closed forms (Gaussian, all T; mixture + offset) and p integrates to 1"
    )


# --------------------------------------------------------------------------- exercise (c)


def _observation_setup(n: int = 160):
    """A mixture prior on a grid and the Gaussian likelihood of y = x + sigma z."""
    prior = _mixtures()[2]
    sigma, y = 0.8, torch.tensor([1.2, 0.4], dtype=_F64)
    box = ((-5.0, 7.0), (-5.0, 7.0))
    points, log_volume = _energy.quadrature_grid(box, n)
    log_likelihood = -0.5 * ((points - y) ** 2).sum(-1) / sigma**2 - math.log(
        2 * math.pi * sigma**2
    )
    return prior, sigma, y, points, log_volume, log_likelihood


def _exact_posterior(prior: GaussianMixture, sigma: float, y: torch.Tensor) -> GaussianMixture:
    """Gaussian mixture prior, Gaussian likelihood: the posterior is again a mixture."""
    var = prior.stds**2
    means = (prior.means * sigma**2 + y * var[:, None]) / (var[:, None] + sigma**2)
    weights = torch.softmax(prior.perturb(sigma).log_prob_components(y), dim=0)
    return GaussianMixture(means, (var * sigma**2 / (var + sigma**2)).sqrt(), weights)


def bayes_update(fn, *, numpy: bool = False) -> None:
    """Exercise (c): ``fn(prior, likelihood, cell_area) -> (posterior, evidence)`` on a grid.

    The prior is a Gaussian mixture and y = x + sigma z, so the evidence p(y) (notes Eq. 6) is
    the noised mixture's density at y and the posterior (notes Eq. 5) is a known mixture. With
    ``numpy=True`` the grids are passed as numpy arrays.
    """
    n = 160
    prior, sigma, y, points, log_volume, log_likelihood = _observation_setup(n)
    prior_grid = prior.log_prob(points).exp().reshape(n, n)
    likelihood_grid = log_likelihood.exp().reshape(n, n)
    cell_area = math.exp(log_volume)
    if numpy:
        prior_grid, likelihood_grid = prior_grid.numpy(), likelihood_grid.numpy()
    result = _call(fn, prior_grid, likelihood_grid, cell_area)
    assert isinstance(result, tuple | list) and len(result) == 2, (
        "bayes_update should return a pair (posterior, evidence)"
    )
    posterior = _as_tensor(result[0], "posterior")
    evidence = _number(result[1], "evidence")
    exact_evidence = float(prior.perturb(sigma).log_prob(y).exp())
    assert abs(evidence / exact_evidence - 1) < 1e-4, (
        f"evidence p(y) should be {exact_evidence:.6g} (notes Eq. 6: sum of prior x likelihood "
        f"x cell area), got {evidence:.6g}"
    )
    assert posterior.shape == (n, n), (
        f"posterior should have the grid's shape {(n, n)}, got {tuple(posterior.shape)}"
    )
    total = float(posterior.sum()) * cell_area
    assert abs(total - 1) < 1e-6, f"the posterior should integrate to 1, got {total:.6g}"
    exact = _exact_posterior(prior, sigma, y).log_prob(points).exp().reshape(n, n)
    error = float((posterior - exact).abs().max())
    assert error < 1e-6 * float(exact.max()) + 1e-9, (
        f"posterior differs from the exact p(x | y) by up to {error:.3g} "
        "(posterior = prior x likelihood / evidence)"
    )
    kind = "numpy" if numpy else "torch"
    print(
        f"✔ evidence and posterior match the closed forms ({kind} grids); posterior integrates to 1"
    )
