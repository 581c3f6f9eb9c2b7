"""The sweep layer on the real local SLURM: a job array collected (with each trial's job id, attempts
and the time of every attempt), a requeued task resumed and never resubmitted while it waits, queued
array tasks counted and not submitted twice, and a segfaulting trial recorded as crashed by its job."""

import re
import subprocess
import time
from pathlib import Path

import pytest

from adaptconv.results.store import ResultStore
from adaptconv.sweep import slurm
from adaptconv.sweep.executors import make_plan
from adaptconv.sweep.suite import load_suite

pytestmark = pytest.mark.slurm
PROJECT = Path(__file__).resolve().parents[2]  # the repository: its slurm/local.yaml

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
    # a results folder named otherwise than the suite: records must carry the suite's name
    return load_suite(path), ResultStore(tmp_path / "results" / f"{name}-store")


def test_a_suite_runs_as_a_job_array_and_is_collected(slurm_cluster, tmp_path):
    suite, store = _suite(
        tmp_path,
        "array",
        "classification",
        2,
        "[conv, pac, paka]",
        "dataset: digits\n  backbone: simplecnn-s\n  batch_size: 32",
    )
    profile, name = slurm.load_profile("local")
    t0 = time.monotonic()
    ids = slurm.submit(make_plan(suite, store), profile, name, folder=tmp_path / "submitit", chunk=2)
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 2  # chunked into arrays of at most 2
    states = slurm.wait_for(store, [t.id for t in suite.trials], timeout_s=300)
    elapsed = time.monotonic() - t0
    assert set(states.values()) == {"done"}, states
    jobs = store.jobs()
    submitted = {tid: jid for j in jobs for tid, jid in j["jobs"].items()}
    for t in suite.trials:
        rec = store.read_record(t.id)
        assert rec["status"] == "ok" and rec["requeues"] == 0 and rec["dispatch"]["executor"] == "slurm"
        assert rec["environment"]["slurm"].get("SLURM_JOB_ID") or rec["environment"]["slurm"]
        assert rec["suite"] == "array"
        # the job as the scheduler names it, and the array it belongs to
        assert rec["slurm"]["job_id"] == submitted[t.id]
        if "_" in submitted[t.id]:  # (submitit submits a chunk of one trial as a plain job)
            assert submitted[t.id] == f"{rec['slurm']['array_job_id']}_{rec['slurm']['array_task_id']}"
        (attempt,) = rec["attempt_history"]
        assert attempt["outcome"] == "ok" and attempt["wall_s"] > 0 and attempt["slurm_job_id"] == submitted[t.id]
        assert rec["timing"]["all_attempts_s"] == attempt["wall_s"]
    assert sum(len(j["jobs"]) for j in jobs) == 3
    from adaptconv.results.collect import collect

    col = collect(store, suite).trials.set_index("trial_id")
    for t in suite.trials:
        assert col.at[t.id, "slurm.job_id"] == submitted[t.id] and col.at[t.id, "run.attempts"] == 1
    assert make_plan(suite, store).to_run == []  # nothing left to submit
    print(f"\nSLURM round trip for a 3-trial array: {elapsed:.1f} s")


def test_a_requeued_task_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    suite, store = _suite(
        tmp_path,
        "requeue",
        "upsampling",
        400,
        "[pac]",
        "batch_size: 4\n  task_options: {patch: 32, crops: 16, width: 8, layers: 2}",
    )
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
    # while the requeued job waits for its EligibleTime, the trial is in flight: not submitted again
    held = []
    deadline = time.monotonic() + 120
    while store.read_record(tid) is None and "queued" not in held and time.monotonic() < deadline:
        plan = make_plan(suite, store)
        assert plan.to_run == [], plan.states
        held.append(plan.states[tid])
        time.sleep(0.5)
    assert set(held) <= {"running", "queued"} and "queued" in held, held
    states = slurm.wait_for(store, [tid], timeout_s=300)
    assert states[tid] == "done", (states, store.log_path(tid).read_text()[-3000:])
    rec = store.read_record(tid)
    assert rec["requeues"] >= 1, rec.get("requeues")
    assert rec["resumed_from_step"] > 0  # resumed, not restarted
    assert rec["attempts"] == 2
    log = store.log_path(tid).read_text()
    assert "resumed from step" in log
    # both attempts are in the record, each with its time: the killed one up to its last progress
    first, second = rec["attempt_history"]
    assert first["outcome"] == "interrupted" and first["step"] > 0 and first["wall_s"] > 0
    assert second["outcome"] == "ok" and second["resumed_from_step"] == rec["resumed_from_step"]
    assert rec["timing"]["all_attempts_s"] == pytest.approx(first["wall_s"] + second["wall_s"])


def test_queued_array_tasks_are_counted_and_never_submitted_twice(slurm_cluster, tmp_path, capsys, monkeypatch):
    from adaptconv.cli import main as cli

    suite, store = _suite(
        tmp_path,
        "inflight",
        "classification",
        2,
        "[conv, paka, dfn]",
        "dataset: digits\n  backbone: simplecnn-s\n  batch_size: 32",
    )
    profile, name = slurm.load_profile("local")
    profile.array_parallelism = 1  # one task at a time: the others wait in the queue
    ids = slurm.submit(make_plan(suite, store), profile, name, folder=tmp_path / "submitit")
    assert len(ids) == 3
    try:
        plan = make_plan(suite, store)
        assert plan.to_run == [] and set(plan.states.values()) <= {"queued", "running"}, plan.states
        assert plan.counts.get("queued", 0) >= 2
        args = [str(suite.path), "--results", str(store.root)]
        assert cli(["status", *args]) == 0
        out = capsys.readouterr().out
        counted = re.search(r"SLURM jobs \(3 submitted\): (.*)", out).group(1)
        assert sum(int(n) for n in re.findall(r"(\d+) [A-Z]+", counted)) == 3 and "PENDING" in counted, out
        # a second `run` submits nothing (profile by name, from the working directory's slurm/)
        monkeypatch.chdir(PROJECT)
        assert cli(["run", *args, "--executor", "slurm", "--profile", "local"]) == 0
        out = capsys.readouterr().out
        assert "nothing to run" in out and sum(len(j["jobs"]) for j in store.jobs()) == 3, out
    finally:
        assert cli(["cancel", str(suite.path), "--results", str(store.root)]) == 0
    assert "cancelled" in capsys.readouterr().out
    deadline = time.monotonic() + 60
    while slurm.job_states(ids) and any(
        s in ("PENDING", "RUNNING", "COMPLETING") for s in slurm.job_states(ids).values()
    ):
        assert time.monotonic() < deadline, slurm.job_states(ids)
        time.sleep(1.0)
    # cancelled before they ran: the trials are pending again and a run would submit them
    plan = make_plan(suite, store)
    assert {t.id for t in plan.to_run} == {t for t, s in plan.states.items() if s == "pending"}
    assert plan.to_run


def test_a_segfaulting_trial_is_recorded_as_crashed_by_its_job(slurm_cluster, tmp_path, monkeypatch):
    from fixtures import segv_plugin as segv

    with segv.installed(tmp_path / "site", monkeypatch, 3):  # the job inherits PYTHONPATH and the step
        suite, store = _suite(
            tmp_path,
            "crash",
            "classification",
            5,
            "[segv]",
            "dataset: digits\n  backbone: simplecnn-s\n  batch_size: 32",
        )
        profile, name = slurm.load_profile("local")
        (job_id,) = slurm.submit(make_plan(suite, store), profile, name, folder=tmp_path / "submitit")
        (tid,) = [t.id for t in suite.trials]
        states = slurm.wait_for(store, [tid], timeout_s=300)
        assert states[tid] == "crashed", (states, store.log_path(tid).read_text()[-3000:])
        rec = store.read_record(tid)
        assert rec["error"]["signal"] == "SIGSEGV" and rec["error"]["last_step"] == 2
        assert rec["error"]["message"] == "worker process killed by SIGSEGV (signal 11) in training, after step 2 of 5"
        assert rec["slurm"]["job_id"] == job_id and rec["suite"] == "crash"
        assert rec["dispatch"] == {"executor": "slurm", "record_written_by": "parent process"}
        assert make_plan(suite, store).to_run == []  # not submitted again without --retry-failed
