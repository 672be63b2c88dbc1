"""The human-facing report: report.md, a self-contained report.html, and that a real browser
(Debian's headless Chromium) loads every embedded figure and shows - in the screenshot - the
headline at the top, the repair-effect table, the seed-aggregated figures, and Fig. 3 next
to Fig. 4."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from early_repair_testing.aggregate_browser import (
    CHROMIUM,
    NO_CHROMIUM,
    WINDOW,
    check_report_on_screen,
    colour_pixels,
    coloured_pixels,
    element_boxes,
    loaded_images,
    screenshots,
)
from early_repair_testing.aggregate_tree import paper_table1_runs, write_tree
from PIL import Image

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import figures, output
from orchestrator.store.file import FileStore

MAX_FIGURES = 4  # 4 (run, class) pairs -> 8 figures, plus Table 1 and the overview
GROUPS = 4  # (dataset, model, class): rsna 1, gtsrb 20 27 30 -> a seeds and an effect figure


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
    output.publish(agg, out, max_figures=MAX_FIGURES)
    return out


def test_html_embeds_every_figure_and_links_nothing_outside(paper_report: Path) -> None:
    page = (paper_report / "report.html").read_text()
    parser = Images()
    parser.feed(page)
    pngs = sorted((paper_report / "figures").glob("*.png"))
    assert len(pngs) == 2 + 2 * MAX_FIGURES + 3 * GROUPS  # effect, seeds, aligned per group
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
    assert "| rsna | arachne | 0.8 | 4 | 1 | n/a | 5 | 0 | 2-3 |" in md
    assert "| gtsrb | arachne | 0.5 | 9 | 6 | n/a | 15 | 0 | 3 |" in md
    assert md.index("## Headline") < md.index("## Repair's effect") < md.index("## Table 1")
    assert (
        "- rsna, 15 cases (5 seeds x 1 class x 3 α): repairing before convergence beat"
        " repairing at convergence in 9 (none testable against test-set noise"
    ) in md
    assert "Counting rules `--rules text` (default, the paper's text)" in md
    assert (  # one line: side by side
        "![Fig. 3 - gtsrb-vgg16-s1024, class 20](figures/fig3_gtsrb-vgg16-s1024_class20.png)"
        " ![Fig. 4"
    ) in md
    assert "seeds: 1024, 2048, 4096, 8192, 16384" in md
    assert "the convergence checkpoint wins a tie, otherwise the earliest" in md
    assert "strictly before the convergence epoch" in md
    assert "Drawn for 4 of 20 (run, class) pairs" in md
    assert "| damaged | paper/rsna-densenet121-s2048/epoch_001/repair/class_1/metrics.json" in md
    html = (paper_report / "report.html").read_text()
    assert (
        '<td>rsna</td><td>arachne</td><td class="n">0.8</td><td class="n">4</td>'
        '<td class="n">1</td><td>n/a</td><td class="n">5</td><td class="n">0</td>'
    ) in html
    assert '<h2 id="headline">Headline</h2>' in html and '<table id="effects">' in html


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_headless_chromium_loads_and_shows_the_figures(paper_report: Path, tmp_path: Path):
    page = paper_report / "report.html"
    n_images = page.read_text().count("<img ")
    assert loaded_images(page, tmp_path) == (n_images, n_images)
    images = element_boxes(page, tmp_path, {"img": "img"})["img"]
    height = max(t + h for _, t, _, h in images) + 20  # down to the last figure
    full, empty = screenshots(page, tmp_path, height=height)
    assert full.shape == empty.shape == (height, WINDOW[0], 3)
    # (the bare page still shows small broken-image icons, hence a ratio, not zero)
    assert coloured_pixels(full) > 100_000
    assert coloured_pixels(empty) < coloured_pixels(full) / 20
    for pattern in (ag.PRE, ag.POST):  # Table 1 bars and overview markers
        assert colour_pixels(full, figures.PATTERN_COLOURS[pattern]) > 5000
        assert colour_pixels(empty, figures.PATTERN_COLOURS[pattern]) == 0


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_chromium_shows_headline_effect_table_and_seed_figures(paper_report: Path, tmp_path):
    boxes = check_report_on_screen(paper_report / "report.html", tmp_path, GROUPS, harm=True)
    # Fig. 3 and Fig. 4 of one run sit side by side: same row, Fig. 4 to the right
    for (l3, t3, w3, _), (l4, t4, _, _) in zip(boxes["fig3"], boxes["fig4"], strict=True):
        assert abs(t3 - t4) < 5 and l4 >= l3 + w3
    assert len(boxes["fig3"]) == MAX_FIGURES


@pytest.mark.slow
def test_report_of_two_repair_methods(tmp_path: Path) -> None:
    """Methods side by side: per-checkpoint table rows for both, method-named Fig. 3/4."""
    runs = paper_table1_runs()[5:7]  # two GTSRB seeds, classes 20 27 30
    for t in runs:
        for (e, c), v in list(t.repaired.items()):
            t.repaired[(e, c, "other")] = (v[0] * 0.9, v[1] * 0.9)
        t.method_level = True
    store = FileStore(tmp_path / "results")
    write_tree(store, "two", runs)
    out = tmp_path / "out"
    output.publish(ag.aggregate(store), out, max_figures=2)
    md = (out / "report.md").read_text()
    assert "| gtsrb | vgg16 | 20 | convergence | arachne |" in md
    assert "| gtsrb | vgg16 | 20 | convergence | other |" in md
    assert "| gtsrb | vgg16 | 20 | 5 | other |" in md  # every checkpoint, not only convergence
    assert "- gtsrb (arachne), " in md and "- gtsrb (other), " in md
    assert "| gtsrb | other | 0.5 |" in md  # Table 1 per method
    figs = sorted(p.name for p in (out / "figures").glob("fig3_*.png"))
    assert figs == [
        "fig3_gtsrb-vgg16-s1024_arachne_class20.png",
        "fig3_gtsrb-vgg16-s1024_arachne_class27.png",
    ]
