"""Execute lecture notebooks in place, as they are committed.

    DLAI_DATA=../shared/data python scripts/execute_notebooks.py notebooks/01_*.ipynb
    python scripts/execute_notebooks.py --fast notebooks/07_ddpm.ipynb

Each notebook runs top to bottom in a fresh kernel from its own folder, headless
(``DLAI_WIDGETS=0``: static figures instead of sliders, no progress bars), in full mode unless
``--fast``. On success its outputs are written back with the kernelspec that the installed
ipykernel writes (so that opening and saving it in JupyterLab changes nothing); on failure the
file is left untouched and the failing cell is reported. Prints each notebook's wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from dlai_diffusion import course


def execute(path: Path, fast: bool, timeout: float) -> float:
    """Run ``path`` and write it back; return the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    os.environ.update(DLAI_FAST="1" if fast else "0", DLAI_WIDGETS="0")
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    course.normalise_metadata(nb)
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--fast", action="store_true", help="fast mode (DLAI_FAST=1)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.paths:
        try:
            seconds = execute(path, args.fast, args.timeout)
        except CellExecutionError as error:
            failed += 1
            print(f"FAILED {path}: {str(error).strip().splitlines()[-1][:300]}", flush=True)
            continue
        mode = "fast" if args.fast else "full"
        print(f"{path}: {seconds:.0f} s ({mode} mode)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
