"""Write ``benchmarks/REPORT.md`` from the saved JSON results (never from memory), so that the
report holds exactly what ``benchmarks/results/`` holds."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import RESULTS, SectionResult, fmt, load_all, markdown_table

SECTION_ORDER = ["toy2d", "likelihood", "mnist", "throughput", "notebooks", "pytest"]

_INTRO = """\
Every number below comes from `python benchmarks/run.py{flags}` on the machine described
here (the Sections table gives each section's exact command, commit and load average); the raw
results, with the sizes used, are in `benchmarks/results/*.json`, from which this report is
generated. Sample quality on 2D data is given as a multiple of the *two-sample
floor*: the same metric between two independent samples of the true data of the same size
(1 = as good as the sample size can tell). FID on MNIST uses LeNet features
(`metrics.classifier_fid`), with the FID between two sets of real digits as its floor.
"""


def _order(result: SectionResult) -> int:
    return SECTION_ORDER.index(result.name) if result.name in SECTION_ORDER else 99


def render(results: Sequence[SectionResult], machine: Mapping[str, Any]) -> str:
    results = sorted(results, key=_order)
    modes = sorted({r.mode for r in results})
    flags = " --quick" if modes == ["quick"] else ""
    lines = ["# Benchmarks", "", _INTRO.format(flags=flags)]
    if "quick" in modes:
        lines += [
            "**Quick mode** (`--quick`): tiny sizes that show that everything runs and give",
            "orders of magnitude; the quality targets are meant for the full run.",
            "",
        ]
    lines += ["## Machine and run", ""]
    info = {
        "date": machine.get("date"),
        "mode": ", ".join(modes) if modes else "—",
        "CPU": f"{machine.get('cpu')} ({machine.get('cores')} cores, "
        f"{machine.get('usable_cores')} usable)",
        "RAM": f"{machine['ram_gib']:.1f} GiB" if machine.get("ram_gib") else "—",
        "GPU": machine.get("gpu") or "none",
        "platform": machine.get("platform"),
        "Python": machine.get("python"),
        "torch": machine.get("torch"),
        "git commit": machine.get("commit"),
        "load average when the last command started (1, 5, 15 min)": ", ".join(
            f"{x:.1f}" for x in machine.get("load_average") or []
        ),
        "last command": f"`{machine.get('command', 'python benchmarks/run.py')}`",
    }
    lines += [markdown_table([{"": k, "value": v} for k, v in info.items()], ["", "value"])]
    lines += ["## Targets", ""]
    targets = [
        {"target": t.name, "goal": t.goal, "measured": t.value, "result": t.verdict, "mode": r.mode}
        for r in results
        for t in r.targets
    ]
    if not any(r.name == "pytest" for r in results):
        targets.append(
            {
                "target": "full pytest run",
                "goal": "≤ 15 min on 2 CPU cores",
                "measured": "not run (quick mode leaves it out; use --pytest or full mode)",
                "result": "not measured",
                "mode": ", ".join(modes),
            }
        )
    lines += [markdown_table(targets, ["target", "goal", "measured", "result", "mode"])]
    lines += ["## Sections", ""]
    lines += [
        markdown_table(
            [
                {
                    "section": r.title,
                    "mode": r.mode,
                    "wall time (s)": r.seconds,
                    "finished": r.finished,
                    "commit": r.run.get("commit", "—"),
                    "load before / after": _loads(r.run),
                    "command": f"`{r.run['command']}`" if r.run.get("command") else "—",
                }
                for r in results
            ]
        )
    ]
    for r in results:
        lines += _section(r)
    return "\n".join(lines).rstrip() + "\n"


def _loads(run: Mapping[str, Any]) -> str:
    before, after = run.get("load_before"), run.get("load_after")
    if not before or not after:
        return "—"
    return f"{before[0]:.1f} / {after[0]:.1f}"


def _section(result: SectionResult) -> list[str]:
    lines = [f"## {result.title}", ""]
    sizes = json.dumps(result.sizes, sort_keys=True, default=str)
    lines += [f"Mode: {result.mode}; wall time {fmt(result.seconds)} s. Sizes: `{sizes}`", ""]
    lines += [markdown_table(result.rows, result.columns)]
    for title, rows in result.extra_tables.items():
        lines += [f"### {title}", "", markdown_table(rows)]
    if result.notes:
        lines += ["Notes:", ""] + [f"- {note}" for note in result.notes] + [""]
    return lines


def write(path: Path, directory: Path = RESULTS) -> str:
    machine_file = directory / "machine.json"
    machine = json.loads(machine_file.read_text()) if machine_file.is_file() else {}
    text = render(load_all(directory), machine)
    path.write_text(text)
    return text
