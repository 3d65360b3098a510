"""Energy functions, Boltzmann densities and the partition function (lecture 01).

Any density with full support can be written in Boltzmann form (notes Eq. 1-3)

    p_T(x) = exp(-E(x) / T) / Z_T,        Z_T = integral of exp(-E(x) / T) dx,

with an energy E that is low where data is likely and a temperature T (T = 1 in the notes).
This module gives a few 2D energies whose normaliser is known exactly, the Boltzmann
log-density, the partition function by quadrature on a grid, and a measurement of why that
quadrature cannot scale: a grid with n points per axis costs n^d energy evaluations in d
dimensions.

Energies are :class:`Energy` objects: callables ``E(x)`` mapping points of shape (..., d) to
energies of shape (...), written in torch (differentiable in x and in their parameters), that
follow the device and dtype of ``x``. They carry a name, the exact ``log_z`` at T = 1 when it
is known, and a box ``bounds`` that holds all but a negligible part of the mass. Every function
below also accepts a plain callable ``x -> E(x)``.

Quadrature. The box is cut into n^d equal cells and each cell contributes
``exp(-E(centre) / T) * volume`` (the midpoint rule, evaluated with a log-sum-exp so that
energies of any size neither overflow nor underflow). Its error is O(h^2) per axis in general
(h the cell width). For integrands that are smooth and negligible at the edges of the box all
the boundary terms of the Euler-Maclaurin expansion vanish and the error falls faster than any
power of h; what is left is the mass outside the box.

References: Boltzmann (1868) and Gibbs (1902) for the Boltzmann-Gibbs distribution;
LeCun et al. (2006), "A tutorial on energy-based learning"; Haario, Saksman & Tamminen (1999),
"Adaptive proposal distribution for random walk Metropolis algorithm" (the twisted Gaussian,
or banana); Bellman (1957), "Dynamic programming" (the curse of dimensionality).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from scipy.special import ive
from torch import Tensor

from ._utils import positive_int as _count
from .toy import GaussianMixture, eight_gaussians

__all__ = [
    "ENERGIES",
    "Energy",
    "QuadratureCost",
    "banana_energy",
    "bayes_posterior",
    "boltzmann_density",
    "boltzmann_expectation",
    "boltzmann_log_density",
    "double_well_energy",
    "gaussian_energy",
    "grid_axes",
    "grid_partition_function",
    "log_partition_function",
    "log_partition_gradient",
    "mixture_energy",
    "partition_function",
    "quadrature_cost",
    "quadrature_grid",
    "ring_energy",
]

Bounds = tuple[tuple[float, float], ...]
EnergyFn = Callable[[Tensor], Tensor]

_LOG_2PI = math.log(2.0 * math.pi)
_CHUNK = 2**16  # grid points evaluated at once: bounds the memory of high-dimensional grids


# --------------------------------------------------------------------------- validation


def _number(value: object, name: str, *, positive: bool = True) -> float:
    """A finite real number (python, numpy or 0-d tensor), > 0 if ``positive``, or a clear error."""
    expected = "a positive number" if positive else "a real number"
    if isinstance(value, Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {expected}, got a bool")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}") from None
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(
            f"{name} must be a finite number{' > 0' if positive else ''}, got {number}"
        )
    return number


def _bounds(bounds: object, dim: int | None = None) -> Bounds:
    """``bounds`` as ((lo, hi), ...) with finite lo < hi, one pair per axis."""
    try:
        pairs = tuple((float(lo), float(hi)) for lo, hi in bounds)
    except (TypeError, ValueError):
        raise TypeError(
            f"bounds must be a sequence of (lo, hi) pairs, one per axis, got {bounds!r}"
        ) from None
    if not pairs:
        raise ValueError("bounds must hold at least one (lo, hi) pair")
    for axis, (lo, hi) in enumerate(pairs):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds[{axis}] must be finite with lo < hi, got ({lo}, {hi})")
    if dim is not None and len(pairs) != dim:
        raise ValueError(f"bounds must hold {dim} (lo, hi) pairs for a {dim}-D energy, got {pairs}")
    return pairs


def _floating(x: object) -> Tensor:
    """``x`` as a floating tensor (numpy arrays keep their dtype, integers become floats)."""
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _points(x: object, dim: int) -> Tensor:
    """``x`` as a floating tensor of shape (..., dim), or a clear error."""
    x = _floating(x)
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape (..., {dim}), got {tuple(x.shape)}")
    return x


def _like(value, x: Tensor) -> Tensor:
    """A parameter (number or tensor, possibly requiring grad) on the device and dtype of x."""
    return torch.as_tensor(value, dtype=x.dtype, device=x.device)


# --------------------------------------------------------------------------- energies


@dataclass(frozen=True)
class Energy:
    """A named energy E: (..., dim) -> (...), with its exact log Z at T = 1 when known.

    Attributes:
        fn: the energy, written in torch; called through ``__call__``, which checks the shape.
        name: a short label for plots.
        dim: dimension d of the space.
        log_z: exact log of Z = integral of exp(-E) (notes Eq. 3), or ``None`` if unknown.
        bounds: a box ((lo, hi), ...) holding all but a negligible part of exp(-E), the default
            domain of quadrature. At T > 1 the mass spreads further: pass wider bounds.
    """

    fn: EnergyFn
    name: str
    dim: int = 2
    log_z: float | None = None
    bounds: Bounds = ((-4.0, 4.0), (-4.0, 4.0))

    def __call__(self, x) -> Tensor:
        return self.fn(_points(x, self.dim))


def gaussian_energy(precision=1.0, mean=None, dim: int = 2) -> Energy:
    """E(x) = (x - m)^T A (x - m) / 2, the energy of N(m, A^{-1}); Z = (2 pi)^{d/2} / sqrt(det A).

    Args:
        precision: the precision matrix A, a (d, d) symmetric positive definite matrix or a
            positive scalar a (A = a I). A tensor that requires grad stays differentiable.
        mean: m, shape (d,); default 0.
        dim: d, used when ``precision`` is a scalar.
    """
    a = precision if isinstance(precision, Tensor) else torch.tensor(precision, dtype=torch.float64)
    if a.ndim == 2:
        dim = a.shape[0]
        if a.shape != (dim, dim) or not torch.allclose(a, a.T):
            raise ValueError(f"precision must be a symmetric (d, d) matrix, got {tuple(a.shape)}")
        eigenvalues = torch.linalg.eigvalsh(a.detach().double())
        if not bool((eigenvalues > 0).all()):
            raise ValueError("precision must be positive definite")
    elif a.ndim == 0:
        dim = _count(dim, "dim")
        eigenvalues = torch.full((dim,), _number(a, "precision"), dtype=torch.float64)
    else:
        raise ValueError(f"precision must be a scalar or a (d, d) matrix, got {tuple(a.shape)}")
    m = torch.zeros(dim) if mean is None else torch.as_tensor(mean, dtype=a.dtype)
    if m.shape != (dim,):
        raise ValueError(f"mean must have shape ({dim},), got {tuple(m.shape)}")

    def fn(x: Tensor) -> Tensor:
        centred = x - _like(m, x)
        a_x = _like(a, x)
        if a_x.ndim == 2:
            return 0.5 * (centred @ a_x * centred).sum(-1)
        return 0.5 * a_x * centred.pow(2).sum(-1)

    log_z = 0.5 * dim * _LOG_2PI - 0.5 * float(eigenvalues.log().sum())
    half_width = 7.0 / math.sqrt(float(eigenvalues.min()))  # 7 standard deviations
    box = tuple((float(c) - half_width, float(c) + half_width) for c in m.detach())
    return Energy(fn, "gaussian", dim, log_z, box)


def mixture_energy(mixture: GaussianMixture, offset: float = 0.0) -> Energy:
    """E(x) = -log p(x) + c for a Gaussian mixture p, so Z = exp(-c) (notes Eq. 1-3).

    With ``offset`` c = 0 this is the mixture's own energy (Z = 1); a non-zero c leaves the
    density unchanged and scales Z, which makes a non-trivial test of any quadrature.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a toy.GaussianMixture, got {type(mixture).__name__}")
    offset = _number(offset, "offset", positive=False)
    reach = float((mixture.means.abs() + 7.0 * mixture.stds[:, None]).max())
    return Energy(
        lambda x: mixture.energy(x) + offset,
        "mixture",
        mixture.dim,
        -offset,
        ((-reach, reach),) * mixture.dim,
    )


def double_well_energy(barrier=2.0) -> Energy:
    """E(x) = a (x_1^2 - 1)^2 + x_2^2 / 2: wells at x_1 = +-1, a barrier of height a between.

    Z factorises: sqrt(2 pi) times the 1D integral of exp(-a (u^2 - 1)^2), which equals
    (pi / 2) e^{-a/2} [I_{-1/4}(a/2) + I_{1/4}(a/2)] with I the modified Bessel function of the
    first kind (the standard integral of exp(-alpha u^4 + beta u^2); the tests check it against
    1D quadrature). ``barrier`` may be a tensor that requires grad.
    """
    a = _number(barrier, "barrier")
    log_z = math.log(0.5 * math.pi * (ive(-0.25, a / 2) + ive(0.25, a / 2))) + 0.5 * _LOG_2PI

    def fn(x: Tensor) -> Tensor:
        return _like(barrier, x) * (x[..., 0] ** 2 - 1) ** 2 + 0.5 * x[..., 1] ** 2

    return Energy(fn, "double well", 2, log_z, ((-3.0, 3.0), (-6.0, 6.0)))


def banana_energy(curvature=0.4, scales=(1.2, 0.4)) -> Energy:
    """A banana ("twisted Gaussian", Haario et al. 1999): a Gaussian bent by a shear.

    With y_1 = x_1 and y_2 = x_2 + b (x_1^2 - s_1^2), where y ~ N(0, diag(s_1^2, s_2^2)):
    E(x) = x_1^2 / (2 s_1^2) + (x_2 + b (x_1^2 - s_1^2))^2 / (2 s_2^2). The shear has Jacobian
    determinant 1 (it preserves volume), so Z = 2 pi s_1 s_2, as for the unbent Gaussian, and
    the mean stays at 0. ``bounds`` reach 5 standard deviations along the bent axis.
    """
    b = _number(curvature, "curvature", positive=False)
    s1, s2 = (_number(s, "scales") for s in scales)
    reach = 5.0 * s1
    tip, ends = abs(b) * s1**2 + 5.0 * s2, abs(b) * (reach**2 - s1**2) + 5.0 * s2
    low, high = (-ends, tip) if b >= 0 else (-tip, ends)

    def fn(x: Tensor) -> Tensor:
        bent = x[..., 1] + b * (x[..., 0] ** 2 - s1**2)
        return 0.5 * (x[..., 0] / s1) ** 2 + 0.5 * (bent / s2) ** 2

    return Energy(fn, "banana", 2, math.log(2 * math.pi * s1 * s2), ((-reach, reach), (low, high)))


def ring_energy(radius=2.0, width=0.3) -> Energy:
    """E(x) = (|x| - R)^2 / (2 w^2): a ring of radius R and width w.

    In polar coordinates Z = 2 pi * integral over r > 0 of r exp(-(r - R)^2 / (2 w^2)) dr
    = 2 pi w [w exp(-R^2 / (2 w^2)) + sqrt(2 pi) R Phi(R / w)], Phi the standard normal CDF.
    """
    r, w = _number(radius, "radius"), _number(width, "width")
    phi = 0.5 * math.erfc(-r / (w * math.sqrt(2)))
    z = 2 * math.pi * w * (w * math.exp(-0.5 * (r / w) ** 2) + math.sqrt(2 * math.pi) * r * phi)
    reach = r + 7.0 * w

    def fn(x: Tensor) -> Tensor:
        return 0.5 * ((torch.linalg.vector_norm(x, dim=-1) - r) / w) ** 2

    return Energy(fn, "ring", 2, math.log(z), ((-reach, reach), (-reach, reach)))


def _default_mixture() -> GaussianMixture:
    means = [[-1.5, -1.0], [1.5, -0.5], [0.0, 1.5]]
    return GaussianMixture(means, [0.5, 0.7, 0.4], [0.3, 0.5, 0.2], dtype=torch.float64)


ENERGIES: dict[str, Energy] = {
    "gaussian": gaussian_energy([[1.0, 0.6], [0.6, 1.0]]),
    "mixture": mixture_energy(_default_mixture()),
    "8gaussians": mixture_energy(eight_gaussians(dtype=torch.float64)),
    "double_well": double_well_energy(),
    "banana": banana_energy(),
    "ring": ring_energy(),
}
"""Name -> 2D :class:`Energy` with a known exact ``log_z`` (the course's running examples)."""


# --------------------------------------------------------------------------- Boltzmann form


def _log_z_or_quadrature(energy: EnergyFn, temperature: float, log_z) -> Tensor | float:
    if log_z is not None:
        return log_z
    if temperature != 1.0:
        raise ValueError(
            "log_z is needed when temperature != 1: compute it with log_partition_function on a "
            "box that holds the mass at that temperature (the spread grows with T)"
        )
    if not isinstance(energy, Energy):
        raise ValueError("log_z is needed for a plain callable energy (it has no bounds)")
    return energy.log_z if energy.log_z is not None else log_partition_function(energy)


def boltzmann_log_density(energy: EnergyFn, x, temperature=1.0, log_z=None) -> Tensor:
    """log p_T(x) = -E(x) / T - log Z_T: the log-likelihood of the Boltzmann form (notes Eq. 1-2).

    ``log_z`` is log Z_T. It may be left out only at T = 1 for an :class:`Energy`: then its
    exact ``log_z`` is used, or, if unknown, quadrature on ``energy.bounds``.
    """
    temperature = _number(temperature, "temperature")
    x = _floating(x)
    log_z = _log_z_or_quadrature(energy, temperature, log_z)
    return -energy(x) / temperature - _like(log_z, x)


def boltzmann_density(energy: EnergyFn, x, temperature=1.0, log_z=None) -> Tensor:
    """p_T(x) = exp(-E(x) / T) / Z_T (notes Eq. 1); arguments as :func:`boltzmann_log_density`."""
    return boltzmann_log_density(energy, x, temperature, log_z).exp()


# --------------------------------------------------------------------------- quadrature


def grid_axes(bounds, n: int, *, dtype=torch.float64, device=None) -> list[Tensor]:
    """Cell centres along each axis: lo + (i + 1/2) h, i = 0..n-1, h = (hi - lo) / n."""
    n = _count(n, "n")
    offsets = torch.arange(n, dtype=dtype, device=device) + 0.5
    return [lo + (hi - lo) / n * offsets for lo, hi in _bounds(bounds)]


def quadrature_grid(bounds, n: int, *, dtype=torch.float64, device=None) -> tuple[Tensor, float]:
    """The midpoint-rule grid on a box: cell centres (n^d, d) and the log volume of one cell.

    Point ``i * n + j`` of a 2D grid is (axes[0][i], axes[1][j]), so ``values.reshape(n, n)``
    is indexed [x_1, x_2] (transpose it for ``imshow``).
    """
    axes = grid_axes(bounds, n, dtype=dtype, device=device)
    points = torch.cartesian_prod(*axes).reshape(-1, len(axes))
    return points, _log_cell_volume(_bounds(bounds), n)


def _log_cell_volume(bounds: Bounds, n: int) -> float:
    return sum(math.log((hi - lo) / n) for lo, hi in bounds)


def _grid_chunks(bounds: Bounds, n: int, dtype, device, chunk_size: int) -> Iterator[Tensor]:
    """The n^d cell centres, in the order of :func:`quadrature_grid`, a block at a time.

    A block is the full grid of the last k axes (n^k <= chunk_size points, k >= 1) with the
    leading d - k coordinates fixed; the leading coordinates run through their own grid.
    """
    axes = grid_axes(bounds, n, dtype=dtype, device=device)
    dim = len(axes)
    k = 1
    while k < dim and n ** (k + 1) <= chunk_size:
        k += 1
    block = torch.cartesian_prod(*axes[dim - k :]).reshape(-1, k)
    for lead in itertools.product(*(axis.tolist() for axis in axes[: dim - k])):
        fixed = torch.tensor(lead, dtype=dtype, device=device).expand(len(block), dim - k)
        yield torch.cat([fixed, block], dim=1)


def _resolve(energy: EnergyFn, bounds) -> Bounds:
    if bounds is None:
        if not isinstance(energy, Energy):
            raise ValueError("bounds are needed for a plain callable energy")
        return energy.bounds
    return _bounds(bounds, energy.dim if isinstance(energy, Energy) else None)


def log_partition_function(
    energy: EnergyFn,
    bounds=None,
    n: int = 256,
    temperature=1.0,
    *,
    dtype: torch.dtype = torch.float64,
    device=None,
    chunk_size: int = _CHUNK,
) -> Tensor:
    """log Z_T = log of the integral of exp(-E(x) / T) over the box (notes Eq. 3), by quadrature.

    Midpoint rule on n cells per axis (n^d energy evaluations): log Z is
    logsumexp(-E(centres) / T) + log(cell volume), so it is finite for energies of any size.
    Error O(h^2) in general, much smaller for integrands negligible at the edges of the box (see
    the module docstring). Works in any dimension d = len(bounds), evaluating the grid in chunks
    of ``chunk_size`` points. Returns a 0-d tensor, differentiable in the energy's parameters.

    Args:
        energy: callable (..., d) -> (...); an :class:`Energy` supplies default ``bounds``.
        bounds: ((lo, hi), ...) one pair per axis; default ``energy.bounds``.
        n: number of cells per axis.
        temperature: T > 0.
    """
    bounds = _resolve(energy, bounds)
    n = _count(n, "n")
    temperature = _number(temperature, "temperature")
    chunk_size = _count(chunk_size, "chunk_size")
    partial = [
        torch.logsumexp(-energy(points) / temperature, dim=0)
        for points in _grid_chunks(bounds, n, dtype, device, chunk_size)
    ]
    return torch.logsumexp(torch.stack(partial), dim=0) + _log_cell_volume(bounds, n)


def partition_function(
    energy: EnergyFn, bounds=None, n: int = 256, temperature=1.0, **kw
) -> Tensor:
    """Z_T by quadrature (notes Eq. 3): the exponential of :func:`log_partition_function`."""
    return log_partition_function(energy, bounds, n, temperature, **kw).exp()


def grid_partition_function(
    energy: EnergyFn, dim: int, bounds=(-6.0, 6.0), n_per_dim: int = 16, temperature=1.0
) -> Tensor:
    """Z_T of a d-dimensional energy on the cube [lo, hi]^d with n_per_dim^d grid points.

    The cost is n_per_dim^d evaluations of the energy: it grows exponentially with d, which is
    why Z is intractable for images (see :func:`quadrature_cost`).
    """
    dim = _count(dim, "dim")
    return partition_function(energy, (tuple(bounds),) * dim, n_per_dim, temperature)


def boltzmann_expectation(
    energy: EnergyFn, fn: Callable[[Tensor], Tensor], bounds=None, n: int = 256, temperature=1.0
) -> Tensor:
    """E_{p_T}[f(x)] by quadrature on the grid (weights exp(-E / T) normalised to sum to 1).

    ``fn`` maps points (N, d) to values (N,) or (N, k). Materialises the whole grid: meant for
    2D (and small 3D) energies.
    """
    bounds = _resolve(energy, bounds)
    temperature = _number(temperature, "temperature")
    points, _ = quadrature_grid(bounds, n)
    weights = torch.softmax(-energy(points) / temperature, dim=0)
    values = fn(points)
    return torch.tensordot(weights, values, dims=([0], [0]))


def log_partition_gradient(
    family: Callable[[Tensor], EnergyFn], theta, bounds, n: int = 256, temperature=1.0
) -> Tensor:
    """d/dtheta log Z_theta = -E_{p_theta}[dE_theta/dtheta] / T, the expectation by quadrature.

    This is the last term of notes Eq. 4: the gradient of log Z is an expectation under the
    model itself. ``family(theta)`` returns the energy for a scalar parameter theta. The
    expectation sum_i w_i dE(x_i)/dtheta over the grid, with the Boltzmann weights w_i held
    fixed, is the derivative of sum_i w_i E(x_i), which autograd gives in one pass.
    """
    temperature = _number(temperature, "temperature")
    theta = torch.tensor(
        _number(theta, "theta", positive=False), dtype=torch.float64, requires_grad=True
    )
    points, _ = quadrature_grid(_bounds(bounds), n)
    energies = family(theta)(points)
    weights = torch.softmax(-energies.detach() / temperature, dim=0)
    (expected,) = torch.autograd.grad((weights * energies).sum(), theta, allow_unused=True)
    if expected is None:  # the energy does not depend on theta
        return torch.zeros((), dtype=points.dtype)
    return -expected / temperature


# --------------------------------------------------------------------------- Bayes on a grid


def bayes_posterior(
    log_prior: Callable[[Tensor], Tensor],
    log_likelihood: Callable[[Tensor], Tensor],
    bounds,
    n: int = 256,
) -> Energy:
    """The posterior p(x | y) of notes Eq. 5 as a Boltzmann density, with the evidence as its Z.

    Its energy is -log p(x) - log p(y | x) (prior energy plus likelihood energy); its partition
    function is the evidence p(y) = integral of p(y | x) p(x) dx (notes Eq. 6), computed by
    quadrature and stored in ``log_z``. Hence ``boltzmann_density(posterior, x)`` is p(x | y).
    """
    bounds = _bounds(bounds)

    def fn(x: Tensor) -> Tensor:
        return -(log_prior(x) + log_likelihood(x))

    log_evidence = float(log_partition_function(fn, bounds, n))
    return Energy(fn, "posterior", len(bounds), log_evidence, bounds)


# --------------------------------------------------------------------------- the cost of a grid


@dataclass(frozen=True)
class QuadratureCost:
    """One row of :func:`quadrature_cost`.

    ``evaluations`` is n^d (counted when ``measured``); ``seconds`` the measured wall time or
    the extrapolation evaluations x (seconds per evaluation), ``inf`` when beyond a float;
    ``relative_error`` |Z_grid / Z - 1| for the measured rows, NaN for extrapolated ones.
    """

    dim: int
    n_per_dim: int
    evaluations: int
    log10_evaluations: float
    seconds: float
    log10_seconds: float
    relative_error: float
    measured: bool


def quadrature_cost(
    dims: Sequence[int] = (1, 2, 3, 4, 5),
    n_per_dim: int = 16,
    extrapolate_to: Sequence[int] = (10, 20, 100, 784),
    bounds=(-6.0, 6.0),
    repeats: int = 3,
) -> list[QuadratureCost]:
    """Measure grid quadrature of Z for a standard Gaussian in d = ``dims``; extrapolate beyond.

    For each measured d: the wall time (best of ``repeats`` runs) and the number of energy
    evaluations (counted, not assumed) of :func:`grid_partition_function`, and its error
    against the exact (2 pi)^{d/2}. The time per evaluation at the largest measured d then
    predicts the cost of the n^d evaluations of each ``extrapolate_to`` dimension (784 = 28 x 28,
    one MNIST image). Rows come back in order of d.
    """
    n_per_dim = _count(n_per_dim, "n_per_dim")
    repeats = _count(repeats, "repeats")
    dims = sorted({_count(d, "dims") for d in dims})
    rows: list[QuadratureCost] = []
    for dim in dims:
        gaussian = gaussian_energy(dim=dim)
        calls = 0

        def counted(x: Tensor, gaussian=gaussian) -> Tensor:
            nonlocal calls
            calls += x.shape[0]
            return gaussian(x)

        times = []
        for _ in range(repeats):
            calls, start = 0, time.perf_counter()
            z = float(grid_partition_function(counted, dim, bounds, n_per_dim))
            times.append(time.perf_counter() - start)
        error = abs(z / math.exp(gaussian.log_z) - 1.0)
        rows.append(_cost_row(dim, n_per_dim, calls, math.log10(min(times)), error, True))
    log10_per_call = rows[-1].log10_seconds - rows[-1].log10_evaluations
    for dim in sorted({_count(d, "extrapolate_to") for d in extrapolate_to} - set(dims)):
        evaluations = n_per_dim**dim
        log10_seconds = math.log10(evaluations) + log10_per_call
        rows.append(_cost_row(dim, n_per_dim, evaluations, log10_seconds, math.nan, False))
    return rows


def _cost_row(dim, n, evaluations, log10_seconds, error, measured) -> QuadratureCost:
    seconds = 10.0**log10_seconds if log10_seconds < 300 else math.inf
    return QuadratureCost(
        dim, n, evaluations, math.log10(evaluations), seconds, log10_seconds, error, measured
    )
