"""Exact toy distributions: isotropic Gaussian mixtures and named 2D data sets.

The ground truth of the course. A :class:`GaussianMixture` knows its density, score and
posterior over components in closed form, and so does every noised version of it: adding
independent Gaussian noise to a mixture gives another mixture. Every learned score, sampler and
likelihood of later lectures is tested against these formulas.

The 2D data sets are written directly in torch, so a ``torch.Generator`` controls every draw.
Each sampler has the signature ``(n, generator=None, *, <shape parameters>) -> Tensor`` of
shape (n, 2), dtype float32, on the CPU (move with ``.to(device)``). All are scaled to a
comparable spread: centred at 0 with per-coordinate standard deviation about 1, and (up to
the Gaussian noise tails) inside [-2.5, 2.5]^2.

================  ==============================================================  ============
name              what it is                                                      std (x, y)
================  ==============================================================  ============
``swiss_roll``    2D Swiss roll (t cos t, t sin t), t ~ U[1.5 pi, 4.5 pi], minus  (0.95, 0.99)
                  its exact mean (2, 2 / (3 pi)), divided by 7; noise 0.05
``moons``         two interleaved half circles (as scikit-learn's make_moons),    (1.04, 0.99)
                  centred, x scaled by 1.2 and y by 2 (stretched vertically so
                  both coordinates have unit spread); noise 0.05
``8gaussians``    :func:`eight_gaussians`: 8 equal Gaussians on a circle of       (1.00, 1.00)
                  radius 1.4, std 0.1 (the data set *is* this mixture)
``checkerboard``  uniform on the 8 black squares of a 4 x 4 board of unit         (1.15, 1.15)
                  squares covering [-2, 2]^2 (exact: 2 / sqrt(3))
``rings``         4 concentric circles of radii 0.5, 1, 1.5, 2, chosen with      (0.97, 0.97)
                  equal probability, uniform angle; noise 0.05
``spiral``        one Archimedean arm theta (cos theta, sin theta),               (1.06, 0.94)
                  theta = 3 pi sqrt(u) (uniform along the arm), minus its exact
                  mean (-4 / (3 pi), 2 - 8 / (9 pi^2)), divided by 4.5; noise 0.05
``2spirals``      the arm of ``spiral`` (not centred) and its mirror image        (1.07, 1.03)
                  through the origin, equally likely, divided by 4.5; noise 0.05
================  ==============================================================  ============

"noise" is the standard deviation of isotropic Gaussian noise added in the final units; every
sampler takes it as a keyword argument. The ``8gaussians`` points and the mixtures from
:func:`eight_gaussians` and :func:`two_mode_mixture` have exact scores; the other data sets are
only defined by their samplers.

References: Song & Ermon (2019), "Generative modeling by estimating gradients of the data
distribution" (the two-mode mixture of their Figures 2-3); Grathwohl et al. (2019), FFJORD,
for the tradition of these 2D benchmarks.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from ._utils import draw_categorical, draw_normal, draw_uniform
from ._utils import positive_int as _count

__all__ = [
    "DATASETS",
    "GaussianMixture",
    "checkerboard",
    "eight_gaussians",
    "moons",
    "rings",
    "sample",
    "spiral",
    "swiss_roll",
    "two_mode_mixture",
    "two_spirals",
]

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- validation


def _scalar(value: object, name: str, *, positive: bool) -> float:
    """A finite real scalar (python number or 0-d tensor) that is > 0 or >= 0."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.ndim > 0:
            raise ValueError(
                f"{name} must be a scalar (0-d tensor), got shape {tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        expected = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {expected}, got {value}")
    return value


# --------------------------------------------------------------------------- mixtures


class GaussianMixture:
    """Isotropic Gaussian mixture p(x) = sum_k w_k N(x; m_k, s_k^2 I) in dimension d.

    Args:
        means: (K, d) component means m_k (tensor or nested sequence).
        stds: (K,) component standard deviations s_k > 0, or one positive scalar for all.
        weights: (K,) mixture weights w_k >= 0 summing to 1 (checked to within
            max(1e-6, K * machine epsilon), then renormalised); default uniform.
        dtype: floating dtype of the parameters. Default: the dtype of ``means`` when it is a
            floating tensor, otherwise float32.
        device: device of the parameters. Default: the device of ``means`` when it is a tensor,
            otherwise the CPU.

    Devices and dtypes. The evaluations (:meth:`log_prob`, :meth:`score`,
    :meth:`responsibilities`, ...) follow their input ``x``: the parameters are cast to the
    device and floating dtype of ``x``, and the result has them too. :meth:`sample` follows
    the mixture (``self.device``, ``self.dtype``); use :meth:`to` to move it.

    Inputs ``x`` have shape (..., d); results have the batch shape (...), with a trailing
    axis of size d (score) or K (responsibilities). A single point of shape (d,) works.
    """

    def __init__(
        self,
        means,
        stds,
        weights=None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if dtype is None:
            floating = isinstance(means, Tensor) and means.is_floating_point()
            dtype = means.dtype if floating else torch.float32
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if device is None:
            device = means.device if isinstance(means, Tensor) else torch.device("cpu")
        as_param = dict(dtype=dtype, device=device)

        means = torch.as_tensor(means, **as_param)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(
                f"means must have shape (K, d) with K, d >= 1, got {tuple(means.shape)}"
            )
        k = means.shape[0]
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite (found NaN or inf)")

        stds = torch.as_tensor(stds, **as_param)
        if stds.ndim == 0:
            stds = stds.expand(k).clone()
        if stds.shape != (k,):
            raise ValueError(
                f"stds must be a scalar or have shape (K,) = ({k},), got {tuple(stds.shape)}"
            )
        if not (torch.isfinite(stds).all() and (stds > 0).all()):
            raise ValueError(f"stds must be finite and > 0, got {stds.tolist()}")

        if weights is None:
            weights = torch.full((k,), 1.0 / k, **as_param)
        weights = torch.as_tensor(weights, **as_param)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape (K,) = ({k},), got {tuple(weights.shape)}")
        if not (torch.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError(f"weights must be finite and >= 0, got {weights.tolist()}")
        total = float(weights.double().sum())
        tolerance = max(1e-6, k * torch.finfo(dtype).eps)
        if abs(total - 1.0) > tolerance:
            raise ValueError(f"weights must sum to 1, got sum {total:.8g}")

        self.means: Tensor = means
        self.stds: Tensor = stds
        self.weights: Tensor = weights / weights.sum()

    # ------------------------------------------------------------------ basic properties

    @property
    def n_components(self) -> int:
        """Number of components K."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """Dimension d of the space."""
        return self.means.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GaussianMixture:
        """A new mixture with the same parameters on ``device`` and/or in ``dtype``."""
        device = self.device if device is None else device
        dtype = self.dtype if dtype is None else dtype
        return GaussianMixture(self.means, self.stds, self.weights, dtype=dtype, device=device)

    def __repr__(self) -> str:
        k, d = self.n_components, self.dim
        head = f"GaussianMixture(K={k}, d={d}"
        if k * d <= 24:

            def rounded(t: Tensor) -> list:
                return torch.round(t.detach().double().cpu(), decimals=4).tolist()

            head += (
                f", means={rounded(self.means)}, stds={rounded(self.stds)}, "
                f"weights={rounded(self.weights)}"
            )
        return f"{head}, dtype={self.dtype}, device={self.device})"

    def mean(self) -> Tensor:
        """Mean of the mixture, sum_k w_k m_k, shape (d,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Covariance of the mixture, shape (d, d).

        Law of total covariance: sum_k w_k s_k^2 I (within components) plus
        sum_k w_k (m_k - mean)(m_k - mean)^T (between components).
        """
        centred = self.means - self.mean()
        between = (self.weights[:, None] * centred).T @ centred
        within = (self.weights * self.stds**2).sum()
        return between + within * torch.eye(self.dim, dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------ densities

    def _points(self, x) -> Tensor:
        """``x`` as a floating tensor of shape (..., d), or a clear error."""
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        elif not x.is_floating_point():
            x = x.to(self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"x must have shape (..., d) with d = {self.dim}, got {tuple(x.shape)}"
            )
        return x

    def _offsets_and_log_joint(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Offsets x - m_k, shape (..., K, d), and the log joint log p(x, k), shape (..., K)."""
        means, stds, weights = (p.to(x) for p in (self.means, self.stds, self.weights))
        offsets = x.unsqueeze(-2) - means  # direct differences: accurate even far from m_k
        squared = offsets.pow(2).sum(-1)
        log_normal = -0.5 * squared / stds**2 - self.dim * (stds.log() + 0.5 * _LOG_2PI)
        return offsets, weights.log() + log_normal

    def log_prob_components(self, x) -> Tensor:
        """log p(x, k) = log w_k + log N(x; m_k, s_k^2 I), shape (..., K).

        Zero weights give -inf. ``logsumexp`` over the last axis gives :meth:`log_prob`,
        ``softmax`` gives :meth:`responsibilities`.
        """
        return self._offsets_and_log_joint(self._points(x))[1]

    def log_prob(self, x) -> Tensor:
        """log p(x), shape (...,): a stable logsumexp over the components.

        Finite wherever the squared distances to the means are finite (e.g. x = 1e3 in
        float32), since the largest term is factored out before exponentiating.
        """
        return torch.logsumexp(self.log_prob_components(x), dim=-1)

    def energy(self, x) -> Tensor:
        """E(x) = -log p(x): the Boltzmann form p = exp(-E) / Z with Z = 1 (notes Eq. 1-2)."""
        return -self.log_prob(x)

    def responsibilities(self, x) -> Tensor:
        """Posterior p(k | x) = w_k N(x; m_k, s_k^2 I) / p(x) by Bayes' rule (notes Eq. 5).

        Shape (..., K); each row sums to 1.
        """
        return torch.softmax(self.log_prob_components(x), dim=-1)

    def score(self, x) -> Tensor:
        """The exact score grad_x log p(x) (notes Eq. 7), in closed form, shape (..., d).

        grad_x log p(x) = sum_k p(k | x) (m_k - x) / s_k^2: each component pulls x towards its
        mean, weighted by how responsible it is for x. No autograd; stable far from the modes
        because p(k | x) comes from a softmax of the log joint.
        """
        offsets, log_joint = self._offsets_and_log_joint(self._points(x))
        posterior = torch.softmax(log_joint, dim=-1)
        precision = self.stds.to(offsets) ** -2
        return -((posterior * precision).unsqueeze(-1) * offsets).sum(-2)

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` points, shape (n, d), on the mixture's device and dtype.

        First the components k_i ~ Categorical(w) (``torch.multinomial``), then
        x_i = m_{k_i} + s_{k_i} z_i with z_i ~ N(0, I), both from ``generator``: a seeded
        generator makes the draw reproducible. With ``return_labels=True`` also returns the
        components k_i, a long tensor of shape (n,).
        """
        n = _count(n)
        labels = draw_categorical(self.weights, n, generator)
        z = draw_normal((n, self.dim), generator, device=self.device, dtype=self.dtype)
        x = self.means[labels] + self.stds[labels, None] * z
        return (x, labels) if return_labels else x

    # ------------------------------------------------------------------ noised mixtures

    def diffuse(self, alpha, sigma) -> GaussianMixture:
        """The exact law of alpha x + sigma z, x ~ p, z ~ N(0, I) independent.

        Scaling and noising each component gives N(alpha m_k, (alpha^2 s_k^2 + sigma^2) I)
        with the same weights. With alpha = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t)
        this is the variance-preserving forward marginal q(x_t | x_0) integrated over the data
        (Ho et al., 2020; notes Eq. 37). Requires alpha > 0 and sigma >= 0.
        """
        alpha = _scalar(alpha, "alpha", positive=True)
        sigma = _scalar(sigma, "sigma", positive=False)
        stds = torch.hypot(alpha * self.stds, torch.full_like(self.stds, sigma))
        return GaussianMixture(alpha * self.means, stds, self.weights)

    def noised_terms(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, ...]:
        """:meth:`diffuse` with one (alpha, sigma) per point: for x (N, d) and alpha, sigma
        (N,), the offsets x - alpha m_k (N, K, d), the variances v_k = alpha^2 s_k^2 + sigma^2
        (N, K) and the log joints log w_k + log N(x; alpha m_k, v_k I) (N, K), from which exact
        scores, posteriors and velocities of a noised mixture at per-sample times follow."""
        means, stds, weights = (p.to(x) for p in (self.means, self.stds, self.weights))
        alpha, sigma = alpha.to(x).reshape(-1, 1), sigma.to(x).reshape(-1, 1)
        variances = (alpha * stds) ** 2 + sigma**2
        offsets = x[:, None, :] - alpha[:, :, None] * means
        squared = offsets.pow(2).sum(-1)
        log_normal = -0.5 * squared / variances - 0.5 * self.dim * (variances.log() + _LOG_2PI)
        return offsets, variances, weights.log() + log_normal

    def perturb(self, sigma) -> GaussianMixture:
        """The exact law of x + sigma z (variance-exploding noise), sigma >= 0.

        This is q_sigma, the data density convolved with N(0, sigma^2 I) (notes Eq. 12-15,
        24; Vincent, 2011; Song & Ermon, 2019): same means and weights, stds
        sqrt(s_k^2 + sigma^2). ``perturb(0)`` returns an equal mixture.
        """
        return self.diffuse(1.0, sigma)


def eight_gaussians(
    radius: float = 1.4,
    std: float = 0.1,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> GaussianMixture:
    """Eight equally weighted Gaussians N(m_k, std^2 I), m_k = radius (cos, sin)(2 pi k / 8).

    Each coordinate has variance radius^2 / 2 + std^2 (0.99 with the defaults). The
    ``"8gaussians"`` data set samples this mixture.
    """
    radius = _scalar(radius, "radius", positive=True)
    std = _scalar(std, "std", positive=True)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, std, dtype=dtype, device=device)


def two_mode_mixture(
    *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> GaussianMixture:
    """0.8 N((5, 5), I) + 0.2 N((-5, -5), I), the mixture of Song & Ermon (2019), Figs. 2-3.

    Its modes are far apart: plain Langevin dynamics with the exact score keeps the wrong
    mode proportions, annealed Langevin dynamics recovers them.
    """
    means = [[5.0, 5.0], [-5.0, -5.0]]
    return GaussianMixture(means, 1.0, [0.8, 0.2], dtype=dtype, device=device)


# --------------------------------------------------------------------------- 2D data sets

_CPU = torch.device("cpu")


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    return draw_uniform(n, generator, device=_CPU, dtype=torch.float32)


def _add_noise(points: Tensor, noise: float, generator: torch.Generator | None) -> Tensor:
    noise = _scalar(noise, "noise", positive=False)
    z = draw_normal(points.shape, generator, device=_CPU, dtype=torch.float32)
    return points + noise * z


def _polar(radius: Tensor, angle: Tensor) -> Tensor:
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)


def swiss_roll(n: int, generator: torch.Generator | None = None, *, noise: float = 0.05) -> Tensor:
    """2D Swiss roll: t (cos t, sin t), t ~ U[1.5 pi, 4.5 pi], centred exactly, divided by 7."""
    t = 1.5 * math.pi * (1 + 2 * _uniform(_count(n), generator))
    centre = torch.tensor([2.0, 2.0 / (3 * math.pi)])  # E[t cos t], E[t sin t]
    return _add_noise((_polar(t, t) - centre) / 7.0, noise, generator)


def moons(n: int, generator: torch.Generator | None = None, *, noise: float = 0.05) -> Tensor:
    """Two interleaved half circles, each chosen with probability 1/2, then standardised.

    Upper moon (cos a, sin a), lower moon (1 - cos a, 1/2 - sin a), a ~ U[0, pi]; the mean
    (1/2, 1/4) is subtracted and x, y are scaled by 1.2 and 2.
    """
    n = _count(n)
    angle = math.pi * _uniform(n, generator)
    lower = _uniform(n, generator) < 0.5
    upper_moon = torch.stack([angle.cos(), angle.sin()], dim=1)
    lower_moon = torch.tensor([1.0, 0.5]) - upper_moon
    points = torch.where(lower[:, None], lower_moon, upper_moon)
    points = (points - torch.tensor([0.5, 0.25])) * torch.tensor([1.2, 2.0])
    return _add_noise(points, noise, generator)


def _eight_gaussians_data(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Samples of :func:`eight_gaussians` with its default radius and std."""
    return eight_gaussians().sample(n, generator)


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the 8 black unit squares of a 4 x 4 board on [-2, 2]^2.

    Column i ~ U{0..3}, row j ~ U{0..3} with i + j even, then a uniform point in the square.
    Each coordinate is marginally uniform on [-2, 2] (std 2 / sqrt(3)).
    """
    n = _count(n)
    column = (4 * _uniform(n, generator)).floor().clamp(max=3)
    row = 2 * (2 * _uniform(n, generator)).floor().clamp(max=1) + column % 2
    corner = torch.stack([column, row], dim=1) - 2
    return corner + draw_uniform((n, 2), generator, device=_CPU, dtype=torch.float32)


def rings(n: int, generator: torch.Generator | None = None, *, noise: float = 0.05) -> Tensor:
    """Four concentric circles of radii 0.5, 1, 1.5, 2, equally likely, uniform angle."""
    n = _count(n)
    radius = 0.5 * ((4 * _uniform(n, generator)).floor().clamp(max=3) + 1)
    angle = 2 * math.pi * _uniform(n, generator)
    return _add_noise(_polar(radius, angle), noise, generator)


def _spiral_arm(n: int, generator: torch.Generator | None) -> Tensor:
    """theta (cos theta, sin theta) with theta = 3 pi sqrt(u): 1.5 turns, uniform along the arm."""
    theta = 3 * math.pi * _uniform(n, generator).sqrt()
    return _polar(theta, theta)


def spiral(n: int, generator: torch.Generator | None = None, *, noise: float = 0.05) -> Tensor:
    """One Archimedean spiral arm (1.5 turns), centred exactly, divided by 4.5."""
    centre = torch.tensor([-4 / (3 * math.pi), 2 - 8 / (9 * math.pi**2)])  # exact arm mean
    return _add_noise((_spiral_arm(_count(n), generator) - centre) / 4.5, noise, generator)


def two_spirals(n: int, generator: torch.Generator | None = None, *, noise: float = 0.05) -> Tensor:
    """The arm of :func:`spiral` and its mirror image -arm, equally likely, divided by 4.5."""
    n = _count(n)
    arm = _spiral_arm(n, generator)
    sign = torch.where(_uniform(n, generator) < 0.5, -1.0, 1.0)
    return _add_noise(sign[:, None] * arm / 4.5, noise, generator)


DATASETS: dict[str, Callable[..., Tensor]] = {
    "swiss_roll": swiss_roll,
    "moons": moons,
    "8gaussians": _eight_gaussians_data,
    "checkerboard": checkerboard,
    "rings": rings,
    "spiral": spiral,
    "2spirals": two_spirals,
}
"""Name -> sampler ``(n, generator=None) -> Tensor`` of shape (n, 2), float32, on the CPU."""


def sample(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points of the named 2D data set (see the module docstring and :data:`DATASETS`)."""
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](n, generator)
