"""docs/method.md says each rule of the method is pinned by a named test: the names must exist."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test) for each `tests/x.py::test_a`, and each `::test_b` after it in a table cell."""
    found = []
    for cell in text.split("|"):
        current = None
        for file, name in re.findall(r"`(tests/[\w/]+\.py)?::(test_\w+)`", cell):
            current = file or current
            found.append((current, name))
    return found


def test_every_test_the_method_page_cites_exists():
    cited = cited_tests((ROOT / "docs" / "method.md").read_text())
    assert len(cited) >= 20  # the rules table and the recipe sections
    missing = [f"{f}::{n}" for f, n in cited if f is None or n not in _test_names(ROOT / f)]
    assert missing == []


def test_the_check_can_fail():
    assert cited_tests("| `tests/test_excon.py::test_all_accepted`, `::test_nope` |") == [
        ("tests/test_excon.py", "test_all_accepted"),
        ("tests/test_excon.py", "test_nope"),
    ]
    assert "test_nope" not in _test_names(ROOT / "tests" / "test_excon.py")
