"""Instructor grader: ``dlai-diffusion grade SUBMISSION... --out grades.csv``.

Each submission is graded against ``solutions/``, the single source of the exercises:

1. the lecture is read from the notebook's metadata (``metadata.dlai_diffusion.lecture``),
   else from the file name (``NN_topic`` or its number ``NN``), else from its grade_ids;
2. every graded test cell (nbgrader ``grade: true``, ``solution: false``) is replaced by its
   source in ``solutions/``, hidden tests included; a test cell the student deleted or
   renamed is put back after the cell that precedes it in the solution;
3. the notebook runs in a separate process with its own kernel, under a per-cell and a
   total time limit, a memory limit and a cap on each cell's output; a kernel that dies or
   hangs is restarted, the cells that had succeeded are run again, and grading goes on;
4. a test cell that runs without error earns its points, otherwise 0; written answers
   (markdown ``solution: true, grade: true``) are listed for manual grading (0 when left
   unanswered, as nbgrader does).

The gradebook has one row per student and exercise (CSV) and the details in JSON next to it;
each submission also gets a short feedback file for the student. A broken submission (not
JSON, cells missing, syntax errors, endless loops, a dead kernel, floods of output) never
stops the run: it is graded as far as possible and the problem is reported.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __name__ != "__main__":  # the worker (this file run as a script) needs none of these
    from .exercises import (
        BEGIN_HIDDEN,
        END_HIDDEN,
        TEXT_STUB,
        is_graded_cell,
        is_solution_cell,
        is_test_cell,
        nbgrader_meta,
    )


@dataclass
class Limits:
    """Resource limits of one submission's run (seconds, bytes, characters)."""

    cell_timeout: float = 120.0
    total_timeout: float = 900.0
    memory: int = 4 * 2**30
    max_output: int = 1_000_000
    fast: bool = True
    gpu: bool = False  # False: the kernel sees no GPU (CUDA and RLIMIT_AS do not mix)


@dataclass
class Row:
    """One line of the gradebook: one student, one exercise."""

    student: str
    lecture: str
    exercise: str
    kind: str  # "auto" (test cell) or "manual" (written answer)
    points: float | None  # None: waits for manual grading
    max_points: float
    status: str  # passed, failed, error, timeout, kernel died, not run, manual, unanswered, ...
    message: str
    submission: str


@dataclass
class Result:
    """The grading of one submission."""

    student: str
    lecture: str
    submission: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # errors in the student's own cells
    seconds: float = 0.0
    details: dict = field(default_factory=dict)  # grade_id -> traceback (instructor only)

    @property
    def auto_points(self) -> float:
        return sum(r.points or 0 for r in self.rows if r.kind == "auto")

    @property
    def auto_max(self) -> float:
        return sum(r.max_points for r in self.rows if r.kind == "auto")

    @property
    def manual_max(self) -> float:
        return sum(r.max_points for r in self.rows if r.kind == "manual")


# ----------------------------------------------------------------------------------------
# Which lecture, which student


def parse_size(text: str) -> int:
    """Bytes in ``"4G"``, ``"512M"``, ``"100k"`` or a plain number; ``0`` means no limit."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", str(text))
    if not match:
        raise ValueError(f"memory limit must look like 4G, 512M or 0; got {text!r}")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def load_solutions(root: str | Path) -> dict[str, object]:
    """The solution notebooks under ``root/solutions``, by stem (``NN_topic``)."""
    import nbformat

    folder = Path(root) / "solutions"
    paths = sorted(folder.glob("*.ipynb"))
    if not paths:
        raise ValueError(f"root must contain solutions/*.ipynb; none in {folder.resolve()}")
    return {p.stem: nbformat.read(p, as_version=4) for p in paths}


def _grade_ids(nb) -> set[str]:
    return {nbgrader_meta(c).get("grade_id") for c in nb.cells} - {None}


def _lecture_in_name(name: str, lectures) -> tuple[str | None, int]:
    """The lecture a file name points at and where its token starts (-1 when none)."""
    for stem in sorted(lectures, key=len, reverse=True):
        at = name.find(stem)
        if at >= 0:
            return stem, at
    numbers = {stem[:2]: stem for stem in lectures if stem[:2].isdigit()}
    pattern = r"(?<!\d)(\d\d)(?!\d)"
    found = [(m.start(), numbers[m[1]]) for m in re.finditer(pattern, name) if m[1] in numbers]
    if len({stem for _, stem in found}) == 1:
        return found[0][1], found[0][0]
    return None, -1


def identify(path: Path, base: Path | None, nb, solutions) -> tuple[str | None, str, list[str]]:
    """Return (lecture, student, notes) for the submission at ``path``.

    Lecture: ``metadata.dlai_diffusion.lecture`` of the notebook, else the lecture named in
    the file name (``01_energy_and_partition_function`` or a two-digit number ``01``), else the
    lecture whose grade_ids the notebook shares most. Student: the first folder below
    ``base`` (the folder given on the command line) when the file sits in a subfolder, else
    the part of the file name before the lecture (``alice_01_energy...ipynb``), else the name
    of the file's folder.
    """
    notes = []
    lecture = None
    if nb is not None:
        stamped = nb.metadata.get("dlai_diffusion", {})
        stamped = stamped.get("lecture") if isinstance(stamped, dict) else None
        if stamped in solutions:
            lecture = stamped
    named, at = _lecture_in_name(path.name, solutions)
    if lecture is None and named is not None:
        lecture = named
        if nb is not None:  # a name that contradicts the content yields to the content
            overlap = {s: len(_grade_ids(nb) & _grade_ids(sol)) for s, sol in solutions.items()}
            best = max(overlap, key=overlap.get)
            if overlap[named] == 0 and overlap[best] > 0:
                notes.append(f"the file name says {named} but the cells are those of {best}")
                lecture = best
    if lecture is None and nb is not None:
        overlap = {s: len(_grade_ids(nb) & _grade_ids(sol)) for s, sol in solutions.items()}
        best = max(overlap, key=overlap.get)
        if overlap[best] > 0:
            lecture = best
            notes.append(f"lecture {best} recognised from the notebook's cells")
    student = ""
    if base is not None and path.parent != base:
        student = path.relative_to(base).parts[0]
    if not student and at > 0:
        student = path.name[:at].strip("_-. ")
    if not student:
        student = path.parent.name or path.stem
    return lecture, student, notes


def find_submissions(paths) -> list[tuple[Path, Path | None]]:
    """Expand files and folders into (notebook, base folder or None), in a stable order."""
    found = []
    for given in map(Path, paths):
        if given.is_dir():
            for path in sorted(given.rglob("*.ipynb")):
                hidden = any(p.startswith(".") for p in path.relative_to(given).parts)
                if not hidden:
                    found.append((path, given))
        else:
            found.append((given, None))
    return found


# ----------------------------------------------------------------------------------------
# The notebook that is run: the student's cells with the solution's tests


def read_submission(path: Path):
    """The notebook at ``path`` and notes on cells dropped, or ``ValueError`` saying why not.

    Malformed cells are dropped, nbgrader metadata that is not a dict with a string
    grade_id is removed, and outputs are cleared.
    """
    import nbformat

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the file: {err}") from None
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as err:  # not JSON, or JSON that is not a notebook
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"not a valid notebook ({first[:200]})") from None
    if not isinstance(nb.get("cells"), list):
        raise ValueError("not a valid notebook (no list of cells)")
    notes: list[str] = []
    nb["cells"] = _clean_cells(nb, notes)
    if not isinstance(nb.get("metadata"), dict):
        nb["metadata"] = {}
    return nb, notes


def _clean_cells(nb, notes: list[str]) -> list:
    """The student's cells that can be used: well-formed, outputs cleared."""
    from nbformat import NotebookNode

    cells = []
    for index, cell in enumerate(nb.cells):
        ok = isinstance(cell, dict) and cell.get("cell_type") in ("code", "markdown", "raw")
        if ok and not isinstance(cell.get("source", ""), str):
            ok = False
        if not ok:
            notes.append(f"cell {index} is malformed and was skipped")
            continue
        cell = NotebookNode(copy.deepcopy(dict(cell)))
        cell.setdefault("source", "")
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = NotebookNode()
        meta = cell.metadata.get("nbgrader")
        if meta is not None and not (isinstance(meta, dict) and _is_name(meta.get("grade_id"))):
            cell.metadata.pop("nbgrader")
        if cell.cell_type == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
    return cells


def _is_name(value) -> bool:
    return isinstance(value, str) and bool(value)


def graded_notebook(submission, solution) -> tuple[object, list[str]]:
    """The notebook to run: the student's cells, with every test cell from the solution.

    Test cells are matched by grade_id; their source (hidden tests included) and metadata
    come from the solution, so editing them changes nothing. A missing test cell is put
    back after the nearest cell that precedes it in the solution and is still there (or at
    the end); a duplicate is dropped. Returns the notebook and notes on what was repaired.
    """
    import nbformat

    notes: list[str] = []
    tests = {nbgrader_meta(c)["grade_id"]: c for c in solution.cells if is_test_cell(c)}
    cells = []
    for cell in submission.cells:
        cell = copy.deepcopy(cell)
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id in tests and cell.cell_type == "code":
            if any(nbgrader_meta(c).get("grade_id") == grade_id for c in cells):
                notes.append(f"test cell {grade_id} appears twice; the copy was dropped")
                continue
            cell = copy.deepcopy(tests[grade_id])
            cell["outputs"], cell["execution_count"] = [], None
        elif grade_id in tests:
            notes.append(f"test cell {grade_id} was turned into {cell.cell_type}; ignored")
            cell.metadata.pop("nbgrader", None)
        cells.append(cell)
    present = {nbgrader_meta(c).get("grade_id"): c for c in cells if is_test_cell(c)}
    previous = None
    for cell in solution.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id in tests and grade_id not in present:
            restored = copy.deepcopy(cell)
            restored["outputs"], restored["execution_count"] = [], None
            ids = [nbgrader_meta(c).get("grade_id") for c in cells]
            at = ids.index(previous) + 1 if previous in ids else len(cells)
            cells.insert(at, restored)
            notes.append(f"test cell {grade_id} was missing or renamed and has been restored")
        if grade_id is not None:
            previous = grade_id
    seen = set()
    for cell in cells:  # restored cells may repeat the id of a student's cell
        if cell.get("id") in seen:
            cell["id"] = uuid.uuid4().hex[:8]
        seen.add(cell.get("id"))
    nb = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(solution.metadata))
    return nb, notes


# ----------------------------------------------------------------------------------------
# Running it: a worker process with its own kernel


def execute(nb, limits: Limits, workdir: Path) -> dict[int, dict]:
    """Run ``nb`` in a separate worker process; return per-cell results by cell index.

    A result has ``status`` (ok, error, timeout, kernel died, not run), ``ename``,
    ``evalue``, ``traceback`` and ``seconds``. The worker enforces the limits; this process
    only kills it (and its kernel) if it overruns the total time limit by a margin.
    """
    import nbformat

    workdir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, workdir / "graded.ipynb")
    (workdir / "limits.json").write_text(json.dumps(asdict(limits)))
    env = dict(os.environ, PYTHONUNBUFFERED="1", DLAI_WIDGETS="0")  # see config.widgets_enabled
    if limits.fast:
        env["DLAI_FAST"] = "1"
    if not limits.gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if limits.memory:  # fewer malloc arenas: less address space reserved per thread
        env.setdefault("MALLOC_ARENA_MAX", "2")
    with open(workdir / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(workdir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        try:
            worker.wait(timeout=limits.total_timeout + 30)
        except subprocess.TimeoutExpired:
            _kill_group(worker.pid)
            worker.wait()
    _kill_kernel(workdir)
    try:
        results = json.loads((workdir / "results.json").read_text())
    except (OSError, ValueError):
        results = {}
    results = {int(k): v for k, v in results.items()}
    if worker.returncode != 0 and not results.get(-1):
        results[-1] = {"status": "worker failed", "evalue": _tail(workdir / "worker.log")}
    return results


def _tail(path: Path, size: int = 600) -> str:
    try:
        return path.read_bytes()[-size:].decode("utf-8", "replace")
    except OSError:
        return ""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _kill_kernel(workdir: Path) -> None:
    """Kill a kernel the worker left behind (it runs in its own process group)."""
    try:
        pid = int((workdir / "kernel.pid").read_text())
    except (OSError, ValueError):
        return
    _kill_group(pid)


def _worker(workdir: str) -> None:
    """Run ``graded.ipynb`` in ``workdir`` cell by cell; write ``results.json`` as it goes."""
    workdir = Path(workdir)
    limits = json.loads((workdir / "limits.json").read_text())
    deadline = time.monotonic() + limits["total_timeout"]
    if limits["memory"] > 0 and not limits.get("gpu"):  # inherited by the kernel; Linux only
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
        except (ImportError, ValueError, OSError):
            pass

    import nbformat
    from jupyter_core.utils import run_sync
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(workdir / "graded.ipynb", as_version=4)
    results: dict[int, dict] = {}
    rundir = workdir / "run"
    rundir.mkdir(exist_ok=True)

    def save() -> None:
        tmp = workdir / "results.json.tmp"
        tmp.write_text(json.dumps(results))
        os.replace(tmp, workdir / "results.json")

    class Client(NotebookClient):
        """Caps each cell's output and records how each cell ended."""

        def output(self, outs, msg, display_id, cell_index):
            size = len(json.dumps(msg.get("content", {}).get("data") or msg["content"]))
            used = self._used.get(cell_index, 0) + size
            self._used[cell_index] = used
            if used > limits["max_output"] and msg["msg_type"] != "error":
                self._dropped[cell_index] = self._dropped.get(cell_index, 0) + size
                return None
            return super().output(outs, msg, display_id, cell_index)

    def on_executed(cell, cell_index, execute_reply):
        content = execute_reply.get("content", {})
        dropped = client._dropped.pop(cell_index, 0)
        if dropped:
            text = f"\n[output truncated: {dropped} characters over the limit were dropped]\n"
            cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=text))
        results[cell_index] = {
            "status": "ok" if content.get("status") == "ok" else "error",
            "ename": content.get("ename", ""),
            "evalue": str(content.get("evalue", ""))[:2000],
            "traceback": _strip_ansi("\n".join(content.get("traceback", [])))[-4000:],
            "truncated": dropped,
        }

    def time_left() -> int:
        return max(1, int(min(limits["cell_timeout"], deadline - time.monotonic())))

    def responsive(client, grace: float) -> bool:
        """Whether the kernel answers a trivial request within ``grace`` seconds."""
        msg_id = client.kc.execute("pass", store_history=False)
        stop = time.monotonic() + grace
        while time.monotonic() < stop:
            try:
                msg = run_sync(client.kc.shell_channel.get_msg)(timeout=0.5)
            except Exception:
                if not run_sync(client.kc.is_alive)():
                    return False
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return True
        return False

    order = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    position, restarts = 0, 0
    while position < len(order):
        client = Client(
            nb,
            timeout=limits["cell_timeout"],
            kernel_name="python3",
            allow_errors=True,
            interrupt_on_timeout=False,
            shutdown_kernel="immediate",
            record_timing=False,
            skip_cells_with_tag="\x00never",  # a student's tag must not skip a cell
            on_cell_executed=on_executed,
            resources={"metadata": {"path": str(rundir)}},
        )
        client._used, client._dropped = {}, {}
        restart = False
        with client.setup_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            (workdir / "kernel.pid").write_text(str(client.km.provisioner.process.pid))
            replay = [i for i in order[:position] if results[i]["status"] == "ok"]
            saved = {i: results[i] for i in replay}
            for index in replay:  # run again what had succeeded before the kernel was lost
                client.timeout = time_left()
                try:
                    client.execute_cell(nb.cells[index], index)
                except Exception:
                    restart = not _kernel_alive(client)  # lost again: start over
                    break
            results.update(saved)
            while position < len(order) and not restart:
                index = order[position]
                remaining = deadline - time.monotonic()
                if remaining <= 1:
                    break
                client.timeout = time_left()
                started = time.monotonic()
                client._used[index] = 0
                results.pop(index, None)
                try:
                    client.execute_cell(nb.cells[index], index)
                    results.setdefault(index, {"status": "ok", "ename": "", "evalue": ""})
                except CellTimeoutError:
                    results[index] = {"status": "timeout", "ename": ""}
                    results[index]["evalue"] = f"stopped by the time limit ({client.timeout} s)"
                    run_sync(client.km.interrupt_kernel)()
                    restart = not responsive(client, grace=min(5, limits["cell_timeout"]))
                except DeadKernelError:
                    results[index] = {"status": "kernel died", "ename": ""}
                    results[index]["evalue"] = "the kernel died (crash, exit or out of memory)"
                    restart = True
                except Exception as err:  # anything else in the client: record, move on
                    results[index] = {"status": "error", "ename": type(err).__name__}
                    results[index]["evalue"] = str(err)[:2000]
                    restart = not _kernel_alive(client)
                results[index]["restarted"] = restart
                results[index]["seconds"] = round(time.monotonic() - started, 3)
                position += 1
                save()
        restarts += restart
        if not restart or restarts > 3:
            break
    for index in order:
        if index not in results:
            why = "the total time limit was reached" if restarts <= 3 else "too many restarts"
            results[index] = {"status": "not run", "ename": "", "evalue": why}
    save()
    nbformat.write(nb, workdir / "executed.ipynb")


def _kernel_alive(client) -> bool:
    """Whether the kernel process of ``client`` is still running."""
    from jupyter_core.utils import run_sync

    try:
        return bool(run_sync(client.kc.is_alive)())
    except Exception:
        return False


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


# ----------------------------------------------------------------------------------------
# Grading one submission


def _hidden_lines(source: str) -> range:
    """1-based line numbers of the hidden-test region of a test cell (empty when none)."""
    lines = source.split("\n")
    begin = next((i for i, line in enumerate(lines) if BEGIN_HIDDEN in line), None)
    end = next((i for i, line in enumerate(lines) if END_HIDDEN in line), None)
    return range(begin + 1, (end if end is not None else len(lines)) + 2) if begin else range(0)


def _short(result: dict) -> str:
    """One readable line on why a cell failed."""
    ename, evalue = result.get("ename") or "", str(result.get("evalue") or "").strip()
    lines = [line for line in evalue.splitlines() if line.strip()]
    text = " / ".join(lines[:3])
    text = text if len(text) < 300 else text[:297] + "..."
    if ename == "NotImplementedError" and not text:
        text = "not answered yet (the stub raises NotImplementedError)"
    return f"{ename}: {text}" if ename and text else ename or text


def _where(result: dict, source: str) -> str:
    """'visible check' or 'hidden tests', from the line of the test cell the error came from."""
    match = re.search(r"Cell In\[\d+\], line (\d+)", result.get("traceback", ""))
    if not match:
        return ""
    return "hidden tests" if int(match.group(1)) in _hidden_lines(source) else "visible check"


def grade_notebook(nb, solution, lecture, student, path, limits, workdir) -> Result:
    """Grade a readable submission ``nb`` of ``lecture`` against its ``solution``."""
    result = Result(student, lecture, str(path))
    graded, result.notes = graded_notebook(nb, solution)
    started = time.monotonic()
    runs = execute(graded, limits, workdir)
    result.seconds = round(time.monotonic() - started, 2)
    if -1 in runs:
        result.notes.append(f"the grader's worker failed: {runs[-1].get('evalue', '')[-300:]}")
    index_of = {nbgrader_meta(c).get("grade_id"): i for i, c in enumerate(graded.cells)}
    student_cells = {nbgrader_meta(c).get("grade_id"): c for c in graded.cells}
    for cell in solution.cells:
        meta = nbgrader_meta(cell)
        if not is_graded_cell(cell):
            continue
        grade_id, points = meta["grade_id"], float(meta.get("points", 0))
        row = Row(student, lecture, grade_id, "auto", 0.0, points, "", "", str(path))
        if cell.cell_type != "code":  # a written answer: never graded automatically
            row.kind = "manual"
            answer = student_cells.get(grade_id, {}).get("source", "")
            if not str(answer).strip() or str(answer).strip() == TEXT_STUB:
                row.status, row.message = "unanswered", "no written answer"
            else:
                row.points, row.status, row.message = None, "manual", "needs manual grading"
            result.rows.append(row)
            continue
        index = index_of.get(grade_id)
        run = runs.get(index, {"status": "not run", "evalue": "the notebook could not be run"})
        if is_solution_cell(cell) and grade_id not in student_cells:
            run = {"status": "not run", "evalue": "the answer cell is missing"}
        if run["status"] == "ok":
            row.points, row.status, row.message = points, "passed", ""
        else:
            status = run["status"]
            if status == "error":
                status = "failed" if run.get("ename") == "AssertionError" else "error"
            row.status, row.message = status, _short(run)
            where = _where(run, cell.source)
            if where:
                row.message = f"{where}: {row.message}"
            result.details[grade_id] = run.get("traceback", "")
        result.rows.append(row)
    tested = {i for i, c in enumerate(graded.cells) if is_test_cell(c)}
    for index, cell in enumerate(graded.cells):
        run = runs.get(index)
        if index in tested or not run or run["status"] == "ok":
            continue
        first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
        name = nbgrader_meta(cell).get("grade_id") or (first[:57] + "..." * (len(first) > 57))
        label = f"cell {index + 1}" + (f" ({name})" if name else "")
        result.problems.append(f"{label}: {run['status']}: {_short(run)}")
    for index, run in sorted(runs.items()):
        if run.get("truncated"):
            result.notes.append(f"the output of cell {index + 1} was too long and was cut")
        if run.get("restarted"):
            result.notes.append(
                f"the kernel was restarted after cell {index + 1}; the cells that had "
                "succeeded before it were run again"
            )
    return result


def grade_file(path: Path, base, solutions, limits: Limits, scratch: Path) -> Result:
    """Grade one submission file; never raises for a bad submission."""
    try:
        (nb, dropped), problem = read_submission(path), None
    except ValueError as err:
        nb, dropped, problem = None, [], str(err)
    lecture, student, notes = identify(path, base, nb, solutions)
    notes += dropped
    if lecture is None or problem is not None:
        result = Result(student, lecture or "", str(path), notes=notes)
        status = "invalid" if problem else "unknown lecture"
        message = problem or "cannot tell which lecture this notebook belongs to"
        ids = [c for c in solutions[lecture].cells if is_graded_cell(c)] if lecture else []
        for cell in ids:
            meta = nbgrader_meta(cell)
            kind = "auto" if cell.cell_type == "code" else "manual"
            points = float(meta.get("points", 0))
            row = Row(student, lecture, meta["grade_id"], kind, 0.0, points, status, message, "")
            row.submission = str(path)
            result.rows.append(row)
        if not ids:
            result.rows.append(Row(student, "", "", "auto", 0.0, 0.0, status, message, str(path)))
        return result
    workdir = Path(tempfile.mkdtemp(prefix=f"{_safe(student)}-{lecture}-", dir=scratch))
    result = grade_notebook(nb, solutions[lecture], lecture, student, path, limits, workdir)
    result.notes[:0] = notes
    return result


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "anonymous"


# ----------------------------------------------------------------------------------------
# Reports


def feedback(result: Result) -> str:
    """The student's feedback: points per exercise, what failed and why, in a few lines."""
    lines = [f"# Feedback: {result.lecture or 'unknown lecture'} ({result.student})", ""]
    auto = f"{result.auto_points:g} / {result.auto_max:g}"
    lines.append(f"Automatically graded points: **{auto}**.")
    if result.manual_max:
        lines.append(f"Written answers ({result.manual_max:g} points) are graded by hand.")
    lines += ["", "| exercise | points | result |", "|---|---|---|"]
    for row in result.rows:
        got = "to grade" if row.points is None else f"{row.points:g}"
        text = row.status if not row.message else f"{row.status}: {row.message}"
        lines.append(f"| {row.exercise or '-'} | {got} / {row.max_points:g} | {text} |")
    if result.problems:
        lines += ["", "Errors in your own cells:", ""]
        lines += [f"- {problem}" for problem in result.problems]
    if result.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in result.notes]
    return "\n".join(line.replace("\r", " ") for line in lines) + "\n"


def write_gradebook(results: list[Result], out: Path, limits: Limits) -> Path:
    """Write ``out`` (CSV, one row per student and exercise) and its JSON twin; return it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(Row.__dataclass_fields__)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for result in results:
            for row in result.rows:
                line = asdict(row)
                line["points"] = "" if row.points is None else f"{row.points:g}"
                line["max_points"] = f"{row.max_points:g}"
                writer.writerow(line)
    details = {
        "limits": asdict(limits),
        "submissions": [
            {
                "student": r.student,
                "lecture": r.lecture,
                "submission": r.submission,
                "auto_points": r.auto_points,
                "auto_max": r.auto_max,
                "manual_max": r.manual_max,
                "seconds": r.seconds,
                "notes": r.notes,
                "problems": r.problems,
                "exercises": [
                    {**asdict(row), "traceback": r.details.get(row.exercise, "")} for row in r.rows
                ],
            }
            for r in results
        ],
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(details, indent=1, ensure_ascii=False), encoding="utf-8")
    return json_path


def grade(
    paths,
    out: str | Path = "grades.csv",
    root: str | Path = ".",
    limits: Limits | None = None,
    feedback_dir: str | Path | None = None,
    jobs: int = 1,
    work_dir: str | Path | None = None,
    log=print,
) -> list[Result]:
    """Grade every submission in ``paths`` (files or folders); write gradebook and feedback.

    Feedback goes to ``feedback_dir/<student>/<lecture>.md`` (default: ``feedback/`` next to
    ``out``). With ``work_dir``, each run's notebooks (the one graded, with hidden tests, and
    the executed one) and logs are kept there for the instructor; otherwise they are deleted.
    Returns the results in the order of the submissions.
    """
    limits = limits or Limits()
    solutions = load_solutions(root)
    submissions = find_submissions(paths)
    out = Path(out)
    feedback_dir = Path(feedback_dir) if feedback_dir else out.parent / "feedback"
    if work_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="dlai-grade-"))
    else:
        scratch = Path(work_dir)
        scratch.mkdir(parents=True, exist_ok=True)

    lock, taken = threading.Lock(), {}

    def one(item):
        path, base = item
        try:
            result = grade_file(path, base, solutions, limits, scratch)
        except Exception as err:  # a grader bug must not lose the other submissions
            result = Result(path.parent.name, "", str(path))
            message = f"grader error: {type(err).__name__}: {err}"
            result.rows.append(Row(result.student, "", "", "auto", 0.0, 0.0, "error", message, ""))
        name = result.lecture or _safe(path.stem)
        with lock:  # two submissions of one student and lecture keep two feedback files
            key = (_safe(result.student), name)
            taken[key] = taken.get(key, 0) + 1
            suffix = "" if taken[key] == 1 else f"-{taken[key]}"
        target = feedback_dir / key[0] / f"{name}{suffix}.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(feedback(result), encoding="utf-8")
        log(
            f"{result.student:>16}  {result.lecture or '?':<40} "
            f"{result.auto_points:g}/{result.auto_max:g}  ({result.seconds:.1f} s)  {path}"
        )
        return result

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = list(pool.map(one, submissions))
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    json_path = write_gradebook(results, out, limits)
    log(f"gradebook: {out} and {json_path}; feedback in {feedback_dir}")
    return results


def _run(args: argparse.Namespace) -> int:
    limits = Limits(
        cell_timeout=args.cell_timeout,
        total_timeout=args.timeout,
        memory=parse_size(args.memory),
        max_output=args.max_output,
        fast=not args.full,
        gpu=args.gpu,
    )
    results = grade(
        args.submissions, args.out, args.root, limits, args.feedback, args.jobs, args.work
    )
    if not results:
        print("no submissions found", file=sys.stderr)
        return 1
    return 0


def add_parser(sub) -> None:
    defaults = Limits()
    parser = sub.add_parser(
        "grade",
        help="grade submitted exercise notebooks into a gradebook",
        description="Grade submitted exercise notebooks against solutions/: a gradebook "
        "(CSV, one row per student and exercise, and JSON with details) and a feedback file "
        "per submission.",
    )
    parser.add_argument("submissions", nargs="+", help="notebooks or folders of notebooks")
    parser.add_argument("--out", default="grades.csv", help="gradebook CSV (JSON goes beside it)")
    parser.add_argument("--root", default=".", help="course root holding solutions/ (default: .)")
    parser.add_argument("--feedback", default=None, help="feedback folder (default: beside --out)")
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=defaults.cell_timeout,
        help="seconds per cell (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=defaults.total_timeout,
        help="seconds per notebook (default: %(default)s)",
    )
    parser.add_argument(
        "--memory",
        default="4G",
        help="address-space limit of the kernel, e.g. 4G; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--max-output",
        type=int,
        default=defaults.max_output,
        help="output characters kept per cell (default: %(default)s)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded in parallel")
    parser.add_argument(
        "--work", default=None, help="keep the executed notebooks and logs in this folder"
    )
    parser.add_argument(
        "--full", action="store_true", help="run in full mode (default: DLAI_FAST=1)"
    )
    parser.add_argument(
        "--gpu", action="store_true", help="let kernels use a GPU (no memory limit then)"
    )
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    """``dlai-diffusion grade ...`` without the rest of the command line (used by tests)."""
    parser = argparse.ArgumentParser(prog="dlai-diffusion")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["grade", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    _worker(sys.argv[1])
