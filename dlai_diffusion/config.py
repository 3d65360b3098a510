"""Course-wide switches: fast mode, device choice, seeding, threads and the notebook set-up.

Fast mode (``DLAI_FAST=1``) shrinks every notebook to a smoke test that CI can run on
two CPU cores; the default is full mode, the sizes a student should use. ``DLAI_WIDGETS=0``
marks a headless run (pytest, the grader, the benchmarks): the notebooks' sliders become
static figures and progress bars are off (see :func:`widgets_enabled`).

Every notebook starts with ``gen = dd.setup(seed=0)`` (:func:`setup`).
"""

from __future__ import annotations

import os
import random
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


FAST: bool = _env_flag("DLAI_FAST")
"""True when the environment variable ``DLAI_FAST`` is set to 1 (CI and ``pytest`` set it)."""


def fast_or(full: T, fast: T) -> T:
    """Return ``fast`` in fast mode and ``full`` otherwise: ``steps = fast_or(20_000, 50)``."""
    return fast if _env_flag("DLAI_FAST") else full


def widgets_enabled() -> bool:
    """Whether notebooks should show interactive sliders: ipywidgets is installed and
    ``DLAI_WIDGETS`` is not 0. Headless runs (pytest, the grader, the benchmarks) set it to 0:
    executing a cell that creates widgets without a browser can block the executing client
    (nbclient issue #312), so such cells then draw their default view once instead."""
    if _widgets_switched_off():
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress_enabled() -> bool:
    """Whether long loops show a progress bar: not in fast mode, not in headless runs
    (``DLAI_WIDGETS=0``), where a bar saved into a notebook's output would stay frozen."""
    return not _env_flag("DLAI_FAST") and not _widgets_switched_off()


def _widgets_switched_off() -> bool:
    return os.environ.get("DLAI_WIDGETS", "1").strip().lower() in {"0", "false", "no", "off"}


THREADS = {"small": 1, "images": None}
"""CPU threads per kind of work (``None``: every core), measured on a 2-core CPU: a 2D MLP
(128 wide, batch 512) trains about 1.2x faster on one thread than on two on a busy machine
(181-196 against 147-165 steps/s, load average 2.8), since more threads only add overhead
and wait for each other; a U-Net on MNIST trains about 1.45x faster on 2 threads than on 1
(the ``small`` preset, batch 128, bf16, idle machine: 158 against 109 images/s)."""


def set_threads(kind: str) -> int:
    """Use the CPU thread count for ``kind`` (``"small"`` or ``"images"``, see :data:`THREADS`);
    returns it. Has no effect on a GPU's speed."""
    if kind not in THREADS:
        raise ValueError(f"kind must be one of {sorted(THREADS)}, got {kind!r}")
    threads = THREADS[kind] or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


FIGURE_STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.framealpha": 0.85,
    "image.interpolation": "nearest",
}
"""Matplotlib settings of every notebook: 110 dpi PNG (tick labels about 14 px high)."""


def compact_png(figure) -> bytes:
    """``figure`` as a PNG with an adaptive 256-colour palette: about 4x smaller than
    matplotlib's true-colour PNG and indistinguishable for plots (a colormap has 256 colours
    to begin with), which keeps every lecture with its figures under about 1.5 MB."""
    import io

    from IPython.core.pylabtools import print_figure
    from PIL import Image

    image = Image.open(io.BytesIO(print_figure(figure, "png", bbox_inches="tight")))
    buffer = io.BytesIO()
    image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(
        buffer, "PNG", optimize=True
    )
    return buffer.getvalue()


def setup(seed: int = 0, threads: str = "small") -> torch.Generator:
    """The set-up of every notebook: seed everything (:func:`seed_everything`), draw figures
    inline as 110 dpi PNG (:func:`compact_png`) with legible fonts (:data:`FIGURE_STYLE`) and
    choose the CPU threads for the work that follows (:func:`set_threads`). Returns the
    seeded generator.

    Outside IPython only the seeds, the style and the threads are set.
    """
    generator = seed_everything(seed)
    set_threads(threads)
    import matplotlib

    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebooks
        get_ipython = None
    shell = get_ipython() if get_ipython is not None else None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        shell.run_line_magic("matplotlib", "inline")
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
        from matplotlib.figure import Figure

        shell.display_formatter.formatters["image/png"].for_type(Figure, compact_png)
    matplotlib.rcParams.update(FIGURE_STYLE)
    return generator


def device() -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a CPU generator seeded alike.

    Library functions never use the global RNG when given a ``generator``; seeding the
    global state as well makes notebook cells that do not pass one reproducible too.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
