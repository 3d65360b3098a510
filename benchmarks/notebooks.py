"""Wall time of every lecture and solution notebook (fast and full mode), and of ``pytest``.

Each notebook is executed top to bottom in a fresh kernel with ``nbclient``, from its own
folder, with ``DLAI_FAST=1`` (fast mode, what CI runs) or ``DLAI_FAST=0`` (full mode, the
students' default). The notebooks are not modified on disk. ``pytest`` is timed as a whole,
exactly as the README's test command runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .common import (
    ROOT,
    SectionResult,
    Target,
    environment_variable,
    full_data_location,
    load_average,
    mode_name,
)

# folder -> modes. Full mode runs every lecture in both modes and the solutions in fast mode
# (a solution runs the same code as its lecture's exercises; their full mode adds nothing new).
QUICK = {"runs": {"notebooks": ["fast"]}, "timeout_s": 900}
FULL = {"runs": {"notebooks": ["fast", "full"], "solutions": ["fast"]}, "timeout_s": 7200}
PYTEST_LIMIT_S = 15 * 60


def execute(path: Path, fast: bool, timeout: float) -> dict:
    """Run one notebook; its wall time, the cell that failed (if any) and the error."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    error = None
    with (
        environment_variable("DLAI_FAST", "1" if fast else "0"),
        environment_variable("MPLBACKEND", "Agg"),
        environment_variable("DLAI_WIDGETS", "0"),  # see dlai_diffusion.config.widgets_enabled
        environment_variable("DLAI_DATA", full_data_location()),
    ):
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        start = time.perf_counter()
        try:
            client.execute()
        except CellExecutionError as failure:
            error = str(failure).strip().splitlines()[-1][:200]
        except Exception as failure:  # a timeout or a dead kernel
            error = f"{type(failure).__name__}: {str(failure)[:200]}"
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "ok": error is None, "error": error}


def notebooks(quick: bool) -> SectionResult:
    sizes = dict(QUICK if quick else FULL)
    result = SectionResult(
        name="notebooks",
        title="Notebook wall times",
        mode=mode_name(quick),
        sizes=sizes,
        columns=["notebook", "mode", "seconds", "ok", "error", "load_after"],
    )
    for folder, modes in sizes["runs"].items():
        for path in sorted((ROOT / folder).glob("[0-9][0-9]_*.ipynb")):
            for mode in modes:
                row = {"notebook": f"{folder}/{path.name}", "mode": mode}
                row.update(execute(path, mode == "fast", sizes["timeout_s"]))
                row["load_after"] = (load_average() or [None])[0]
                status = "ok" if row["ok"] else f"FAILED: {row['error']}"
                print(
                    f"    {row['notebook']} ({mode}): {row['seconds']:.0f} s, {status}", flush=True
                )
                result.rows.append(row)
    failed = [r["notebook"] + f" ({r['mode']})" for r in result.rows if not r["ok"]]
    fast_rows = [r for r in result.rows if r["mode"] == "fast"]
    slowest = max(fast_rows, key=lambda r: r["seconds"], default=None)
    if slowest is not None:
        result.targets.append(
            Target(
                "every notebook runs (fast mode), each within about 60 s",
                "no error; slowest ≤ 60 s",
                f"{len(failed)} failed; slowest {slowest['seconds']:.0f} s ({slowest['notebook']})",
                not failed and slowest["seconds"] <= 60,
            )
        )
    location = full_data_location()
    result.notes.append(
        f"data folder (DLAI_DATA) for full mode: {location or 'the package default cache'}"
    )
    return result


_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|warnings?)")


def pytest_run(quick: bool) -> SectionResult:
    result = SectionResult(
        name="pytest",
        title="The whole pytest run",
        mode=mode_name(quick),
        sizes={"command": "python -m pytest -q", "cwd": str(ROOT)},
        columns=["command", "seconds", "passed", "failed", "skipped", "errors", "exit_code"],
    )
    env = {k: v for k, v in os.environ.items() if k != "DLAI_FAST"}  # conftest sets it
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    counts = {kind.rstrip("s"): int(n) for n, kind in _SUMMARY.findall(summary)}
    row = {
        "command": "pytest",
        "seconds": seconds,
        "passed": counts.get("passed", 0),
        "failed": counts.get("failed", 0),
        "skipped": counts.get("skipped", 0),
        "errors": counts.get("error", 0),
        "exit_code": out.returncode,
    }
    result.rows.append(row)
    result.notes.append(f"pytest summary: {summary}")
    cores = len(os.sched_getaffinity(0))
    result.targets.append(
        Target(
            "full pytest run",
            f"≤ {PYTEST_LIMIT_S // 60} min on 2 CPU cores (this machine: {cores})",
            f"{seconds / 60:.1f} min, exit code {out.returncode}",
            seconds <= PYTEST_LIMIT_S and out.returncode == 0,
        )
    )
    return result
