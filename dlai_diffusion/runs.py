"""Training runs from the command line: ``dlai-diffusion train | sample | evaluate``.

A *model* is described once by a :class:`ModelSpec` (how to build the network, its loss,
how to sample) and registered with :func:`register` by the module of its lecture. A *data
source* (:func:`data_source`) is a toy dataset, ``mnist`` or ``cifar10``. A run directory
holds everything a run produced::

    RUN/config.json        what was asked (model, data, steps, options, seed) and where it ran
    RUN/history.json       the loss history and the training time
    RUN/checkpoint.pt      weights, EMA, optimiser, step, RNG (resumable; weights_only loading)
    RUN/samples.png        a scatter against the truth (2D) or an image grid
    RUN/samples.pt         the samples drawn by the last ``sample`` or ``evaluate``
    RUN/metrics.json       sample quality: sliced Wasserstein and energy distance against their
                           two-sample floor (2D), classifier-feature FID and confidence (MNIST)

``dlai-diffusion train dsm`` with no other option trains on a toy dataset on the CPU in about
a minute. Training again into the same directory resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import json
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__, toy
from .config import device as best_device
from .config import fast_or
from .train import CHECKPOINT_NAME, load_checkpoint, random_batches, train

IMAGE_DATA = ("mnist", "cifar10")

_LECTURE_MODULES = ("score_matching", "ebm", "ncsn", "ddpm", "dpm", "flow_matching")
"""Modules whose import registers their models; each lecture adds its own."""


@dataclass(frozen=True)
class DataSource:
    """Training batches and reference samples of one dataset, and how to read them."""

    name: str
    shape: tuple[int, ...]
    train: Callable[[torch.Generator | None], Tensor]
    reference: Callable[[int, torch.Generator | None], Tensor]

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


@dataclass(frozen=True)
class ModelSpec:
    """How a model of the course is built, trained and sampled from.

    ``build(data, options) -> nn.Module``; ``loss(model, batch, generator, options)`` returns
    the scalar training loss; ``sample(model, n, data, generator, options)`` returns n samples
    of shape ``(n, *data.shape)``. ``options`` holds the model's hyper-parameters: the
    defaults below, overridden with ``--option KEY=VALUE`` on the command line.
    """

    name: str
    summary: str
    build: Callable[[DataSource, Mapping[str, Any]], nn.Module]
    loss: Callable[..., Tensor]
    sample: Callable[..., Tensor]
    options: Mapping[str, Any] = field(default_factory=dict)
    data: str = "moons"
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Make ``spec`` available to the command line under ``spec.name``."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    MODELS[spec.name] = spec
    return spec


def models() -> dict[str, ModelSpec]:
    """All registered models (importing the lecture modules registers theirs)."""
    for module in _LECTURE_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return dict(sorted(MODELS.items()))


def get_model(name: str) -> ModelSpec:
    available = models()
    if name not in available:
        raise ValueError(f"model must be one of {sorted(available)}, got {name!r}")
    return available[name]


def data_source(name: str, batch_size: int) -> DataSource:
    """A toy dataset (``toy.DATASETS``), ``mnist`` or ``cifar10``, batched for training.

    MNIST and CIFAR-10 follow :mod:`dlai_diffusion.data`: in fast mode the shipped MNIST
    subset and the synthetic CIFAR-10 stand-in (announced with a warning), else the real data.
    Reference samples for the metrics come from the test split (images) or from the
    dataset's generator (2D).
    """
    if name in toy.DATASETS:
        return DataSource(
            name=name,
            shape=(2,),
            train=lambda generator: toy.sample(name, batch_size, generator),
            reference=functools.partial(toy.sample, name),
        )
    if name in IMAGE_DATA:
        from . import data

        load = data.load_mnist if name == "mnist" else data.load_cifar10
        train_set, test_set = load("train"), load("test")
        test_images = test_set.images

        def reference(n: int, generator: torch.Generator | None = None) -> Tensor:
            if n > len(test_images):
                raise ValueError(f"n must be at most {len(test_images)} for {name}, got {n}")
            return test_images[torch.randperm(len(test_images), generator=generator)[:n]]

        return DataSource(
            name=name,
            shape=tuple(train_set.images.shape[1:]),
            train=random_batches(train_set.images, batch_size=batch_size),
            reference=reference,
        )
    raise ValueError(f"data must be one of {sorted(toy.DATASETS) + list(IMAGE_DATA)}, got {name!r}")


# ----------------------------------------------------------------------------- the run


def _parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["sigma=0.1", "preset=tiny"]`` -> ``{"sigma": 0.1, "preset": "tiny"}``."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"option must look like KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def _resolve_options(spec: ModelSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for model {spec.name!r}; it takes {sorted(spec.options)}"
        )
    return {**spec.options, **given}


def _write_json(path: Path, payload: Mapping) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _read_config(run: Path) -> dict:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise ValueError(f"run must be a directory written by `dlai-diffusion train`; no {path}")
    return json.loads(path.read_text())


def _load_model(run: Path, dev: torch.device) -> tuple[ModelSpec, DataSource, nn.Module, dict]:
    config = _read_config(run)
    spec = get_model(config["model"])
    source = data_source(config["data"], config["batch_size"])
    model = spec.build(source, config["options"]).to(dev)
    weights = "model" if config.get("ema_decay") is None else "ema"
    load_checkpoint(Path(run) / CHECKPOINT_NAME, model, weights=weights, map_location=dev)
    model.eval()
    return spec, source, model, config


def train_run(
    model: str,
    out: str | Path,
    data: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    ema_decay: float | None = 0.999,
    device: str | None = None,
    n_eval: int | None = None,
) -> dict:
    """Train ``model`` into the run directory ``out``, then draw samples and measure them.

    Unset arguments take the model's defaults (``ModelSpec``). Returns the metrics.
    """
    spec = get_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model": spec.name,
        "data": data or spec.data,
        "steps": int(steps if steps is not None else fast_or(spec.steps, 20)),
        "batch_size": int(batch_size or spec.batch_size),
        "lr": float(lr or spec.lr),
        "options": _resolve_options(spec, options or {}),
        "seed": int(seed),
        "ema_decay": ema_decay,
    }
    previous = out / "config.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        changed = {k for k in ("model", "data", "batch_size", "options") if old.get(k) != config[k]}
        if changed:
            raise ValueError(
                f"out {out} holds a run with different {sorted(changed)}; choose a new directory"
            )
    dev = torch.device(device) if device else best_device()
    where = {
        "version": __version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(dev),
    }
    _write_json(previous, {**config, **where})

    source = data_source(config["data"], config["batch_size"])
    generator = torch.Generator().manual_seed(config["seed"])
    torch.manual_seed(config["seed"])
    net = spec.build(source, config["options"]).to(dev)
    start = time.perf_counter()
    result = train(
        net,
        functools.partial(spec.loss, options=config["options"]),
        source.train,
        config["steps"],
        lr=config["lr"],
        ema_decay=ema_decay,
        checkpoint_dir=out,
        checkpoint_every=max(1, config["steps"] // 4),
        generator=generator,
    )
    seconds = time.perf_counter() - start
    history = {"losses": result.losses, "seconds": seconds}
    _write_json(out / "history.json", history)
    metrics = evaluate_run(out, n=n_eval, seed=seed, device=device)
    metrics["train_seconds"] = seconds
    _write_json(out / "metrics.json", metrics)
    return metrics


def _draw(run: Path, n: int, seed: int, device: str | None) -> tuple[Tensor, DataSource]:
    """Sample a trained run (EMA weights when present); save and plot the samples."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    dev = torch.device(device) if device else best_device()
    spec, source, model, config = _load_model(run, dev)
    generator = torch.Generator().manual_seed(seed)
    samples = spec.sample(model, n, source, generator, config["options"]).detach().cpu()
    torch.save(samples, run / "samples.pt")
    _plot(samples, source, run / "samples.png", title=f"{spec.name} on {source.name}")
    return samples, source


def sample_run(run: str | Path, n: int = 64, seed: int = 0, device: str | None = None) -> Tensor:
    """Draw ``n`` samples from a trained run; writes ``samples.pt`` and ``samples.png``."""
    return _draw(Path(run), n, seed, device)[0]


def evaluate_run(
    run: str | Path, n: int | None = None, seed: int = 0, device: str | None = None
) -> dict:
    """Sample ``n`` points from a run and measure them; writes ``metrics.json``."""
    run = Path(run)
    config = _read_config(run)
    n = n or fast_or(1000 if config["data"] in IMAGE_DATA else 2000, 200)
    samples, source = _draw(run, n, seed, device)
    generator = torch.Generator().manual_seed(seed + 1)
    metrics: dict[str, Any] = {"model": config["model"], "data": config["data"], "n": n}
    if not torch.isfinite(samples).all():
        metrics["finite"] = False
    elif not source.is_image:
        from .metrics import compare_to_floor

        for name in ("sliced_wasserstein", "energy_distance"):
            c = compare_to_floor(samples, source.reference, name, generator=generator)
            metrics[name] = {"value": c.value, "floor": c.floor, "ratio": c.ratio}
    elif source.name == "mnist":
        from .metrics import classifier_confidence, classifier_fid

        reference = source.reference(n, generator)
        metrics["classifier_fid"] = classifier_fid(samples, reference)
        metrics["classifier_confidence"] = classifier_confidence(samples)
    else:
        metrics["note"] = "no CIFAR-10 metric without torch-fidelity (metrics.inception_fid)"
    _write_json(run / "metrics.json", metrics)
    return metrics


def _plot(samples: Tensor, source: DataSource, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from . import viz

    if source.is_image:
        fig = viz.show_images(samples[:64].clamp(-1, 1), title=title)
    else:
        reference = source.reference(len(samples), torch.Generator().manual_seed(0))
        fig = viz.plot_samples(samples, reference=reference, title=title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI


def _one_thread_for_toy_data(data: str | None) -> None:
    """Small 2D networks run fastest on one CPU thread (several times faster on a busy machine)."""
    if data in toy.DATASETS:
        torch.set_num_threads(1)


def _train_cmd(args: argparse.Namespace) -> int:
    _one_thread_for_toy_data(args.data or get_model(args.model).data)
    metrics = train_run(
        args.model,
        args.out or f"runs/{args.model}-{args.data or get_model(args.model).data}",
        data=args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        options=_parse_options(args.option),
        seed=args.seed,
        device=args.device,
    )
    print(json.dumps(metrics, indent=2))
    return 0


def _sample_cmd(args: argparse.Namespace) -> int:
    _one_thread_for_toy_data(_read_config(Path(args.run))["data"])
    samples = sample_run(args.run, n=args.n, seed=args.seed, device=args.device)
    print(f"wrote {len(samples)} samples to {Path(args.run) / 'samples.pt'} and samples.png")
    return 0


def _evaluate_cmd(args: argparse.Namespace) -> int:
    _one_thread_for_toy_data(_read_config(Path(args.run))["data"])
    print(
        json.dumps(evaluate_run(args.run, n=args.n, seed=args.seed, device=args.device), indent=2)
    )
    return 0


def _describe_models() -> str:
    return "\n".join(f"  {name:10s} {spec.summary}" for name, spec in models().items())


def add_parsers(sub) -> None:
    data_names = ", ".join(list(toy.DATASETS) + list(IMAGE_DATA))
    p = sub.add_parser(
        "train",
        help="train a model of the course",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Train a model and write RUN/ (see below).\n\nmodels:\n{_describe_models()}",
    )
    p.add_argument("model", help="model name (listed above)")
    p.add_argument("--data", help=f"dataset: {data_names} (default: the model's)")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the model's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="model option")
    p.add_argument("--out", help="run directory (default: runs/MODEL-DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    p.set_defaults(func=_train_cmd)

    for name, func, help_text, default_n in (
        ("sample", _sample_cmd, "draw samples from a trained run", 64),
        ("evaluate", _evaluate_cmd, "measure the sample quality of a trained run", None),
    ):
        q = sub.add_parser(name, help=help_text)
        q.add_argument("run", help="run directory written by `dlai-diffusion train`")
        q.add_argument("--n", type=int, default=default_n, help="number of samples")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--device")
        q.set_defaults(func=func)
