"""SLURM dispatch through submitit: profiles, job arrays within MaxArraySize, requeue with checkpoints.

A profile (``slurm/NAME.yaml`` of the project the command runs in, i.e. the working directory) says
how to reach a cluster; the suite's ``resources`` say what each trial needs (time, GPUs, CPUs,
memory): where a suite states one, it wins over the profile's.

Each array task runs its trial in a child process (:func:`adaptconv.sweep.worker.run_in_child`), so
a trial that kills its process (a native kernel's segfault) still gets a ``crashed`` record from the
job. The scheduler is asked which of a suite's jobs are still queued, running or being requeued
(``squeue -r``: one line per array task), so a second ``run`` never submits those trials again.
"""

from __future__ import annotations

import getpass
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
#: the profiles shipped with the package's repository (the last place a profile name is looked up)
PROFILES_DIR = Path(__file__).resolve().parents[2] / "slurm"


class SchedulerUnavailable(RuntimeError):
    """squeue/sacct cannot be run or do not answer (no SLURM here, controller down)."""


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


def profile_dirs(cwd: str | Path | None = None) -> list[Path]:
    """Where a profile name is looked up, in order: ``slurm/`` of the working directory (the project the
    user runs in, whose code the jobs import), then the package's own ``slurm/`` if that is elsewhere."""
    here = (Path(cwd) if cwd is not None else Path.cwd()).resolve() / "slurm"
    dirs = [here]
    if PROFILES_DIR.resolve() != here:
        dirs.append(PROFILES_DIR.resolve())
    return dirs


def load_profile(profile: str | Path | None, cwd: str | Path | None = None) -> tuple[SlurmProfile, str]:
    """A profile by path, or by name in :func:`profile_dirs`; no profile gives the defaults.
    Returns the profile and the file it came from (an absolute path)."""
    if profile is None:
        return SlurmProfile(), "(defaults)"
    p = Path(profile)
    if not p.is_file():
        found = [d / f"{profile}.yaml" for d in profile_dirs(cwd) if (d / f"{profile}.yaml").is_file()]
        if not found:
            known = "; ".join(
                f"{d}: {', '.join(sorted(f.stem for f in d.glob('*.yaml'))) or 'none'}"
                if d.is_dir()
                else f"{d}: no such folder"
                for d in profile_dirs(cwd)
            )
            raise ConfigError(
                [
                    f"no SLURM profile {str(profile)!r} (looked for {profile}.yaml in {known}); "
                    "give a profile name or a path to a .yaml file"
                ]
            )
        p = found[0]
    import yaml

    raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    return parse(SlurmProfile, raw, f"SLURM profile {p}"), str(p.resolve())


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
        from .worker import run_in_child

        return run_in_child(self.store_root, tid, checkpoint_every_s=self.checkpoint_every_s, executor="slurm")

    def checkpoint(self, tid: str):
        import submitit

        # the training loop's own checkpoint file holds the state; requeue the same call
        return submitit.helpers.DelayedSubmission(TrialTask(self.store_root, self.checkpoint_every_s), tid)


def submit(
    plan: Plan, profile: SlurmProfile, profile_name: str, folder: Path | None = None, chunk: int | None = None
) -> list[str]:
    """Submit the plan's trials as job arrays; return the job ids. sbatch failures raise."""
    import submitit

    res = plan.suite.spec.resources

    def need(suite_value, profile_value, default):
        return suite_value if suite_value is not None else profile_value if profile_value is not None else default

    minutes = time_to_minutes(need(res.time, profile.time, "01:00:00"))
    if minutes < 10:
        warnings.warn(
            f"SLURM time limit {minutes} min is under 10 minutes: trials may be killed before they checkpoint",
            stacklevel=2,
        )
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
        part = plan.to_run[start : start + size]
        try:
            jobs = executor.map_array(task, [t.id for t in part])
        except Exception as exc:  # submitit raises on an sbatch error: say so, keep what was submitted
            raise RuntimeError(f"sbatch failed after {len(ids)} job(s) were submitted: {exc}") from exc
        job_ids = [j.job_id for j in jobs]
        ids += job_ids
        plan.store.add_jobs(
            {
                "time": time.time(),
                "profile": profile_name,
                "folder": str(folder),
                "job_name": params["job_name"],
                "array_job_id": job_ids[0].split("_")[0] if job_ids else None,
                "jobs": dict(zip((t.id for t in part), job_ids)),
            }
        )
    return ids


def wait_for(
    store: ResultStore, tids: list[str], timeout_s: float | None = None, poll_s: float = 2.0
) -> dict[str, str]:
    """Block until every trial has a record, or none is held by a job any more, or the timeout;
    return the states."""
    from .executors import latest_jobs, reap_slurm_claims, scheduler_jobs_of

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    quiet = 0
    while True:
        states = store.states(tids)
        if all(s in ("done", "failed", "crashed") for s in states.values()):
            return states
        if deadline is not None and time.monotonic() > deadline:
            return states
        live, note = scheduler_jobs_of(store)
        reap_slurm_claims(store, tids, live if note is None else None)
        held = set(latest_jobs(store, live)) & set(tids)
        # nothing of ours left in the scheduler (sacct/squeue lag a few seconds: ask three times)
        quiet = quiet + 1 if note is None and not held and "running" not in states.values() else 0
        if quiet >= 3:
            return store.states(tids)
        time.sleep(poll_s)


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SchedulerUnavailable(f"{cmd[0]} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise SchedulerUnavailable(f"{cmd[0]} did not answer within {timeout:.0f} s") from None
    if out.returncode != 0:
        raise SchedulerUnavailable(f"{' '.join(cmd[:2])}... failed: {out.stderr.strip() or out.returncode}")
    return out


def live_jobs() -> dict[str, tuple[str, str, str]]:
    """This user's jobs in the scheduler (queued, running, requeued...), one entry per array task:
    ``{job id ("11_2" or "12"): (raw job id, state, job name)}``. Raises :class:`SchedulerUnavailable`."""
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%A|%T|%j"])
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            jid, raw, state, name = parts
            jobs[jid] = (raw, state, name)
    return jobs


def expand_job_ids(text: str) -> list[str]:
    """sacct's/squeue's compact array ids, one per task: ``11_[2-3%2]`` → ``11_2, 11_3``;
    ``11_[1,4-5]`` → ``11_1, 11_4, 11_5``; anything else unchanged."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", text.strip())
    if not m:
        return [text.strip()]
    base, spec = m.groups()
    ids = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            ids += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id (an array task as ``11_2``), e.g. PENDING, RUNNING, COMPLETED, FAILED,
    CANCELLED: the scheduler's queue for the jobs still in it (sacct lags it and lists queued array
    tasks as one ``11_[2-3%2]`` line, expanded here), accounting (sacct) for the ones that ended."""
    if not job_ids:
        return {}
    wanted = set(job_ids)
    states: dict[str, str] = {}
    bases = sorted({j.split("_")[0] for j in job_ids})
    try:
        # (sacct's --array, one line per task, exists only from Slurm 23.02: the ranges are expanded here)
        out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(bases)])
    except SchedulerUnavailable:
        out = None
    for line in out.stdout.splitlines() if out else []:
        jid, _, state = line.partition("|")
        for one in expand_job_ids(jid):
            if one in wanted:
                states[one] = state.split()[0] if state else "UNKNOWN"
    try:
        live = live_jobs()
    except SchedulerUnavailable:
        if out is None:
            raise
        live = {}
    for jid, (_, state, _) in live.items():
        if jid in wanted:
            states[jid] = state
    return states


def cancel(store: ResultStore) -> list[str]:
    """scancel every submitted job of the suite that is still queued, running or being requeued;
    return their ids."""
    from .executors import LIVE_STATES

    ids = sorted({jid for entry in store.jobs() for jid in entry.get("jobs", {}).values()})
    states = job_states(ids)
    live = [j for j in ids if states.get(j) in LIVE_STATES]
    if live:
        out = subprocess.run(["scancel", *live], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"scancel failed: {out.stderr.strip()}")
    return live
