"""What a paper takes from `aggregate`: Table 1 and the headline as LaTeX tables, every
figure as PDF and SVG beside its PNG with the fonts embedded, and the report linking them.

table1.tex is parsed with a LaTeX parser (pylatexenc) and held to Table 1's own numbers;
where Debian's pdflatex is installed, a document that inputs both tables and includes a
PDF figure is compiled."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from early_repair_testing.aggregate_tree import paper_table1_runs, write_tree
from pylatexenc.latexwalker import (
    LatexEnvironmentNode,
    LatexGroupNode,
    LatexMacroNode,
    LatexSpecialsNode,
    LatexWalker,
)

from orchestrator.analysis import aggregate as ag
from orchestrator.analysis import formats, latex, output
from orchestrator.store.file import FileStore

PDFLATEX = shutil.which("pdflatex")


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> tuple[ag.Aggregation, Path]:
    root = tmp_path_factory.mktemp("paper")
    store = FileStore(root / "results")
    write_tree(store, "paper", paper_table1_runs())
    agg = ag.aggregate(store)
    out = root / "out"
    output.publish(agg, out, max_figures=1, formats=formats.FORMATS)
    return agg, out


def environments(nodes, name: str) -> list[LatexEnvironmentNode]:
    """Every ``name`` environment in the parse tree, depth first."""
    found = []
    for node in nodes or []:
        if isinstance(node, LatexEnvironmentNode):
            if node.environmentname == name:
                found.append(node)
            found += environments(node.nodelist, name)
        elif isinstance(node, LatexGroupNode):
            found += environments(node.nodelist, name)
    return found


def tabular_rows(tabular: LatexEnvironmentNode) -> tuple[str, list[str], list[list[str]]]:
    """The column spec, the booktabs rules in order, and the cells of every row."""
    spec = tabular.nodeargd.argnlist[-1].latex_verbatim().strip("{}")
    rules: list[str] = []
    rows: list[list[str]] = [[""]]
    for node in tabular.nodelist:
        if isinstance(node, LatexMacroNode) and node.macroname in (
            "toprule",
            "midrule",
            "bottomrule",
        ):
            rules.append(node.macroname)
            rows.append([""])
        elif isinstance(node, LatexMacroNode) and node.macroname == "\\":
            rows.append([""])
        elif isinstance(node, LatexSpecialsNode) and node.specials_chars == "&":
            rows[-1].append("")
        else:
            rows[-1][-1] += node.latex_verbatim()
    cells = [[c.strip() for c in r] for r in rows if any(c.strip() for c in r)]
    return spec, rules, cells


def parse(path: Path) -> tuple[LatexEnvironmentNode, str, list[str], list[list[str]]]:
    text = path.read_text(encoding="utf-8")
    assert text.isascii(), "the table must compile with pdflatex: ASCII only"
    nodes, _, _ = LatexWalker(text, tolerant_parsing=False).get_latex_nodes()
    (table,) = environments(nodes, "table")
    (tabular,) = environments(table.nodelist, "tabular")
    return (table, *tabular_rows(tabular))


def test_table1_tex_is_table1_as_a_booktabs_table(paper) -> None:
    agg, out = paper
    table, spec, rules, rows = parse(out / "table1.tex")
    macros = [n.macroname for n in table.nodelist if isinstance(n, LatexMacroNode)]
    assert {"caption", "label", "centering"} <= set(macros)
    assert rules == ["toprule", "midrule", "bottomrule"]
    header, *body = rows
    assert all(len(r) == len(spec) == len(header) for r in rows), (spec, rows)
    expected = latex.table1_frame(agg)
    assert header == [c.replace("_", r"\_") for c in expected.columns]
    assert len(body) == len(expected)
    for cells, (_, want) in zip(body, expected.iterrows(), strict=True):
        assert cells == [latex.cell(v) for v in want.tolist()]
    # Numbers right-aligned, names left.
    numeric = [all(re.fullmatch(r"[-+0-9.]+", c) for c in col) for col in zip(*body, strict=True)]
    assert spec == "".join("r" if n else "l" for n in numeric)


def test_headline_tex_has_one_row_per_headline_group_and_no_raw_unicode(paper) -> None:
    agg, out = paper
    _, spec, rules, rows = parse(out / "headline.tex")
    assert rules == ["toprule", "midrule", "bottomrule"]
    assert len(rows) == 1 + len(agg.headline) and all(len(r) == len(spec) for r in rows)
    assert r"$\alpha$" in rows[0]


def test_cells_are_escaped_for_latex() -> None:
    df = pd.DataFrame({"name": ["a_b & 50%"], "α": [0.25], "n": [3.0]})
    tex = latex.to_latex(df, "c", "tab:x")
    assert r"a\_b \& 50\%" in tex and r"$\alpha$" in tex and " 3 " in tex
    assert "{lrr}" in tex


@pytest.mark.skipif(
    PDFLATEX is None,
    reason="no pdflatex: apt-get install texlive-latex-base texlive-latex-recommended",
)
def test_the_tables_and_a_pdf_figure_compile_in_a_latex_document(paper, tmp_path: Path) -> None:
    _, out = paper
    doc = tmp_path / "paper.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
        "\\begin{document}\n"
        f"\\input{{{out / 'table1.tex'}}}\n\\input{{{out / 'headline.tex'}}}\n"
        f"\\includegraphics[width=\\linewidth]{{{out / 'figures' / 'table1.pdf'}}}\n"
        "\\end{document}\n"
    )
    done = subprocess.run(
        [PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 0


def test_every_figure_in_every_format_with_its_fonts_embedded(paper) -> None:
    _, out = paper
    figures = out / "figures"
    pngs = sorted(figures.glob("*.png"))
    assert pngs
    for png in pngs:
        pdf, svg = png.with_suffix(".pdf"), png.with_suffix(".svg")
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF-")
        assert b"/FontFile2" in data  # TrueType fonts embedded (pdf.fonttype 42) ...
        assert b"/Type3" not in data  # ... never Type 3, which publishers refuse
        assert b"/CreationDate" not in data  # reproducible
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        assert not [e for e in root.iter() if e.tag.endswith("}text")]  # text as outlines


def test_the_report_links_the_vector_figures_and_the_latex_tables(paper) -> None:
    _, out = paper
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for png in (out / "figures").glob("*.png"):
        for fmt in ("pdf", "svg"):
            assert f"](figures/{png.stem}.{fmt})" in md, png.stem
            assert f'href="figures/{png.stem}.{fmt}"' in page, png.stem
    assert "`table1.tex`, `headline.tex`" in md
    linked = re.findall(r'href="([^"]+)"', page)
    assert linked and all((out / href).is_file() for href in linked)


@pytest.mark.slow
def test_formats_flag_chooses_the_files_and_refuses_what_it_cannot_write(cli, paper, tmp_path):
    _, out = paper
    results = out.parent / "results"
    r = cli(
        "aggregate", results, "--out", tmp_path / "png", "--formats", "png", "--max-figures", "0"
    )
    assert r.code == 0, r.err
    assert not [*(tmp_path / "png" / "figures").glob("*.pdf"), *(tmp_path / "png").glob("*/*.svg")]
    for bad, message in (("png,jpg", "'jpg' is not a figure format"), ("pdf", "png is needed")):
        r = cli("aggregate", results, "--out", tmp_path / "bad", "--formats", bad)
        assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()
