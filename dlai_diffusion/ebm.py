"""Energy-based models trained by contrastive divergence, after Du & Mordatch (2019) (lecture 04).

An energy network E_theta defines the density p_theta(x) = exp(-E_theta(x)) / Z_theta (notes
Eq. 18). Its log-likelihood gradient is E_{p_theta}[grad E(x-)] - grad E(x+) (Eq. 21-22):
training needs samples x- of the model itself, which Langevin dynamics on the energy provides.

=====================================  =======================================================
name                                   what it is
=====================================  =======================================================
:func:`energy_langevin_step`,          Langevin dynamics on an energy with Du & Mordatch's
:func:`energy_langevin`                options: noise scale decoupled from the step size,
                                       per-step gradient clipping, clamping to the data range
:class:`ReplayBuffer`                  past negative samples, where new chains start (5% from
                                       fresh uniform noise)
:func:`contrastive_divergence_loss`    E[E(x+)] - E[E(x-)] + alpha E[E(x+)^2 + E(x-)^2]
                                       (Eq. 22 with the regulariser of Eq. 23)
:class:`EBM`                           an energy network and its replay buffer in one module
:class:`ContrastiveDivergence`         the ``loss_fn`` of :func:`dlai_diffusion.train.train`:
                                       buffer -> Langevin -> push back -> loss
=====================================  =======================================================

Du & Mordatch's chain and the notes' Eq. 19. The notes (and Eq. 2 of the paper) write one
step as x - (lambda / 2) grad E(x) + sqrt(lambda) z. Du & Mordatch's code takes

    x <- x - step_size * grad E(x) + noise_scale * z,        z ~ N(0, I),

which is Eq. 19 with lambda = 2 step_size only when noise_scale = sqrt(2 step_size) (the
default of :func:`energy_langevin_step`). In general it is Eq. 19 with lambda = noise_scale^2
run on the tempered energy E / T, T = noise_scale^2 / (2 step_size): its stationary law is
p_T ~ exp(-E / T), not p_theta. They use a much smaller noise than sqrt(2 step_size) (for
images step_size = 10, noise_scale = 0.005, so T ~ 1e-6): a cold, nearly noiseless descent on
the energy, closer to the implicit generator x = argmin E(x) of Eq. 20 than to a sample of
p_theta. Clipping the gradient and clamping x to the data range change the chain further.
This is what works for training image EBMs; in 2D the course uses the untempered chain.

Choosing the step of the untempered chain (2D). Two rules, both read off one quadratic well
E = lambda u^2 / 2 across a thin feature (lambda the curvature, lambda_max of the Hessian of
E): the chain u <- (1 - step_size lambda) u + sqrt(2 step_size) z is stationary with variance
2 step_size / (step_size lambda (2 - step_size lambda)).

- Stability: the variance is finite only while step_size * lambda_max < 2; at 2 and beyond
  the chain is thrown off the well. Keep a margin: step_size * lambda_max well below 2.
- Resolution: for every lambda the variance is at least 2 step_size (the minimum, at
  step_size lambda = 1): the chain cannot produce a spread narrower than sqrt(2 step_size).
  Choose step_size <= sigma^2 / 2 for the data's thinnest feature sigma. For such a well,
  step_size lambda = 1 - sqrt(1 - 2 step_size / sigma^2) <= 1 reproduces the width sigma.

Beyond the resolution limit contrastive divergence cannot win: the negatives are always wider
than the data, so it keeps sharpening the energy at the data until step_size * lambda_max
passes 2; the chains then become unstable at the data, the negatives are thrown off the walls,
and the loss settles at its separated optimum E(x+) = -1 / (2 alpha), E(x-) = +1 / (2 alpha).
This is what step_size = 0.004 (sqrt(2 step_size) = 0.089) did on moons and the swiss roll
(noise 0.05); the command line's 2D default is step_size = 0.001 (sqrt(2 step_size) = 0.045)
with 40 steps per training step and 1% fresh starts (``runs._EBM_AUTO``).

State and checkpoints. The replay buffer is part of the training state: :class:`EBM` keeps it
as a registered buffer of the module, so ``model.to(device)`` moves it and ``state_dict()``
(hence every checkpoint of :func:`~dlai_diffusion.train.train`) saves it; a resumed run
continues with the same buffer, bit for bit. With ``ema_decay`` the EMA copy of the model
holds a copy of the buffer too (buffers are copied, not averaged).

References: Du & Mordatch (2019), "Implicit generation and modeling with energy-based
models"; Hinton (2002), "Training products of experts by minimizing contrastive divergence";
Tieleman (2008), "Training restricted Boltzmann machines using approximations to the
likelihood gradient" (persistent chains); Nijkamp, Hill, Zhu & Wu (2019), "Learning
non-convergent non-persistent short-run MCMC toward energy-based model"; Miyato et al.
(2018), "Spectral normalization for generative adversarial networks".
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._utils import draw_normal, draw_uniform
from .langevin import _check_x, _n_steps, _step_size, energy_to_score

__all__ = [
    "EBM",
    "ContrastiveDivergence",
    "ReplayBuffer",
    "contrastive_divergence_loss",
    "energy_langevin",
    "energy_langevin_step",
]

EnergyFn = Callable[[Tensor], Tensor]
Bounds = tuple[float, float]


# --------------------------------------------------------------------------- validation


def _number(value: object, name: str, *, minimum: float = 0.0, allow_none: bool = False):
    """A finite float >= ``minimum`` (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = f"a number >= {minimum:g}" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value}")
    return float(value)


def _positive(value: object, name: str, *, allow_none: bool = False):
    value = _number(value, name, allow_none=allow_none)
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _probability(value: object, name: str = "reinit_prob") -> float:
    value = _number(value, name)
    if value > 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _bounds(bounds: object, allow_none: bool = False) -> Bounds | None:
    if bounds is None and allow_none:
        return None
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"bounds must be a pair (low, high) of numbers, got {bounds!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"bounds must be finite with low < high, got {(low, high)}")
    return low, high


def _count(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive int, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


# --------------------------------------------------------------------------- Langevin


def energy_langevin_step(
    energy_fn: EnergyFn,
    x: Tensor,
    step_size: float,
    *,
    noise_scale: float | None = None,
    grad_clip: float | None = None,
    bounds: Bounds | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One step x - step_size * grad E(x) + noise_scale * z on an energy (Du & Mordatch, 2019).

    With the default ``noise_scale = sqrt(2 step_size)`` this is exactly the notes' Eq. 19
    with lambda = 2 step_size (:func:`dlai_diffusion.langevin.langevin_step` on the score
    -grad E). A smaller ``noise_scale`` gives a tempered chain (see the module docstring);
    ``noise_scale=0`` is plain gradient descent on E.

    Choosing ``step_size`` for the untempered chain (derived in the module docstring): its
    noise sets a resolution, no stationary spread narrower than sqrt(2 step_size), so take
    step_size <= sigma^2 / 2 for the thinnest feature sigma of the data; and it is stable only
    while step_size * lambda_max(Hessian of E) < 2, so keep a margin below 2.

    Args:
        energy_fn: maps a batch (N, ...) to energies (N,); differentiated with autograd (also
            inside ``torch.no_grad()``).
        x: current points, a floating tensor (N, ...).
        step_size: the factor of grad E, > 0 (lambda / 2 of Eq. 19).
        noise_scale: standard deviation of the added Gaussian noise, >= 0; ``None`` means
            sqrt(2 step_size).
        grad_clip: if given, each coordinate of grad E is clipped to [-grad_clip, grad_clip]
            before the step (as in Du & Mordatch's code).
        bounds: if given, a pair (low, high): x is clamped to it after the step.
        generator: drives the noise.

    Returns the new points, detached, with the shape, device and dtype of ``x``.
    """
    _check_x(x)
    step_size = _step_size(step_size)
    noise_scale = _number(noise_scale, "noise_scale", allow_none=True)
    noise_scale = math.sqrt(2 * step_size) if noise_scale is None else noise_scale
    grad_clip = _positive(grad_clip, "grad_clip", allow_none=True)
    bounds = _bounds(bounds, allow_none=True)
    grad = -energy_to_score(energy_fn)(x)
    if grad_clip is not None:
        grad = grad.clamp(-grad_clip, grad_clip)
    x = x.detach() - step_size * grad
    if noise_scale > 0:
        x = x + noise_scale * draw_normal(x.shape, generator, device=x.device, dtype=x.dtype)
    return x if bounds is None else x.clamp(*bounds)


def energy_langevin(
    energy_fn: EnergyFn,
    x: Tensor,
    step_size: float,
    n_steps: int,
    *,
    noise_scale: float | None = None,
    grad_clip: float | None = None,
    bounds: Bounds | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Run ``n_steps`` of :func:`energy_langevin_step` from ``x`` and return the final points.

    Arguments as in :func:`energy_langevin_step`; ``callback({"i": k, "x": x})`` is called
    after step k = 0, ..., n_steps - 1, as in :func:`dlai_diffusion.langevin.langevin`.
    """
    _check_x(x)
    options = {"noise_scale": noise_scale, "grad_clip": grad_clip, "bounds": bounds}
    x = x.detach().clone()
    for i in range(_n_steps(n_steps)):
        x = energy_langevin_step(energy_fn, x, step_size, generator=generator, **options)
        if callback is not None:
            callback({"i": i, "x": x})
    return x


# --------------------------------------------------------------------------- replay buffer


def _shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or not shape:
        raise TypeError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    return tuple(_count(s, "shape entries") for s in shape)


class ReplayBuffer(nn.Module):
    """A first-in-first-out store of negative samples where new chains start (Du & Mordatch,
    2019, Sec. 3.1).

    :meth:`sample` starts each of n chains from a stored sample chosen uniformly at random or,
    with probability ``reinit_prob`` (Du & Mordatch: 5%), from fresh uniform noise on the data
    range ``bounds``; :meth:`push` stores finished chains over the oldest entries. A chain that
    is drawn again continues where it stopped, so over training the chains run far longer than
    one call's few steps (the idea of persistent contrastive divergence, Tieleman 2008), while
    the fresh starts keep exploring. A stored sample drawn twice is pushed back twice, so the
    share of each mode in the store drifts like gene frequencies in a small population: keep
    the capacity large compared with the batch when mode weights matter.

    The store starts full of uniform noise on ``bounds`` (drawn with ``generator``, or with
    torch's global RNG as weights are). It is a registered buffer, ``samples`` of shape
    (capacity, *shape), with the count ``n_pushed`` of samples ever stored: ``.to(device)``
    moves the buffer and ``state_dict()`` saves it.

    Args:
        shape: shape of one sample, e.g. (2,) or (1, 28, 28).
        capacity: number of stored samples (Du & Mordatch: 10,000).
        reinit_prob: probability in [0, 1] that a chain starts from noise instead.
        bounds: (low, high), the data range of the uniform noise.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        capacity: int = 10_000,
        reinit_prob: float = 0.05,
        bounds: Bounds = (-1.0, 1.0),
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.shape = _shape(shape)
        self.bounds = _bounds(bounds)
        self.reinit_prob = _probability(reinit_prob)
        capacity = _count(capacity, "capacity")
        dtype = dtype or torch.get_default_dtype()
        noise = self._uniform((capacity, *self.shape), generator, device, dtype)
        self.register_buffer("samples", noise)
        self.register_buffer("n_pushed", torch.zeros((), dtype=torch.long, device=device))

    @property
    def capacity(self) -> int:
        return self.samples.shape[0]

    def _uniform(self, shape, generator, device, dtype) -> Tensor:
        low, high = self.bounds
        return low + (high - low) * draw_uniform(shape, generator, device=device, dtype=dtype)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh starts: uniform noise on ``bounds``, on the buffer's device and dtype."""
        shape = (_count(n, "n"), *self.shape)
        return self._uniform(shape, generator, self.samples.device, self.samples.dtype)

    def sample(
        self, n: int, generator: torch.Generator | None = None, reinit_prob: float | None = None
    ) -> Tensor:
        """``n`` chain starts: stored samples (uniform over the store), each replaced by fresh
        noise with probability ``reinit_prob`` (default: the buffer's). Returns a new tensor
        (n, *shape)."""
        n = _count(n, "n")
        reinit_prob = self.reinit_prob if reinit_prob is None else _probability(reinit_prob)
        device = self.samples.device
        source = device if generator is None else generator.device
        index = torch.randint(self.capacity, (n,), generator=generator, device=source)
        starts = self.samples[index.to(device)]
        fresh = draw_uniform(n, generator, device=device) < reinit_prob
        fresh = fresh.reshape(n, *[1] * len(self.shape))
        return torch.where(fresh, self.noise(n, generator), starts)

    def recent(self, n: int) -> Tensor:
        """The ``n`` samples pushed last (oldest first), e.g. the latest negatives to look at."""
        n = _count(n, "n")
        if n > self.capacity:
            raise ValueError(f"n must be at most the capacity {self.capacity}, got {n}")
        slots = (self.n_pushed - n + torch.arange(n, device=self.samples.device)) % self.capacity
        return self.samples[slots]

    @torch.no_grad()
    def push(self, x: Tensor) -> None:
        """Store the samples ``x`` (m, *shape) over the oldest entries (first in, first out)."""
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.shape or x.ndim < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (m, *{self.shape}), got {got}")
        x = x.detach()[-self.capacity :]
        slots = (self.n_pushed + torch.arange(x.shape[0], device=self.samples.device)) % (
            self.capacity
        )
        self.samples[slots] = x.to(self.samples)
        self.n_pushed += x.shape[0]

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, capacity={self.capacity}, reinit_prob={self.reinit_prob}, "
            f"bounds={self.bounds}"
        )


# --------------------------------------------------------------------------- the loss


def contrastive_divergence_loss(
    energy_pos: Tensor, energy_neg: Tensor, alpha: float = 1.0
) -> Tensor:
    """Contrastive divergence with an L2 energy penalty (notes Eq. 22-23; Du & Mordatch, 2019):

        mean E(x+) - mean E(x-) + alpha * mean(E(x+)^2 + E(x-)^2).

    Its gradient in theta is Eq. 22 (the gradient of the negative log-likelihood with the
    expectation under the model replaced by the negatives x-) plus that of the regulariser
    Eq. 23, which keeps energies near 0. Minimising it lowers the energy of data (positives)
    and raises that of the model's samples (negatives); the negatives must carry no graph to
    the parameters other than through E.

    Args:
        energy_pos: energies of data samples x+, shape (N,).
        energy_neg: energies of negative samples x-, shape (M,).
        alpha: weight of the regulariser, >= 0 (Du & Mordatch: 1).
    """
    for name, e in (("energy_pos", energy_pos), ("energy_neg", energy_neg)):
        if not isinstance(e, Tensor) or e.ndim != 1 or e.numel() == 0:
            got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"{name} must be a non-empty tensor of shape (N,), got {got}")
    alpha = _number(alpha, "alpha")
    regulariser = energy_pos.square().mean() + energy_neg.square().mean()
    return energy_pos.mean() - energy_neg.mean() + alpha * regulariser


# --------------------------------------------------------------------------- model and step


class EBM(nn.Module):
    """An energy network and the replay buffer of its negative samples, in one module.

    ``EBM(energy, buffer)(x)`` is ``energy(x)``, shape (N,). Keeping the buffer inside the
    model makes it part of ``state_dict()``: :func:`~dlai_diffusion.train.train` checkpoints
    and resumes it with the weights, and ``.to(device)`` moves both.
    """

    def __init__(self, energy: nn.Module, buffer: ReplayBuffer):
        super().__init__()
        if not isinstance(energy, nn.Module):
            raise TypeError(f"energy must be a torch.nn.Module, got {type(energy).__name__}")
        if not isinstance(buffer, ReplayBuffer):
            raise TypeError(f"buffer must be a ReplayBuffer, got {type(buffer).__name__}")
        self.energy = energy
        self.buffer = buffer

    def forward(self, x: Tensor) -> Tensor:
        energies = self.energy(x)
        if not isinstance(energies, Tensor) or energies.shape != x.shape[:1]:
            got = tuple(energies.shape) if isinstance(energies, Tensor) else type(energies)
            raise ValueError(f"energy must return one value per sample ({x.shape[0]},), got {got}")
        return energies


@dataclass(frozen=True)
class ContrastiveDivergence:
    """The training step of an :class:`EBM`, a ``loss_fn`` for :func:`dlai_diffusion.train.train`.

    Each call (Du & Mordatch, 2019, Algorithm 1): start chains from ``model.buffer``, run
    ``n_steps`` of :func:`energy_langevin` on the model's energy (clamped to the buffer's
    bounds), push the results back into the buffer, and return
    :func:`contrastive_divergence_loss` of the data batch (positives) and these negatives,
    with the mean energies as logs. The defaults are Du & Mordatch's image settings; for 2D
    data use the untempered chain (``noise_scale=None``) with a step that resolves the data's
    thinnest feature sigma, step_size <= sigma^2 / 2, and keeps step_size * lambda_max of the
    energy's Hessian below 2 (see the module docstring): on the toy sets (noise 0.05),
    step_size = 0.001 with 40 steps per training step, the command line's 2D default. A larger
    step (0.004 on moons; 0.01, sqrt(2 step_size) = 0.14, even on 8 Gaussians of width 0.1)
    cannot make negatives as thin as the data, and contrastive divergence then sharpens the
    energy until the chain is unstable.
    ::

        model = EBM(nets.EnergyMLP(2), ReplayBuffer((2,), 50_000, reinit_prob=0.01, bounds=(-3, 3)))
        cd = ContrastiveDivergence(n_steps=40, step_size=0.001, noise_scale=None, grad_clip=None,
                                   alpha=0.01)
        train(model, cd, random_batches(x, batch_size=256), steps=2000, generator=g)
        samples = cd.sample(model, 1000, generator=g, from_buffer=True)  # persistent chains
        fresh = cd.sample(model, 1000, n_steps=2000, generator=g)        # from noise

    Attributes:
        n_steps: Langevin steps per training step (Du & Mordatch: 60).
        step_size, noise_scale, grad_clip: as in :func:`energy_langevin_step`.
        alpha: weight of the energy regulariser (Eq. 23).
    """

    n_steps: int = 60
    step_size: float = 10.0
    noise_scale: float | None = 0.005
    grad_clip: float | None = 0.01
    alpha: float = 1.0

    def __post_init__(self):
        _n_steps(self.n_steps)
        _step_size(self.step_size)
        _number(self.noise_scale, "noise_scale", allow_none=True)
        _positive(self.grad_clip, "grad_clip", allow_none=True)
        _number(self.alpha, "alpha")

    def chain(self, model: EBM, x: Tensor, n_steps: int | None = None, **kwargs) -> Tensor:
        """Run this step's Langevin chain on ``model``'s energy from ``x`` (``n_steps`` to
        override the default; ``generator``/``callback`` go to :func:`energy_langevin`)."""
        return energy_langevin(
            model,
            x,
            self.step_size,
            self.n_steps if n_steps is None else n_steps,
            noise_scale=self.noise_scale,
            grad_clip=self.grad_clip,
            bounds=model.buffer.bounds,
            **kwargs,
        )

    def negatives(self, model: EBM, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw n chain starts from the buffer, run the chain, push the ends back, return them."""
        negatives = self.chain(model, model.buffer.sample(n, generator), generator=generator)
        model.buffer.push(negatives)
        return negatives

    def sample(
        self,
        model: EBM,
        n: int,
        n_steps: int | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
        from_buffer: bool = False,
    ) -> Tensor:
        """``n`` samples of the model: ``n_steps`` Langevin steps (default: the training
        chain's) from fresh uniform noise on the buffer's bounds, or, with ``from_buffer=True``,
        from stored samples drawn uniformly (no re-initialisation): the persistent chains of
        training, continued. The buffer is left unchanged."""
        if from_buffer:
            start = model.buffer.sample(n, generator, reinit_prob=0.0)
        else:
            start = model.buffer.noise(n, generator)
        return self.chain(model, start, n_steps, generator=generator, callback=callback)

    def __call__(self, model: EBM, batch, generator: torch.Generator | None = None):
        if not isinstance(model, EBM):
            raise TypeError(f"model must be an ebm.EBM, got {type(model).__name__}")
        positives = batch[0] if isinstance(batch, tuple | list) else batch
        negatives = self.negatives(model, positives.shape[0], generator).to(positives)
        energy_pos, energy_neg = model(torch.cat([positives, negatives])).chunk(2)
        loss = contrastive_divergence_loss(energy_pos, energy_neg, self.alpha)
        logs = {"energy_pos": energy_pos.mean().detach(), "energy_neg": energy_neg.mean().detach()}
        return loss, logs
