"""Small helpers shared by the package: random draws driven by an optional generator.

Why these exist. ``torch.randn(..., generator=g)`` only works when the result is created on
``g.device``: a CPU generator cannot fill a CUDA tensor. Every random function of the package
takes an optional ``generator`` so that results are reproducible, and the same seeded CPU
generator should give the same numbers whether the computation then runs on the CPU or on a
GPU. The helpers below therefore draw on the generator's device and move the result to the
requested device afterwards::

    g = torch.Generator().manual_seed(0)              # a CPU generator
    z = draw_normal((4, 2), g, device="cuda")         # drawn on the CPU, returned on CUDA
    z_cpu = draw_normal((4, 2), torch.Generator().manual_seed(0))
    assert torch.equal(z.cpu(), z_cpu)                # same numbers on every device

With ``generator=None`` the global RNG of ``device`` is used, as with plain ``torch.randn``.
The copy from CPU to GPU costs little next to the work done with the numbers; when speed
matters, pass a generator that lives on the GPU (``torch.Generator(device="cuda")``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["draw_categorical", "draw_normal", "draw_uniform"]

DeviceLike = torch.device | str | None


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}") from None
    if any(s < 0 for s in dims):
        raise ValueError(f"shape must have non-negative sizes, got {dims}")
    return dims


def _draw(sampler, shape, generator, device, dtype) -> Tensor:
    """Run ``sampler`` (``torch.randn`` or ``torch.rand``) on the generator's device."""
    _check_generator(generator)
    shape = _as_shape(shape)
    if generator is None:
        return sampler(shape, device=device, dtype=dtype)
    out = sampler(shape, generator=generator, device=generator.device, dtype=dtype)
    return out if device is None else out.to(device)


def draw_normal(
    shape: int | Sequence[int],
    generator: torch.Generator | None = None,
    device: DeviceLike = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal draws N(0, I) of the given shape.

    Args:
        shape: size of the result, an int or a sequence of ints.
        generator: optional ``torch.Generator``; the numbers are drawn on its device, so a
            seeded CPU generator gives the same numbers whatever ``device`` is.
        device: where the result lives. ``None``: the generator's device, or torch's default
            device when there is no generator.
        dtype: floating dtype of the result (default: torch's default dtype).
    """
    return _draw(torch.randn, shape, generator, device, dtype)


def draw_uniform(
    shape: int | Sequence[int],
    generator: torch.Generator | None = None,
    device: DeviceLike = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform draws on [0, 1) of the given shape; arguments as in :func:`draw_normal`."""
    return _draw(torch.rand, shape, generator, device, dtype)


def draw_categorical(
    probs: Tensor,
    n: int,
    generator: torch.Generator | None = None,
    device: DeviceLike = None,
) -> Tensor:
    """``n`` independent category indices drawn with probabilities ``probs`` (shape (K,)).

    Uses ``torch.multinomial`` with replacement on the generator's device. Returns a long
    tensor of shape (n,) on ``device`` (``None``: the device of ``probs``). ``probs`` must be
    non-negative with a positive sum; it need not be normalised.
    """
    _check_generator(generator)
    if not isinstance(probs, Tensor) or probs.ndim != 1 or probs.numel() == 0:
        raise ValueError("probs must be a non-empty 1-D tensor of category probabilities")
    target = probs.device if device is None else device
    source = probs.device if generator is None else generator.device
    labels = torch.multinomial(probs.to(source), n, replacement=True, generator=generator)
    return labels.to(target)


def positive_int(value: object, name: str = "n") -> int:
    """``value`` as a positive int, or a ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive int, got a bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive int, got {number}")
    return number


def output_like(out: object, x: Tensor, name: str) -> Tensor:
    """``out`` if it is a tensor of the shape of ``x`` (what a score, noise or drift function
    must return); otherwise a ``ValueError`` that names the function ``name``."""
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{name} must return a tensor of the shape of x {tuple(x.shape)}, got {got}"
        )
    return out


def check_batch(x: object, name: str = "x", min_ndim: int = 2) -> Tensor:
    """``x`` if it is a floating tensor with a batch axis, (N, d) or (N, C, H, W), or with
    ``min_ndim=1`` any (N, ...); otherwise a ``TypeError`` or ``ValueError`` naming ``name``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < min_ndim or not x.is_floating_point():
        shape = "of shape (N, d) or (N, C, H, W)" if min_ndim >= 2 else "with a batch axis (N, ...)"
        raise ValueError(
            f"{name} must be a floating tensor {shape}, "
            f"got shape {tuple(x.shape)} and dtype {x.dtype}"
        )
    return x
