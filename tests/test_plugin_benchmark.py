"""User story 3: a new operator added through the plugin interface is benchmarked against the others.

The example package `examples/adaptconv-gated-op` (installed by `make test`) passes `adaptconv check-op`,
runs in a tiny suite next to built-in operators through the local executor, and appears in the report
with its own colour in the legend of every figure."""

import json

import pytest

from adaptconv.cli import main
from adaptconv.ops import list_ops

SUITE = """\
name: plugin-tiny
description: the example plugin against conv and pac on digits, a few steps
base: {task: classification, dataset: digits, backbone: simplecnn-s, steps: 4, batch_size: 16, threads: 1,
       measure: {batch_sizes: [1], resolutions: [8, 16], warmup: 1, repeats: 3, min_time_s: 0.0,
                 memory: false}}
product: {op: [conv, pac, gated]}
seeds: [0, 1]
"""


@pytest.fixture(autouse=True)
def _needs_plugin():
    if "gated" not in list_ops():
        pytest.skip("the example plugin is not installed (`make test` installs examples/adaptconv-gated-op)")


def test_plugin_passes_check_op(capsys):
    assert main(["check-op", "gated"]) == 0
    assert "conform" in capsys.readouterr().out


def test_plugin_runs_in_a_suite_and_is_in_the_report(tmp_path, capsys):
    suite = tmp_path / "plugin-tiny.yaml"
    suite.write_text(SUITE)
    results, report = tmp_path / "results", tmp_path / "report"
    assert main(["run", str(suite), "--results", str(results)]) == 0
    assert "finished: 6 done" in capsys.readouterr().out
    assert main(["report", str(suite), "--results", str(results), "--out", str(report)]) == 0
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["counts"]["done"] == 6
    assert sum(manifest["counts"].values()) == 6  # nothing failed, crashed, corrupt or pending
    for fig in manifest["figures"]:
        assert fig["legend"] == ["conv", "pac", "gated"], fig["file"]  # built-ins first, then the plugin
    table = (report / "tables" / "classification-digits-simplecnn-s.md").read_text()
    assert "| gated " in table
