"""``python -m dlai_diffusion ...`` is the same as ``dlai-diffusion ...``."""

from .cli import main

raise SystemExit(main())
