"""The local executor: reused worker processes give the same records as fresh ones, and a worker
killed mid-trial loses that trial only (reported as interrupted, resumable), not the rest of the sweep."""

import os
import signal
import threading
import time

import pytest

from adaptconv.results.store import ResultStore
from adaptconv.sweep.executors import make_plan, run_debug, run_local
from adaptconv.sweep.suite import load_suite

SUITE = """\
name: local
description: two tiny digits trials
base: {task: classification, dataset: digits, steps: 3, batch_size: 8, threads: 1,
       measure: {latency: false, memory: false, flops: false}}
product: {op: [conv, condconv]}
seeds: [0]
"""


def _suite(tmp_path, text=SUITE):
    path = tmp_path / "local.yaml"
    path.write_text(text)
    return load_suite(path)


def test_reused_workers_match_in_process_records(tmp_path):
    suite = _suite(tmp_path)
    local = ResultStore(tmp_path / "a")
    assert run_local(make_plan(suite, local), max_parallel=1) == {"done": 2}
    debug = ResultStore(tmp_path / "b")
    run_debug(make_plan(suite, debug))
    for t in suite.trials:
        a, b = local.read_record(t.id), debug.read_record(t.id)
        assert a["metrics"] == b["metrics"] and a["curve"]["loss"] == b["curve"]["loss"]


def test_a_killed_worker_loses_one_trial_and_the_sweep_goes_on(tmp_path):
    suite = _suite(tmp_path)
    store = ResultStore(tmp_path / "s")
    plan = make_plan(suite, store)
    victim = plan.to_run[0].id
    # make the first trial long enough to be killed while it runs
    cfg = store.root / "trials" / victim / "trial.json"
    killed = []

    def kill_when_running():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            claim = store.read_claim(victim)
            if claim and claim.get("pid"):
                os.kill(int(claim["pid"]), signal.SIGKILL)
                killed.append(claim["pid"])
                return
            time.sleep(0.05)

    from adaptconv.sweep import executors

    executors.prepare(plan)
    import json

    config = json.loads(cfg.read_text())
    config["steps"] = 100000
    cfg.write_text(json.dumps(config))
    watcher = threading.Thread(target=kill_when_running)
    watcher.start()
    out = run_local(plan, max_parallel=1)
    watcher.join()
    assert killed, "the first trial never started"
    # SIGKILL comes from outside (a person, the OOM killer, a scheduler): interrupted, not crashed
    assert out == {"interrupted": 1, "done": 1}
    assert store.state(victim) == "pending"  # no record: the next run picks it up again
    assert store.read_claim(victim) is None  # the parent released the dead worker's claim
    assert store.state(plan.to_run[1].id) == "done"


@pytest.mark.parametrize("reuse", [False])
def test_fresh_process_per_trial_still_available(tmp_path, reuse):
    suite = _suite(tmp_path, SUITE.replace("[conv, condconv]", "[conv]"))
    store = ResultStore(tmp_path / "f")
    assert run_local(make_plan(suite, store), max_parallel=1, reuse_workers=reuse) == {"done": 1}
