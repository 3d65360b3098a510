"""Exercises from solutions: ``dlai-diffusion make-exercises``.

``solutions/NN_topic.ipynb`` is the single source of every exercise. It uses nbgrader's
markup (schema 3), so instructors can also run nbgrader's own ``generate_assignment``:

- code answer cells (``solution: true``) hold the answer between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``; the exercise gets nbgrader's stub ``# YOUR CODE HERE`` /
  ``raise NotImplementedError()`` at the same indentation;
- written answer cells (markdown, ``solution: true``) become ``YOUR ANSWER HERE``;
- graded test cells (``grade: true``) keep their visible check and lose everything between
  ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``.

Outputs and execution counts are cleared, and the Colab badge of each notebook points at its
own path. The same command refreshes the badges and Colab install cells of ``notebooks/``
and ``solutions/`` from :mod:`dlai_diffusion.course`, the one place that knows the URL, and
gives every notebook the kernelspec the installed ipykernel writes (so that opening and
saving a notebook in JupyterLab changes nothing).
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import nbformat

from . import course

CODE_STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
TEXT_STUB = "YOUR ANSWER HERE"
BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"


def nbgrader_meta(cell) -> dict:
    """The cell's nbgrader metadata (empty when it has none)."""
    return cell.get("metadata", {}).get("nbgrader", {})


def is_solution_cell(cell) -> bool:
    return bool(nbgrader_meta(cell).get("solution", False))


def is_graded_cell(cell) -> bool:
    return bool(nbgrader_meta(cell).get("grade", False))


def is_test_cell(cell) -> bool:
    """A graded code cell that is not an answer: the autograded checks."""
    return cell.cell_type == "code" and is_graded_cell(cell) and not is_solution_cell(cell)


def _find_region(lines: list[str], begin: str, end: str, where: str):
    """Yield (start, stop) line indices of each ``begin``/``end`` region, inclusive."""
    start = None
    for i, line in enumerate(lines):
        if begin in line:
            if start is not None:
                raise ValueError(f"{where}: nested '{begin}' at line {i + 1}")
            start = i
        elif end in line:
            if start is None:
                raise ValueError(f"{where}: '{end}' without '{begin}' at line {i + 1}")
            yield start, i
            start = None
    if start is not None:
        raise ValueError(f"{where}: '{begin}' at line {start + 1} is never closed")


def replace_solution_regions(source: str, cell_type: str, where: str = "cell") -> tuple[str, bool]:
    """Replace each solution region by the stub; return the new source and whether any was found."""
    lines = source.split("\n")
    regions = list(_find_region(lines, BEGIN_SOLUTION, END_SOLUTION, where))
    for start, stop in reversed(regions):
        indent = re.match(r"\s*", lines[start]).group(0)
        stub = [indent + s for s in CODE_STUB] if cell_type == "code" else [TEXT_STUB]
        lines[start : stop + 1] = stub
    return "\n".join(lines), bool(regions)


def remove_hidden_tests(source: str, where: str = "cell") -> str:
    """Drop every hidden-test region, delimiters included."""
    lines = source.split("\n")
    for start, stop in reversed(list(_find_region(lines, BEGIN_HIDDEN, END_HIDDEN, where))):
        del lines[start : stop + 1]
    return "\n".join(lines).rstrip("\n")


def refresh_colab_cells(nb, path: str) -> None:
    """Point the badge at ``path`` and renew the Colab install cell, in place."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and course.BADGE_MARKER in cell.source:
            cell.source = course.refresh_badge(cell.source, path)
        elif cell.cell_type == "code" and cell.source.startswith(course.INSTALL_MARKER):
            cell.source = course.colab_install_source().rstrip("\n")


def make_exercise(solution, path: str):
    """Return the student version of a solution notebook (the input is not modified)."""
    nb = copy.deepcopy(solution)
    for index, cell in enumerate(nb.cells):
        where = f"{path}, cell {index}"
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        replaced = False
        if is_solution_cell(cell):
            cell.source, replaced = replace_solution_regions(cell.source, cell.cell_type, where)
            if not replaced:
                cell.source = "\n".join(CODE_STUB) if cell.cell_type == "code" else TEXT_STUB
        elif BEGIN_SOLUTION in cell.source:
            raise ValueError(f"{where}: solution region outside a cell marked solution: true")
        if is_graded_cell(cell) and cell.cell_type == "code":
            cell.source = remove_hidden_tests(cell.source, where)
        elif BEGIN_HIDDEN in cell.source:
            raise ValueError(f"{where}: hidden tests outside a graded cell (grade: true)")
    refresh_colab_cells(nb, path)
    return nb


def _write_if_changed(nb, path: Path) -> bool:
    text = nbformat.writes(nb) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def make_exercises(root: str | Path = ".", out: str | Path | None = None) -> list[Path]:
    """Generate ``exercises/`` from ``solutions/`` under ``root``; return the files written.

    Also refreshes the Colab cells and kernelspecs of ``notebooks/`` and ``solutions/`` and
    writes the course index (``index.ipynb``, from the README's course map). Exercises that
    no longer have a solution are removed. ``out`` redirects the exercises (used by the tests).
    """
    root = Path(root)
    solutions = root / "solutions"
    if not solutions.is_dir():
        raise ValueError(f"root must contain a solutions/ folder; none in {root.resolve()}")
    out = root / "exercises" if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    kernelspec = course.current_kernelspec()
    for folder in ("notebooks", "solutions"):
        for path in sorted((root / folder).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            refresh_colab_cells(nb, f"{folder}/{path.name}")
            course.normalise_metadata(nb, kernelspec)
            if _write_if_changed(nb, path):
                written.append(path)
    if (root / "README.md").is_file():
        index = course.index_notebook((root / "README.md").read_text(encoding="utf-8"))
        course.normalise_metadata(index, kernelspec)
        lectures = sorted((root / "notebooks").glob("*.ipynb"))
        if lectures:  # what the kernel reports when the index opens, as the lectures hold it
            language = nbformat.read(lectures[0], as_version=4).metadata.get("language_info")
            if language:
                index.metadata["language_info"] = language
        if _write_if_changed(index, root / course.INDEX):
            written.append(root / course.INDEX)
    expected = set()
    for path in sorted(solutions.glob("*.ipynb")):
        nb = make_exercise(nbformat.read(path, as_version=4), f"exercises/{path.name}")
        course.normalise_metadata(nb, kernelspec)
        expected.add(path.name)
        if _write_if_changed(nb, out / path.name):
            written.append(out / path.name)
    for stale in sorted(out.glob("*.ipynb")):
        if stale.name not in expected:
            stale.unlink()
            written.append(stale)
    return written


def _run(args: argparse.Namespace) -> int:
    written = make_exercises(args.root)
    for path in written:
        print(f"wrote {path}")
    print(f"exercises up to date ({len(written)} file(s) changed)")
    return 0


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "make-exercises",
        help="generate exercises/ from solutions/ (and refresh Colab badges)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--root", default=".", help="course repository root (default: .)")
    parser.set_defaults(func=_run)
