"""pyproject.toml and environment.yml ask for the same things; the CLI is wired."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _split(requirement: str) -> tuple[str, str]:
    """'torch>=2.2,<3' -> ('torch', '<3,>=2.2'): a normalised name and sorted specifiers."""
    requirement = requirement.split(";")[0].strip()
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", requirement)
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    specifiers = ",".join(sorted(s.strip() for s in match.group(2).split(",") if s.strip()))
    return name, specifiers


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    marked = [r for r in wanted if ";" in r]  # environment markers (e.g. tomli on 3.10 only)
    return dict(_split(r) for r in wanted if r not in marked)


def _environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            if item.startswith("-e") or item.split(">")[0].split("=")[0] in {"python", "pip"}:
                continue
            name, spec = _split(item)
            found[name] = spec
    return found


def test_environment_yml_matches_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_split_normalises_requirements():
    assert _split("Scikit_Learn >=1.3") == ("scikit-learn", ">=1.3")
    assert _split("torch>=2.2,<3") == ("torch", "<3,>=2.2")


def test_torch_range_admits_the_tested_release():
    spec = _pyproject_requirements()["torch"]
    assert ">=2.2" in spec and "<3" in spec  # 2.13 lies inside


def test_console_script_and_module_entry_point_agree():
    out = subprocess.run(
        [sys.executable, "-m", "dlai_diffusion", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "make-exercises" in out
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dlai-diffusion"] == "dlai_diffusion.cli:main"
