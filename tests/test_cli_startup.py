"""The commands that only read suites and records start without torch/timm (issue 15): each command's
code path runs in a fresh interpreter and ``sys.modules`` is checked afterwards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptconv.sweep.cache import load_suite_cached
from adaptconv.sweep.suite import load_suite

SUITE = """\
name: startup
description: two tiny digits trials, one with operator options
base: {task: classification, dataset: digits, steps: 3, batch_size: 8, threads: 1}
blocks:
  - name: plain
    product: {op: [conv, pac]}
  - name: options
    base: {op: condconv, op_options: {num_experts: 2}}
seeds: [0, 1]
"""

PROBE = """\
import json, sys
import adaptconv.cli as cli
try:
    rc = cli.main(sys.argv[1:])
except SystemExit as exc:  # --help
    rc = exc.code
print(json.dumps({"rc": rc, "heavy": sorted(m for m in ("torch", "timm") if m in sys.modules)}))
"""


def _run(args, tmp_path):
    env = {**os.environ, "ADAPTCONV_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


def test_reading_commands_import_neither_torch_nor_timm(tmp_path):
    (tmp_path / "startup.yaml").write_text(SUITE)
    results = ["--results", str(tmp_path / "res")]
    assert _run(["--help"], tmp_path)[0] == {"rc": 0, "heavy": []}
    # the first plan expands and checks the suite (builds condconv with its options: torch)
    first, _ = _run(["plan", "startup.yaml", *results], tmp_path)
    assert first["rc"] == 0 and "torch" in first["heavy"]
    for args in (
        ["plan", "startup.yaml"],
        ["status", "startup.yaml"],
        ["cancel", "startup.yaml"],
        ["collect", "startup.yaml"],
    ):
        probe, stdout = _run([*args, *results], tmp_path)
        assert probe == {"rc": 0, "heavy": []}, (args, stdout)
    # an edited suite is expanded and checked again
    (tmp_path / "startup.yaml").write_text(SUITE.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    probe, stdout = _run(["status", "startup.yaml", *results], tmp_path)
    assert probe["rc"] == 0 and "torch" in probe["heavy"] and "9 trials" in stdout


def test_cached_expansion_equals_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTCONV_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "startup.yaml"
    path.write_text(SUITE)
    fresh = load_suite(path)
    first, hit = load_suite_cached(path)
    assert not hit and first == fresh
    again, hit = load_suite_cached(path)
    assert hit and again == fresh
    # read without the registry (collect/report): the checked expansion serves it
    unchecked, hit = load_suite_cached(path, check_registry=False)
    assert hit and unchecked == fresh
    # a damaged cache file is a miss, not an error
    for f in Path(tmp_path / "cache").iterdir():
        f.write_text("{not json")
    again, hit = load_suite_cached(path)
    assert not hit and again == fresh


def test_a_suite_error_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTCONV_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "bad.yaml"
    path.write_text(SUITE.replace("num_experts: 2", "num_experts: -3"))
    from adaptconv.sweep.suite import SuiteError

    for _ in range(2):
        with pytest.raises(SuiteError, match="num_experts"):
            load_suite_cached(path)


def test_the_cache_keeps_the_most_recent_entries_only(tmp_path, monkeypatch):
    import adaptconv.sweep.cache as cache

    monkeypatch.setenv("ADAPTCONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "KEEP", 2)
    for seeds in ("[0]", "[1]", "[2]"):
        path = tmp_path / f"s{seeds[1]}.yaml"
        path.write_text(SUITE.replace("seeds: [0, 1]", f"seeds: {seeds}"))
        load_suite_cached(path)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    assert load_suite_cached(tmp_path / "s2.yaml")[1] and not load_suite_cached(tmp_path / "s0.yaml")[1]


def test_report_imports_neither_torch_nor_timm_once_the_installation_is_described(tmp_path):
    from fixtures.records import write_fixture

    suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0, 1), kernel_types=())
    (tmp_path / "claims.yaml").write_text(
        "claims:\n  - {id: pac-rmse, claim: PAC lowers RMSE, source: fixture, section: {task: upsampling, "
        "dataset: middlebury}, op: pac, metric: rmse, direction: lower}\n"
    )
    args = [
        "report",
        str(tmp_path / "fixture.yaml"),
        "--results",
        str(store.root),
        "--out",
        str(tmp_path / "rep"),
        "--claims",
        str(tmp_path / "claims.yaml"),
    ]
    # the first report describes this installation for the claims (the registry: torch), and caches it
    first, _ = _run(args, tmp_path)
    assert first["rc"] == 0
    probe, stdout = _run(args, tmp_path)
    assert probe == {"rc": 0, "heavy": []}, stdout
    assert "claims (" in stdout and "1 supported" in stdout and (tmp_path / "rep" / "README.md").is_file()
