"""One document, two renderings: report.md (relative image links) and a self-contained
report.html (figures embedded as base64 PNG, so it can be mailed or archived as one file).

Both are rendered from one list of blocks, so they cannot say different things. Text in
them quotes names from the results store, which anyone who could write there chose: the
HTML escapes everything, and the Markdown escapes HTML and the closing bracket of links
and images outside `code` spans (inside them nothing renders), so no store string becomes
markup, a remote image or a link (a bare URL stays text, which some viewers make
clickable). ``file_part`` makes such names safe parts of file names.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.analysis.formats import siblings


@dataclass
class Doc:
    """A list of blocks rendered to Markdown (relative image links) and to HTML (embedded)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("ul", lines))

    def table(self, df: pd.DataFrame, note: str = "", name: str = "") -> None:
        """``name``: the HTML table's id (for readers' links and the browser tests)."""
        self.blocks.append(("table", (df, note, name)))

    def images(self, paths: list[tuple[Path, str]]) -> None:
        self.blocks.append(("img", paths))

    def pair(self, left: tuple[Path, str], right: tuple[Path, str]) -> None:
        """Two figures side by side (Fig. 3 next to Fig. 4), scaled together."""
        self.blocks.append(("pair", [left, right]))

    def markdown(self, root: Path) -> str:
        out = [f"# {_md(self.title)}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"## {_md(value)}", ""]
            elif kind == "p":
                out += [_md(value), ""]
            elif kind == "ul":
                out += [f"- {_md(line)}" for line in value] + [""]
            elif kind == "table":
                df, note, _ = value
                out += [_md_table(df), ""] + ([_md(note), ""] if note else [])
            elif kind == "img":
                for path, alt in value:
                    out += [f"![{_md_plain(alt)}]({_md_link(path, root)})", ""]
                    out += [_vector_links(path, root)] if siblings(path) else []
            elif kind == "pair":  # one line: Markdown viewers put the two images side by side
                out += [" ".join(f"![{_md_plain(a)}]({_md_link(p, root)})" for p, a in value)]
                out += [""]
                links = [_vector_links(p, root) for p, _ in value if siblings(p)]
                out += [" ".join(links), ""] if links else []
        return "\n".join(out)

    def html(self, root: Path | None = None) -> str:
        """``root``: report.html's folder, for links to the figures' PDF/SVG files."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f'<h2 id="{_slug(value)}">{html.escape(value)}</h2>')
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(v)}</li>" for v in value) + "</ul>")
            elif kind == "table":
                df, note, name = value
                body.append(_html_table(df, name))
                if note:
                    body.append(f'<p class="note">{_inline(note)}</p>')
            elif kind in ("img", "pair"):
                figs = "".join(_figure(path, alt, root) for path, alt in value)
                body.append(f'<div class="{"figs" if kind == "img" else "pair"}">{figs}</div>')
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.4; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.25em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .5em 0; font-size: .9em; }}
th, td {{ border: 1px solid #ccc; padding: .2em .5em; text-align: left; }}
th {{ background: #f3f3f3; }} td.n {{ text-align: right; }}
code {{ background: #f3f3f3; padding: 0 .2em; }}
.figs {{ display: flex; flex-wrap: wrap; gap: .5em; }}
figure {{ margin: 0; }} figure img {{ max-width: 100%; border: 1px solid #eee; }}
.pair {{ display: grid; grid-template-columns: 5fr 7.2fr; gap: .5em; margin-bottom: .5em; }}
.pair img {{ width: 100%; }}
figcaption {{ font-size: .8em; color: #555; }} .note {{ font-size: .85em; color: #555; }}
</style></head>
<body>
{body}
</body></html>
"""


def _figure(path: Path, alt: str, root: Path | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    links = ""
    if root is not None and siblings(path):
        links = " " + " ".join(
            f'<a href="{html.escape(v.relative_to(root).as_posix())}">{v.suffix[1:].upper()}</a>'
            for v in siblings(path)
        )
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(alt)}{links}</figcaption></figure>"
    )


def _vector_links(png: Path, root: Path) -> str:
    """``(PDF, SVG)`` links to the vector files written beside a figure's PNG."""
    links = ", ".join(
        f"[{v.suffix[1:].upper()}]({v.relative_to(root).as_posix()})" for v in siblings(png)
    )
    return f"({png.stem}: {links})"


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only inline markup we use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _cell(v: Any) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v)}"
    return str(v)


# Outside code spans: what would become HTML or an entity, and the ']' every link, image
# and link reference needs (``[t](u)``, ``![a](s)``, ``[t][r]``, ``[r]: u``) - escaped, no
# bracket can close one.
_MD_ACTIVE = re.compile(r"[<>\]&]")
_MD_ESCAPES = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "]": "\\]"}


def _md_plain(text: str) -> str:
    """``text`` as literal Markdown: no HTML, links, images or code spans from it."""
    return _MD_ACTIVE.sub(lambda m: _MD_ESCAPES[m[0]], text).replace("`", "\\`")


def _md(text: str) -> str:
    """Our text with `code` spans (the only markup we write): everything outside them
    literal (``_md_plain``); inside them nothing renders anyway."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an odd backtick (from a store string): no span is safe
        return _md_plain(text)
    return "`".join(p if i % 2 else _md_plain(p) for i, p in enumerate(parts))


def _md_link(path: Path, root: Path) -> str:
    """A relative link to one of our figures (their names are ``file_part``s)."""
    return path.relative_to(root).as_posix().replace(" ", "%20").replace(")", "%29")


def file_part(name: str, limit: int = 60) -> str:
    """``name`` (a dataset, model, run or method from the store) as part of a file name:
    only ``[A-Za-z0-9_.-]``, never ``.`` or ``..``, at most ``limit`` characters - a name
    that had to change to get there ends in a short hash of itself, so two names never
    share a file."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    if safe == name and len(safe) <= limit and not safe.startswith("."):
        return safe
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{safe.lstrip('.')[: limit - 11]}-{digest}"


def _md_table(df: pd.DataFrame) -> str:
    def row(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(_md_plain(c).replace("|", "\\|").replace("\n", " ") for c in cells)
            + " |"
        )

    lines = [row([str(c) for c in df.columns]), row(["---"] * len(df.columns))]
    lines += [row([_cell(v) for v in r]) for r in df.itertuples(index=False)]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _html_table(df: pd.DataFrame, name: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)

    def td(v: Any) -> str:
        numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        return f'<td class="n">{_cell(v)}</td>' if numeric else f"<td>{html.escape(_cell(v))}</td>"

    rows = "".join("<tr>" + "".join(td(v) for v in r) + "</tr>" for r in df.itertuples(index=False))
    ident = f' id="{html.escape(name)}"' if name else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
