"""Noise schedules of discrete diffusion and the coefficients derived from them.

The forward process adds Gaussian noise in T small steps (notes Eq. 28; Sohl-Dickstein et al.,
2015; Ho et al., 2020)::

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I),
    q(x_t | x_0)     = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),
    alpha_bar_t      = (1 - beta_1) ... (1 - beta_t).

A :class:`Schedule` turns the variances ``betas`` into every coefficient the forward process,
its posterior q(x_{t-1} | x_t, x_0) (Ho et al., 2020, Eq. 6-7) and the samplers use.

Indexing. Steps are 0-indexed, ``t = 0, ..., T-1``, as in the diffusers library: index ``t``
holds the papers' step ``t + 1``. So ``betas[t]`` is the papers' beta_{t+1}, ``alpha_bars[t]``
their alpha_bar_{t+1}, and the latent x_t of this package (``q_sample(schedule, x0, t)``) is
the papers' x_{t+1}. The data is x_0 in both conventions. The step ``t = 0`` goes from the
data to the first latent, so its "previous" point is the data itself: ``alpha_bars_prev[0]``
is 1 and the posterior variance at ``t = 0`` is zero.

========================================  ====================================================
schedule                                  beta for the papers' t = 1..T (0-indexed: t + 1)
========================================  ====================================================
:func:`linear_betas` (Ho et al., 2020)    linear from 1e-4 to 0.02 (T = 1000)
:func:`cosine_betas` (Nichol &            1 - f(t) / f(t-1), f(t) = cos^2((t/T + s) / (1 + s)
Dhariwal, 2021)                           * pi / 2), clipped at 0.999
:func:`sohl_dickstein_betas`              1 / (T - t + 2): alpha_bar falls linearly to 1 / (T+1)
(Sohl-Dickstein et al., 2015)
========================================  ====================================================

References: Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli (2015), "Deep unsupervised
learning using nonequilibrium thermodynamics"; Ho, Jain & Abbeel (2020), "Denoising diffusion
probabilistic models"; Nichol & Dhariwal (2021), "Improved denoising diffusion probabilistic
models".
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "cosine_betas",
    "linear_betas",
    "sohl_dickstein_betas",
]

_F64 = torch.float64


def _steps(T: object) -> int:
    if isinstance(T, bool):
        raise TypeError("T must be a positive int, got a bool")
    try:
        T = operator.index(T)
    except TypeError:
        raise TypeError(f"T must be a positive int, got {type(T).__name__}") from None
    if T < 1:
        raise ValueError(f"T must be a positive int, got {T}")
    return T


def _in_unit_interval(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value}")
    return float(value)


# --------------------------------------------------------------------------- the schedules


def linear_betas(
    T: int = 1000, beta_start: float | None = None, beta_end: float | None = None
) -> Tensor:
    """betas increasing linearly from ``beta_start`` to ``beta_end`` (Ho et al., 2020, Sec. 4).

    DDPM uses 1e-4 to 0.02 over T = 1000 steps (notes Sec. 7). Left unset, both ends are those
    values times 1000 / T, the rule of Nichol & Dhariwal (2021) that keeps the total noise
    sum(beta) and so alpha_bar_{T-1} nearly the same for any T (0.02 * 1000 / T must stay
    below 1, so T >= 21). Returns float64, shape (T,).
    """
    T = _steps(T)
    scale = 1000.0 / T
    if beta_end is None and T <= 20:
        raise ValueError(
            f"the default linear schedule needs T >= 21 (its last beta 0.02 * 1000 / T must stay "
            f"below 1), got T = {T}; pass beta_end or use the cosine schedule"
        )
    start = _in_unit_interval(1e-4 * scale if beta_start is None else beta_start, "beta_start")
    end = _in_unit_interval(0.02 * scale if beta_end is None else beta_end, "beta_end")
    return torch.linspace(start, end, T, dtype=_F64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The cosine schedule of Nichol & Dhariwal (2021), Eq. 17.

    alpha_bar(t) = f(t) / f(0) with f(t) = cos^2((t / T + s) / (1 + s) * pi / 2) for the
    papers' t = 0..T, and beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at ``max_beta``
    (the last beta would be 1). alpha_bar falls like a cosine: slowly at both ends, linearly in
    the middle, so fewer steps are wasted on nearly pure noise than with the linear schedule.
    The offset ``s`` keeps beta_1 from being tiny. Returns float64, shape (T,).
    """
    T = _steps(T)
    if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s < 1:
        raise ValueError(f"s must be a number in [0, 1), got {s!r}")
    max_beta = _in_unit_interval(max_beta, "max_beta")
    phase = (torch.arange(T + 1, dtype=_F64) / T + s) / (1 + s) * (math.pi / 2)
    f = torch.cos(phase) ** 2
    return (1 - f[1:] / f[:-1]).clamp(min=0.0, max=max_beta)


def sohl_dickstein_betas(T: int = 1000) -> Tensor:
    """The baseline schedule of Sohl-Dickstein et al. (2015): beta_t = 1 / (T - t + 2).

    For the papers' t = 1..T (0-indexed: ``betas[t] = 1 / (T - t + 1)``). Each step then
    removes the same share 1 / (T + 1) of the original signal variance: the product telescopes
    to alpha_bar_t = (T + 1 - t) / (T + 1), linear in t, ending at 1 / (T + 1). This is the
    baseline of the authors' code (``beta = 1 / linspace(T, 2, T)``, "destroy a constant
    fraction of the original data variance each time step"; their T steps run from 1/T to 1/2,
    ours from 1/(T+1) to 1/2 so that the product is exact). In the paper the betas are then
    learned (Sec. 2.4.1); this function gives the fixed schedule they start from.
    Returns float64, shape (T,).
    """
    T = _steps(T)
    return 1.0 / (T + 1 - torch.arange(T, dtype=_F64))


# --------------------------------------------------------------------------- Schedule


class Schedule:
    """Every coefficient of the discrete forward process, computed once in float64.

    ``Schedule(betas)`` takes any 1-D sequence of variances in (0, 1); ``Schedule.linear(T)``,
    ``Schedule.cosine(T)`` and ``Schedule.sohl_dickstein(T)`` build the usual ones. All
    attributes are float64 tensors of shape (T,), indexed by the 0-indexed step t (papers'
    t + 1; see the module docstring):

    ==================================  ========================================================
    attribute                           value at step t
    ==================================  ========================================================
    ``betas``                           beta_t, the variance added by step t (notes Eq. 28)
    ``alphas``                          alpha_t = 1 - beta_t
    ``alpha_bars``                      alpha_bar_t = alpha_0 ... alpha_t (Ho et al., Eq. 4)
    ``alpha_bars_prev``                 alpha_bar_{t-1}, with 1 at t = 0
    ``one_minus_alpha_bars``            1 - alpha_bar_t, computed without cancellation
    ``sqrt_alpha_bars``                 sqrt(alpha_bar_t): the signal scale of q(x_t | x_0)
    ``sqrt_one_minus_alpha_bars``       sqrt(1 - alpha_bar_t): the noise scale
    ``posterior_variance``              beta tilde_t = beta_t (1 - alpha_bar_{t-1}) /
                                        (1 - alpha_bar_t) (Ho et al., Eq. 7); 0 at t = 0
    ``posterior_log_variance_clipped``  log beta tilde_t, with beta tilde_1 in place of the
                                        zero at t = 0 (as in Ho et al.'s code)
    ``posterior_mean_coef1``            beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t),
                                        the weight of x_0 in mu tilde (Ho et al., Eq. 7)
    ``posterior_mean_coef2``            sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t),
                                        the weight of x_t in mu tilde
    ``snr``                             alpha_bar_t / (1 - alpha_bar_t), signal-to-noise ratio
    ==================================  ========================================================

    :meth:`gather` reads coefficients at a batch of steps, shaped to broadcast against a batch
    and in its dtype and device. :meth:`to` moves the tables (float32 on Apple's MPS, which
    has no float64).
    """

    def __init__(self, betas: Tensor | Sequence[float]):
        if isinstance(betas, Tensor):
            if betas.is_complex() or betas.dtype == torch.bool:
                raise TypeError(f"betas must hold real numbers, got dtype {betas.dtype}")
            betas = betas.detach().to(_F64 if betas.device.type != "mps" else torch.float32)
        else:
            try:
                betas = torch.as_tensor(betas, dtype=_F64)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"betas must be a 1-D tensor or sequence of numbers, got {type(betas).__name__}"
                ) from None
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}"
            )
        if not bool(torch.isfinite(betas).all()) or not bool(((betas > 0) & (betas < 1)).all()):
            bad = betas[~((betas > 0) & (betas < 1))]
            raise ValueError(
                f"betas must lie in the open interval (0, 1), got values such as {bad[:3].tolist()}"
            )
        one = torch.ones(1, dtype=betas.dtype, device=betas.device)
        self.betas = betas
        self.alphas = 1 - betas
        log_alpha_bars = torch.cumsum(torch.log1p(-betas), 0)
        self.alpha_bars = log_alpha_bars.exp()
        self.one_minus_alpha_bars = -torch.expm1(log_alpha_bars)
        self.alpha_bars_prev = torch.cat([one, self.alpha_bars[:-1]])
        one_minus_prev = torch.cat([0 * one, self.one_minus_alpha_bars[:-1]])
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        self.sqrt_one_minus_alpha_bars = self.one_minus_alpha_bars.sqrt()
        self.posterior_variance = betas * one_minus_prev / self.one_minus_alpha_bars
        first = self.posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.cat([first, self.posterior_variance[1:]]).log()
        self.posterior_mean_coef1 = betas * self.alpha_bars_prev.sqrt() / self.one_minus_alpha_bars
        self.posterior_mean_coef2 = self.alphas.sqrt() * one_minus_prev / self.one_minus_alpha_bars
        self.snr = self.alpha_bars / self.one_minus_alpha_bars

    # ------------------------------------------------------------------ constructors

    @classmethod
    def linear(
        cls, T: int = 1000, beta_start: float | None = None, beta_end: float | None = None
    ) -> Schedule:
        """DDPM's linear schedule, :func:`linear_betas`."""
        return cls(linear_betas(T, beta_start, beta_end))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
        """Nichol & Dhariwal's cosine schedule, :func:`cosine_betas`."""
        return cls(cosine_betas(T, s, max_beta))

    @classmethod
    def sohl_dickstein(cls, T: int = 1000) -> Schedule:
        """Sohl-Dickstein et al.'s schedule, :func:`sohl_dickstein_betas`."""
        return cls(sohl_dickstein_betas(T))

    @classmethod
    def named(cls, name: str, T: int) -> Schedule:
        """``"linear"``, ``"cosine"`` or ``"sohl_dickstein"`` with T steps and default settings."""
        builders = {
            "linear": cls.linear,
            "cosine": cls.cosine,
            "sohl_dickstein": cls.sohl_dickstein,
        }
        if name not in builders:
            raise ValueError(f"schedule must be one of {sorted(builders)}, got {name!r}")
        return builders[name](T)

    # ------------------------------------------------------------------ basics

    @property
    def T(self) -> int:
        """Number of steps."""
        return self.betas.shape[0]

    def __len__(self) -> int:
        return self.T

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def __repr__(self) -> str:
        b = self.betas
        return (
            f"Schedule(T={self.T}, beta {float(b[0]):.3g} .. {float(b[-1]):.3g}, "
            f"alpha_bar_(T-1) = {float(self.alpha_bars[-1]):.3g}, device={self.device})"
        )

    def to(self, device: torch.device | str) -> Schedule:
        """The same schedule with its tables on ``device`` (float32 on MPS, else float64)."""
        device = torch.device(device)
        dtype = torch.float32 if device.type == "mps" else _F64
        return Schedule(self.betas.to(device=device, dtype=dtype))

    def equals(self, other: object) -> bool:
        """True when ``other`` is a Schedule with the same betas (to float precision)."""
        return (
            isinstance(other, Schedule)
            and other.T == self.T
            and torch.allclose(other.betas.cpu().double(), self.betas.cpu().double(), rtol=1e-6)
        )

    # ------------------------------------------------------------------ reading coefficients

    def check_steps(self, t: object, n: int | None = None) -> Tensor:
        """``t`` as a long tensor of steps in 0..T-1, shape (n,) (an int is repeated n times).

        Raises ``TypeError`` for non-integer steps and ``ValueError`` for steps out of range or
        a shape other than (n,).
        """
        if isinstance(t, bool):
            raise TypeError("t must be an int or an integer tensor of steps, got a bool")
        if isinstance(t, int):
            t = torch.full((1 if n is None else n,), t, dtype=torch.long)
        if not isinstance(t, Tensor):
            raise TypeError(
                f"t must be an int or an integer tensor of steps, got {type(t).__name__}"
            )
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must hold integer steps in 0..{self.T - 1}, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.reshape(1).expand(1 if n is None else n)
        if t.ndim != 1 or (n is not None and t.shape[0] != n):
            expected = "(N,)" if n is None else f"({n},)"
            raise ValueError(f"t must have shape {expected}, got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(
                f"t must lie in 0..{self.T - 1} (0-indexed steps), got values in "
                f"{int(t.min())}..{int(t.max())}"
            )
        return t.long()

    def gather(self, values: Tensor | str, t: object, x: Tensor) -> Tensor:
        """``values[t]`` shaped (N, 1, ..., 1) to broadcast against ``x`` (N, ...), in x's dtype.

        ``values`` is a table of shape (T,), e.g. ``schedule.alpha_bars``, or the name of an
        attribute (``"alpha_bars"``). ``t`` holds one step per sample, shape (N,); an int (one
        step for the whole batch, as in a sampler) gives shape (1, 1, ..., 1) instead, which
        broadcasts alike and saves a per-sample lookup. The lookup is done in the table's
        precision (float64) and the result cast to ``x.dtype`` on ``x.device``.
        """
        if isinstance(values, str):
            table = getattr(self, values, None)
            if not isinstance(table, Tensor) or table.shape != (self.T,):
                raise ValueError(f"values must name a (T,) table of the Schedule, got {values!r}")
            values = table
        elif not isinstance(values, Tensor) or values.shape != (self.T,):
            raise ValueError(f"values must be a tensor of shape ({self.T},) or a table name")
        if not isinstance(x, Tensor) or x.ndim < 1:
            raise TypeError("x must be a tensor with a batch axis, shape (N, ...)")
        if isinstance(t, int) and not isinstance(t, bool):
            if not 0 <= t < self.T:
                raise ValueError(f"t must lie in 0..{self.T - 1} (0-indexed steps), got {t}")
            picked = values[t : t + 1]
        else:
            picked = values[self.check_steps(t, x.shape[0]).to(values.device)]
        return picked.to(device=x.device, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
