"""Langevin dynamics: sampling from a density with nothing but its score.

One step (notes Eq. 19, written with the score of Eq. 8 instead of the energy gradient)::

    x_k = x_{k-1} + (lambda / 2) * score(x_{k-1}) + sqrt(lambda) * z_k,   z_k ~ N(0, I)

with step size lambda (``step_size``). As lambda -> 0 and the number of steps grows, the law
of x_k tends to the density whose score is used (Roberts & Tweedie, 1996; Welling & Teh,
2011). With a fixed lambda this is the unadjusted Langevin algorithm: its stationary law is
biased by O(lambda). For a Gaussian N(m, S) it is exactly N(m, S (I - lambda S^-1 / 4)^-1).

Steps are 0-indexed: ``callback({"i": k, "x": x})`` is called after step k = 0, ..., n_steps - 1
(x_{k+1} in the notes' 1-indexed numbering). Record a chain with::

    chain = []
    x = langevin(score, x0, step_size=1e-2, n_steps=500, callback=lambda d: chain.append(d["x"]))

Gradients: each step detaches x, so a chain never keeps a graph alive. Wrap a call in
``torch.no_grad()`` when the score is a network; :func:`energy_to_score` switches autograd back
on for itself, so energy-based scores work inside ``torch.no_grad()`` as well.

References: Roberts & Tweedie (1996), "Exponential convergence of Langevin distributions and
their discrete approximations"; Welling & Teh (2011), "Bayesian learning via stochastic
gradient Langevin dynamics"; Du & Mordatch (2019), "Implicit generation and modeling with
energy-based models"; Song & Ermon (2019), "Generative modeling by estimating gradients of
the data distribution".
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor

from ._utils import draw_normal

__all__ = ["energy_to_score", "langevin", "langevin_step"]

ScoreFn = Callable[[Tensor], Tensor]


def _check_x(x: object) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating tensor with a batch axis (N, ...), got {shape}")


def _step_size(step_size: object) -> float:
    if isinstance(step_size, Tensor) and step_size.numel() == 1:
        step_size = step_size.item()
    if isinstance(step_size, bool) or not isinstance(step_size, int | float):
        raise TypeError(f"step_size must be a positive number, got {type(step_size).__name__}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size}")
    return float(step_size)


def _n_steps(n_steps: object) -> int:
    if isinstance(n_steps, bool):
        raise TypeError("n_steps must be an int >= 0, got a bool")
    try:
        n_steps = operator.index(n_steps)
    except TypeError:
        raise TypeError(f"n_steps must be an int >= 0, got {type(n_steps).__name__}") from None
    if n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps}")
    return n_steps


def energy_to_score(energy_fn: Callable[[Tensor], Tensor]) -> ScoreFn:
    """The score -grad_x E(x) of the Boltzmann density exp(-E) / Z (notes Eq. 8), by autograd.

    ``energy_fn`` maps a batch (N, ...) to one energy per sample, shape (N,). The returned
    function detaches its input and computes the gradient with autograd enabled, so it also
    works inside ``torch.no_grad()``; its output carries no graph.
    """

    def score(x: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            energy = energy_fn(x)
            if not isinstance(energy, Tensor) or energy.numel() != x.shape[0]:
                got = tuple(energy.shape) if isinstance(energy, Tensor) else type(energy).__name__
                raise ValueError(
                    f"energy_fn must return one energy per sample, shape ({x.shape[0]},), got {got}"
                )
            (grad,) = torch.autograd.grad(energy.sum(), x)
        return -grad

    return score


def langevin_step(
    score_fn: ScoreFn,
    x: Tensor,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One Langevin step x + (step_size / 2) score(x) + sqrt(step_size) z (notes Eq. 19).

    ``z ~ N(0, I)`` is drawn from ``generator``; the result is detached from any graph and
    has the shape, device and dtype of ``x``.
    """
    _check_x(x)
    step_size = _step_size(step_size)
    x = x.detach()
    score = score_fn(x)
    if not isinstance(score, Tensor) or score.shape != x.shape:
        got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
        raise ValueError(
            f"score_fn must return a tensor of the shape of x {tuple(x.shape)}, got {got}"
        )
    z = draw_normal(x.shape, generator, device=x.device, dtype=x.dtype)
    return (x + 0.5 * step_size * score + math.sqrt(step_size) * z).detach()


def langevin(
    score_fn: ScoreFn,
    x: Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Run ``n_steps`` Langevin steps from ``x`` (notes Eq. 19) and return the final samples.

    Args:
        score_fn: the score grad_x log p, a callable (N, ...) -> (N, ...); for an energy use
            :func:`energy_to_score`.
        x: initial points, e.g. noise; one independent chain per sample.
        step_size: lambda > 0.
        n_steps: number of steps, an int >= 0 (0 returns a copy of ``x``).
        generator: drives every noise draw, so a seeded generator repeats the chain.
        callback: called as ``callback({"i": k, "x": x})`` after step k = 0, ..., n_steps - 1.
    """
    _check_x(x)
    step_size = _step_size(step_size)
    x = x.detach().clone()
    for i in range(_n_steps(n_steps)):
        x = langevin_step(score_fn, x, step_size, generator)
        if callback is not None:
            callback({"i": i, "x": x})
    return x
