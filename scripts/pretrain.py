"""Train a course model from its recipe, measure it, and ship its weights.

    DLAI_DATA=../shared/data python scripts/pretrain.py ddpm-mnist
    python scripts/pretrain.py ddpm-mnist --device cuda       # the recipe's GPU variant

The noisy classifier is measured guiding the shipped ``ddpm-mnist``, and ``flow-mnist`` against
it, so train that first.

``NAME`` is an entry of ``dlai_diffusion.recipes.RECIPES``. The run trains on the full MNIST
training set (``$DLAI_DATA/mnist/``), with checkpoints in ``--work`` (default
``~/.cache/dlai_diffusion/pretrain/NAME-DEVICE``, outside the repository) that resume exactly:
run the same command again after an interruption and it goes on where it stopped. Running it
from scratch (an empty ``--work``) with the same recipe on the same device and thread count
reproduces the loss curve.

Phases: ``train`` (until the recipe's steps are done), ``evaluate`` (the quality figures of the
model's record, measured on the half-precision weights that ship) and ``export`` (the
safetensors file and the manifest entry in ``dlai_diffusion/pretrained/``). Without
``--phase`` all three run in order; a finished phase is not repeated.

Threads: ``--threads`` (default: every core) with ``OMP_WAIT_POLICY=PASSIVE``, which keeps
OpenMP's idle threads from spinning on a shared machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from dlai_diffusion import evaluation, pretrained, recipes  # noqa: E402
from dlai_diffusion.schedules import Schedule  # noqa: E402
from dlai_diffusion.train import CHECKPOINT_NAME, load_checkpoint  # noqa: E402

PHASES = ("train", "evaluate", "export")
GUIDED_MODEL = "ddpm-mnist"
"""The shipped DDPM model that the noisy classifier guides, and that flow-mnist is compared
with at equal network evaluations: train it first."""


def default_work(name: str, device: str) -> Path:
    return Path.home() / ".cache" / "dlai_diffusion" / "pretrain" / f"{name}-{device}"


def train_phase(recipe: recipes.Recipe, work: Path, device: str, steps: int | None,
                subset: bool) -> None:
    """Train (resuming), logging the loss every 50 steps to ``train_log.jsonl`` and this
    session's wall time at every checkpoint to ``timing.json``, so that an interrupted session
    counts exactly the time of the steps its last checkpoint kept."""
    log, timing_path = work / "train_log.jsonl", work / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"sessions": []}
    session = {"seconds": 0.0, "until_step": None, "threads": torch.get_num_threads(),
               "device": device}
    timing["sessions"].append(session)
    start = time.time()

    def report(step: int, loss: float) -> None:
        seconds = round(time.time() - start, 1)
        if step % 50 == 0 or step == recipe.steps:
            with open(log, "a") as f:
                f.write(json.dumps({"step": step, "loss": loss, "seconds": seconds}) + "\n")
        if step % recipe.checkpoint_every == 0 or step == recipe.steps:
            session.update(seconds=seconds, until_step=step)
            timing_path.write_text(json.dumps(timing, indent=1))

    _, result = recipes.run(
        recipe, work, device=device, steps=steps, subset=subset, progress=True, callback=report
    )
    session.update(seconds=round(result.seconds, 1), until_step=result.steps)
    timing_path.write_text(json.dumps(timing, indent=1))
    print(f"{recipe.name}: step {result.steps}/{recipe.steps}, this session "
          f"{result.seconds:.0f} s, last loss {result.losses[-1]:.4f}")


def trained_network(recipe: recipes.Recipe, work: Path, device: str):
    """The EMA weights of the finished run, rounded to half precision as they ship."""
    net = recipes.build_model(recipe)
    state = load_checkpoint(work / CHECKPOINT_NAME, net, weights="ema")
    if state["step"] < recipe.steps:
        raise SystemExit(f"{recipe.name}: training stopped at step {state['step']} of "
                         f"{recipe.steps}; run the train phase first")
    return pretrained.half_precision_copy(net).eval().requires_grad_(False).to(device), state


def _schedule(recipe: recipes.Recipe, device: str) -> Schedule:
    return Schedule.named(recipe.process["schedule"], recipe.process["T"]).to(device)


def evaluate_phase(recipe, work: Path, device: str, n: int, bf16: bool, subset: bool,
                   ode_tol: float) -> None:
    net, _ = trained_network(recipe, work, device)
    common = dict(device=device, bf16=bf16, seed=recipe.seed, subset=subset)
    start = time.time()
    if recipe.kind == "flow-matching":
        ddpm_model = pretrained.load(GUIDED_MODEL, device)
        quality = evaluation.measure_flow_model(
            net, n, ddpm_model=ddpm_model, schedule=_schedule(recipes.get(GUIDED_MODEL), device),
            **common)
    elif recipe.kind == "unconditional":
        quality = evaluation.measure_ddpm_model(net, _schedule(recipe, device), n,
                                                ode_tol=ode_tol, **common)
    elif recipe.kind == "cfg":
        quality = evaluation.measure_cfg_model(net, _schedule(recipe, device), n, **common)
    else:
        model = pretrained.load(GUIDED_MODEL, device)
        quality = evaluation.measure_noisy_classifier(net, model, _schedule(recipe, device), n,
                                                      **common)
    for figures in quality.values():
        figures["evaluation_seconds"] = round(time.time() - start, 1)
    (work / "quality.json").write_text(json.dumps(recipes.json_ready(quality), indent=1))


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export_phase(recipe, work: Path, device: str) -> None:
    net, state = trained_network(recipe, work, "cpu")
    quality = json.loads((work / "quality.json").read_text())
    timing = json.loads((work / "timing.json").read_text())
    file = f"{recipe.name}.safetensors"
    digest = pretrained.save_weights(net, pretrained.folder() / file)
    record = {
        "file": file,
        "sha256": digest,
        "recipe": recipe.as_dict(),
        "steps": state["step"],
        "images_seen": state["step"] * recipe.batch_size,
        "train_seconds": round(sum(s["seconds"] for s in timing["sessions"]), 1),
        "train_sessions": timing["sessions"],
        "device": device,
        "torch": torch.__version__,
        "commit": _commit(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "final_loss": sum(state["losses"][-100:]) / len(state["losses"][-100:]),
        "quality": quality[recipe.name],
    }
    pretrained.write_record(recipe.name, record)
    print(f"wrote {pretrained.folder() / file} and its manifest entry")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(recipes.RECIPES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--work", type=Path, help="checkpoint folder (outside the repository)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--phase", choices=PHASES, action="append",
                        help="run only these phases (repeatable); default all")
    parser.add_argument("--steps", type=int, help="stop training at this step (resume later)")
    parser.add_argument("--n", type=int, default=1000, help="samples per quality figure")
    parser.add_argument("--fp32", action="store_true", help="sample in float32, not bf16")
    parser.add_argument("--ode-tol", type=float, default=1e-5,
                        help="tolerance of the likelihood ODE solver (default 1e-5)")
    parser.add_argument("--subset", action="store_true",
                        help="the shipped MNIST subset instead of the full data (smoke tests)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be a positive int, got {args.threads}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device).type
    recipe = recipes.get(args.name).on(device)
    work = args.work or default_work(recipe.name, device)
    work.mkdir(parents=True, exist_ok=True)
    phases = args.phase or list(PHASES)
    if "train" in phases:
        train_phase(recipe, work, device, args.steps, args.subset)
    if "evaluate" in phases:
        evaluate_phase(recipe, work, device, args.n, not args.fp32, args.subset, args.ode_tol)
    if "export" in phases:
        export_phase(recipe, work, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
