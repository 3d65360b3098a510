"""The command line path: train, resume, sample, evaluate (toy data and MNIST)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dlai_diffusion import runs, toy
from dlai_diffusion.metrics import compare_to_floor
from dlai_diffusion.train import CHECKPOINT_NAME, load_checkpoint

FAST_SAMPLING = {"n_steps": 20}
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    metrics = runs.train_run("dsm", out, steps=30, options=FAST_SAMPLING, n_eval=300)
    return out, metrics


def test_a_run_writes_config_checkpoint_figure_and_metrics(toy_run):
    out, metrics = toy_run
    for name in ("config.json", CHECKPOINT_NAME, "samples.png", "samples.pt", "metrics.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "dsm" and config["data"] == "moons" and config["steps"] == 30
    assert config["options"]["n_steps"] == 20 and config["options"]["sigma"] == 0.2
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    for name in ("sliced_wasserstein", "energy_distance"):
        assert metrics[name]["ratio"] == pytest.approx(
            metrics[name]["value"] / metrics[name]["floor"]
        )
    assert torch.load(out / "samples.pt", weights_only=True).shape == (300, 2)


def test_training_again_resumes_from_the_checkpoint(toy_run, tmp_path):
    out, _ = toy_run
    runs.train_run("dsm", out, steps=40, options=FAST_SAMPLING, n_eval=100)
    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert state["step"] == 40 and len(state["losses"]) == 40


def test_a_directory_is_not_reused_for_another_model(toy_run):
    out, _ = toy_run
    with pytest.raises(ValueError, match="different"):
        runs.train_run("dsm", out, steps=40, options={"sigma": 0.5})


def test_sample_draws_the_requested_number(toy_run):
    out, _ = toy_run
    assert runs.sample_run(out, n=17).shape == (17, 2)


def test_training_improves_on_the_initial_noise(tmp_path):
    """A short run must already beat the uniform noise that Langevin starts from."""
    metrics = runs.train_run("dsm", tmp_path, steps=200, n_eval=400)
    noise = (torch.rand(400, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 3
    reference = compare_to_floor(noise, lambda n, g: toy.sample("moons", n, g), "energy_distance")
    assert metrics["energy_distance"]["ratio"] < reference.ratio / 3


def test_mnist_run_reports_classifier_metrics(tmp_path):
    metrics = runs.train_run(
        "dsm", tmp_path, data="mnist", steps=2, batch_size=8, options={"n_steps": 2}, n_eval=50
    )
    assert metrics["data"] == "mnist"
    assert metrics["classifier_fid"] > 0 and 0 < metrics["classifier_confidence"] <= 1
    assert torch.load(tmp_path / "samples.pt", weights_only=True).shape == (50, 1, 28, 28)


def test_bad_names_and_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="model must be one of"):
        runs.train_run("no-such-model", tmp_path)
    with pytest.raises(ValueError, match="data must be one of"):
        runs.data_source("imagenet", 8)
    with pytest.raises(ValueError, match="unknown option"):
        runs.train_run("dsm", tmp_path, options={"temperature": 1})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        runs._parse_options(["sigma"])
    with pytest.raises(ValueError, match="run must be a directory"):
        runs.sample_run(tmp_path / "missing")


def test_options_are_parsed_as_python_literals():
    assert runs._parse_options(["sigma=0.5", "preset=tiny", "n_steps=3"]) == {
        "sigma": 0.5,
        "preset": "tiny",
        "n_steps": 3,
    }


def test_cli_lists_the_registered_models():
    out = subprocess.run(
        [sys.executable, "-m", "dlai_diffusion", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=ONE_THREAD,
    ).stdout
    assert "dsm" in out and "--option" in out


def test_cli_trains_and_evaluates(tmp_path):
    run = tmp_path / "cli-run"
    common = [sys.executable, "-m", "dlai_diffusion"]
    subprocess.run(
        [*common, "train", "dsm", "--steps", "5", "--out", str(run), "--option", "n_steps=5"],
        check=True,
        capture_output=True,
        env=ONE_THREAD,
    )
    out = subprocess.run(
        [*common, "evaluate", str(run), "--n", "64"],
        check=True,
        capture_output=True,
        text=True,
        env=ONE_THREAD,
    ).stdout
    assert json.loads(out)["n"] == 64


def test_command_line_models_are_recipes_and_lecture_modules_do_not_import_runs():
    from dlai_diffusion import recipes

    assert set(runs.models()) == {"dsm", "ebm", "ncsn", "ddpm", "dpm", "flow"}
    assert all(runs.models()[k] is recipes.get(k) for k in runs.models())
    code = (
        "import sys\n"
        "import dlai_diffusion.score_matching, dlai_diffusion.ebm, dlai_diffusion.ncsn\n"
        "import dlai_diffusion.ddpm, dlai_diffusion.dpm, dlai_diffusion.flow_matching\n"
        "assert 'dlai_diffusion.runs' not in sys.modules\n"
        "assert 'dlai_diffusion.recipes' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=ONE_THREAD)
    with pytest.raises(ValueError, match="command-line model"):
        recipes.build_model(recipes.get("dsm"))


def test_zero_is_a_value_not_the_default(tmp_path):
    with pytest.raises(ValueError, match="lr must be a positive finite number, got 0"):
        runs.train_run("dsm", tmp_path / "a", lr=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        runs.train_run("dsm", tmp_path / "b", batch_size=0)
    with pytest.raises(ValueError, match="lr must be a positive finite number, got nan"):
        runs.train_run("dsm", tmp_path / "c", lr=float("nan"))
