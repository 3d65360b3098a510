"""Noise-conditional score networks (NCSN) and annealed Langevin dynamics.

One network s(x, sigma) learns the score of the data blurred at every noise level of a
decreasing sequence sigma_1 > ... > sigma_L (notes Eq. 24-25), trained with denoising score
matching summed over the levels with the weight sigma^2 (Eq. 26), and sampled by Langevin
dynamics that walks down the levels (Eq. 27). Song & Ermon (2019) introduced the method;
Song & Ermon (2020) made it robust ("NCSNv2"), and each of their techniques is an option here:

==========================================  ==================================================
piece                                       where
==========================================  ==================================================
geometric noise levels                      :func:`geometric_sigmas`
largest level = largest data distance       :func:`sigma_max_from_data` (NCSNv2 technique 1)
weighted multi-level DSM loss (Eq. 26)      :func:`ncsn_loss`
annealed Langevin dynamics (Eq. 27)         :func:`annealed_langevin`
final denoising step (Tweedie's formula)    :func:`tweedie_denoise`, ``final_denoise=True``
s(x, sigma) = net(x) / sigma                :class:`NoiseConditionalScore` (technique 3)
EMA of the weights (technique 5)            ``train.train(..., ema_decay=0.999)``
ready-made networks                         :func:`ncsn_mlp` (2D), :func:`ncsn_unet` (images)
exact scores of a noised mixture            :func:`mixture_score`
==========================================  ==================================================

A *noise-conditional score* is any callable ``score_fn(x, sigma)`` where ``sigma`` is a
number (the samplers pass one level at a time) or a tensor of shape (N,) (the loss draws one
level per sample); it returns a tensor of the shape of ``x``. Noise levels are indexed from 0:
``sigmas[0]`` is the largest, the notes' and the papers' sigma_1, and ``sigmas[L - 1]`` the
smallest, sigma_L.

References: Song & Ermon (2019), "Generative modeling by estimating gradients of the data
distribution"; Song & Ermon (2020), "Improved techniques for training score-based generative
models"; Vincent (2011), "A connection between score matching and denoising autoencoders";
Efron (2011), "Tweedie's formula and selection bias".
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._utils import draw_categorical
from .langevin import langevin_step
from .score_matching import dsm_loss
from .toy import GaussianMixture

__all__ = [
    "NoiseConditionalScore",
    "annealed_langevin",
    "check_sigmas",
    "geometric_sigmas",
    "mixture_score",
    "ncsn_loss",
    "ncsn_mlp",
    "ncsn_unet",
    "sigma_max_from_data",
    "tweedie_denoise",
]

NoiseConditionalScoreFn = Callable[[Tensor, float | Tensor], Tensor]

_CONDITIONINGS = ("log_sigma", "index", None)


# --------------------------------------------------------------------------- validation


def _positive_number(value: object, name: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _count(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_sigmas(sigmas: Sequence[float] | Tensor) -> Tensor:
    """``sigmas`` as a 1-D float64 tensor on the CPU, checked: finite, > 0, strictly decreasing.

    Raises ``ValueError`` naming what is wrong (the samplers and the loss call this).
    """
    try:
        values = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"sigmas must be a sequence or 1-D tensor of numbers, got {type(sigmas).__name__}"
        ) from None
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(
            f"sigmas must be a non-empty 1-D sequence, got shape {tuple(values.shape)}"
        )
    if not bool((torch.isfinite(values) & (values > 0)).all()):
        raise ValueError("sigmas must be finite and > 0")
    if not bool((values[1:] < values[:-1]).all()):
        raise ValueError(
            "sigmas must be strictly decreasing, from the largest noise level sigma_1 to the "
            f"smallest sigma_L; got {values.tolist()}"
        )
    return values


def _shape_like(sigma: Tensor, x: Tensor) -> Tensor:
    """A per-sample (N,) tensor shaped (N, 1, ..., 1) to broadcast against ``x``."""
    return sigma.reshape(-1, *[1] * (x.ndim - 1))


def _per_sample(sigma: float | Tensor, x: Tensor) -> Tensor:
    """``sigma`` (a number, a 0-d or an (N,) tensor) as an (N,) tensor on x's device/dtype."""
    if isinstance(sigma, Tensor):
        if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] != x.shape[0]):
            raise ValueError(
                f"sigma must be a number or a tensor of shape () or (N,) = ({x.shape[0]},), "
                f"got shape {tuple(sigma.shape)}"
            )
        sigma = sigma.to(device=x.device, dtype=x.dtype)
        return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
    value = _positive_number(sigma, "sigma")
    return torch.full((x.shape[0],), value, device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------- noise levels


def geometric_sigmas(
    sigma_max: float,
    sigma_min: float,
    n_levels: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The decreasing geometric sequence sigma_1 = sigma_max > ... > sigma_L = sigma_min.

    sigma_i = sigma_max * r^(i - 1) with the common ratio r = (sigma_min / sigma_max)^(1 /
    (L - 1)) (Song & Ermon, 2019; notes Section 5: "the noise level decreases
    exponentially"). Equally spaced in log sigma, so adjacent perturbed densities overlap
    equally at every scale. Returns a tensor of shape (n_levels,) whose first and last
    entries are exactly ``sigma_max`` and ``sigma_min``; float64 by default (cast with
    ``.to(x)``).

    Args:
        sigma_max: the largest level, > sigma_min.
        sigma_min: the smallest level, > 0.
        n_levels: L >= 2.
    """
    sigma_max = _positive_number(sigma_max, "sigma_max")
    sigma_min = _positive_number(sigma_min, "sigma_min")
    n_levels = _count(n_levels, "n_levels", minimum=2)
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max must be > sigma_min, got {sigma_max} <= {sigma_min}")
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), n_levels, dtype=torch.float64)
    sigmas = logs.exp()
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas.to(dtype=dtype, device=device)


def sigma_max_from_data(
    x: Tensor,
    max_points: int | None = None,
    generator: torch.Generator | None = None,
    block_size: int = 1024,
) -> float:
    """The largest Euclidean distance between two data points (Song & Ermon, 2020, technique 1).

    For the largest noise level to let Langevin dynamics travel between any two modes, the
    perturbed density q_sigma_1 must connect them: NCSNv2 takes sigma_1 as large as the
    maximum pairwise distance of the training data. ``x`` has shape (N, ...) (images are
    flattened). The exact maximum costs O(N^2 D), computed in blocks of ``block_size`` rows;
    ``max_points`` uses a random subset of that many points (drawn from ``generator``), which
    gives a lower bound that is close for large subsets.
    """
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError("x must be a floating tensor of data points, shape (N, d) or (N, C, H, W)")
    if x.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 points, got {x.shape[0]}")
    block_size = _count(block_size, "block_size")
    points = x.detach().flatten(1)
    if max_points is not None and _count(max_points, "max_points", minimum=2) < len(points):
        device = generator.device if generator is not None else torch.device("cpu")
        keep = torch.randperm(len(points), generator=generator, device=device)[:max_points]
        points = points[keep.to(points.device)]
    largest = 0.0
    for start in range(0, len(points), block_size):
        distances = torch.cdist(points[start : start + block_size], points)
        largest = max(largest, float(distances.max()))
    return largest


# --------------------------------------------------------------------------- exact scores


def mixture_score(mixture: GaussianMixture) -> NoiseConditionalScoreFn:
    """The exact noise-conditional score of a Gaussian mixture: grad log q_sigma (Eq. 24-25).

    ``mixture_score(m)(x, sigma)`` is ``m.perturb(sigma).score(x)``, the ideal network of
    Eq. 25; ``sigma`` may be a number or one level per sample (N,) (each distinct level is
    evaluated once). The reference every learned NCSN and every sampler is tested against.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a toy.GaussianMixture, got {type(mixture).__name__}")

    perturbed: dict[float, GaussianMixture] = {}  # samplers ask for the same levels often

    def at(sigma: float) -> GaussianMixture:
        if sigma not in perturbed:
            perturbed[sigma] = mixture.perturb(sigma)
        return perturbed[sigma]

    def score(x: Tensor, sigma: float | Tensor) -> Tensor:
        if not isinstance(sigma, Tensor) or sigma.ndim == 0:
            return at(_positive_number(sigma, "sigma")).score(x)
        levels = _per_sample(sigma, x)
        out = torch.empty_like(x)
        for value in levels.unique():
            rows = levels == value
            out[rows] = at(_positive_number(value, "sigma")).score(x[rows])
        return out

    return score


# --------------------------------------------------------------------------- the loss


def ncsn_loss(
    score_fn: NoiseConditionalScoreFn,
    x: Tensor,
    sigmas: Sequence[float] | Tensor,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    levels: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Denoising score matching over all noise levels, weighted by sigma^2 (notes Eq. 26).

    Each sample x_n gets its own level i_n, uniform over 0..L-1 (from ``generator``), and the
    loss is the weighted DSM term of :func:`score_matching.dsm_loss` at that level::

        sigma_i^2 * 0.5 || s(x + sigma_i z, sigma_i) - (-z / sigma_i) ||^2
          = 0.5 || sigma_i s(x + sigma_i z, sigma_i) + z ||^2.

    Its expectation over the levels is (1 / L) sum_i sigma_i^2 l(theta; sigma_i): Eq. 26 up
    to the constant factor 1 / L, and Eq. 6 of Song & Ermon (2019) with lambda(sigma) =
    sigma^2. The weight makes every level count alike: the optimal score has size about
    1 / sigma, so sigma * s and z are both of order one whatever sigma is.

    Args:
        score_fn: ``score_fn(x_tilde, sigma)`` with sigma of shape (N,).
        x: clean data, (N, d) or (N, C, H, W).
        sigmas: the noise levels (see :func:`check_sigmas`).
        generator: drives the levels and the noise.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (shape (N,)).
        levels: optional level indices (N,) in 0..L-1 instead of random ones.
        noise: optional z of the shape of ``x`` instead of a fresh draw.
    """
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError("x must be a tensor of shape (N, d) or (N, C, H, W)")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be one of ['mean', 'sum', 'none'], got {reduction!r}")
    table = check_sigmas(sigmas).to(device=x.device, dtype=x.dtype)
    if levels is None:
        uniform = torch.ones(len(table), dtype=torch.float64)
        levels = draw_categorical(uniform, x.shape[0], generator, device=x.device)
    elif (
        not isinstance(levels, Tensor)
        or levels.shape != (x.shape[0],)
        or levels.is_floating_point()
        or bool(((levels < 0) | (levels >= len(table))).any())
    ):
        raise ValueError(
            f"levels must be an integer tensor of shape (N,) with values in 0..{len(table) - 1}"
        )
    sigma = table[levels.to(x.device)]
    per_sample = dsm_loss(
        lambda x_tilde: score_fn(x_tilde, sigma),
        x,
        sigma,
        generator=generator,
        reduction="none",
        noise=noise,
    )
    weighted = sigma**2 * per_sample
    if reduction == "none":
        return weighted
    return weighted.mean() if reduction == "mean" else weighted.sum()


# --------------------------------------------------------------------------- sampling


def tweedie_denoise(score_fn: NoiseConditionalScoreFn, x: Tensor, sigma: float) -> Tensor:
    """E[x_clean | x] = x + sigma^2 grad log q_sigma(x): Tweedie's formula (Efron, 2011).

    For x = x_clean + sigma z the posterior mean of the clean point is one score step away.
    Song & Ermon (2020) and Jolicoeur-Martineau et al. (2021) end annealed Langevin dynamics
    with it at sigma_L, which removes the noise of size sigma_L that the chain still carries.
    """
    sigma = _positive_number(sigma, "sigma")
    score = score_fn(x, sigma)
    if not isinstance(score, Tensor) or score.shape != x.shape:
        raise ValueError(f"score_fn must return a tensor of the shape of x {tuple(x.shape)}")
    return (x + sigma**2 * score).detach()


def annealed_langevin(
    score_fn: NoiseConditionalScoreFn,
    x: Tensor,
    sigmas: Sequence[float] | Tensor,
    n_steps_each: int,
    eps: float,
    final_denoise: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon, 2019, Algorithm 1; notes Eq. 27).

    For each level i = 0..L-1 (the papers' 1..L), from the largest sigma to the smallest,
    ``n_steps_each`` Langevin steps (notes Eq. 19) on the score at that level::

        alpha_i = eps * sigma_i^2 / sigma_L^2
        x <- x + (alpha_i / 2) score_fn(x, sigma_i) + sqrt(alpha_i) z,   z ~ N(0, I).

    Algorithm 1 of the paper writes the step in exactly this form, with eps its "epsilon";
    its official code writes x + a s + sqrt(2 a) z with a = step_lr * sigma_i^2 / sigma_L^2,
    so its ``step_lr`` is eps / 2. Each level starts where the previous one stopped, and the
    step size shrinks with sigma_i^2 so that the ratio of the signal term to the noise term
    is the same at every level.

    Choosing eps: along a direction where q_sigma_i is roughly Gaussian with variance
    sigma_i^2, one step shrinks the distance to equilibrium by the factor
    1 - eps / (2 sigma_L^2), the same at every level. With few steps per level, make
    eps / sigma_L^2 large enough (about 1 for T = 10) that each level sheds the noise of the
    previous one; it must stay well below 4, where the chain diverges. The stationary law of a
    level is inflated by the factor 1 / (1 - eps / (4 sigma_L^2)) (the unadjusted Langevin
    bias, see :mod:`dlai_diffusion.langevin`).

    Args:
        score_fn: the noise-conditional score ``score_fn(x, sigma)``, called with a float.
        x: initial points (N, ...), e.g. uniform noise or sigma_1 * N(0, I).
        sigmas: decreasing noise levels (see :func:`check_sigmas`).
        n_steps_each: Langevin steps per level, the paper's T (an int >= 0).
        eps: step size at the smallest level, > 0.
        final_denoise: end with :func:`tweedie_denoise` at sigma_L (NCSNv2).
        generator: drives every noise draw.
        callback: called as ``callback({"level": i, "step": k, "sigma": sigma_i, "x": x})``
            after step k = 0..n_steps_each-1 of level i (not after the final denoising).

    Returns the final samples, detached, with the shape, device and dtype of ``x``.
    """
    table = check_sigmas(sigmas).tolist()
    n_steps_each = _count(n_steps_each, "n_steps_each", minimum=0)
    eps = _positive_number(eps, "eps")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise ValueError("x must be a floating tensor with a batch axis (N, ...)")
    x = x.detach().clone()
    for level, sigma in enumerate(table):
        alpha = eps * (sigma / table[-1]) ** 2

        def score_at_level(points: Tensor, sigma: float = sigma) -> Tensor:
            return score_fn(points, sigma)

        for step in range(n_steps_each):
            x = langevin_step(score_at_level, x, alpha, generator)
            if callback is not None:
                callback({"level": level, "step": step, "sigma": sigma, "x": x})
    if final_denoise:
        x = tweedie_denoise(score_fn, x, table[-1])
    return x


# --------------------------------------------------------------------------- networks


class NoiseConditionalScore(nn.Module):
    """s(x, sigma) from a network ``net(x, c)``: maps sigma to the conditioning c the network
    expects and, optionally, divides the output by sigma.

    ``conditioning``:

    * ``"log_sigma"`` (default): c = log sigma, a continuous input for a time embedding
      (``nets.ScoreMLP``, ``nets.UNet(norm="group")``; Song et al., 2021, feed log sigma to
      Fourier features). Any sigma > 0 works.
    * ``"index"``: c = the index i of sigma in ``sigmas`` (a long tensor), for
      ``nets.UNet(norm="cin")`` whose conditional instance norm has one set of parameters per
      level (Song & Ermon, 2019). sigma must be one of the levels.
    * ``None``: the network is unconditional, ``net(x)``; with ``scale_output=True`` this is
      NCSNv2's s(x, sigma) = s(x) / sigma (Song & Ermon, 2020, technique 3).

    ``scale_output=True`` (default) returns net(...) / sigma: the true score of q_sigma has
    size about 1 / sigma, so the network only has to output something of order one.

    The levels travel with the model as the buffer ``sigmas`` (saved in checkpoints), so a
    trained model knows the schedule it was trained on. ``forward(x, sigma)`` takes sigma as
    a number or a tensor of shape () or (N,).
    """

    def __init__(
        self,
        net: nn.Module,
        sigmas: Sequence[float] | Tensor,
        conditioning: str | None = "log_sigma",
        scale_output: bool = True,
    ):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if conditioning not in _CONDITIONINGS:
            raise ValueError(
                f"conditioning must be one of {list(_CONDITIONINGS)}, got {conditioning!r}"
            )
        self.net = net
        self.conditioning = conditioning
        self.scale_output = bool(scale_output)
        self.register_buffer("sigmas", check_sigmas(sigmas).float())

    @property
    def n_levels(self) -> int:
        return len(self.sigmas)

    def level_index(self, sigma: Tensor) -> Tensor:
        """Index of each sigma (N,) in ``self.sigmas``; ``ValueError`` if one is not a level."""
        log_table = self.sigmas.double().log()
        distance = (sigma.double().log()[:, None] - log_table[None, :]).abs()
        gap, index = distance.min(dim=1)
        if bool((gap > 1e-4).any()):
            raise ValueError(
                "sigma must be one of the model's noise levels for conditioning='index', got "
                f"{sorted(set(sigma[gap > 1e-4].tolist()))[:5]}; levels: {self.sigmas.tolist()}"
            )
        return index

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        sigma = _per_sample(sigma, x)
        if not bool((sigma > 0).all()):
            raise ValueError("sigma must be > 0")
        if self.conditioning is None:
            out = self.net(x)
        elif self.conditioning == "index":
            out = self.net(x, self.level_index(sigma))
        else:
            out = self.net(x, sigma.log())
        return out / _shape_like(sigma, x) if self.scale_output else out


def ncsn_mlp(
    sigmas: Sequence[float] | Tensor,
    dim: int = 2,
    hidden: int = 128,
    depth: int = 3,
    scale_output: bool = True,
    **kwargs,
) -> NoiseConditionalScore:
    """A noise-conditional score for vectors: ``nets.ScoreMLP`` fed log sigma.

    The embedding of log sigma is sinusoidal with ``time_scale=4`` by default (levels one
    e-fold apart get well separated features); keyword arguments go to ``ScoreMLP``.
    """
    from .nets import ScoreMLP

    kwargs.setdefault("time_scale", 4.0)
    net = ScoreMLP(dim, hidden, depth, cond=True, **kwargs)
    return NoiseConditionalScore(net, sigmas, "log_sigma", scale_output)


def ncsn_unet(
    sigmas: Sequence[float] | Tensor,
    preset: str = "small",
    in_channels: int = 1,
    image_size: int = 28,
    norm: str = "cin",
    scale_output: bool = True,
    **overrides,
) -> NoiseConditionalScore:
    """A noise-conditional score for images: ``nets.unet`` conditioned on the noise level.

    ``norm="cin"``: NCSN's conditional instance normalisation++ with one set of parameters
    per level (Song & Ermon, 2019), fed the level index. ``norm="group"``: group
    normalisation and an embedding of log sigma added in every residual block (as in the
    DDPM U-Net of Ho et al., 2020, and NCSN++ of Song et al., 2021). Other keyword arguments
    override the preset (see ``nets.unet``).
    """
    from .nets import unet

    table = check_sigmas(sigmas)
    if norm == "cin":
        net = unet(preset, in_channels, image_size, norm="cin", n_cond=len(table), **overrides)
        return NoiseConditionalScore(net, table, "index", scale_output)
    if norm == "group":
        overrides.setdefault("time_scale", 4.0)
        net = unet(preset, in_channels, image_size, norm="group", **overrides)
        return NoiseConditionalScore(net, table, "log_sigma", scale_output)
    raise ValueError(f"norm must be 'cin' or 'group', got {norm!r}")
