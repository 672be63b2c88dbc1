"""Names from a results store are data: as file names they are bounded and safe, in
report.md they never become HTML, links or images, on a terminal never escape sequences."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd

from orchestrator.analysis.document import Doc, file_part
from orchestrator.cli.output import printable, safe_console


def test_file_parts_are_bounded_safe_and_distinct() -> None:
    assert file_part("small_cnn") == "small_cnn"  # clean names are unchanged
    assert file_part("quickstart-seed1.v2") == "quickstart-seed1.v2"
    for hostile in ("../../etc/passwd", "..", ".", "/abs", "x" * 250, "a\x1b[2Jb", "ü" * 100):
        part = file_part(hostile)
        assert len(part) <= 60 and part not in ("", ".", "..") and not part.startswith(".")
        assert all((c.isalnum() and c.isascii()) or c in "_.-" for c in part), part
    assert file_part("a/b") != file_part("a_b")  # a changed name carries a hash of itself
    assert file_part("x" * 250) != file_part("x" * 251)


def test_markdown_escapes_store_strings_but_keeps_code_spans(tmp_path: Path) -> None:
    doc = Doc("Report <b>x</b>")
    doc.p("sweep `![a](http://evil.example/a.png)` at `/tmp/x`")
    doc.p('dataset ![t](http://evil.example/t.png) <img src="http://evil.example/x">')
    doc.items(["odd ` backtick ![i](http://evil.example/i.png)"])
    doc.table(pd.DataFrame({"model": ["<script>alert(1)</script>", "[l](http://e.example)"]}))
    md = doc.markdown(tmp_path)
    outside_code = "".join(p for i, p in enumerate(md.split("`")) if i % 2 == 0)
    assert "<img" not in md and "<script" not in md and "<b>" not in md
    # Outside code spans every ']' is escaped: no link or image can be closed.
    assert not re.search(r"(?<!\\)\]", outside_code), outside_code
    assert "`![a](http://evil.example/a.png)`" in md  # inside a code span: shown as is
    assert "evil.example/t.png" in md  # the name is still there, as text


def test_terminal_output_has_no_escape_sequences_from_data() -> None:
    from rich.table import Table
    from rich.text import Text

    assert printable("a\x1b]0;title\x07b\u202e") == "a\\x1b]0;title\\x07b\\u202e"
    assert printable("plain ✓ text\n") == "plain ✓ text\n"
    buffer = io.StringIO()
    console = safe_console(file=buffer, force_terminal=True, width=200)
    table = Table(title="t\x1b[2J")
    table.add_column("group")
    table.add_row("\x1b]52;c;ZXZpbA==\x07digits")
    console.print(Text("Headline \x1b[31m", style="bold"), table)
    out = buffer.getvalue()
    assert "\x1b]" not in out and "\x07" not in out and "\x1b[2J" not in out
    assert "\x1b[1m" in out  # rich's own styling stays
