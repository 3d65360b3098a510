"""2D sample quality of every model of the course, as multiples of the two-sample floor.

Each model is trained on each toy dataset from scratch, sampled, and measured with sliced
Wasserstein and energy distance against fresh samples of the data, averaged over blocks
(:func:`_ratios`): a ratio of 1 means the samples are as close to the data as a second sample
of the data itself. The command line's models (``runs.models()``, recipes of
``dlai_diffusion.recipes``: EBM, NCSN, DPM, DDPM, DSM and flow matching) go through
``runs.train_run`` with the command line's defaults, except for the ``options`` given in the
sizes; the continuous-time VP SDE (its reverse SDE and its probability-flow ODE) is trained
here with ``sde.dsm_loss`` on an eps-parameterised MLP.

The EBM's 2D chain is the command line's (``runs._EBM_AUTO["2d"]``): its Langevin step obeys
the resolution rule of :mod:`dlai_diffusion.ebm`, sqrt(2 step_size) below the toys' thinnest
feature (noise 0.05 on moons and the swiss roll), with a margin below the stability limit
step_size * lambda_max(Hessian of E) < 2. Its samples are the benchmark's usual: persistent
chains of the replay buffer, continued for the recipe's ``sample_steps``.
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import torch

from .common import (
    SectionResult,
    Stopwatch,
    Target,
    environment_variable,
    mode_name,
    torch_threads,
)

QUICK = {
    "datasets": ["moons", "8gaussians", "swiss_roll"],
    "steps": 300,
    "ebm_steps": 200,
    "n_eval": 400,
    "n_blocks": 2,
    "floor_repeats": 10,
    "sde_steps": 200,
    "options": {},
}
FULL = {
    "datasets": ["moons", "8gaussians", "swiss_roll"],
    "steps": 5000,
    "ebm_steps": 2000,
    "n_eval": 2000,
    "n_blocks": 5,
    "floor_repeats": 50,
    "sde_steps": 1000,
    # annealed Langevin with a smaller step than the command line's (eps 5e-5, 100 steps per
    # level): on moons, eps 5e-5 gives 3.4 x the energy-distance floor, 2e-5 (200 steps)
    # 1.9 x, 1e-5 (200 steps) 1.3 x; the step at level i is eps sigma_i^2 / sigma_L^2
    "options": {"ncsn": {"eps": 1e-5, "n_steps_each": 200}},
}
"""``n_eval`` points per block, ``n_blocks`` blocks per model and ``floor_repeats`` pairs of
true samples for the floor (see :func:`_ratios`);
``options`` per registry model, passed to ``runs.train_run`` (empty: the command-line defaults)."""

REGISTRY_MODELS = ("ebm", "ncsn", "dpm", "ddpm", "flow", "dsm")
"""Registry names, in course order of the report; ``dsm`` (one noise level) is informative."""

GOALS = {"ddpm": 1.5}
"""The largest allowed ratio to the floor per model (2 unless listed)."""
INFORMATIVE = ("dsm",)
"""Models measured but not held to the target (single-level DSM is a stepping stone)."""

METRICS = ("sliced_wasserstein", "energy_distance")


def _ratios(
    samples: torch.Tensor, dataset: str, n: int, floor_repeats: int = 50, seed: int = 1
) -> dict[str, float]:
    """Sliced Wasserstein and energy distance of ``samples`` as multiples of their floor.

    ``samples`` holds R blocks of ``n`` points; each block is compared with its own fresh
    sample of the data, and the mean over blocks is divided by the mean of ``floor_repeats``
    two-sample floors of size ``n``. Averaging matters: between two true samples of 2000
    points the energy distance scatters with a coefficient of variation of 0.5-0.65 and the
    sliced Wasserstein distance of 0.2-0.3 (moons, 8 Gaussians), so one block against one
    reference cannot tell 1 x from 1.5 x the floor."""
    from dlai_diffusion import metrics, toy

    if not torch.isfinite(samples).all():
        return {"sw_ratio": float("nan"), "ed_ratio": float("nan")}
    blocks = samples.cpu().split(n)
    if len(blocks) < 2 or blocks[-1].shape[0] != n:
        raise ValueError(f"samples must hold R >= 2 blocks of {n} points, got {len(samples)}")
    generator = torch.Generator().manual_seed(seed)
    sampler = functools.partial(toy.sample, dataset)
    out = {}
    for metric, key in zip(METRICS, ("sw_ratio", "ed_ratio"), strict=True):
        distance = metrics.METRICS[metric]
        values = [float(distance(block, sampler(n, generator))) for block in blocks]
        floor = metrics.two_sample_floor(sampler, metric, n, floor_repeats, generator)
        out[key] = sum(values) / len(values) / floor.mean
    return out


def _registry_row(model: str, dataset: str, sizes: dict, workdir: Path) -> dict:
    from dlai_diffusion import runs

    steps = sizes["ebm_steps"] if model == "ebm" else sizes["steps"]
    run = workdir / f"{model}-{dataset}"
    options = sizes["options"].get(model, {})
    metrics = runs.train_run(
        model, run, data=dataset, steps=steps, options=options, seed=0, device="cpu", n_eval=64
    )
    n = sizes["n_eval"]
    with Stopwatch() as watch:
        samples = runs.sample_run(run, n=n * sizes["n_blocks"], seed=1, device="cpu")
    return {
        "steps": steps,
        "train_s": metrics["train_seconds"],
        "sample_s": watch.seconds,
        **_ratios(samples, dataset, n, sizes["floor_repeats"]),
    }


# ----------------------------------------------------------------------------- the VP SDE


def _vp_score(net: torch.nn.Module, sde):
    """score(x, t) = -eps_theta(x, t) / std(t): an eps-parameterised continuous score."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        _, std = sde.marginal(t)
        std = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1, 1)
        return -net(x, t) / std

    return score


def train_vp_sde(dataset: str, steps: int, seed: int = 0, batch_size: int = 256):
    """An eps-parameterised MLP trained by continuous-time DSM (``sde.dsm_loss``) on a VP SDE.

    Returns ``(score_fn, sde, seconds)``."""
    from dlai_diffusion import sde as sde_lib
    from dlai_diffusion import toy
    from dlai_diffusion.nets import ScoreMLP
    from dlai_diffusion.train import train

    torch.manual_seed(seed)
    vp = sde_lib.VPSDE()
    net = ScoreMLP(2, 128, 3, time_scale=1000.0)

    def loss(model, batch, generator):
        score = _vp_score(model, vp)
        return sde_lib.dsm_loss(score, vp, batch, generator=generator, weighting="sigma2")

    result = train(
        net,
        loss,
        lambda generator: toy.sample(dataset, batch_size, generator),
        steps,
        lr=2e-3,
        ema_decay=0.999,
        generator=torch.Generator().manual_seed(seed),
        progress=False,
    )
    if result.ema is not None:
        result.ema.copy_to(net)
    net.eval()
    return _vp_score(net, vp), vp, result.seconds


def _sde_rows(dataset: str, sizes: dict) -> list[dict]:
    from dlai_diffusion import sde as sde_lib

    score, vp, seconds = train_vp_sde(dataset, sizes["steps"])
    n = sizes["n_eval"]
    rows = []
    samplers = {
        "reverse SDE (Euler-Maruyama)": lambda x, g: sde_lib.sample_reverse_sde(
            score, vp, x, n_steps=sizes["sde_steps"], generator=g
        ),
        "probability-flow ODE (RK45)": lambda x, g: sde_lib.sample_probability_flow(score, vp, x),
    }
    for name, sampler in samplers.items():
        generator = torch.Generator().manual_seed(0)
        with Stopwatch() as watch, torch.no_grad():
            x = vp.prior_sample((n * sizes["n_blocks"], 2), generator=generator)
            samples = sampler(x, generator)
        rows.append(
            {
                "model": "vp_sde",
                "sampler": name,
                "data": dataset,
                "steps": sizes["steps"],
                "train_s": seconds,
                "sample_s": watch.seconds,
                **_ratios(samples, dataset, n, sizes["floor_repeats"]),
            }
        )
    return rows


def _samplers_of(model: str) -> str:
    return {
        "ebm": "Langevin (replay buffer)",
        "ncsn": "annealed Langevin",
        "dpm": "ancestral (learned variance)",
        "ddpm": "ancestral",
        "flow": "ODE (Heun, 50 steps)",
        "dsm": "Langevin (one sigma)",
    }.get(model, "registry default")


def _ebm_note() -> str:
    """The EBM's 2D chain, read from the command line's defaults."""
    from dlai_diffusion import runs

    auto = runs._EBM_AUTO["2d"]
    return (
        f"ebm: {auto['n_steps']} Langevin steps of {auto['step_size']:g} per training step "
        f"(resolution sqrt(2 step) = {math.sqrt(2 * auto['step_size']):.3f}, below the toys' "
        f"noise 0.05), {auto['reinit_prob']:.0%} fresh starts; samples: persistent chains"
    )


def run(quick: bool) -> SectionResult:
    sizes = dict(QUICK if quick else FULL)
    result = SectionResult(
        name="toy2d",
        title="2D sample quality (ratio to the two-sample floor)",
        mode=mode_name(quick),
        sizes=sizes,
        columns=["model", "sampler", "data", "steps", "train_s", "sample_s"]
        + ["sw_ratio", "ed_ratio"],
    )
    with tempfile.TemporaryDirectory() as tmp, torch_threads(1):
        with environment_variable("DLAI_FAST", "1"):  # only silences progress bars: sizes given
            for dataset in sizes["datasets"]:
                for model in REGISTRY_MODELS:
                    row = {"model": model, "sampler": _samplers_of(model), "data": dataset}
                    try:
                        row.update(_registry_row(model, dataset, sizes, Path(tmp)))
                    except Exception as error:  # report, do not stop the other models
                        row["error"] = f"{type(error).__name__}: {error}"
                    result.rows.append(row)
                try:
                    result.rows.extend(_sde_rows(dataset, sizes))
                except Exception as error:
                    result.rows.append({"model": "vp_sde", "data": dataset, "error": f"{error!r}"})
    if any("error" in row for row in result.rows):
        result.columns.append("error")
    result.notes.append(
        "dsm (one noise level, lecture 03) is shown for comparison and not held to the target; "
        "ed = energy distance, sw = sliced Wasserstein"
    )
    result.notes.append(_ebm_note())
    for model, options in sizes["options"].items():
        given = ", ".join(
            f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in options.items()
        )
        result.notes.append(f"{model}: the command line's defaults except {given}")
    if quick:
        result.notes.append(
            "quick mode: a few hundred training steps and 2 x 400 samples, far from the sizes the "
            "targets are meant for (run without --quick)"
        )
    result.targets = targets(result.rows)
    return result


def targets(rows: list[dict]) -> list[Target]:
    """One target per model (and sampler): its worst ratio over datasets and both metrics."""
    out = []
    keys = []
    for row in rows:
        key = (row["model"], row.get("sampler", ""))
        if key not in keys:
            keys.append(key)
    for model, sampler in keys:
        if model in INFORMATIVE:
            continue
        goal = GOALS.get(model, 2.0)
        mine = [r for r in rows if (r["model"], r.get("sampler", "")) == (model, sampler)]
        worst, where = -1.0, ""
        failed = [r for r in mine if "error" in r]
        for r in mine:
            for key in ("sw_ratio", "ed_ratio"):
                value = r.get(key)
                if value is None:
                    continue
                value = float(value)
                if value != value:  # nan: non-finite samples
                    value = float("inf")
                if value > worst:
                    worst, where = value, f"{r['data']}, {key.split('_')[0]}"
        label = f"2D {model}" + (f" ({sampler})" if model in ("vp_sde",) else "")
        if failed or worst < 0:
            out.append(Target(label, f"≤ {goal:g} × floor", "error while measuring", None))
            continue
        out.append(
            Target(
                label,
                f"≤ {goal:g} × floor on every dataset and metric",
                f"worst {worst:.2f} ({where})",
                worst <= goal,
            )
        )
    return out
