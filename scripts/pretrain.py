"""Train a course model from its recipe, measure it, and ship its weights.

    DLAI_DATA=../shared/data python scripts/pretrain.py cfg-mnist
    python scripts/pretrain.py cfg-mnist --device cuda        # the recipe's GPU variant

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

from dlai_diffusion import recipes  # noqa: E402

PHASES = ("train", "evaluate", "export")


def default_work(name: str, device: str) -> Path:
    return Path.home() / ".cache" / "dlai_diffusion" / "pretrain" / f"{name}-{device}"


def train_phase(recipe: recipes.Recipe, work: Path, device: str, steps: int | None) -> None:
    log = work / "train_log.jsonl"
    start = time.time()

    def report(step: int, loss: float) -> None:
        now = time.time()
        if step % 50 == 0 or step == recipe.steps:
            line = {"step": step, "loss": loss, "seconds": round(now - start, 1)}
            with open(log, "a") as f:
                f.write(json.dumps(line) + "\n")

    _, result = recipes.run(
        recipe, work, device=device, steps=steps, subset=False, progress=True, callback=report
    )
    timing_path = work / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"sessions": []}
    timing["sessions"].append(
        {"seconds": round(result.seconds, 1), "until_step": result.steps,
         "threads": torch.get_num_threads(), "device": device}
    )
    timing_path.write_text(json.dumps(timing, indent=1))
    print(f"{recipe.name}: step {result.steps}/{recipe.steps}, this session "
          f"{result.seconds:.0f} s, last loss {result.losses[-1]:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(recipes.RECIPES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--work", type=Path, help="checkpoint folder (outside the repository)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--phase", choices=PHASES, action="append",
                        help="run only these phases (repeatable); default all")
    parser.add_argument("--steps", type=int, help="stop training at this step (resume later)")
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
        train_phase(recipe, work, device, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
