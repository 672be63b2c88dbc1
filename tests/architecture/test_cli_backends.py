"""The CLI treats every backend alike: it never compares anything with a backend's name.

The import contract keeps the CLI out of the backends' modules; this keeps it from
branching on which backend it holds (``if backend.name == "local"``), which would let a
backend's special case live in the CLI instead of behind the Backend protocol.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from early_repair_testing.paths import REPO

from orchestrator.backends import BACKENDS

CLI = REPO / "orchestrator" / "cli"


def name_comparisons(source: str) -> list[str]:
    """Every comparison (==, !=, in, not in, match case) with a backend's name as a literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.MatchValue):
            operands = [node.value]
        else:
            continue
        literals = [
            c.value
            for operand in operands
            for c in ast.walk(operand)
            if isinstance(c, ast.Constant) and c.value in BACKENDS
        ]
        if literals:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_no_cli_module_compares_with_a_backend_name(module: Path) -> None:
    assert name_comparisons(module.read_text()) == []


def test_the_check_sees_a_branch_on_the_backend_name() -> None:
    branching = (
        'if backend.name == "local":\n    pass\n'
        'ok = name in ("kubernetes", None)\n'
        'match backend.name:\n    case "local":\n        pass\n'
    )
    assert name_comparisons(branching) == [
        "line 1: backend.name == 'local'",
        "line 3: name in ('kubernetes', None)",
        "line 5: 'local'",
    ]
    assert name_comparisons('backend = open_backend("local")\nif backend.where:\n    pass\n') == []
