"""Where the course lives: the single place that knows the repository's public address.

Colab badges and the Colab install cell of every notebook are derived from ``REPO``;
``dlai-diffusion make-exercises`` rewrites them, and a test checks that every committed
notebook agrees with this file. To move the course, change ``REPO`` and ``BRANCH`` and
run ``dlai-diffusion make-exercises``.
"""

from __future__ import annotations

import re

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


BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"

BADGE_PATTERN = re.escape(BADGE_MARKER) + r"[ \t]*\n?(?:\[!\[Open in Colab\][^\n]*)?"
"""The marker and the badge after it, on the same line (old form) or on the next one."""


def colab_badge(path: str) -> str:
    """Markdown for an "Open in Colab" badge for the notebook at ``path``: the marker on a line
    of its own, then the badge.

    The marker must stand alone: CommonMark (and so JupyterLab and GitHub) reads a line that
    starts with an HTML comment as raw HTML up to the end of the line that closes it, so a
    badge on the marker's line would be shown as literal text.
    """
    return f"{BADGE_MARKER}\n[![Open in Colab]({BADGE_IMAGE})]({colab_url(path)})"


def colab_install_source() -> str:
    """Source of the setup cell: installs the package only when running inside Colab."""
    return (
        f"{INSTALL_MARKER}: installs the course package when this notebook runs in Colab.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "dlai_diffusion @ git+{repo_url()}@{BRANCH}"\n'
    )


def refresh_badge(source: str, path: str) -> str:
    """``source`` with its Colab badge (either form) pointing at ``path``."""
    return re.sub(BADGE_PATTERN, lambda _: colab_badge(path), source, count=1)


def current_kernelspec() -> dict:
    """The kernelspec that the installed ipykernel writes into a notebook it runs."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    return {"display_name": spec.display_name, "language": spec.language, "name": "python3"}


def normalise_metadata(nb, kernelspec: dict | None = None) -> None:
    """Give ``nb`` (in place) the kernelspec that JupyterLab would write when it opens it, so
    that opening and saving an unchanged notebook leaves its file unchanged."""
    nb.metadata["kernelspec"] = dict(kernelspec or current_kernelspec())


INDEX = "index.ipynb"
"""The course index at the repository root: the notebook JupyterLab opens first."""


def index_notebook(readme: str):
    """The course index notebook, made from the README's "Course map" section (one source):
    a title, how to work through the course, and the map with links to every lecture,
    exercise and solution (relative links, which JupyterLab opens in a new tab)."""
    import nbformat

    match = re.search(r"^## Course map\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    if match is None:
        raise ValueError("readme has no '## Course map' section")
    intro = (
        "# Diffusion, scores and flows\n\n"
        "Welcome. Work through the lectures in order: each one explains, derives and runs its "
        "ideas, first on 2D data where the exact answer is known, then on images. After a "
        "lecture, open its **exercise** (in `exercises/`): every answer cell has a check that "
        "tells you at once whether it works. The **solutions** hold worked answers.\n\n"
        "Click a link below to open a notebook, then run its cells from the top "
        "(*Run → Run All Cells*). The lectures pick their sizes with `dd.fast_or(full=..., "
        "fast=...)`: set the environment variable `DLAI_FAST=1` before starting JupyterLab "
        "for a quick smoke run. The [README](README.md) has the set-up, the data and the "
        "grading instructions.\n\n"
    )
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_markdown_cell(intro + "## Course map\n" + match.group(1).strip())
    cell.id = "course-map"  # fixed, so that regenerating an unchanged index changes nothing
    nb.cells = [cell]
    return nb
