"""Checks for the exercises of lecture 04: Langevin on an energy, contrastive divergence, the
replay buffer.

Each check calls the student's function, compares the result with an independent reference
and prints a short confirmation, or raises ``AssertionError`` saying what is wrong. The
references: closed-form energy gradients (a Gaussian, a Gaussian mixture through its exact
score) and central finite differences for a network; the contrastive-divergence loss written
out with hand-computed numbers and its exact gradient in the energies; binomial and uniform
statistics for the replay buffer.

References: Du & Mordatch (2019), "Implicit generation and modeling with energy-based
models"; Hinton (2002), "Training products of experts by minimizing contrastive divergence".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..toy import GaussianMixture
from . import call_student as _call
from . import checked_tensor as _tensor
from . import name_mistake

__all__ = ["contrastive_divergence_loss", "langevin_step_energy", "sample_from_buffer"]

_F64 = torch.float64
_Z = 4.5  # statistical tolerance in standard errors


def _hint(got: Tensor, candidates: dict[str, Tensor], default: str) -> str:
    """The message of the first candidate mistake that reproduces ``got``, else ``default``."""
    return name_mistake(got.detach(), candidates, default, rtol=1e-6)


# --------------------------------------------------------------------------- exercise (a)

_PRECISION = torch.tensor([[2.0, -0.8], [-0.8, 1.5]], dtype=_F64)
_MEAN = torch.tensor([1.0, -0.5], dtype=_F64)


def _gaussian_energy(x: Tensor) -> Tensor:
    """E(x) = (x - m)^T A (x - m) / 2; its gradient is A (x - m)."""
    centred = x - _MEAN.to(x)
    return 0.5 * ((centred @ _PRECISION.to(x)) * centred).sum(-1)


def _mixture() -> GaussianMixture:
    return GaussianMixture(
        [[-1.0, 0.5], [1.5, -1.0], [0.0, 2.0]], [0.5, 0.8, 0.4], [0.3, 0.5, 0.2], dtype=_F64
    )


def _finite_difference_gradient(energy_fn, x: Tensor, h: float = 1e-6) -> Tensor:
    """Central differences of sum_i E(x_i) in every coordinate (float64): grad E, row by row."""
    flat = x.reshape(x.shape[0], -1)
    grad = torch.empty_like(flat)
    with torch.no_grad():
        for j in range(flat.shape[1]):
            step = torch.zeros_like(flat)
            step[:, j] = h
            up = energy_fn((flat + step).reshape(x.shape))
            down = energy_fn((flat - step).reshape(x.shape))
            grad[:, j] = (up - down) / (2 * h)
    return grad.reshape(x.shape)


def langevin_step_energy(fn: Callable, *, energy_fn=None, x: Tensor | None = None) -> None:
    """Exercise (a): ``fn(energy_fn, x, step_size, z)`` is notes Eq. 19 on an energy:
    x - (step_size / 2) grad E(x) + sqrt(step_size) z, with grad E from autograd.

    Compared, at several step sizes, with the closed-form gradient of a Gaussian energy and
    the exact score of a Gaussian mixture (grad E = -score). The result must carry no graph.
    With ``energy_fn`` and ``x`` given (float64), the reference gradient is computed by
    central finite differences instead.
    """
    generator = torch.Generator().manual_seed(21)
    mixture = _mixture()
    cases = [("a Gaussian energy", _gaussian_energy, lambda p: (p - _MEAN) @ _PRECISION)]
    cases.append(("a Gaussian-mixture energy", mixture.energy, lambda p: -mixture.score(p)))
    if energy_fn is not None:
        cases = [("the given energy", energy_fn, None)]
    for name, energy, gradient in cases:
        points = x if x is not None else 1.5 * torch.randn(40, 2, generator=generator, dtype=_F64)
        grad = _finite_difference_gradient(energy, points) if gradient is None else gradient(points)
        z = torch.randn(points.shape, generator=generator, dtype=points.dtype)
        for step_size in (0.01, 0.2, 1.5):
            got = _call(fn, energy, points.clone(), step_size, z.clone())
            got = _tensor(got, "x_new", tuple(points.shape))
            assert not got.requires_grad, (
                "x_new still carries an autograd graph: return a detached tensor "
                "(x_new.detach()), or chains of many steps keep every graph in memory"
            )
            expected = points - 0.5 * step_size * grad + math.sqrt(step_size) * z
            tolerance = 1e-6 if gradient is None else 1e-9
            if not torch.allclose(got.to(_F64), expected.to(_F64), rtol=1e-6, atol=tolerance):
                hint = _hint(
                    got,
                    {
                        "the gradient should be subtracted: the chain goes downhill in energy "
                        "(uphill in log p)": points
                        + 0.5 * step_size * grad
                        + math.sqrt(step_size) * z,
                        "the gradient should be multiplied by step_size / 2, not step_size": points
                        - step_size * grad
                        + math.sqrt(step_size) * z,
                        "the noise should be multiplied by sqrt(step_size)": points
                        - 0.5 * step_size * grad
                        + z,
                        "the noise should be multiplied by sqrt(step_size), not step_size": points
                        - 0.5 * step_size * grad
                        + step_size * z,
                    },
                    "expected x - (step_size / 2) * grad E(x) + sqrt(step_size) * z (Eq. 19); "
                    "get grad E(x) with torch.autograd.grad(energy_fn(x).sum(), x)",
                )
                error = float((got.to(_F64) - expected.to(_F64)).abs().max())
                raise AssertionError(
                    f"{name}, step_size = {step_size}: off by up to {error:.3g}; {hint}"
                )
    print("✔ langevin_step_energy is Eq. 19 with the autograd gradient of E, and leaves no graph")


# --------------------------------------------------------------------------- exercise (b)


def contrastive_divergence_loss(fn: Callable) -> None:
    """Exercise (b): ``fn(energy_pos, energy_neg, alpha)`` returns
    mean E(x+) - mean E(x-) + alpha * (mean E(x+)^2 + mean E(x-)^2) (notes Eq. 22-23).

    Checked on hand-computed numbers (positives and negatives of different sizes), for its
    gradient in the energies (1/N + 2 alpha E+/N for a positive, -1/M + 2 alpha E-/M for a
    negative), and for the sign: one gradient step on the energies lowers the positive ones and
    raises the negative ones.
    """
    e_pos = torch.tensor([1.0, 2.0], dtype=_F64)
    e_neg = torch.tensor([3.0, -1.0, 4.0], dtype=_F64)
    for alpha in (0.0, 0.3, 1.0):
        got = _call(fn, e_pos.clone(), e_neg.clone(), alpha)
        assert isinstance(got, Tensor) and got.numel() == 1, (
            f"the loss should be a single-number tensor, got {got!r}"
        )
        contrast = 1.5 - 2.0
        expected = contrast + alpha * ((1 + 4) / 2 + (9 + 1 + 16) / 3)
        if abs(float(got) - expected) > 1e-9:
            wrong = {
                "the sign of the contrast is flipped: positives (data) should get LOW energy, so "
                "the loss is mean E(x+) - mean E(x-)": -contrast
                + alpha * ((1 + 4) / 2 + (9 + 1 + 16) / 3),
                "the regulariser squares the energies before averaging: "
                "mean(E(x+)^2) + mean(E(x-)^2), not mean(E)^2": contrast
                + alpha * (1.5**2 + 2.0**2),
                "the regulariser is missing or not multiplied by alpha": contrast,
            }
            hint = next(
                (m for m, v in wrong.items() if abs(float(got) - v) < 1e-9),
                "expected mean E(x+) - mean E(x-) + alpha * (mean E(x+)^2 + mean E(x-)^2)",
            )
            raise AssertionError(
                f"alpha = {alpha}: loss {float(got):.6g}, expected {expected:.6g}; {hint}"
            )

    generator = torch.Generator().manual_seed(22)
    pos = torch.randn(7, generator=generator, dtype=_F64).requires_grad_(True)
    neg = torch.randn(5, generator=generator, dtype=_F64).requires_grad_(True)
    alpha = 0.2
    loss = _call(fn, pos, neg, alpha)
    assert isinstance(loss, Tensor) and loss.requires_grad, (
        "the loss must be differentiable in the energies (compute it with torch operations)"
    )
    grad_pos, grad_neg = torch.autograd.grad(loss, (pos, neg))
    expected_pos = (1 + 2 * alpha * pos.detach()) / 7
    expected_neg = (-1 + 2 * alpha * neg.detach()) / 5
    assert torch.allclose(grad_pos, expected_pos) and torch.allclose(grad_neg, expected_neg), (
        "the gradient in the energies is wrong: average over each set separately (mean over the "
        "positives, mean over the negatives)"
    )
    with torch.no_grad():
        stepped = fn(pos - 0.1 * grad_pos, neg - 0.1 * grad_neg, 0.0)
    assert float(stepped) < float(fn(pos.detach(), neg.detach(), 0.0)), (
        "a descent step must lower the loss"
    )
    print(
        "✔ contrastive_divergence_loss: values, gradients and sign (positives down, negatives up)"
    )


# --------------------------------------------------------------------------- exercise (c)


def sample_from_buffer(fn: Callable, *, shape: tuple[int, ...] = (2,), n: int = 20_000) -> None:
    """Exercise (c): ``fn(buffer, n, reinit_prob, low, high, generator)`` returns n chain
    starts, each a stored row of ``buffer`` chosen uniformly at random or, with probability
    ``reinit_prob``, fresh uniform noise on [low, high].

    The stored rows lie outside [low, high], so fresh starts are recognisable. Checked: the
    shape, that every start is a whole stored row or wholly fresh, the fraction of fresh starts
    (binomial, within 4.5 standard errors) for several probabilities, that the noise is
    uniform on [low, high] (range, mean and variance), and that rows are drawn uniformly (each
    row's count within 4.5 standard errors).
    """
    capacity = 8
    rows = 10.0 + torch.arange(capacity, dtype=torch.float32)
    buffer = rows.reshape(capacity, *[1] * len(shape)).expand(capacity, *shape).clone()
    low, high = -1.0, 1.0
    for reinit_prob in (0.05, 0.5, 0.0, 1.0):
        generator = torch.Generator().manual_seed(23)
        got = _call(fn, buffer.clone(), n, reinit_prob, low, high, generator)
        got = _tensor(got, "the starts", (n, *shape))
        flat = got.reshape(n, -1)
        stored = (flat >= 10.0).all(1)
        fresh = ((flat >= low) & (flat <= high)).all(1)
        assert (stored | fresh).all(), (
            "each start must be a whole stored sample or wholly fresh noise on [low, high] "
            "(draw one 'fresh or not' decision per sample, not per coordinate)"
        )
        if stored.any():
            values = flat[stored]
            assert (values == values[:, :1]).all() and torch.isin(values[:, 0], rows).all(), (
                "stored starts must be copies of rows of the buffer"
            )
        rate = float(fresh.double().mean())
        se = math.sqrt(max(reinit_prob * (1 - reinit_prob), 1e-12) / n)
        assert abs(rate - reinit_prob) <= _Z * se + 1e-12, (
            f"reinit_prob = {reinit_prob}: {rate:.4f} of the starts are fresh noise, expected "
            f"{reinit_prob} ± {_Z * se:.4f}"
        )
        if fresh.sum() > 1000:
            noise = flat[fresh].double()
            m, v, k = noise.mean().item(), noise.var().item(), noise.numel()
            mean_se = math.sqrt((high - low) ** 2 / 12 / k)
            assert abs(m) < _Z * mean_se and abs(v - (high - low) ** 2 / 12) < 0.02, (
                f"the fresh noise should be uniform on [{low}, {high}] (mean 0, variance 1/3), got "
                f"mean {m:.3f} and variance {v:.3f}; torch.rand gives U[0, 1): rescale it"
            )
        if reinit_prob < 1:
            counts = torch.bincount((flat[stored][:, 0] - 10).long(), minlength=capacity).double()
            expected = counts.sum() / capacity
            spread = (expected * (1 - 1 / capacity)).sqrt()
            assert ((counts - expected).abs() < _Z * spread).all(), (
                f"stored samples should be chosen uniformly among the {capacity} rows; counts "
                f"{counts.long().tolist()}"
            )
    print(
        "✔ sample_from_buffer: whole stored rows drawn uniformly, fresh noise at the requested rate"
    )
