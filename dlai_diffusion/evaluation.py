"""Quality figures of the course's MNIST models, measured one way everywhere.

The protocol (used by ``scripts/pretrain.py``, the benchmarks and the image lectures):

* **Reference and floor.** A seeded permutation of the MNIST test digits gives two disjoint
  sets of ``n`` digits (:func:`mnist_reference`): samples are compared with the first, and the
  **floor** is the LeNet FID between the two, what a perfect sampler scores at this ``n``
  (the estimate shrinks as ``n`` grows, so FIDs are compared only at equal ``n``).
* **FID** with :func:`dlai_diffusion.metrics.classifier_fid` (LeNet features).
* **Recognisable digits**: the 11-class digit judge (:func:`dlai_diffusion.metrics.judge_digits`),
  whose "not a digit" class keeps it from being confident on noise.
* **Guidance**: accuracy of the 10-class LeNet on guided samples against the asked labels,
  and within-class diversity (:func:`dlai_diffusion.guidance.mean_pairwise_distance` of
  LeNet features).

:func:`draw` runs any sampler in batches, under bf16 autocast on a CPU or GPU when asked
(about 2.2x faster on a CPU with bf16 units; the record of a measurement says which).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor

from . import metrics
from ._utils import draw_normal

__all__ = ["accuracy_and_diversity", "autocast", "draw", "fid_against", "mnist_reference"]


def mnist_reference(n: int = 1000, seed: int = 0, subset: bool | None = None):
    """Two disjoint sets of ``n`` MNIST test digits, (reference, other), from a permutation
    seeded by ``seed``; ``subset`` as in :func:`dlai_diffusion.data.load_mnist` (the shipped
    subset has 1000 test digits, so ``n`` <= 500 there)."""
    from .data import load_mnist

    test = load_mnist("test", subset=subset)
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= 2 * n <= len(test):
        raise ValueError(f"n must be an int in 1..{len(test) // 2}, got {n!r}")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    return test.images[order[:n]], test.images[order[n : 2 * n]]


def autocast(device: torch.device | str, enabled: bool = True):
    """bf16 autocast on CUDA and CPU (a no-op elsewhere or when not ``enabled``)."""
    kind = torch.device(device).type
    if not enabled or kind not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.bfloat16)


def draw(
    sampler: Callable[[Tensor, Tensor | None], Tensor],
    n: int,
    shape: tuple[int, ...] = (1, 28, 28),
    *,
    labels: Tensor | None = None,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> Tensor:
    """``n`` samples of ``sampler(x_init, labels_of_the_batch)`` from x_init ~ N(0, I), in
    batches of ``batch_size``, returned in float32 on the CPU, clamped to [-1, 1].

    ``labels`` (n,) are split with the batches (``None`` is passed when absent); every draw
    comes from ``generator``."""
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x = draw_normal((m, *shape), generator, device)
        y = None if labels is None else labels[start : start + m].to(device)
        with autocast(device, bf16):
            out.append(sampler(x, y).float().clamp(-1, 1).cpu())
    return torch.cat(out)


def fid_against(samples: Tensor, reference: Tensor) -> float:
    """LeNet FID of ``samples`` against ``reference`` (equal sizes recommended)."""
    return metrics.classifier_fid(samples.float().cpu(), reference.float().cpu())


def accuracy_and_diversity(samples: Tensor, labels: Tensor) -> tuple[float, float]:
    """(share of samples whose LeNet digit is the asked label, mean within-class distance of
    their LeNet features)."""
    from .guidance import mean_pairwise_distance

    samples, labels = samples.float().cpu(), labels.cpu()
    accuracy = (metrics.predict_digits(samples) == labels).float().mean().item()
    return accuracy, mean_pairwise_distance(metrics.lenet_features(samples), labels)
