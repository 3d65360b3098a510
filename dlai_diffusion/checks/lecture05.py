"""Checks for the exercises of lecture 05: noise schedule, NCSN loss, annealed Langevin.

Each check calls the student's function on several inputs and compares the result with an
independent reference: the closed form of a geometric sequence, the loss of Eq. 26 written out
sample by sample, the optimal loss of a Gaussian in closed form, a replay of Algorithm 1 of
Song & Ermon (2019) with the same random numbers, and the exact mode weights of the mixture of
their Figure 3. It prints a short confirmation or raises ``AssertionError`` saying what is
wrong.
"""

from __future__ import annotations

import math

import torch

from ..toy import GaussianMixture, two_mode_mixture
from . import as_float64 as _as_tensor
from . import call_student as _call

__all__ = ["annealed_langevin", "figure_2", "figure_3", "geometric_sigmas", "ncsn_loss"]

_F64 = torch.float64


def _number(value, what: str) -> float:
    tensor = _as_tensor(value, what)
    assert tensor.numel() == 1, f"{what} should be a single number, got shape {tuple(tensor.shape)}"
    return float(tensor.reshape(()))


def _perturbed_score(mixture: GaussianMixture):
    """grad log q_sigma for a number sigma or one sigma per sample (N,)."""

    def score(x: torch.Tensor, sigma) -> torch.Tensor:
        if not isinstance(sigma, torch.Tensor) or sigma.ndim == 0:
            return mixture.perturb(float(sigma)).score(x)
        out = torch.empty_like(x)
        for value in sigma.unique():
            rows = sigma == value
            out[rows] = mixture.perturb(float(value)).score(x[rows])
        return out

    return score


# --------------------------------------------------------------------------- exercise (a)


def geometric_sigmas(fn) -> None:
    """``fn(sigma_max, sigma_min, n_levels)`` returns sigma_1 > ... > sigma_L, geometric.

    Reference: sigma_max * r^k, k = 0..L-1, r = (sigma_min / sigma_max)^(1 / (L - 1)).
    """
    for sigma_max, sigma_min, n_levels in ((1.0, 0.01, 10), (50.0, 0.01, 232), (3.0, 2.0, 2)):
        got = _as_tensor(_call(fn, sigma_max, sigma_min, n_levels), "sigmas")
        assert got.shape == (n_levels,), (
            f"geometric_sigmas({sigma_max}, {sigma_min}, {n_levels}) should have shape "
            f"({n_levels},), got {tuple(got.shape)}"
        )
        ratio = (sigma_min / sigma_max) ** (1 / (n_levels - 1))
        expected = sigma_max * ratio ** torch.arange(n_levels, dtype=_F64)
        assert bool((got[1:] < got[:-1]).all()), "the levels should decrease, largest first"
        assert abs(got[0] - sigma_max) < 1e-5 * sigma_max and abs(got[-1] - sigma_min) < (
            1e-5 * sigma_min
        ), f"the first level should be sigma_max = {sigma_max} and the last sigma_min = {sigma_min}"
        error = float(((got - expected).abs() / expected).max())
        assert error < 1e-5, (
            f"levels ({sigma_max}, {sigma_min}, {n_levels}) differ from the geometric sequence by "
            f"up to {error:.2g} (relative): consecutive levels should share one ratio {ratio:.4g}"
        )
    print("✔ geometric noise levels: decreasing, right ends, one common ratio")


# --------------------------------------------------------------------------- exercise (b)


def _reference_loss(score_fn, x, sigmas, levels, noise) -> float:
    """Eq. 26 sample by sample: sigma_i^2 * 0.5 ||s(x~, sigma_i) - (x - x~) / sigma_i^2||^2."""
    total = 0.0
    for n in range(len(x)):
        sigma = float(sigmas[levels[n]])
        x_tilde = x[n : n + 1] + sigma * noise[n : n + 1]
        score = score_fn(x_tilde, torch.full((1,), sigma, dtype=x.dtype))
        target = (x[n : n + 1] - x_tilde) / sigma**2
        total += sigma**2 * 0.5 * float(((score - target) ** 2).sum())
    return total / len(x)


def _made_up_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    shape = (-1, *[1] * (x.ndim - 1))
    return -x / (1 + sigma.reshape(shape) ** 2) + 0.3 * torch.sin(x)


def ncsn_loss(fn) -> None:
    """``fn(score_fn, x, sigmas, levels, noise)`` is the weighted loss of notes Eq. 26.

    Compared with a sample-by-sample reference (vectors and images), and with the closed form
    d / 2 * s^2 / (s^2 + sigma^2) of the optimum for x ~ N(0, s^2 I) with the exact score.
    """
    generator = torch.Generator().manual_seed(0)
    sigmas = torch.tensor([5.0, 1.0, 0.2, 0.04], dtype=_F64)
    for shape in ((7, 2), (5, 1, 3, 3)):
        x = torch.randn(shape, generator=generator, dtype=_F64)
        noise = torch.randn(shape, generator=generator, dtype=_F64)
        levels = torch.randint(0, len(sigmas), (shape[0],), generator=generator)
        expected = _reference_loss(_made_up_score, x, sigmas, levels, noise)
        got = _number(_call(fn, _made_up_score, x, sigmas, levels, noise), "the loss")
        assert abs(got - expected) < 1e-9 * (1 + abs(expected)), (
            f"x of shape {shape}: loss should be {expected:.6g}, got {got:.6g}. Check x~ = x + "
            "sigma z with each sample's own level, the target (x - x~) / sigma^2, the factor "
            "1/2, the weight sigma^2, and the mean over the batch (sum over coordinates)."
        )
    s, n = 1.0, 20_000
    gaussian = GaussianMixture([[0.0, 0.0]], s, dtype=_F64)
    x = gaussian.sample(n, generator)
    for i, sigma in enumerate(sigmas.tolist()):
        levels = torch.full((n,), i)
        noise = torch.randn(x.shape, generator=generator, dtype=_F64)
        got = _number(_call(fn, _perturbed_score(gaussian), x, sigmas, levels, noise), "the loss")
        optimum = s**2 / (s**2 + sigma**2)  # d / 2 * s^2 / (s^2 + sigma^2) with d = 2
        assert abs(got / optimum - 1) < 0.05, (
            f"with the exact score at sigma = {sigma}, the weighted loss should be close to "
            f"{optimum:.4f} (Gaussian closed form), got {got:.4f}"
        )
    print("✔ NCSN loss matches Eq. 26 sample by sample and the Gaussian optimum at every level")


# --------------------------------------------------------------------------- exercise (c)


def annealed_langevin(fn) -> None:
    """``fn(score_fn, x, sigmas, n_steps_each, eps, generator)`` runs Algorithm 1.

    Replays x + (alpha_i / 2) s(x, sigma_i) + sqrt(alpha_i) z, alpha_i = eps sigma_i^2 /
    sigma_L^2, with the same random numbers (z drawn as ``torch.randn(x.shape,
    generator=generator, dtype=x.dtype)``, one draw per step), and checks that every level is
    visited ``n_steps_each`` times, largest sigma first.
    """
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=_F64)
    eps, steps = 0.02, 3
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=_F64)
    visited = []

    def score(x, sigma):
        visited.append(float(sigma))
        return -x / (1 + float(sigma) ** 2) + 0.1

    got = _as_tensor(
        _call(fn, score, x0.clone(), sigmas, steps, eps, torch.Generator().manual_seed(2)),
        "the samples",
    )
    expected_visits = [s for s in sigmas.tolist() for _ in range(steps)]
    assert visited == expected_visits, (
        f"score_fn should be called {steps} times at each level, largest first: expected the "
        f"sigmas {expected_visits}, got {visited}"
    )
    twin, x = torch.Generator().manual_seed(2), x0.clone()
    for sigma in sigmas.tolist():
        alpha = eps * sigma**2 / sigmas[-1].item() ** 2
        for _ in range(steps):
            z = torch.randn(x.shape, generator=twin, dtype=x.dtype)
            x = x + alpha / 2 * (-x / (1 + sigma**2) + 0.1) + math.sqrt(alpha) * z
    assert got.shape == x.shape, f"the samples should have shape {tuple(x.shape)}"
    error = float((got - x).abs().max())
    assert error < 1e-9, (
        f"the samples differ from Algorithm 1 by up to {error:.3g}. Check alpha_i = eps * "
        "sigma_i^2 / sigma_L^2 (sigma_L the smallest level), the drift alpha_i / 2 * score, the "
        "noise sqrt(alpha_i) * z, and draw z as torch.randn(x.shape, generator=generator, "
        "dtype=x.dtype) once per step."
    )
    print("✔ annealed Langevin takes the steps of Algorithm 1 at every level, largest sigma first")


# --------------------------------------------------------------------------- exercise 5.2


def _share(x: torch.Tensor) -> float:
    return float((x.sum(1) > 0).double().mean())


def figure_3(fn, n: int = 1280) -> None:
    """Exercise 5.2: ``fn(n, generator) -> (exact, langevin, annealed)`` samples (n, 2).

    The heavy mode (5, 5) of 0.8 N((5,5), I) + 0.2 N((-5,-5), I) must hold 0.8 of the exact
    and the annealed samples (within 0.05) and clearly not of the plain Langevin ones.
    """
    result = _call(fn, n, torch.Generator().manual_seed(0))
    assert isinstance(result, tuple | list) and len(result) == 3, (
        "return the three sample sets (exact, langevin, annealed)"
    )
    exact, plain, annealed = (_as_tensor(r, "samples") for r in result)
    for name, x in (("exact", exact), ("langevin", plain), ("annealed", annealed)):
        assert x.shape == (n, 2), f"{name} samples should have shape ({n}, 2), got {x.shape}"
        assert torch.isfinite(x).all(), f"{name} samples are not all finite"
        near = ((x - 5).norm(dim=1) < 5) | ((x + 5).norm(dim=1) < 5)
        assert float(near.double().mean()) > 0.98, f"{name} samples should sit at the two modes"
    shares = {
        k: _share(v) for k, v in (("exact", exact), ("langevin", plain), ("annealed", annealed))
    }
    assert abs(shares["exact"] - 0.8) < 0.05, (
        f"exact samples: heavy-mode share {shares['exact']:.3f}, expected about 0.8"
    )
    assert abs(shares["annealed"] - 0.8) < 0.05, (
        f"annealed Langevin should recover the weight 0.8 of the mode (5, 5), got "
        f"{shares['annealed']:.3f}: use the perturbed scores at sigmas from 20 to 1"
    )
    assert abs(shares["langevin"] - 0.8) > 0.1, (
        f"plain Langevin from uniform noise should miss the weights, got {shares['langevin']:.3f}"
        ": start from U[-8, 8]^2 and use the score of the data density itself"
    )
    print(
        "✔ Figure 3 reproduced: heavy-mode share "
        + ", ".join(f"{k} {v:.3f}" for k, v in shares.items())
    )


def figure_2(score_fn, bounds: float = 8.0) -> None:
    """Exercise 5.2, Figure 2: a score ``score_fn(x)`` learned from samples of the mixture.

    On a grid over [-bounds, bounds]^2, the median relative error ||s_theta - s|| / ||s|| must
    be small where the data lives (log p within 6 of its maximum) and clearly larger where
    the density is negligible (log p more than 15 below its maximum).
    """
    mixture = two_mode_mixture()
    axis = torch.linspace(-bounds, bounds, 41)
    points = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        got = _as_tensor(_call(score_fn, points), "the learned score").float()
    assert got.shape == points.shape, (
        f"the score of points (M, 2) should have shape (M, 2), got {tuple(got.shape)}"
    )
    exact = mixture.score(points)
    relative = (got - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-3)
    log_p = mixture.log_prob(points)
    dense = log_p > log_p.max() - 6
    empty = log_p < log_p.max() - 15
    near, far = float(relative[dense].median()), float(relative[empty].median())
    assert near < 0.35, (
        f"near the modes the learned score should be close to the exact one (median relative "
        f"error {near:.2f}, expected < 0.35): train longer or check the loss"
    )
    assert far > 1.5 * near, (
        f"far from the data the error ({far:.2f}) should be well above the error near the "
        f"modes ({near:.2f}); is the network trained on samples of the mixture only?"
    )
    print(
        f"✔ Figure 2 reproduced: median relative error {near:.2f} where the data lives, "
        f"{far:.2f} where the density is negligible"
    )
