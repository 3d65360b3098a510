"""Every named training recipe of the course, as plain data.

A :class:`Recipe` says everything that decides a training run: the data, the network and its
size, the loss and its process (schedule, T, label dropout, ...), the optimiser, learning
rate and warm-up, batch, steps, EMA, gradient clipping, mixed precision and the seed. The
pretraining script (``scripts/pretrain.py NAME``), the benchmarks and ``dlai-diffusion
train`` all read recipes from here, so a shipped model can always be traced to one entry of
:data:`RECIPES`.

The command line's models (``dlai-diffusion train dsm | ebm | ncsn | ddpm | dpm | flow``) are
recipes too: their ``network`` and ``process`` entries are the options that ``--option
KEY=VALUE`` overrides (:meth:`Recipe.with_options`), and ``data`` is their default dataset;
:mod:`dlai_diffusion.runs` builds, trains and samples them.

A course-model recipe is built into a run by four small functions: :func:`build_model` (the
network), :func:`make_loss` (``loss(model, batch, generator)`` for
:func:`dlai_diffusion.train.train`), :func:`make_data` (a ``data(generator)`` batch callable)
and :func:`run` (all of it, with checkpoints that resume exactly). ``recipe.on("cuda")``
returns the recipe with its GPU overrides applied (bigger batches, more steps); the CPU
entries are sized to train within about 90 minutes on 2 CPU cores.

======================== ============================================================
recipe                   what it trains
======================== ============================================================
``ddpm-mnist``           unconditional DDPM noise model eps(x, t) (Ho et al., 2020:
                         T = 1000, linear betas, eps-prediction, the simple loss)
``cfg-mnist``            class-conditional DDPM noise model eps(x, t, y) with label
                         dropout (Ho & Salimans, 2021)
``noisy-classifier-mnist`` the noise-aware classifier p(y | x_t) of classifier guidance
                         (Dhariwal & Nichol, 2021)
``flow-mnist``           velocity v(x, t) of conditional flow matching on the linear path
                         (rectified flow; Lipman et al., 2023; Liu et al., 2023)
``dsm`` ... ``flow``     the command line's models, one per lecture (see
                         :data:`COMMAND_LINE_KINDS`)
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

COURSE_MODEL_KINDS = ("unconditional", "cfg", "noisy-classifier", "flow-matching")
"""Kinds of the shipped course models (:func:`build_model`, :func:`make_loss`, :func:`run`)."""

COMMAND_LINE_KINDS = ("dsm", "ebm", "ncsn", "ddpm", "dpm", "flow")
"""Kinds that ``dlai-diffusion train`` trains (:mod:`dlai_diffusion.runs`), one per lecture."""

KINDS = COURSE_MODEL_KINDS + COMMAND_LINE_KINDS


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

    @property
    def options(self) -> dict[str, Any]:
        """``network`` and ``process`` in one mapping: the command line's options."""
        return {**self.network, **self.process}

    def with_options(self, given: Mapping[str, Any]) -> Recipe:
        """This recipe with some options replaced (``{"sigma": 0.5}``), each in the mapping
        (``network`` or ``process``) that holds it; an unknown name is a ValueError."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for model {self.name!r}; it takes "
                f"{sorted(self.options)}"
            )
        network = {k: given.get(k, v) for k, v in self.network.items()}
        process = {k: given.get(k, v) for k, v in self.process.items()}
        return dataclasses.replace(self, network=network, process=process)

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


_MNIST_UNET_TRAINING = dict(data="mnist", steps=6000, batch_size=128, lr=5e-4, warmup_steps=200,
                            ema_decay=0.999, grad_clip=1.0, amp="bf16")
"""How the course's 1M-parameter MNIST U-Nets train on a CPU: about 100 minutes on 2 cores."""

_GPU_TRAINING = dict(steps=40_000, lr=2e-4, ema_decay=0.9999, warmup_steps=1000)
"""Their GPU overrides (with the ``base`` network)."""

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="ddpm-mnist",
            summary="unconditional DDPM eps-model (Ho et al., 2020: T = 1000, linear betas, "
            "the simple loss)",
            kind="unconditional",
            network=dict(preset="small"),
            process=dict(schedule="linear", T=1000),
            **_MNIST_UNET_TRAINING,
            cuda=_GPU_TRAINING | dict(network=dict(preset="base")),
        ),
        Recipe(
            name="cfg-mnist",
            summary="class-conditional DDPM eps-model with label dropout (classifier-free "
            "guidance)",
            kind="cfg",
            network=dict(preset="small", n_classes=10),
            process=dict(schedule="linear", T=1000, p_uncond=0.2),
            **_MNIST_UNET_TRAINING,
            cuda=_GPU_TRAINING | dict(network=dict(preset="base", n_classes=10)),
        ),
        # the command line's models (lectures 03-11); "auto": the default for 2D or images
        Recipe(
            name="dsm",
            summary="denoising score matching at one noise level, sampled by Langevin dynamics "
            "(lecture 03)",
            kind="dsm",
            data="moons",
            network=dict(hidden=128, preset="tiny"),
            process=dict(sigma=0.2, step_size=0.004, n_steps=500),
            steps=3000,
            batch_size=256,
            lr=2e-3,
        ),
        Recipe(
            name="ebm",
            summary="energy-based model: contrastive divergence with a replay buffer, sampled "
            "by Langevin dynamics (lecture 04)",
            kind="ebm",
            data="8gaussians",
            network=dict(hidden=128, channels=32),
            process=dict(n_steps="auto", step_size="auto", noise_scale="auto", grad_clip="auto",
                         alpha="auto", capacity="auto", reinit_prob="auto", sample_steps=100,
                         sample_from="buffer"),
            steps=1500,
            batch_size=256,
            lr=2e-3,
        ),
        Recipe(
            name="ncsn",
            summary="noise-conditional score network, sampled by annealed Langevin dynamics "
            "(lecture 05)",
            kind="ncsn",
            data="swiss_roll",
            network=dict(hidden=128, preset="small", norm="cin"),
            process=dict(sigma_max=None, sigma_min=0.01, n_levels=10, n_steps_each=100,
                         eps=5e-5, final_denoise=True),
            steps=3000,
            batch_size=256,
            lr=2e-3,
        ),
        Recipe(
            name="ddpm",
            summary="denoising diffusion probabilistic model: simple loss, ancestral sampling "
            "(lecture 07)",
            kind="ddpm",
            data="swiss_roll",
            network=dict(hidden=128, preset="small"),
            process=dict(schedule="linear", T=None, variance="beta", clip_x0=None),
            steps=3000,
            batch_size=512,
            lr=2e-3,
        ),
        Recipe(
            name="dpm",
            summary="diffusion probabilistic model with learned mean and variance, trained on "
            "the variational bound (lecture 06; 2D data only)",
            kind="dpm",
            data="swiss_roll",
            network=dict(hidden=128),
            process=dict(schedule="sohl_dickstein", T=100, variance="sigmoid"),
            steps=3000,
            batch_size=512,
            lr=2e-3,
        ),
        Recipe(
            name="flow",
            summary="flow matching / rectified flow: velocity regression, ODE sampling "
            "(lecture 11)",
            kind="flow",
            data="moons",
            network=dict(hidden=128, preset="small"),
            process=dict(sigma_min=0.0, n_steps=50, method="heun"),
            steps=3000,
            batch_size=512,
            lr=2e-3,
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
        Recipe(
            name="flow-mnist",
            summary="rectified flow: conditional flow matching on the linear path from N(0, I) "
            "to the data, the U-Net of ddpm-mnist as velocity",
            kind="flow-matching",
            network=dict(preset="small"),
            process=dict(sigma_min=0.0),
            **_MNIST_UNET_TRAINING,
            cuda=_GPU_TRAINING | dict(network=dict(preset="base")),
        ),
    )
}


def get(name: str) -> Recipe:
    """The recipe called ``name`` (see :data:`RECIPES`)."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    return RECIPES[name]


def _schedule(recipe: Recipe):
    """The DDPM schedule of a recipe whose process names one (``schedule``, ``T``)."""
    from .schedules import Schedule

    return Schedule.named(recipe.process["schedule"], recipe.process["T"])


def _course_model(recipe: Recipe) -> None:
    if recipe.kind not in COURSE_MODEL_KINDS:
        raise ValueError(
            f"recipe {recipe.name!r} is a command-line model: train it with "
            f"`dlai-diffusion train {recipe.name}`"
        )


def build_model(recipe: Recipe) -> nn.Module:
    """The untrained network of a course-model ``recipe`` (weights from PyTorch's global
    RNG)."""
    _course_model(recipe)
    if recipe.kind in ("unconditional", "cfg"):
        from .ddpm import ddpm_unet

        return ddpm_unet(_schedule(recipe), **recipe.network)
    if recipe.kind == "noisy-classifier":
        from .guidance import NoisyClassifier

        schedule = _schedule(recipe)
        return NoisyClassifier(10, 1, time_scale=1000.0 / schedule.T, **recipe.network)
    if recipe.kind == "flow-matching":
        from .flow_matching import flow_unet

        return flow_unet(**recipe.network)
    raise AssertionError(recipe.kind)  # unreachable: Recipe checks kind


def make_loss(recipe: Recipe, device: torch.device | str = "cpu") -> Callable:
    """``loss(model, batch, generator)`` of ``recipe``; ``batch`` is ``(images, labels)``."""
    _course_model(recipe)
    if recipe.kind == "flow-matching":
        from .flow_matching import flow_matching_loss

        sigma_min = recipe.process["sigma_min"]

        def flow_loss(model, batch, generator):
            x1, _ = batch
            return flow_matching_loss(model, x1, generator, sigma_min=sigma_min)

        return flow_loss
    schedule = _schedule(recipe).to(device)
    if recipe.kind == "unconditional":
        from .ddpm import simple_loss

        def ddpm_loss(model, batch, generator):
            x0, _ = batch
            return simple_loss(model, schedule, x0, generator)

        return ddpm_loss
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
