"""MNIST: classifier-feature FID against training time (DDPM, NCSN, EBM) and against the
number of sampling steps (ancestral DDPM and DDIM).

FID here is the Fréchet distance between LeNet features of the samples and of as many real
test digits (:func:`dlai_diffusion.metrics.classifier_fid`); it depends on the sample size, so
every value uses the same size, and the "real digits" row gives the floor: the FID of a second
set of real test digits. Each model follows the recipe of its lecture (05 NCSN, 04 EBM, 07
DDPM: networks, losses, learning rates, the EBM's optimiser and buffer) with the sizes below,
one EMA decay of 0.999 for DDPM and NCSN (the lectures use 0.995 and 0.99) and NCSN's
step constant ``NCSN_EPS``, and is trained in stretches with :func:`dlai_diffusion.train.train`,
which resumes from its checkpoint, so the same run is measured after each stretch. The
training curve samples NCSN with annealed Langevin dynamics and a final denoising step and
the EBM by the latest negatives of its replay buffer (Du & Mordatch), as their lectures do,
and DDPM with deterministic DDIM (``curve_ddim_steps``, lecture 09), since ancestral sampling
at every checkpoint would cost more than the training. In quick mode the data is the MNIST
subset shipped with the package, elsewhere the full MNIST (``$DLAI_DATA``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import (
    SectionResult,
    Stopwatch,
    Target,
    environment_variable,
    full_data_location,
    mode_name,
    torch_threads,
)

QUICK = {
    "preset": "tiny",
    "T": 100,
    "batch_size": 32,
    "n_fid": 64,
    "checkpoints": {"ddpm": [20, 40], "ncsn": [20, 40], "ebm": [10, 20]},
    "ncsn": {"n_levels": 10, "n_steps_each": 2, "sigma_min": 0.01},
    "ebm": {"channels": 16, "n_steps": 5, "capacity": 1024, "reinit_prob": 0.01},
    "curve_ddim_steps": 10,
    "ddim_steps": [10, 50],
    "etas": [0.0, 1.0],
}
FULL_CPU = {
    "preset": "tiny",
    "T": 1000,
    "batch_size": 64,
    "n_fid": 250,
    "checkpoints": {"ddpm": [750, 1500, 3000], "ncsn": [750, 1500, 3000], "ebm": [500, 1000, 2000]},
    # lecture 05: 20 levels down to 0.01, 10 Langevin steps each
    "ncsn": {"n_levels": 20, "n_steps_each": 10, "sigma_min": 0.01},
    # lecture 04: 40 steps per update, a buffer of 8192 chains restarted at 1%
    "ebm": {"channels": 16, "n_steps": 40, "capacity": 8192, "reinit_prob": 0.01},
    "curve_ddim_steps": 50,
    "ddim_steps": [10, 20, 50, 100],
    "etas": [0.0, 1.0],
}
FULL_GPU = {
    **FULL_CPU,
    "preset": "small",
    "n_fid": 1000,
    "batch_size": 128,
    "checkpoints": {
        "ddpm": [2000, 5000, 10000],
        "ncsn": [2000, 5000, 10000],
        "ebm": [1000, 2000, 4000],
    },
    "ddim_steps": [10, 20, 50, 100, 200],
}
DDIM_TOLERANCE = 0.10
NCSN_EPS = 5e-5
"""Annealed Langevin step constant: the command line's default (lecture 05 samples MNIST with
1e-4 and otherwise the same levels and steps)."""
EMA_DECAY = 0.999


def _sizes(quick: bool, device: torch.device) -> dict:
    if quick:
        return dict(QUICK)
    return dict(FULL_GPU if device.type == "cuda" else FULL_CPU)


@dataclass
class Recipe:
    """One model of the training curve: the network, its loss and optimiser settings, and
    ``sample(model, n, generator)``, the lecture's way to draw ``n`` digits from it."""

    network: torch.nn.Module
    loss: Callable
    sample: Callable
    sampler: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float | None = EMA_DECAY


def _ddpm_recipe(sizes: dict, images: torch.Tensor, device: torch.device) -> Recipe:
    from dlai_diffusion import ddim, ddpm
    from dlai_diffusion._utils import draw_normal
    from dlai_diffusion.schedules import Schedule

    schedule = Schedule.linear(sizes["T"]).to(device)
    network = ddpm.ddpm_unet(schedule, sizes["preset"], 1, 28)
    steps = sizes["curve_ddim_steps"]

    def sample(model, n, generator):
        x = draw_normal((n, 1, 28, 28), generator, device)
        return ddim.sample_ddim(model, x, schedule, n_steps=steps, eta=0.0, clip_x0=True)

    return Recipe(
        network,
        lambda model, batch, g: ddpm.simple_loss(model, schedule, batch, g),
        sample,
        f"DDIM, {steps} steps (eta = 0)",
        lr=2e-3,
    )


def _ncsn_recipe(sizes: dict, images: torch.Tensor, device: torch.device) -> Recipe:
    from dlai_diffusion import ncsn
    from dlai_diffusion._utils import draw_normal

    options = sizes["ncsn"]
    generator = torch.Generator().manual_seed(0)
    sigma_max = ncsn.sigma_max_from_data(images, max_points=2000, generator=generator)
    sigmas = ncsn.geometric_sigmas(sigma_max, options["sigma_min"], options["n_levels"])
    network = ncsn.ncsn_unet(sigmas, sizes["preset"], 1, 28, norm="cin")

    def sample(model, n, generator):
        x = float(sigmas[0]) * draw_normal((n, 1, 28, 28), generator, device)
        return ncsn.annealed_langevin(
            model,
            x,
            sigmas,
            options["n_steps_each"],
            NCSN_EPS,
            final_denoise=True,
            generator=generator,
        ).clamp(-1, 1)

    return Recipe(
        network,
        lambda model, batch, g: ncsn.ncsn_loss(model, batch, model.sigmas, g),
        sample,
        f"annealed Langevin, {options['n_levels']} levels x {options['n_steps_each']} steps",
        lr=2e-3,
    )


def _ebm_recipe(sizes: dict, images: torch.Tensor, device: torch.device) -> Recipe:
    from dlai_diffusion import ebm, nets

    options = sizes["ebm"]
    network = ebm.EBM(
        nets.EnergyCNN(1, options["channels"], spectral_norm=True),
        ebm.ReplayBuffer((1, 28, 28), options["capacity"], options["reinit_prob"], (-1, 1)),
    )
    step = ebm.ContrastiveDivergence(
        n_steps=options["n_steps"], step_size=10.0, noise_scale=0.005, grad_clip=0.03, alpha=1.0
    )
    return Recipe(
        network,
        step,
        lambda model, n, generator: model.buffer.recent(n).clamp(-1, 1),
        f"latest replay-buffer negatives ({options['n_steps']}-step chains)",
        lr=1e-3,
        betas=(0.0, 0.999),
        ema_decay=None,
    )


RECIPES = {"ddpm": _ddpm_recipe, "ncsn": _ncsn_recipe, "ebm": _ebm_recipe}


def _fid(samples: torch.Tensor, reference: torch.Tensor) -> float:
    from dlai_diffusion.metrics import classifier_fid

    samples = samples.detach().cpu()
    return classifier_fid(samples, reference) if torch.isfinite(samples).all() else float("nan")


def fid_vs_training(
    sizes: dict, workdir: Path, device: torch.device, images: torch.Tensor, reference
) -> tuple[list[dict], dict]:
    """Train each recipe in stretches up to each checkpoint and measure it after each one.
    Returns the rows and the trained models (EMA weights where there is an EMA)."""
    from dlai_diffusion import train
    from dlai_diffusion.metrics import classifier_confidence

    rows, trained = [], {}
    batches = train.random_batches(images, batch_size=sizes["batch_size"])
    for name, checkpoints in sizes["checkpoints"].items():
        torch.manual_seed(0)
        recipe = RECIPES[name](sizes, images, device)
        model = recipe.network.to(device)
        elapsed = 0.0
        for steps in checkpoints:
            row = {"model": name, "steps": steps, "sampler": recipe.sampler}
            optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas)
            try:
                result = train.train(
                    model,
                    recipe.loss,
                    batches,
                    steps,
                    optimizer=optimizer,
                    ema_decay=recipe.ema_decay,
                    checkpoint_dir=workdir / name,
                    generator=torch.Generator().manual_seed(0),
                    progress=False,
                )
            except Exception as error:
                rows.append({**row, "error": f"{type(error).__name__}: {error}"})
                break
            elapsed += result.seconds
            sampler_model = result.ema.ema_model if result.ema is not None else model
            sampler_model.eval()
            with Stopwatch() as watch, torch.no_grad():
                samples = recipe.sample(
                    sampler_model, sizes["n_fid"], torch.Generator(device).manual_seed(1)
                )
            row.update(
                train_s=elapsed,
                sample_s=watch.seconds,
                fid=_fid(samples, reference),
                confidence=classifier_confidence(samples.detach().cpu()),
            )
            rows.append(row)
            print(f"    {name} {steps} steps: FID {row['fid']:.1f} ({elapsed:.0f} s)", flush=True)
            trained[name] = sampler_model
    return rows, trained


def fid_vs_sampling_steps(
    sizes: dict, model: torch.nn.Module, device: torch.device, reference, floor_fid: float
) -> tuple[list, list, list]:
    """Rows of FID against steps (DDIM at each eta; ancestral DDPM at T), and the targets."""
    from dlai_diffusion import ddim, ddpm
    from dlai_diffusion._utils import draw_normal
    from dlai_diffusion.schedules import Schedule

    schedule = Schedule.linear(sizes["T"]).to(device)
    model.eval()
    n = sizes["n_fid"]
    rows = [{"sampler": "real digits (floor)", "steps": None, "fid": floor_fid}]

    def measure(label: str, steps: int, sample) -> dict:
        generator = torch.Generator(device).manual_seed(0)
        x = draw_normal((n, 1, 28, 28), generator, device)
        with Stopwatch() as watch, torch.no_grad():
            samples = sample(x, generator).clamp(-1, 1)
        row = {"sampler": label, "steps": steps, "fid": _fid(samples, reference)}
        row["sample_s"] = watch.seconds
        print(f"    {label} {steps}: FID {row['fid']:.1f}", flush=True)
        rows.append(row)
        return row

    ancestral = measure(
        f"ancestral DDPM (T = {schedule.T}, sigma^2 = beta)",
        schedule.T,
        lambda x, g: ddpm.sample_ddpm(model, x, schedule, "beta", True, g),
    )
    goal = f"FID(DDIM, 50 steps) ≤ {1 + DDIM_TOLERANCE:g} × FID(ancestral, {schedule.T} steps)"
    ddim50 = None
    for eta in sizes["etas"]:
        for steps in sizes["ddim_steps"]:
            if steps > schedule.T:
                continue
            label = "DDIM (eta = 0)" if eta == 0 else f"DDIM (eta = {eta:g}, ancestral-like)"
            row = measure(
                label,
                steps,
                lambda x, g, s=steps, e=eta: ddim.sample_ddim(
                    model, x, schedule, n_steps=s, eta=e, clip_x0=True, generator=g
                ),
            )
            if eta == 0 and steps == 50:
                ddim50 = row
    if ddim50 is None:
        return rows, [Target("MNIST DDIM 50 vs ancestral", goal, "50 steps not run", None)], []
    ratio = ddim50["fid"] / ancestral["fid"]
    value = f"{ddim50['fid']:.2f} vs {ancestral['fid']:.2f} (ratio {ratio:.3f}, n = {n})"
    return (
        rows,
        [Target("MNIST DDIM 50 vs ancestral", goal, value, ratio <= 1 + DDIM_TOLERANCE)],
        [],
    )


def run(quick: bool) -> SectionResult:
    from dlai_diffusion import data
    from dlai_diffusion.config import device as best_device

    device = best_device()
    sizes = _sizes(quick, device)
    sizes["device"] = str(device)
    result = SectionResult(
        name="mnist",
        title="MNIST: classifier-feature FID against training time and sampling steps",
        mode=mode_name(quick),
        sizes=sizes,
        columns=["model", "steps", "train_s", "sampler", "sample_s", "fid", "confidence"],
    )
    data_dir = None if quick else full_data_location()
    sizes["data"] = "shipped subset (5,000 train / 1,000 test)" if quick else "full MNIST"
    threads = 1  # one thread: times that a shared 2-core machine can reproduce
    sizes["cpu_threads"] = threads if device.type == "cpu" else None
    with (
        torch_threads(threads),
        tempfile.TemporaryDirectory() as tmp,
        environment_variable("DLAI_FAST", "1" if quick else "0"),
        environment_variable("DLAI_DATA", data_dir or os.environ.get("DLAI_DATA")),
    ):
        images = data.load_mnist("train").images
        test = data.load_mnist("test").images
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))
        n = sizes["n_fid"]
        reference, second = test[order[:n]], test[order[n : 2 * n]]
        floor_fid = _fid(second, reference)
        result.notes.append(
            f"floor: FID between two disjoint sets of {n} real test digits = {floor_fid:.1f}"
        )
        result.rows, trained = fid_vs_training(sizes, Path(tmp), device, images, reference)
        if any("error" in row for row in result.rows):
            result.columns.append("error")
        if "ddpm" in trained and not any("error" in r for r in result.rows if r["model"] == "ddpm"):
            steps_rows, targets, notes = fid_vs_sampling_steps(
                sizes, trained["ddpm"], device, reference, floor_fid
            )
            result.extra_tables["FID against sampling steps (the last DDPM checkpoint)"] = (
                steps_rows
            )
            result.targets.extend(targets)
            result.notes.extend(notes)
        else:
            result.targets.append(
                Target("MNIST DDIM 50 vs ancestral", "FID within 10%", "DDPM run failed", None)
            )
    if quick:
        result.notes.append(
            f"quick mode: T = {sizes['T']} (the target is defined for T = 1000), "
            f"{sizes['n_fid']} samples per FID, a few dozen training steps: the FIDs are those "
            "of barely trained models and only show that the pipeline works"
        )
    return result
