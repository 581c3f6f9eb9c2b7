"""Dispatching a suite's trials: ``debug`` (in process), ``local`` (subprocesses), ``slurm`` (submitit).

All three go through :func:`adaptconv.sweep.worker.execute_trial`, so a trial behaves the same
wherever it runs: finished trials are never run again, failed ones only with ``retry_failed``, a
trial another process is running is left alone.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..results.store import ResultStore
from .suite import Suite, Trial
from .worker import execute_trial

log = logging.getLogger(__name__)


@dataclass
class Plan:
    suite: Suite
    store: ResultStore
    states: dict[str, str]
    to_run: list[Trial]
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        return (f"{len(self.states)} trials: {c.get('done', 0)} done, {c.get('failed', 0)} failed, "
                f"{c.get('running', 0)} running, {c.get('pending', 0)} pending; a run would start {len(self.to_run)}")


def make_plan(suite: Suite, store: ResultStore, retry_failed: bool = False) -> Plan:
    reap_slurm_claims(store, [t.id for t in suite.trials])
    states = store.states(t.id for t in suite.trials)
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    wanted = {"pending", "failed"} if retry_failed else {"pending"}
    to_run = [t for t in suite.trials if states[t.id] in wanted]
    return Plan(suite, store, states, to_run, counts)


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
            problems[(spec.name, root)] = (f"dataset {spec.name}: data_root {root!r} does not exist "
                                           f"({spec.description})" if root else
                                           f"dataset {spec.name}: no data_root given ({spec.description})")
    return [problems[k] for k in sorted(problems, key=str)]


def prepare(plan: Plan) -> None:
    """Write each trial's config (and the suite file) before dispatch, so a worker needs only an id."""
    plan.store.root.mkdir(parents=True, exist_ok=True)
    from ..results.atomic import write_text_atomic

    write_text_atomic(plan.store.root / "suite.yaml", plan.suite.path.read_text(encoding="utf-8"))
    for t in plan.to_run:
        plan.store.write_config(t.id, t.config)
        if plan.states[t.id] == "failed":  # --retry-failed: the old record goes, its log stays
            plan.store.record_path(t.id).unlink()


# --------------------------------------------------------------------------------------------------
def run_debug(plan: Plan, checkpoint_every_s: float = 120.0) -> dict[str, int]:
    """Every trial in this process, one after another (for debugging: exceptions surface in pdb)."""
    prepare(plan)
    out: dict[str, int] = {}
    for t in _progress(plan.to_run, "trials"):
        state = execute_trial(plan.store.root, t.id, checkpoint_every_s=checkpoint_every_s,
                              extra={"executor": "debug"})
        out[state] = out.get(state, 0) + 1
    return out


def default_parallelism() -> int:
    """One trial at a time per GPU, or one on the CPU: latency is measured on a quiet device."""
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def run_local(plan: Plan, max_parallel: int | None = None, checkpoint_every_s: float = 120.0,
              reuse_workers: bool = True) -> dict[str, int]:
    """Run the plan in worker subprocesses, at most ``max_parallel`` at once (GPU i for slot i).

    With ``reuse_workers`` each slot keeps one worker process that runs its trials one after the other
    (``python -m adaptconv.sweep.worker --serve``), so short trials do not each pay the interpreter and
    torch start-up; otherwise each trial gets a fresh process. Either way a crash loses one trial only.
    """
    prepare(plan)
    slots = max_parallel or default_parallelism()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    queue = list(plan.to_run)
    workers: dict[int, subprocess.Popen] = {}
    errors: dict = {}
    running: dict[int, Trial] = {}
    out: dict[str, int] = {}
    bar = _progress(None, "trials", total=len(queue))

    def start(slot: int) -> subprocess.Popen:
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        args = ["--serve", str(plan.store.root), str(checkpoint_every_s)]
        # stderr to a file, not a pipe: a chatty worker must never block on a full pipe
        if slot in errors:
            errors[slot].close()  # the previous worker of this slot is gone
        errors[slot] = tempfile.TemporaryFile(mode="w+")
        return subprocess.Popen([sys.executable, "-m", "adaptconv.sweep.worker", *args], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors[slot])

    def stderr_tail(slot: int) -> str:
        f = errors.get(slot)
        if f is None:
            return ""
        f.seek(0)
        return f.read()[-2000:]

    def finish(slot: int, answered: bool, err: str = "") -> None:
        trial = running.pop(slot)
        state = plan.store.state(trial.id)
        if not answered and state not in ("done", "failed", "running"):
            log.error("trial %s: worker exited and wrote no record:\n%s", trial.id, err)
            state = "crashed"
        out[state] = out.get(state, 0) + 1
        bar.update(1)
        bar.set_postfix(out)

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
            # wait for any busy worker to answer (a line) or to die
            ready = _wait_readable([workers[s].stdout for s in running], timeout=1.0)
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
                    finish(slot, False, stderr_tail(slot))
    except KeyboardInterrupt:
        for proc in workers.values():
            proc.terminate()  # they leave their checkpoints and no record: the next run resumes them
        raise
    finally:
        for proc in workers.values():
            _stop(proc)
        for f in errors.values():
            f.close()
        bar.close()
    return out


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


def _progress(items, desc: str, total: int | None = None):
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty()
    if items is None:
        return tqdm(total=total, desc=desc, unit="trial", disable=disable)
    return tqdm(items, desc=desc, unit="trial", disable=disable)


# --------------------------------------------------------------------------------------------------
def reap_slurm_claims(store: ResultStore, tids) -> int:
    """Release the claims of SLURM jobs that no longer run (ended, cancelled, lost); returns how many."""
    claims = {tid: store.read_claim(tid) for tid in tids if store.claim_path(tid).exists()}
    jobs = {tid: c.get("slurm_job_id") for tid, c in claims.items() if c and c.get("slurm_job_id")}
    if not jobs:
        return 0
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%A", "-j", ",".join(sorted(set(jobs.values())))],
                             capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0  # no scheduler to ask: keep the claims
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return 0
    alive = set(out.stdout.split())
    reaped = 0
    for tid, job in jobs.items():
        if job not in alive:
            store.release(tid)
            reaped += 1
    return reaped
