"""``adaptconv plan`` prints a compact table: the swept keys only, one line per trial, plus state;
``--columns`` for more; a one-line summary with an estimated cost once records exist (issue 15)."""

from adaptconv.cli import main
from adaptconv.results.store import ResultStore
from adaptconv.sweep.suite import load_suite

SUITE = """\
name: plantab
description: two blocks of tiny digits trials, with settings the blocks do not share
base: {task: classification, dataset: digits, steps: 3, batch_size: 8, threads: 1}
blocks:
  - name: ops
    product: {op: [conv, pac]}
  - name: lr
    base: {op: conv, steps: 5, optimizer: {lr: 0.1}}
    product: {optimizer.lr: [0.1, 0.01]}
seeds: [0, 1]
"""


def _plan(tmp_path, capsys, *extra):
    capsys.readouterr()
    rc = main(["plan", str(tmp_path / "plantab.yaml"), "--results", str(tmp_path / "res"), *extra])
    return rc, capsys.readouterr()


def test_plan_table_shows_the_swept_keys_and_a_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADAPTCONV_CACHE", str(tmp_path / "cache"))
    (tmp_path / "plantab.yaml").write_text(SUITE)
    rc, out = _plan(tmp_path, capsys)
    assert rc == 0, out.err
    lines = out.out.splitlines()
    header = lines[1].split()
    assert header == ["id", "state", "block", "op", "optimizer.lr", "seed"]
    table = lines[2:10]
    assert len(table) == 8 and all(len(line) < 70 for line in table)
    assert "nan" not in out.out and "steps" not in out.out
    assert lines[-1].startswith("8 trials: 0 done") and "≈" not in lines[-1]

    rc, out = _plan(tmp_path, capsys, "--columns", "steps,batch_size")
    assert rc == 0 and out.out.splitlines()[1].split()[-2:] == ["steps", "batch_size"]
    rc, out = _plan(tmp_path, capsys, "--columns", "stepz")
    assert rc == 2 and "stepz" in out.err and "steps" in out.err

    # with records, the rest is estimated from the median total_s of each block's done trials
    suite = load_suite(tmp_path / "plantab.yaml")
    store = ResultStore(tmp_path / "res")
    done = {"ops": [10.0, 20.0, 90.0], "lr": [40.0]}
    for block, times in done.items():
        for t, total in zip([t for t in suite.trials if t.block == block], times):
            store.write_record(t.id, {"status": "ok", "timing": {"total_s": total}})
    rc, out = _plan(tmp_path, capsys)
    summary = out.out.splitlines()[-1]
    # ops: one pending × median 20 s; lr: three pending × 40 s → 140 s
    assert summary.startswith("8 trials: 4 done") and "≈ 2 min" in summary, summary
    assert sum(line.split()[1] == "done" for line in out.out.splitlines()[2:10]) == 4
