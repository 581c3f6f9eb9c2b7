"""The results store under failure: killed workers, concurrent writers, claims, resuming suites."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from adaptconv.results.store import ResultStore
from adaptconv.sweep.executors import make_plan, run_debug
from adaptconv.sweep.suite import load_suite


def _write(args):
    root, tid, n = args
    store = ResultStore(root)
    record = {"status": "ok", "trial_id": tid, "payload": [n] * 4000}
    for _ in range(3):
        store.write_record(tid, record)
    return tid


def _claim(args):
    root, tid = args
    return ResultStore(root).claim(tid, {"who": os.getpid()})


def test_32_concurrent_writers_leave_every_record_intact(tmp_path):
    ids = [f"{i:016x}" for i in range(32)]
    shared = "f" * 16  # and all of them also hammer one record
    with mp.get_context("fork").Pool(32) as pool:
        pool.map(
            _write,
            [(str(tmp_path), tid, i) for i, tid in enumerate(ids)] + [(str(tmp_path), shared, i) for i in range(32)],
        )
    store = ResultStore(tmp_path)
    for i, tid in enumerate(ids):
        rec = store.read_record(tid)
        assert rec["trial_id"] == tid and rec["payload"] == [i] * 4000
    rec = store.read_record(shared)
    assert len(set(rec["payload"])) == 1  # one whole record, not a mix
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_only_one_process_wins_a_claim(tmp_path):
    tid = "a" * 16
    with mp.get_context("fork").Pool(32) as pool:
        wins = pool.map(_claim, [(str(tmp_path), tid)] * 16)
    # the winners' processes have exited, so later claims may take over a stale claim; within the
    # race at most... exactly one claim file exists and it names a pool process
    assert sum(wins) >= 1
    claim = ResultStore(tmp_path).read_claim(tid)
    assert claim is not None and "who" in claim


def test_a_stale_claim_of_a_dead_process_is_taken_over(tmp_path):
    store = ResultStore(tmp_path)
    tid = "b" * 16
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    store.claim_path(tid).parent.mkdir(parents=True)
    store.claim_path(tid).write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": proc.pid}))
    assert store.state(tid) == "running" and not store.claim(tid)
    proc.kill()
    proc.wait()
    assert store.state(tid) == "pending" and store.claim(tid)


def test_trial_ids_cannot_escape_the_store(tmp_path):
    store = ResultStore(tmp_path)
    for bad in ("../x", "..", "/etc/passwd", "0123456789abcde/"):
        with pytest.raises(ValueError):
            store.trial_dir(bad)


SUITE = """\
name: killtest
description: a trial long enough to be killed mid-training
base:
  task: upsampling
  op: pac
  steps: {steps}
  batch_size: 4
  threads: 1
  eval_points: 1
  task_options: {{patch: 32, crops: 16, width: 8, layers: 2}}
  measure: {{latency: false, memory: false, flops: false}}
"""


def test_sigkill_mid_training_leaves_no_record_and_the_next_run_completes_it(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(steps=80))
    suite = load_suite(path)
    store = ResultStore(tmp_path / "results")
    plan = make_plan(suite, store)
    from adaptconv.sweep.executors import prepare

    prepare(plan)
    (tid,) = [t.id for t in suite.trials]
    proc = subprocess.Popen(
        [sys.executable, "-m", "adaptconv.sweep.worker", str(store.root), tid, "0.2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not store.checkpoint_path(tid).exists():
        assert proc.poll() is None, "worker ended before it checkpointed"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.read_record(tid) is None and not store.record_path(tid).exists()
    assert store.state(tid) == "pending"  # its claim names a dead process
    import torch

    step = torch.load(store.checkpoint_path(tid), weights_only=False)["step"]  # the checkpoint is whole
    assert 0 < step < 80
    assert make_plan(suite, store).to_run[0].id == tid
    out = run_debug(make_plan(suite, store))
    assert out == {"done": 1}
    rec = store.read_record(tid)
    assert rec["status"] == "ok" and rec["resumed_from_step"] >= step and rec["attempts"] == 2
    assert not store.checkpoint_path(tid).exists()
    assert make_plan(suite, store).to_run == []  # finished trials are never run again


def test_extending_an_axis_runs_only_the_new_trials_and_retry_failed(tmp_path, monkeypatch):
    text = textwrap.dedent("""\
        name: grow
        description: grows
        base:
          task: classification
          dataset: digits
          backbone: simplecnn-s
          steps: 2
          threads: 1
          measure: {latency: false, memory: false, flops: false}
        product:
          op: [conv]
        """)
    path = tmp_path / "s.yaml"
    path.write_text(text)
    store = ResultStore(tmp_path / "r")
    assert run_debug(make_plan(load_suite(path), store)) == {"done": 1}
    path.write_text(text.replace("op: [conv]", "op: [conv, paka]"))
    plan = make_plan(load_suite(path), store)
    assert [t.config["op"] for t in plan.to_run] == ["paka"]
    # a failed trial is re-run only when asked
    from adaptconv.tasks.classification import Classification

    monkeypatch.setattr(Classification, "loss", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    assert run_debug(plan) == {"failed": 1}
    monkeypatch.undo()
    assert make_plan(load_suite(path), store).to_run == []
    plan = make_plan(load_suite(path), store, retry_failed=True)
    assert [t.config["op"] for t in plan.to_run] == ["paka"]
    assert run_debug(plan) == {"done": 1}


# ---- damaged records (issue 14, item 5) ------------------------------------------------------------


def test_a_truncated_record_is_moved_aside_counted_as_corrupt_and_warned_about_once(tmp_path, caplog, capsys):
    from adaptconv.cli import main as cli
    from adaptconv.results.collect import collect

    text = textwrap.dedent("""\
        name: damaged
        description: two trials, one record cut short
        base: {task: classification, dataset: digits, backbone: simplecnn-s, steps: 1, threads: 1,
               measure: {latency: false, memory: false, flops: false}}
        product: {op: [conv, paka]}
        """)
    path = tmp_path / "damaged.yaml"
    path.write_text(text)
    suite = load_suite(path)
    store = ResultStore(tmp_path / "r")
    plan = make_plan(suite, store)
    from adaptconv.sweep.executors import prepare

    prepare(plan)
    good, bad = (t.id for t in suite.trials)
    store.write_record(good, {"status": "ok", "config": suite.trials[0].config, "metrics": {"top1": 0.5}})
    whole = json.dumps({"status": "ok", "config": suite.trials[1].config, "metrics": {"top1": 0.7}})
    store.record_path(bad).write_text(whole[:25])  # a copy cut short / a disk that filled up
    with caplog.at_level("WARNING"):
        assert store.state(bad) == "corrupt"
        assert store.state(bad) == "corrupt"  # asked again: the same, and no second warning
        col = collect(store, suite)
        assert cli(["status", str(path), "--results", str(store.root)]) == 0
    warnings = [r.getMessage() for r in caplog.records if "damaged record" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{bad}/record.json" in warnings[0] and "moved aside to record.json.corrupt-" in warnings[0]
    (moved,) = store.corrupt_records(bad)
    assert moved.read_text() == whole[:25]  # kept, byte for byte, for whoever looks into it
    assert not store.record_path(bad).exists()
    assert dict(zip(col.trials["trial_id"], col.trials["state"])) == {good: "done", bad: "corrupt"}
    out = capsys.readouterr().out
    assert "2 trials: 1 done, 0 failed, 1 corrupt, 0 running, 0 pending; a run would start 0" in out
    assert f"corrupt {bad}: damaged record moved aside to {moved}" in out
    # not run again unless asked; then the new record replaces it and the damaged one stays aside
    assert make_plan(suite, store).to_run == []
    assert [t.id for t in make_plan(suite, store, retry_failed=True).to_run] == [bad]


def test_a_record_that_is_not_an_object_is_corrupt_too(tmp_path):
    store = ResultStore(tmp_path)
    tid = "c" * 16
    store.record_path(tid).parent.mkdir(parents=True)
    store.record_path(tid).write_text("[1, 2]")
    assert store.read_record(tid) is None and store.state(tid) == "corrupt"


# ---- shareable results: the umask decides file modes (issue 14, item 6) ------------------------------


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["umask022", "umask077", "umask002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_every_atomically_written_file_gets_the_umask_mode(tmp_path, umask):
    import torch

    from adaptconv.atomic import write_bytes_atomic, write_text_atomic
    from adaptconv.results.collect import collect
    from adaptconv.trial.runner import _save_checkpoint

    normal = 0o666 & ~umask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what a normal file gets here
    assert _mode(plain) == normal
    store = ResultStore(tmp_path / "r")
    tid = "d" * 16
    store.write_config(tid, {"task": "classification", "op": "conv"})
    store.write_record(tid, {"status": "ok", "trial_id": tid, "config": {"op": "conv"}, "metrics": {"top1": 1.0}})
    assert store.claim(tid)
    _save_checkpoint(str(store.checkpoint_path(tid)), {"step": 1, "w": torch.zeros(2)})
    store.note_progress(tid, "train", 1, 2)
    store.add_jobs({"jobs": {}})
    write_text_atomic(tmp_path / "report" / "index.html", "<html></html>")
    write_bytes_atomic(tmp_path / "report" / "figures" / "a.png", b"\x89PNG")
    paths = collect(store).write(store.root)
    files = [
        store.trial_dir(tid) / "trial.json",
        store.record_path(tid),
        store.checkpoint_path(tid),
        store.claim_path(tid),
        store.root / "jobs.jsonl",
        tmp_path / "report" / "index.html",
        tmp_path / "report" / "figures" / "a.png",
        *paths,
    ]
    modes = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files}
    assert set(modes.values()) == {oct(normal)}, modes
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_whole_report_is_readable_by_the_group_when_the_umask_says_so(tmp_path):
    """The report (HTML, Markdown, tables, figures, manifest) and the results tables, under umask 027."""
    from fixtures.records import write_fixture

    from adaptconv.report import build_report
    from adaptconv.results.collect import collect

    old = os.umask(0o027)
    try:
        suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0, 1), kernel_types=())
        col = collect(store, suite)
        written = col.write(store.root)
        build_report(col, tmp_path / "report")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "report").rglob("*") if p.is_file()] + written
    assert len(files) > 10
    wrong = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files if _mode(p) != 0o640}
    assert not wrong, wrong


def test_the_report_counts_and_lists_crashed_and_corrupt_trials(tmp_path):
    from fixtures.records import write_fixture

    from adaptconv.report import build_report
    from adaptconv.results.collect import collect

    suite, store = write_fixture(tmp_path, ops=("conv", "pac"), scales=(4,), seeds=(0, 1), kernel_types=())
    crashed, damaged = suite.trials[1].id, suite.trials[2].id
    rec = store.read_record(crashed)
    message = "worker process killed by SIGSEGV (signal 11) in training, after step 3 of 20"
    rec.update(status="crashed", error={"message": message, "signal": "SIGSEGV", "last_step": 3})
    store.write_record(crashed, rec)
    store.record_path(damaged).write_text('{"status": "ok", "me')
    col = collect(store, suite)
    build_report(col, tmp_path / "report")
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "2 of 4 trials finished (1 crashed, 1 corrupt)" in readme
    status = (tmp_path / "report" / "tables" / "status.csv").read_text()
    assert f"{crashed},crashed,crashed" in status and message in status
    assert f"{damaged},corrupt,corrupt" in status
