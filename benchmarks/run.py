"""Run the benchmarks and write the report.

    python benchmarks/run.py                  # everything, real sizes (~2.5 h on 2 CPU cores)
    python benchmarks/run.py --quick          # tiny sizes: a few minutes on 2 CPU cores
    python benchmarks/run.py --only toy2d likelihood
    python benchmarks/run.py --report-only    # rewrite REPORT.md from benchmarks/results/

Each section saves ``benchmarks/results/<section>.json`` (rows, sizes, targets, wall time);
the report is then generated from those files. A run of every section starts from an empty
results folder; ``--only`` replaces just the sections it names. In quick mode the ``pytest``
section is skipped unless ``--pytest`` is given (it takes about as long as the test suite);
``--skip-pytest`` skips it in full mode too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common, report  # noqa: E402


def _sections() -> dict:
    from benchmarks import likelihood, mnist, notebooks, throughput, toy2d

    return {
        "toy2d": toy2d.run,
        "likelihood": likelihood.run,
        "mnist": mnist.run,
        "throughput": throughput.run,
        "notebooks": notebooks.notebooks,
        "pytest": notebooks.pytest_run,
    }


SECTIONS = ["toy2d", "likelihood", "mnist", "throughput", "notebooks", "pytest"]


def run_section(name: str, fn, quick: bool, command: str = "") -> common.SectionResult:
    """Run one section; a failure becomes a result whose note holds the error, not a crash.
    The result records the command, the commit and the load average before and after, since
    sections are often run (and rerun) one at a time with ``--only``."""
    run = {"command": command, "commit": common.commit(), "load_before": common.load_average()}
    start = time.perf_counter()
    try:
        result = fn(quick)
    except Exception as error:
        tail = traceback.format_exc().strip().splitlines()[-3:]
        result = common.SectionResult(name=name, title=name, mode=common.mode_name(quick), sizes={})
        result.notes.append(f"section failed: {type(error).__name__}: {error}")
        result.notes.extend(f"`{line.strip()}`" for line in tail[:-1])
        result.targets.append(common.Target(name, "section runs", "section failed", None))
    result.seconds = time.perf_counter() - start
    result.finished = common.now_utc()
    result.run = {**run, "load_after": common.load_average()}
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a few minutes)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only these sections: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=common.ROOT / "benchmarks" / "REPORT.md",
        help="the report to write (default benchmarks/REPORT.md)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=common.RESULTS,
        help="folder of the JSON results (default benchmarks/results)",
    )
    parser.add_argument("--skip-pytest", action="store_true", help="do not time pytest")
    parser.add_argument("--pytest", action="store_true", help="time pytest in quick mode too")
    parser.add_argument(
        "--report-only", action="store_true", help="only rewrite the report from the saved results"
    )
    return parser.parse_args(argv)


def chosen_sections(args: argparse.Namespace) -> list[str]:
    """The sections to run: pytest is left out with --skip-pytest, and in quick mode unless
    asked for (--pytest, or named in --only)."""
    names = list(args.only or SECTIONS)
    wanted = not args.skip_pytest and (not args.quick or args.pytest or bool(args.only))
    if "pytest" in names and not wanted:
        names.remove("pytest")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.report_only:
        names = chosen_sections(args)
        args.results.mkdir(parents=True, exist_ok=True)
        if not args.only:  # a complete run: no result of an earlier run may remain
            for old in args.results.glob("*.json"):
                old.unlink()
        machine = common.machine()
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python benchmarks/run.py", *given])
        machine["command"] = command
        (args.results / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
        sections = _sections()
        for name in names:
            print(f"[benchmarks] {name} ({common.mode_name(args.quick)}) ...", flush=True)
            result = run_section(name, sections[name], args.quick, command)
            common.save(result, args.results)
            print(f"[benchmarks] {name}: {result.seconds:.1f} s", flush=True)
            for target in result.targets:
                print(f"    {target.name}: {target.verdict} ({target.value})", flush=True)
    report.write(args.out, args.results)
    print(f"[benchmarks] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
