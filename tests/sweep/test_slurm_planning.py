"""What the planner and ``status`` make of the scheduler's answers, with stand-in ``squeue``/``sacct``.

The same paths run against the real local cluster in tests/slurm/test_sweep_on_slurm.py; here the
scheduler's exact output (what Slurm 22.05 prints) is fixed, so each case is checked every run:
queued array tasks collapsed by sacct into one ``11_[2-3%2]`` line, trials whose jobs are queued,
running or being requeued, and a scheduler that cannot be asked.
"""

from __future__ import annotations

import json
import os
import stat
import textwrap

import pytest

from adaptconv.cli import main as cli
from adaptconv.results.store import ResultStore
from adaptconv.sweep.executors import make_plan
from adaptconv.sweep.slurm import expand_job_ids, job_states
from adaptconv.sweep.suite import load_suite

SUITE = """\
name: inflight
description: four trials submitted as one array
base: {task: classification, dataset: digits, backbone: simplecnn-s, steps: 1, threads: 1,
       measure: {latency: false, memory: false, flops: false}}
product: {op: [conv, paka, dfn, condconv]}
"""


@pytest.fixture
def scheduler(tmp_path, monkeypatch):
    """Stand-in squeue and sacct on PATH that print what ``set`` gives them (``None``: fail)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    answers = tmp_path / "answers"
    answers.mkdir()
    for tool in ("squeue", "sacct"):
        script = bindir / tool
        script.write_text(
            textwrap.dedent(f"""\
            #!/bin/sh
            echo "$@" >> {answers}/{tool}.args
            if [ -f {answers}/{tool}.fail ]; then echo "{tool}: error: Unable to contact slurm controller" >&2; exit 1; fi
            cat {answers}/{tool}.out 2>/dev/null
            """)
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    class Scheduler:
        def set(self, tool: str, text: str | None) -> None:
            (answers / f"{tool}.fail").unlink(missing_ok=True)
            if text is None:
                (answers / f"{tool}.fail").write_text("")
            else:
                (answers / f"{tool}.out").write_text(textwrap.dedent(text))

        def args(self, tool: str) -> str:
            path = answers / f"{tool}.args"
            return path.read_text() if path.exists() else ""

    return Scheduler()


def _submitted(tmp_path):
    path = tmp_path / "inflight.yaml"
    path.write_text(SUITE)
    suite = load_suite(path)
    store = ResultStore(tmp_path / "results")
    ids = [t.id for t in suite.trials]
    for tid, t in zip(ids, suite.trials):
        store.write_config(tid, t.config)
    store.add_jobs(
        {
            "time": 0,
            "profile": "local",
            "folder": "x",
            "job_name": "adaptconv-inflight",
            "array_job_id": "11",
            "jobs": {tid: f"11_{i}" for i, tid in enumerate(ids)},
        }
    )
    return path, suite, store, ids


def test_array_ranges_are_expanded():
    assert expand_job_ids("11_[2-3%2]") == ["11_2", "11_3"]
    assert expand_job_ids("11_[0,4-5]") == ["11_0", "11_4", "11_5"]
    assert expand_job_ids("12") == ["12"] and expand_job_ids("11_3") == ["11_3"]


def test_status_counts_every_queued_array_task(tmp_path, scheduler, capsys):
    path, suite, store, ids = _submitted(tmp_path)
    # what sacct prints while 2 tasks run and 2 wait (array_parallelism 2), and squeue is down
    scheduler.set("sacct", "11_0|RUNNING\n11_1|RUNNING\n11_[2-3%2]|PENDING\n")
    scheduler.set("squeue", None)
    assert job_states([f"11_{i}" for i in range(4)]) == {
        "11_0": "RUNNING",
        "11_1": "RUNNING",
        "11_2": "PENDING",
        "11_3": "PENDING",
    }
    assert cli(["status", str(path), "--results", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "SLURM jobs (4 submitted): 2 PENDING, 2 RUNNING" in out
    # squeue -r, when it answers, is the fresher source (sacct lags the scheduler by seconds)
    scheduler.set(
        "squeue",
        "11_0|12|COMPLETING|adaptconv-inflight\n11_1|13|RUNNING|adaptconv-inflight\n"
        "11_2|14|RUNNING|adaptconv-inflight\n11_3|11|PENDING|adaptconv-inflight\n",
    )
    assert job_states([f"11_{i}" for i in range(4)]) == {
        "11_0": "COMPLETING",
        "11_1": "RUNNING",
        "11_2": "RUNNING",
        "11_3": "PENDING",
    }
    assert " -r " in scheduler.args("squeue")


def test_trials_whose_jobs_are_queued_running_or_requeued_are_not_submitted_again(tmp_path, scheduler, capsys):
    path, suite, store, ids = _submitted(tmp_path)
    scheduler.set("sacct", "")
    # 11_0 runs (its worker has not claimed the trial yet), 11_1 was requeued and waits for its
    # EligibleTime, 11_2 is queued, 11_3 has left the queue without a record (e.g. its node died)
    scheduler.set(
        "squeue",
        "11_0|12|RUNNING|adaptconv-inflight\n11_1|13|PENDING|adaptconv-inflight\n"
        "11_2|11|PENDING|adaptconv-inflight\n"
        "11_9|40|PENDING|someone-else\n5|5|RUNNING|adaptconv-inflight\n",
    )
    plan = make_plan(suite, store)
    assert [plan.states[t] for t in ids] == ["running", "queued", "queued", "pending"]
    assert [t.id for t in plan.to_run] == [ids[3]]
    assert [t.id for t in make_plan(suite, store, retry_failed=True).to_run] == [ids[3]]
    assert plan.summary().startswith("4 trials: 0 done, 0 failed, 1 running, 2 queued, 1 pending; a run would start 1")
    # a requeued job whose killed attempt left its claim is still the job's, not a stale claim
    store.claim_path(ids[1]).write_text(json.dumps({"host": "node1", "pid": 1, "slurm_job_id": "13"}))
    assert make_plan(suite, store).states[ids[1]] == "queued" and store.claim_path(ids[1]).exists()
    # once the scheduler has forgotten the job, its claim is released and the trial can run again
    scheduler.set("squeue", "")
    plan = make_plan(suite, store)
    assert not store.claim_path(ids[1]).exists()
    assert [t.id for t in plan.to_run] == ids


def test_a_job_id_reused_by_another_job_is_not_mistaken_for_ours(tmp_path, scheduler):
    path, suite, store, ids = _submitted(tmp_path)
    scheduler.set("squeue", "11_0|12|RUNNING|somebody-elses-job\n")  # ids restart after a purge
    assert make_plan(suite, store).states[ids[0]] == "pending"


def test_a_scheduler_that_cannot_be_asked_stops_a_submission_not_a_local_run(tmp_path, scheduler, capsys):
    path, suite, store, ids = _submitted(tmp_path)
    scheduler.set("squeue", None)
    scheduler.set("sacct", None)
    plan = make_plan(suite, store)
    assert "warning: SLURM jobs were submitted for this suite but the scheduler cannot be asked" in plan.summary()
    assert cli(["run", str(path), "--results", str(store.root), "--executor", "slurm", "--profile", "local"]) == 2
    err = capsys.readouterr().err
    assert "not submitting: trials submitted before may still be queued" in err
    assert cli(["status", str(path), "--results", str(store.root)]) == 0
    assert "SLURM jobs: 4 submitted (cannot ask the scheduler: squeue" in capsys.readouterr().out
