"""Train the LeNet behind ``dlai_diffusion.metrics.classifier_fid`` and ship its weights.

Trains :class:`dlai_diffusion.metrics.LeNet` on the full MNIST training set (60,000 digits)
with small random shifts, rotations and scalings, reports the accuracy on the 10,000 test
digits, and writes the weights atomically to ``dlai_diffusion/assets/lenet_mnist.pt``
(refusing to write them below ``--min-accuracy``). A few minutes on two CPU cores::

    python scripts/train_lenet.py --root ../shared/data

``--root`` is the data folder holding ``mnist/`` (see ``dlai_diffusion.data.load_mnist``).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dlai_diffusion.data import load_mnist
from dlai_diffusion.metrics import LENET_WEIGHTS, LeNet


def random_affine(
    images: Tensor,
    generator: torch.Generator,
    shift: float = 2.0,
    degrees: float = 10.0,
    scale: float = 0.1,
) -> Tensor:
    """Each image moved by up to ``shift`` pixels, turned by up to ``degrees`` and scaled by up
    to ``1 +- scale``; the uncovered border is background (-1)."""
    n, size = images.shape[0], images.shape[-1]

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = 1 / uniform(1 - scale, 1 + scale)
    offset = uniform(-shift, shift), uniform(-shift, shift)
    cos, sin = zoom * torch.cos(angle), zoom * torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos, -sin, offset[0] * 2 / size], dim=1),
            torch.stack([sin, cos, offset[1] * 2 / size], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images + 1, grid, align_corners=False)  # zero padding = background
    return moved - 1


@torch.no_grad()
def accuracy(model: LeNet, images: Tensor, labels: Tensor, batch_size: int = 2000) -> float:
    model.eval()
    correct = sum(
        (model(x).argmax(1) == y).sum().item()
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True)
    )
    return correct / labels.shape[0]


def train(
    images: Tensor, labels: Tensor, epochs: int, batch_size: int, lr: float, seed: int
) -> LeNet:
    torch.manual_seed(seed)  # initial weights
    generator = torch.Generator().manual_seed(seed)  # order and augmentation
    model = LeNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(images.shape[0] / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(images.shape[0], generator=generator)
        for index in order.split(batch_size):
            x = random_affine(images[index], generator)
            loss = F.cross_entropy(model(x), labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * index.shape[0]
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / images.shape[0]:.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    return model.eval()


def save_atomically(checkpoint: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    buffer = io.BytesIO()  # through memory, so the archive's inner name does not vary
    torch.save(checkpoint, buffer)
    try:
        Path(temporary).write_bytes(buffer.getvalue())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the asset ships to everyone
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="data folder that holds mnist/")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-accuracy", type=float, default=0.99)
    parser.add_argument("--out", type=Path, default=LENET_WEIGHTS)
    args = parser.parse_args(argv)

    train_set = load_mnist("train", root=args.root, subset=False)
    test_set = load_mnist("test", root=args.root, subset=False)
    start = time.perf_counter()
    model = train(
        train_set.images, train_set.labels, args.epochs, args.batch_size, args.lr, args.seed
    )
    minutes = (time.perf_counter() - start) / 60
    test_accuracy = accuracy(model, test_set.images, test_set.labels)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"test accuracy {test_accuracy:.4f} on {len(test_set)} digits")
    print(f"{parameters} parameters, trained in {minutes:.1f} min")
    if test_accuracy < args.min_accuracy:
        raise SystemExit(f"test accuracy below {args.min_accuracy}; weights not written")
    checkpoint = {
        "state_dict": model.state_dict(),
        "test_accuracy": test_accuracy,
        "epochs": args.epochs,
        "seed": args.seed,
    }
    save_atomically(checkpoint, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return test_accuracy


if __name__ == "__main__":
    main()
