"""The instructor grader: right points for good, partial and broken submissions, never stuck.

The submissions are made here from solutions/ and exercises/ at test time, so they follow any
change of the exercises. Lecture 01 is used because its notebook runs in a few seconds.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from dlai_diffusion.exercises import is_test_cell, make_exercise, nbgrader_meta
from dlai_diffusion.grading import (
    Limits,
    grade,
    graded_notebook,
    identify,
    load_solutions,
    main,
    parse_size,
    read_submission,
)

ROOT = Path(__file__).resolve().parents[1]
LECTURE = "01_energy_and_partition_function"
SOLUTION = nbformat.read(ROOT / "solutions" / f"{LECTURE}.ipynb", as_version=4)
EXERCISE = nbformat.read(ROOT / "exercises" / f"{LECTURE}.ipynb", as_version=4)
AUTO = {
    nbgrader_meta(c)["grade_id"]: nbgrader_meta(c)["points"]
    for c in SOLUTION.cells
    if is_test_cell(c)
}
LINUX = sys.platform.startswith("linux")


def _cell(nb, grade_id):
    return next(c for c in nb.cells if nbgrader_meta(c).get("grade_id") == grade_id)


def _with(nb, **answers):
    """A copy of ``nb`` with the given answer cells replaced (grade_id=source)."""
    nb = copy.deepcopy(nb)
    for grade_id, source in answers.items():
        _cell(nb, grade_id).source = source
    return nb


def _solution_answer(grade_id):
    return _cell(SOLUTION, grade_id).source


def _append(nb, source):
    nb = copy.deepcopy(nb)
    nb.cells.insert(3, new_code_cell(source))
    return nb


def _edited():
    """Correct mixture_energy with its test deleted; the other tests edited or renamed."""
    nb = _with(EXERCISE, mixture_energy=_solution_answer("mixture_energy"))
    nb.cells.remove(_cell(nb, "mixture_energy_check"))
    _cell(nb, "log_partition_2d_check").source = 'print("✔ all good")'
    renamed = _cell(nb, "bayes_update_check")
    renamed.metadata["nbgrader"]["grade_id"] = "bayes_update_mine"
    renamed.source = "pass"
    # Silencing the visible check does not help: the hidden tests still call the stub.
    nb.cells.insert(3, new_code_cell("check.log_partition_2d = lambda f: None"))
    return nb


SUBMISSIONS = {
    # student: (notebook or raw text, expected points per test cell)
    "alice": (SOLUTION, AUTO),
    "bob": (EXERCISE, {}),
    "carol": (  # one answer right, plus a cell that floods its output
        _append(
            _with(EXERCISE, mixture_energy=_solution_answer("mixture_energy")),
            "for i in range(30_000):\n    print('flood ' * 20)",
        ),
        {"mixture_energy_check": 2},
    ),
    "dave": (  # a syntax error in one answer, and a cell that asks for too much memory
        _append(
            _with(
                SOLUTION,
                mixture_energy="def mixture_energy(x, means, stds, weights):\n    return (",
            ),
            "blob = bytearray(8 * 2**30)" if LINUX else "blob = None",
        ),
        {"log_partition_2d_check": 2, "bayes_update_check": 2},
    ),
    "frank": (  # an endless loop in one answer: only its check is lost
        _with(
            SOLUTION,
            log_partition_2d="def log_partition_2d(energy, bounds, n, temperature=1.0):\n"
            "    while True:\n        pass",
        ),
        {"mixture_energy_check": 2, "bayes_update_check": 2},
    ),
    "grace": (  # an answer cell that kills its own kernel
        _with(SOLUTION, log_partition_2d="import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
        {"mixture_energy_check": 2, "bayes_update_check": 2},
    ),
    "heidi": (_edited(), {"mixture_energy_check": 2}),
    "ivan": ("this is not a notebook\n", {}),
}


def _write(folder: Path):
    for student, (nb, _) in SUBMISSIONS.items():
        path = folder / student / f"{LECTURE}.ipynb"
        path.parent.mkdir(parents=True)
        text = nb if isinstance(nb, str) else nbformat.writes(nb)
        path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grading")
    _write(folder / "submissions")
    limits = Limits(cell_timeout=15, total_timeout=240, memory=4 * 2**30, max_output=20_000)
    started = time.monotonic()
    results = grade(
        [folder / "submissions"],
        folder / "grades.csv",
        ROOT,
        limits,
        jobs=2,
        work_dir=folder / "work",
        log=lambda *a: None,
    )
    seconds = time.monotonic() - started
    print(f"graded {len(results)} submissions in {seconds:.1f} s")
    return folder, {r.student: r for r in results}, seconds


def test_gradebook_has_the_right_points_for_every_submission(graded):
    folder, _, _ = graded
    with open(folder / "grades.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for student, (_, expected) in SUBMISSIONS.items():
        auto = {r["exercise"]: r for r in rows if r["student"] == student and r["kind"] == "auto"}
        assert set(auto) == set(AUTO), student  # one row per exercise, even when broken
        got = {k: float(r["points"]) for k, r in auto.items()}
        want = {k: float(expected.get(k, 0)) for k in AUTO}
        assert got == want, (student, [(k, auto[k]["status"], auto[k]["message"]) for k in AUTO])
        assert all(r["max_points"] == f"{AUTO[k]:g}" for k, r in auto.items())


def test_the_solution_earns_every_automatic_point_and_written_answers_wait(graded):
    _, results, _ = graded
    alice, bob = results["alice"], results["bob"]
    assert alice.auto_points == alice.auto_max == sum(AUTO.values())
    assert all(r.status == "manual" and r.points is None for r in alice.rows if r.kind == "manual")
    assert bob.auto_points == 0
    assert all(r.status == "unanswered" and r.points == 0 for r in bob.rows if r.kind == "manual")


def test_each_failure_is_reported_with_its_cause(graded):
    _, results, _ = graded
    status = {s: {r.exercise: r for r in results[s].rows} for s in results}
    assert status["frank"]["log_partition_2d_check"].status == "timeout"
    assert status["grace"]["log_partition_2d_check"].message.startswith("visible check: NameError")
    assert any("kernel died" in p for p in results["grace"].problems)
    assert any("restarted" in n for n in results["grace"].notes)
    assert not any("restarted" in n for n in results["frank"].notes)  # the interrupt sufficed
    assert any("SyntaxError" in p for p in results["dave"].problems)
    assert "hidden tests" in status["heidi"]["log_partition_2d_check"].message
    assert any("restored" in n for n in results["heidi"].notes)
    assert all(r.status == "invalid" for r in results["ivan"].rows)
    assert any("too long" in n for n in results["carol"].notes)
    if LINUX:  # RLIMIT_AS is enforced by Linux only
        assert any("MemoryError" in p for p in results["dave"].problems)


def test_feedback_is_short_and_keeps_hidden_tests_hidden(graded):
    folder, _, _ = graded
    hidden = "far=True"  # a line of the hidden tests of mixture_energy_check
    assert hidden in _cell(SOLUTION, "mixture_energy_check").source
    for student in SUBMISSIONS:
        text = (folder / "feedback" / student / f"{LECTURE}.md").read_text()
        assert student in text and "points" in text
        assert hidden not in text and "BEGIN HIDDEN" not in text
        assert len(text) < 4000
    details = json.loads((folder / "grades.json").read_text())
    assert {s["student"] for s in details["submissions"]} == set(SUBMISSIONS)


def test_grading_time_is_bounded(graded):
    _, results, seconds = graded
    executed = [r for r in results.values() if r.seconds]
    assert all(r.seconds < 240 for r in executed)
    assert seconds < 240 * len(executed) / 2 + 60


def test_edited_tests_are_replaced_by_the_solutions_hidden_tests_included():
    nb, notes = graded_notebook(_edited(), SOLUTION)
    for grade_id in AUTO:
        assert _cell(nb, grade_id).source == _cell(SOLUTION, grade_id).source
    ids = [nbgrader_meta(c).get("grade_id") for c in nb.cells]
    assert ids.index("mixture_energy_check") == ids.index("mixture_energy") + 1
    assert "bayes_update_mine" in ids  # the renamed copy stays, as an ordinary cell
    assert len(notes) == 2


@pytest.mark.parametrize(
    "relative, base, lecture, student",
    [
        ("subs/alice/01_energy_and_partition_function.ipynb", "subs", LECTURE, "alice"),
        ("subs/alice/ps1/01_energy_and_partition_function.ipynb", "subs", LECTURE, "alice"),
        ("bob_01_energy_and_partition_function.ipynb", None, LECTURE, "bob"),
        ("student42-03.ipynb", None, "03_denoising_score_matching", "student42"),
        ("carol/01.ipynb", None, LECTURE, "carol"),
        ("dave/homework.ipynb", None, None, "dave"),
    ],
)
def test_lecture_and_student_come_from_the_path(tmp_path, relative, base, lecture, student):
    solutions = load_solutions(ROOT)
    path = tmp_path / relative
    base = tmp_path / base if base else None
    assert identify(path, base, None, solutions)[:2] == (lecture, student)


def test_lecture_comes_from_metadata_or_cells_when_the_name_does_not_tell():
    solutions = load_solutions(ROOT)
    assert identify(Path("dave/homework.ipynb"), None, EXERCISE, solutions)[0] == LECTURE
    stamped = copy.deepcopy(EXERCISE)
    stamped.metadata["dlai_diffusion"] = {"lecture": "03_denoising_score_matching"}
    got = identify(Path("dave/01_x.ipynb"), None, stamped, solutions)
    assert got[0] == "03_denoising_score_matching"


def test_unreadable_and_malformed_notebooks_are_named(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text('{"cells": 3}')
    with pytest.raises(ValueError, match="not a valid notebook"):
        read_submission(bad)
    odd = copy.deepcopy(EXERCISE)
    odd.cells[5]["metadata"]["nbgrader"] = "nonsense"
    ok = tmp_path / "odd.ipynb"
    ok.write_text(json.dumps(odd))
    nb, notes = read_submission(ok)
    assert "nbgrader" not in nb.cells[5].metadata


def test_parse_size():
    assert parse_size("4G") == 4 * 2**30 and parse_size("512M") == 512 * 2**20
    assert parse_size("0") == 0 and parse_size("100k") == 102_400
    with pytest.raises(ValueError, match="memory limit"):
        parse_size("lots")


# A tiny course without torch: kernel restarts and the total time limit, in seconds.


def _toy_course(root: Path) -> Path:
    meta = {"schema_version": 3, "locked": False, "task": False}
    answer = {**meta, "grade": False, "solution": True}
    test = {**meta, "grade": True, "solution": False, "locked": True}
    solution = new_notebook(
        cells=[
            new_code_cell("x = 21"),
            new_code_cell(
                "def double(v):\n    ### BEGIN SOLUTION\n    return 2 * v\n    ### END SOLUTION",
                metadata={"nbgrader": {**answer, "grade_id": "double"}},
            ),
            new_code_cell(
                "assert double(x) == 42\n### BEGIN HIDDEN TESTS\nassert double(-1) == -2\n"
                "### END HIDDEN TESTS",
                metadata={"nbgrader": {**test, "grade_id": "double_check", "points": 1}},
            ),
            new_code_cell(
                "def triple(v):\n    ### BEGIN SOLUTION\n    return 3 * v\n    ### END SOLUTION",
                metadata={"nbgrader": {**answer, "grade_id": "triple"}},
            ),
            new_code_cell(
                "assert triple(x) == 63",
                metadata={"nbgrader": {**test, "grade_id": "triple_check", "points": 2}},
            ),
            new_markdown_cell(
                "Because.",
                metadata={
                    "nbgrader": {
                        **meta,
                        "grade": True,
                        "solution": True,
                        "grade_id": "why",
                        "points": 1,
                    }
                },
            ),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    )
    (root / "solutions").mkdir(parents=True)
    nbformat.write(solution, root / "solutions" / "99_toy.ipynb")
    return root


def test_a_loop_that_ignores_interrupts_is_killed_and_grading_goes_on(tmp_path):
    root = _toy_course(tmp_path / "course")
    solution = nbformat.read(root / "solutions" / "99_toy.ipynb", as_version=4)
    stubborn = make_exercise(solution, "exercises/99_toy.ipynb")
    _cell(stubborn, "double").source = (
        "import time\ndef double(v):\n    return 2 * v\nwhile True:\n    try:\n"
        "        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass"
    )
    _cell(stubborn, "triple").source = "def triple(v):\n    return 3 * v"
    _cell(stubborn, "why").source = "My own words."
    nbformat.write(stubborn, tmp_path / "zoe_99.ipynb")
    nbformat.write(solution, tmp_path / "amy_99_toy.ipynb")
    out = tmp_path / "out" / "grades.csv"
    options = ["--out", str(out), "--root", str(root), "--cell-timeout", "3", "--jobs", "2"]
    assert main([str(tmp_path / "zoe_99.ipynb"), str(tmp_path / "amy_99_toy.ipynb"), *options]) == 0
    rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(out.open())}
    assert [(s, e, r["points"]) for (s, e), r in rows.items() if s == "amy"] == [
        ("amy", "double_check", "1"),
        ("amy", "triple_check", "2"),
        ("amy", "why", ""),
    ]
    assert rows["zoe", "double_check"]["points"] == "0"
    assert "NameError" in rows["zoe", "double_check"]["message"]
    assert rows["zoe", "triple_check"]["points"] == "2" and rows["zoe", "why"]["status"] == "manual"
    (zoe,) = [
        s
        for s in json.loads(out.with_suffix(".json").read_text())["submissions"]
        if s["student"] == "zoe"
    ]
    assert any("timeout" in p for p in zoe["problems"])
    assert any("restarted" in n for n in zoe["notes"])  # the interrupt did not suffice
    assert (tmp_path / "out" / "feedback" / "amy" / "99_toy.md").exists()


def test_the_total_time_limit_stops_a_slow_notebook(tmp_path):
    root = _toy_course(tmp_path / "course")
    solution = nbformat.read(root / "solutions" / "99_toy.ipynb", as_version=4)
    slow = copy.deepcopy(solution)
    slow.cells.insert(2, new_code_cell("import time\ntime.sleep(60)"))
    nbformat.write(slow, tmp_path / "yan_99.ipynb")
    limits = Limits(cell_timeout=60, total_timeout=4, memory=0)
    started = time.monotonic()
    (result,) = grade([tmp_path / "yan_99.ipynb"], tmp_path / "g.csv", root, limits, log=print)
    assert time.monotonic() - started < 40
    rows = {r.exercise: r for r in result.rows}
    assert rows["double_check"].status == "not run" and rows["triple_check"].points == 0


# nbgrader's own tools accept the markup of solutions/ (where nbgrader is installed).


def _nbgrader(args, cwd):
    command = [sys.executable, "-m", "nbgrader", *args, "--debug"]
    # nbgrader runs the `alembic` script of its environment, which must be on the PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path, DLAI_FAST="1")
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_nbgrader_generate_assignment_and_autograde_accept_our_markup(tmp_path):
    pytest.importorskip(
        "nbgrader", reason="nbgrader is not installed here (pip install -e '.[instructor]')"
    )
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (course / "source" / "ps01").mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / f"{LECTURE}.ipynb", course / "source" / "ps01")
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'course'\nc.Execute.timeout = 300\n"
    )
    _nbgrader(["generate_assignment", "ps01", "--create", "--force"], course)
    release = nbformat.read(course / "release" / "ps01" / f"{LECTURE}.ipynb", as_version=4)
    ours = [(c.cell_type, c.source) for c in EXERCISE.cells[2:]]  # not the Colab cells
    theirs = [(c.cell_type, c.source) for c in release.cells[2:]]
    assert theirs == ours, "nbgrader's release differs from exercises/"
    for student, nb in (("alice", SOLUTION), ("bob", release)):
        folder = course / "submitted" / student / "ps01"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{LECTURE}.ipynb")
    _nbgrader(["autograde", "ps01", "--create", "--force"], course)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as book:
        alice = book.find_submission("ps01", "alice")
        bob = book.find_submission("ps01", "bob")
        assert alice.code_score == sum(AUTO.values())
        assert bob.code_score == 0
        assert alice.needs_manual_grade
