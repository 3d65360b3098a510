"""scripts/pretrain.py end to end on tiny versions of the course recipes: train (resumable),
evaluate on the half-precision weights, ship safetensors with a manifest record."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import torch

from dlai_diffusion import pretrained, recipes

ROOT = Path(__file__).resolve().parents[1]


def _script():
    path = ROOT / "scripts" / "pretrain.py"
    spec = importlib.util.spec_from_file_location("pretrain_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrain_trains_measures_and_ships_tiny_models(tmp_path, monkeypatch):
    small = dict(steps=4, batch_size=8, checkpoint_every=2)
    ddpm = dataclasses.replace(
        recipes.get("ddpm-mnist"), network=dict(preset="tiny"),
        process=dict(schedule="linear", T=25), **small)
    cfg = dataclasses.replace(
        recipes.get("cfg-mnist"), network=dict(preset="tiny", n_classes=10),
        process=dict(schedule="linear", T=25, p_uncond=0.2), **small)
    classifier = dataclasses.replace(
        recipes.get("noisy-classifier-mnist"), network=dict(channels=8),
        process=dict(schedule="linear", T=25), **small)
    flow = dataclasses.replace(recipes.get("flow-mnist"), network=dict(preset="tiny"), **small)
    monkeypatch.setitem(recipes.RECIPES, "ddpm-mnist", ddpm)
    monkeypatch.setitem(recipes.RECIPES, "flow-mnist", flow)
    monkeypatch.setitem(recipes.RECIPES, "cfg-mnist", cfg)
    monkeypatch.setitem(recipes.RECIPES, "noisy-classifier-mnist", classifier)
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    monkeypatch.setattr(pretrained, "folder", lambda: shelf)
    script = _script()
    threads = torch.get_num_threads()
    try:
        common = ["--n", "20", "--subset", "--threads", "1", "--ode-tol", "1e-2"]
        script.main(["ddpm-mnist", "--work", str(tmp_path / "a"), "--phase", "train",
                     "--steps", "2", *common])
        assert pretrained.available() == []  # stopped early: nothing shipped
        script.main(["ddpm-mnist", "--work", str(tmp_path / "a"), *common])  # resumes, ships
        script.main(["cfg-mnist", "--work", str(tmp_path / "c"), *common])
        script.main(["noisy-classifier-mnist", "--work", str(tmp_path / "b"), *common])
        script.main(["flow-mnist", "--work", str(tmp_path / "d"), *common])
    finally:
        torch.set_num_threads(threads)

    assert pretrained.available() == ["cfg-mnist", "ddpm-mnist", "flow-mnist",
                                      "noisy-classifier-mnist"]
    record = pretrained.info("ddpm-mnist")
    assert record["steps"] == 4 and record["images_seen"] == 32 and record["device"] == "cpu"
    assert record["recipe"] == ddpm.as_dict() and len(record["train_sessions"]) == 2
    quality = record["quality"]
    assert quality["fid_ancestral"] > quality["fid_floor"] > 0  # an untrained model is far off
    assert set(quality["fid_ddim_eta0"]) == {"10", "20"}  # DDIM steps up to T = 25
    assert quality["likelihood_digits"] == 20 and quality["bits_per_dim_bound"] > 0
    assert set(pretrained.info("cfg-mnist")["quality"]["accuracy"]) == {
        "0.0", "0.5", "1.0", "2.0", "4.0"}
    assert pretrained.info("cfg-mnist")["recipe"] == cfg.as_dict()
    guided = pretrained.info("noisy-classifier-mnist")["quality"]
    assert guided["clean_test_digits"] == 1000 and 0 <= guided["best_accuracy"] <= 1
    assert guided["guided_model"] == "ddpm-mnist" and len(guided["guided_accuracy"]) == 6
    flow_quality = pretrained.info("flow-mnist")["quality"]
    assert set(flow_quality["fid_euler"]) == {"1", "2", "4", "8", "16"}
    assert set(flow_quality["fid_ddim_same_evaluations"]) == set(flow_quality["fid_euler"])
    assert flow_quality["heun_evaluations"] == 40 and flow_quality["fid_heun"] > 0
    model = pretrained.load("ddpm-mnist", "cpu")
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([0, 24])).shape == x.shape
    assert pretrained.sha256(shelf / "ddpm-mnist.safetensors") == record["sha256"]
