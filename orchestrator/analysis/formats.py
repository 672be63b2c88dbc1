"""Figures in the formats a paper needs: PDF and SVG beside every PNG of the report.

The report embeds PNGs (report.html is one self-contained file); a LaTeX paper wants
vector figures. ``aggregate --formats png,pdf,svg`` (the default) therefore writes each
figure once per format, from the same matplotlib ``Figure``, so the three cannot differ.

Fonts: PDFs embed their fonts as TrueType (``pdf.fonttype`` 42, "Type 42"), which
publishers' checks (no Type 3 fonts) and editors accept and which keeps text searchable.
SVG cannot embed a font file, so its text is drawn as glyph outlines (``svg.fonttype``
"path"): the figure looks the same on every machine, whether or not DejaVu Sans is
installed there ("none" would keep editable <text> but leave the look to the viewer's
fonts). Both files are reproducible: no creation date, fixed SVG ids (``svg.hashsalt``).

Which formats are wanted is set once per ``aggregate`` with ``figure_formats`` (a context
variable, so nothing global changes and concurrent aggregations do not mix);
``figures.save`` asks ``save_siblings`` to write the non-PNG ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from orchestrator.errors import BadInput

FORMATS = ("png", "pdf", "svg")
DEFAULT_FORMATS = FORMATS
# matplotlib settings in force while a vector file is written (rc_context: no global change).
VECTOR_RC: dict[str, Any] = {
    "pdf.fonttype": 42,
    "svg.fonttype": "path",
    "svg.hashsalt": "early-repair",
}
# No timestamps: the same results give byte-identical files.
_METADATA: dict[str, dict[str, Any]] = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}

_wanted: ContextVar[tuple[str, ...]] = ContextVar("figure_formats", default=("png",))


def parse_formats(text: str) -> tuple[str, ...]:
    """``png,pdf,svg`` -> ("png", "pdf", "svg"); png is required (the report shows it)."""
    names = tuple(
        dict.fromkeys(p.strip().lower().lstrip(".") for p in text.split(",") if p.strip())
    )
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise BadInput(
            f"--formats: {unknown[0]!r} is not a figure format; choose from {', '.join(FORMATS)}"
        )
    if "png" not in names:
        raise BadInput("--formats: png is needed (the report shows the PNGs); add png")
    return names


@contextmanager
def figure_formats(formats: Iterable[str]) -> Iterator[None]:
    """Within the block, ``save_siblings`` writes these formats besides the PNG."""
    token = _wanted.set(tuple(formats))
    try:
        yield
    finally:
        _wanted.reset(token)


def wanted() -> tuple[str, ...]:
    return _wanted.get()


def save_siblings(fig: Any, png: Path, dpi: float) -> list[Path]:
    """Write ``fig`` beside ``png`` (same stem) in every wanted vector format."""
    import matplotlib

    out = []
    for fmt in wanted():
        if fmt == "png":
            continue
        path = png.with_suffix(f".{fmt}")
        with matplotlib.rc_context(VECTOR_RC):
            fig.savefig(path, dpi=dpi, format=fmt, metadata=_METADATA.get(fmt))
        out.append(path)
    return out


def siblings(png: Path) -> list[Path]:
    """The vector files that exist beside ``png`` (for the report's links)."""
    return [p for fmt in FORMATS[1:] if (p := png.with_suffix(f".{fmt}")).exists()]


def figure_files(folder: Path) -> list[Path]:
    """Every figure file in ``folder``, all formats, sorted."""
    return sorted(p for fmt in FORMATS for p in folder.glob(f"*.{fmt}"))
