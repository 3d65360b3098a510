"""Command line: ``dlai-diffusion COMMAND ...`` (also ``python -m dlai_diffusion``)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlai-diffusion",
        description="Companion tools of the course 'Diffusion, scores and flows'.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from . import exercises, grading, runs

    runs.add_parsers(sub)
    exercises.add_parser(sub)
    grading.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)
