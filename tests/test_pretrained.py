"""Course models: recipes as data, safetensors weights verified against the manifest."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from dlai_diffusion import pretrained, recipes

TINY = dataclasses.replace(
    recipes.get("cfg-mnist"), network=dict(preset="tiny", n_classes=10), steps=2, batch_size=4
)


@pytest.fixture()
def shelf(tmp_path, monkeypatch):
    """An empty model folder in place of the package's, holding a tiny cfg model."""
    monkeypatch.setattr(pretrained, "folder", lambda: tmp_path)
    torch.manual_seed(0)
    net = recipes.build_model(TINY)
    digest = pretrained.save_weights(net, tmp_path / "cfg-mnist.safetensors")
    record = {"file": "cfg-mnist.safetensors", "sha256": digest, "recipe": TINY.as_dict(),
              "quality": {"fid": 1.0}}
    pretrained.write_record("cfg-mnist", record)
    return tmp_path, net


def test_load_returns_the_half_precision_weights_ready_to_sample(shelf):
    _, net = shelf
    model = pretrained.load("cfg-mnist", device="cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x, t, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10])
    expected = pretrained.half_precision_copy(net).eval()(x, t, y)
    assert torch.equal(model(x, t, y), expected)
    assert not torch.equal(net.eval()(x, t, y), expected)  # the rounding is real


def test_info_is_the_manifest_record(shelf):
    record = pretrained.info("cfg-mnist")
    assert record["quality"] == {"fid": 1.0} and record["recipe"] == TINY.as_dict()
    assert pretrained.available() == ["cfg-mnist"]


def test_a_changed_byte_fails_the_checksum_before_parsing(shelf):
    folder, _ = shelf
    path = folder / "cfg-mnist.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="cfg-mnist.safetensors.*checksum") as e:
        pretrained.load("cfg-mnist")
    assert "scripts/pretrain.py cfg-mnist" in str(e.value)


def test_a_missing_file_names_the_file_and_the_command(shelf):
    folder, _ = shelf
    (folder / "cfg-mnist.safetensors").unlink()
    with pytest.raises(pretrained.PretrainedError, match="missing.*scripts/pretrain.py cfg-mnist"):
        pretrained.load("cfg-mnist")


def test_unknown_names_are_refused(shelf):
    with pytest.raises(ValueError, match="name must be one of"):
        pretrained.load("gan-mnist")
    with pytest.raises(ValueError, match="recipe must be one of"):
        recipes.get("gan-mnist")


def test_weights_are_stored_without_pickle(shelf):
    folder, _ = shelf
    header_size = int.from_bytes((folder / "cfg-mnist.safetensors").read_bytes()[:8], "little")
    header = json.loads((folder / "cfg-mnist.safetensors").read_bytes()[8 : 8 + header_size])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {"F16"}


def test_recipe_runs_and_resumes_exactly(tmp_path):
    _, whole = recipes.run(TINY, tmp_path / "a", subset=True, progress=False)
    recipes.run(TINY, tmp_path / "b", steps=1, subset=True, progress=False)
    _, resumed = recipes.run(TINY, tmp_path / "b", subset=True, progress=False)
    assert resumed.losses == whole.losses and resumed.steps == TINY.steps


def test_recipes_are_plain_data_and_checked():
    for recipe in recipes.RECIPES.values():
        data = recipe.as_dict()
        assert json.loads(json.dumps(data)) == data
        assert recipes.Recipe(**data).as_dict() == data
    with pytest.raises(ValueError, match="steps"):
        dataclasses.replace(TINY, steps=0)
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(TINY, kind="gan")
    gpu = recipes.get("cfg-mnist").on("cuda")
    assert gpu.network["preset"] == "base" and gpu.cuda == {}
    assert recipes.get("cfg-mnist").on("cpu") is recipes.get("cfg-mnist")


def test_shipped_models_match_their_manifest_and_stay_small():
    names = pretrained.available()
    assert {"cfg-mnist"} <= set(names)  # what this release ships
    total = 0
    for name in names:
        record = pretrained.info(name)
        path = pretrained.folder() / record["file"]
        assert pretrained.sha256(path) == record["sha256"], name
        assert record["recipe"] == recipes.get(name).as_dict(), name  # traceable to its recipe
        total += path.stat().st_size
    assert total <= 25 * 2**20


@pytest.mark.parametrize("name", ["ddpm-mnist", "flow-mnist"])
def test_every_course_recipe_builds_and_its_loss_trains(name, tmp_path):
    small = dataclasses.replace(recipes.get(name), network=dict(preset="tiny"), steps=3,
                                batch_size=4)
    _, result = recipes.run(small, tmp_path, subset=True, progress=False)
    assert result.steps == 3 and all(math.isfinite(v) for v in result.losses)
    untrained = recipes.build_model(small)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([0.1, 0.9] if name == "flow-mnist" else [1, 999])
    assert untrained(x, t).shape == x.shape
