"""MNIST: classifier-feature FID against training time (DDPM, NCSN, EBM) and against the
number of sampling steps (ancestral DDPM and DDIM).

FID here is the Fréchet distance between LeNet features of the samples and of as many real
test digits (:func:`dlai_diffusion.metrics.classifier_fid`); it depends on the sample size, so
every value of a table uses the same size, and the "real digits" row gives the floor: the FID
of a second set of real digits. Training goes through ``runs.train_run``, which resumes from
its checkpoint, so one run is measured after each stretch of training. In quick mode the data
is the MNIST subset shipped with the package, elsewhere the full MNIST (``$DLAI_DATA``).
"""

from __future__ import annotations

import os
import tempfile
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
    unavailable,
)

QUICK = {
    "preset": "tiny",
    "T": 100,
    "batch_size": 32,
    "n_fid": 64,
    "checkpoints": {"ddpm": [20, 40], "ncsn": [20, 40], "ebm": [10, 20]},
    "options": {
        "ddpm": {},
        "ncsn": {"n_steps_each": 2},
        "ebm": {"n_steps": 5, "sample_steps": 10, "channels": 16},
    },
    "ddim_steps": [10, 50],
    "etas": [0.0, 1.0],
}
FULL_CPU = {
    "preset": "tiny",
    "T": 1000,
    "batch_size": 128,
    "n_fid": 500,
    "checkpoints": {
        "ddpm": [500, 1000, 2000, 4000],
        "ncsn": [500, 1000, 2000, 4000],
        "ebm": [250, 500, 1000],
    },
    "options": {"ddpm": {}, "ncsn": {}, "ebm": {}},
    "ddim_steps": [10, 20, 50, 100, 200, 1000],
    "etas": [0.0, 1.0],
}
FULL_GPU = {
    **FULL_CPU,
    "preset": "small",
    "n_fid": 2000,
    "checkpoints": {
        "ddpm": [1000, 2000, 5000, 10000],
        "ncsn": [1000, 2000, 5000, 10000],
        "ebm": [500, 1000, 2000, 4000],
    },
}
DDIM_TOLERANCE = 0.10


def _sizes(quick: bool, device: torch.device) -> dict:
    if quick:
        return dict(QUICK)
    return dict(FULL_GPU if device.type == "cuda" else FULL_CPU)


def _model_options(model: str, sizes: dict) -> dict:
    options = {"preset": sizes["preset"], **sizes["options"].get(model, {})}
    if model == "ddpm":
        options["T"] = sizes["T"]
    if model == "ebm":
        options.pop("preset")
    return options


def fid_vs_training(sizes: dict, workdir: Path, device: torch.device) -> list[dict]:
    from dlai_diffusion import runs

    rows = []
    for model, checkpoints in sizes["checkpoints"].items():
        elapsed = 0.0
        options = _model_options(model, sizes)
        for steps in checkpoints:
            row = {"model": model, "preset": options.get("preset", "EnergyCNN"), "steps": steps}
            try:
                with Stopwatch() as watch:
                    metrics = runs.train_run(
                        model,
                        workdir / model,
                        data="mnist",
                        steps=steps,
                        batch_size=sizes["batch_size"],
                        options=options,
                        seed=0,
                        device=str(device),
                        n_eval=sizes["n_fid"],
                    )
            except Exception as error:
                rows.append({**row, "error": f"{type(error).__name__}: {error}"})
                break
            elapsed += metrics["train_seconds"]
            row["train_s"] = elapsed
            row["sample_s"] = watch.seconds - metrics["train_seconds"]
            row["fid"] = metrics.get("classifier_fid", float("nan"))
            row["confidence"] = metrics.get("classifier_confidence", float("nan"))
            rows.append(row)
    return rows


def _reference(n: int, seed: int) -> torch.Tensor:
    from dlai_diffusion import data

    test = data.load_mnist("test").images
    return test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]]


def _load_ddpm(run: Path, device: torch.device):
    """The EMA weights of the trained DDPM run, and its schedule."""
    import json

    from dlai_diffusion import runs
    from dlai_diffusion.schedules import Schedule
    from dlai_diffusion.train import CHECKPOINT_NAME, load_checkpoint

    config = json.loads((run / "config.json").read_text())
    spec = runs.get_model("ddpm")
    source = runs.data_source("mnist", config["batch_size"])
    model = spec.build(source, config["options"]).to(device)
    load_checkpoint(run / CHECKPOINT_NAME, model, weights="ema", map_location=device)
    schedule = Schedule.named(config["options"]["schedule"], int(config["options"]["T"]))
    return model.eval(), schedule.to(device)


def fid_vs_sampling_steps(sizes: dict, run: Path, device: torch.device) -> tuple[list, list]:
    """Rows of FID against steps (DDIM at each eta; ancestral DDPM at T), and the targets."""
    from dlai_diffusion import ddpm
    from dlai_diffusion._utils import draw_normal
    from dlai_diffusion.metrics import classifier_fid

    model, schedule = _load_ddpm(run, device)
    n = sizes["n_fid"]
    reference = _reference(n, seed=1)
    second = _reference(2 * n, seed=2)[n:]
    rows = [
        {"sampler": "real digits (floor)", "steps": None, "fid": classifier_fid(second, reference)}
    ]

    def measure(label: str, steps: int, sample) -> dict:
        generator = torch.Generator().manual_seed(0)
        x = draw_normal((n, 1, 28, 28), generator, device)
        with Stopwatch() as watch, torch.no_grad():
            samples = sample(x, generator).clamp(-1, 1).cpu()
        fid = classifier_fid(samples, reference) if torch.isfinite(samples).all() else float("nan")
        row = {"sampler": label, "steps": steps, "fid": fid, "sample_s": watch.seconds}
        rows.append(row)
        return row

    ancestral = measure(
        f"ancestral DDPM (T = {schedule.T})",
        schedule.T,
        lambda x, g: ddpm.sample_ddpm(model, x, schedule, "beta", True, g),
    )
    why = unavailable("ddim")
    goal = f"FID(DDIM, 50 steps) ≤ {1 + DDIM_TOLERANCE:g} × FID(ancestral, {schedule.T} steps)"
    if why:
        return rows, [Target("MNIST DDIM 50 vs ancestral", goal, why, None)], [f"ddim: {why}"]
    from dlai_diffusion import ddim

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
    from dlai_diffusion.config import device as best_device

    device = best_device()
    sizes = _sizes(quick, device)
    sizes["device"] = str(device)
    result = SectionResult(
        name="mnist",
        title="MNIST: classifier-feature FID against training time and sampling steps",
        mode=mode_name(quick),
        sizes=sizes,
        columns=["model", "preset", "steps", "train_s", "sample_s", "fid", "confidence"],
    )
    data_dir = None if quick else full_data_location()
    sizes["data"] = "shipped subset (5,000 train / 1,000 test)" if quick else "full MNIST"
    threads = 1 if device.type == "cpu" and quick else torch.get_num_threads()
    sizes["cpu_threads"] = threads if device.type == "cpu" else None
    with (
        torch_threads(threads),
        tempfile.TemporaryDirectory() as tmp,
        environment_variable("DLAI_FAST", "1" if quick else "0"),
        environment_variable("DLAI_DATA", data_dir or os.environ.get("DLAI_DATA")),
    ):
        workdir = Path(tmp)
        result.rows = fid_vs_training(sizes, workdir, device)
        if any("error" in row for row in result.rows):
            result.columns.append("error")
        run_dir = workdir / "ddpm"
        if (run_dir / "config.json").is_file() and not any(
            "error" in r for r in result.rows if r["model"] == "ddpm"
        ):
            steps_rows, targets, notes = fid_vs_sampling_steps(sizes, run_dir, device)
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
