"""Checks for the exercises of lecture 09: the DDIM step and Hutchinson's divergence estimate.

Each check calls the student's function, compares the result with an independent reference
and prints a short confirmation, or raises ``AssertionError`` saying what is wrong. The
references: Eq. 12 of Song, Meng & Ermon (2021) written out term by term with the same noise
(alpha_bar_{-1} = 1 for the step to the data), and, for the divergence, the average over the
same probes of v^T (d f / d x) v built from the full Jacobian (``torch.autograd.functional``),
plus the fact that Rademacher probes give the trace of a diagonal Jacobian exactly.

References: Song, Meng & Ermon (2021), "Denoising diffusion implicit models"; Hutchinson
(1990), "A stochastic estimator of the trace of the influence matrix for Laplacian smoothing
splines"; Grathwohl et al. (2019), "FFJORD".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import call_student as _call
from . import checked_tensor as _tensor
from . import close as _close
from . import fixed_mlp as _net
from . import name_mistake as _hint
from . import seeded_normal as _draw

__all__ = [
    "ddim_step",
    "hutchinson_divergence",
    "reference_ddim_step",
    "reference_hutchinson_divergence",
]

_F64 = torch.float64


def _alpha_bars(T: int) -> Tensor:
    """alpha_bar_t of a linear schedule from 1e-3 to 0.2 (0-indexed), by a running product."""
    return torch.cumprod(1 - torch.linspace(1e-3, 0.2, T, dtype=_F64), 0)


# --------------------------------------------------------------------------- exercise (a)


_LAST_ENTRY = (
    "at s = -1, alpha_bars[s] reads the LAST entry of the table; the step to the data uses "
    "alpha_bar_{-1} = 1"
)


def _ddim_terms(alpha_bars, t, s, eta):
    ab_t = alpha_bars[t]
    ab_s = alpha_bars[s] if s >= 0 else torch.ones((), dtype=alpha_bars.dtype)
    sigma = eta * torch.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
    return ab_t, ab_s, sigma


def reference_ddim_step(
    eps_model, alpha_bars: Tensor, xt: Tensor, t: int, s: int, eta: float, z: Tensor
) -> Tensor:
    """Song et al. (2021), Eq. 12: sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps + sigma z,
    sigma from their Eq. 16, alpha_bar_{-1} = 1."""
    ab_t, ab_s, sigma = _ddim_terms(alpha_bars, t, s, eta)
    eps = eps_model(xt, torch.full((xt.shape[0],), t, dtype=torch.long))
    x0 = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    return ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).sqrt() * eps + sigma * z


def _ddim_mistakes(eps_model, alpha_bars, xt, t, s, eta, z) -> dict[str, Tensor]:
    ab_t, ab_s, sigma = _ddim_terms(alpha_bars, t, s, eta)
    eps = eps_model(xt, torch.full((xt.shape[0],), t, dtype=torch.long))
    x0 = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    mistakes = {}
    if s == -1 and eta == 0:
        wrong = alpha_bars[-1]
        mistakes[_LAST_ENTRY] = wrong.sqrt() * x0 + (1 - wrong).sqrt() * eps
    if eta > 0:
        _, _, sigma_one = _ddim_terms(alpha_bars, t, s, 1.0)
        mistakes["sigma must be multiplied by eta (Eq. 16)"] = (
            ab_s.sqrt() * x0 + (1 - ab_s - sigma_one**2).sqrt() * eps + sigma_one * z
        )
        mistakes[
            "the direction term keeps the variance 1 - alpha_bar_s - sigma^2, not 1 - alpha_bar_s"
        ] = ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps + sigma * z
        mistakes["the fresh noise is missing: add sigma z"] = (
            ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).sqrt() * eps
        )
        mistakes["z is scaled by sigma^2; it must be scaled by the standard deviation sigma"] = (
            ab_s.sqrt() * x0 + (1 - ab_s - sigma**2).sqrt() * eps + sigma**2 * z
        )
    x0_no_sqrt = (xt - (1 - ab_t).sqrt() * eps) / ab_t
    mistakes["x0_hat divides by alpha_bar_t; it divides by sqrt(alpha_bar_t)"] = (
        ab_s.sqrt() * x0_no_sqrt + (1 - ab_s - sigma**2).sqrt() * eps + sigma * z
    )
    return mistakes


def ddim_step(fn: Callable) -> None:
    """Exercise (a): ``fn(eps_model, alpha_bars, xt, t, s, eta, z)`` is Eq. 12 of Song et al."""
    cases = [
        (50, 30, 10, 0.0, _F64, 1),
        (50, 30, 29, 1.0, _F64, 2),
        (50, 49, 20, 0.5, _F64, 3),
        (50, 7, -1, 0.0, _F64, 4),
        (50, 3, -1, 1.0, _F64, 5),
        (20, 19, 4, 1.0, torch.float32, 6),
    ]
    for T, t, s, eta, dtype, seed in cases:
        where = f"T = {T}, t = {t}, s = {s}, eta = {eta}, {dtype}"
        alpha_bars = _alpha_bars(T)
        net = _net(2, dtype, seed)
        xt, z = _draw((16, 2), seed, dtype), _draw((16, 2), 50 + seed, dtype)
        with torch.no_grad():
            got = _call(fn, net, alpha_bars, xt, t, s, eta, z)
            if s == -1 and isinstance(got, Tensor) and not torch.isfinite(got).all():
                raise AssertionError(f"{where}: the result has NaNs: {_LAST_ENTRY}")
            got = _tensor(got, "ddim_step", (16, 2))
            expected = reference_ddim_step(net, alpha_bars.to(dtype), xt, t, s, eta, z)
            tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else {}
            if not _close(got, expected, **tolerance):
                mistakes = _ddim_mistakes(net, alpha_bars.to(dtype), xt, t, s, eta, z)
                hint = _hint(got, mistakes, "it does not match Eq. 12 with sigma of Eq. 16")
                raise AssertionError(f"{where}: ddim_step is wrong: {hint}")
    # eta = 0 is deterministic: the noise must not matter.
    alpha_bars, net = _alpha_bars(30), _net(3, _F64, 7)
    xt = _draw((8, 3), 7)
    with torch.no_grad():
        one = _call(fn, net, alpha_bars, xt, 20, 5, 0.0, _draw((8, 3), 8))
        other = _call(fn, net, alpha_bars, xt, 20, 5, 0.0, _draw((8, 3), 9))
    assert _close(one, other), "with eta = 0 the step must not depend on z (sigma = 0)"
    print("✔ ddim_step matches Eq. 12 for eta in {0, 0.5, 1}, skipped steps and s = -1")


# --------------------------------------------------------------------------- exercise (b)


def reference_hutchinson_divergence(velocity, x: Tensor, t: Tensor, probes: Tensor) -> Tensor:
    """mean_p probes[p]^T J probes[p] per sample, J the full Jacobian of velocity(., t) at x
    (the samples do not interact, so the Jacobian is block diagonal)."""
    n, d = x.shape
    values = []
    for i in range(n):
        jac = torch.autograd.functional.jacobian(
            lambda y, i=i: velocity(y[None], t[i : i + 1])[0], x[i]
        )
        values.append(torch.einsum("pa,ab,pb->p", probes[:, i], jac, probes[:, i]).mean())
    return torch.stack(values)


def _exact_divergence(velocity, x: Tensor, t: Tensor) -> Tensor:
    """The trace itself: the D basis vectors as probes, summed instead of averaged."""
    eye = torch.eye(x.shape[1], dtype=x.dtype)[:, None, :].expand(-1, len(x), -1)
    return x.shape[1] * reference_hutchinson_divergence(velocity, x, t, eye)


def hutchinson_divergence(fn: Callable) -> None:
    """Exercise (b): ``fn(velocity, x, t, probes)`` averages v^T (d velocity / d x) v over the
    given probes v = probes[p] (shape (P, N, D)), one value per sample (N,)."""
    for n, d, n_probes, seed in [(12, 2, 1, 1), (10, 3, 4, 2), (6, 5, 7, 3)]:
        where = f"N = {n}, D = {d}, {n_probes} probe(s)"
        net = _net(d, _F64, seed)
        x = _draw((n, d), seed)
        t = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=_F64)
        signs = torch.randint(0, 2, (n_probes, n, d), generator=torch.Generator().manual_seed(seed))
        probes = (2 * signs - 1).to(_F64)
        got = _tensor(_call(fn, net, x, t, probes), "hutchinson_divergence", (n,)).detach()
        expected = reference_hutchinson_divergence(net, x, t, probes)
        if not _close(got, expected, rtol=1e-6, atol=1e-9):
            ones = reference_hutchinson_divergence(net, x, t, torch.ones(1, n, d, dtype=_F64))
            mistakes = {
                "the probes are summed: average the P estimates": n_probes * expected,
                "this is the exact divergence, not the estimate with the given probes": (
                    _exact_divergence(net, x, t)
                ),
                "this is 1^T J 1 (the gradient of f.sum() summed), not v^T J v with the probes": (
                    ones
                ),
            }
            hint = _hint(got, mistakes, "it does not match mean_p v_p^T (d f/d x) v_p")
            raise AssertionError(f"{where}: hutchinson_divergence is wrong: {hint}")
    # For a diagonal Jacobian every Rademacher probe gives the divergence exactly.
    scales = torch.tensor([0.5, -2.0, 1.5], dtype=_F64)

    def diagonal(y, t):
        return torch.sin(y) * scales * (1 + t[:, None])

    x = _draw((9, 3), 11)
    t = torch.linspace(0, 1, 9, dtype=_F64)
    probes = 2 * torch.randint(0, 2, (1, 9, 3), generator=torch.Generator().manual_seed(4)) - 1
    got = _tensor(_call(fn, diagonal, x, t, probes.to(_F64)), "hutchinson_divergence", (9,))
    exact = (torch.cos(x) * scales).sum(1) * (1 + t)
    assert _close(got.detach(), exact), (
        "for a velocity with a diagonal Jacobian, one Rademacher probe gives the divergence "
        "exactly (v_i^2 = 1); check that velocity is called as velocity(x, t) with the given t"
    )
    print(
        "✔ hutchinson_divergence averages v^T J v over the given probes (D = 2, 3, 5; 1-7 probes)"
    )
