"""Training runs from the command line: ``dlai-diffusion train | sample | evaluate``.

A *model* is a recipe of :mod:`dlai_diffusion.recipes` whose kind is one of
``recipes.COMMAND_LINE_KINDS`` (its defaults: data, steps, batch, learning rate and the options
that ``--option KEY=VALUE`` overrides); the functions below say how each kind is built,
trained and sampled. A *data source* (:func:`data_source`) is a toy dataset, ``mnist`` or
``cifar10``. A run directory holds everything a run produced::

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
import json
import math
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__, toy
from ._utils import draw_normal, draw_uniform
from .config import device as best_device
from .config import fast_or
from .recipes import COMMAND_LINE_KINDS, RECIPES, Recipe
from .train import CHECKPOINT_NAME, load_checkpoint, random_batches, train

IMAGE_DATA = ("mnist", "cifar10")


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


def models() -> dict[str, Recipe]:
    """The command line's models: the recipes of a command-line kind, by name."""
    return {name: r for name, r in sorted(RECIPES.items()) if r.kind in COMMAND_LINE_KINDS}


def get_model(name: str) -> Recipe:
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


def _count(value: Any, name: str, lowest: int = 1) -> int:
    """An int >= ``lowest`` (0 is a value, not "use the default")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{name} must be an int >= {lowest}, got {value!r}")
    return value


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _write_json(path: Path, payload: Mapping) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _read_config(run: Path) -> dict:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise ValueError(f"run must be a directory written by `dlai-diffusion train`; no {path}")
    return json.loads(path.read_text())


def _load_model(run: Path, dev: torch.device) -> tuple[Recipe, DataSource, nn.Module, dict]:
    config = _read_config(run)
    spec = get_model(config["model"])
    source = data_source(config["data"], config["batch_size"])
    model = _ADAPTERS[spec.kind][0](source, config["options"]).to(dev)
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

    Unset arguments take the model's defaults (its recipe). Returns the metrics.
    """
    spec = get_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model": spec.name,
        "data": spec.data if data is None else data,
        "steps": _count(fast_or(spec.steps, 20) if steps is None else steps, "steps", 0),
        "batch_size": _count(spec.batch_size if batch_size is None else batch_size, "batch_size"),
        "lr": _positive(spec.lr if lr is None else lr, "lr"),
        "options": spec.with_options(options or {}).options,
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
    build, loss, _ = _ADAPTERS[spec.kind]
    net = build(source, config["options"]).to(dev)
    start = time.perf_counter()
    result = train(
        net,
        functools.partial(loss, options=config["options"]),
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
    sample = _ADAPTERS[spec.kind][2]
    samples = sample(model, n, source, generator, config["options"]).detach().cpu()
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


# -------------------------------------------- how the command line builds, trains and samples
# One section per kind of recipes.COMMAND_LINE_KINDS: build(data, options) -> module,
# loss(model, batch, generator, options) -> scalar, sample(model, n, data, generator,
# options) -> (n, *data.shape). ``options`` is the recipe's network and process in one map.


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# dsm (lecture 03)


def _dsm_build(data: DataSource, options) -> nn.Module:
    """An unconditional MLP for 2D data; for images a U-Net fed the constant noise level."""
    from .nets import ScoreMLP, unet

    if data.is_image:
        return unet(options["preset"], in_channels=data.shape[0], image_size=data.shape[-1])
    return ScoreMLP(dim=data.shape[0], hidden=options["hidden"], cond=False)


def _dsm_score(model: nn.Module, sigma: float):
    def score(x: Tensor) -> Tensor:
        if x.dim() == 4:  # the U-Net takes the noise level as its conditioning input
            return model(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype))
        return model(x)

    return score


def _dsm_loss(model, batch, generator, options) -> Tensor:
    from .score_matching import dsm_loss

    sigma = options["sigma"]
    return dsm_loss(_dsm_score(model, sigma), batch, sigma, generator=generator)


def _dsm_sample(model, n, data, generator, options) -> Tensor:
    """Langevin dynamics (notes Eq. 19) on the learned score, from uniform noise."""
    from .langevin import langevin

    half_width = 1.0 if data.is_image else 3.0
    x = (2 * draw_uniform((n, *data.shape), generator, _model_device(model)) - 1) * half_width
    with torch.no_grad():
        score = _dsm_score(model, options["sigma"])
        return langevin(score, x, options["step_size"], options["n_steps"], generator=generator)


# ebm (lecture 04)

_EBM_AUTO = {
    # 2D: the untempered chain of Eq. 19 (noise_scale None = sqrt(2 step_size)), no clipping,
    # a weak regulariser (a strong one flattens the learned density), a large buffer with 1%
    # fresh starts (a fresh chain needs many continuations of 40 small steps to reach the data)
    "2d": dict(n_steps=40, step_size=0.001, noise_scale=None, grad_clip=None, alpha=0.01,
               capacity=50_000, reinit_prob=0.01),
    # images: Du & Mordatch's tempered chain, regulariser, buffer and 5% fresh starts
    "image": dict(n_steps=60, step_size=10.0, noise_scale=0.005, grad_clip=0.01, alpha=1.0,
                  capacity=10_000, reinit_prob=0.05),
}
"""The values of the ``ebm`` recipe's ``"auto"`` options, for 2D data and for images.

The 2D step obeys the two rules of :mod:`dlai_diffusion.ebm`. The untempered chain's noise sets
a resolution: it cannot produce a spread narrower than sqrt(2 step_size), so step_size <=
sigma^2 / 2 for the data's thinnest feature sigma (noise 0.05 on moons and the swiss roll:
0.001 gives 0.045). And it is stable only while step_size * lambda_max(Hessian of E) < 2
(at the data after 2000 training steps on moons and the swiss roll: median 0.4-0.5, 99th
percentile 0.7-1.6 over 5 seeds). The former step 0.004 (0.089) could not make negatives as
thin as those toys: contrastive divergence sharpened the energy until the chain ran away
(18-25 x the sliced-Wasserstein floor). 40 steps of 0.001 per training step cover half the SDE
time of the former 20 steps of 0.004, with twice the network evaluations.
"""


def _ebm_options(options, is_image: bool) -> dict:
    """The options with each ``"auto"`` replaced by the default for the kind of data."""
    defaults = _EBM_AUTO["image" if is_image else "2d"]
    return {k: defaults[k] if v == "auto" else v for k, v in options.items()}


def _ebm_step(options, is_image: bool):
    from .ebm import ContrastiveDivergence

    options = _ebm_options(options, is_image)
    keys = ("n_steps", "step_size", "noise_scale", "grad_clip", "alpha")
    return ContrastiveDivergence(**{k: options[k] for k in keys})


def _ebm_build(data: DataSource, options) -> nn.Module:
    """An energy MLP on 2D data (bounds [-3, 3]), a spectrally normalised CNN on images."""
    from .ebm import EBM, ReplayBuffer
    from .nets import EnergyCNN, EnergyMLP

    if data.is_image:
        energy = EnergyCNN(data.shape[0], options["channels"], spectral_norm=True)
        bounds = (-1.0, 1.0)
    else:
        energy = EnergyMLP(data.shape[0], hidden=options["hidden"])
        bounds = (-3.0, 3.0)
    options = _ebm_options(options, data.is_image)
    return EBM(energy, ReplayBuffer(data.shape, options["capacity"], options["reinit_prob"],
                                    bounds))


def _ebm_loss(model, batch, generator, options):
    return _ebm_step(options, is_image=len(model.buffer.shape) == 3)(model, batch, generator)


def _ebm_sample(model, n, data, generator, options) -> Tensor:
    """``sample_steps`` Langevin steps on the learned energy, continuing chains of the replay
    buffer (``sample_from="buffer"``) or from fresh uniform noise (``"noise"``)."""
    if options["sample_from"] not in ("buffer", "noise"):
        raise ValueError(f"sample_from must be 'buffer' or 'noise', got {options['sample_from']!r}")
    step = _ebm_step(options, data.is_image)
    from_buffer = options["sample_from"] == "buffer"
    with torch.no_grad():
        return step.sample(model, n, options["sample_steps"], generator, from_buffer=from_buffer)


# ncsn (lecture 05)


def _ncsn_build(data: DataSource, options) -> nn.Module:
    """``ncsn_mlp`` for 2D data, ``ncsn_unet`` (``preset``, ``norm``) for images; sigma_max from
    the data unless given (NCSNv2 technique 1)."""
    from .ncsn import geometric_sigmas, ncsn_mlp, ncsn_unet, sigma_max_from_data

    sigma_max = options["sigma_max"]
    if sigma_max is None:
        sigma_max = sigma_max_from_data(data.reference(1000, torch.Generator().manual_seed(0)))
    sigmas = geometric_sigmas(sigma_max, options["sigma_min"], options["n_levels"])
    if data.is_image:
        channels, size = data.shape[0], data.shape[-1]
        return ncsn_unet(sigmas, options["preset"], channels, size, norm=options["norm"])
    return ncsn_mlp(sigmas, dim=data.shape[0], hidden=options["hidden"])


def _ncsn_loss(model, batch, generator, options) -> Tensor:
    from .ncsn import ncsn_loss

    return ncsn_loss(model, batch, model.sigmas, generator)


def _ncsn_sample(model, n, data, generator, options) -> Tensor:
    """Annealed Langevin dynamics from sigma_1 * N(0, I), ending with a Tweedie step; images are
    clamped to the data range [-1, 1]."""
    from .ncsn import annealed_langevin

    sigmas = model.sigmas.cpu()
    x = float(sigmas[0]) * draw_normal((n, *data.shape), generator, _model_device(model))
    with torch.no_grad():
        x = annealed_langevin(model, x, sigmas, options["n_steps_each"], options["eps"],
                              final_denoise=options["final_denoise"], generator=generator)
    return x.clamp(-1.0, 1.0) if data.is_image else x


# ddpm (lecture 07)


def _ddpm_steps(options, is_image: bool) -> int:
    """T: 1000 for images (Ho et al.), 200 for 2D data as in lecture 07 (with T = 100 the
    thin moons come out about 1.6 x the energy-distance floor, with T = 200 about 1.2 x)."""
    if options["T"] is not None:
        return int(options["T"])
    return 1000 if is_image else 200


@functools.lru_cache(maxsize=16)
def _cached_schedule(name: str, T: int, device: str):
    from .schedules import Schedule

    return Schedule.named(name, T).to(device)


def _ddpm_schedule(options, is_image: bool, device):
    return _cached_schedule(options["schedule"], _ddpm_steps(options, is_image), str(device))


def _ddpm_build(data: DataSource, options) -> nn.Module:
    """``ddpm_mlp`` for 2D data, ``ddpm_unet`` (``preset``) for images."""
    from .ddpm import ddpm_mlp, ddpm_unet

    schedule = _ddpm_schedule(options, data.is_image, "cpu")
    if data.is_image:
        return ddpm_unet(schedule, options["preset"], data.shape[0], data.shape[-1])
    return ddpm_mlp(schedule, dim=data.shape[0], hidden=options["hidden"])


def _ddpm_loss(model, batch, generator, options) -> Tensor:
    from .ddpm import simple_loss

    return simple_loss(model, _ddpm_schedule(options, batch.dim() == 4, batch.device), batch,
                       generator)


def _ddpm_sample(model, n, data, generator, options) -> Tensor:
    """Ancestral sampling from N(0, I); x0 is clipped to [-1, 1] for images unless told."""
    from .ddpm import sample_ddpm

    device = _model_device(model)
    schedule = _ddpm_schedule(options, data.is_image, device)
    clip = data.is_image if options["clip_x0"] is None else bool(options["clip_x0"])
    x = draw_normal((n, *data.shape), generator, device)
    return sample_ddpm(model, x, schedule, options["variance"], clip, generator)


# dpm (lecture 06)


def _dpm_build(data: DataSource, options) -> nn.Module:
    from .dpm import dpm_mlp
    from .schedules import Schedule

    if data.is_image:
        raise ValueError(
            f"the dpm model is for 2D data (lecture 06), got image data {data.name!r}; "
            "use `dlai-diffusion train ddpm` for images"
        )
    schedule = Schedule.named(options["schedule"], int(options["T"]))
    return dpm_mlp(schedule, data.shape[0], options["hidden"], variance=options["variance"])


def _dpm_loss(model, batch, generator, options) -> Tensor:
    from .dpm import dpm_loss

    return dpm_loss(model, model.schedule, batch, generator)


def _dpm_sample(model, n, data, generator, options) -> Tensor:
    from .dpm import sample_dpm

    x = draw_normal((n, *data.shape), generator, _model_device(model))
    return sample_dpm(model, x, model.schedule, generator)


# flow (lecture 11)


def _flow_build(data: DataSource, options) -> nn.Module:
    """``flow_mlp`` for 2D data, ``flow_unet`` (``preset``) for images."""
    from .flow_matching import flow_mlp, flow_unet

    if data.is_image:
        return flow_unet(options["preset"], data.shape[0], data.shape[-1])
    return flow_mlp(dim=data.shape[0], hidden=options["hidden"])


def _flow_loss(model, batch, generator, options) -> Tensor:
    from .flow_matching import flow_matching_loss

    return flow_matching_loss(model, batch, generator, sigma_min=float(options["sigma_min"]))


def _flow_sample(model, n, data, generator, options) -> Tensor:
    """The ODE from N(0, I); images are clipped to [-1, 1]."""
    from .flow_matching import sample_flow

    x = draw_normal((n, *data.shape), generator, _model_device(model))
    x = sample_flow(model, x, int(options["n_steps"]), options["method"])
    return x.clamp(-1, 1) if data.is_image else x


_ADAPTERS = {
    "dsm": (_dsm_build, _dsm_loss, _dsm_sample),
    "ebm": (_ebm_build, _ebm_loss, _ebm_sample),
    "ncsn": (_ncsn_build, _ncsn_loss, _ncsn_sample),
    "ddpm": (_ddpm_build, _ddpm_loss, _ddpm_sample),
    "dpm": (_dpm_build, _dpm_loss, _dpm_sample),
    "flow": (_flow_build, _flow_loss, _flow_sample),
}


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
