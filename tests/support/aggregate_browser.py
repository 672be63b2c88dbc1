"""Open a report in Debian's headless Chromium and check what a reader would see.

Two independent checks: (1) a probe script, added to a copy of the page, counts the <img>
elements that finished loading with a real size after the load event (read back with
``--dump-dom``); (2) a screenshot of the page, compared with a screenshot of the same page
with the image data removed, must show the figures' colours only when the images are there.
"""

from __future__ import annotations

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


def screenshots(page: Path, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGB pixels of the page and of the same page without image data, at WINDOW size."""
    size = f"--window-size={WINDOW[0]},{WINDOW[1]}"
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
