"""Sample-quality metrics: how far is a cloud of samples from the distribution it imitates?

Two families, for the two kinds of data of the course.

Point clouds (2D toy data, or any dimension), all on tensors of shape (N, d):

* :func:`sliced_wasserstein` -- sliced Wasserstein distance: 1D Wasserstein distances of random
  projections, where optimal transport is just sorting (Rabin et al., 2011; Bonneel et al., 2015).
* :func:`energy_distance` -- squared energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Székely &
  Rizzo, 2004, 2013).
* :func:`mmd` -- squared maximum mean discrepancy with a Gaussian kernel (Gretton et al., 2012).

A raw number means little: two independent samples of the *true* distribution are not at
distance zero either. :func:`two_sample_floor` measures that floor and :func:`compare_to_floor`
reports a metric as "x times the floor", which reads the same for every data set and size.

MNIST images, shape (N, 1, 28, 28) in [-1, 1]: a small :class:`LeNet` classifier trained on
MNIST (weights ship with the package, ``scripts/train_lenet.py`` retrains them) gives

* :func:`classifier_fid` -- Fréchet distance between Gaussians fitted to its penultimate features,
  the recipe of FID (Heusel et al., 2017) with a digit classifier in place of Inception;
* :func:`classifier_confidence`, :func:`predict_digits` -- do samples look like digits, and which.

Values of the LeNet FID are comparable only with each other (same network, same sample
sizes), not with published Inception FIDs; :func:`inception_fid` computes the latter when the
optional package ``torch-fidelity`` is installed.

Pairwise metrics are computed in row blocks, so 10k x 10k samples need only a few tens of MB.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import draw_normal
from ._utils import positive_int as _positive_int

__all__ = [
    "LENET_WEIGHTS",
    "METRICS",
    "FloorComparison",
    "DigitJudgement",
    "JUDGE_WEIGHTS",
    "LeNet",
    "NOT_A_DIGIT",
    "judge_digits",
    "load_digit_judge",
    "SampleFloor",
    "classifier_confidence",
    "classifier_fid",
    "compare_to_floor",
    "energy_distance",
    "fid_from_features",
    "frechet_distance",
    "inception_fid",
    "lenet_features",
    "lenet_logits",
    "load_lenet",
    "mmd",
    "predict_digits",
    "ratio_to_floor",
    "sliced_wasserstein",
    "two_sample_floor",
]

LENET_WEIGHTS = Path(__file__).resolve().parent / "assets" / "lenet_mnist.pt"
"""Where the trained LeNet weights live (written by ``scripts/train_lenet.py``)."""

JUDGE_WEIGHTS = Path(__file__).resolve().parent / "assets" / "digit_judge.safetensors"
"""The digit judge's weights (written by ``scripts/train_lenet.py --judge``)."""

NOT_A_DIGIT = 10
"""The digit judge's 11th class: noise, heavy blur, pixel-shuffled digits, blends of two."""

_BLOCK_ELEMENTS = 1 << 22  # about 4M pairwise entries (16 MB in float32) per block

# --------------------------------------------------------------------------- validation


def _samples(x: object, name: str) -> Tensor:
    """``x`` as a floating (N, d) tensor; a 1-D tensor (N,) is read as N points in 1D."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, d), got {type(x).__name__}")
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, d) with N, d >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    return x


def _pair(x: object, y: object) -> tuple[Tensor, Tensor]:
    """Two sample sets of the same dimension, on ``x``'s device and in a common dtype."""
    x, y = _samples(x, "x"), _samples(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same dimension d, got x: {tuple(x.shape)}, y: {tuple(y.shape)}"
        )
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(device=x.device, dtype=dtype)


def _resolve_generator(
    generator: torch.Generator | None, seed: int | None
) -> torch.Generator | None:
    """``generator``, or a fresh CPU generator seeded with ``seed``; not both."""
    if seed is None:
        return generator
    if generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- point clouds


def _wasserstein_1d(x_sorted: Tensor, y_sorted: Tensor, p: float) -> Tensor:
    """W_p^p between empirical 1D distributions, column by column: (N, P), (M, P) -> (P,).

    W_p^p = int_0^1 |F^-1(u) - G^-1(u)|^p du. Both quantile functions are step functions, so
    the integral is an exact finite sum over the merged steps {i/N} and {j/M}. With N = M this
    is the mean of |x_(i) - y_(i)|^p over the order statistics.
    """
    n, m = x_sorted.shape[0], y_sorted.shape[0]
    if n == m:
        return (x_sorted - y_sorted).abs().pow(p).mean(0)
    dev, dtype = x_sorted.device, torch.float64
    levels = (
        torch.cat(
            [
                torch.arange(1, n + 1, device=dev, dtype=dtype) / n,
                torch.arange(1, m + 1, device=dev, dtype=dtype) / m,
            ]
        )
        .sort()
        .values
    )
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    middles = levels - widths / 2  # strictly inside each step, away from rounding at the edges
    ix = (middles * n).long().clamp_(max=n - 1)
    iy = (middles * m).long().clamp_(max=m - 1)
    gaps = (x_sorted[ix] - y_sorted[iy]).abs().pow(p)
    return (widths.to(gaps.dtype)[:, None] * gaps).sum(0)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 256,
    p: float = 2,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> float:
    """Sliced Wasserstein-p distance between the empirical distributions of x and y.

    SW_p(mu, nu) = ( E_theta W_p^p(theta#mu, theta#nu) )^(1/p), theta uniform on the unit
    sphere S^(d-1) (Rabin et al., 2011; Bonneel et al., 2015). Each projection is a 1D
    transport problem solved exactly by sorting; the expectation over directions is a
    Monte-Carlo mean over ``n_projections`` random directions.

    Args:
        x, y: samples of shapes (N, d) and (M, d) (1-D tensors are read as d = 1). N and M may
            differ: the 1D distances then integrate the two quantile functions exactly.
        n_projections: number of random directions (in 1D the only direction is used once).
        p: order p >= 1 (default 2).
        generator, seed: make the directions reproducible: a ``torch.Generator``, or an int
            from which a fresh CPU generator is made. Without either the global RNG is used.

    Returns:
        A float. For two isotropic Gaussians differing by a shift delta, SW_2 = |delta| / sqrt(d);
        in 1D, SW_p is the ordinary W_p.
    """
    x, y = _pair(x, y)
    n_projections = _positive_int(n_projections, "n_projections")
    if isinstance(p, bool) or not isinstance(p, int | float) or not p >= 1:
        raise ValueError(f"p must be a number >= 1, got {p!r}")
    generator = _resolve_generator(generator, seed)
    d = x.shape[1]
    if d == 1:
        directions = x.new_ones(1, 1)
    else:
        # Drawn in float32 whatever x's dtype, so one seed gives one set of directions.
        directions = draw_normal((n_projections, d), generator, device=x.device).to(x.dtype)
        directions = directions / directions.norm(dim=1, keepdim=True)
    block = max(1, _BLOCK_ELEMENTS // (x.shape[0] + y.shape[0]))
    costs = [
        _wasserstein_1d(
            (x @ theta.T).sort(dim=0).values, (y @ theta.T).sort(dim=0).values, float(p)
        )
        for theta in directions.split(block)
    ]
    return torch.cat(costs).double().mean().pow(1.0 / p).item()


def _row_blocks(a: Tensor, b: Tensor):
    """Split a's rows so that each block of pairwise entries with b stays small."""
    return a.split(max(1, _BLOCK_ELEMENTS // b.shape[0]))


def _pairwise_sum(a: Tensor, b: Tensor, transform: Callable[[Tensor], Tensor]) -> float:
    """sum_ij transform(|a_i - b_j|), computed block by block, accumulated in float64."""
    total = 0.0
    for rows in _row_blocks(a, b):
        # The direct mode gives exact zeros for identical points (the matmul trick does not).
        distances = torch.cdist(rows, b, compute_mode="donot_use_mm_for_euclid_dist")
        total += transform(distances).sum(dtype=torch.float64).item()
    return total


def _pair_means(
    x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor], diagonal: float, unbiased: bool
) -> tuple[float, float, float]:
    """Means of transform(|.|) over pairs (x, x'), (y, y') and (x, y).

    ``diagonal`` is transform(0). The U-statistic (``unbiased``) leaves out the i = j terms of
    the within-sample means; the V-statistic keeps them.
    """
    n, m = x.shape[0], y.shape[0]
    if unbiased and min(n, m) < 2:
        raise ValueError("the unbiased estimator needs at least 2 samples in x and in y")
    sxx, syy = _pairwise_sum(x, x, transform), _pairwise_sum(y, y, transform)
    sxy = _pairwise_sum(x, y, transform)
    if unbiased:
        return (
            (sxx - n * diagonal) / (n * (n - 1)),
            (syy - m * diagonal) / (m * (m - 1)),
            sxy / (n * m),
        )
    return sxx / n**2, syy / m**2, sxy / (n * m)


def energy_distance(x: Tensor, y: Tensor, unbiased: bool = False) -> float:
    """Squared energy distance D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Székely & Rizzo, 2004).

    D^2 >= 0, with equality exactly when the two distributions are equal; it is also twice
    the squared MMD with the distance kernel (Sejdinovic et al., 2013). Expectations are
    replaced by sample means over all pairs:

    * ``unbiased=False`` (default): V-statistic, the squared energy distance between the two
      empirical distributions: always >= 0 and exactly 0 when x and y are the same points. Its
      mean under the null is positive, of order 1/N, which is what a floor measures.
    * ``unbiased=True``: U-statistic (i != j in the within-sample means), unbiased for D^2; it
      can be slightly negative.

    In 1D, D^2 = 2 int (F(t) - G(t))^2 dt, twice Cramér's distance.
    """
    x, y = _pair(x, y)
    mxx, myy, mxy = _pair_means(x, y, lambda r: r, 0.0, unbiased)
    return 2.0 * mxy - mxx - myy


def _median_distance(x: Tensor, y: Tensor, max_points: int = 1000) -> float:
    """Median pairwise distance in the pooled sample (on at most ``max_points`` evenly
    spaced points of it, so it costs little and draws no random numbers)."""
    pooled = torch.cat([x, y])
    if pooled.shape[0] > max_points:
        index = torch.linspace(0, pooled.shape[0] - 1, max_points, device=pooled.device)
        pooled = pooled[index.round().long()]
    distances = torch.pdist(pooled)
    return distances.median().item() if distances.numel() else 0.0


def mmd(x: Tensor, y: Tensor, bandwidth: float | None = None, unbiased: bool = True) -> float:
    """Squared maximum mean discrepancy with the Gaussian kernel (Gretton et al., 2012).

    MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y), k(a, b) = exp(-|a - b|^2 / (2 h^2)).

    Args:
        x, y: samples of shapes (N, d) and (M, d).
        bandwidth: kernel width h > 0. Default: the median heuristic, h = median distance
            between points of the pooled sample (Gretton et al., 2012, Sec. 8).
        unbiased: the U-statistic of Gretton et al. (their Eq. 3, i != j within samples;
            default), whose mean is exactly 0 when x and y come from the same distribution, so
            it can be slightly negative; ``False`` gives the biased V-statistic (>= 0).
    """
    x, y = _pair(x, y)
    if bandwidth is None:
        bandwidth = _median_distance(x, y)
        if bandwidth <= 0:
            return 0.0  # every point is the same point: the two samples are equal
    elif isinstance(bandwidth, Tensor) and bandwidth.numel() == 1:
        bandwidth = bandwidth.item()
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float) or bandwidth <= 0:
        raise ValueError(f"bandwidth must be a positive number or None, got {bandwidth!r}")
    scale = -0.5 / float(bandwidth) ** 2

    def kernel(r: Tensor) -> Tensor:
        return torch.exp(scale * r.square())

    kxx, kyy, kxy = _pair_means(x, y, kernel, 1.0, unbiased)
    return kxx + kyy - 2.0 * kxy


METRICS: dict[str, Callable[[Tensor, Tensor], float]] = {
    "sliced_wasserstein": functools.partial(sliced_wasserstein, seed=0),
    "energy_distance": energy_distance,
    "mmd": mmd,
}
"""Metrics by name, ready for :func:`compare_to_floor`. ``sliced_wasserstein`` uses fixed
directions (seed 0) so that a value and its floor are measured along the same projections."""


# --------------------------------------------------------------------------- the floor


@dataclass(frozen=True)
class SampleFloor:
    """A metric between two independent true samples of size n: mean and std over repeats."""

    mean: float
    std: float
    values: tuple[float, ...]
    n: int


@dataclass(frozen=True)
class FloorComparison:
    """A metric's value next to its floor. ``ratio`` = value / floor mean ("x times the floor");
    ``z`` = (value - floor mean) / floor std, the scale to read for unbiased estimators such as
    :func:`mmd`, whose floor is close to 0."""

    metric: str
    value: float
    floor: float
    floor_std: float
    n: int

    @property
    def ratio(self) -> float:
        if self.floor > 0:
            return self.value / self.floor
        return math.inf if self.value > 0 else math.nan

    @property
    def z(self) -> float:
        if self.floor_std > 0:
            return (self.value - self.floor) / self.floor_std
        return math.nan

    def __str__(self) -> str:
        return (
            f"{self.metric} = {self.value:.4g}: {self.ratio:.3g} x the floor "
            f"{self.floor:.3g} ± {self.floor_std:.2g} of two true samples of size {self.n}"
        )


def _metric(metric: str | Callable[[Tensor, Tensor], float]) -> tuple[str, Callable]:
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(
                f"metric must be one of {sorted(METRICS)} or a callable, got {metric!r}"
            )
        return metric, METRICS[metric]
    if not callable(metric):
        raise TypeError(f"metric must be a name or a callable (x, y) -> float, got {metric!r}")
    inner = getattr(metric, "func", metric)  # a functools.partial names its function
    return getattr(inner, "__name__", type(inner).__name__), metric


def _as_float(value: object) -> float:
    return value.item() if isinstance(value, Tensor) else float(value)


def two_sample_floor(
    sampler: Callable[[int, torch.Generator | None], Tensor],
    metric: str | Callable[[Tensor, Tensor], float],
    n: int,
    n_repeats: int = 5,
    generator: torch.Generator | None = None,
) -> SampleFloor:
    """The metric between two independent samples of size n of the true distribution.

    This is the best value a perfect model can expect at this sample size: any estimate from
    finite samples sits above (or, for unbiased estimators, scatters around) zero.

    Args:
        sampler: ``sampler(n, generator) -> (n, d) tensor`` drawing from the true distribution,
            e.g. ``functools.partial(toy.sample, "moons")`` or ``mixture.sample``.
        metric: a name of :data:`METRICS` or a callable ``(x, y) -> float``.
        n: sample size (use the size of the samples you will compare).
        n_repeats: number of independent pairs; the result has their mean and std.
        generator: drives every draw, so the floor is reproducible.
    """
    _, metric = _metric(metric)
    n, n_repeats = _positive_int(n, "n"), _positive_int(n_repeats, "n_repeats")
    values = tuple(
        _as_float(metric(sampler(n, generator), sampler(n, generator))) for _ in range(n_repeats)
    )
    spread = torch.tensor(values, dtype=torch.float64)
    std = spread.std().item() if n_repeats > 1 else 0.0
    return SampleFloor(mean=spread.mean().item(), std=std, values=values, n=n)


def compare_to_floor(
    samples: Tensor,
    sampler: Callable[[int, torch.Generator | None], Tensor],
    metric: str | Callable[[Tensor, Tensor], float] = "sliced_wasserstein",
    n_repeats: int = 5,
    generator: torch.Generator | None = None,
) -> FloorComparison:
    """The metric between ``samples`` and a fresh true sample of the same size, next to its floor.

    ``print(compare_to_floor(x, partial(toy.sample, "moons")))`` reads e.g.
    "sliced_wasserstein = 0.031: 1.4 x the floor 0.022 ± 0.004 of two true samples of size
    2000". A ratio near 1 means the model is as close as the sample size can tell.
    """
    name, fn = _metric(metric)
    samples = _samples(samples, "samples")
    n = samples.shape[0]
    reference = sampler(n, generator)
    value = _as_float(fn(samples, reference.to(samples.device)))
    floor = two_sample_floor(sampler, fn, n, n_repeats=n_repeats, generator=generator)
    return FloorComparison(metric=name, value=value, floor=floor.mean, floor_std=floor.std, n=n)


def ratio_to_floor(
    samples: Tensor,
    sampler: Callable[[int, torch.Generator | None], Tensor],
    metric: str | Callable[[Tensor, Tensor], float] = "sliced_wasserstein",
    n_repeats: int = 5,
    generator: torch.Generator | None = None,
) -> float:
    """Just the ratio of :func:`compare_to_floor`: the metric in units of its floor."""
    return compare_to_floor(samples, sampler, metric, n_repeats, generator).ratio


# --------------------------------------------------------------------------- Fréchet distance


def _sqrt_psd(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigh)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Squared Fréchet (Wasserstein-2) distance between N(mu1, cov1) and N(mu2, cov2).

    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau, 1982). The trace of
    (S1 S2)^(1/2) equals that of (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric PSD matrix, so it is
    computed from eigenvalues in float64, with no complex parts to discard.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    cov1, cov2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"expected means of shape (d,) and covariances (d, d) with the same d, got "
            f"{tuple(mu1.shape)}, {tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}"
        )
    cov2 = cov2.to(cov1.device)
    root1 = _sqrt_psd((cov1 + cov1.T) / 2)
    middle = root1 @ cov2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2.to(mu1.device)).square().sum() + cov1.trace() + cov2.trace() - 2 * cross
    return max(distance.item(), 0.0)


def fid_from_features(features1: Tensor, features2: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (N, k) and (M, k).

    The FID recipe of Heusel et al. (2017): sample means and (unbiased) sample covariances of
    the features, then :func:`frechet_distance`. Needs at least 2 rows in each set; the
    estimate is biased upwards at small N, so compare values computed at equal sizes.
    """
    f1, f2 = (
        _samples(f, name).double()
        for f, name in ((features1, "features1"), (features2, "features2"))
    )
    if f1.shape[1] != f2.shape[1] or min(f1.shape[0], f2.shape[0]) < 2:
        raise ValueError(
            "features1 and features2 must have the same width and at least 2 rows each, got "
            f"{tuple(f1.shape)} and {tuple(f2.shape)}"
        )
    return frechet_distance(f1.mean(0), torch.cov(f1.T), f2.mean(0), torch.cov(f2.T))


# --------------------------------------------------------------------------- MNIST classifier


class LeNet(nn.Module):
    """A small LeNet-5-style digit classifier (LeCun et al., 1998), about 62k parameters.

    conv 5x5 (8) -> max-pool -> conv 5x5 (16) -> max-pool -> 120 -> 84 -> ``n_classes``
    logits, ReLUs. Input: (N, 1, 28, 28) images in [-1, 1]. :meth:`features` returns the 84
    penultimate activations used by :func:`classifier_fid`. The digit judge
    (:func:`judge_digits`) is the same network with an 11th class, "not a digit".
    """

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv2d(8, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.head = nn.Linear(84, n_classes)

    def features(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@functools.lru_cache(maxsize=1)
def _lenet_state() -> dict[str, Tensor]:
    if not LENET_WEIGHTS.exists():
        raise FileNotFoundError(
            f"LeNet weights not found at {LENET_WEIGHTS}; create them with "
            "`python scripts/train_lenet.py`"
        )
    checkpoint = torch.load(LENET_WEIGHTS, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in checkpoint["state_dict"].items()}


def load_lenet(device: torch.device | str | None = None) -> LeNet:
    """The trained :class:`LeNet`, in eval mode, without gradients, on ``device`` (default CPU)."""
    model = LeNet()
    model.load_state_dict(_lenet_state())
    model.requires_grad_(False)
    return model.eval().to("cpu" if device is None else device)


@functools.lru_cache(maxsize=1)
def _judge_state() -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not JUDGE_WEIGHTS.exists():
        raise FileNotFoundError(
            f"digit judge weights not found at {JUDGE_WEIGHTS}; create them with "
            "`python scripts/train_lenet.py --judge`"
        )
    return {k: v.float() for k, v in load_file(str(JUDGE_WEIGHTS)).items()}


def load_digit_judge(device: torch.device | str | None = None) -> LeNet:
    """The digit judge: a :class:`LeNet` with 11 classes, the digits and :data:`NOT_A_DIGIT`,
    trained on MNIST and on non-digits made from it (Gaussian and smoothed noise, heavy
    blur, pixel-shuffled digits, blends of two digits). Eval mode, no gradients."""
    model = LeNet(n_classes=11)
    model.load_state_dict(_judge_state())
    model.requires_grad_(False)
    return model.eval().to("cpu" if device is None else device)


@dataclass(frozen=True)
class DigitJudgement:
    """What the digit judge says of each image: ``label`` (N,) in 0..10 (10: not a digit),
    ``confidence`` (N,) the probability of that label, ``digit_probability`` (N,) the total
    probability of the ten digit classes."""

    label: Tensor
    confidence: Tensor
    digit_probability: Tensor

    @property
    def recognisable(self) -> Tensor:
        """Boolean (N,): the judge's answer is a digit, with probability at least 0.5."""
        return (self.label != NOT_A_DIGIT) & (self.confidence >= 0.5)


def judge_digits(images: Tensor, batch_size: int = 1000) -> DigitJudgement:
    """Whether each image (N, 1, 28, 28) in [-1, 1] is a recognisable digit, and which.

    Unlike the 10-class :class:`LeNet`, which is confident on noise (about 0.9), the judge
    has a "not a digit" class, so a count of recognisable samples means something; compare
    it with the count on real test digits (see tests/test_metrics.py)."""
    model = load_digit_judge(_mnist_images(images).device)
    probabilities = _batched(LeNet.forward, images, model, batch_size).softmax(dim=1)
    confidence, label = probabilities.max(dim=1)
    return DigitJudgement(label, confidence, 1 - probabilities[:, NOT_A_DIGIT])


def _mnist_images(images: object) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(
            f"images must have shape (N, 1, 28, 28) (values in [-1, 1]), got {tuple(images.shape)}"
        )
    return images


def _batched(fn: Callable[[Tensor], Tensor], images: Tensor, model, batch_size: int) -> Tensor:
    images = _mnist_images(images)
    batch_size = _positive_int(batch_size, "batch_size")
    model = load_lenet(images.device) if model is None else model
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        return torch.cat([fn(model, b.to(dtype)) for b in images.split(batch_size)])


def lenet_features(images: Tensor, batch_size: int = 1000, model: LeNet | None = None) -> Tensor:
    """Penultimate LeNet activations (N, 84) of images (N, 1, 28, 28) in [-1, 1]."""
    return _batched(LeNet.features, images, model, batch_size)


def lenet_logits(images: Tensor, batch_size: int = 1000, model: LeNet | None = None) -> Tensor:
    """Class logits (N, 10) of images (N, 1, 28, 28) in [-1, 1]."""
    return _batched(LeNet.forward, images, model, batch_size)


def predict_digits(images: Tensor, batch_size: int = 1000, model: LeNet | None = None) -> Tensor:
    """The digit (0-9) the LeNet sees in each image: a long tensor of shape (N,)."""
    return lenet_logits(images, batch_size, model).argmax(dim=1)


def classifier_confidence(
    images: Tensor, batch_size: int = 1000, model: LeNet | None = None
) -> float:
    """Mean over images of the largest softmax probability of the LeNet.

    About 0.99 on MNIST test digits, lower on blurred or malformed ones. A quick check of
    whether samples are recognisable digits, in the spirit of the Inception score (Salimans et
    al., 2016). Not a detector of nonsense on its own: like most classifiers, the LeNet is
    confident on many out-of-distribution inputs (about 0.9 on clipped Gaussian noise), so
    read it together with :func:`classifier_fid` and a look at the samples.
    """
    probabilities = lenet_logits(images, batch_size, model).softmax(dim=1)
    return probabilities.max(dim=1).values.mean().item()


def classifier_fid(
    x: Tensor, y: Tensor, batch_size: int = 1000, model: LeNet | None = None
) -> float:
    """FID with the LeNet: :func:`fid_from_features` of the penultimate features of x and y.

    Both are (N, 1, 28, 28) images in [-1, 1]. Compare values at equal sample sizes: the
    estimate decreases with N. For scale, against 1000 real test digits: 1000 other real
    digits score about 3, digits blurred with a Gaussian of width 1 pixel about 120, clipped
    Gaussian noise about 600 (see tests/test_metrics.py).
    """
    return fid_from_features(
        lenet_features(x, batch_size, model), lenet_features(y, batch_size, model)
    )


def inception_fid(x: Tensor, y: Tensor, batch_size: int = 64) -> float:
    """The usual Inception FID (Heusel et al., 2017) through ``torch-fidelity`` (optional).

    Images (N, C, H, W) in [-1, 1] with C = 1 or 3 are converted to 8-bit RGB; torch-fidelity
    resizes them for InceptionV3 and downloads its weights on first use. Slow on a CPU.
    """
    try:
        import torch_fidelity
    except ImportError:
        raise ImportError(
            "inception_fid needs the optional package torch-fidelity: "
            "`pip install torch-fidelity` (use classifier_fid for MNIST without it)"
        ) from None

    class _Images(torch.utils.data.Dataset):
        def __init__(self, images: Tensor) -> None:
            images = images.detach().cpu()
            if images.ndim != 4 or images.shape[1] not in (1, 3):
                raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
            rgb = images.expand(-1, 3, -1, -1)
            self.images = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

        def __len__(self) -> int:
            return self.images.shape[0]

        def __getitem__(self, i: int) -> Tensor:
            return self.images[i]

    result = torch_fidelity.calculate_metrics(
        input1=_Images(x),
        input2=_Images(y),
        fid=True,
        batch_size=batch_size,
        cuda=x.is_cuda,
        verbose=False,
    )
    return float(result["frechet_inception_distance"])
