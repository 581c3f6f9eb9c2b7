"""SLURM dispatch through submitit: profiles, job arrays within MaxArraySize, requeue with checkpoints.

A profile (``slurm/NAME.yaml``) says how to reach a cluster; the suite's ``resources`` say what each
trial needs (time, GPUs, CPUs, memory): where a suite states one, it wins over the profile's.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..results.store import ResultStore
from ..schema import ConfigError, parse
from .executors import Plan, prepare

log = logging.getLogger(__name__)
PROFILES_DIR = Path(__file__).resolve().parents[2] / "slurm"


@dataclass
class SlurmProfile:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int | None = None  # used where the suite's resources leave gpus unset
    cpus_per_task: int | None = None  # ... cpus
    mem_gb: float | None = None  # ... mem_gb
    time: str | None = None  # ... time (else 01:00:00)
    array_parallelism: int = 64  # how many array tasks may run at once
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = 5
    checkpoint_every_s: float = 120.0  # the training state is saved this often (work lost at a kill)
    additional: dict[str, Any] = field(default_factory=dict)  # extra sbatch flags {name: value}
    setup: list[str] = field(default_factory=list)  # lines run before the job (module load, ...)


def load_profile(profile: str | Path | None) -> tuple[SlurmProfile, str]:
    """A profile by path or by name in ``slurm/``; no profile gives the defaults."""
    if profile is None:
        return SlurmProfile(), "(defaults)"
    p = Path(profile)
    if not p.is_file():
        p = PROFILES_DIR / f"{profile}.yaml"
    if not p.is_file():
        known = sorted(f.stem for f in PROFILES_DIR.glob("*.yaml")) if PROFILES_DIR.is_dir() else []
        raise ConfigError([f"no SLURM profile {str(profile)!r} (known in {PROFILES_DIR}: {', '.join(known) or 'none'})"])
    import yaml

    raw = yaml.safe_load(p.read_text()) or {}
    return parse(SlurmProfile, raw, f"SLURM profile {p}"), str(p)


def time_to_minutes(text: str) -> int:
    m = re.fullmatch(r"(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})", text)
    if not m:
        raise ConfigError([f"time: {text!r} is not [D-]HH:MM:SS"])
    d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    return max(1, d * 1440 + h * 60 + mi + (1 if s else 0))


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices must stay below it)."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"scontrol show config failed: {out.stderr.strip()}")
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.M)
    return int(m.group(1)) if m else 1001


class TrialTask:
    """The callable a SLURM array task runs; checkpointable, so a preempted or timed-out task is
    requeued (submitit's USR2 handling) and resumes from the trial's checkpoint."""

    def __init__(self, store_root: str, checkpoint_every_s: float) -> None:
        self.store_root = store_root
        self.checkpoint_every_s = checkpoint_every_s

    def __call__(self, tid: str) -> str:
        from .worker import execute_trial

        return execute_trial(self.store_root, tid, checkpoint_every_s=self.checkpoint_every_s,
                             extra={"executor": "slurm"})

    def checkpoint(self, tid: str):
        import submitit

        # the training loop's own checkpoint file holds the state; requeue the same call
        return submitit.helpers.DelayedSubmission(TrialTask(self.store_root, self.checkpoint_every_s), tid)


def submit(plan: Plan, profile: SlurmProfile, profile_name: str, folder: Path | None = None,
           chunk: int | None = None) -> list[str]:
    """Submit the plan's trials as job arrays; return the job ids. sbatch failures raise."""
    import submitit

    res = plan.suite.spec.resources

    def need(suite_value, profile_value, default):
        return suite_value if suite_value is not None else profile_value if profile_value is not None else default

    minutes = time_to_minutes(need(res.time, profile.time, "01:00:00"))
    if minutes < 10:
        warnings.warn(f"SLURM time limit {minutes} min is under 10 minutes: trials may be killed before "
                      "they checkpoint", stacklevel=2)
    if not plan.to_run:
        return []
    prepare(plan)
    folder = folder or plan.store.root / "slurm" / time.strftime("%Y%m%d-%H%M%S")
    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=profile.max_requeues)
    params: dict[str, Any] = dict(
        time=minutes,
        cpus_per_task=need(res.cpus, profile.cpus_per_task, 2),
        mem=f"{int(need(res.mem_gb, profile.mem_gb, 8.0) * 1024)}M",
        array_parallelism=profile.array_parallelism,
        signal_delay_s=profile.signal_delay_s,
        job_name=f"adaptconv-{plan.suite.name}",
    )
    gpus = need(res.gpus, profile.gpus_per_node, 0)
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(profile, key):
            params[key] = getattr(profile, key)
    if profile.setup:
        params["setup"] = list(profile.setup)
    if profile.additional:
        params["additional_parameters"] = dict(profile.additional)
    executor.update_parameters(**params)
    size = chunk or max_array_size()
    task = TrialTask(str(plan.store.root), profile.checkpoint_every_s)
    ids: list[str] = []
    for start in range(0, len(plan.to_run), size):
        part = plan.to_run[start:start + size]
        try:
            jobs = executor.map_array(task, [t.id for t in part])
        except Exception as exc:  # submitit raises on an sbatch error: say so, keep what was submitted
            raise RuntimeError(f"sbatch failed after {len(ids)} job(s) were submitted: {exc}") from exc
        job_ids = [j.job_id for j in jobs]
        ids += job_ids
        plan.store.add_jobs({"time": time.time(), "profile": profile_name, "folder": str(folder),
                             "array_job_id": job_ids[0].split("_")[0] if job_ids else None,
                             "jobs": dict(zip((t.id for t in part), job_ids))})
    return ids


def wait_for(store: ResultStore, tids: list[str], timeout_s: float | None = None, poll_s: float = 2.0) -> dict[str, str]:
    """Block until every trial has a record (or the timeout); return the states."""
    from .executors import reap_slurm_claims

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        states = store.states(tids)
        if all(s in ("done", "failed") for s in states.values()):
            return states
        if deadline is not None and time.monotonic() > deadline:
            return states
        reap_slurm_claims(store, tids)
        time.sleep(poll_s)


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id (sacct), e.g. PENDING, RUNNING, COMPLETED, FAILED, CANCELLED."""
    if not job_ids:
        return {}
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60)
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        states[jid.strip()] = state.split()[0] if state else "UNKNOWN"
    return states


def cancel(store: ResultStore) -> list[str]:
    """scancel every submitted job of the suite that has not ended; return their ids."""
    ids = sorted({jid for entry in store.jobs() for jid in entry.get("jobs", {}).values()})
    states = job_states(ids)
    live = [j for j in ids if states.get(j, "PENDING") in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "CONFIGURING")]
    if live:
        out = subprocess.run(["scancel", *live], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"scancel failed: {out.stderr.strip()}")
    return live
