"""The benchmark harness: tables, targets, JSON round trip, the report, and one tiny section
run end to end through the command line (microscopic sizes; the real runs live in
``benchmarks/run.py``)."""

from __future__ import annotations

import json
import math

from benchmarks import common, likelihood, report, run, toy2d
from benchmarks.common import SectionResult, Target


def test_cells_are_compact_and_tables_are_well_formed():
    assert common.fmt(None) == "—"
    assert common.fmt(1.23456) == "1.23"
    assert common.fmt(0.012345) == "0.012"
    assert common.fmt(123456.0) == "1.23e+05"
    assert common.fmt(math.nan) == "nan"
    assert common.fmt("a|b") == "a\\|b"
    table = common.markdown_table([{"a": 1, "b": 2.5}, {"a": 3, "c": True}]).splitlines()
    assert table[0] == "| a | b | c |"
    assert table[1] == "|---|---|---|"
    assert table[3] == "| 3 | — | yes |"
    assert all(line.count("|") == 4 for line in table)


def test_results_survive_the_json_round_trip(tmp_path):
    result = SectionResult("demo", "Demo", "quick", {"n": 3}, rows=[{"x": 1.5}])
    result.targets.append(Target("goal", "≤ 2", "1.5", True))
    common.save(result, tmp_path)
    (loaded,) = common.load_all(tmp_path)
    assert loaded == result
    assert json.loads((tmp_path / "demo.json").read_text())["sizes"] == {"n": 3}


def test_the_report_states_machine_targets_and_sections():
    results = [
        SectionResult("toy2d", "2D quality", "quick", {"steps": 5}, rows=[{"model": "ddpm"}]),
        SectionResult("pytest", "pytest", "quick", {}),
    ]
    results[0].targets = [Target("2D ddpm", "≤ 1.5", "worst 1.7", False)]
    results[1].targets = [Target("pytest", "≤ 15 min", "skipped", None)]
    machine = {"date": "2026-01-01 00:00:00 UTC", "cpu": "X", "cores": 2, "torch": "2.x"}
    text = report.render(results, machine)
    assert text.startswith("# Benchmarks")
    assert "2026-01-01" in text and "| torch | 2.x |" in text
    targets = text.split("## Targets")[1].split("## Sections")[0]
    assert "| 2D ddpm | ≤ 1.5 | worst 1.7 | not met | quick |" in targets
    assert "not measured" in targets
    assert text.index("## 2D quality") < text.index("## pytest")  # course order


def test_a_model_is_held_to_its_worst_ratio():
    rows = [
        {"model": "ddpm", "sampler": "a", "data": "moons", "sw_ratio": 1.2, "ed_ratio": 1.4},
        {"model": "ddpm", "sampler": "a", "data": "rings", "sw_ratio": 1.6, "ed_ratio": 1.1},
        {"model": "ebm", "sampler": "b", "data": "moons", "sw_ratio": 1.9, "ed_ratio": 1.0},
        {"model": "ncsn", "sampler": "c", "data": "moons", "sw_ratio": math.nan, "ed_ratio": 1},
        {"model": "dsm", "sampler": "d", "data": "moons", "sw_ratio": 9.0, "ed_ratio": 9.0},
        {"model": "flow", "sampler": "e", "data": "moons", "error": "RuntimeError: boom"},
    ]
    targets = {t.name: t for t in toy2d.targets(rows)}
    assert targets["2D ddpm"].met is False and "1.60 (rings, sw)" in targets["2D ddpm"].value
    assert targets["2D ebm"].met is True
    assert targets["2D ncsn"].met is False  # non-finite samples fail
    assert "2D dsm" not in targets  # informative only
    assert targets["2D flow"].met is None and targets["2D flow"].value == "error while measuring"


def test_quick_mode_leaves_pytest_out_unless_asked():
    assert "pytest" not in run.chosen_sections(run.parse(["--quick"]))
    assert "pytest" in run.chosen_sections(run.parse(["--quick", "--pytest"]))
    assert "pytest" in run.chosen_sections(run.parse([]))
    assert "pytest" not in run.chosen_sections(run.parse(["--skip-pytest"]))
    assert run.chosen_sections(run.parse(["--only", "toy2d"])) == ["toy2d"]


def test_a_tiny_likelihood_section_runs_through_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setitem(likelihood.QUICK, "n_points", 4)
    monkeypatch.setitem(likelihood.QUICK, "learned_steps", 5)
    out = tmp_path / "REPORT.md"
    argv = ["--quick", "--only", "likelihood", "--results", str(tmp_path), "--out", str(out)]
    assert run.main(argv) == 0
    saved = json.loads((tmp_path / "likelihood.json").read_text())
    assert saved["sizes"]["n_points"] == 4 and saved["mode"] == "quick"
    exact = saved["rows"][0]
    assert exact["score"] == "exact" and exact["divergence"] == "exact"
    # with the exact score, the ODE estimate must agree with the closed form
    assert exact["mean_abs_error"] < likelihood.TOLERANCE
    assert saved["targets"][0]["met"] is True
    text = out.read_text()
    assert "ODE likelihood, exact score" in text and "| met |" in text
    assert json.loads((tmp_path / "machine.json").read_text())["torch"]


def test_a_section_records_its_command_commit_and_load(tmp_path, monkeypatch):
    monkeypatch.setitem(likelihood.QUICK, "n_points", 2)
    monkeypatch.setitem(likelihood.QUICK, "learned_steps", 2)
    argv = ["--quick", "--only", "likelihood", "--results", str(tmp_path)]
    assert run.main([*argv, "--out", str(tmp_path / "R.md")]) == 0
    saved = json.loads((tmp_path / "likelihood.json").read_text())["run"]
    assert saved["command"] == "python benchmarks/run.py " + " ".join(
        [*argv, "--out", str(tmp_path / "R.md")]
    )
    assert saved["commit"] and len(saved["load_before"]) == 3 and len(saved["load_after"]) == 3
    sections = (tmp_path / "R.md").read_text().split("## Sections")[1]
    assert "--only likelihood" in sections


def test_block_ratios_read_one_for_true_samples_and_more_for_a_blurred_copy():
    import torch

    from dlai_diffusion import toy

    generator = torch.Generator().manual_seed(0)
    true = toy.sample("8gaussians", 4000, generator)
    ratios = toy2d._ratios(true, "8gaussians", n=1000)
    # a perfect model, 4 blocks and 50 floors: one energy distance between true samples has a
    # coefficient of variation of about 0.6 (sliced Wasserstein 0.25), so a mean of 4 can
    # stray by ±30% (1 sd) from the floor
    assert 0.6 < ratios["sw_ratio"] < 1.4 and 0.4 < ratios["ed_ratio"] < 1.8
    blurred = true + 0.3 * torch.randn(4000, 2, generator=generator)  # std 0.1 -> 0.32
    ratios = toy2d._ratios(blurred, "8gaussians", 1000)
    assert ratios["sw_ratio"] > 1.2 and ratios["ed_ratio"] > 2.5
    assert math.isnan(toy2d._ratios(true * math.nan, "8gaussians", 1000)["sw_ratio"])
    try:
        toy2d._ratios(true[:1500], "8gaussians", 1000)
    except ValueError as error:
        assert "blocks of 1000" in str(error)
    else:
        raise AssertionError("a partial block must be refused")


def test_a_tiny_mnist_section_trains_measures_and_states_the_ddim_target(monkeypatch):
    from benchmarks import mnist

    tiny = {
        **mnist.QUICK,
        "T": 25,
        "batch_size": 8,
        "n_fid": 12,
        "checkpoints": {"ddpm": [1, 2], "ncsn": [1], "ebm": [1]},
        "ncsn": {"n_levels": 2, "n_steps_each": 1, "sigma_min": 0.01},
        "ebm": {"channels": 4, "n_steps": 1, "capacity": 16, "reinit_prob": 0.01},
        "curve_ddim_steps": 2,
        "ddim_steps": [2, 5],
        "etas": [0.0],
    }
    monkeypatch.setattr(mnist, "QUICK", tiny)
    result = mnist.run(quick=True)
    assert [(r["model"], r["steps"]) for r in result.rows] == [
        ("ddpm", 1),
        ("ddpm", 2),
        ("ncsn", 1),
        ("ebm", 1),
    ]
    assert all(math.isfinite(r["fid"]) and r["fid"] > 0 for r in result.rows)
    assert result.rows[1]["train_s"] >= result.rows[0]["train_s"]  # time accumulates
    (steps_table,) = result.extra_tables.values()
    assert [r["steps"] for r in steps_table] == [None, 25, 2, 5]  # floor, ancestral, DDIM
    (target,) = result.targets
    assert target.name == "MNIST DDIM 50 vs ancestral" and target.met is None  # no 50 steps
