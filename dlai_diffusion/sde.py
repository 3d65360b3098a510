"""Continuous-time diffusion: stochastic differential equations, their reversal, the
probability-flow ODE and exact likelihoods.

A forward SDE dx = f(x, t) dt + g(t) dW on t in [0, T] turns data into noise (notes Sec. 8;
Song et al., 2021). Everything the course does with it lives here:

==========================================  ==================================================
what                                        where
==========================================  ==================================================
Euler-Maruyama for any Ito SDE              :func:`euler_maruyama`, :func:`brownian_paths`
the 1D Fokker-Planck equation (FD solver)   :func:`fokker_planck_1d`
forward SDEs with closed-form marginals     :class:`SDE`, :class:`VPSDE` (DDPM's limit),
                                            :class:`VESDE` (NCSN's limit),
                                            :class:`OrnsteinUhlenbeck`
exact scores of a noised Gaussian mixture   :func:`mixture_score`, :func:`mixture_log_prob`
Anderson's reverse-time SDE                 :func:`reverse_drift`, :func:`sample_reverse_sde`
probability-flow ODE                        :func:`probability_flow_drift`,
                                            :func:`sample_probability_flow`
ODE solvers (own Dormand-Prince RK45)       :func:`solve_ode`
divergences, exact and Hutchinson's         :func:`exact_divergence`,
                                            :func:`hutchinson_divergence`
exact log-likelihood, bits per dimension    :func:`log_likelihood`, :func:`bits_per_dim`
continuous denoising score matching         :func:`dsm_loss`, :func:`importance_times`
a noise-predicting network as a score       :class:`EpsScore`
a discrete DDPM noise model as a score      :func:`score_from_eps`
==========================================  ==================================================

Conventions. Time is continuous, t in [0, T] (T = ``sde.T`` = 1 for VP and VE); t = 0 is the
data. A *continuous score model* is ``score_fn(x, t)`` with ``x`` of shape (N, ...) and ``t``
a float tensor of shape (N,); it returns a tensor of the shape of ``x``. Drifts are
``drift(x, t)`` with the same arguments. The functions that integrate in time call them with
one time per sample, ``t`` of shape (N,), in the dtype and on the device of ``x``.

References: Anderson (1982), "Reverse-time diffusion equation models"; Song, Sohl-Dickstein,
Kingma, Kumar, Ermon & Poole (2021), "Score-based generative modeling through stochastic
differential equations"; Song, Durkan, Murray & Ermon (2021), "Maximum likelihood training of
score-based diffusion models"; Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud (2019),
"FFJORD"; Hutchinson (1990), "A stochastic estimator of the trace of the influence matrix";
Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae"; Kloeden & Platen (1992),
"Numerical solution of stochastic differential equations".
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ._utils import check_batch, draw_normal, draw_uniform, output_like, positive_int
from .ddpm import eps_to_score
from .schedules import Schedule
from .score_matching import _exact_trace, _probe_forms
from .toy import GaussianMixture

__all__ = [
    "SDE",
    "EpsScore",
    "OrnsteinUhlenbeck",
    "VESDE",
    "VPSDE",
    "bits_per_dim",
    "brownian_paths",
    "dsm_loss",
    "euler_maruyama",
    "exact_divergence",
    "fokker_planck_1d",
    "hutchinson_divergence",
    "importance_times",
    "log_likelihood",
    "mixture_log_prob",
    "mixture_score",
    "probability_flow_drift",
    "reverse_drift",
    "sample_probability_flow",
    "sample_reverse_sde",
    "score_from_eps",
    "solve_ode",
]

Drift = Callable[[Tensor, Tensor], Tensor]
ScoreFn = Callable[[Tensor, Tensor], Tensor]

_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- validation


def _number(value: object, name: str, *, positive: bool = False) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value}")
    return value


def _check_x(x: object, name: str = "x") -> Tensor:
    return check_batch(x, name, min_ndim=1)


def _check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_sde(sde: object) -> SDE:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a dlai_diffusion.sde.SDE, got {type(sde).__name__}")
    return sde


def _times(t: object, x: Tensor) -> Tensor:
    """``t`` (a number, 0-d or (N,) tensor) as a (N,) tensor in x's dtype and device."""
    n = x.shape[0]
    if isinstance(t, Tensor):
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(())
        elif t.shape != (n,):
            raise ValueError(
                f"t must be a number or a tensor of shape ({n},), got {tuple(t.shape)}"
            )
        return t.to(device=x.device, dtype=x.dtype).expand(n)
    return torch.full((n,), _number(t, "t"), device=x.device, dtype=x.dtype)


def _per_sample(values: Tensor, x: Tensor) -> Tensor:
    """A scalar or (N,) tensor shaped (N, 1, ..., 1) (or as x) to broadcast against x."""
    values = torch.as_tensor(values, device=x.device, dtype=x.dtype)
    if values.ndim == 0 or values.shape == x.shape:
        return values
    if values.ndim == 1 and values.shape[0] in (1, x.shape[0]):
        return values.reshape(-1, *[1] * (x.ndim - 1))
    raise ValueError(
        f"expected a scalar, a (N,) tensor or a tensor of shape {tuple(x.shape)}, "
        f"got shape {tuple(values.shape)}"
    )


def _sum_per_sample(values: Tensor) -> Tensor:
    return values.flatten(1).sum(1) if values.ndim > 1 else values


# --------------------------------------------------------------------------- forward SDEs


class SDE:
    """A forward SDE dx = f(x, t) dt + g(t) dW on [0, T] with Gaussian transition kernels.

    Subclasses define :meth:`drift` f(x, t), :meth:`diffusion` g(t), :meth:`marginal` (the
    kernel x_t | x_0 ~ N(mean_scale x_0, std^2 I)) and :attr:`prior_std` (the prior
    N(0, prior_std^2 I) that x_T is close to). ``t`` may be a number or a tensor of shape
    (N,); results of :meth:`diffusion` and :meth:`marginal` have the shape of ``t`` as a
    tensor. Time runs over [0, :attr:`T`].
    """

    T: float = 1.0
    prior_std: float = 1.0

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def diffusion(self, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def prior_sample(
        self,
        shape: int | Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw x_T ~ N(0, prior_std^2 I) of the given shape (N, ...)."""
        return self.prior_std * draw_normal(shape, generator, device=device, dtype=dtype)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std^2 I) per sample, shape (N,)."""
        x = _check_x(x)
        d = x[0].numel()
        squared = _sum_per_sample(x.pow(2))
        s = self.prior_std
        return -0.5 * squared / s**2 - d * (math.log(s) + 0.5 * _LOG_2PI)

    @staticmethod
    def _t(t: Tensor | float) -> Tensor:
        if isinstance(t, Tensor):
            return t if t.is_floating_point() else t.double()
        return torch.tensor(_number(t, "t"), dtype=torch.float64)


class VPSDE(SDE):
    """Variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW (Song et al., 2021).

    beta(t) = beta_min + t (beta_max - beta_min) on [0, 1]. With B(t) = int_0^t beta, the
    kernel is x_t | x_0 ~ N(exp(-B/2) x_0, (1 - exp(-B)) I): the continuous limit of DDPM's
    alpha_bar_t (notes Eq. 28, 37), see :meth:`from_schedule`. Prior N(0, I).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = _number(beta_min, "beta_min", positive=True)
        self.beta_max = _number(beta_max, "beta_max", positive=True)
        if self.beta_max < self.beta_min:
            raise ValueError(
                f"beta_max must be >= beta_min, got beta_min={beta_min}, beta_max={beta_max}"
            )

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min:.4g}, beta_max={self.beta_max:.4g})"

    @classmethod
    def from_schedule(cls, schedule: Schedule) -> VPSDE:
        """The continuous limit of a linear DDPM schedule: beta(t) = T beta_t.

        The 0-indexed step i (papers' i + 1) sits at time t_i = (i + 1) / T, so
        beta_min = T betas[0] and beta_max = T betas[T - 1]; then alpha_bar_i ~ exp(-B(t_i))
        up to O(1 / T) (Song et al., 2021, Appendix B). ``Schedule.linear(1000)`` gives the
        default VPSDE(0.1, 20). Raises ValueError for a schedule that is not linear.
        """
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        betas = schedule.betas.double().cpu()
        T = schedule.T
        if T > 2:
            line = torch.linspace(float(betas[0]), float(betas[-1]), T, dtype=torch.float64)
            if not torch.allclose(betas, line, rtol=1e-6, atol=1e-12):
                raise ValueError("schedule must be linear (Schedule.linear) to map to a VPSDE")
        return cls(T * float(betas[0]), T * float(betas[-1]))

    def beta(self, t: Tensor | float) -> Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + self._t(t) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Tensor | float) -> Tensor:
        """B(t) = int_0^t beta(s) ds = beta_min t + (beta_max - beta_min) t^2 / 2."""
        t = self._t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        return -0.5 * _per_sample(self.beta(_times(t, x)), x) * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        return self.beta(t).sqrt()

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        b = self.integrated_beta(t)
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))


class VESDE(SDE):
    """Variance-exploding SDE dx = sqrt(d sigma^2(t) / dt) dW (Song et al., 2021).

    sigma(t) = sigma_min (sigma_max / sigma_min)^t, g(t) = sigma(t) sqrt(2 log(sigma_max /
    sigma_min)): NCSN's geometric noise levels in continuous time (notes Eq. 24). The kernel
    is x_t | x_0 ~ N(x_0, (sigma(t)^2 - sigma_min^2) I) (exact; Song et al. use sigma(t)^2,
    which treats x_0 as already blurred by sigma_min). Prior N(0, sigma_max^2 I).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = _number(sigma_min, "sigma_min", positive=True)
        self.sigma_max = _number(sigma_max, "sigma_max", positive=True)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"sigma_max must be > sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self.prior_std = self.sigma_max

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g})"

    def sigma(self, t: Tensor | float) -> Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** self._t(t)

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor | float) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        t = self._t(t)
        log_ratio = 2 * t * math.log(self.sigma_max / self.sigma_min)
        return torch.ones_like(t), self.sigma_min * torch.sqrt(torch.expm1(log_ratio))


class OrnsteinUhlenbeck(SDE):
    """The Ornstein-Uhlenbeck process dx = -theta x dt + sigma dW (Uhlenbeck & Ornstein, 1930).

    Kernel x_t | x_0 ~ N(exp(-theta t) x_0, sigma^2 (1 - exp(-2 theta t)) / (2 theta) I);
    stationary law N(0, sigma^2 / (2 theta) I), which is the prior. The VPSDE with a constant
    beta is this process with theta = beta / 2, sigma = sqrt(beta).
    """

    def __init__(self, theta: float = 1.0, sigma: float = math.sqrt(2.0), T: float = 1.0):
        self.theta = _number(theta, "theta", positive=True)
        self.sigma = _number(sigma, "sigma", positive=True)
        self.T = _number(T, "T", positive=True)
        self.prior_std = self.sigma / math.sqrt(2 * self.theta)

    def __repr__(self) -> str:
        return f"OrnsteinUhlenbeck(theta={self.theta:.4g}, sigma={self.sigma:.4g}, T={self.T:.4g})"

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        return -self.theta * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        return torch.full_like(self._t(t), self.sigma)

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        t = self._t(t)
        variance = -torch.expm1(-2 * self.theta * t) * self.sigma**2 / (2 * self.theta)
        return torch.exp(-self.theta * t), variance.sqrt()


# --------------------------------------------------------------------------- Euler-Maruyama


def _diffusion_caller(diffusion: object) -> Callable[[Tensor, Tensor], Tensor | float]:
    """Normalise ``diffusion`` (number, g(t) or g(x, t)) to a callable of (x, t)."""
    if isinstance(diffusion, numbers.Real | Tensor) and not isinstance(diffusion, bool):
        return lambda x, t: diffusion
    if not callable(diffusion):
        raise TypeError(
            f"diffusion must be a number or a callable g(t) or g(x, t), got "
            f"{type(diffusion).__name__}"
        )
    try:
        params = inspect.signature(diffusion).parameters.values()
        positional = [
            p
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        two = len(positional) >= 2
    except (TypeError, ValueError):
        two = False
    return diffusion if two else (lambda x, t: diffusion(t))


def euler_maruyama(
    drift: Drift,
    diffusion: Callable | float,
    x0: Tensor,
    t0: float,
    t1: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Integrate dx = f(x, t) dt + g dW from t0 to t1 with n_steps Euler-Maruyama steps.

    x_{k+1} = x_k + f(x_k, t_k) dt + g(t_k) sqrt(|dt|) z_k, z_k ~ N(0, I), dt = (t1 - t0) /
    n_steps (Kloeden & Platen, 1992; notes Sec. 8). ``t1 < t0`` integrates backwards in
    time (dt < 0), as the reverse-time SDE needs: its Brownian increments still have variance
    |dt|. ``drift(x, t)`` gets t of shape (N,); ``diffusion`` is a number, ``g(t)`` or
    ``g(x, t)`` returning a scalar, (N,) or x-shaped tensor. ``callback({"i", "t", "x"})``
    runs after every step (t is the time reached). Returns x at t1, detached.
    """
    x = _check_x(x0, "x0").detach()
    t0, t1 = _number(t0, "t0"), _number(t1, "t1")
    n_steps = positive_int(n_steps, "n_steps")
    if not callable(drift):
        raise TypeError(f"drift must be a callable f(x, t), got {type(drift).__name__}")
    g = _diffusion_caller(diffusion)
    dt = (t1 - t0) / n_steps
    for i in range(n_steps):
        t = _times(t0 + i * dt, x)
        f = output_like(drift(x, t), x, "drift")
        z = draw_normal(x.shape, generator, device=x.device, dtype=x.dtype)
        x = (x + f * dt + _per_sample(g(x, t), x) * math.sqrt(abs(dt)) * z).detach()
        if callback is not None:
            callback({"i": i, "t": t0 + (i + 1) * dt, "x": x})
    return x


def brownian_paths(
    n_paths: int,
    n_steps: int,
    T: float = 1.0,
    dim: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Standard Brownian motion W on [0, T]: cumulative sums of N(0, dt) increments.

    Returns ``(times, paths)``: times (n_steps + 1,), paths (n_steps + 1, n_paths, dim) with
    W_0 = 0, so that Var W_t = t (the sqrt(t) spread).
    """
    n_paths, n_steps, dim = (
        positive_int(v, k) for v, k in ((n_paths, "n_paths"), (n_steps, "n_steps"), (dim, "dim"))
    )
    T = _number(T, "T", positive=True)
    dt = T / n_steps
    steps = math.sqrt(dt) * draw_normal((n_steps, n_paths, dim), generator, dtype=dtype)
    paths = torch.cat([torch.zeros(1, n_paths, dim, dtype=dtype), steps.cumsum(0)])
    return torch.linspace(0, T, n_steps + 1, dtype=dtype), paths


# --------------------------------------------------------------------------- Fokker-Planck


def fokker_planck_1d(
    drift: Callable[[Tensor, float], Tensor],
    diffusion: Callable[[float], float] | float,
    p0: Tensor,
    x: Tensor,
    times: Sequence[float],
    max_dt: float | None = None,
) -> Tensor:
    """Solve the 1D Fokker-Planck equation dp/dt = -d(f p)/dx + 1/2 g^2 d^2 p / dx^2.

    A conservative finite-volume scheme on the uniform grid ``x`` (M,): fluxes at cell faces
    F = f p - 1/2 g^2 dp/dx with central differences (second order), no flux through the
    ends (mass is conserved), explicit Euler in time with steps small enough for stability
    (dt <= 0.25 dx^2 / g^2 and 0.25 dx / |f|, or ``max_dt``). ``drift(x, t)`` returns f on
    a tensor of points; ``diffusion`` is g (a number) or g(t). ``p0`` (M,) is the initial
    density on the grid (normalised here). Returns the densities at ``times`` (increasing,
    starting at the initial time), shape (len(times), M), float64.
    """
    x = _check_x(x, "x").double()
    if x.ndim != 1 or x.shape[0] < 3:
        raise ValueError(f"x must be a 1-D grid of at least 3 points, got shape {tuple(x.shape)}")
    dx = float(x[1] - x[0])
    if dx <= 0 or not torch.allclose(x.diff(), torch.full_like(x[1:], dx), rtol=1e-6):
        raise ValueError("x must be a uniform, increasing grid")
    p = torch.as_tensor(p0, dtype=torch.float64)
    if p.shape != x.shape or bool((p < 0).any()):
        raise ValueError(f"p0 must be a non-negative density of shape {tuple(x.shape)}")
    times = [_number(t, "times") for t in times]
    if len(times) < 1 or any(b < a for a, b in zip(times[:-1], times[1:], strict=False)):
        raise ValueError("times must be a non-empty increasing sequence")
    g = diffusion if callable(diffusion) else (lambda t: diffusion)
    faces = 0.5 * (x[1:] + x[:-1])
    p = (p / (p.sum() * dx)).numpy().copy()  # the inner loop runs in NumPy: tiny arrays
    out = [p.copy()]
    t = times[0]
    for target in times[1:]:
        while t < target - 1e-15:
            f = torch.as_tensor(drift(faces, t), dtype=torch.float64).numpy()
            d = 0.5 * float(g(t)) ** 2
            limit = 0.25 * dx**2 / max(d, 1e-300)
            limit = min(limit, 0.25 * dx / max(float(abs(f).max()), 1e-300))
            if max_dt is not None:
                limit = min(limit, max_dt)
            dt = min(limit, target - t)
            flux = f * 0.5 * (p[1:] + p[:-1]) - d * (p[1:] - p[:-1]) / dx  # at the faces
            p[:-1] -= (dt / dx) * flux  # what leaves cell i through its right face
            p[1:] += (dt / dx) * flux  # enters cell i + 1
            t += dt
        out.append(p.copy())
    return torch.from_numpy(np.stack(out))


# --------------------------------------------------------------------------- exact mixture scores


def _noised_mixture_terms(mixture: GaussianMixture, sde: SDE, x: Tensor, t: object):
    """Offsets x - a m_k (N, K, d), variances v_k (N, K) and log joints (N, K) of p_t."""
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a toy.GaussianMixture, got {type(mixture).__name__}")
    _check_x(x)
    if x.ndim != 2 or x.shape[1] != mixture.dim:
        raise ValueError(f"x must have shape (N, {mixture.dim}), got {tuple(x.shape)}")
    t = _times(t, x)
    scale, std = _check_sde(sde).marginal(t)
    return mixture.noised_terms(x, scale, std)


def mixture_log_prob(mixture: GaussianMixture, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
    """``log_prob(x, t)``: the exact log density of x_t when x_0 follows ``mixture``, (N,).

    Each component N(m_k, s_k^2 I) becomes N(a m_k, (a^2 s_k^2 + sigma^2) I) with
    (a, sigma) = ``sde.marginal(t)`` (as :meth:`GaussianMixture.diffuse`, but one t per
    sample).
    """
    _check_sde(sde)
    return lambda x, t: torch.logsumexp(_noised_mixture_terms(mixture, sde, x, t)[2], dim=-1)


def mixture_score(mixture: GaussianMixture, sde: SDE) -> ScoreFn:
    """``score_fn(x, t)``: the exact score of x_t when x_0 follows ``mixture``.

    grad log p_t(x) = sum_k p(k | x, t) (a m_k - x) / v_k in closed form: the ideal score
    network every learned score and sampler of the course is compared with.
    """
    _check_sde(sde)

    def score(x: Tensor, t: Tensor) -> Tensor:
        offsets, variances, log_joint = _noised_mixture_terms(mixture, sde, x, t)
        weights = torch.softmax(log_joint, dim=-1) / variances
        return -(weights.unsqueeze(-1) * offsets).sum(1)

    return score


# --------------------------------------------------------------------------- reverse time


def reverse_drift(sde: SDE, score_fn: ScoreFn) -> Drift:
    """The drift f(x, t) - g(t)^2 score(x, t) of Anderson's reverse-time SDE (Anderson, 1982).

    Integrated backwards in time (dt < 0) with the Brownian term g(t) dW, it carries p_T to
    p_0 (notes Sec. 8; Song et al., 2021, Eq. 6).
    """
    _check_sde(sde)

    def drift(x: Tensor, t: Tensor) -> Tensor:
        g2 = _per_sample(sde.diffusion(t).to(x) ** 2, x)
        return sde.drift(x, t) - g2 * output_like(score_fn(x, t), x, "score_fn")

    return drift


def probability_flow_drift(sde: SDE, score_fn: ScoreFn) -> Drift:
    """The probability-flow ODE velocity f(x, t) - 1/2 g(t)^2 score(x, t) (Song et al., 2021,
    Eq. 13): a deterministic flow with the same marginals p_t as the SDE."""
    _check_sde(sde)

    def drift(x: Tensor, t: Tensor) -> Tensor:
        g2 = _per_sample(sde.diffusion(t).to(x) ** 2, x)
        return sde.drift(x, t) - 0.5 * g2 * output_like(score_fn(x, t), x, "score_fn")

    return drift


def _check_eps(eps: object, sde: SDE) -> float:
    eps = _number(eps, "eps", positive=True)
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps}")
    return eps


def sample_reverse_sde(
    score_fn: ScoreFn,
    sde: SDE,
    x_init: Tensor,
    n_steps: int = 1000,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Sample by integrating the reverse SDE from T down to ``eps`` with Euler-Maruyama.

    ``x_init`` is a draw of the prior (``sde.prior_sample``). The cut-off ``eps`` > 0 avoids
    t = 0, where the score of a narrow data distribution explodes (Song et al., 2021).
    """
    _check_sde(sde)
    eps = _check_eps(eps, sde)
    with torch.no_grad():
        return euler_maruyama(
            reverse_drift(sde, score_fn),
            sde.diffusion,
            x_init,
            sde.T,
            eps,
            n_steps,
            generator=generator,
            callback=callback,
        )


# --------------------------------------------------------------------------- ODE solver

# Dormand & Prince (1980), RK5(4)7FM: nodes, stages, 5th-order weights and error weights.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B = _DP_A[6] + (0.0,)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _rms(v: Tensor) -> float:
    """Largest per-sample root-mean-square: every sample must meet the tolerance."""
    return float(v.pow(2).flatten(1).mean(1).sqrt().max()) if v.ndim > 1 else float(v.abs().max())


def _rk45(f, x, t0, t1, rtol, atol, max_steps, stats):
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    t = t0
    k1 = f(x, t)
    nfe = 1
    scale = atol + rtol * x.abs()
    d0, d1 = _rms(x / scale), _rms(k1 / scale)
    h = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h = min(h, span)
    x_try = x + direction * h * k1
    d2 = _rms((f(x_try, t + direction * h) - k1) / scale) / h
    nfe += 1
    h_opt = (0.01 / max(d1, d2)) ** 0.2 if max(d1, d2) > 1e-15 else max(1e-6, h * 1e-3)
    h = min(100 * h, h_opt, span)
    accepted = rejected = 0
    while direction * (t1 - t) > 1e-12 * max(1.0, span):
        if accepted + rejected >= max_steps:
            raise RuntimeError(
                f"solve_ode: more than max_steps={max_steps} steps at t={t:.6g}; the ODE may be "
                "stiff or the tolerances too tight (try larger rtol/atol)"
            )
        h = min(h, abs(t1 - t))
        dt = direction * h
        ks = [k1]
        for stage in range(1, 7):
            incr = sum(a * k for a, k in zip(_DP_A[stage], ks, strict=False) if a != 0.0)
            ks.append(f(x + dt * incr, t + _DP_C[stage] * dt))
        nfe += 6
        x_new = x + dt * sum(b * k for b, k in zip(_DP_B, ks, strict=True) if b != 0.0)
        error = dt * sum(e * k for e, k in zip(_DP_E, ks, strict=True) if e != 0.0)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        err = _rms(error / scale)
        if math.isfinite(err) and err <= 1.0:
            t = t + dt
            x = x_new
            k1 = ks[6]  # first same as last
            accepted += 1
            factor = 10.0 if err == 0 else min(10.0, 0.9 * err**-0.2)
        else:
            rejected += 1
            factor = 0.2 if not math.isfinite(err) else max(0.2, 0.9 * err**-0.2)
        h = h * factor
        if h < 1e-14 * max(1.0, span):
            raise RuntimeError(f"solve_ode: step size underflow at t={t:.6g}")
    if stats is not None:
        stats.update(nfe=nfe, steps=accepted, rejected=rejected)
    return x


def solve_ode(
    f: Drift,
    x: Tensor,
    t0: float,
    t1: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "rk45",
    n_steps: int | None = None,
    stats: dict | None = None,
    max_steps: int = 100_000,
) -> Tensor:
    """Solve dx/dt = f(x, t) from t0 to t1 (forwards or backwards); return x(t1).

    ``method="rk45"``: adaptive Dormand-Prince 5(4) with first-same-as-last, local error
    control per sample (every sample's RMS error <= 1 in units of atol + rtol |x|) and the
    standard step-size rule h <- h * clip(0.9 err^(-1/5), 0.2, 10) (Dormand & Prince, 1980;
    Hairer, Norsett & Wanner, 1993, Sec. II.4). ``"euler"``, ``"heun"`` (2nd order) and
    ``"rk4"`` take ``n_steps`` equal steps. ``f(x, t)`` gets t of shape (N,). A dict passed as
    ``stats`` receives ``nfe`` (function evaluations), ``steps`` and ``rejected``.
    """
    x = _check_x(x)
    t0, t1 = _number(t0, "t0"), _number(t1, "t1")
    rtol = _number(rtol, "rtol", positive=True)
    atol = _number(atol, "atol", positive=True)
    method = _check_choice(method, "method", ("rk45", "euler", "heun", "rk4"))
    if not callable(f):
        raise TypeError(f"f must be a callable f(x, t), got {type(f).__name__}")

    def field(y: Tensor, t: float) -> Tensor:
        return output_like(f(y, _times(t, y)), y, "f")

    if t0 == t1:
        return x
    if method == "rk45":
        return _rk45(field, x, t0, t1, rtol, atol, positive_int(max_steps, "max_steps"), stats)
    if n_steps is None:
        raise ValueError(f"n_steps must be given for method={method!r}")
    n_steps = positive_int(n_steps, "n_steps")
    dt = (t1 - t0) / n_steps
    for i in range(n_steps):
        t = t0 + i * dt
        k1 = field(x, t)
        if method == "euler":
            x = x + dt * k1
        elif method == "heun":
            k2 = field(x + dt * k1, t + dt)
            x = x + 0.5 * dt * (k1 + k2)
        else:
            k2 = field(x + 0.5 * dt * k1, t + 0.5 * dt)
            k3 = field(x + 0.5 * dt * k2, t + 0.5 * dt)
            k4 = field(x + dt * k3, t + dt)
            x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    if stats is not None:
        per_step = {"euler": 1, "heun": 2, "rk4": 4}[method]
        stats.update(nfe=per_step * n_steps, steps=n_steps, rejected=0)
    return x


def sample_probability_flow(
    score_fn: ScoreFn,
    sde: SDE,
    x_init: Tensor,
    eps: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "rk45",
    n_steps: int | None = None,
    stats: dict | None = None,
) -> Tensor:
    """Sample by solving the probability-flow ODE from T down to ``eps`` (Song et al., 2021).

    Deterministic given ``x_init``: the same prior draw always gives the same sample, so the
    ODE is an invertible map between noise and data. Other arguments as in :func:`solve_ode`.
    """
    _check_sde(sde)
    eps = _check_eps(eps, sde)
    with torch.no_grad():
        return solve_ode(
            probability_flow_drift(sde, score_fn),
            x_init,
            sde.T,
            eps,
            rtol=rtol,
            atol=atol,
            method=method,
            n_steps=n_steps,
            stats=stats,
        )


# --------------------------------------------------------------------------- divergences


def _draw_probes(shape, kind: str, generator, x: Tensor) -> Tensor:
    z = draw_normal(shape, generator, device=x.device, dtype=x.dtype)
    return z if kind == "gaussian" else torch.sign(z) + (z == 0).to(z)


def _value_and_divergence(f: Drift, x: Tensor, t: Tensor, probes: Tensor | None):
    """f(x, t) and its divergence: exact (probes None) or mean over probes (P, *x.shape)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = output_like(f(x, t), x, "f")
        if probes is None:
            div = _exact_trace(out, x, create_graph=False)
        else:
            div = _probe_forms(out, x, probes, create_graph=False).mean(0)
    return out.detach(), div.detach()


def exact_divergence(f: Drift, x: Tensor, t: Tensor | float) -> Tensor:
    """div_x f(x, t) = trace of the Jacobian, one autograd pass per dimension, shape (N,)."""
    x = check_batch(x)
    return _value_and_divergence(f, x, _times(t, x), None)[1]


def hutchinson_divergence(
    f: Drift,
    x: Tensor,
    t: Tensor | float,
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    kind: str = "rademacher",
) -> Tensor:
    """Hutchinson's unbiased estimate E_v[v^T (df/dx) v] of the divergence, shape (N,).

    Probes v have E[v v^T] = I: Rademacher (+-1, the lower-variance choice) or Gaussian
    (Hutchinson, 1990; Skilling, 1989; Grathwohl et al., 2019). Each probe costs one
    vector-Jacobian product instead of one pass per dimension; the estimate is the mean over
    ``n_probes`` probes.
    """
    x = check_batch(x)
    n_probes = positive_int(n_probes, "n_probes")
    kind = _check_choice(kind, "kind", ("rademacher", "gaussian"))
    probes = _draw_probes((n_probes, *x.shape), kind, generator, x)
    return _value_and_divergence(f, x, _times(t, x), probes)[1]


# --------------------------------------------------------------------------- likelihood


def log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    eps: float = 1e-5,
    divergence: str = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    stats: dict | None = None,
) -> Tensor:
    """log p(x) in nats, shape (N,), by the instantaneous change of variables (Chen et al.,
    2018; Song et al., 2021, Eq. 39).

    Along the probability-flow ODE dx/dt = v(x, t) (:func:`probability_flow_drift`),
    d log p_t(x_t) / dt = -div v(x_t, t). Solving x and the accumulated divergence together
    from ``eps`` to T with :func:`solve_ode` gives

        log p_eps(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt,

    with the prior density for p_T. ``divergence="hutchinson"`` replaces the exact trace by
    Hutchinson's estimate with ``n_probes`` probes drawn once and held fixed along the path
    (Grathwohl et al., 2019): unbiased for the integral, much cheaper in high dimension.
    Strictly this is the density of x at time ``eps`` (the data blurred by the tiny kernel
    of ``sde.marginal(eps)``).
    """
    _check_sde(sde)
    x = check_batch(x)
    eps = _check_eps(eps, sde)
    divergence = _check_choice(divergence, "divergence", ("exact", "hutchinson"))
    probes = None
    if divergence == "hutchinson":
        n_probes = positive_int(n_probes, "n_probes")
        probes = _draw_probes((n_probes, *x.shape), "rademacher", generator, x)
    velocity = probability_flow_drift(sde, score_fn)
    shape = x.shape

    def augmented(state: Tensor, t: Tensor) -> Tensor:
        y = state[:, :-1].reshape(shape)
        value, div = _value_and_divergence(velocity, y, t, probes)
        return torch.cat([value.flatten(1), div[:, None]], dim=1)

    start = torch.cat([x.detach().flatten(1), x.new_zeros(x.shape[0], 1)], 1)
    end = solve_ode(augmented, start, eps, sde.T, rtol=rtol, atol=atol, stats=stats)
    prior = sde.prior_log_prob(end[:, :-1].reshape(shape))
    return prior + end[:, -1]


def bits_per_dim(nll_nats: Tensor, dims: int, offset: float = math.log(127.5)) -> Tensor:
    """Negative log-likelihood per sample (nats) -> bits per dimension.

    bpd = (nll / dims + offset) / log 2. The default offset serves 8-bit images scaled to
    [-1, 1] by x = (k + u) / 127.5 - 1 from pixel values k in {0..255} with uniform
    dequantisation noise u ~ U[0, 1) (Theis et al., 2016; Ho et al., 2020): a density on the
    [0, 256) scale is that on the [-1, 1] scale divided by 127.5 per dimension, so each
    dimension adds log(127.5) nats. The result bounds the discrete code length from above.
    Use ``offset=0`` for data that are continuous to begin with.
    """
    dims = positive_int(dims, "dims")
    offset = _number(offset, "offset")
    return (nll_nats / dims + offset) / math.log(2)


# --------------------------------------------------------------------------- training


_IMPORTANCE_GRID = 4096


def importance_times(
    sde: SDE,
    n: int,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw n times t in [eps, T] with density pi(t) ∝ 1 / sigma_t^2 (notes Sec. 8).

    The density is tabulated on a log-spaced grid and sampled by inverting its piecewise
    linear CDF; the exact density of that draw (piecewise constant) is returned with the
    times, ``(t, pi(t))``, so that the weights 1 / pi of an importance-sampled loss are
    exactly unbiased.
    """
    _check_sde(sde)
    n = positive_int(n, "n")
    eps = _check_eps(eps, sde)
    grid = torch.logspace(math.log10(eps), math.log10(sde.T), _IMPORTANCE_GRID, dtype=torch.float64)
    density = sde.marginal(grid)[1].double().pow(-2)
    cells = 0.5 * (density[1:] + density[:-1]) * grid.diff()
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), cells.cumsum(0)])
    cdf = cdf / cdf[-1]
    u = draw_uniform(n, generator, dtype=torch.float64).cpu()
    cell = torch.searchsorted(cdf, u, right=True).clamp(1, len(grid) - 1) - 1
    share = (u - cdf[cell]) / (cdf[cell + 1] - cdf[cell])
    t = grid[cell] + share * (grid[cell + 1] - grid[cell])
    pi = (cdf[cell + 1] - cdf[cell]) / (grid[cell + 1] - grid[cell])
    dtype = dtype or torch.get_default_dtype()
    return t.to(device=device, dtype=dtype), pi.to(device=device, dtype=dtype)


_WEIGHTINGS = ("likelihood", "sigma2", "none", "importance")


def dsm_loss(
    score_fn: ScoreFn,
    sde: SDE,
    x0: Tensor,
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
    weighting: str = "likelihood",
    reduction: str = "mean",
    t: Tensor | None = None,
) -> Tensor:
    """Continuous-time denoising score matching (notes Sec. 8, Eq. 3 of the SDE chapter;
    Song et al., 2021, Eq. 7).

    For t in [eps, T], x_t = a_t x_0 + sigma_t z, the per-sample loss is
    lambda(t) || score(x_t, t) + z / sigma_t ||^2, whose minimiser is the noisy score
    grad log p_t (Vincent, 2011). ``weighting``:

    - ``"likelihood"``: lambda = g(t)^2, t ~ U[eps, T]; the loss then bounds the negative
      log-likelihood (Song, Durkan et al., 2021);
    - ``"sigma2"``: lambda = sigma_t^2, t ~ U[eps, T]; equal to DDPM's noise-prediction loss
      || sigma_t score + z ||^2;
    - ``"none"``: lambda = 1, t ~ U[eps, T], the plain objective; it grows like 1 / sigma_t^2
      near t = 0, so its estimate has a huge variance;
    - ``"importance"``: the same expectation as ``"none"`` estimated with t drawn from
      pi(t) ∝ 1 / sigma_t^2 (:func:`importance_times`) and weighted by
      1 / ((T - eps) pi(t)): unbiased, with a much smaller variance.

    The cut-off ``eps`` > 0 keeps sigma_t away from 0. ``reduction``: ``"mean"`` (a scalar)
    or ``"none"`` (one value per sample, (N,)). ``t`` (N,) fixes the times instead of drawing
    them (to look at the loss as a function of t); not with ``"importance"``.
    """
    _check_sde(sde)
    x0 = _check_x(x0, "x0")
    eps = _check_eps(eps, sde)
    weighting = _check_choice(weighting, "weighting", _WEIGHTINGS)
    reduction = _check_choice(reduction, "reduction", ("mean", "none"))
    n = x0.shape[0]
    if t is not None:
        if weighting == "importance":
            raise ValueError('t cannot be given with weighting="importance", which draws it')
        t = _times(t, x0)
        correction = torch.ones_like(t)
    elif weighting == "importance":
        t, pi = importance_times(sde, n, eps, generator, device=x0.device, dtype=x0.dtype)
        correction = 1.0 / ((sde.T - eps) * pi)
    else:
        t = eps + (sde.T - eps) * draw_uniform(n, generator, device=x0.device, dtype=x0.dtype)
        correction = torch.ones_like(t)
    scale, std = (v.to(x0) for v in sde.marginal(t))
    z = draw_normal(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    xt = _per_sample(scale, x0) * x0 + _per_sample(std, x0) * z
    score = output_like(score_fn(xt, t), x0, "score_fn")
    residual = _sum_per_sample((_per_sample(std, x0) * score + z) ** 2)  # sigma^2 ||s + z/sigma||^2
    if weighting == "likelihood":
        weight = sde.diffusion(t).to(x0) ** 2 / std**2
    elif weighting == "sigma2":
        weight = torch.ones_like(std)
    else:
        weight = std**-2
    per_sample = correction * weight * residual
    return per_sample.mean() if reduction == "mean" else per_sample


# --------------------------------------------------------------------------- discrete models


class EpsScore(nn.Module):
    """A noise-predicting network read as a continuous score: score(x, t) = -net(x, t) / sigma_t.

    ``net(x, t)`` (e.g. :class:`dlai_diffusion.nets.ScoreMLP`) estimates the noise z of
    x_t = a_t x_0 + sigma_t z; by Tweedie's formula E[z | x_t] = -sigma_t grad log p_t(x_t)
    (Vincent, 2011). Dividing by sigma_t lets the network output stay O(1) at every t, and
    the ``"sigma2"`` loss of :func:`dsm_loss` becomes DDPM's ||z - net(x_t, t)||^2.
    """

    def __init__(self, net: nn.Module, sde: SDE):
        super().__init__()
        self.net = net
        self.sde = _check_sde(sde)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = _times(t, x)
        std = _per_sample(self.sde.marginal(t)[1].to(x), x)
        return -output_like(self.net(x, t), x, "net") / std


def score_from_eps(eps_model: Callable[[Tensor, Tensor], Tensor], schedule: Schedule) -> ScoreFn:
    """Wrap a discrete DDPM noise model ``eps_model(x, step)`` as a continuous score.

    The 0-indexed step i sits at time t_i = (i + 1) / T (as in :meth:`VPSDE.from_schedule`),
    so a time t in (0, 1] is read at the nearest step round(T t - 1), clamped to 0..T-1, and
    score = -eps / sqrt(1 - alpha_bar_i) (Tweedie; :func:`dlai_diffusion.ddpm.eps_to_score`).
    Use it with ``VPSDE.from_schedule(schedule)`` in the continuous samplers.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    if not callable(eps_model):
        raise TypeError(f"eps_model must be a callable model(x, t), got {type(eps_model).__name__}")
    T = schedule.T

    def score(x: Tensor, t: Tensor) -> Tensor:
        t = _times(t, x)
        steps = torch.round(t.double() * T - 1).clamp(0, T - 1).long()
        return eps_to_score(schedule, output_like(eps_model(x, steps), x, "eps_model"), steps)

    return score
