"""What every benchmark section shares: result records, targets, tables, the machine, JSON.

A section is a function ``run(quick: bool) -> SectionResult``. Its rows are plain dicts (one
per measurement); its targets say whether a goal of the course was met, with the measured
value. Results are saved as JSON (with the sizes used) and the report is written from them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Target:
    """A goal with its measured value: ``met`` is None when it could not be measured."""

    name: str
    goal: str
    value: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "not met", None: "not measured"}[self.met]


@dataclass
class SectionResult:
    """One section's measurements: rows (dicts), the sizes used, targets and notes."""

    name: str
    title: str
    mode: str
    sizes: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    columns: list[str] | None = None
    extra_tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: float = 0.0
    finished: str = ""
    run: dict[str, Any] = field(default_factory=dict)  # command, commit, load: see run.py

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> SectionResult:
        payload = dict(payload)
        payload["targets"] = [Target(**t) for t in payload.get("targets", [])]
        return cls(**payload)


# ----------------------------------------------------------------------------- helpers


def mode_name(quick: bool) -> str:
    return "quick" if quick else "full"


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@contextlib.contextmanager
def environment_variable(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, remove) an environment variable for the duration of the block."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def full_data_location() -> str | None:
    """Where full-mode data lives: ``$DLAI_DATA``, else the shared development copy next to
    the repository (``../shared/data``) when it holds MNIST, else None (the package's cache)."""
    if os.environ.get("DLAI_DATA"):
        return os.environ["DLAI_DATA"]
    shared = ROOT.parent / "shared" / "data"
    return str(shared) if (shared / "mnist").is_dir() else None


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads inside the block (small 2D networks are fastest on one)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Stopwatch:
    """``with Stopwatch() as w: ...`` then ``w.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


# ----------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """A compact cell: floats to 3-4 significant digits, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    """A GitHub markdown table of ``rows``; columns in first-seen order unless given."""
    if not rows:
        return "_no rows_\n"
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def commit() -> str:
    """The short commit of the working tree, marked when tracked files other than the saved
    results (which a run rewrites) have changed."""
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return _git("rev-parse", "--short", "HEAD") + (
        " (with uncommitted changes)" if dirty and dirty != "unknown" else ""
    )


def machine() -> dict[str, Any]:
    """Date, CPU, cores, RAM, GPU, Python/torch versions and the git commit of this run."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": now_utc(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": _memory_gib(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": commit(),
        "load_average": load_average(),
    }


# ----------------------------------------------------------------------------- JSON


def save(result: SectionResult, directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def load_all(directory: Path = RESULTS) -> list[SectionResult]:
    """Every saved section result of ``directory`` (machine.json excluded)."""
    results = []
    for path in sorted(directory.glob("*.json")):
        if path.name == "machine.json":
            continue
        results.append(SectionResult.from_json(json.loads(path.read_text())))
    return results
