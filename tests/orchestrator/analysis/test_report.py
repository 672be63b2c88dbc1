"""The human-facing report: report.md, a self-contained report.html, and that a real browser
(Debian's headless Chromium) loads every embedded figure and shows them on screen."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aggregate_browser import (
    CHROMIUM,
    NO_CHROMIUM,
    WINDOW,
    colour_pixels,
    coloured_pixels,
    loaded_images,
    screenshots,
)
from aggregate_tree import paper_table1_runs, write_tree
from PIL import Image

from orchestrator.analysis import report
from orchestrator.analysis import tables as ag
from orchestrator.store.file import FileStore

MAX_FIGURES = 4  # 4 (run, class) pairs -> 8 figures, plus Table 1 and the overview


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        for name in ("href", "src"):
            if a.get(name):
                self.links.append(a[name] or "")


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("paper")
    store = FileStore(root / "results")
    write_tree(store, "paper", paper_table1_runs())
    # one damaged record, so the report has something to list
    key = "paper/rsna-densenet121-s2048/epoch_001/repair/class_1/metrics.json"
    store.write_bytes(key, b'{"schema_version": 1, "sw')
    agg = ag.aggregate(store)
    out = root / "out"
    report.publish(agg, out, max_figures=MAX_FIGURES)
    return out


def test_html_embeds_every_figure_and_links_nothing_outside(paper_report: Path) -> None:
    page = (paper_report / "report.html").read_text()
    parser = Images()
    parser.feed(page)
    pngs = sorted((paper_report / "figures").glob("*.png"))
    assert len(pngs) == 2 + 2 * MAX_FIGURES
    assert len(parser.srcs) == len(pngs)
    embedded = set()
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        embedded.add(data)
    assert embedded == {p.read_bytes() for p in pngs}
    assert all(link.startswith("data:") for link in parser.links)


def test_markdown_report_says_what_ran_table1_and_what_is_damaged(paper_report: Path) -> None:
    md = (paper_report / "report.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (paper_report / link).is_file(), link
    assert "| rsna | 0.8 | 4 | 1 | 5 | 0 |" in md
    assert "| gtsrb | 0.5 | 9 | 6 | 15 | 0 |" in md
    assert "seeds: 1024, 2048, 4096, 8192, 16384" in md
    assert "the convergence checkpoint wins a tie, otherwise the earliest" in md
    assert "strictly before the convergence epoch" in md
    assert "Drawn for 4 of 20 (run, class) pairs" in md
    assert "| damaged | paper/rsna-densenet121-s2048/epoch_001/repair/class_1/metrics.json" in md
    html = (paper_report / "report.html").read_text()
    assert (
        '<td>rsna</td><td class="n">0.8</td><td class="n">4</td><td class="n">1</td>'
        '<td class="n">5</td><td class="n">0</td>'
    ) in html


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_headless_chromium_loads_and_shows_the_figures(paper_report: Path, tmp_path: Path):
    page = paper_report / "report.html"
    n_images = page.read_text().count("<img ")
    assert loaded_images(page, tmp_path) == (n_images, n_images)
    full, empty = screenshots(page, tmp_path)
    assert full.shape == empty.shape == (WINDOW[1], WINDOW[0], 3)
    # (the bare page still shows small broken-image icons, hence a ratio, not zero)
    assert coloured_pixels(full) > 20_000 and coloured_pixels(empty) < coloured_pixels(full) / 20
    for pattern in (ag.PRE, ag.POST):  # Table 1 bars and overview markers
        assert colour_pixels(full, report.PATTERN_COLOURS[pattern]) > 5000
        assert colour_pixels(empty, report.PATTERN_COLOURS[pattern]) == 0
