"""Fast mode, device choice and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

import dlai_diffusion as dd
from dlai_diffusion import config


def test_pytest_runs_the_course_in_fast_mode():
    assert dd.FAST, "conftest.py sets DLAI_FAST=1 unless the caller chose otherwise"


@pytest.mark.parametrize("value, fast", [("1", True), ("true", True), ("0", False), ("", False)])
def test_fast_or_follows_the_environment(monkeypatch, value, fast):
    monkeypatch.setenv("DLAI_FAST", value)
    assert dd.fast_or(full=20_000, fast=50) == (50 if fast else 20_000)


def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dd.device() == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dd.device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dd.device() == torch.device("cuda")


def test_seed_everything_makes_every_rng_repeat():
    def draw():
        gen = dd.seed_everything(123)
        return (
            random.random(),
            np.random.rand(),
            torch.rand(1).item(),
            torch.rand(1, generator=gen).item(),
        )

    assert draw() == draw()


def test_seed_must_be_an_int():
    with pytest.raises(TypeError, match="seed"):
        config.seed_everything(1.5)


def test_widgets_can_be_switched_off(monkeypatch):
    from dlai_diffusion.config import widgets_enabled

    monkeypatch.setenv("DLAI_WIDGETS", "0")
    assert widgets_enabled() is False
    monkeypatch.setenv("DLAI_WIDGETS", "1")
    pytest.importorskip("ipywidgets")
    assert widgets_enabled() is True


def test_progress_bars_are_off_in_fast_mode_and_headless_runs(monkeypatch):
    monkeypatch.setenv("DLAI_FAST", "0")
    monkeypatch.setenv("DLAI_WIDGETS", "1")
    assert config.progress_enabled() is True
    monkeypatch.setenv("DLAI_WIDGETS", "0")
    assert config.progress_enabled() is False
    monkeypatch.setenv("DLAI_WIDGETS", "1")
    monkeypatch.setenv("DLAI_FAST", "1")
    assert config.progress_enabled() is False


def test_set_threads_follows_the_kind_of_work():
    before = torch.get_num_threads()
    try:
        assert config.set_threads("small") == 1 == torch.get_num_threads()
        cores = os.cpu_count() or 1
        assert config.set_threads("images") == cores == torch.get_num_threads()
        with pytest.raises(ValueError, match="kind"):
            config.set_threads("huge")
    finally:
        torch.set_num_threads(before)


def test_setup_seeds_and_styles_figures_outside_ipython():
    import matplotlib

    before = torch.get_num_threads()
    try:
        gen = config.setup(seed=3)
        assert torch.rand(1, generator=gen).item() == torch.rand(
            1, generator=torch.Generator().manual_seed(3)
        ).item()
        assert matplotlib.rcParams["figure.dpi"] >= 100
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
