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
from fixtures.records import OP_MS, baselines, rmse, write_fixture
from PIL import Image

from adaptconv.cli import main
from adaptconv.report import build_report, compare
from adaptconv.report.figures import pareto_front
from adaptconv.report.tables import build_layout
from adaptconv.results.collect import collect

SECTION = "upsampling-middlebury-jointnet"
VARIANTS = ["conv", "pac", "pac (kernel_type=inv)", "dfn"]
BASELINES = ["bilinear", "guided_filter"]


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
    assert list(zip(t["task_options.scale"], t["operator"])) == [(s, v) for s in (4, 8) for v in VARIANTS + BASELINES]
    assert list(t["kind"]) == (["operator"] * 4 + ["baseline"] * 2) * 2
    for _, r in t.iterrows():
        scale = r["task_options.scale"]
        if r["operator"] == "pac (kernel_type=inv)" and scale == 8:
            # one failed and two pending: listed, counted, no value invented, no verdict
            assert (r["n_done"], r["n_failed"], r["n_pending"]) == (0, 1, 2)
            assert math.isnan(r["metric.rmse"]) and math.isnan(r["inference_ms"])
            assert r["metric.rmse.verdict"] == "n<2, no CI" and not r["metric.rmse.best"]
            continue
        if r["kind"] == "baseline":
            values = [baselines(scale, s)[r["operator"]]["rmse"] for s in range(3)]
            assert math.isnan(r["inference_ms"])
        else:
            op = r["operator"].split(" ")[0]
            kt = "inv" if "inv" in r["operator"] else None
            values = [rmse(op, scale, s, kt) for s in range(3)]
            assert r["inference_ms.x_conv"] == pytest.approx(OP_MS[op] / OP_MS["conv"])
            assert r["params.x_conv"] == pytest.approx(OP_MS[op])
        assert r["metric.rmse"] == pytest.approx(statistics.mean(values)) and r["metric.rmse.n"] == 3
        # the difference to conv, seed by seed (the same seed of both rows)
        conv = [rmse("conv", scale, s) for s in range(3)]
        if r["operator"] == "conv":
            assert r["metric.rmse.verdict"] == "reference" and math.isnan(r["metric.rmse.delta"])
            continue
        diffs = [v - c for v, c in zip(values, conv)]
        assert r["metric.rmse.delta"] == pytest.approx(statistics.mean(diffs)) and r["metric.rmse.delta_n"] == 3
        assert r["reference"] == "conv"
    v = t.set_index(["task_options.scale", "operator"])
    assert v.loc[(4, "pac"), "metric.rmse.verdict"] == "better" and v.loc[(4, "dfn"), "metric.rmse.verdict"] == "worse"
    # a baseline's verdict is the baseline's against conv: worse, so the network learned
    assert v.loc[(8, "bilinear"), "metric.rmse.verdict"] == "worse"
    assert v.loc[(8, "conv"), "metric.rmse.vs_baseline"] == "guided_filter"  # the stronger baseline
    assert v.loc[(8, "conv"), "metric.rmse.vs_baseline_verdict"] == "better"
    # bold only where the advantage over conv is significant: pac and its inv variant at scale 4
    assert list(t.loc[t["metric.rmse.best"], "operator"]) == ["pac", "pac (kernel_type=inv)", "pac"]
    assert t["metric.rmse.holm_reject"].dtype == bool and "metric.rmse.p_value" in t


def test_values_print_the_digits_their_interval_supports(built):
    root, *_ = built
    md = (root / "report" / "tables" / f"{SECTION}.md").read_text()
    head = md.splitlines()[0]
    assert "Δ vs conv (95% CI)" in head and "verdict" in head and "vs trivial baseline" in head
    pac_row = next(line for line in md.splitlines() if re.match(r"\|\s+4 \| pac\s+\|", line))
    assert "**1.10 ± 0.04**" in pac_row  # mean and t-CI half-width of pac at scale 4 (1.1033 ± 0.038)
    assert "| -0.300 ± 0 " in pac_row and "| better " in pac_row
    assert "1.103333" not in md
    tex = (root / "report" / "tables" / f"{SECTION}.tex").read_text()
    assert r"\textbf{1.10 $\pm$ 0.04}" in tex and r"\begin{tabular}" in tex and r"\toprule" in tex
    assert "kernel\\_type=inv" in tex  # escaped for LaTeX
    assert r"$\Delta$ vs conv" in tex and r"n$<$2, no CI" in tex
    html = (root / "report" / "index.html").read_text()
    assert '<td class="best">1.10 ± 0.04</td>' in html
    assert "<td>worse (conv beats it)</td>" in html and "<td>reference</td>" in html
    assert "CIs separate" not in html and "vs best" not in html


def test_findings_open_the_report_in_words(built):
    root, *_ = built
    readme = (root / "report" / "README.md").read_text()
    assert readme.startswith("# adaptconv report: fixture\n\n## Findings\n")
    findings = readme[: readme.index("## How to read it")]
    assert "Holm–Bonferroni" in findings and "paired by seed" in findings
    assert "*scale=4:* `conv` scores 1.40 ± 0.04 (`rmse`, n=3). It beats every trivial baseline" in findings
    assert "so the budget learns" in findings
    assert (
        "Better than `conv`: `pac` (Δ -0.300 ± 0), `pac (kernel_type=inv)` (Δ -0.250 ± 0). Worse: `dfn` (Δ +0.100 ± 0)."
        in findings
    )
    assert "No result to compare: `pac (kernel_type=inv)`." in findings  # scale 8: failed and pending
    notes = readme[readme.index("## How to read it") :].split("\n## ")[0]
    assert "paired by seed" in notes and "Holm–Bonferroni" in notes


def test_index_html_renders_the_markdown_of_its_text(built):
    root, *_ = built
    html = (root / "report" / "index.html").read_text()
    assert "`" not in html and "**" not in html
    assert "<code>conv</code>" in html and "<h2>Findings</h2>" in html
    assert html.index("<h2>Findings</h2>") < html.index("<h2>How to read it</h2>")


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
        elif f["file"] == "figures/ablation-task-options-scale.png":
            assert f["legend"] == ["conv", "pac", "dfn"]  # pac (kernel_type=inv) has one scale: no line
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
    suite, store = write_fixture(
        tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0, 1, 2), kernel_types=(), pending=1
    )
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
    shutil.move(
        str(store.root), tmp_path / "results" / "fixture"
    ) if store.root != tmp_path / "results" / "fixture" else None
    assert main(["report", "fixture"]) == 0
    assert (tmp_path / "report" / "fixture" / "index.html").is_file()
    capsys.readouterr()


def test_a_swept_config_key_named_like_a_run_column(tmp_path):
    """`batch_size` is both a config key (swept here) and a column of the runs table."""
    suite, store = write_fixture(
        tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0,), kernel_types=(), batch_sizes=(4, 8)
    )
    report = build_report(collect(store, suite), tmp_path / "report")
    scaling = [f for f in report.figures if f.kind == "scaling"]
    assert sorted(f.file for f in scaling) == [
        "figures/scaling-upsampling-middlebury-jointnet-batch-size-4.png",
        "figures/scaling-upsampling-middlebury-jointnet-batch-size-8.png",
    ]
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
    suite, store = write_fixture(
        tmp_path,
        ops=("conv", "pac"),
        scales=(4,),
        seeds=(0,),
        kernel_types=(),
        zipped={"optimizer.lr": [0.001, 0.01], "batch_size": [4, 8]},
    )
    report = build_report(collect(store, suite), tmp_path / "report")
    ablations = sorted(f.file for f in report.figures if f.kind == "ablation")
    assert len(ablations) == 1, ablations
    assert ablations[0] in ("figures/ablation-optimizer-lr.png", "figures/ablation-batch-size.png")


# ---- verdicts: paired by seed, Holm, network variants, groups of one, one seed --------------------

SHARED = [0.0, 0.3, -0.25, 0.2, -0.15]  # what a seed does to every row alike (data order, init)
Z = np.array([-1.2, -0.4, 0.1, 0.5, 1.0])
Z = (Z - Z.mean()) / Z.std(ddof=1)  # per-seed scatter of a difference: mean 0, sd 1


def _differences(p_value: float, sd: float = 0.01, n: int = 5) -> np.ndarray:
    """Per-seed differences (lower RMSE: negative) whose paired t-test has two-sided ``p_value``."""
    from scipy import stats as sps

    t = sps.t.isf(p_value / 2, n - 1)
    return -(t * sd / math.sqrt(n)) + sd * Z[:n]


def _table(tmp_path, text: str, values: dict, baselines_fn=None):
    """Write a suite whose trials score ``values[label][seed]`` and return its section table."""
    from adaptconv.report.tables import build_layout, section_table

    def value(cfg):
        opts = cfg.get("op_options") or {}
        label = cfg["op"] + "".join(f"+{v}" for v in opts.values())
        label += "".join(f"+{cfg['task_options'][k]}" for k in ("upsampler",) if k in cfg["task_options"])
        label += f"@{cfg['steps']}" if cfg["steps"] != 20 else ""
        return values[label][cfg["seed"]]

    tmp_path.mkdir(parents=True, exist_ok=True)
    suite, store = write_fixture(tmp_path, text=text, value_fn=value, baselines_fn=baselines_fn or (lambda c: None))
    layout = build_layout(collect(store, suite))
    return layout, section_table(layout, layout.sections[0]).set_index("operator")


def _suite(ops, seeds, extra_blocks: str = "") -> str:
    return (
        f"name: fixture\ndescription: verdict fixture\nbase: {{task: upsampling, dataset: middlebury, steps: 20, task_options: {{scale: 8}}}}\n"
        f"seeds: {list(seeds)}\nblocks:\n  - {{name: operators, product: {{op: [{', '.join(ops)}]}}}}\n" + extra_blocks
    )


def test_verdicts_are_paired_by_seed_and_holm_corrected(tmp_path):
    """p-values 0.001, 0.03, 0.04 against conv in one group: every interval excludes zero, but Holm
    rejects only the first (0.03 > 0.05/2); pairing is what makes pac's difference visible at all."""
    from scipy import stats as sps

    conv = 2.0 + 0.5 * np.array(SHARED)
    diffs = {"pac": _differences(0.001), "dfn": _differences(0.03), "paka": _differences(0.04)}
    values = {"conv": conv, **{op: conv + d for op, d in diffs.items()}}
    _, t = _table(tmp_path, _suite(["conv", "pac", "dfn", "paka"], range(5)), values)
    for op, d in diffs.items():
        r = t.loc[op]
        assert r["metric.rmse.p_value"] == pytest.approx(sps.ttest_rel(values[op], conv).pvalue)
        assert r["metric.rmse.delta"] == pytest.approx(d.mean())
        assert r["metric.rmse.delta_ci_high"] < 0  # each interval alone excludes zero
    assert t.loc["pac", "metric.rmse.p_value"] == pytest.approx(0.001)
    assert list(t["metric.rmse.holm_reject"]) == [False, True, False, False]  # conv, pac, paka, dfn
    assert t.loc["pac", "metric.rmse.verdict"] == "better" and t.loc["pac", "metric.rmse.best"]
    for op in ("dfn", "paka"):
        assert t.loc[op, "metric.rmse.verdict"] == "no detectable difference" and not t.loc[op, "metric.rmse.best"]
    # unpaired, pac's interval overlaps conv's: only the pairing separates them
    assert t.loc["pac", "metric.rmse.ci_high"] > t.loc["conv", "metric.rmse.ci_low"]


def test_baselines_are_a_holm_family_of_their_own(tmp_path):
    """conv against bilinear at p = 0.02 beside three operators: within one family of four, Holm would
    need p <= 0.05/4 and keep the question 'does the network learn' open; as its own family it is
    answered, while the operators' verdicts are corrected among themselves only."""
    conv = 2.0 + 0.5 * np.array(SHARED)
    values = {"conv": conv, "pac": conv + 0.3 * Z, "dfn": conv + 0.2 * Z, "paka": conv + 0.1 * Z}
    bilinear = conv - _differences(0.02)
    _, t = _table(
        tmp_path,
        _suite(["conv", "pac", "dfn", "paka"], range(5)),
        values,
        baselines_fn=lambda c: {"bilinear": {"rmse": float(bilinear[c["seed"]])}},
    )
    b = t.loc["bilinear"]
    assert b["metric.rmse.p_value"] == pytest.approx(0.02)
    assert b["metric.rmse.holm_reject"] and b["metric.rmse.verdict"] == "worse"
    for op in ("pac", "dfn", "paka"):
        assert t.loc[op, "metric.rmse.verdict"] == "no detectable difference"


def test_conv_is_best_only_when_it_beats_every_other_row(tmp_path):
    conv = 2.0 + 0.5 * np.array(SHARED)
    values = {"conv": conv, "pac": conv - _differences(0.001), "dfn": conv - _differences(0.002)}
    _, t = _table(tmp_path / "a", _suite(["conv", "pac", "dfn"], range(5)), values)
    assert list(t["metric.rmse.verdict"]) == ["reference", "worse", "worse"]
    assert list(t["metric.rmse.best"]) == [True, False, False]
    values["dfn"] = conv + 0.3 * Z  # no detectable difference: conv is not the best any more
    _, t = _table(tmp_path / "b", _suite(["conv", "pac", "dfn"], range(5)), values)
    assert t.loc["dfn", "metric.rmse.verdict"] == "no detectable difference"
    assert not t["metric.rmse.best"].any()


def test_network_variants_are_compared_with_the_same_network_and_never_alone(tmp_path):
    """CARAFE as the upsampler (3× worse than bilinear, as on main) and a row alone in its group: neither
    can be best; a variant's reference is the same network without it."""
    conv = 2.0 + 0.2 * np.array(SHARED[:3])
    values = {
        "conv": conv,
        "pac": conv - 0.1 + 0.01 * Z[:3],
        "conv+carafe": 3 * 3.565 + 0.1 * Z[:3],
        "pac+carafe": conv - 0.2 + 0.01 * Z[:3],
        "pac@40": [0.5, 0.51, 0.49],
    }
    blocks = (
        "  - {name: carafe, base: {task_options: {scale: 8, upsampler: carafe}}, product: {op: [conv, pac]}}\n"
        "  - {name: longer, base: {op: pac, steps: 40}}\n"
    )
    layout, t = _table(
        tmp_path,
        _suite(["conv", "pac"], range(3), blocks),
        values,
        baselines_fn=lambda c: {"bilinear": {"rmse": 3.565 + 0.01 * c["seed"]}},
    )
    assert list(t.index) == [
        "conv",
        "pac",
        "conv (upsampler=carafe)",
        "pac (upsampler=carafe)",
        "bilinear",
        "pac",
        "bilinear",
    ]
    assert list(t["steps"]) == [20] * 5 + [40] * 2  # the budget makes groups; the upsampler does not
    first = t[t["steps"] == 20]
    carafe = first.loc["conv (upsampler=carafe)"]
    assert (carafe["kind"], carafe["reference"], carafe["metric.rmse.verdict"]) == ("network variant", "conv", "worse")
    assert carafe["metric.rmse.vs_baseline_verdict"] == "worse" and not carafe["metric.rmse.best"]
    pac_carafe = first.loc["pac (upsampler=carafe)"]
    assert pac_carafe["reference"] == "pac"  # the same network without the variant
    assert pac_carafe["metric.rmse.delta"] == pytest.approx(-0.1)
    # pac is better than conv in the first group, and the lower value of pac at 40 steps is alone
    assert first.loc["pac", "metric.rmse.best"]
    alone = t[t["steps"] == 40].loc["pac"]
    assert alone["metric.rmse.verdict"] == "no conv to compare" and not alone["metric.rmse.best"]
    assert t["metric.rmse.best"].sum() == 1
    from adaptconv.report.findings import findings

    ((section, paragraphs),) = findings(layout)
    assert "`conv (upsampler=carafe)` (Δ +" in paragraphs[0] and "Worse:" in paragraphs[0]
    assert "no `conv` row to compare with (`pac`, `bilinear`)" in paragraphs[1]


def test_one_seed_is_never_best_and_says_so(tmp_path):
    values = {"conv": [2.0], "pac": [1.0], "dfn": [3.0]}
    layout, t = _table(
        tmp_path, _suite(["conv", "pac", "dfn"], [0]), values, baselines_fn=lambda c: {"bilinear": {"rmse": 2.5}}
    )
    assert list(t["metric.rmse.verdict"]) == ["reference", "n<2, no CI", "n<2, no CI", "n<2, no CI"]
    assert not t["metric.rmse.best"].any()
    from adaptconv.report.tables import display_table, to_markdown

    cells, marks = display_table(t.reset_index(), layout, layout.sections[0])
    assert not marks.values.any() and "**" not in to_markdown(cells, marks)
    assert list(cells["rmse ↓"]) == ["2.000", "1.000", "3.000", "2.500"]  # 4 significant digits, no ±
    assert list(cells["Δ vs conv (95% CI)"]) == ["reference", "-1.00 (n=1)", "+1.00 (n=1)", "+0.500 (n=1)"]
    from adaptconv.report.findings import section_findings

    text = section_findings(layout, layout.sections[0])[0]
    assert "fewer than two seeds" in text and "One seed only, no verdict: `pac`, `dfn`." in text


def test_findings_say_when_the_network_has_not_learned(tmp_path):
    conv = 3.6 + 0.2 * np.array(SHARED[:3])
    values = {"conv": conv, "pac": conv + 0.001 * Z[:3]}
    layout, _ = _table(
        tmp_path,
        _suite(["conv", "pac"], range(3)),
        values,
        baselines_fn=lambda c: {"bilinear": {"rmse": 3.5 + 0.2 * SHARED[c["seed"]]}},
    )
    from adaptconv.report.findings import section_findings

    text = section_findings(layout, layout.sections[0])[0]
    assert "It is **worse** than `bilinear` (Δ +0.100 ± 0): at this budget the network has not learned" in text
    assert "No operator is better than `conv`." in text and "No detectable difference at this budget: `pac`." in text
    b = layout.baselines_of(layout.sections[0])
    assert list(b.columns) == [
        "baseline",
        "section",
        "group",
        "metric.rmse",
        "metric.rmse.ci_low",
        "metric.rmse.ci_high",
        "metric.rmse.n",
        "metric.mae",
        "metric.mae.ci_low",
        "metric.mae.ci_high",
        "metric.mae.n",
    ]
    assert b["metric.rmse"].iloc[0] == pytest.approx(3.5 + 0.2 * np.mean(SHARED[:3]))
    assert b["metric.rmse.n"].iloc[0] == 3 and math.isnan(b["metric.mae"].iloc[0])


def test_findings_of_a_wide_sweep_count_verdicts_over_groups(built, monkeypatch):
    from adaptconv.report import findings as findings_module
    from adaptconv.report.tables import build_layout

    _, _, _, col, _ = built
    monkeypatch.setattr(findings_module, "MAX_GROUPS", 1)  # the fixture's two scales count as many
    ((section, (text,)),) = findings_module.findings(build_layout(col))
    assert text.startswith("2 comparison groups")
    assert "`conv` beats every trivial baseline in 2 of 2 groups." in text
    assert (
        "Against `conv`, in groups: `pac` 2 better; `pac (kernel_type=inv)` 1 better, 1 too few seeds; `dfn` 2 worse."
    ) in text


def _mark_contended(store_root, op: str, seeds=(0,)) -> int:
    """Flag the latency runs of ``op``'s records (of ``seeds``) as timed under contention; returns how many."""
    n = 0
    for rec_path in store_root.glob("trials/*/record.json"):
        rec = json.loads(rec_path.read_text())
        if rec["config"]["op"] != op or rec["config"]["seed"] not in seeds or rec.get("status") != "ok":
            continue
        for run in rec["measurements"]["runs"]:
            run["latency"]["contended"] = True
            run["latency"]["median_s"] *= 40  # what an oversubscribed CPU does to a latency
            n += 1
        rec_path.write_text(json.dumps(rec))
    return n


def test_contended_latencies_are_marked_warned_about_and_left_out_of_compare(tmp_path):
    suite, store = write_fixture(tmp_path, ops=("conv", "pac", "dfn"), scales=(4,), seeds=(0, 1, 2), kernel_types=())
    clean = collect(store, suite)
    other = tmp_path / "other"
    shutil.copytree(store.root, other)
    flagged = _mark_contended(store.root, "pac")
    col = collect(store, suite)
    build_report(col, tmp_path / "rep")
    t = pd.read_csv(tmp_path / "rep" / "tables" / f"{SECTION}.csv").set_index("operator")
    # one seed of three contended: the row carries the flag, the others do not
    assert t.loc["pac", "inference_ms.contended"] and t.loc["pac", "inference_ms.x_conv.contended"]
    assert not t.loc["conv", "inference_ms.contended"] and not t.loc["dfn", "inference_ms.x_conv.contended"]
    md = (tmp_path / "rep" / "README.md").read_text()
    table = md.split("## upsampling · middlebury · jointnet")[1]
    pac_line = next(line for line in table.splitlines() if line.startswith("| pac "))
    dfn_line = next(line for line in table.splitlines() if line.startswith("| dfn "))
    assert pac_line.count("‡") == 4 and "‡" not in dfn_line  # latency and ratio, inference and training step
    assert f"{flagged} of " in md and "Latencies to read with care" in md and "not the operator" in md
    assert "Hollow" in json.dumps(json.loads((tmp_path / "rep" / "manifest.json").read_text())["figures"])
    html = (tmp_path / "rep" / "index.html").read_text()
    assert 'class="warning"' in html
    # compare: the contended trial's latencies are left out unless asked
    cmp = compare(collect(other), col)
    s = cmp.summary.set_index("column")
    assert cmp.contended == {"inference_ms": 1, "train_step_ms": 1, "throughput_ips": 1}
    assert s.loc["inference_ms", "max B/A"] == pytest.approx(1.0) and s.loc["inference_ms", "n"] == 8
    both = compare(collect(other), col, include_contended=True)
    assert both.contended == {} and both.summary.set_index("column").loc["inference_ms", "max B/A"] == pytest.approx(40)
    # a clean report says nothing of the kind
    build_report(clean, tmp_path / "clean")
    assert "read with care" not in (tmp_path / "clean" / "README.md").read_text()


def test_a_variant_key_constant_in_a_section_makes_no_variants_there(tmp_path):
    text = (
        "name: fixture\ndescription: x\n"
        "base: {task: upsampling, steps: 20, task_options: {scale: 4}}\n"
        "seeds: [0, 1, 2]\n"
        "blocks:\n"
        "  - {name: fixed, base: {dataset: middlebury, task_options: {upsampler: carafe}}, product: {op: [conv, pac]}}\n"
        "  - {name: swept, base: {dataset: synthetic, op: conv}, product: {task_options.upsampler: [bilinear, carafe]}}\n"
    )
    suite, store = write_fixture(tmp_path, text=text)
    layout = build_layout(collect(store, suite))
    rows = layout.agg.set_index(["section", "variant"])["kind"]
    fixed = [s for s in layout.sections if "middlebury" in s][0]
    swept = [s for s in layout.sections if "synthetic" in s][0]
    # every middlebury row shares upsampler=carafe: plain operators, compared with conv
    assert rows[fixed].to_dict() == {"conv": "operator", "pac": "operator"}
    # where it varies, the carafe row is a network variant of the same network
    assert rows[swept].to_dict() == {"conv": "operator", "conv (upsampler=carafe)": "network variant"}
