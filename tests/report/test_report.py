"""The report from fixture records: tables hold the expected rows and values with the best marked,
every figure is a valid image whose legend lists the expected operators, the HTML links only files that
exist, a partial suite shows its pending trials without inventing results, and regeneration is
byte-identical. Also `adaptconv collect/report/compare` end to end."""

import json
import math
import re
import shutil
import statistics

import numpy as np
import pandas as pd
import pytest
from fixtures.records import OP_MS, rmse, write_fixture
from PIL import Image

from adaptconv.cli import main
from adaptconv.report import build_report, compare
from adaptconv.report.figures import pareto_front
from adaptconv.results.collect import collect

SECTION = "upsampling-middlebury-jointnet"
VARIANTS = ["conv", "pac", "pac (kernel_type=inv)", "dfn"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    suite, store = write_fixture(root, pending=2, failed=1)
    col = collect(store, suite)
    report = build_report(col, root / "report")
    return root, suite, store, col, report


def test_section_table_rows_and_values(built):
    root, *_ = built
    t = pd.read_csv(root / "report" / "tables" / f"{SECTION}.csv")
    assert list(zip(t["task_options.scale"], t["operator"])) == [(s, v) for s in (4, 8) for v in VARIANTS]
    for _, r in t.iterrows():
        if r["operator"] == "pac (kernel_type=inv)" and r["task_options.scale"] == 8:
            # one failed and two pending: listed, counted, no value invented
            assert (r["n_done"], r["n_failed"], r["n_pending"]) == (0, 1, 2)
            assert math.isnan(r["metric.rmse"]) and math.isnan(r["inference_ms"])
            continue
        op = r["operator"].split(" ")[0]
        kt = "inv" if "inv" in r["operator"] else None
        assert r["metric.rmse"] == pytest.approx(statistics.mean(rmse(op, r["task_options.scale"], s, kt) for s in range(3)))
        assert r["metric.rmse.n"] == 3
        assert r["inference_ms.x_conv"] == pytest.approx(OP_MS[op] / OP_MS["conv"])
        assert r["params.x_conv"] == pytest.approx(OP_MS[op])
    best = t[t["metric.rmse.best"]]
    assert list(best["operator"]) == ["pac", "pac"]  # lowest rmse at both scales
    verdict = t.set_index(["task_options.scale", "operator"])["metric.rmse.significant_vs_best"]
    assert verdict[(4, "conv")] and verdict[(4, "dfn")] and not verdict[(4, "pac (kernel_type=inv)")]


def test_best_is_marked_in_markdown_latex_and_html(built):
    root, *_ = built
    md = (root / "report" / "tables" / f"{SECTION}.md").read_text()
    pac_row = next(line for line in md.splitlines() if "| pac  " in line or "| pac " in line and "inv" not in line)
    assert "**1.103 ± 0.038**" in pac_row  # mean and t-CI half-width of pac at scale 4
    tex = (root / "report" / "tables" / f"{SECTION}.tex").read_text()
    assert r"\textbf{1.103 $\pm$ 0.038}" in tex and r"\begin{tabular}" in tex and r"\toprule" in tex
    assert "kernel\\_type=inv" in tex  # escaped for LaTeX
    html = (root / "report" / "index.html").read_text()
    assert '<td class="best">1.103 ± 0.038</td>' in html
    assert "worse (CIs separate)" in html and "tied (CIs overlap)" in html


def test_figures_are_images_with_the_expected_legends(built):
    root, _, _, _, report = built
    manifest = json.loads((root / "report" / "manifest.json").read_text())
    kinds = {f["kind"] for f in manifest["figures"]}
    assert kinds == {"bars", "pareto", "scaling", "ablation", "curves"}
    for f in manifest["figures"]:
        path = root / "report" / f["file"]
        assert path.stat().st_size > 1000
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
        if f["kind"] == "scaling" and "scale-8" in f["file"]:
            assert f["legend"] == ["conv", "pac", "dfn"]  # the unfinished variant has no point to draw
        elif f["file"] == "figures/ablation-op-options-kernel-type.png":
            assert f["legend"] == ["pac"]  # only pac takes the option: default against inv
            assert "held at scale=4" in f["caption"]
        else:
            assert f["legend"] == VARIANTS, f["file"]
    assert any(f["file"] == "figures/ablation-task-options-scale.png" for f in manifest["figures"])


def test_html_and_markdown_link_only_existing_files(built):
    root, *_ = built
    folder = root / "report"
    html = (folder / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    md_links = re.findall(r"\]\(([^)]+)\)", (folder / "README.md").read_text())
    assert len(links) > 6 and len(md_links) > 6
    for link in links + md_links:
        assert not re.match(r"[a-z]+://", link) and not link.startswith("/"), link  # offline, relative
        assert (folder / link).is_file(), link
    shown = set(re.findall(r'src="(figures/[^"]+)"', html))
    assert shown == {f"figures/{p.name}" for p in (folder / "figures").iterdir()}


def test_partial_suite_lists_what_is_missing(built):
    root, *_ = built
    status = pd.read_csv(root / "report" / "tables" / "status.csv")
    assert sorted(status["state"]) == ["failed", "pending", "pending"]
    assert status.loc[status["state"] == "failed", "error"].iloc[0] == "RuntimeError: boom (fixture)"
    readme = (root / "report" / "README.md").read_text()
    assert "21 of 24 trials finished (1 failed, 2 pending)" in readme


def test_regeneration_is_byte_identical_and_removes_stale_files(built, tmp_path):
    root, suite, store, col, _ = built
    again = tmp_path / "again"
    (again / "figures").mkdir(parents=True)
    (again / "figures" / "old-figure.png").write_bytes(b"stale")
    build_report(collect(store, suite), again)
    first = {p.relative_to(root / "report"): p.read_bytes() for p in (root / "report").rglob("*") if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9), (0.5, 0.1)]
    assert pareto_front(pts, higher_is_better=True) == [(0.5, 0.1), (1.0, 0.5), (2.0, 0.7), (4.0, 0.9)]
    assert pareto_front(pts, higher_is_better=False) == [(0.5, 0.1)]
    # the same metric at a higher latency is dominated, not a second point of the front
    assert pareto_front([(1.0, 0.5), (2.0, 0.5), (3.0, 0.6)], higher_is_better=True) == [(1.0, 0.5), (3.0, 0.6)]


def test_compare_two_result_sets(built, tmp_path):
    root, suite, store, col, _ = built
    other = tmp_path / "other"
    shutil.copytree(store.root, other)
    for rec_path in other.glob("trials/*/record.json"):
        rec = json.loads(rec_path.read_text())
        for run in rec.get("measurements", {}).get("runs", []):
            run["latency"]["median_s"] *= 2  # the same trials on a machine half as fast
        rec_path.write_text(json.dumps(rec))
    cmp = compare(col, collect(other))
    s = cmp.summary.set_index("column")
    assert len(cmp.table) == 21 and cmp.only_a == cmp.only_b == []
    assert s.loc["inference_ms", "geomean B/A"] == pytest.approx(2.0)
    assert s.loc["train_step_ms", "min B/A"] == pytest.approx(2.0)
    assert s.loc["metric.rmse", "geomean B/A"] == pytest.approx(1.0)
    assert np.allclose(cmp.table["inference_ms B/A"], 2.0)


def test_cli_collect_report_compare(tmp_path, capsys):
    suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0, 1, 2), kernel_types=(),
                                 pending=1)
    suite_file = tmp_path / "fixture.yaml"
    assert main(["collect", str(suite_file), "--results", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "6 trials (5 done, 1 pending)" in out and "results.parquet" in out
    assert (store.root / "results.parquet").is_file() and (store.root / "results.csv").is_file()
    dest = tmp_path / "rep"
    assert main(["report", str(suite_file), "--results", str(store.root), "--out", str(dest)]) == 0
    assert f"report: {dest / 'index.html'}" in capsys.readouterr().out
    assert main(["compare", str(store.root), str(store.root), "--out", str(tmp_path / "cmp.csv")]) == 0
    assert "5 trials in both" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "cmp.csv")) == 5


def test_cli_errors_name_what_is_wrong(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "not a results folder" in capsys.readouterr().err
    assert main(["report", "no-such-suite-anywhere"]) == 2
    assert "no suite named 'no-such-suite-anywhere'" in capsys.readouterr().err


def test_report_from_the_stored_suite_copy_when_the_suite_file_is_gone(tmp_path, capsys, monkeypatch):
    suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0, 1), kernel_types=())
    (store.root / "suite.yaml").write_text((tmp_path / "fixture.yaml").read_text())
    (tmp_path / "fixture.yaml").unlink()
    monkeypatch.chdir(tmp_path)
    shutil.move(str(store.root), tmp_path / "results" / "fixture") if store.root != tmp_path / "results" / "fixture" else None
    assert main(["report", "fixture"]) == 0
    assert (tmp_path / "report" / "fixture" / "index.html").is_file()
    capsys.readouterr()


def test_a_swept_config_key_named_like_a_run_column(tmp_path):
    """`batch_size` is both a config key (swept here) and a column of the runs table."""
    suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0,), kernel_types=(),
                                 batch_sizes=(4, 8))
    report = build_report(collect(store, suite), tmp_path / "report")
    scaling = [f for f in report.figures if f.kind == "scaling"]
    assert sorted(f.file for f in scaling) == ["figures/scaling-upsampling-middlebury-jointnet-batch-size-4.png",
                                               "figures/scaling-upsampling-middlebury-jointnet-batch-size-8.png"]
    assert any(f.file == "figures/ablation-batch-size.png" for f in report.figures)


def test_compare_without_common_trials_says_why(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, a = write_fixture(tmp_path / "a", ops=("conv",), scales=(4,), seeds=(0,), kernel_types=())
    _, b = write_fixture(tmp_path / "b", ops=("pac",), scales=(4,), seeds=(0,), kernel_types=())
    assert main(["compare", str(a.root), str(b.root)]) == 1
    assert "no finished trial in common" in capsys.readouterr().out


def test_factors_swept_together_get_one_ablation_figure(tmp_path):
    """zip: {optimizer.lr, batch_size}: one figure (the first key), the other not held fixed."""
    suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0,), kernel_types=(),
                                 zipped={"optimizer.lr": [0.001, 0.01], "batch_size": [4, 8]})
    report = build_report(collect(store, suite), tmp_path / "report")
    ablations = sorted(f.file for f in report.figures if f.kind == "ablation")
    assert len(ablations) == 1, ablations
    assert ablations[0] in ("figures/ablation-optimizer-lr.png", "figures/ablation-batch-size.png")
