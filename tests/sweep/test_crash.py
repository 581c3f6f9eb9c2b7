"""A trial whose worker process dies by a signal (a native kernel's segfault) becomes a ``crashed`` record.

The worker's parent (the local executor here; the SLURM job's wrapper in tests/slurm) writes it,
naming the signal and the last step the trial reported; ``status`` counts it; a second ``run`` does
not run it again, ``--retry-failed`` does. The crash comes from a test-only operator plugin (a
dist-info on PYTHONPATH, as pip lays out an installed package) that kills its own process with
SIGSEGV at training step k.
"""

from __future__ import annotations

import json
import signal

import pytest
from fixtures import segv_plugin as segv

from adaptconv.cli import main as cli
from adaptconv.results.collect import collect
from adaptconv.results.store import ResultStore
from adaptconv.sweep.executors import make_plan, run_local
from adaptconv.sweep.suite import load_suite

CRASH_AT_STEP = 4
STEPS = 6

SUITE = f"""\
name: crashtest
description: one trial whose worker segfaults at step {CRASH_AT_STEP}
base: {{task: classification, dataset: digits, backbone: simplecnn-s, steps: {STEPS}, batch_size: 8,
       threads: 1, eval_points: 1, measure: {{latency: false, memory: false, flops: false}}}}
product: {{op: [conv, segv]}}
"""


@pytest.fixture
def segv_plugin(tmp_path, monkeypatch):
    with segv.installed(tmp_path / "site", monkeypatch, CRASH_AT_STEP) as root:
        yield root


def test_a_segfaulting_worker_leaves_a_crashed_record_that_is_counted_and_not_rerun(segv_plugin, tmp_path, capsys):
    path = tmp_path / "crashtest.yaml"
    path.write_text(SUITE)
    results = tmp_path / "results"
    suite = load_suite(path)
    store = ResultStore(results)
    (victim,) = [t.id for t in suite.trials if t.config["op"] == "segv"]
    (healthy,) = [t.id for t in suite.trials if t.config["op"] == "conv"]

    out = run_local(make_plan(suite, store), max_parallel=1)
    assert out == {"crashed": 1, "done": 1}
    rec = store.read_record(victim)
    assert rec["status"] == "crashed"
    err = rec["error"]
    assert err["signal"] == "SIGSEGV" and err["signal_number"] == signal.SIGSEGV
    assert err["phase"] == "train" and err["last_step"] == CRASH_AT_STEP - 1 and err["total_steps"] == STEPS
    assert (
        f"worker process killed by SIGSEGV (signal {int(signal.SIGSEGV)}) in training, after step "
        f"{CRASH_AT_STEP - 1} of {STEPS}"
    ) == err["message"]
    assert "Fatal Python error" in err.get("stderr_tail", "")  # faulthandler's stack, kept from stderr
    assert rec["config"]["op"] == "segv" and rec["trial_id"] == victim and rec["suite"] == "crashtest"
    assert rec["attempts"] == 1 and rec["dispatch"]["record_written_by"] == "parent process"
    assert [a["outcome"] for a in rec["attempt_history"]] == ["crashed"]
    assert store.state(victim) == "crashed" and store.read_claim(victim) is None
    assert "crashed: worker process killed by SIGSEGV" in store.log_path(victim).read_text()
    assert store.state(healthy) == "done"

    # status counts it and says what happened
    assert cli(["status", str(path), "--results", str(results)]) == 0
    text = capsys.readouterr().out
    assert "2 trials: 1 done, 0 failed, 1 crashed, 0 running, 0 pending; a run would start 0" in text
    assert f"crashed {victim}: crashed: worker process killed by SIGSEGV" in text

    # a second run does not run it again; --retry-failed would
    assert cli(["run", str(path), "--results", str(results)]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert store.read_record(victim)["attempts"] == 1
    assert [t.id for t in make_plan(suite, store, retry_failed=True).to_run] == [victim]

    # collect (and so the report) shows the state
    col = collect(store, suite)
    states = dict(zip(col.trials["trial_id"], col.trials["state"]))
    assert states == {healthy: "done", victim: "crashed"}
    json.dumps(rec)  # a plain JSON record like the others
