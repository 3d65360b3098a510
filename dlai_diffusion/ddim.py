"""Denoising diffusion implicit models (DDIM): fast, deterministic sampling from any DDPM.

Song, Meng & Ermon (2021) keep the marginals q(x_t | x_0) of DDPM but replace the Markov
forward chain by a family of non-Markovian ones, indexed by the standard deviations sigma_t of
their reverse steps. Every member trains with the same simple loss (notes Eq. 37), so a noise
model ``model(x_t, t)`` trained as a DDPM (:mod:`dlai_diffusion.ddpm`) can sample with any
of them, and on any increasing subsequence of the steps. One step from t to an earlier step
s < t (Song et al., Eq. 12), with x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
and eps = model(x_t, t)::

    x_s = sqrt(alpha_bar_s) x0_hat                                  "predicted x_0"
          + sqrt(1 - alpha_bar_s - sigma^2) eps                     "direction to x_t"
          + sigma z,                                                 random noise
    sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)
                                                                     (Song et al., Eq. 16)

``eta = 1`` on consecutive steps is DDPM's ancestral sampler with the posterior variance
beta tilde_t; ``eta = 0`` is deterministic: an Euler step of the probability-flow ODE written
in the variables x / sqrt(alpha_bar) and sqrt(1 - alpha_bar) / sqrt(alpha_bar) (Song et al.,
Sec. 4.3; Song et al., 2021b). Being an ODE, it can also be run forwards, from the data to
the noise: :func:`encode_ddim` gives a latent that :func:`sample_ddim` maps back.

Indexing: steps are 0-indexed (``t`` in 0..T-1 is the papers' step t + 1, see
:mod:`dlai_diffusion.schedules`); the step ``s = -1`` means "to the data": alpha_bar_{-1} = 1.

=============================================  ================================================
what                                           where
=============================================  ================================================
the sub-sequence of steps tau                  :func:`ddim_timesteps` (Song et al., Sec. 4.2)
sigma_t(eta)                                   :func:`ddim_sigma` (Song et al., Eq. 16)
one step, Eq. 12                               :func:`ddim_step`
the sampler                                    :func:`sample_ddim`
deterministic inversion data -> latent         :func:`encode_ddim`
spherical interpolation of latents             :func:`slerp` (Shoemake, 1985)
the ideal noise model of mixture data          :func:`mixture_eps` (Tweedie's formula)
=============================================  ================================================

References: Song, Meng & Ermon (2021), "Denoising diffusion implicit models"; Song,
Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021b), "Score-based generative modeling through
stochastic differential equations"; Ho, Jain & Abbeel (2020), "Denoising diffusion
probabilistic models"; Shoemake (1985), "Animating rotation with quaternion curves".
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor

from ._utils import draw_normal, positive_int
from .ddpm import (
    _check_batch,
    _check_choice,
    _check_like,
    _check_schedule,
    predict_eps_from_x0,
    predict_x0_from_eps,
)
from .schedules import Schedule
from .toy import GaussianMixture

__all__ = [
    "ddim_sigma",
    "ddim_step",
    "ddim_timesteps",
    "encode_ddim",
    "mixture_eps",
    "sample_ddim",
    "slerp",
]

Model = Callable[[Tensor, Tensor], Tensor]

_SPACINGS = ("uniform", "quadratic")


# --------------------------------------------------------------------------- time steps


def ddim_timesteps(T: int, n_steps: int, spacing: str = "uniform") -> Tensor:
    """The steps tau at which a DDIM sampler calls the model: a decreasing long tensor
    (n_steps,) from T-1 down to 0 (Song et al., 2021, Sec. 4.2 and App. D.2).

    ``spacing="uniform"``: evenly spaced, t_i = round((T-1) i / (n_steps-1));
    ``"quadratic"``: t_i = round((T-1) (i / (n_steps-1))^2), denser near the data, where
    Song et al. found it better on CIFAR-10. Rounding collisions are pushed apart, so the steps
    are always distinct; ``n_steps = T`` gives every step T-1, ..., 0 and ``n_steps = 1`` the
    single step T-1 (one jump from the noise to the data). The sampler starts at the prior,
    x_{T-1} ~ N(0, I), and its last step goes from t = 0 to the data (s = -1).
    """
    T = positive_int(T, "T")
    n_steps = positive_int(n_steps, "n_steps")
    _check_choice(spacing, "spacing", _SPACINGS)
    if n_steps > T:
        raise ValueError(f"n_steps must lie in 1..T = 1..{T}, got {n_steps}")
    if n_steps == 1:
        return torch.tensor([T - 1], dtype=torch.long)
    u = torch.linspace(0.0, 1.0, n_steps, dtype=torch.float64)
    shape = u if spacing == "uniform" else u**2
    steps = torch.round((T - 1) * shape).long().tolist()
    for i in range(1, n_steps):  # push collisions apart; the top stays <= T-1 (convex shape)
        steps[i] = max(steps[i], steps[i - 1] + 1)
    return torch.tensor(steps[::-1], dtype=torch.long)


# --------------------------------------------------------------------------- one step


def _as_steps(t: object, name: str, lowest: int, T: int) -> Tensor | int:
    """An int step or a long tensor (N,) of steps in lowest..T-1."""
    if isinstance(t, bool):
        raise TypeError(f"{name} must be an int or an integer tensor of steps, got a bool")
    if isinstance(t, Tensor):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim > 1:
            raise TypeError(f"{name} must be an int or a 1-D integer tensor of steps")
        low, high = (int(t.min()), int(t.max())) if t.numel() else (lowest, lowest)
    else:
        try:
            t = low = high = operator.index(t)
        except TypeError:
            raise TypeError(f"{name} must be an int step, got {type(t).__name__}") from None
    if low < lowest or high > T - 1:
        raise ValueError(f"{name} must lie in {lowest}..{T - 1}, got values in {low}..{high}")
    return t


def _at(table: Tensor, first: float, t: Tensor | int, x: Tensor) -> Tensor:
    """table[t] with ``first`` at t = -1, shaped (N or 1, 1, ..., 1) in x's dtype and device."""
    padded = torch.cat([table.new_full((1,), first), table])
    picked = padded[t + 1 : t + 2] if isinstance(t, int) else padded[(t + 1).to(table.device)]
    return picked.to(device=x.device, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def _variance(schedule: Schedule, t, s, eta: float, x: Tensor) -> Tensor:
    """sigma^2 of Song et al., Eq. 16, from step t to step s < t, computed in the precision of
    the schedule's tables, returned shaped as :func:`_at` in x's dtype and device."""
    table = schedule.alpha_bars  # 1-D: _at then returns flat values in the table's dtype
    ab_t, ab_s = _at(table, 1.0, t, table), _at(table, 1.0, s, table)
    omab_t = _at(schedule.one_minus_alpha_bars, 0.0, t, table)
    omab_s = _at(schedule.one_minus_alpha_bars, 0.0, s, table)
    variance = eta**2 * omab_s / omab_t * (1 - ab_t / ab_s)
    return variance.to(device=x.device, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def _check_eta(eta: object) -> float:
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta):
        raise TypeError(f"eta must be a number in [0, 1], got {eta!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    return float(eta)


def ddim_sigma(schedule: Schedule, t: Tensor | int, t_prev: Tensor | int, eta: float = 1.0):
    """sigma_t(eta) = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t /
    alpha_bar_s) for a step from t to s = ``t_prev`` (Song et al., 2021, Eq. 16), float64.

    With ``eta = 1`` and s = t - 1 this is the square root of DDPM's posterior variance beta
    tilde_t (Ho et al., 2020, Eq. 7); with ``eta = 0`` the step is deterministic. A float for
    int steps, a tensor (N,) for tensors of steps; ``t_prev = -1`` (the data) gives 0.
    """
    _check_schedule(schedule)
    eta = _check_eta(eta)
    t = _as_steps(t, "t", 0, schedule.T)
    t_prev = _as_steps(t_prev, "t_prev", -1, schedule.T)
    flat = torch.ones(1, dtype=torch.float64)
    sigma = _variance(schedule, t, t_prev, eta, flat).clamp(min=0).sqrt()
    return sigma.item() if isinstance(t, int) and isinstance(t_prev, int) else sigma


def _ddim_update(model, schedule, xt, t, t_prev, eta, generator, noise, clip_x0):
    """One step of Eq. 12; returns (x_{t_prev}, x0_hat)."""
    steps = t if isinstance(t, Tensor) else torch.full((xt.shape[0],), t, dtype=torch.long)
    eps = _check_like(model(xt, steps.to(xt.device)), xt, "model(x_t, t)")
    x0 = predict_x0_from_eps(schedule, xt, t, eps)
    if clip_x0:  # clip the prediction, then use the noise consistent with it
        x0 = x0.clamp(-1.0, 1.0)
        eps = predict_eps_from_x0(schedule, xt, t, x0)
    ab_s = _at(schedule.alpha_bars, 1.0, t_prev, xt)
    omab_s = _at(schedule.one_minus_alpha_bars, 0.0, t_prev, xt)
    variance = _variance(schedule, t, t_prev, eta, xt)
    x_prev = ab_s.sqrt() * x0 + (omab_s - variance).clamp(min=0).sqrt() * eps
    if eta > 0 and bool((variance > 0).any()):
        if noise is None:
            z = draw_normal(xt.shape, generator, device=xt.device, dtype=xt.dtype)
        else:
            z = noise
        x_prev = x_prev + variance.sqrt() * z
    return x_prev, x0


def _check_step_pair(schedule: Schedule, t, t_prev):
    t = _as_steps(t, "t", 0, schedule.T)
    t_prev = _as_steps(t_prev, "t_prev", -1, schedule.T)
    if not bool(torch.all(torch.as_tensor(t_prev) < torch.as_tensor(t))):
        raise ValueError(f"t_prev must be earlier than t (t_prev < t), got t={t}, t_prev={t_prev}")
    return t, t_prev


def ddim_step(
    model: Model,
    schedule: Schedule,
    xt: Tensor,
    t: Tensor | int,
    t_prev: Tensor | int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    *,
    clip_x0: bool = False,
) -> Tensor:
    """One DDIM step from x_t to x_s, s = ``t_prev`` < t (Song et al., 2021, Eq. 12):

    x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z,

    eps = ``model(x_t, t)``, x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
    (:func:`dlai_diffusion.ddpm.predict_x0_from_eps`), sigma = :func:`ddim_sigma` (eta).
    ``t``: an int step in 0..T-1 (or a long tensor (N,)); ``t_prev`` in -1..t-1, where -1 is
    the data (alpha_bar = 1). ``eta`` in [0, 1]: 0 is deterministic (no draw), 1 on
    consecutive steps is DDPM with the posterior variance. ``noise`` z of the shape of ``xt``,
    else drawn from ``generator`` when sigma > 0. ``clip_x0=True`` clips x0_hat to [-1, 1]
    and recomputes eps from it (for image data). Any callable ``model(x, t)`` that returns a
    noise estimate of the shape of x works, e.g. a guided noise function.
    """
    _check_schedule(schedule)
    _check_batch(xt, "xt")
    eta = _check_eta(eta)
    t, t_prev = _check_step_pair(schedule, t, t_prev)
    if noise is not None:
        _check_like(noise, xt, "noise")
    return _ddim_update(model, schedule, xt, t, t_prev, eta, generator, noise, clip_x0)[0]


# --------------------------------------------------------------------------- the sampler


@torch.no_grad()
def sample_ddim(
    model: Model,
    x_init: Tensor,
    schedule: Schedule,
    n_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """DDIM sampling (Song et al., 2021, Eq. 12 on a sub-sequence of steps, Sec. 4.2) from
    x_{T-1} = ``x_init`` ~ N(0, I), with ``n_steps`` model calls.

    The steps tau are :func:`ddim_timesteps` (``n_steps``, ``spacing``); each call of the
    model moves from tau_i to tau_{i+1} with :func:`ddim_step`, the last from step 0 to the
    data. ``eta = 0`` (default) is deterministic: the same ``x_init`` always gives the same
    sample, and :func:`encode_ddim` inverts it; ``eta = 1`` with ``n_steps = T`` is ancestral
    DDPM sampling with the posterior variance (:func:`dlai_diffusion.ddpm.sample_ddpm` with
    ``variance="posterior"``, the same draws from ``generator``). ``callback({"i": i, "t": t,
    "t_prev": s, "x": x, "x0": x0_hat})`` is called after each step. Runs without gradients.
    """
    _check_schedule(schedule)
    _check_batch(x_init, "x_init")
    eta = _check_eta(eta)
    timesteps = ddim_timesteps(schedule.T, n_steps, spacing).tolist()
    x = x_init
    for i, (t, s) in enumerate(zip(timesteps, [*timesteps[1:], -1], strict=True)):
        x, x0 = _ddim_update(model, schedule, x, t, s, eta, generator, None, clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "t_prev": s, "x": x, "x0": x0})
    return x


@torch.no_grad()
def encode_ddim(
    model: Model,
    x0: Tensor,
    schedule: Schedule,
    n_steps: int = 50,
    spacing: str = "uniform",
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Deterministic DDIM inversion: the latent x_{T-1} that ``sample_ddim(model, latent,
    schedule, n_steps, eta=0)`` maps (approximately) back to the data ``x0``.

    The eta = 0 step is an Euler step of the probability-flow ODE (Song et al., 2021, Eq. 13
    and Sec. 5.4), so it can be run from the data towards the noise, through the same steps
    tau in increasing order. From step s to the next step t > s:
    x_t = sqrt(alpha_bar_t) x0_hat + sqrt(1 - alpha_bar_t) eps with eps = model(x_s, t): the
    model is evaluated at the larger step t, where the sampler evaluates it too (the data has
    no step -1), so that encoding and decoding use the same noise levels. The round trip is
    exact as n_steps grows (error of order 1 / n_steps). ``callback({"i", "t", "x", "x0"})``
    after each step. Runs without gradients.
    """
    _check_schedule(schedule)
    _check_batch(x0, "x0")
    timesteps = ddim_timesteps(schedule.T, n_steps, spacing).flip(0).tolist()
    x = x0
    for i, (s, t) in enumerate(zip([-1, *timesteps[:-1]], timesteps, strict=True)):
        steps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = _check_like(model(x, steps), x, "model(x, t)")
        ab_s = _at(schedule.alpha_bars, 1.0, s, x)
        omab_s = _at(schedule.one_minus_alpha_bars, 0.0, s, x)
        x0_hat = (x - omab_s.sqrt() * eps) / ab_s.sqrt()
        ab_t = _at(schedule.alpha_bars, 1.0, t, x)
        omab_t = _at(schedule.one_minus_alpha_bars, 0.0, t, x)
        x = ab_t.sqrt() * x0_hat + omab_t.sqrt() * eps
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0_hat})
    return x


# --------------------------------------------------------------------------- ideal model


def mixture_eps(mixture: GaussianMixture, schedule: Schedule) -> Model:
    """The optimal noise model E[eps | x_t] = -sqrt(1 - alpha_bar_t) grad log q_t(x_t) when
    the data follow ``mixture`` (Tweedie's formula; notes Eq. 37 is minimised by it): a
    ``model(x, t)`` for any sampler of this module or of :mod:`dlai_diffusion.ddpm`, with no
    training error, so that what remains is the error of the sampler. q_t is the exact noised
    mixture :meth:`~dlai_diffusion.toy.GaussianMixture.diffuse` at each sample's step.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a toy.GaussianMixture, got {type(mixture).__name__}")
    _check_schedule(schedule)

    def eps(x: Tensor, t: Tensor) -> Tensor:
        steps = schedule.check_steps(t, x.shape[0])
        out = torch.empty_like(x)
        for step in steps.unique().tolist():
            rows = steps.to(x.device) == step
            signal = schedule.sqrt_alpha_bars[step].item()
            noise = schedule.sqrt_one_minus_alpha_bars[step].item()
            out[rows] = -noise * mixture.diffuse(signal, noise).score(x[rows])
        return out

    return eps


# --------------------------------------------------------------------------- latents


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """Spherical linear interpolation (Shoemake, 1985) between latents, as used by Song et al.
    (2021, Sec. 5.3) to interpolate DDIM latents:

    slerp = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1,

    theta the angle between z0 and z1. Gaussian latents in high dimension lie near the sphere
    of radius sqrt(D); straight-line interpolation cuts inside it (its midpoint has norm about
    sqrt(D / 2) for independent latents), slerp stays on it. ``z0``, ``z1``: tensors of the
    same shape; with two or more axes each row ``z[i]`` is one latent, a 1-D tensor is one
    latent. ``alpha``: a number in [0, 1] or a tensor of them that broadcasts against the
    rows, shape (N,). Nearly parallel latents (theta < 1e-4) are interpolated linearly.
    """
    for name, z in (("z0", z0), ("z1", z1)):
        if not isinstance(z, Tensor) or not z.is_floating_point() or z.ndim < 1:
            raise TypeError(f"{name} must be a floating torch.Tensor, got {type(z).__name__}")
    if z0.shape != z1.shape:
        raise ValueError(f"z1 must have the shape of z0 {tuple(z0.shape)}, got {tuple(z1.shape)}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | Tensor):
        raise TypeError(f"alpha must be a number or a tensor in [0, 1], got {alpha!r}")
    alpha = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device)
    if alpha.numel() and not bool(((alpha >= 0) & (alpha <= 1)).all()):
        raise ValueError("alpha must lie in [0, 1]")
    rows = z0.reshape(1, -1) if z0.ndim == 1 else z0.flatten(1)
    other = z1.reshape(1, -1) if z1.ndim == 1 else z1.flatten(1)
    cos = (rows * other).sum(1) / (rows.norm(dim=1) * other.norm(dim=1)).clamp_min(1e-30)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    alpha = alpha.reshape(-1) if alpha.ndim else alpha.reshape(1)
    if alpha.shape[0] not in (1, rows.shape[0]):
        raise ValueError(
            f"alpha must be a number or a tensor of shape ({rows.shape[0]},), "
            f"got shape {tuple(alpha.shape)}"
        )
    safe = theta.clamp_min(1e-4)
    w0 = torch.where(theta < 1e-4, 1 - alpha, torch.sin((1 - alpha) * safe) / torch.sin(safe))
    w1 = torch.where(theta < 1e-4, alpha, torch.sin(alpha * safe) / torch.sin(safe))
    out = w0[:, None] * rows + w1[:, None] * other
    return out.reshape(z0.shape)
