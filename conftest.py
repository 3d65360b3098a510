"""pytest runs the course in fast mode unless the caller chose otherwise.

Set here, before any notebook kernel starts, so the kernels inherit it.
"""

import os

os.environ.setdefault("DLAI_FAST", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("DLAI_WIDGETS", "0")  # no sliders in headless kernels (see config)


def pytest_configure(config):
    # The tests run tiny models, for which extra threads only add synchronisation cost
    # (measured: 7 s against 80 s for a 200-step toy run on a busy two-core machine).
    import torch

    torch.set_num_threads(1)
