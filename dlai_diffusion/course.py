"""Where the course lives: the single place that knows the repository's public address.

Colab badges and the Colab install cell of every notebook are derived from ``REPO``;
``dlai-diffusion make-exercises`` rewrites them, and a test checks that every committed
notebook agrees with this file. To move the course, change ``REPO`` and ``BRANCH`` and
run ``dlai-diffusion make-exercises``.
"""

from __future__ import annotations

REPO = "dlai-course/diffusion-scores-flows"
"""GitHub ``owner/name`` of the course repository."""

BRANCH = "main"

BADGE_MARKER = "<!-- colab-badge -->"
INSTALL_MARKER = "# colab-install"


def repo_url() -> str:
    """The repository's public HTTPS address."""
    return f"https://github.com/{REPO}"


def colab_url(path: str) -> str:
    """Address that opens the notebook at ``path`` (relative to the repo root) in Colab."""
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/{path}"


def colab_badge(path: str) -> str:
    """Markdown line with an "Open in Colab" badge for the notebook at ``path``."""
    return (
        f"{BADGE_MARKER}[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"({colab_url(path)})"
    )


def colab_install_source() -> str:
    """Source of the setup cell: installs the package only when running inside Colab."""
    return (
        f"{INSTALL_MARKER}: installs the course package when this notebook runs in Colab.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "dlai_diffusion @ git+{repo_url()}@{BRANCH}"\n'
    )
