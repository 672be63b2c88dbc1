"""Open a report in Debian's headless Chromium and check what a reader would see.

Independent checks: (1) a probe script, added to a copy of the page, counts the <img>
elements that finished loading with a real size after the load event (read back with
``--dump-dom``); (2) a screenshot of the page, compared with a screenshot of the same page
with the image data removed, must show the figures' colours only when the images are there;
(3) another probe reports where given elements are laid out, so a test can look at those
regions of the screenshot (text there, a figure's colours there).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "no chromium binary: install Debian's chromium (apt-get install -y chromium)"
WINDOW = (1200, 2000)


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def loaded_images(page: Path, work: Path) -> tuple[int, int]:
    """(images loaded with a real size, images on the page) after the load event."""
    probe = work / "probe.html"
    probe.write_text(
        page.read_text().replace(
            "</body>",
            "<script>addEventListener('load', () => document.body.setAttribute('data-loaded',"
            " [...document.images].filter(i => i.complete && i.naturalWidth > 100).length"
            " + '/' + document.images.length));</script></body>",
        )
    )
    dom = chromium(["--dump-dom", probe.as_uri()], work / "profile-dom").stdout
    m = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert m, "the probe did not run: no data-loaded attribute in the dumped DOM"
    return int(m[1]), int(m[2])


def screenshots(page: Path, work: Path, height: int = WINDOW[1]) -> tuple[np.ndarray, np.ndarray]:
    """RGB pixels of the page and of the same page without image data, in a window
    WINDOW[0] wide and ``height`` tall (the screenshot is the window)."""
    size = f"--window-size={WINDOW[0]},{height}"
    shot, bare_shot = work / "report.png", work / "bare.png"
    chromium([f"--screenshot={shot}", size, page.as_uri()], work / "profile-shot")
    bare = work / "bare.html"
    bare.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', page.read_text()))
    chromium([f"--screenshot={bare_shot}", size, bare.as_uri()], work / "profile-bare")
    return pixels(shot), pixels(bare_shot)


def pixels(png: Path) -> np.ndarray:
    with Image.open(png) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def colour_pixels(px: np.ndarray, hex_colour: str, tol: int = 12) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(px - rgb) <= tol).all(axis=-1).sum())


def coloured_pixels(px: np.ndarray) -> int:
    """Pixels that are clearly not grey: the page itself is black, grey and white."""
    return int((px.max(axis=-1) - px.min(axis=-1) > 40).sum())


def element_boxes(
    page: Path, work: Path, selectors: dict[str, str], width: int = WINDOW[0]
) -> dict[str, list[tuple[int, int, int, int]]]:
    """Where the elements matching each CSS selector are laid out after the load event:
    name -> [(left, top, width, height), ...] in CSS pixels of a ``width``-wide window."""
    probe = work / "boxes.html"
    script = (
        "<script>addEventListener('load', () => { const out = {};"
        f" const sel = {json.dumps(selectors)};"
        " for (const [k, s] of Object.entries(sel)) out[k] = [...document.querySelectorAll(s)]"
        ".map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top + scrollY,"
        " r.width, r.height].map(Math.round); });"
        " document.body.setAttribute('data-boxes', JSON.stringify(out)); });</script></body>"
    )
    probe.write_text(page.read_text().replace("</body>", script))
    dom = chromium(
        ["--dump-dom", f"--window-size={width},{WINDOW[1]}", probe.as_uri()], work / "profile-box"
    ).stdout
    m = re.search(r'data-boxes="([^"]*)"', dom)
    assert m, "the probe did not run: no data-boxes attribute in the dumped DOM"
    raw = json.loads(html.unescape(m[1]))
    return {k: [tuple(b) for b in v] for k, v in raw.items()}


def crop(px: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, w, h = box
    return px[top : top + h, left : left + w]


def text_pixels(px: np.ndarray) -> int:
    """Dark pixels: text (the page's text is #222 on white)."""
    return int((px.max(axis=-1) < 90).sum())


SELECTORS = {
    "headline": "h2#headline",
    "sentences": "h2#headline + ul",
    "headline_table": "table#headline",
    "effects": "table#effects",
    "effect_figures": 'img[alt^="Effect of repair on Qual"]',
    "seed_figures": 'img[alt^="Qual over epochs, mean of seeds"]',
    "fig3": 'img[alt^="Fig. 3"]',
    "fig4": 'img[alt^="Fig. 4"]',
}


def check_report_on_screen(page: Path, work: Path, n_groups: int, *, harm: bool) -> dict:
    """Lay the page out in Chromium, screenshot it down to the seed-aggregated figures, and
    check in the pixels that the headline, the effect table and those figures are shown
    (``harm``: some repair made a model worse, so the effect figures show red markers).
    Returns the element boxes; the screenshot is left in ``work/report.png``."""
    from orchestrator.analysis import figures

    boxes = element_boxes(page, work, SELECTORS)
    for name in ("headline", "sentences", "headline_table", "effects"):
        assert len(boxes[name]) == 1, name
    assert len(boxes["seed_figures"]) == len(boxes["effect_figures"]) == n_groups
    assert boxes["headline"][0][1] < 200  # the answer is at the top of the page
    bottom = max(t + h for _, t, _, h in boxes["seed_figures"]) + 20
    full, bare = screenshots(page, work, height=bottom)
    for name in ("headline", "sentences", "headline_table", "effects"):
        region = crop(full, boxes[name][0])
        assert text_pixels(region) > 200, f"no text shown where the {name} is"
    assert text_pixels(crop(full, boxes["sentences"][0])) > 2000  # sentences, not a stub
    rows = boxes["effects"][0][3] // 20  # the effect table has one row per repaired model
    assert rows >= 10
    blue, grey = figures.METHOD_COLOURS[0], figures.UNREPAIRED_COLOUR
    for box in boxes["seed_figures"]:
        shown, missing = crop(full, box), crop(bare, box)
        assert box[2] > 600 and box[3] > 200, box  # drawn at a readable size
        assert colour_pixels(shown, blue, tol=20) > 300 and colour_pixels(missing, blue) == 0
        assert colour_pixels(shown, grey, tol=10) > 100
    for box in boxes["effect_figures"] if harm else []:
        assert colour_pixels(crop(full, box), figures.HARM_COLOUR, tol=20) > 20
    return boxes
