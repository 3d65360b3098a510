"""pytest runs the course in fast mode unless the caller chose otherwise.

Set here, before any notebook kernel starts, so the kernels inherit it.
"""

import os

os.environ.setdefault("DLAI_FAST", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
