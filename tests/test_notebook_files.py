"""What a student sees when a committed notebook opens: a working Colab badge, no spurious
"modified" mark, no frozen progress bars."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from markdown_it import MarkdownIt

from dlai_diffusion import course

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(
    path
    for folder in ("notebooks", "solutions", "exercises")
    for path in (ROOT / folder).glob("*.ipynb")
) + sorted(ROOT.glob("*.ipynb"))


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


class _Links(HTMLParser):
    """Collects (href, [(img src, alt), ...]) for every <a> of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, list[tuple[str, str]]]] = []
        self._open: list | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self._open = [attrs.get("href", ""), []]
        elif tag == "img" and self._open is not None:
            self._open[1].append((attrs.get("src", ""), attrs.get("alt", "")))

    def handle_endtag(self, tag):
        if tag == "a" and self._open is not None:
            self.links.append((self._open[0], self._open[1]))
            self._open = None


def badge_links(markdown: str) -> list[str]:
    """Addresses that a CommonMark renderer links from the Colab badge image."""
    parser = _Links()
    parser.feed(MarkdownIt("commonmark").render(markdown))
    return [
        href
        for href, images in parser.links
        if (course.BADGE_IMAGE, "Open in Colab") in images
    ]


def test_badge_check_catches_the_marker_on_the_badge_line():
    url = course.colab_url("notebooks/01_x.ipynb")
    badge = course.colab_badge("notebooks/01_x.ipynb")
    assert badge_links(badge + "\n\n# Title") == [url]
    glued = badge.replace(course.BADGE_MARKER + "\n", course.BADGE_MARKER)
    assert badge_links(glued + "\n\n# Title") == []  # shown as raw text
    assert course.refresh_badge(glued, "notebooks/01_x.ipynb") == badge


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.parent != ROOT], ids=_relative)
def test_badge_renders_as_a_link_to_its_own_colab_page(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown"
    assert badge_links(first.source) == [course.colab_url(_relative(path))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_relative)
def test_opening_and_saving_changes_nothing(path):
    """JupyterLab writes the running kernel's spec; the committed one must already be it."""
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    course.normalise_metadata(nb)
    assert nbformat.writes(nb) + "\n" == text, (
        f"{_relative(path)} changes when opened and saved: run `dlai-diffusion make-exercises`"
    )


PROGRESS_BAR = re.compile(r"\d+%\|")
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_relative)
def test_no_progress_bars_or_widget_views_in_committed_outputs(path):
    """A progress bar or a widget saved in an output shows frozen (e.g. 0/3000) forever."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            assert WIDGET not in output.get("data", {}), f"cell {index} saves a widget view"
            text = output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
            assert not PROGRESS_BAR.search(text), f"cell {index} saves a progress bar"


def test_course_index_is_made_from_the_readme_and_links_every_notebook():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    expected = course.index_notebook(readme)
    course.normalise_metadata(expected)
    lecture = nbformat.read(sorted((ROOT / "notebooks").glob("*.ipynb"))[0], as_version=4)
    expected.metadata["language_info"] = lecture.metadata["language_info"]
    committed = (ROOT / course.INDEX).read_text(encoding="utf-8")
    assert nbformat.writes(expected) + "\n" == committed, (
        "index.ipynb is out of date: run `dlai-diffusion make-exercises`"
    )
    parser = _Links()
    parser.feed(MarkdownIt("commonmark").enable("table").render(expected.cells[0].source))
    linked = {href for href, _ in parser.links}
    for folder in ("notebooks", "exercises", "solutions"):
        for path in (ROOT / folder).glob("*.ipynb"):
            assert _relative(path) in linked, f"index.ipynb does not link {_relative(path)}"
    assert "README.md" in linked


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=_relative)
def test_lectures_stay_small_enough_to_open_quickly(path):
    assert path.stat().st_size <= 1.5 * 2**20, f"{_relative(path)}: keep figures compact"
