"""Dispatching a suite's trials: ``debug`` (in process), ``local`` (subprocesses), ``slurm`` (submitit).

All three go through :func:`adaptconv.sweep.worker.execute_trial`, so a trial behaves the same
wherever it runs: finished trials are never run again, failed, crashed and corrupt ones only with
``retry_failed``, a trial another process is running is left alone, and so is one whose SLURM job
is queued, running or requeued in the scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..results.store import RETRY_STATES, STATES, ResultStore
from .suite import Suite, Trial
from .worker import execute_trial, handle_dead_worker

log = logging.getLogger(__name__)


@dataclass
class Plan:
    suite: Suite
    store: ResultStore
    states: dict[str, str]
    to_run: list[Trial]
    counts: dict[str, int] = field(default_factory=dict)
    #: why the scheduler could not be asked (SLURM jobs were submitted but squeue failed), else None
    scheduler_note: str | None = None
    retry_failed: bool = False

    def summary(self) -> str:
        c = self.counts
        shown = [s for s in PLAN_STATES if c.get(s) or s in ("done", "failed", "running", "pending")]
        text = f"{len(self.states)} trials: " + ", ".join(f"{c.get(s, 0)} {s}" for s in shown)
        text += f"; a run would start {len(self.to_run)}"
        held = sum(c.get(s, 0) for s in RETRY_STATES)
        if held and not self.retry_failed:
            text += f" (--retry-failed would also run the {held} failed/crashed/corrupt)"
        if self.scheduler_note:
            text += f"\nwarning: {self.scheduler_note}"
        return text


#: a plan's states: the store's, plus ``queued`` (a submitted SLURM job that waits in the scheduler)
PLAN_STATES = STATES[:-1] + ("queued", STATES[-1])


def make_plan(suite: Suite, store: ResultStore, retry_failed: bool = False) -> Plan:
    """Each trial's state, and the trials a run would start: the pending ones (and with ``retry_failed``
    the failed, crashed and corrupt ones), never one whose SLURM job is still in the scheduler."""
    tids = [t.id for t in suite.trials]
    live, note = scheduler_jobs_of(store)
    reap_slurm_claims(store, tids, live)
    states = store.states(tids)
    if live:
        for tid, (_job, slurm_state) in latest_jobs(store, live).items():
            if tid in states and states[tid] not in ("done", "failed", "crashed"):
                states[tid] = "running" if slurm_state in RUNNING_STATES else "queued"
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    wanted = {"pending", *RETRY_STATES} if retry_failed else {"pending"}
    to_run = [t for t in suite.trials if states[t.id] in wanted]
    return Plan(suite, store, states, to_run, counts, note, retry_failed)


def missing_data(plan: Plan) -> list[str]:
    """One line per data root that a trial to run needs and that does not exist here."""
    from ..data import DATASETS

    problems = {}
    for t in plan.to_run:
        spec = DATASETS.get(t.config.get("dataset"))
        root = t.config.get("data_root")
        if spec is None or spec.builtin:
            continue
        if not root or not Path(root).exists():
            problems[(spec.name, root)] = (
                f"dataset {spec.name}: data_root {root!r} does not exist ({spec.description})"
                if root
                else f"dataset {spec.name}: no data_root given ({spec.description})"
            )
    return [problems[k] for k in sorted(problems, key=str)]


def prepare(plan: Plan) -> None:
    """Write each trial's config (and the suite file) before dispatch, so a worker needs only an id."""
    plan.store.root.mkdir(parents=True, exist_ok=True)
    from ..atomic import write_text_atomic

    write_text_atomic(plan.store.root / "suite.yaml", plan.suite.path.read_text(encoding="utf-8"))
    for t in plan.to_run:
        plan.store.write_config(t.id, t.config)
        if plan.states[t.id] in ("failed", "crashed"):  # --retry-failed: the old record goes, its log stays
            plan.store.record_path(t.id).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
def run_debug(plan: Plan, checkpoint_every_s: float = 120.0) -> dict[str, int]:
    """Every trial in this process, one after another (for debugging: exceptions surface in pdb)."""
    prepare(plan)
    progress = TrialProgress(plan.store, len(plan.to_run))
    try:
        for t in plan.to_run:
            began = time.monotonic()
            state = execute_trial(
                plan.store.root, t.id, checkpoint_every_s=checkpoint_every_s, extra={"executor": "debug"}
            )
            progress.finished(t, state, time.monotonic() - began)
    finally:
        progress.close()
    return progress.counts


def default_parallelism() -> int:
    """One trial at a time per GPU, or one on the CPU: latency is measured on a quiet device."""
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def run_local(
    plan: Plan,
    max_parallel: int | None = None,
    checkpoint_every_s: float = 120.0,
    reuse_workers: bool = True,
    heartbeat_s: float = 60.0,
) -> dict[str, int]:
    """Run the plan in worker subprocesses, at most ``max_parallel`` at once (GPU i for slot i).

    With ``reuse_workers`` each slot keeps one worker process that runs its trials one after the other
    (``python -m adaptconv.sweep.worker --serve``), so short trials do not each pay the interpreter and
    torch start-up; otherwise each trial gets a fresh process. Either way a crash loses one trial only.
    """
    import torch

    prepare(plan)
    slots = max_parallel or default_parallelism()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    queue = list(plan.to_run)
    workers: dict[int, subprocess.Popen] = {}
    errors: dict = {}
    running: dict[int, Trial] = {}
    began: dict[int, float] = {}
    progress = TrialProgress(plan.store, len(queue))

    def start(slot: int) -> subprocess.Popen:
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        args = ["--executor", "local", "--serve", str(plan.store.root), str(checkpoint_every_s)]
        # stderr to a file, not a pipe: a chatty worker must never block on a full pipe
        if slot in errors:
            errors[slot].close()  # the previous worker of this slot is gone
        errors[slot] = tempfile.TemporaryFile(mode="w+")
        return subprocess.Popen(
            [sys.executable, "-m", "adaptconv.sweep.worker", *args],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors[slot],
        )

    def stderr_tail(slot: int) -> str:
        f = errors.get(slot)
        if f is None:
            return ""
        f.seek(0)
        return f.read()[-16000:]

    def finish(slot: int, answered: bool) -> None:
        trial = running.pop(slot)
        if answered:
            state = plan.store.state(trial.id)
        else:  # the worker died mid-trial: its parent (here) records a crash, or notes the interruption
            proc = workers[slot]
            state, message = handle_dead_worker(
                plan.store, trial.id, proc.pid, proc.returncode, "local", stderr_tail(slot)
            )
            (log.warning if state in ("interrupted", "pending") else log.error)("trial %s: %s", trial.id, message)
        progress.finished(trial, state, time.monotonic() - began.pop(slot))

    try:
        while queue or running:
            for slot in range(slots):
                if slot in running or not queue:
                    continue
                if slot not in workers or workers[slot].poll() is not None:
                    workers[slot] = start(slot)
                trial = queue.pop(0)
                workers[slot].stdin.write(trial.id + "\n")
                workers[slot].stdin.flush()
                running[slot] = trial
                began[slot] = time.monotonic()
            # wait for any busy worker to answer (a line) or to die
            ready = _wait_readable([workers[s].stdout for s in running], timeout=1.0)
            for slot, trial in running.items():  # a long trial says how far it got, now and then
                progress.heartbeat(trial, time.monotonic() - began[slot], heartbeat_s)
            for slot in list(running):
                proc = workers[slot]
                if proc.stdout in ready:
                    line = proc.stdout.readline()
                    if line.split(" ")[0] == running[slot].id:
                        finish(slot, True)
                        if not reuse_workers:
                            _stop(proc)
                        continue
                if proc.poll() is not None:  # died mid-trial (killed, out of memory, segfault)
                    finish(slot, False)
    except KeyboardInterrupt:
        # Ctrl-C reaches the workers too (one process group); a SIGINT sent to this process alone
        # is passed on. Each worker releases its claim and exits; its trial keeps its checkpoint and
        # no record, so the next run resumes it. One that does not exit in time is terminated.
        for proc in workers.values():
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        for proc in workers.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
        raise
    finally:
        for proc in workers.values():
            _stop(proc)
        for f in errors.values():
            f.close()
        progress.close()
    return progress.counts


def _wait_readable(files, timeout: float) -> list:
    import select

    if not files:
        return []
    ready, _, _ = select.select(files, [], [], timeout)
    return ready


def _stop(proc: subprocess.Popen) -> None:
    """Close a worker's input (it exits after its current trial) and reap it."""
    if proc.poll() is None:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.1f} s"
        if seconds < 90
        else f"{seconds / 60:.0f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )


class TrialProgress:
    """Progress of a run: a tqdm bar on a terminal; and, where output goes to a file (``make demo >
    log``, a SLURM output file, a pipe), one plain line per finished trial on stdout::

        [12/97] done    3f2a…  pac classification/digits  top1=97.6  8.1 s  ETA 4 min
    """

    def __init__(self, store: ResultStore, total: int) -> None:
        from tqdm.auto import tqdm

        self.store, self.total, self.done = store, total, 0
        self.counts: dict[str, int] = {}
        self.start = time.monotonic()
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc="trials", unit="trial", disable=not interactive)
        self.lines = not (interactive and sys.stdout.isatty())
        self.last_beat: dict[str, float] = {}

    def finished(self, trial: Trial, state: str, seconds: float) -> None:
        self.done += 1
        self.counts[state] = self.counts.get(state, 0) + 1
        self.bar.update(1)
        self.bar.set_postfix(self.counts)
        if not self.lines:
            return
        cfg = trial.config
        what = f"{cfg.get('op')} {cfg.get('task')}/{cfg.get('dataset')}"
        if cfg.get("seed") is not None:
            what += f" seed {cfg['seed']}"
        record = (self.store.read_record(trial.id) or {}) if state in ("done", "failed", "crashed") else {}
        metrics = record.get("metrics") or {}
        primary = (record.get("metric_info") or {}).get("primary")
        shown = f"{primary}={metrics[primary]:.4g}" if isinstance(metrics.get(primary), (int, float)) else ""
        if state != "done" and (record.get("error") or {}).get("message"):
            shown = record["error"]["message"].splitlines()[0][:100]
        left = self.total - self.done
        eta = f"ETA {_duration((time.monotonic() - self.start) / self.done * left)}" if left else "last"
        width = len(str(self.total))
        print(
            f"[{self.done:>{width}}/{self.total}] {state:<8} {trial.id}  {what}  {shown}  {_duration(seconds)}  {eta}",
            flush=True,
        )

    def heartbeat(self, trial: Trial, seconds: float, every_s: float) -> None:
        """Where lines are printed: every ``every_s`` a running trial's phase and step (from its claim)."""
        if not self.lines or seconds < self.last_beat.get(trial.id, 0.0) + every_s:
            return
        self.last_beat[trial.id] = seconds
        claim = self.store.read_claim(trial.id) or {}
        where = claim.get("phase") or "starting"
        if claim.get("phase") == "train" and claim.get("total"):
            where = f"step {claim.get('step')}/{claim['total']}"
        print(f"{'':>{2 * len(str(self.total)) + 3}} running  {trial.id}  {where}  {_duration(seconds)}", flush=True)

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------------------------------
#: SLURM job states in which the job holds its trial (it will run, runs or is being requeued)
LIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SUSPENDED",
        "CONFIGURING",
        "COMPLETING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)
#: ... of which these mean it runs now
RUNNING_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT"})


def submitted_job_names(store: ResultStore) -> set[str]:
    return {e["job_name"] for e in store.jobs() if e.get("job_name")}


def scheduler_jobs_of(store: ResultStore) -> tuple[dict[str, tuple[str, str]], str | None]:
    """The suite's jobs that are still in the scheduler: ``{job id: (raw job id, state)}``, with each
    array task under its own id (``11_2``), and a note when SLURM jobs were submitted but the
    scheduler cannot be asked (then nothing is known to be live). ``({}, None)`` without submissions."""
    jobs = store.jobs()
    if not jobs:
        return {}, None
    from .slurm import SchedulerUnavailable, live_jobs

    try:
        live = live_jobs()
    except SchedulerUnavailable as exc:
        return {}, (
            f"SLURM jobs were submitted for this suite but the scheduler cannot be asked ({exc}): "
            "trials whose jobs wait in its queue show as pending"
        )
    names = submitted_job_names(store)
    ids = {jid for e in jobs for jid in (e.get("jobs") or {}).values()}
    ids |= {str(e["array_job_id"]) for e in jobs if e.get("array_job_id")}
    # a job of ours: its id was submitted here and (where recorded) its name matches, so a job id reused
    # after the scheduler's state was purged is not mistaken for ours
    return {
        jid: (raw, state) for jid, (raw, state, name) in live.items() if jid in ids and (not names or name in names)
    }, None


def latest_jobs(store: ResultStore, live: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Trials whose most recent submission is still in the scheduler: ``{trial id: (job id, state)}``."""
    latest: dict[str, str] = {}
    for entry in store.jobs():  # in submission order: a later submission replaces an earlier one
        for tid, jid in (entry.get("jobs") or {}).items():
            latest[tid] = jid
    return {tid: (jid, live[jid][1]) for tid, jid in latest.items() if jid in live}


def reap_slurm_claims(store: ResultStore, tids, live: dict[str, tuple[str, str]] | None = None) -> int:
    """Release the claims of SLURM jobs that no longer run (ended, cancelled, lost); returns how many.

    A job killed without a chance to clean up (cancelled, node lost) leaves its claim; the scheduler
    says whether the job behind it is still there. ``live``: :func:`scheduler_jobs_of`, if known."""
    claims = {tid: store.read_claim(tid) for tid in tids if store.claim_path(tid).exists()}
    jobs = {tid: str(c.get("slurm_job_id")) for tid, c in claims.items() if c and c.get("slurm_job_id")}
    if not jobs:
        return 0
    if live is None:
        from .slurm import SchedulerUnavailable, live_jobs

        try:
            live = {jid: (raw, state) for jid, (raw, state, _) in live_jobs().items()}
        except SchedulerUnavailable:
            return 0  # no scheduler to ask: keep the claims
    alive = {raw for raw, _ in live.values()} | set(live)
    reaped = 0
    for tid, job in jobs.items():
        if job not in alive:
            store.release(tid)
            reaped += 1
    return reaped
