"""Collect and report at the scale of a large sweep: about 11,000 fixture records (slow: not in the
default run). `pytest -m slow tests/report/test_report_scale.py -s` prints the timings the README and
the issue note quote; the test asserts what the report must contain, never how fast it was."""

import time

import pytest
from fixtures.records import write_fixture

from adaptconv.report import build_report
from adaptconv.results.collect import collect

OPS = ("conv", "pac", "paka", "acda", "dfn", "deform", "mdeform", "condconv", "dynconv")
LRS = tuple(round(1e-4 * (1.2**i), 8) for i in range(37))


@pytest.mark.slow
def test_collect_and_report_ten_thousand_records(tmp_path):
    suite, store = write_fixture(
        tmp_path,
        ops=OPS,
        scales=(4, 8, 16),
        seeds=tuple(range(10)),
        lrs=LRS,
        kernel_types=("gaussian", "inv"),
        pending=50,
        failed=20,
    )
    n = len(suite.trials)
    assert n >= 10_000
    t0 = time.perf_counter()
    col = collect(store, suite)
    col.write(store.root)
    t1 = time.perf_counter()
    report = build_report(col, tmp_path / "report")
    t2 = time.perf_counter()
    print(
        f"\n{n} trials ({n - 50} records): collect + write parquet/CSV {t1 - t0:.1f} s, "
        f"report {t2 - t1:.1f} s ({len(report.figures)} figures, {len(report.tables)} tables)"
    )
    assert len(col.trials) == n and (col.trials["state"] == "done").sum() == n - 70
    assert {f.kind for f in report.figures} == {"bars", "pareto", "scaling", "ablation", "curves"}
