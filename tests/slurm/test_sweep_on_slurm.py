"""The sweep layer on the real local SLURM: a job array collected, a requeued task resumed."""

import json
import subprocess
import textwrap
import time

import pytest

from adaptconv.results.store import ResultStore
from adaptconv.sweep import slurm
from adaptconv.sweep.executors import make_plan
from adaptconv.sweep.suite import load_suite

pytestmark = pytest.mark.slurm

SUITE = """\
name: {name}
description: runs on the local SLURM in the tests
base:
  task: {task}
  steps: {steps}
  threads: 1
  eval_points: 1
  measure: {{latency: false, memory: false, flops: false}}
  {extra}
product:
  op: {ops}
resources: {{time: "00:15:00", cpus: 1, mem_gb: 1}}
"""


def _suite(tmp_path, name, task, steps, ops, extra):
    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, task=task, steps=steps, ops=ops, extra=extra))
    return load_suite(path), ResultStore(tmp_path / "results" / name)


def test_a_suite_runs_as_a_job_array_and_is_collected(slurm_cluster, tmp_path):
    suite, store = _suite(tmp_path, "array", "classification", 2, "[conv, pac, paka]",
                          "dataset: digits\n  backbone: simplecnn-s\n  batch_size: 32")
    profile, name = slurm.load_profile("local")
    t0 = time.monotonic()
    ids = slurm.submit(make_plan(suite, store), profile, name, folder=tmp_path / "submitit", chunk=2)
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 2  # chunked into arrays of at most 2
    states = slurm.wait_for(store, [t.id for t in suite.trials], timeout_s=300)
    elapsed = time.monotonic() - t0
    assert set(states.values()) == {"done"}, states
    for t in suite.trials:
        rec = store.read_record(t.id)
        assert rec["status"] == "ok" and rec["requeues"] == 0 and rec["dispatch"]["executor"] == "slurm"
        assert rec["environment"]["slurm"].get("SLURM_JOB_ID") or rec["environment"]["slurm"]
    jobs = store.jobs()
    assert sum(len(j["jobs"]) for j in jobs) == 3
    assert make_plan(suite, store).to_run == []  # nothing left to submit
    print(f"\nSLURM round trip for a 3-trial array: {elapsed:.1f} s")


def test_a_requeued_task_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    suite, store = _suite(tmp_path, "requeue", "upsampling", 400, "[pac]",
                          "batch_size: 4\n  task_options: {patch: 32, crops: 16, width: 8, layers: 2}")
    profile, name = slurm.load_profile("local")
    profile.checkpoint_every_s = 0.5
    (job_id,) = slurm.submit(make_plan(suite, store), profile, name, folder=tmp_path / "submitit")
    (tid,) = [t.id for t in suite.trials]
    deadline = time.monotonic() + 180
    while not store.checkpoint_path(tid).exists():
        assert time.monotonic() < deadline, "the job never checkpointed"
        assert store.read_record(tid) is None, "the trial finished before it could be requeued"
        time.sleep(0.2)
    time.sleep(1.0)
    subprocess.run(["scontrol", "requeue", job_id], check=True, env=slurm_cluster.env, timeout=30)
    states = slurm.wait_for(store, [tid], timeout_s=300)
    assert states[tid] == "done", (states, store.log_path(tid).read_text()[-3000:])
    rec = store.read_record(tid)
    assert rec["requeues"] >= 1, rec.get("requeues")
    assert rec["resumed_from_step"] > 0  # resumed, not restarted
    assert rec["attempts"] == 2
    log = store.log_path(tid).read_text()
    assert "resumed from step" in log
