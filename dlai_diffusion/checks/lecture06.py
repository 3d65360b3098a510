"""Checks for the exercises of lecture 06: diffusion probabilistic models.

Each check calls the student's function, compares the result with an independent reference
and prints a short confirmation, or raises ``AssertionError`` saying what is wrong. The
references: the diffusion kernel against the product of the step coefficients and against a
Monte Carlo run of the forward chain step by step (notes Eq. 28); the forward posterior
against Gaussian conditioning written in precision form (Bayes' rule, not the coefficients of
Ho et al.); the KL divergence between Gaussians against ``torch.distributions`` and a Monte
Carlo average of the log-ratio.

References: Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli (2015), "Deep unsupervised
learning using nonequilibrium thermodynamics"; Ho, Jain & Abbeel (2020), "Denoising diffusion
probabilistic models".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import call_student as _call
from . import checked_tensor as _tensor
from . import close as _close
from . import name_mistake as _hint

__all__ = [
    "diffusion_kernel",
    "forward_chain",
    "forward_posterior",
    "gaussian_kl",
    "reference_posterior",
]

_F64 = torch.float64


def _betas(T: int, low: float = 1e-3, high: float = 0.2) -> Tensor:
    return torch.linspace(low, high, T, dtype=_F64)


def _draw(shape: tuple[int, ...], seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=_F64)


# --------------------------------------------------------------------------- exercise (a)


def forward_chain(betas: Tensor, x0: Tensor, t: int, generator: torch.Generator) -> Tensor:
    """Run the forward chain of notes Eq. 28 step by step, from the data x0 through step t
    (0-indexed: t + 1 noising steps): x <- sqrt(1 - beta_s) x + sqrt(beta_s) z."""
    x = x0
    for s in range(t + 1):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = (1 - betas[s]).sqrt() * x + betas[s].sqrt() * z
    return x


def _kernel_mistakes(betas: Tensor, x0: Tensor, t: int, eps: Tensor) -> dict[str, Tensor]:
    alphas = 1 - betas
    before = alphas[:t].prod()
    mistakes = {
        "off by one: with 0-indexed t, alpha_bar_t multiplies alpha_0 ... alpha_t (t + 1 "
        "factors)": before.sqrt() * x0 + (1 - before).sqrt() * eps,
        "the square roots are missing: the mean is sqrt(alpha_bar_t) x0 and the standard "
        "deviation sqrt(1 - alpha_bar_t)": alphas[: t + 1].prod() * x0
        + (1 - alphas[: t + 1].prod()) * eps,
        "the noise variance is not the sum of the betas: it is 1 - alpha_bar_t, because each "
        "step also shrinks the noise already there": alphas[: t + 1].prod().sqrt() * x0
        + betas[: t + 1].sum().sqrt() * eps,
        "alpha_bar_t is the product of alpha_s = 1 - beta_s, not of the betas": betas[: t + 1]
        .prod()
        .sqrt()
        * x0
        + (1 - betas[: t + 1].prod()).sqrt() * eps,
    }
    return mistakes


def diffusion_kernel(fn: Callable, n_chains: int = 20_000) -> None:
    """Exercise (a): ``fn(betas, x0, t, eps)`` is x_t = sqrt(alpha_bar_t) x0 +
    sqrt(1 - alpha_bar_t) eps with alpha_bar_t = (1 - beta_0) ... (1 - beta_t).

    Checked exactly on fixed inputs, then in law: the kernel with fresh noise and the forward
    chain run step by step must have the same mean and variance (to 5 standard errors).
    """
    cases = [(10, 0, 1), (10, 4, 2), (50, 49, 3), (7, 3, 4)]
    for T, t, seed in cases:
        betas = _betas(T)
        x0 = _draw((16, 2), seed)
        eps = _draw((16, 2), 100 + seed)
        where = f"T = {T}, t = {t}"
        got = _tensor(_call(fn, betas, x0, t, eps), f"{where}: diffusion_kernel", (16, 2))
        alpha_bar = torch.exp(torch.log1p(-betas[: t + 1]).sum())
        expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
        if not _close(got, expected):
            hint = _hint(
                got,
                _kernel_mistakes(betas, x0, t, eps),
                "it does not match sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps",
            )
            raise AssertionError(f"{where}: diffusion_kernel is wrong: {hint}")
    # In law: the one-jump kernel against the chain of single steps (notes Eq. 28).
    T, t = 30, 17
    betas = _betas(T, 0.01, 0.1)
    x0 = torch.tensor([[1.5, -2.0]], dtype=_F64).expand(n_chains, 2)
    chain = forward_chain(betas, x0, t, torch.Generator().manual_seed(11))
    jump = _call(fn, betas, x0, t, _draw((n_chains, 2), 12))
    se_mean = chain.std(0) / math.sqrt(n_chains)
    gap = (chain.mean(0) - jump.mean(0)).abs()
    assert (gap < 5 * math.sqrt(2) * se_mean).all(), (
        f"the mean of diffusion_kernel samples {jump.mean(0).tolist()} differs from the mean "
        f"{chain.mean(0).tolist()} of the forward chain run step by step"
    )
    ratio = jump.var(0) / chain.var(0)
    assert (ratio - 1).abs().max() < 5 * math.sqrt(4 / n_chains), (
        f"the variance of diffusion_kernel samples {jump.var(0).tolist()} differs from the "
        f"variance {chain.var(0).tolist()} of the forward chain run step by step"
    )
    print(
        "✔ diffusion_kernel matches the closed form and, in law, the forward chain of Eq. 28 "
        f"({n_chains} chains, {t + 1} steps)"
    )


# --------------------------------------------------------------------------- exercise (b)


def reference_posterior(betas: Tensor, x0: Tensor, xt: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """q(x_{t-1} | x_t, x_0) by Bayes' rule in precision form: the prior
    N(sqrt(alpha_bar_{t-1}) x0, 1 - alpha_bar_{t-1}) times the likelihood of one forward step
    N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) (valid for t >= 1; at t = 0 the posterior is x0)."""
    if t == 0:
        return x0.clone(), torch.zeros((), dtype=x0.dtype)
    prior_ab = torch.exp(torch.log1p(-betas[:t]).sum())
    prior_var = 1 - prior_ab
    beta = betas[t]
    precision = 1 / prior_var + (1 - beta) / beta
    variance = 1 / precision
    mean = variance * (prior_ab.sqrt() * x0 / prior_var + (1 - beta).sqrt() * xt / beta)
    return mean, variance


def _posterior_pair(value: object, where: str, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    assert isinstance(value, tuple) and len(value) == 2, (
        f"{where}: forward_posterior should return a tuple (mean, variance), got "
        f"{type(value).__name__}"
    )
    mean = _tensor(value[0], f"{where}: the posterior mean", shape)
    variance = torch.as_tensor(value[1], dtype=_F64)
    assert variance.numel() == 1 or tuple(variance.shape) == shape, (
        f"{where}: the posterior variance should be one number (the same for every "
        f"coordinate) or have shape {shape}, got shape {tuple(variance.shape)}"
    )
    assert torch.isfinite(variance).all(), f"{where}: the posterior variance is NaN or inf"
    return mean, variance


def forward_posterior(fn: Callable) -> None:
    """Exercise (b): ``fn(betas, x0, xt, t)`` returns (mean, variance) of the forward
    posterior q(x_{t-1} | x_t, x_0) (notes Eq. 34; Ho et al., 2020, Eq. 6-7)."""
    cases = [(10, 5, 1), (10, 1, 2), (40, 39, 3), (6, 3, 4)]
    for T, t, seed in cases:
        betas = _betas(T, 0.01, 0.3)
        x0, xt = _draw((8, 3), seed), _draw((8, 3), 50 + seed)
        where = f"T = {T}, t = {t}"
        mean, variance = _posterior_pair(_call(fn, betas, x0, xt, t), where, (8, 3))
        ref_mean, ref_var = reference_posterior(betas, x0, xt, t)
        ab, ab_prev, beta = (1 - betas[: t + 1]).prod(), (1 - betas[:t]).prod(), betas[t]
        if not _close(variance, ref_var):
            hint = _hint(
                variance,
                {
                    "the variance is beta_t, the forward variance; the posterior variance is "
                    "smaller: beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)": beta,
                    "the variance uses alpha_bar_t in place of alpha_bar_{t-1} in the "
                    "numerator": beta * (1 - ab) / (1 - ab),
                },
                f"expected {ref_var.item():.6g}",
            )
            got = variance.flatten()[0].item()
            raise AssertionError(f"{where}: posterior variance {got:.6g} is wrong: {hint}")
        if not _close(mean, ref_mean):
            c1 = beta * ab_prev.sqrt() / (1 - ab)
            c2 = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
            hint = _hint(
                mean,
                {
                    "the coefficients of x0 and x_t are swapped": c2 * x0 + c1 * xt,
                    "the weight of x0 needs sqrt(alpha_bar_{t-1}), not sqrt(alpha_bar_t)": beta
                    * ab.sqrt()
                    / (1 - ab)
                    * x0
                    + c2 * xt,
                    "the weight of x_t needs sqrt(alpha_t) = sqrt(1 - beta_t)": c1 * x0
                    + (1 - beta) * (1 - ab_prev) / (1 - ab) * xt,
                },
                "it does not match the Gaussian posterior obtained by Bayes' rule",
            )
            raise AssertionError(f"{where}: posterior mean is wrong: {hint}")
    # At the first step (t = 0) nothing is left to infer: the posterior is x0 itself.
    betas = _betas(5, 0.02, 0.2)
    x0, xt = _draw((4, 2), 7), _draw((4, 2), 8)
    mean, variance = _posterior_pair(_call(fn, betas, x0, xt, 0), "t = 0", (4, 2))
    assert _close(mean, x0) and _close(variance, torch.zeros(())), (
        "t = 0: the posterior q(x_{-1} | x_0, x_0) should be the data itself (mean x0, "
        "variance 0); with 0-indexed t, alpha_bar_{t-1} at t = 0 is 1 (an empty product)"
    )
    print("✔ forward_posterior matches Bayes' rule for the Gaussian forward process (T = 5..40)")


# --------------------------------------------------------------------------- exercise (c)


def gaussian_kl(fn: Callable, n_mc: int = 200_000) -> None:
    """Exercise (c): ``fn(mean1, var1, mean2, var2)`` is KL(N(mean1, var1) || N(mean2, var2))
    per coordinate, in nats (elementwise; the arguments broadcast)."""
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(5, 3, generator=g, dtype=_F64), torch.randn(5, 3, generator=g, dtype=_F64)
    v1 = torch.rand(5, 3, generator=g, dtype=_F64) * 2 + 0.1
    v2 = torch.rand(5, 3, generator=g, dtype=_F64) * 2 + 0.1
    got = _tensor(_call(fn, m1, v1, m2, v2), "gaussian_kl", (5, 3))
    p = torch.distributions.Normal(m1, v1.sqrt())
    q = torch.distributions.Normal(m2, v2.sqrt())
    expected = torch.distributions.kl_divergence(p, q)
    if not _close(got, expected):
        reverse = torch.distributions.kl_divergence(q, p)
        hint = _hint(
            got,
            {
                "the arguments are in the wrong order: KL(p || q) averages log(p / q) under "
                "p = N(mean1, var1)": reverse,
                "the factor 1/2 is missing": 2 * expected,
                "the standard deviations were used in place of the variances": (
                    torch.distributions.kl_divergence(
                        torch.distributions.Normal(m1, v1), torch.distributions.Normal(m2, v2)
                    )
                ),
            },
            "it does not match 0.5 (log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1)",
        )
        raise AssertionError(f"gaussian_kl is wrong: {hint}")
    same = _call(fn, m1, v1, m1, v1)
    assert _close(same, torch.zeros_like(m1), atol=1e-12), (
        "the KL divergence of a Gaussian from itself should be 0"
    )
    # Monte Carlo: the average of log p(x) - log q(x) over samples of p.
    mean1, var1, mean2, var2 = (torch.tensor(v, dtype=_F64) for v in (0.3, 0.5, -0.4, 1.7))
    x = mean1 + var1.sqrt() * torch.randn(n_mc, generator=g, dtype=_F64)
    log_ratio = torch.distributions.Normal(mean1, var1.sqrt()).log_prob(
        x
    ) - torch.distributions.Normal(mean2, var2.sqrt()).log_prob(x)
    value = torch.as_tensor(_call(fn, mean1, var1, mean2, var2), dtype=_F64)
    se = log_ratio.std() / math.sqrt(n_mc)
    assert (value - log_ratio.mean()).abs() < 5 * se, (
        f"gaussian_kl = {value.item():.5f} but the Monte Carlo average of log p/q is "
        f"{log_ratio.mean().item():.5f} ± {se.item():.5f}"
    )
    print(
        "✔ gaussian_kl matches the closed form, is 0 for equal Gaussians and agrees with "
        "Monte Carlo"
    )
