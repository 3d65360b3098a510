"""The course's pretrained models: ``load(name)``, ``info(name)``, ``available()``.

The image lectures analyse models trained once by ``scripts/pretrain.py NAME`` from the
recipes of :mod:`dlai_diffusion.recipes`, so that their figures and asserts do not hang on a
long run. The weights ship with the package in half precision, in the safetensors format (no
pickle on this path), and a manifest (``assets/pretrained/manifest.json``) records for each
model its file's SHA-256, the recipe, the steps, images seen, wall time, device, PyTorch
version, commit, parameter count and the quality measured on the shipped weights.

Every file is checked against its SHA-256 *before* it is parsed; a missing or altered file
raises :class:`PretrainedError` naming the file and the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PretrainedError", "available", "info", "load"]

FORMAT = "dlai_diffusion.pretrained/1"
MANIFEST = "manifest.json"


class PretrainedError(RuntimeError):
    """A course model cannot be loaded: its file is missing or fails its checksum."""


def folder() -> Path:
    """Where the manifest and the weights live (inside the installed package)."""
    return Path(str(resources.files("dlai_diffusion") / "assets" / "pretrained"))


def _manifest(where: Path | None = None) -> dict[str, Any]:
    path = (where or folder()) / MANIFEST
    if not path.is_file():
        return {"format": FORMAT, "models": {}}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise PretrainedError(f"{path} is not a {FORMAT} manifest")
    return manifest


def available() -> list[str]:
    """Names of the shipped course models."""
    return sorted(_manifest()["models"])


def _entry(name: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    models = manifest["models"]
    if not isinstance(name, str) or name not in models:
        raise ValueError(f"name must be one of {sorted(models)}, got {name!r}")
    return dict(models[name])


def info(name: str) -> dict[str, Any]:
    """The record of ``name``: how it was trained (``recipe``, ``steps``, ``images_seen``,
    ``train_seconds``, ``device``, ``threads``, ``torch``, ``commit``, ``parameters``) and the
    quality measured on the shipped weights (``quality``)."""
    return _entry(name, _manifest())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rebuild_hint(recipe_name: str) -> str:
    return (
        f"rebuild it with `DLAI_DATA=<folder with mnist/> python scripts/pretrain.py "
        f"{recipe_name}` from the course repository, or reinstall the package"
    )


def read_weights(path: Path, expected_sha256: str, recipe_name: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file, after checking its SHA-256 (before parsing)."""
    from safetensors.torch import load as load_safetensors

    if not path.is_file():
        raise PretrainedError(f"weights file {path} is missing: {_rebuild_hint(recipe_name)}")
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != expected_sha256:
        raise PretrainedError(
            f"weights file {path} fails its checksum (SHA-256 {found}, the manifest says "
            f"{expected_sha256}): the file is damaged or was changed; {_rebuild_hint(recipe_name)}"
        )
    return load_safetensors(data)


def load(name: str, device: torch.device | str | None = None) -> nn.Module:
    """The course model ``name`` ready to sample: EMA weights in float32, eval mode, on
    ``device`` (default :func:`dlai_diffusion.device`), gradients of its weights off."""
    from .config import device as best_device
    from .recipes import Recipe, build_model

    record = info(name)
    recipe = Recipe(**record["recipe"])
    tensors = read_weights(folder() / record["file"], record["sha256"], recipe.name)
    net = build_model(recipe)
    net.load_state_dict({k: v.float() for k, v in tensors.items()})
    net.requires_grad_(False)
    return net.eval().to(best_device() if device is None else torch.device(device))


def save_weights(model: nn.Module, path: Path) -> str:
    """Write ``model``'s state as half-precision safetensors (atomically); return its SHA-256."""
    from safetensors.torch import save as save_safetensors

    state = {k: v.detach().to("cpu", torch.float16).contiguous()
             for k, v in model.state_dict().items()}
    data = save_safetensors(state)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def half_precision_copy(model: nn.Module) -> nn.Module:
    """``model`` with weights rounded to float16 and back: what :func:`load` returns for it."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in list(out.parameters()) + list(out.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().to(tensor.dtype))
    return out


def write_record(name: str, record: Mapping[str, Any], where: Path | None = None) -> None:
    """Add or replace ``name`` in the manifest (atomically)."""
    where = where or folder()
    manifest = _manifest(where)
    manifest["models"][name] = dict(record)
    manifest["models"] = dict(sorted(manifest["models"].items()))
    path = where / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
