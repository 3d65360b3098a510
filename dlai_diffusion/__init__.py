"""dlai_diffusion: the companion package of the course "Diffusion, scores and flows".

One module per idea of the course; see the README's course map for where each is taught.
"""

import os

# OpenMP reads this when PyTorch loads: idle threads sleep instead of spinning, which keeps
# several threads fast on a shared machine. Import dlai_diffusion before torch for it to apply.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import (  # noqa: E402
    FAST,
    device,
    fast_or,
    progress_enabled,
    seed_everything,
    set_threads,
    setup,
    widgets_enabled,
)

__version__ = "0.1.0"

__all__ = [
    "FAST",
    "device",
    "fast_or",
    "progress_enabled",
    "seed_everything",
    "set_threads",
    "setup",
    "widgets_enabled",
    "__version__",
]
