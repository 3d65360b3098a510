"""Benchmarks of the course: speed and sample quality, written up in ``benchmarks/REPORT.md``.

Run everything with ``python benchmarks/run.py`` (``--quick`` for a smoke run of a few
minutes); see ``benchmarks/README.md``.
"""
