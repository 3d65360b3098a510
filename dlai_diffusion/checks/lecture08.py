"""Checks for the exercises of lecture 08: the VP marginal, Euler-Maruyama, the reverse SDE.

Each check calls the student's function on several inputs and compares the result with an
independent reference: the VP kernel in closed form (exp(-B(t)/2), written out), one
Euler-Maruyama step written out with the same noise, Anderson's reverse drift, and the exact
8-Gaussian mixture for the samples of a whole reverse run. It prints a short confirmation or
raises ``AssertionError`` that names the usual mistake.
"""

from __future__ import annotations

import math

import torch

from .. import metrics
from ..sde import VPSDE
from ..toy import eight_gaussians
from . import as_float64 as _as_tensor
from . import call_student as _call
from . import close as _close
from . import name_mistake as _hint

__all__ = ["euler_maruyama_step", "reverse_samples", "reverse_sde_step", "vp_marginal"]

_F64 = torch.float64


# --------------------------------------------------------------------------- exercise 8.2


def vp_marginal(fn) -> None:
    """``fn(t, beta_min, beta_max) -> (alpha, sigma)`` for a tensor of times t."""
    t = torch.tensor([0.0, 1e-3, 0.1, 0.37, 0.8, 1.0], dtype=_F64)
    for beta_min, beta_max in ((0.1, 20.0), (1.0, 1.0), (0.5, 5.0)):
        out = _call(fn, t.clone(), beta_min, beta_max)
        assert isinstance(out, tuple | list) and len(out) == 2, (
            "vp_marginal should return a pair (alpha, sigma)"
        )
        alpha, sigma = (_as_tensor(v, "alpha and sigma") for v in out)
        integral = beta_min * t + 0.5 * (beta_max - beta_min) * t**2  # B(t), in closed form
        ref_alpha, ref_sigma = torch.exp(-0.5 * integral), torch.sqrt(-torch.expm1(-integral))
        if not _close(alpha, ref_alpha, rtol=1e-6):
            hint = "the signal scale alpha(t) = exp(-B(t) / 2), B(t) = int_0^t beta(s) ds"
            if _close(alpha, torch.exp(-integral)):
                hint = "alpha = exp(-B(t)) is alpha squared: the mean scale has exp(-B / 2)"
            elif _close(alpha, torch.exp(-0.5 * beta_max * t)) or _close(
                alpha, torch.exp(-0.5 * (beta_min * t + (beta_max - beta_min) * t**2))
            ):
                hint = (
                    "B(t) = beta_min t + (beta_max - beta_min) t^2 / 2: integrate the linear "
                    "beta(s) = beta_min + s (beta_max - beta_min) from 0 to t"
                )
            raise AssertionError(
                f"alpha is wrong for beta_min={beta_min}, beta_max={beta_max} "
                f"(expected {ref_alpha.tolist()}, got {alpha.tolist()}): {hint}"
            )
        if not _close(sigma, ref_sigma, rtol=1e-6, atol=1e-9):
            hint = "sigma(t)^2 = 1 - alpha(t)^2 (variance preserving)"
            if _close(sigma, 1 - ref_alpha**2) or _close(sigma, 1 - ref_alpha):
                hint = "sigma is a standard deviation: take the square root of 1 - alpha^2"
            raise AssertionError(f"sigma is wrong for beta_min={beta_min}: {hint}")
    print("✔ VP marginal: alpha(t) = exp(-B(t) / 2), sigma(t) = sqrt(1 - alpha(t)^2)")


# --------------------------------------------------------------------------- exercise 8.3


def _column(t, y: torch.Tensor) -> torch.Tensor:
    """A time given as a number or as one value per sample (N,), shaped to broadcast with y."""
    t = torch.as_tensor(t, dtype=y.dtype)
    return t.reshape(-1, *[1] * (y.ndim - 1)) if t.ndim == 1 else t


def _em_cases():
    g = torch.Generator().manual_seed(80)
    x = torch.randn(5, 2, generator=g, dtype=_F64)
    z = torch.randn(5, 2, generator=g, dtype=_F64)

    def drift(y, t):
        return -1.5 * y + torch.sin(_column(t, y))

    def diffusion(t):
        return 0.5 + float(t)

    return x, z, drift, diffusion


def euler_maruyama_step(fn) -> None:
    """``fn(drift, diffusion, x, t, dt, z)`` = x + drift(x, t) dt + diffusion(t) sqrt(|dt|) z."""
    x, z, drift, diffusion = _em_cases()
    for t, dt in ((0.3, 0.01), (1.0, 0.25), (0.8, -0.05)):
        got = _as_tensor(_call(fn, drift, diffusion, x.clone(), t, dt, z.clone()), "the step")
        assert got.shape == x.shape, f"the step should keep the shape {tuple(x.shape)}"
        g = diffusion(t)
        expected = x + drift(x, t) * dt + g * math.sqrt(abs(dt)) * z
        if _close(got, expected, rtol=1e-6, atol=1e-9):
            continue
        hints = {
            "the noise is scaled by dt instead of sqrt(|dt|): over a step dt, Brownian motion "
            "moves by about sqrt(dt), not dt": x + drift(x, t) * dt + g * dt * z,
            "the noise is missing its diffusion coefficient g(t)": x
            + drift(x, t) * dt
            + math.sqrt(abs(dt)) * z,
            "the noise term is missing": x + drift(x, t) * dt,
            "the drift should be multiplied by dt": x + drift(x, t) + g * math.sqrt(abs(dt)) * z,
            "the diffusion enters squared: use g(t), not g(t)^2, in front of sqrt(|dt|) z": x
            + drift(x, t) * dt
            + g**2 * math.sqrt(abs(dt)) * z,
        }
        if not bool(torch.isfinite(got).all()):
            raise AssertionError(
                f"the step gives NaN for dt = {dt} < 0 (a step backwards in time): the noise "
                "has variance |dt|, so use sqrt(abs(dt))"
            )
        hint = _hint(got, hints, "expected x + drift(x, t) * dt + diffusion(t) * sqrt(|dt|) * z")
        raise AssertionError(f"wrong Euler-Maruyama step at t={t}, dt={dt}: {hint}")
    print("✔ Euler-Maruyama step: x + f(x, t) dt + g(t) sqrt(|dt|) z, forwards and backwards")


# --------------------------------------------------------------------------- exercise 8.4


def reverse_sde_step(fn) -> None:
    """``fn(sde, score_fn, x, t, dt, z)``: one Euler-Maruyama step of the reverse SDE from t
    to t - dt, x - [f(x, t) - g(t)^2 score(x, t)] dt + g(t) sqrt(dt) z."""
    sde = VPSDE(0.5, 12.0)
    g = torch.Generator().manual_seed(81)
    x = torch.randn(6, 2, generator=g, dtype=_F64)
    z = torch.randn(6, 2, generator=g, dtype=_F64)

    def score(y, t):
        return -y / (1.0 + _column(t, y)) + 0.3

    for t, dt in ((0.9, 0.01), (0.2, 0.05)):
        got = _as_tensor(_call(fn, sde, score, x.clone(), t, dt, z.clone()), "the step")
        assert got.shape == x.shape, f"the step should keep the shape {tuple(x.shape)}"
        f = sde.drift(x, t)
        g2 = float(sde.diffusion(t)) ** 2
        s = score(x, t)
        noise = math.sqrt(g2 * dt) * z
        expected = x - (f - g2 * s) * dt + noise
        if _close(got, expected, rtol=1e-6, atol=1e-9):
            continue
        hints = {
            "the score term has the wrong sign: the reverse drift is f - g^2 * score, and the "
            "step goes backwards, x - (f - g^2 score) dt": x - (f + g2 * s) * dt + noise,
            "the whole drift has the wrong sign: moving from t to t - dt subtracts "
            "(f - g^2 score) dt": x + (f - g2 * s) * dt + noise,
            "the score is weighted by g^2 / 2: that is the probability-flow ODE; the reverse "
            "SDE needs the full g(t)^2": x - (f - 0.5 * g2 * s) * dt + noise,
            "the score should be weighted by g(t)^2, not g(t)": x
            - (f - math.sqrt(g2) * s) * dt
            + noise,
            "the forward drift f(x, t) is missing": x + g2 * s * dt + noise,
            "the noise should be g(t) sqrt(dt) z": x - (f - g2 * s) * dt + math.sqrt(dt) * z,
            "the noise term is missing": x - (f - g2 * s) * dt,
        }
        default = "expected x - (f(x, t) - g(t)^2 * score(x, t)) * dt + g(t) * sqrt(dt) * z"
        raise AssertionError(f"wrong reverse step at t={t}, dt={dt}: {_hint(got, hints, default)}")
    print("✔ reverse SDE step: x - [f - g^2 score] dt + g sqrt(dt) z")


def reverse_samples(samples, n_min: int = 500) -> None:
    """Samples of ``toy.eight_gaussians()`` drawn by the reverse SDE with the exact score."""
    x = _as_tensor(samples, "the samples")
    assert x.ndim == 2 and x.shape[1] == 2, (
        f"samples should have shape (n, 2), got {tuple(x.shape)}"
    )
    assert x.shape[0] >= n_min, f"draw at least {n_min} samples, got {x.shape[0]}"
    assert bool(torch.isfinite(x).all()), "the samples contain NaN or inf"
    mixture = eight_gaussians(dtype=_F64)
    radius = x.norm(dim=1).mean().item()
    assert radius < 10, (
        f"the samples fly apart (mean radius {radius:.3g}): check the sign of the reverse drift"
    )
    n = x.shape[0]
    g = torch.Generator().manual_seed(82)
    floor = max(
        metrics.energy_distance(mixture.sample(n, g), mixture.sample(n, g)) for _ in range(3)
    )
    distance = metrics.energy_distance(x, mixture.sample(n, g))
    assert distance < 4 * floor + 5e-3, (
        f"the samples are far from the 8 Gaussians (energy distance {distance:.3g}, while two "
        f"true samples differ by about {floor:.2g}; mean radius {radius:.2f}, expected 1.4): "
        "start from the prior N(0, I), step from t = 1 down to a small eps with the exact score "
        "sde.mixture_score(mixture, vp), and use enough steps (a few hundred)"
    )
    print(f"✔ reverse SDE samples match the 8 Gaussians (energy distance {distance:.2g})")
