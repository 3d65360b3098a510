"""Checks for the exercises of lecture 07: denoising diffusion probabilistic models (DDPM).

Each check calls the student's function, compares the result with an independent reference
and prints a short confirmation, or raises ``AssertionError`` saying what is wrong. The
references: the simple loss recomputed from the same steps and noise with the signal and noise
scales built by a running product; the ancestral step recomputed by the other route to the
same mean, the forward posterior mean at the predicted clean data (Ho et al., 2020, Eq. 7 and
the inverse of Eq. 4), with the same noise.

References: Ho, Jain & Abbeel (2020), "Denoising diffusion probabilistic models"; Nichol &
Dhariwal (2021), "Improved denoising diffusion probabilistic models".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import assert_trainable as _trainable
from . import call_student as _call
from . import close as _close
from . import fixed_mlp as _eps_net
from . import name_mistake as _hint
from . import seeded_normal as _draw

__all__ = ["ancestral_step", "reference_ancestral_step", "reference_simple_loss", "simple_loss"]

_F64 = torch.float64


def _alpha_bars(betas: Tensor) -> Tensor:
    """alpha_bar_t = (1 - beta_0) ... (1 - beta_t) by a running product (0-indexed t)."""
    out, running = [], torch.ones((), dtype=betas.dtype)
    for beta in betas:
        running = running * (1 - beta)
        out.append(running)
    return torch.stack(out)


# --------------------------------------------------------------------------- exercise (a)


def reference_simple_loss(eps_model, betas: Tensor, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Notes Eq. 37 (Ho et al., Eq. 14): mean over batch and coordinates of
    (eps - eps_model(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t))^2."""
    ab = _alpha_bars(betas)[t].to(x0.dtype).reshape(-1, *[1] * (x0.ndim - 1))
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return (eps - eps_model(xt, t)).pow(2).mean()


def simple_loss(fn: Callable) -> None:
    """Exercise (a): ``fn(eps_model, betas, x0, t, eps)`` is the simple loss of notes Eq. 37."""
    cases = [(2, 50, _F64, 1), (3, 10, _F64, 2), (2, 100, torch.float32, 3)]
    for dim, T, dtype, seed in cases:
        where = f"d = {dim}, T = {T}, {dtype}"
        betas = torch.linspace(1e-3, 0.2, T, dtype=_F64)
        net = _eps_net(dim, dtype, seed)
        x0, eps = _draw((32, dim), seed, dtype), _draw((32, dim), 40 + seed, dtype)
        t = torch.randint(0, T, (32,), generator=torch.Generator().manual_seed(seed))
        t[0], t[1] = 0, T - 1
        loss = _call(fn, net, betas, x0, t, eps)
        assert isinstance(loss, Tensor) and loss.numel() == 1, (
            f"{where}: simple_loss should return a scalar tensor, got "
            + (f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__)
        )
        with torch.no_grad():
            expected = reference_simple_loss(net, betas, x0, t, eps)
            got = loss.detach().reshape(())
            if not _close(got, expected, rtol=1e-5, atol=1e-7):
                ab = _alpha_bars(betas)[t].to(dtype).reshape(-1, 1)
                xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
                prev = torch.cat([torch.ones(1, dtype=_F64), _alpha_bars(betas)[:-1]])
                ab_prev = prev[t].to(dtype).reshape(-1, 1)
                xt_prev = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
                mistakes = {
                    "the squared error is summed over the coordinates; average it (mean over "
                    "batch and coordinates)": expected * dim,
                    "the network must predict the noise eps, not the clean data x0": (
                        x0 - net(xt, t)
                    )
                    .pow(2)
                    .mean(),
                    "the network is evaluated at x0; evaluate it at the noisy x_t": (
                        eps - net(x0, t)
                    )
                    .pow(2)
                    .mean(),
                    "the square roots are missing: x_t = sqrt(alpha_bar_t) x0 + "
                    "sqrt(1 - alpha_bar_t) eps": (eps - net(ab * x0 + (1 - ab) * eps, t))
                    .pow(2)
                    .mean(),
                    "off by one: with 0-indexed t, alpha_bar_t includes the factor 1 - betas[t]": (
                        eps - net(xt_prev, t)
                    )
                    .pow(2)
                    .mean(),
                }
                hint = _hint(got, mistakes, "it does not match notes Eq. 37 with the same t, eps")
                raise AssertionError(
                    f"{where}: simple_loss = {got.item():.6g}, expected {expected.item():.6g}: "
                    f"{hint}"
                )
        _trainable(loss, net, where, "eps_model")
    print("✔ simple_loss matches Eq. 37 with the same steps and noise (d = 2, 3; T = 10..100)")


# --------------------------------------------------------------------------- exercise (b)


def reference_ancestral_step(
    eps_model, betas: Tensor, xt: Tensor, t: int, z: Tensor, variance: str
) -> Tensor:
    """x_{t-1} = mu + sigma_t z, mu the forward posterior mean at x0_hat (equal to notes
    Eq. 36), sigma_t^2 = beta_t or beta tilde_t, and no noise at t = 0 (notes Eq. 38)."""
    ab = _alpha_bars(betas)
    ab_t = ab[t]
    ab_prev = ab[t - 1] if t > 0 else torch.ones((), dtype=betas.dtype)
    beta = betas[t]
    steps = torch.full((xt.shape[0],), t, dtype=torch.long)
    eps = eps_model(xt, steps)
    x0_hat = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    mean = (ab_prev.sqrt() * beta * x0_hat + (1 - beta).sqrt() * (1 - ab_prev) * xt) / (1 - ab_t)
    if t == 0:
        return mean
    var = beta if variance == "beta" else beta * (1 - ab_prev) / (1 - ab_t)
    return mean + var.sqrt() * z


def ancestral_step(fn: Callable) -> None:
    """Exercise (b): ``fn(eps_model, betas, xt, t, z, variance)`` is one step of notes
    Eq. 38 with the mean of Eq. 36; ``variance`` is ``"beta"`` or ``"posterior"``."""
    cases = [
        (50, 30, "beta", 1),
        (50, 30, "posterior", 2),
        (20, 19, "beta", 3),
        (20, 1, "posterior", 4),
    ]
    for T, t, variance, seed in cases:
        where = f"T = {T}, t = {t}, variance = {variance!r}"
        betas = torch.linspace(1e-3, 0.2, T, dtype=_F64)
        net = _eps_net(2, _F64, seed)
        xt, z = _draw((16, 2), seed), _draw((16, 2), 60 + seed)
        with torch.no_grad():
            got = _call(fn, net, betas, xt, t, z, variance)
            assert isinstance(got, Tensor) and tuple(got.shape) == (16, 2), (
                f"{where}: ancestral_step should return a tensor of shape (16, 2)"
            )
            expected = reference_ancestral_step(net, betas, xt, t, z, variance)
            if not _close(got, expected):
                other = "posterior" if variance == "beta" else "beta"
                mean = reference_ancestral_step(net, betas, xt, t, 0 * z, variance)
                hint = _hint(
                    got,
                    {
                        f"the variance is the one of variance={other!r}": (
                            reference_ancestral_step(net, betas, xt, t, z, other)
                        ),
                        "the noise is missing: add sigma_t z for t > 0": mean,
                        "sigma_t^2 was used in place of sigma_t: multiply z by the standard "
                        "deviation": mean + (expected - mean).pow(2) / z,
                    },
                    "it does not match mu_theta of Eq. 36 plus sigma_t z (Eq. 38)",
                )
                raise AssertionError(f"{where}: ancestral_step is wrong: {hint}")
    # The last step (t = 0) returns the mean: no noise is added.
    betas = torch.linspace(1e-3, 0.2, 10, dtype=_F64)
    net = _eps_net(2, _F64, 9)
    xt = _draw((8, 2), 9)
    with torch.no_grad():
        for variance in ("beta", "posterior"):
            got = _call(fn, net, betas, xt, 0, _draw((8, 2), 10), variance)
            expected = reference_ancestral_step(net, betas, xt, 0, _draw((8, 2), 10), variance)
            assert _close(got, expected), (
                f"t = 0, variance = {variance!r}: the last step must add no noise; it returns "
                "the mean mu_theta(x_0, 0)"
            )
    print("✔ ancestral_step matches Eq. 36 and 38 for both variances, with no noise at t = 0")
