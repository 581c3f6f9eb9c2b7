"""The public API: what ``adaptconv`` exports, and the example plugin using nothing else."""

import ast
import subprocess
import sys
from pathlib import Path

import adaptconv

EXAMPLE = Path(__file__).parents[1] / "examples" / "adaptconv-gated-op" / "src"


def test_every_public_name_resolves_and_the_package_import_stays_light():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, adaptconv; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
    for name in adaptconv.__all__:
        assert getattr(adaptconv, name) is not None, name
    for name in ("swap_convs", "run_trial", "AdaptiveModule", "AdaptiveConv2d", "register_op", "run_checks"):
        assert name in adaptconv.__all__


def test_the_example_plugin_uses_only_the_public_api():
    files = sorted(EXAMPLE.rglob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "adaptconv":
                assert node.module == "adaptconv", f"{path.name}: imports {node.module} (not the public API)"
                assert {a.name for a in node.names} <= set(adaptconv.__all__), path.name
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "adaptconv" or a.name == "adaptconv" for a in node.names)
