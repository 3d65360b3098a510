"""Langevin dynamics: the step formula, the exact stationary law for a Gaussian, the API."""

from __future__ import annotations

import math

import pytest
import torch

from dlai_diffusion import nets, toy
from dlai_diffusion.langevin import energy_to_score, langevin, langevin_step

Z = 4.0  # Monte-Carlo tolerance in standard errors

DTYPE = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=DTYPE)
COV = torch.tensor([[1.0, 0.5], [0.5, 0.6]], dtype=DTYPE)  # eigenvalues 1.34 and 0.26


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_score(x: torch.Tensor) -> torch.Tensor:
    """Score of N(MEAN, COV): -COV^-1 (x - MEAN)."""
    return -torch.linalg.solve(COV, (x - MEAN).T).T


def test_langevin_samples_a_gaussian_with_the_exact_discretisation_bias():
    """The unadjusted chain x + h/2 score + sqrt(h) z targets N(m, S) and is stationary at
    N(m, S (I - h S^-1 / 4)^-1): per eigenvalue s of S, s / (1 - h / (4 s))."""
    h, n = 0.1, 20_000
    x0 = torch.randn(n, 2, generator=gen(0), dtype=DTYPE)
    # slowest contraction per step: 1 - h / (2 * 1.34) = 0.963, so 500 steps forget x0 (e^-19)
    x = langevin(gaussian_score, x0, step_size=h, n_steps=500, generator=gen(1))
    discrete = COV @ torch.linalg.inv(torch.eye(2, dtype=DTYPE) - h / 4 * torch.linalg.inv(COV))

    mean = x.mean(0)
    assert ((mean - MEAN).abs() < Z * (discrete.diagonal() / n).sqrt()).all(), mean
    cov = torch.cov(x.T)
    # standard error of a sample covariance entry: sqrt((C_ii C_jj + C_ij^2) / n)
    se = ((discrete.diagonal()[:, None] * discrete.diagonal()[None, :] + discrete**2) / n).sqrt()
    assert ((cov - discrete).abs() < Z * se).all(), (cov, discrete)
    assert torch.linalg.matrix_norm(cov - COV) < 0.1 * torch.linalg.matrix_norm(COV)

    # the O(h) bias is resolved: along the narrow axis the variance is 10% above S's (~10 SE)
    eigenvalues, eigenvectors = torch.linalg.eigh(COV)
    narrow = eigenvectors[:, 0]
    variance = narrow @ cov @ narrow
    assert variance - eigenvalues[0] > Z * eigenvalues[0] * math.sqrt(2 / n)


def test_one_step_is_the_formula_of_eq_19():
    x = torch.randn(6, 2, generator=gen(2), dtype=DTYPE)
    step = langevin_step(gaussian_score, x, 0.1, generator=gen(3))
    z = torch.randn(6, 2, generator=gen(3), dtype=DTYPE)
    torch.testing.assert_close(step, x + 0.05 * gaussian_score(x) + math.sqrt(0.1) * z)


def test_a_chain_is_its_steps_and_the_callback_sees_each_of_them():
    x0 = torch.randn(5, 2, generator=gen(4), dtype=DTYPE)
    seen = []
    final = langevin(gaussian_score, x0, 0.2, 7, generator=gen(5), callback=seen.append)
    assert [record["i"] for record in seen] == list(range(7))
    torch.testing.assert_close(seen[-1]["x"], final)
    g, x = gen(5), x0
    for record in seen:
        x = langevin_step(gaussian_score, x, 0.2, generator=g)
        torch.testing.assert_close(record["x"], x)


def standard_normal_score(x: torch.Tensor) -> torch.Tensor:
    return -x


def test_seeded_chains_repeat_and_zero_steps_copy_the_start():
    x0 = torch.randn(5, 2, generator=gen(6))
    first = langevin(standard_normal_score, x0, 0.1, 10, generator=gen(7))
    torch.testing.assert_close(
        first, langevin(standard_normal_score, x0, 0.1, 10, generator=gen(7))
    )
    assert not torch.equal(first, langevin(standard_normal_score, x0, 0.1, 10, generator=gen(8)))
    assert first.dtype == torch.float32
    start = langevin(standard_normal_score, x0, 0.1, 0)
    assert torch.equal(start, x0) and start.data_ptr() != x0.data_ptr()


def test_energy_to_score_gives_the_exact_mixture_score_even_under_no_grad():
    mixture = toy.eight_gaussians(dtype=DTYPE)
    x = torch.randn(50, 2, generator=gen(9), dtype=DTYPE)
    score = energy_to_score(mixture.energy)
    with torch.no_grad():
        torch.testing.assert_close(score(x), mixture.score(x))


def test_langevin_with_a_network_energy_leaves_no_graph_and_no_gradients():
    torch.manual_seed(0)
    energy = nets.EnergyMLP(2, hidden=16, depth=2)
    x0 = torch.randn(8, 2, generator=gen(10))
    x = langevin(energy_to_score(energy), x0, 0.01, 5, generator=gen(11))
    assert not x.requires_grad
    assert all(p.grad is None for p in energy.parameters())
    with torch.no_grad():
        torch.testing.assert_close(
            x, langevin(energy_to_score(energy), x0, 0.01, 5, generator=gen(11))
        )


def test_bad_arguments_are_named():
    x = torch.randn(4, 2, dtype=DTYPE)
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="step_size"):
            langevin(gaussian_score, x, bad, 3)
    with pytest.raises(TypeError, match="step_size"):
        langevin_step(gaussian_score, x, "0.1")
    with pytest.raises(ValueError, match="n_steps"):
        langevin(gaussian_score, x, 0.1, -1)
    for bad in (1.5, True, None):
        with pytest.raises(TypeError, match="n_steps"):
            langevin(gaussian_score, x, 0.1, bad)
    with pytest.raises(ValueError, match="x must"):
        langevin(gaussian_score, torch.ones(4, 2, dtype=torch.long), 0.1, 3)
    with pytest.raises(ValueError, match="score_fn"):
        langevin(lambda p: p.sum(1), x, 0.1, 3)
    with pytest.raises(ValueError, match="energy_fn"):
        energy_to_score(lambda p: p)(x)
