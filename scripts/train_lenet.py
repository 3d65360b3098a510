"""Train the LeNet behind ``dlai_diffusion.metrics.classifier_fid`` and ship its weights.

Trains :class:`dlai_diffusion.metrics.LeNet` on the full MNIST training set (60,000 digits)
with small random shifts, rotations and scalings, reports the accuracy on the 10,000 test
digits, and writes the weights atomically to ``dlai_diffusion/assets/lenet_mnist.pt``
(refusing to write them below ``--min-accuracy``). A few minutes on two CPU cores::

    python scripts/train_lenet.py --root ../shared/data

``--judge`` trains the digit judge instead (``metrics.judge_digits``): the same network with
an 11th class, "not a digit", fed one non-digit for every four digits (half of the digits
softened by a blur of up to 1.5 pixels, :func:`soften`) (:func:`non_digits`:
Gaussian noise, smoothed noise, heavily blurred digits, pixel-shuffled digits, blends of two
digits), written as safetensors to ``dlai_diffusion/assets/digit_judge.safetensors``. It
reports how often each kind of non-digit made from the test digits is caught, and how many
real test digits it calls recognisable.

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
from dlai_diffusion.metrics import JUDGE_WEIGHTS, LENET_WEIGHTS, NOT_A_DIGIT, LeNet


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


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Blur (N, 1, H, W) images with a Gaussian of width ``sigma`` pixels (background pad)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(images + 1, (radius,) * 4)  # zero padding = background (-1)
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1)) - 1


NON_DIGIT_KINDS = ("noise", "smooth noise", "blur", "shuffled", "blend")


def non_digits(images: Tensor, generator: torch.Generator, kind: str | None = None) -> Tensor:
    """One non-digit per digit of ``images`` (N, 1, 28, 28): each of a kind drawn from
    :data:`NON_DIGIT_KINDS` (or all of ``kind``)."""
    n = images.shape[0]
    kinds = torch.randint(len(NON_DIGIT_KINDS), (n,), generator=generator)
    if kind is not None:
        kinds.fill_(NON_DIGIT_KINDS.index(kind))
    out = images.clone()
    for k, name in enumerate(NON_DIGIT_KINDS):
        rows = (kinds == k).nonzero().flatten()
        if rows.numel() == 0:
            continue
        x = images[rows]
        m = x.shape[0]
        if name == "noise":
            scale = 0.3 + 1.2 * torch.rand(m, 1, 1, 1, generator=generator)
            y = (torch.randn(x.shape, generator=generator) * scale - 0.5).clamp(-1, 1)
        elif name == "smooth noise":
            sigma = float(1.0 + 2.0 * torch.rand(1, generator=generator))
            y = gaussian_blur(torch.randn(x.shape, generator=generator), sigma)
            y = (y / y.flatten(1).std(1).view(-1, 1, 1, 1) - 1).clamp(-1, 1)
        elif name == "blur":
            y = gaussian_blur(x, float(2.5 + 1.5 * torch.rand(1, generator=generator)))
        elif name == "shuffled":
            order = torch.argsort(torch.rand(m, 28 * 28, generator=generator), dim=1)
            y = x.flatten(1).gather(1, order).view_as(x)
        else:  # blend of two different digits
            partner = images[torch.randint(n, (m,), generator=generator)]
            y = (x + partner) / 2
        out[rows] = y
    return out


def soften(images: Tensor, generator: torch.Generator) -> Tensor:
    """Half of the digits blurred by a Gaussian of width 0.3-1.5 pixels: a soft digit is
    still a digit (only blur of 2.5 pixels and more is a non-digit)."""
    half = torch.rand(images.shape[0], generator=generator) < 0.5
    sigma = float(0.3 + 1.2 * torch.rand(1, generator=generator))
    out = images.clone()
    out[half] = gaussian_blur(images[half], sigma)
    return out


def judge_batch(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The judge's batch: the (augmented) digits, softened, plus one non-digit per four."""
    x = soften(x, generator)
    fakes = non_digits(x[: max(1, x.shape[0] // 4)], generator)
    return torch.cat([x, fakes]), torch.cat([y, torch.full((fakes.shape[0],), NOT_A_DIGIT)])


@torch.no_grad()
def judge_report(model: LeNet, images: Tensor, labels: Tensor, seed: int) -> dict:
    """Accuracy and recognisable share on real digits; share caught per non-digit kind."""
    probabilities = model(images).softmax(1)
    confidence, label = probabilities.max(1)
    recognisable = (label != NOT_A_DIGIT) & (confidence >= 0.5)
    report = {
        "digit_accuracy": (label == labels).float().mean().item(),
        "real_recognisable": recognisable.float().mean().item(),
        "real_confidence": confidence.mean().item(),
    }
    generator = torch.Generator().manual_seed(seed + 1)
    for kind in NON_DIGIT_KINDS:
        fakes = non_digits(images[:2000], generator, kind)
        p = model(fakes).softmax(1)
        caught = (p.argmax(1) == NOT_A_DIGIT) | (p.max(1).values < 0.5)
        report[f"caught {kind}"] = caught.float().mean().item()
    return report


@torch.no_grad()
def accuracy(model: LeNet, images: Tensor, labels: Tensor, batch_size: int = 2000) -> float:
    model.eval()
    correct = sum(
        (model(x).argmax(1) == y).sum().item()
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True)
    )
    return correct / labels.shape[0]


def train(
    images: Tensor,
    labels: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    judge: bool = False,
) -> LeNet:
    """The LeNet (or, with ``judge``, the 11-class digit judge fed :func:`judge_batch`)."""
    torch.manual_seed(seed)  # initial weights
    generator = torch.Generator().manual_seed(seed)  # order and augmentation
    model = LeNet(n_classes=11 if judge else 10)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(images.shape[0] / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(images.shape[0], generator=generator)
        for index in order.split(batch_size):
            x, y = random_affine(images[index], generator), labels[index]
            if judge:
                x, y = judge_batch(x, y, generator)
            loss = F.cross_entropy(model(x), y)
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
    parser.add_argument("--min-accuracy", type=float,
                        help="refuse to write below this test accuracy (default 0.99; 0.985 for "
                        "the judge, which also calls the few worst-written test digits non-digits)")
    parser.add_argument("--out", type=Path, help="default: the package's asset")
    parser.add_argument("--judge", action="store_true", help="train the 11-class digit judge")
    args = parser.parse_args(argv)

    train_set = load_mnist("train", root=args.root, subset=False)
    test_set = load_mnist("test", root=args.root, subset=False)
    if args.judge:
        return main_judge(args, train_set, test_set)
    out = args.out or LENET_WEIGHTS
    start = time.perf_counter()
    model = train(
        train_set.images, train_set.labels, args.epochs, args.batch_size, args.lr, args.seed
    )
    minutes = (time.perf_counter() - start) / 60
    test_accuracy = accuracy(model, test_set.images, test_set.labels)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"test accuracy {test_accuracy:.4f} on {len(test_set)} digits")
    print(f"{parameters} parameters, trained in {minutes:.1f} min")
    minimum = 0.99 if args.min_accuracy is None else args.min_accuracy
    if test_accuracy < minimum:
        raise SystemExit(f"test accuracy below {minimum}; weights not written")
    checkpoint = {
        "state_dict": model.state_dict(),
        "test_accuracy": test_accuracy,
        "epochs": args.epochs,
        "seed": args.seed,
    }
    save_atomically(checkpoint, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return test_accuracy


def main_judge(args, train_set, test_set) -> float:
    from safetensors.torch import save_file

    start = time.perf_counter()
    model = train(
        train_set.images, train_set.labels, args.epochs, args.batch_size, args.lr, args.seed,
        judge=True,
    )
    minutes = (time.perf_counter() - start) / 60
    report = judge_report(model, test_set.images, test_set.labels, args.seed)
    for key, value in report.items():
        print(f"{key}: {value:.4f}")
    print(f"trained in {minutes:.1f} min")
    minimum = 0.985 if args.min_accuracy is None else args.min_accuracy
    if report["digit_accuracy"] < minimum:
        raise SystemExit(f"test accuracy below {minimum}; weights not written")
    out = args.out or JUDGE_WEIGHTS
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={k: f"{v:.4f}" for k, v in report.items()})
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return report["digit_accuracy"]


if __name__ == "__main__":
    main()
