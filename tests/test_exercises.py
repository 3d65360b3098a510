"""Exercises are generated from solutions, stay in sync, and no check is vacuous."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from dlai_diffusion import course
from dlai_diffusion.exercises import (
    is_test_cell,
    make_exercise,
    make_exercises,
    nbgrader_meta,
    remove_hidden_tests,
    replace_solution_regions,
)

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def _meta(**kw):
    return {"nbgrader": {"schema_version": 3, "locked": False, "task": False, **kw}}


def _toy_solution():
    return new_notebook(
        cells=[
            new_markdown_cell(course.colab_badge("solutions/99_toy.ipynb") + "\n# Toy"),
            new_code_cell(course.colab_install_source()),
            new_code_cell(
                "def double(x):\n    '''Twice x.'''\n    ### BEGIN SOLUTION\n    return 2 * x\n"
                "    ### END SOLUTION",
                metadata=_meta(grade=False, solution=True, grade_id="double"),
                outputs=[],
                execution_count=3,
            ),
            new_code_cell(
                "assert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(-1) == -2\n"
                "### END HIDDEN TESTS",
                metadata=_meta(grade=True, solution=False, grade_id="double_check", points=1),
            ),
            new_markdown_cell(
                "Because 1 + 1 = 2.", metadata=_meta(grade=True, solution=True, grade_id="why")
            ),
        ]
    )


def test_solution_region_keeps_indentation_and_surroundings():
    source = (
        "def f():\n    '''Doc.'''\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n"
    )
    new, replaced = replace_solution_regions(source, "code")
    assert replaced
    assert new == (
        "def f():\n    '''Doc.'''\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    )


def test_hidden_tests_are_removed_with_their_delimiters():
    source = "check(f)\n### BEGIN HIDDEN TESTS\nassert f() == 1\n### END HIDDEN TESTS\n"
    assert remove_hidden_tests(source) == "check(f)"


@pytest.mark.parametrize(
    "source, message",
    [
        ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
        ("x = 1\n### END SOLUTION\n", "without"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "nested"),
    ],
)
def test_unbalanced_markup_is_a_clear_error(source, message):
    with pytest.raises(ValueError, match=message):
        replace_solution_regions(source, "code")


def test_make_exercise_stubs_answers_hides_tests_and_clears_outputs():
    solution = _toy_solution()
    exercise = make_exercise(solution, "exercises/99_toy.ipynb")
    badge, install, answer, check, written = exercise.cells
    assert "exercises/99_toy.ipynb" in badge.source and "solutions/" not in badge.source
    assert install.source == course.colab_install_source().rstrip("\n")
    assert "return 2 * x" not in answer.source
    assert "raise NotImplementedError()" in answer.source and answer.execution_count is None
    assert check.source == "assert double(2) == 4"
    assert written.source == "YOUR ANSWER HERE"
    assert nbgrader_meta(check)["points"] == 1  # metadata survives for the grader
    assert "return 2 * x" in solution.cells[2].source  # the input is untouched


def test_solution_markup_outside_solution_cells_is_refused():
    nb = new_notebook(cells=[new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")])
    with pytest.raises(ValueError, match="solution: true"):
        make_exercise(nb, "exercises/x.ipynb")


def test_committed_exercises_are_exactly_the_generated_ones(tmp_path):
    # Generate into a scratch copy so that the repository is never modified by the test.
    scratch = tmp_path / "repo"
    for folder in ("notebooks", "solutions"):
        (scratch / folder).mkdir(parents=True)
        for path in (ROOT / folder).glob("*.ipynb"):
            (scratch / folder / path.name).write_bytes(path.read_bytes())
    changed = make_exercises(scratch)
    refreshed = [p for p in changed if p.parent.name != "exercises"]
    assert not refreshed, (
        f"Colab cells out of date, run `dlai-diffusion make-exercises`: {refreshed}"
    )
    generated = sorted(p.name for p in (scratch / "exercises").glob("*.ipynb"))
    committed = sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))
    assert generated == committed, "exercises/ and solutions/ hold different notebooks"
    for name in generated:
        assert (scratch / "exercises" / name).read_text() == (
            ROOT / "exercises" / name
        ).read_text(), f"exercises/{name} is out of date: run `dlai-diffusion make-exercises`"


def test_every_notebook_opens_with_badge_and_colab_install():
    for folder in ("notebooks", "solutions", "exercises"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            assert nb.cells[0].source.startswith(course.colab_badge(f"{folder}/{path.name}")), path
            assert nb.cells[1].source.startswith(course.INSTALL_MARKER), path


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_markup_is_well_formed(path):
    nb = nbformat.read(path, as_version=4)
    ids = [nbgrader_meta(c)["grade_id"] for c in nb.cells if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), f"duplicate grade_id in {path.name}"
    tests = [c for c in nb.cells if is_test_cell(c)]
    assert tests, f"{path.name} has no graded test cell"
    for cell in tests:
        assert nbgrader_meta(cell).get("points", 0) > 0, nbgrader_meta(cell)["grade_id"]
        assert cell.get("outputs") == [], "solutions are committed without outputs"


def _execute(nb, cwd: Path):
    from nbclient import NotebookClient

    env_fast = os.environ.get("DLAI_FAST")
    os.environ["DLAI_FAST"] = "1"
    try:
        client = NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute()
    finally:
        if env_fast is None:
            os.environ.pop("DLAI_FAST", None)
        else:
            os.environ["DLAI_FAST"] = env_fast
    return nb


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_check_fails_on_the_stub(path):
    """Run the student version: each graded test cell must fail while the answers are stubs.

    (The solution notebooks themselves are executed by nbval, which proves the checks pass.)
    """
    exercise = make_exercise(nbformat.read(path, as_version=4), f"exercises/{path.name}")
    _execute(exercise, ROOT / "exercises")
    passed = [
        nbgrader_meta(c)["grade_id"]
        for c in exercise.cells
        if is_test_cell(c) and not any(o.get("output_type") == "error" for o in c.outputs)
    ]
    assert not passed, f"{path.name}: these checks pass on the unanswered exercise: {passed}"
