"""The local SLURM cluster does what the project's sweeps need, driven by submitit directly.

Job arrays, remote exceptions, cancellation seen through sacct, requeue (both the plain
``scontrol requeue`` and submitit's own checkpoint-and-requeue path) and the MaxArraySize the
array chunking relies on. Every test gets its own submitit folder under ``tmp_path``: job ids
start again at 1 when the cluster's state dir is purged, and a reused folder would hand back a
stale ``<id>_result.pkl``.

What requeue does here (Slurm 22.05, submitit 1.5), as these tests pin down:

* ``scontrol requeue <id>`` sends SIGCONT and SIGTERM to every process of the job; submitit's
  job process logs "Bypassing signal SIGTERM" and carries on, and is SIGKILLed KillWait (5 s)
  later. ``checkpoint()`` is NOT called: the job is rerun from its original pickle, from step 0.
* ``scancel --signal=USR2 <id>`` (what Slurm itself sends ``--signal=USR2@90`` before the time
  limit, and what submitit's ``job._interrupt()`` sends) reaches submitit's handler: it calls
  ``checkpoint()``, stores the returned submission in place of the job's pickle, runs
  ``scontrol requeue`` itself and exits; the rerun starts from the checkpoint.
* Either way the rerun waits until EligibleTime = requeue + cred_expire + 1 s (cred_expire=10 in
  slurm.conf), has ``SLURM_RESTART_COUNT=1`` in its environment (unset in the first run),
  ``scontrol show job`` says ``Restarts=1`` and ``sacct --duplicates`` lists a REQUEUED record
  before the final one. sacct has no restart-count field.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError

pytestmark = pytest.mark.slurm

# The job's Python cannot import this test module by name (pytest put its folder on sys.path
# here only), so the functions and classes below travel by value in submitit's pickles.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_DEADLINE_S = 30.0  # for a job that should take a few seconds
REQUEUE_DEADLINE_S = 60.0  # requeue hold (cred_expire + 1 = 11 s) + restart + the rest of the steps


# ------------------------------------------------------------------------------ job functions
def square_info(x: int) -> dict:
    return {
        "square": x * x,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }


def explode(message: str) -> None:
    raise ValueError(message)


def sleep_forever(started: str) -> None:
    Path(started).write_text(os.environ.get("SLURM_JOB_ID", ""))
    time.sleep(600)


def _note(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


class StepCounter(submitit.helpers.Checkpointable):
    """Counts ``total`` steps of ``step_s`` seconds each into a log file, one line per step.

    In its first run (no ``SLURM_RESTART_COUNT`` yet) it pauses after ``pause_at`` steps, so that
    the test can requeue or signal it at a known point. ``checkpoint()`` returns a resubmission
    that carries on after the last step done. Log lines: ``begin <steps done>
    restart=<SLURM_RESTART_COUNT or ->``, ``step <n>``, ``pause <n>``, ``checkpoint <steps done>``.
    """

    def __init__(self, log: str, total: int, pause_at: int, done: int = 0, step_s: float = 0.3):
        self.log = log
        self.total = total
        self.pause_at = pause_at
        self.done = done
        self.step_s = step_s

    def __call__(self) -> dict:
        restart = os.environ.get("SLURM_RESTART_COUNT", "-")
        _note(self.log, f"begin {self.done} restart={restart}")
        while self.done < self.total:
            if self.done == self.pause_at and restart == "-":
                _note(self.log, f"pause {self.done}")
                time.sleep(120)  # until the test requeues or signals the job
            time.sleep(self.step_s)
            self.done += 1
            _note(self.log, f"step {self.done}")
        return {"steps": self.done, "restart_count": restart}

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        _note(self.log, f"checkpoint {self.done}")
        resumed = StepCounter(self.log, self.total, self.pause_at, self.done, self.step_s)
        return submitit.helpers.DelayedSubmission(resumed, *args, **kwargs)


# ------------------------------------------------------------------------------ helpers
@pytest.fixture
def job_name() -> str:
    return f"adaptconv-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def executor(slurm_cluster, tmp_path, job_name):
    """A SlurmExecutor with a fresh folder; the test's jobs are cancelled when it ends."""
    ex = submitit.SlurmExecutor(folder=tmp_path / "submitit" / "%j")
    ex.update_parameters(partition=slurm_cluster.partition, time=5, cpus_per_task=1, mem="500MB", job_name=job_name)
    yield ex
    subprocess.run(["scancel", f"--name={job_name}"], env=slurm_cluster.env, timeout=10, check=False)


def _describe(cluster, job_id: str) -> str:
    try:
        return cluster.run("sacct", "--duplicates", "-j", job_id, "-o", "JobID,State,ExitCode")
    except Exception as e:  # diagnostics only
        return f"(sacct failed: {e})"


def wait_done(cluster, jobs, deadline_s: float = JOB_DEADLINE_S) -> None:
    """Wait until submitit sees every job done, or fail with their sacct records."""
    end = time.monotonic() + deadline_s
    while not all(j.done() for j in jobs):
        if time.monotonic() > end:
            pending = [j.job_id for j in jobs if not j.done()]
            info = "\n".join(_describe(cluster, jid) for jid in pending)
            pytest.fail(f"jobs {pending} not done after {deadline_s:.0f} s:\n{info}")
        time.sleep(0.2)


def wait_for(what: str, predicate, deadline_s: float = JOB_DEADLINE_S, interval_s: float = 0.2):
    end = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def sacct_states(cluster, job_id: str) -> list[str]:
    """The job's allocation records, oldest first (one REQUEUED record per requeue)."""
    out = cluster.run(
        "sacct", "--duplicates", "--allocations", "--noheader", "--parsable2", "-j", job_id, "-o", "State"
    )
    return [line.strip() for line in out.splitlines() if line.strip()]


def restarts(cluster, job_id: str) -> int:
    out = cluster.run("scontrol", "show", "job", job_id)
    return int(re.search(r"\bRestarts=(\d+)", out).group(1))


def read_log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ------------------------------------------------------------------------------ tests
def test_job_array_returns_results(slurm_cluster, executor):
    jobs = executor.map_array(square_info, range(4))
    wait_done(slurm_cluster, jobs)
    results = [j.result() for j in jobs]
    assert [r["square"] for r in results] == [0, 1, 4, 9]
    array_id = results[0]["array_job_id"]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(4)]
    assert [r["array_task_id"] for r in results] == ["0", "1", "2", "3"]
    assert len({r["job_id"] for r in results}) == 4  # each task is a job of its own


def test_failing_job_raises_with_remote_traceback(slurm_cluster, executor):
    job = executor.submit(explode, "boom from the job")
    wait_done(slurm_cluster, [job])
    with pytest.raises(FailedJobError) as info:
        job.result()
    message = str(info.value)
    assert "Traceback (most recent call last)" in message
    assert "in explode" in message
    assert "ValueError: boom from the job" in message


def test_cancel_ends_as_cancelled_in_sacct(slurm_cluster, executor, tmp_path):
    started = tmp_path / "started"
    job = executor.submit(sleep_forever, str(started))
    wait_for("the job to start", started.exists)
    job.cancel()
    # sacct lags slurmctld by up to a few seconds: poll
    state = wait_for(
        "sacct to report CANCELLED",
        lambda: next((s for s in sacct_states(slurm_cluster, job.job_id) if s.startswith("CANCELLED")), None),
        deadline_s=20,
    )
    assert state.startswith("CANCELLED")  # "CANCELLED by 0"
    assert job.done(force_check=True)  # submitit sees it finished through sacct
    # submitit ignores SIGTERM: the job leaves the node only at SIGKILL, KillWait=5 s later
    wait_for(
        "the cancelled job to leave the queue",
        lambda: not slurm_cluster.run("squeue", "--noheader", "-j", job.job_id).strip(),
        deadline_s=20,
    )


def _start_counter(slurm_cluster, executor, log: Path, total: int, pause_at: int):
    job = executor.submit(StepCounter(str(log), total=total, pause_at=pause_at))
    wait_for(f"the job to pause after {pause_at} steps", lambda: f"pause {pause_at}" in read_log(log))
    return job


def test_scontrol_requeue_reruns_from_scratch_without_checkpoint(slurm_cluster, executor, tmp_path):
    """A plain ``scontrol requeue`` is not submitit's path: no checkpoint, rerun from step 0."""
    log = tmp_path / "steps.log"
    job = _start_counter(slurm_cluster, executor, log, total=6, pause_at=3)
    slurm_cluster.run("scontrol", "requeue", job.job_id)
    wait_done(slurm_cluster, [job], REQUEUE_DEADLINE_S)
    assert job.result() == {"steps": 6, "restart_count": "1"}

    assert read_log(log) == (
        ["begin 0 restart=-", "step 1", "step 2", "step 3", "pause 3"]  # SIGKILLed in the pause
        + ["begin 0 restart=1"]
        + [f"step {n}" for n in range(1, 7)]  # from scratch
    )
    assert "Bypassing signal SIGTERM" in job.stderr()  # the job process ignored the SIGTERM
    assert restarts(slurm_cluster, job.job_id) == 1
    wait_for("sacct to show the requeue", lambda: sacct_states(slurm_cluster, job.job_id) == ["REQUEUED", "COMPLETED"])


def test_usr2_checkpoints_and_resumes(slurm_cluster, executor, tmp_path):
    """USR2 (Slurm sends it ``--signal=USR2@90`` before the time limit) triggers submitit's
    handler: checkpoint(), ``scontrol requeue`` from inside the job, and the rerun resumes."""
    log = tmp_path / "steps.log"
    job = _start_counter(slurm_cluster, executor, log, total=6, pause_at=3)
    # to the job's steps only (not --batch/--full: the batch shell would die of USR2)
    slurm_cluster.run("scancel", "--signal=USR2", job.job_id)
    wait_done(slurm_cluster, [job], REQUEUE_DEADLINE_S)
    assert job.result() == {"steps": 6, "restart_count": "1"}

    assert read_log(log) == (
        ["begin 0 restart=-", "step 1", "step 2", "step 3", "pause 3", "checkpoint 3"]
        + ["begin 3 restart=1", "step 4", "step 5", "step 6"]  # resumed from the checkpoint
    )
    assert "Caught signal SIGUSR2" in job.stderr()
    assert restarts(slurm_cluster, job.job_id) == 1
    wait_for("sacct to show the requeue", lambda: sacct_states(slurm_cluster, job.job_id) == ["REQUEUED", "COMPLETED"])


def test_max_array_size_is_readable_and_enforced(slurm_cluster, tmp_path):
    config = slurm_cluster.config()
    max_array_size = int(config["MaxArraySize"])
    assert max_array_size > 1
    # the settings the executor relies on
    assert config["JobRequeue"] == "1"
    assert config["KillWait"] == "5 sec"
    assert config["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert "batch_sched_delay=0" in config["SchedulerParameters"]

    def test_only(array: str) -> int:
        return subprocess.run(
            ["sbatch", "--test-only", f"--partition={slurm_cluster.partition}", f"--array={array}", "--wrap=true"],
            env=slurm_cluster.env,
            cwd=tmp_path,
            capture_output=True,
            timeout=10,
            check=False,
        ).returncode

    assert test_only(f"0-{max_array_size - 1}") == 0  # indices run 0 .. MaxArraySize-1
    assert test_only(f"0-{max_array_size}") != 0
