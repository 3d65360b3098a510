"""Checks for the exercises of lecture 03: denoising score matching, Langevin, Tweedie.

Each check calls the student's function, compares the result with an independent reference
and prints a short confirmation, or raises ``AssertionError`` saying what is wrong. The
references: the DSM loss recomputed from the same noise (the exercise fixes how the noise is
drawn) and its closed-form expected value at the optimum for Gaussian data; the Langevin step
of notes Eq. 19 with the same noise, and the exact stationary law of the unadjusted Langevin
algorithm for a Gaussian; the posterior mean of a Gaussian mixture observed in Gaussian noise.

References: Vincent (2011), "A connection between score matching and denoising
autoencoders"; Roberts & Tweedie (1996), "Exponential convergence of Langevin distributions
and their discrete approximations"; Efron (2011), "Tweedie's formula and selection bias".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..toy import GaussianMixture
from . import call_student as _call
from . import checked_tensor as _tensor
from . import close, fixed_mlp, name_mistake

__all__ = [
    "dsm_loss",
    "dsm_loss_at_optimum",
    "langevin_step",
    "langevin_stationary_law",
    "reference_dsm_loss",
    "tweedie_denoiser",
]

_F64 = torch.float64


def _close(a: Tensor, b: Tensor, rtol: float = 1e-5, atol: float = 1e-7) -> bool:
    return close(a.detach(), b.detach(), rtol=rtol, atol=atol)


def _hint(got: Tensor, candidates: dict[str, Tensor], default: str) -> str:
    return name_mistake(got.detach(), candidates, default, rtol=1e-4)


def _score_net(dim: int, dtype: torch.dtype, seed: int):
    """A small fixed network s(x) without time input."""
    return fixed_mlp(dim, dtype, seed, cond=False)


# --------------------------------------------------------------------------- exercise (a)


def reference_dsm_loss(score_net, x: Tensor, sigma: float, z: Tensor) -> Tensor:
    """The DSM loss (notes Eq. 16-17) for given noise z: mean of 0.5 |s(x + sigma z) + z / sigma|^2.

    With x_tilde = x + sigma z, the target (x - x_tilde) / sigma^2 of Eq. 17 equals -z / sigma.
    """
    return 0.5 * (score_net(x + sigma * z) + z / sigma).pow(2).sum(1).mean()


def _dsm_mistakes(score_net, x: Tensor, sigma: float, z: Tensor) -> dict[str, Tensor]:
    reference = reference_dsm_loss(score_net, x, sigma, z)
    x_tilde = x + sigma * z
    return {
        "the factor 1/2 is missing": 2 * reference,
        "the loss is summed over the batch; take the mean over samples": len(x) * reference,
        "the squared norm is averaged over the coordinates; sum over them instead": reference
        / x.shape[1],
        "the score network is evaluated at the clean x; evaluate it at x_tilde": 0.5
        * (score_net(x) + z / sigma).pow(2).sum(1).mean(),
        "the target has the wrong sign: it is (x - x_tilde) / sigma^2, pointing back to x": 0.5
        * (score_net(x_tilde) - z / sigma).pow(2).sum(1).mean(),
        "the target is divided by sigma instead of sigma^2 (Eq. 17)": 0.5
        * (score_net(x_tilde) + z).pow(2).sum(1).mean(),
        "the noise is not scaled: x_tilde = x + sigma * z (Eq. 12)": 0.5
        * (score_net(x + z) + z / sigma**2).pow(2).sum(1).mean(),
    }


def dsm_loss(fn: Callable) -> None:
    """Exercise (a): ``fn(score_net, x, sigma, generator)`` is the DSM loss of notes Eq. 16-17.

    The noise must be drawn with one call ``torch.randn(x.shape, generator=generator,
    dtype=x.dtype)`` before anything else, so the check can draw the same z from a generator
    with the same seed and recompute the loss. Also checks that the generator was used for
    exactly that one draw and that the loss can be back-propagated to the network.
    """
    cases = [(2, 0.5, _F64, 1), (2, 2.0, _F64, 2), (3, 0.3, torch.float32, 3)]
    for dim, sigma, dtype, seed in cases:
        where = f"d = {dim}, sigma = {sigma}, {dtype}"
        net = _score_net(dim, dtype, seed)
        x = torch.randn(64, dim, generator=torch.Generator().manual_seed(100 + seed), dtype=dtype)
        generator = torch.Generator().manual_seed(seed)
        loss = _call(fn, net, x, sigma, generator)
        assert isinstance(loss, Tensor) and loss.numel() == 1, (
            f"{where}: dsm_loss should return a scalar tensor, got "
            + (f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__)
        )
        replay = torch.Generator().manual_seed(seed)
        z = torch.randn(x.shape, generator=replay, dtype=dtype)
        after_one_draw = torch.randn(8, generator=replay)
        with torch.no_grad():
            expected = reference_dsm_loss(net, x, sigma, z)
            got = loss.detach().reshape(())
            if not _close(got, expected, rtol=1e-5):
                default = (
                    "it does not match the loss recomputed with the same noise. Draw z with "
                    "exactly one call torch.randn(x.shape, generator=generator, dtype=x.dtype), "
                    "before any other random draw"
                )
                hint = _hint(got, _dsm_mistakes(net, x, sigma, z), default)
                raise AssertionError(
                    f"{where}: dsm_loss = {got.item():.6g}, expected {expected.item():.6g}: {hint}"
                )
        assert torch.equal(torch.randn(8, generator=generator), after_one_draw), (
            f"{where}: the generator should be used for exactly one draw of shape x.shape "
            "(the noise z); it was used differently"
        )
        assert loss.requires_grad, (
            f"{where}: the loss carries no gradient: do not detach, call .item() or work "
            "under torch.no_grad(); training back-propagates through it"
        )
        loss.backward()
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (
            f"{where}: back-propagating the loss did not reach every parameter of score_net"
        )
    print("✔ dsm_loss matches Eq. 16-17 with the same noise (d = 2, 3; sigma = 0.3, 0.5, 2)")


def dsm_loss_at_optimum(fn: Callable, dim: int = 2, n: int = 100_000) -> None:
    """Statistical check of ``fn``: for Gaussian data N(0, s^2 I) and the exact score of q_sigma,
    the DSM loss has the closed-form mean d s^2 / (2 sigma^2 (s^2 + sigma^2)).

    Here q_sigma = N(0, (s^2 + sigma^2) I), whose score is -x / (s^2 + sigma^2), and the DSM
    loss at this optimum is the constant C(sigma) of Vincent (2011). The tolerance is 4.5
    standard errors: the per-sample loss is a scaled chi-square with d degrees of freedom,
    so its relative standard error is sqrt(2 / (d n)).
    """
    s, sigma = 0.7, 0.4
    data_gen = torch.Generator().manual_seed(7)
    x = s * torch.randn(n, dim, generator=data_gen, dtype=_F64)

    def exact_score(points: Tensor) -> Tensor:
        return -points / (s**2 + sigma**2)

    got = float(_call(fn, exact_score, x, sigma, torch.Generator().manual_seed(8)))
    expected = dim * s**2 / (2 * sigma**2 * (s**2 + sigma**2))
    tolerance = 4.5 * expected * math.sqrt(2 / (dim * n))
    assert abs(got - expected) < tolerance, (
        f"at the optimum (Gaussian data, exact score of q_sigma) the DSM loss should be about "
        f"{expected:.5f} (the constant C(sigma)), got {got:.5f}"
    )
    print(f"✔ at the optimum the DSM loss is C(sigma) = {expected:.4f} (got {got:.4f}, d = {dim})")


# --------------------------------------------------------------------------- exercise (b)


def _mixture() -> GaussianMixture:
    return GaussianMixture(
        [[-1.0, 0.5], [1.2, -0.3], [0.2, 1.5]], [0.4, 0.7, 0.5], [0.3, 0.5, 0.2], dtype=_F64
    )


def langevin_stationary_law(mean: Tensor, stds: Tensor, step_size: float) -> tuple[Tensor, Tensor]:
    """Stationary mean and variances of x + (step/2) score + sqrt(step) z for N(m, diag(s^2)).

    Per coordinate the chain is x' - m = (1 - a)(x - m) + sqrt(step) z with a = step / (2 s^2),
    an AR(1) process with variance step / (1 - (1 - a)^2) = s^2 / (1 - step / (4 s^2)): the
    unadjusted Langevin algorithm overshoots the target variance by O(step).
    """
    return mean, stds**2 / (1 - step_size / (4 * stds**2))


def langevin_step(fn: Callable) -> None:
    """Exercise (b): ``fn(score_fn, x, step_size, z)`` is one step of notes Eq. 19.

    First the exact formula x + (step_size / 2) score(x) + sqrt(step_size) z with the given z,
    at several step sizes, with the score of a Gaussian mixture. Then statistically: 20000
    chains of 300 steps with the exact score of a 2D Gaussian N(m, diag(s^2)) must reach the
    stationary mean and variances of the unadjusted Langevin algorithm
    (:func:`langevin_stationary_law`), within 4.5 standard errors.
    """
    mixture = _mixture()
    generator = torch.Generator().manual_seed(11)
    x = 1.5 * torch.randn(50, 2, generator=generator, dtype=_F64)
    z = torch.randn(50, 2, generator=generator, dtype=_F64)
    score = mixture.score(x)
    for step_size in (0.01, 0.3, 2.0):
        got = _tensor(_call(fn, mixture.score, x.clone(), step_size, z.clone()), "x_new", (50, 2))
        expected = x + 0.5 * step_size * score + math.sqrt(step_size) * z
        if not _close(got, expected, rtol=1e-9, atol=1e-12):
            residual = (got - x - 0.5 * step_size * score).flatten()
            alignment = float(residual @ z.flatten()) / float(residual.norm() * z.norm() + 1e-30)
            if abs(alignment) < 0.5:
                hint = "the noise is not the z passed in: use that z, do not draw your own"
            else:
                hint = _hint(
                    got,
                    {
                        "the score term should be multiplied by step_size / 2, not step_size": x
                        + step_size * score
                        + math.sqrt(step_size) * z,
                        "the noise should be multiplied by sqrt(step_size), not step_size": x
                        + 0.5 * step_size * score
                        + step_size * z,
                        "the noise should be multiplied by sqrt(step_size)": x
                        + 0.5 * step_size * score
                        + z,
                        "the score should be added (it points uphill in log-density), "
                        "not subtracted": x - 0.5 * step_size * score + math.sqrt(step_size) * z,
                    },
                    "expected x + (step_size / 2) * score_fn(x) + sqrt(step_size) * z (Eq. 19)",
                )
            error = float((got - expected).abs().max())
            raise AssertionError(f"step_size = {step_size}: off by up to {error:.3g}; {hint}")

    mean = torch.tensor([1.0, -2.0], dtype=_F64)
    stds = torch.tensor([1.0, 0.5], dtype=_F64)
    step_size, n_chains, n_steps = 0.1, 20_000, 300

    def gaussian_score(points: Tensor) -> Tensor:
        return -(points - mean) / stds**2

    chains = torch.zeros(n_chains, 2, dtype=_F64)
    noise = torch.Generator().manual_seed(12)
    for _ in range(n_steps):
        z = torch.randn(n_chains, 2, generator=noise, dtype=_F64)
        chains = _tensor(_call(fn, gaussian_score, chains, step_size, z), "x_new", (n_chains, 2))
    target_mean, target_var = langevin_stationary_law(mean, stds, step_size)
    mean_error = (chains.mean(0) - target_mean).abs()
    assert (mean_error < 4.5 * (target_var / n_chains).sqrt()).all(), (
        f"after {n_steps} steps the chains' mean is {chains.mean(0).tolist()}, expected about "
        f"{target_mean.tolist()}"
    )
    variance = chains.var(0)
    assert ((variance - target_var).abs() < 4.5 * target_var * math.sqrt(2 / n_chains)).all(), (
        f"after {n_steps} steps the chains' variances are {variance.tolist()}, expected "
        f"{target_var.tolist()} (the stationary law of Eq. 19 with step {step_size})"
    )
    print(
        "✔ langevin_step is Eq. 19 exactly, and its chains reach the stationary mean and "
        "variance of the unadjusted Langevin algorithm"
    )


# --------------------------------------------------------------------------- exercise (c)


def _posterior_mean(mixture: GaussianMixture, x_tilde: Tensor, sigma: float) -> Tensor:
    """E[x | x_tilde] for x ~ mixture and x_tilde = x + sigma z, by Bayes within components.

    Given x_tilde and its component k (probability p(k | x_tilde) under the perturbed
    mixture), x is Gaussian with mean m_k + s_k^2 / (s_k^2 + sigma^2) (x_tilde - m_k).
    """
    shrink = mixture.stds**2 / (mixture.stds**2 + sigma**2)
    means = mixture.means + shrink[:, None] * (x_tilde[:, None] - mixture.means)
    weights = mixture.perturb(sigma).responsibilities(x_tilde)
    return (weights[..., None] * means).sum(1)


def tweedie_denoiser(fn: Callable) -> None:
    """Exercise (c): ``fn(score_fn, x_tilde, sigma)`` is x_tilde + sigma^2 score(x_tilde).

    With the exact score of the perturbed mixture q_sigma, the result must be the posterior
    mean E[x | x_tilde], computed independently from the mixture by Bayes' rule.
    """
    mixture = _mixture()
    generator = torch.Generator().manual_seed(21)
    for sigma in (0.3, 1.5):
        q = mixture.perturb(sigma)
        x_tilde = q.sample(200, generator)
        got = _tensor(_call(fn, q.score, x_tilde.clone(), sigma), "denoised", (200, 2))
        expected = _posterior_mean(mixture, x_tilde, sigma)
        if not _close(got, expected, rtol=1e-7, atol=1e-9):
            score = q.score(x_tilde)
            hint = _hint(
                got,
                {
                    "multiply the score by sigma^2, not sigma": x_tilde + sigma * score,
                    "the score should be added, not subtracted": x_tilde - sigma**2 * score,
                    "the result is the score step alone; add x_tilde": sigma**2 * score,
                },
                "expected x_tilde + sigma^2 * score_fn(x_tilde) (Tweedie's formula)",
            )
            error = float((got - expected).abs().max())
            raise AssertionError(
                f"sigma = {sigma}: differs from the posterior mean E[x | x_tilde] by up to "
                f"{error:.3g}; {hint}"
            )
    print("✔ the denoiser is the posterior mean E[x | x_tilde] (Tweedie), sigma = 0.3 and 1.5")
