"""Every named training recipe of the course, as plain data.

A :class:`Recipe` says everything that decides a training run: the data, the network and its
size, the loss and its process (schedule, T, label dropout, ...), the optimiser, learning
rate and warm-up, batch, steps, EMA, gradient clipping, mixed precision and the seed. The
pretraining script (``scripts/pretrain.py NAME``), the benchmarks and ``dlai-diffusion
train`` all read recipes from here, so a shipped model can always be traced to one entry of
:data:`RECIPES`.

A recipe is built into a run by four small functions: :func:`build_model` (the network),
:func:`make_loss` (``loss(model, batch, generator)`` for :func:`dlai_diffusion.train.train`),
:func:`make_data` (a ``data(generator)`` batch callable) and :func:`run` (all of it, with
checkpoints that resume exactly). ``recipe.on("cuda")`` returns the recipe with its GPU
overrides applied (bigger batches, more steps); the CPU entries are sized to train within
about 90 minutes on 2 CPU cores.

======================== ============================================================
recipe                   what it trains
======================== ============================================================
``cfg-mnist``            class-conditional DDPM noise model eps(x, t, y) with label
                         dropout (Ho & Salimans, 2021); its null label makes it the
                         unconditional ``ddpm-mnist`` too (Ho et al., 2020: T = 1000,
                         linear betas, eps-prediction)
``noisy-classifier-mnist`` the noise-aware classifier p(y | x_t) of classifier guidance
                         (Dhariwal & Nichol, 2021)
======================== ============================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["RECIPES", "Recipe", "build_model", "get", "make_data", "make_loss", "run"]

KINDS = ("cfg", "noisy-classifier")
"""What a recipe can train; :func:`build_model` and :func:`make_loss` know each."""


@dataclass(frozen=True)
class Recipe:
    """One named training recipe (see the module docstring).

    ``network``: keyword arguments of the network builder of ``kind``; ``process``: those of
    the loss (e.g. ``schedule``, ``T``, ``p_uncond``); ``cuda``: field overrides used by
    ``recipe.on("cuda")``. ``warmup_steps``: the learning rate rises linearly from 0 over
    these steps, then stays at ``lr`` (Adam).
    """

    name: str
    summary: str
    kind: str
    data: str
    network: Mapping[str, Any]
    process: Mapping[str, Any]
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    ema_decay: float | None = None
    grad_clip: float | None = None
    amp: str | None = None
    seed: int = 0
    checkpoint_every: int = 250
    cuda: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite float, got {self.lr!r}")

    def on(self, device: str | torch.device) -> Recipe:
        """This recipe as trained on ``device``: the ``cuda`` overrides apply on CUDA."""
        if torch.device(device).type != "cuda" or not self.cuda:
            return self
        return dataclasses.replace(self, cuda={}, **self.cuda)

    def as_dict(self) -> dict[str, Any]:
        """The recipe as JSON-ready plain data (what a pretrained model's record stores)."""
        return json_ready(dataclasses.asdict(self))


def json_ready(value: Any) -> Any:
    """Tuples become lists, mappings dicts: plain JSON data."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="cfg-mnist",
            summary="class-conditional DDPM eps-model with label dropout (classifier-free "
            "guidance; its null label is the unconditional ddpm-mnist)",
            kind="cfg",
            data="mnist",
            network=dict(preset="small", n_classes=10),
            process=dict(schedule="linear", T=1000, p_uncond=0.2),
            steps=6000,
            batch_size=128,
            lr=5e-4,
            warmup_steps=200,
            ema_decay=0.999,
            grad_clip=1.0,
            amp="bf16",
            cuda=dict(network=dict(preset="base", n_classes=10), steps=40_000, lr=2e-4,
                      ema_decay=0.9999, warmup_steps=1000),
        ),
        Recipe(
            name="noisy-classifier-mnist",
            summary="noise-aware classifier p(y | x_t) on the DDPM process (classifier "
            "guidance)",
            kind="noisy-classifier",
            data="mnist",
            network=dict(channels=32),
            process=dict(schedule="linear", T=1000),
            steps=3000,
            batch_size=128,
            lr=1e-3,
            warmup_steps=100,
            ema_decay=0.999,
            grad_clip=1.0,
            amp="bf16",
        ),
    )
}


def get(name: str) -> Recipe:
    """The recipe called ``name`` (see :data:`RECIPES`)."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    return RECIPES[name]


def _schedule(recipe: Recipe):
    from .schedules import Schedule

    return Schedule.named(recipe.process["schedule"], recipe.process["T"])


def build_model(recipe: Recipe) -> nn.Module:
    """The untrained network of ``recipe`` (weights from PyTorch's global RNG)."""
    if recipe.kind == "cfg":
        from .ddpm import ddpm_unet

        return ddpm_unet(_schedule(recipe), **recipe.network)
    if recipe.kind == "noisy-classifier":
        from .guidance import NoisyClassifier

        schedule = _schedule(recipe)
        return NoisyClassifier(10, 1, time_scale=1000.0 / schedule.T, **recipe.network)
    raise AssertionError(recipe.kind)  # unreachable: Recipe checks kind


def make_loss(recipe: Recipe, device: torch.device | str = "cpu") -> Callable:
    """``loss(model, batch, generator)`` of ``recipe``; ``batch`` is ``(images, labels)``."""
    schedule = _schedule(recipe).to(device)
    if recipe.kind == "cfg":
        from .guidance import conditional_simple_loss

        p_uncond = recipe.process["p_uncond"]

        def cfg_loss(model, batch, generator):
            x0, y = batch
            return conditional_simple_loss(model, schedule, x0, y, generator, p_uncond=p_uncond)

        return cfg_loss
    if recipe.kind == "noisy-classifier":
        from .guidance import noisy_classifier_loss

        def classifier_loss(model, batch, generator):
            x0, y = batch
            return noisy_classifier_loss(model, schedule, x0, y, generator)

        return classifier_loss
    raise AssertionError(recipe.kind)


def make_data(recipe: Recipe, device: torch.device | str = "cpu", subset: bool | None = None):
    """``data(generator) -> (images, labels)``: random batches of the training split.

    MNIST comes from :func:`dlai_diffusion.data.load_mnist` (the full training set unless
    ``subset``; fast mode and ``subset=True`` use the shipped subset).
    """
    from .data import load_mnist
    from .train import random_batches

    if recipe.data != "mnist":
        raise ValueError(f"recipe data must be 'mnist', got {recipe.data!r}")
    dataset = load_mnist("train", subset=subset).to(device)
    return random_batches(dataset.images, dataset.labels, batch_size=recipe.batch_size)


def _warmup(optimizer: torch.optim.Optimizer, steps: int):
    if steps <= 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Warmup(steps))


@dataclass(frozen=True)
class _Warmup:
    """Learning-rate factor min(1, (step + 1) / steps): a picklable LambdaLR function."""

    steps: int

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.steps)


def run(
    recipe: Recipe,
    checkpoint_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    steps: int | None = None,
    subset: bool | None = None,
    progress: bool | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
):
    """Train ``recipe`` (seeded with ``recipe.seed``) into ``checkpoint_dir``, resuming from
    the checkpoint found there; ``steps`` stops earlier (resume later to go on).

    Returns ``(model, result)``: the network (trained weights, not the EMA) and the
    :class:`~dlai_diffusion.train.TrainResult` (``result.ema`` holds the EMA weights).
    """
    from .config import seed_everything
    from .train import train

    generator = seed_everything(recipe.seed)
    model = build_model(recipe).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    result = train(
        model,
        make_loss(recipe, device),
        make_data(recipe, device, subset),
        recipe.steps if steps is None else min(steps, recipe.steps),
        optimizer=optimizer,
        scheduler=_warmup(optimizer, recipe.warmup_steps),
        ema_decay=recipe.ema_decay,
        grad_clip=recipe.grad_clip,
        amp=recipe.amp,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=recipe.checkpoint_every,
        checkpoint_extra={"recipe": recipe.as_dict()},
        generator=generator,
        progress=progress,
        callback=callback,
    )
    return model, result


def ema_model(model: nn.Module, result) -> nn.Module:
    """The EMA weights of a :func:`run` as a module in eval mode (the model itself without EMA)."""
    net = model if result.ema is None else result.ema.ema_model
    return net.eval()

