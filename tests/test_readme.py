"""The README says what the code does: its operator table is the registry's (``adaptconv ops
--markdown``), and every Python snippet in it runs as written (issue 15)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from adaptconv.cli import ops_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_readme_operator_table_is_the_registry_s():
    text = README.read_text(encoding="utf-8")
    start = text.index("| name | method | guide | from_conv | notes |")
    table = text[start : text.index("\n\n", start)]
    assert table == ops_markdown(), (
        "README.md's operator table differs from `adaptconv ops --markdown`; paste the latter into the README"
    )


def test_ops_markdown_follows_the_registry():
    from adaptconv.ops import get_op, list_ops

    rows = {line.split(" | ")[0].strip("|` "): line.split(" | ") for line in ops_markdown().splitlines()[2:]}
    builtin_convs = {n for n in list_ops() if getattr(get_op(n), "kind", "conv") == "conv" and n != "gated"}
    assert set(rows) == builtin_convs
    for name, cells in rows.items():
        cls = get_op(name)
        assert cells[1] == cls.paper and cells[2] == cls.guide
        assert cells[3].startswith("exact" if cls.function_preserving else "approx"), name


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_python_snippet_runs_as_written(index, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SNIPPETS[index]], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"README snippet {index + 1}:\n{SNIPPETS[index]}\n{out.stderr[-3000:]}"
