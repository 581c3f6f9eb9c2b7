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
        pool.map(_write, [(str(tmp_path), tid, i) for i, tid in enumerate(ids)]
                 + [(str(tmp_path), shared, i) for i in range(32)])
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
    proc = subprocess.Popen([sys.executable, "-m", "adaptconv.sweep.worker", str(store.root), tid, "0.2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
