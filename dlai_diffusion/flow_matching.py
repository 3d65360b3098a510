"""Flow matching and rectified flow: learn a velocity field that carries noise to data.

**Time runs the other way from diffusion.** Here t goes from 0 to 1, x_0 ~ N(0, I) is the
*prior* (noise) and x_1 ~ data is the *target*; in the diffusion lectures x_0 is the data. A
velocity model is a callable ``velocity(x, t)`` with ``t`` a float tensor (N,) in [0, 1],
returning a tensor of the shape of ``x``. Sampling integrates the ODE dx/dt = v(x, t) from
t = 0 to t = 1.

The conditional path of this module is the straight line of rectified flow (Liu et al., 2023)
and of the optimal-transport path of Lipman et al. (2023),

    x_t = sigma_t x_0 + alpha_t x_1,   alpha_t = t,   sigma_t = 1 - (1 - sigma_min) t,

whose velocity u_t = d x_t / dt = x_1 - (1 - sigma_min) x_0 is the regression target
(``sigma_min = 0``: x_t = (1 - t) x_0 + t x_1, u_t = x_1 - x_0). The marginal velocity
v*(x, t) = E[u_t | x_t = x] moves the marginals p_t exactly as the conditional paths do
(continuity equation), and the conditional loss E || v_theta(x_t, t) - u_t ||^2 differs from
the marginal one E || v_theta(x_t, t) - v*(x_t, t) ||^2 by a constant, so both have the same
minimiser and the same gradients (Lipman et al., 2023, Theorem 2).

==========================================  ================================================
what                                        where
==========================================  ================================================
the path and its target                     :func:`path_coefficients`, :func:`linear_path`
the conditional flow-matching loss          :func:`flow_matching_loss`
ODE sampler (Euler, midpoint, Heun, RK45)   :func:`sample_flow`, :func:`flow_trajectory`
how straight the paths are                  :func:`straightness` (Liu et al., 2023)
exact velocities (tests, lecture)           :func:`gaussian_velocity`, :func:`mixture_velocity`,
                                            :func:`marginal_mixture`
velocity <-> score (probability flow)       :func:`velocity_to_score`, :func:`score_to_velocity`
reflow (one round of rectification)         :func:`reflow_pairs`
networks                                    :func:`flow_mlp`, :func:`flow_unet`
==========================================  ================================================

Velocity and score. For a Gaussian path, Tweedie's formula gives E[x_0 | x_t = x] =
-sigma_t grad log p_t(x), hence E[x_1 | x_t = x] = (x + sigma_t^2 grad log p_t(x)) / alpha_t
and

    v*(x, t) = (alpha_t' / alpha_t) x + (alpha_t' sigma_t^2 / alpha_t - sigma_t' sigma_t) score,

for the plain line (sigma_min = 0): v* = (x + (1 - t) score) / t, score = (t v* - x) / (1 - t).
The ODE dx/dt = v* is therefore the probability-flow ODE (notes Sec. 8, "Probability flow
ODEs", "Rectified flow", "Flow matching"; Song et al., 2021) of the path's marginals, written
with a velocity instead of a score.

References: Lipman, Chen, Ben-Hamu, Nickel & Le (2023), "Flow matching for generative
modeling"; Liu, Gong & Liu (2023), "Flow straight and fast: learning to generate and transfer
data with rectified flow"; Albergo & Vanden-Eijnden (2023), "Building normalizing flows with
stochastic interpolants"; Song et al. (2021), "Score-based generative modeling through
stochastic differential equations".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._utils import draw_normal, draw_uniform
from ._utils import positive_int as _positive_int
from .ddpm import _check_batch, _check_like
from .toy import GaussianMixture

__all__ = [
    "METHODS",
    "PathCoefficients",
    "flow_matching_loss",
    "flow_mlp",
    "flow_trajectory",
    "flow_unet",
    "gaussian_velocity",
    "linear_path",
    "marginal_mixture",
    "mixture_velocity",
    "path_coefficients",
    "reflow_pairs",
    "sample_flow",
    "score_to_velocity",
    "straightness",
    "velocity_to_score",
]

Velocity = Callable[[Tensor, Tensor], Tensor]

METHODS = {"euler": 1, "midpoint": 2, "heun": 2, "rk45": None}
"""ODE methods of :func:`sample_flow` and their velocity evaluations per step (RK45 adapts)."""


# --------------------------------------------------------------------------- validation


def _check_sigma_min(sigma_min: object) -> float:
    if isinstance(sigma_min, bool) or not isinstance(sigma_min, int | float):
        raise TypeError(f"sigma_min must be a number in [0, 1), got {type(sigma_min).__name__}")
    if not 0.0 <= sigma_min < 1.0:
        raise ValueError(f"sigma_min must lie in [0, 1), got {sigma_min}")
    return float(sigma_min)


_INTEGER = (torch.int32, torch.int64)


def _times(t: object, x: Tensor, name: str = "t") -> Tensor:
    """``t`` (a number, a 0-d tensor or one value per sample) as (N, 1, ..., 1) in x's dtype."""
    if isinstance(t, bool) or not isinstance(t, int | float | Tensor):
        raise TypeError(f"{name} must be a number or a tensor, got {type(t).__name__}")
    if isinstance(t, Tensor) and not (t.is_floating_point() or t.dtype in _INTEGER):
        raise TypeError(f"{name} must hold real times in [0, 1], got dtype {t.dtype}")
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)  # a python float stays exact
    n = x.shape[0]
    if t.numel() == 1:
        t = t.reshape(1).expand(n)
    elif t.numel() != n:
        raise ValueError(
            f"{name} must be a number or hold one time per sample ({n}), got shape {tuple(t.shape)}"
        )
    if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{t.min()}, {t.max()}]")
    return t.reshape(n, *[1] * (x.ndim - 1))


# --------------------------------------------------------------------------- the path


class PathCoefficients(NamedTuple):
    """x_t = sigma x_0 + alpha x_1 and the time derivatives of both coefficients."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


def path_coefficients(t: Tensor, sigma_min: float = 0.0) -> PathCoefficients:
    """alpha_t = t, sigma_t = 1 - (1 - sigma_min) t and their derivatives 1, -(1 - sigma_min).

    The optimal-transport path of Lipman et al. (2023, Eq. 20-22); sigma_min = 0 is the
    straight line of rectified flow (Liu et al., 2023). Tensors of the shape of ``t``.
    """
    sigma_min = _check_sigma_min(sigma_min)
    t = torch.as_tensor(t)
    one = torch.ones_like(t)
    return PathCoefficients(t, 1 - (1 - sigma_min) * t, one, -(1 - sigma_min) * one)


def linear_path(
    x0: Tensor, x1: Tensor, t: Tensor | float, sigma_min: float = 0.0
) -> tuple[Tensor, Tensor]:
    """The conditional path and its velocity: (x_t, u_t) with

    x_t = (1 - (1 - sigma_min) t) x_0 + t x_1,   u_t = x_1 - (1 - sigma_min) x_0

    (Lipman et al., 2023, Eq. 20-23; Liu et al., 2023, with sigma_min = 0). ``x0`` is the
    noise, ``x1`` the data (same shape), ``t`` a number or one time in [0, 1] per sample.
    """
    _check_batch(x1, "x1")
    _check_like(x0, x1, "x0")
    c = path_coefficients(_times(t, x1), sigma_min)
    return c.sigma * x0 + c.alpha * x1, c.d_sigma * x0 + c.d_alpha * x1


# --------------------------------------------------------------------------- the loss


def flow_matching_loss(
    model: Velocity,
    x1: Tensor,
    generator: torch.Generator | None = None,
    *,
    x0: Tensor | None = None,
    t: Tensor | None = None,
    sigma_min: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Conditional flow matching (Lipman et al., 2023, Eq. 23; Liu et al., 2023, Eq. 1):

        L(theta) = E_{t, x_0, x_1} || v_theta(x_t, t) - u_t ||^2,

    t ~ U[0, 1], x_0 ~ N(0, I) (both from ``generator`` unless given), x_1 = ``x1`` the data
    and (x_t, u_t) = :func:`linear_path`. Passing ``x0`` pairs each data point with a given
    noise: a coupling such as the one :func:`reflow_pairs` builds. The squared error is
    averaged over the coordinates (a model predicting 0 scores 1 + E x_1^2 per
    coordinate) and over the batch (``reduction="mean"``) or not (``"none"``, shape (N,)).

    It differs from the marginal loss E || v_theta(x_t, t) - v*(x_t, t) ||^2 by a constant
    in theta, the conditional variance E || u_t - v*(x_t, t) ||^2, so both have the same
    gradient.
    """
    _check_batch(x1, "x1")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    n = x1.shape[0]
    if x0 is None:
        x0 = draw_normal(x1.shape, generator, device=x1.device, dtype=x1.dtype)
    if t is None:
        t = draw_uniform((n,), generator, device=x1.device, dtype=x1.dtype)
    xt, target = linear_path(x0, x1, t, sigma_min)
    times = _times(t, x1).reshape(n)
    prediction = _check_like(model(xt, times), x1, "model(x_t, t)")
    per_sample = (prediction - target).pow(2).flatten(1).mean(1)
    return per_sample.mean() if reduction == "mean" else per_sample


# --------------------------------------------------------------------------- sampling


def _as_model_time(t: Tensor | float, x: Tensor) -> Tensor:
    """A time (number, 0-d or (N,)) as the (N,) tensor a velocity model receives."""
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    return t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(x.shape[0])


def _check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    return method


def _fixed_step(model: Velocity, x: Tensor, t: float, t_next: float, method: str) -> Tensor:
    """One step from time t to t_next: Euler, explicit midpoint or Heun (trapezoid)."""
    h = t_next - t
    v = model(x, _as_model_time(t, x))
    if method == "euler":
        return x + h * v
    if method == "midpoint":
        return x + h * model(x + 0.5 * h * v, _as_model_time(t + 0.5 * h, x))
    v_end = model(x + h * v, _as_model_time(t_next, x))
    return x + 0.5 * h * (v + v_end)


@torch.no_grad()
def sample_flow(
    model: Velocity,
    x_init: Tensor,
    n_steps: int = 100,
    method: str = "euler",
    callback: Callable[[dict], None] | None = None,
    *,
    t_start: float = 0.0,
    t_end: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Tensor:
    """Integrate dx/dt = v(x, t) from ``t_start`` (default 0, the prior) to ``t_end``
    (default 1, the data) starting at ``x_init`` (Lipman et al., 2023; Liu et al., 2023).

    ``x_init`` should be drawn from N(0, I). ``method``: ``"euler"`` (one velocity evaluation
    per step), ``"midpoint"`` or ``"heun"`` (two; second order), each with ``n_steps`` equal
    steps, or ``"rk45"``: the adaptive Dormand-Prince solver :func:`dlai_diffusion.sde.solve_ode`
    with ``rtol``, ``atol`` (``n_steps`` is then ignored). ``t_start > t_end`` runs the flow
    backwards (data to noise). ``callback({"i": i, "t": t, "x": x})`` is called after each
    fixed step (i = 0..n_steps-1, t the time reached) and once at the end for RK45. Runs
    without gradients.
    """
    _check_batch(x_init, "x_init")
    method = _check_method(method)
    n_steps = _positive_int(n_steps, "n_steps")
    for value, name in ((t_start, "t_start"), (t_end, "t_end")):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if method == "rk45":
        from .sde import solve_ode

        def field(x: Tensor, t) -> Tensor:
            return model(x, _as_model_time(t, x))

        x = solve_ode(field, x_init, float(t_start), float(t_end), rtol=rtol, atol=atol)
        if callback is not None:
            callback({"i": 0, "t": float(t_end), "x": x})
        return x
    times = [t_start + (t_end - t_start) * i / n_steps for i in range(n_steps)] + [t_end]
    x = x_init
    for i in range(n_steps):
        x = _fixed_step(model, x, times[i], times[i + 1], method)
        if callback is not None:
            callback({"i": i, "t": times[i + 1], "x": x})
    return x


def flow_trajectory(
    model: Velocity, x_init: Tensor, n_steps: int = 100, method: str = "euler", **kwargs
) -> Tensor:
    """The states of :func:`sample_flow` at the n_steps + 1 times of its grid, stacked:
    shape (n_steps + 1, *x_init.shape); [0] is ``x_init``, [-1] the sample."""
    if method == "rk45":
        raise ValueError("method must be a fixed-step method for a trajectory, got 'rk45'")
    states = [x_init]
    sample_flow(model, x_init, n_steps, method, lambda s: states.append(s["x"]), **kwargs)
    return torch.stack(states)


def straightness(trajectory: Tensor, normalized: bool = False) -> float:
    """How far paths are from straight lines (Liu et al., 2023, Definition 3.2):

        S = int_0^1 E || (x_1 - x_0) - dx_t/dt ||^2 dt,

    estimated from a trajectory (K + 1, N, ...) on an equal time grid (as from
    :func:`flow_trajectory`) with the finite differences dx/dt ~ K (x_{k+1} - x_k). S = 0
    exactly when every path is a straight line run at constant speed, and then one Euler step
    is exact. ``normalized=True`` divides by E || x_1 - x_0 ||^2, the squared length of the
    chords, so the value is comparable between data sets (0: straight).
    """
    if not isinstance(trajectory, Tensor):
        raise TypeError(f"trajectory must be a torch.Tensor, got {type(trajectory).__name__}")
    if trajectory.ndim < 3:
        raise ValueError(
            "trajectory must have shape (K + 1, N, ...) with K >= 1 steps, got shape "
            f"{tuple(trajectory.shape)}"
        )
    if trajectory.shape[0] < 2:
        raise ValueError("trajectory must hold at least 2 states (one step)")
    path = trajectory.flatten(2).double()
    k = path.shape[0] - 1
    chord = path[-1] - path[0]  # (N, D)
    speeds = k * torch.diff(path, dim=0)  # (K, N, D)
    value = (speeds - chord).pow(2).sum(-1).mean().item()
    if normalized:
        scale = chord.pow(2).sum(-1).mean().item()
        return value / scale if scale > 0 else math.nan
    return value


# --------------------------------------------------------------------------- exact velocities


def gaussian_velocity(
    x: Tensor, t: Tensor | float, mean: Tensor | float, std: float, sigma_min: float = 0.0
) -> Tensor:
    """The exact marginal velocity from x_0 ~ N(0, I) to x_1 ~ N(m, s^2 I) (independent pairs).

    x_t = sigma_t x_0 + alpha_t x_1 is Gaussian, N(alpha_t m, (sigma_t^2 + alpha_t^2 s^2) I),
    and jointly Gaussian with (x_0, x_1), so linear regression gives

        v*(x, t) = E[u_t | x_t = x] = alpha_t' m + (sigma_t sigma_t' + alpha_t alpha_t' s^2)
                   / (sigma_t^2 + alpha_t^2 s^2) (x - alpha_t m),

    for sigma_min = 0: m + (t s^2 - (1 - t)) / ((1 - t)^2 + t^2 s^2) (x - t m). ``mean`` is a
    number or a (d,) tensor, ``std`` > 0.
    """
    _check_batch(x, "x")
    if isinstance(std, bool) or not isinstance(std, int | float | Tensor) or not float(std) > 0:
        raise ValueError(f"std must be a positive number, got {std!r}")
    c = path_coefficients(_times(t, x), sigma_min)
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype)
    s2 = float(std) ** 2
    gain = (c.sigma * c.d_sigma + c.alpha * c.d_alpha * s2) / (c.sigma**2 + c.alpha**2 * s2)
    return c.d_alpha * m + gain * (x - c.alpha * m)


def marginal_mixture(mixture: GaussianMixture, t: float, sigma_min: float = 0.0):
    """The exact marginal p_t of the path from N(0, I) to a Gaussian mixture, for 0 < t <= 1:

    x_t = alpha_t x_1 + sigma_t x_0 with x_1 ~ sum_k w_k N(m_k, s_k^2 I) has the law
    sum_k w_k N(alpha_t m_k, (alpha_t^2 s_k^2 + sigma_t^2) I): the mixture scaled and noised,
    :meth:`GaussianMixture.diffuse` with alpha = t, sigma = 1 - (1 - sigma_min) t.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a toy.GaussianMixture, got {type(mixture).__name__}")
    if isinstance(t, Tensor):
        t = t.item()
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 1:
        raise ValueError(f"t must be a number in (0, 1], got {t!r}")
    c = path_coefficients(torch.tensor(float(t), dtype=torch.float64), sigma_min)
    return mixture.diffuse(c.alpha.item(), c.sigma.item())


def mixture_velocity(mixture: GaussianMixture, sigma_min: float = 0.0) -> Velocity:
    """The exact marginal velocity v*(x, t) from N(0, I) to a Gaussian mixture.

    Condition on the component first: given k, the target is N(m_k, s_k^2 I) and the velocity
    is :func:`gaussian_velocity`; the posterior p(k | x_t = x) is the responsibility of
    component k in :func:`marginal_mixture`. So v*(x, t) = sum_k p(k | x_t = x) v_k(x, t).
    Returns a velocity model ``v(x, t)``, x (N, d), t a number or (N,), defined for t in [0, 1]
    (at t = 0 every responsibility is the weight w_k).
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a toy.GaussianMixture, got {type(mixture).__name__}")
    sigma_min = _check_sigma_min(sigma_min)

    def velocity(x: Tensor, t: Tensor | float) -> Tensor:
        _check_batch(x, "x")
        c = path_coefficients(_times(t, x), sigma_min)  # (N, 1)
        offsets, variances, log_joint = mixture.noised_terms(x, c.alpha, c.sigma)
        posterior = torch.softmax(log_joint, dim=-1)  # p(k | x_t), (N, K)
        means, stds = mixture.means.to(x), mixture.stds.to(x)
        gains = (c.sigma * c.d_sigma + c.alpha * c.d_alpha * stds**2) / variances
        per_component = c.d_alpha[:, :, None] * means + gains[:, :, None] * offsets
        return (posterior[:, :, None] * per_component).sum(1)

    return velocity


# --------------------------------------------------------------------------- velocity <-> score


def _score_coefficients(x: Tensor, t, sigma_min: float) -> tuple[Tensor, Tensor]:
    """v = a x + b score: a = alpha' / alpha, b = alpha' sigma^2 / alpha - sigma' sigma."""
    c = path_coefficients(_times(t, x), sigma_min)
    return c.d_alpha / c.alpha, c.d_alpha * c.sigma**2 / c.alpha - c.d_sigma * c.sigma


def score_to_velocity(score: Tensor, x: Tensor, t: Tensor | float, sigma_min: float = 0.0):
    """The marginal velocity from the score of p_t: v = (alpha'/alpha) x + (alpha' sigma^2 /
    alpha - sigma' sigma) score; for sigma_min = 0, v = (x + (1 - t) score) / t.

    Tweedie's formula E[x_0 | x_t] = -sigma_t score with E[u_t | x_t] = alpha_t' E[x_1 | x_t] +
    sigma_t' E[x_0 | x_t] (see the module docstring). Defined for t in (0, 1].
    """
    _check_batch(x, "x")
    _check_like(score, x, "score")
    if float(_times(t, x).min()) <= 0:
        raise ValueError("t must be > 0: at t = 0 the velocity is not a function of the score")
    a, b = _score_coefficients(x, t, sigma_min)
    return a * x + b * score


def velocity_to_score(velocity: Tensor, x: Tensor, t: Tensor | float, sigma_min: float = 0.0):
    """The score of p_t from the marginal velocity, the inverse of :func:`score_to_velocity`:
    score = (alpha v - alpha' x) / (alpha' sigma^2 - sigma' sigma alpha); for sigma_min = 0,
    score = (t v - x) / (1 - t). Defined for t in [0, 1), and at t = 1 when sigma_min > 0.
    """
    _check_batch(x, "x")
    _check_like(velocity, x, "velocity")
    c = path_coefficients(_times(t, x), sigma_min)
    denominator = c.d_alpha * c.sigma**2 - c.d_sigma * c.sigma * c.alpha
    if float(denominator.abs().min()) == 0:
        raise ValueError("t must be < 1 when sigma_min = 0: p_1 is the data, it has no score here")
    return (c.alpha * velocity - c.d_alpha * x) / denominator


# --------------------------------------------------------------------------- reflow


@torch.no_grad()
def reflow_pairs(
    model: Velocity,
    n: int,
    shape: tuple[int, ...],
    n_steps: int = 100,
    method: str = "euler",
    generator: torch.Generator | None = None,
    device=None,
) -> tuple[Tensor, Tensor]:
    """One round of rectification (Liu et al., 2023, Algorithm 1): draw x_0 ~ N(0, I) and
    push it through the learned flow to x_1 = ODE(x_0). Training a new velocity on these
    coupled pairs (``flow_matching_loss(model, x1, x0=x0)``) straightens the paths: the
    pairs no longer cross, so the new marginal velocity follows the chords. Returns (x0, x1).
    """
    n = _positive_int(n, "n")
    x0 = draw_normal((n, *shape), generator, device=device)
    return x0, sample_flow(model, x0, n_steps, method)


# --------------------------------------------------------------------------- networks

TIME_SCALE = 1000.0
"""Times in [0, 1] times 1000 span the range the sinusoidal embedding is tuned for."""


def flow_mlp(dim: int = 2, hidden: int = 128, depth: int = 3, **kwargs) -> nn.Module:
    """A :class:`~dlai_diffusion.nets.ScoreMLP` velocity v_theta(x, t) for vectors, t in [0, 1]
    (embedded as 1000 t); ``kwargs`` go to ScoreMLP."""
    from .nets import ScoreMLP

    kwargs.setdefault("time_scale", TIME_SCALE)
    return ScoreMLP(dim, hidden, depth, **kwargs)


def flow_unet(
    preset: str = "small", in_channels: int = 1, image_size: int = 28, **overrides
) -> nn.Module:
    """A :func:`~dlai_diffusion.nets.unet` velocity v_theta(x, t) for images, t in [0, 1]."""
    from .nets import unet

    overrides.setdefault("time_scale", TIME_SCALE)
    return unet(preset, in_channels, image_size, **overrides)
