"""The results store: one folder per trial, written so that nothing is ever half there.

```
results/<suite>/
  suite.yaml                 the suite file as last run (for the report)
  jobs.jsonl                 submitted SLURM jobs (executor, job ids, trial ids), one line per submission
  trials/<id>/
    trial.json               the trial's normalised config (written before it runs)
    record.json              the result, written atomically (temp file, fsync, rename) when it ends
    running.json             a claim while it runs: host, pid, SLURM job, start time, and its progress
                             (phase, step, total; rewritten at every logged step)
    attempts                 how many attempts have started
    attempts.jsonl           one line per attempt event (start, end, interrupted, crashed), for the
                             record's attempt_history (timing of every attempt, not only the last)
    record.json.corrupt-<t>  a damaged record.json, moved aside when it was found (kept for inspection)
    log.txt                  the trial's log (appended across attempts)
    checkpoint.pt            training state while it runs (removed once the record is written)
```

A trial's state is derived from these files (:func:`state_of_status` maps a record's status):
``done`` (record with status ok), ``crashed`` (record written by the parent of a worker that died
by a signal), ``failed`` (record with another status), ``running`` (a live claim), ``corrupt`` (no
record, a damaged one set aside), ``pending`` (nothing, or a stale claim of a process that died on
this host). ``failed``, ``crashed`` and ``corrupt`` trials run again only with ``--retry-failed``.

Every file is created with the mode the umask gives a normal file, so a results folder can be shared.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic, write_text_atomic
from ..trial.ids import check_trial_id

log = logging.getLogger(__name__)

#: a trial's states, in the order status lines and tables list them
STATES = ("done", "failed", "crashed", "corrupt", "running", "pending")
#: the states a run leaves alone unless asked (``--retry-failed``): the trial ended badly
RETRY_STATES = ("failed", "crashed", "corrupt")
#: the record status of a trial whose worker process died by a signal (written by its parent)
CRASHED = "crashed"


def state_of_status(status: str | None) -> str:
    """The state of a trial whose record has this ``status``: done, crashed or failed."""
    if status == "ok":
        return "done"
    return "crashed" if status == CRASHED else "failed"


def set_aside_corrupt(path: str | os.PathLike, reason: str) -> Path | None:
    """Move a damaged record to ``<name>.corrupt-<UTC time>`` beside it and warn (once: whoever moves
    it warns; a process that finds it already moved says nothing). Returns the new path, or None if
    the file was gone already."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    log.warning(
        "damaged record %s (%s): moved aside to %s; the trial counts as corrupt "
        "(run with --retry-failed to run it again)",
        path,
        reason,
        target.name,
    )
    return target


def parse_record(data: bytes | str) -> dict[str, Any]:
    """A record from its JSON text; ``ValueError`` if it is not a JSON object (truncated, edited...)."""
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    return record


def run_columns(record: dict[str, Any]) -> dict[str, Any]:
    """Where and how a trial ran, as table columns: its SLURM job/array ids, attempts, requeues and the
    wall time of every attempt (``timing.attempts_s``, JSON list; ``timing.all_attempts_s``, the sum)."""
    slurm = record.get("slurm") or {}
    out: dict[str, Any] = {
        "slurm.job_id": slurm.get("job_id"),
        "slurm.array_job_id": slurm.get("array_job_id"),
        "slurm.array_task_id": slurm.get("array_task_id"),
        "run.attempts": record.get("attempts"),
        "run.requeues": record.get("requeues"),
    }
    history = record.get("attempt_history") or []
    walls = [a.get("wall_s") for a in history]
    if history:
        out["timing.attempts_s"] = json.dumps([None if w is None else round(w, 3) for w in walls])
        out["timing.all_attempts_s"] = sum(w for w in walls if w is not None)
    return {k: v for k, v in out.items() if v is not None}


class ResultStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.trials_dir = self.root / "trials"

    # ---- paths -----------------------------------------------------------------------------------
    def trial_dir(self, tid: str) -> Path:
        return self.trials_dir / check_trial_id(tid)

    def record_path(self, tid: str) -> Path:
        return self.trial_dir(tid) / "record.json"

    def log_path(self, tid: str) -> Path:
        return self.trial_dir(tid) / "log.txt"

    def checkpoint_path(self, tid: str) -> Path:
        return self.trial_dir(tid) / "checkpoint.pt"

    def claim_path(self, tid: str) -> Path:
        return self.trial_dir(tid) / "running.json"

    # ---- configs and records ---------------------------------------------------------------------
    def write_config(self, tid: str, config: dict[str, Any]) -> None:
        path = self.trial_dir(tid) / "trial.json"
        text = json.dumps(config, indent=1, sort_keys=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_text_atomic(path, text)

    def read_config(self, tid: str) -> dict[str, Any]:
        return json.loads((self.trial_dir(tid) / "trial.json").read_text(encoding="utf-8"))

    def write_record(self, tid: str, record: dict[str, Any]) -> None:
        write_text_atomic(self.record_path(tid), json.dumps(record, indent=1, allow_nan=False))

    def read_record(self, tid: str) -> dict[str, Any] | None:
        """The trial's record, or None. A damaged one (cannot happen through write_record: a disk that
        filled up, a copy cut short, an edit) is moved aside (:func:`set_aside_corrupt`)."""
        path = self.record_path(tid)
        try:
            return parse_record(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            set_aside_corrupt(path, str(exc))
            return None

    def corrupt_records(self, tid: str) -> list[Path]:
        """The damaged records of this trial that were moved aside, oldest first."""
        folder = self.trial_dir(tid)
        if not folder.is_dir():
            return []
        return sorted(folder.glob("record.json.corrupt-*"))

    def suite_name(self) -> str:
        """The name of the suite stored here (from the suite.yaml kept beside the results), else the folder's."""
        import yaml

        try:
            name = (yaml.safe_load((self.root / "suite.yaml").read_text(encoding="utf-8")) or {}).get("name")
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            name = None
        return name if isinstance(name, str) and name else self.root.name

    # ---- attempts --------------------------------------------------------------------------------
    def attempts_log_path(self, tid: str) -> Path:
        return self.trial_dir(tid) / "attempts.jsonl"

    def log_attempt(self, tid: str, event: dict[str, Any]) -> None:
        """Append one attempt event (a line is small enough to be written whole)."""
        path = self.attempts_log_path(tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")

    def attempt_history(self, tid: str) -> list[dict[str, Any]]:
        """One entry per attempt: when and where it ran, how it ended, how far it got and its timing
        (``wall_s``: from its start to its end or, for an attempt that was killed, its last progress)."""
        path = self.attempts_log_path(tid)
        if not path.exists():
            return []
        attempts: dict[int, dict[str, Any]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
                n = int(event["attempt"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a crash
            entry = attempts.setdefault(n, {"attempt": n})
            kind = event.pop("event", None)
            at = event.pop("time", None)
            if kind == "start":
                entry["start"] = at
            else:
                entry["end"] = at
                entry.setdefault("outcome", kind)
            entry.update({k: v for k, v in event.items() if k != "attempt"})
        out = []
        for n in sorted(attempts):
            entry = attempts[n]
            if entry.get("start") is not None and entry.get("end") is not None:
                entry["wall_s"] = max(0.0, entry["end"] - entry["start"])
            out.append(entry)
        return out

    def note_progress(self, tid: str, phase: str, step: int, total: int) -> None:
        """Note in this process's claim how far the trial got (read back if the process dies)."""
        self.update_claim(tid, phase=phase, step=step, total=total, progress_time=time.time())

    def update_claim(self, tid: str, **fields: Any) -> bool:
        """Add ``fields`` to this process's claim (atomically); False if the claim is not this process's."""
        claim = self.read_claim(tid)
        if claim is None or claim.get("pid") != os.getpid():
            return False  # taken over or released: never overwrite another process's claim
        claim.update(fields)
        write_bytes_atomic(self.claim_path(tid), json.dumps(claim).encode(), durable=False)
        return True

    def trial_ids(self) -> list[str]:
        if not self.trials_dir.is_dir():
            return []
        return sorted(p.name for p in self.trials_dir.iterdir() if p.is_dir() and len(p.name) == 16)

    # ---- claims ----------------------------------------------------------------------------------
    def claim(self, tid: str, info: dict[str, Any] | None = None) -> bool:
        """Mark a trial as running; False if a live claim exists (a stale one is taken over)."""
        path = self.claim_path(tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": time.time(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            **(info or {}),
        }
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask decides
            except FileExistsError:
                mine = os.environ.get("SLURM_JOB_ID") and (self.read_claim(tid) or {}).get(
                    "slurm_job_id"
                ) == os.environ.get("SLURM_JOB_ID")
                if self._claim_alive(tid) and not mine:  # a requeued SLURM job takes its own claim back
                    return False
                try:
                    path.unlink()  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f)
            return True
        return False

    def release(self, tid: str) -> None:
        try:
            self.claim_path(tid).unlink()
        except FileNotFoundError:
            pass

    def read_claim(self, tid: str) -> dict[str, Any] | None:
        try:
            claim = json.loads(self.claim_path(tid).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return claim if isinstance(claim, dict) else None

    def _claim_alive(self, tid: str) -> bool:
        claim = self.read_claim(tid)
        if claim is None:
            # being written right now by its owner (created, not yet filled): treat as alive
            return self.claim_path(tid).exists()
        if claim.get("host") == socket.gethostname() and not claim.get("slurm_job_id"):
            return _pid_alive(int(claim.get("pid", -1)))
        # a claim from another host or a SLURM job: alive until the scheduler says otherwise
        # (`adaptconv status` asks it; `run --retry-failed` does not take over a running job)
        return True

    # ---- state -----------------------------------------------------------------------------------
    def state(self, tid: str) -> str:
        record = self.read_record(tid)
        if record is not None:
            return state_of_status(record.get("status"))
        if self.claim_path(tid).exists() and self._claim_alive(tid):
            return "running"
        if self.corrupt_records(tid):
            return "corrupt"
        return "pending"

    def states(self, tids) -> dict[str, str]:
        return {tid: self.state(tid) for tid in tids}

    # ---- submitted jobs --------------------------------------------------------------------------
    def add_jobs(self, entry: dict[str, Any]) -> None:
        """Append one submission to jobs.jsonl (a line is small enough to be written whole)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "jobs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def jobs(self) -> list[dict[str, Any]]:
        path = self.root / "jobs.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash: the submission it described is also in the trial claims
        return out


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True
