"""dlai_diffusion: the companion package of the course "Diffusion, scores and flows".

One module per idea of the course; see the README's course map for where each is taught.
"""

from .config import FAST, device, fast_or, seed_everything, widgets_enabled

__version__ = "0.1.0"

__all__ = ["FAST", "device", "fast_or", "seed_everything", "widgets_enabled", "__version__"]
