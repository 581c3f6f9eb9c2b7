"""The results store: one folder per trial, written so that nothing is ever half there.

```
results/<suite>/
  suite.yaml                 the suite file as last run (for the report)
  jobs.jsonl                 submitted SLURM jobs (executor, job ids, trial ids), one line per submission
  trials/<id>/
    trial.json               the trial's normalised config (written before it runs)
    record.json              the result, written atomically (temp file, fsync, rename) when it ends
    running.json             a claim while it runs: host, pid, SLURM job, start time
    log.txt                  the trial's log (appended across attempts)
    checkpoint.pt            training state while it runs (removed once the record is written)
```

A trial's state is derived from these files: ``done`` (record with status ok), ``failed`` (record with
another status), ``running`` (a live claim), ``pending`` (nothing, or a stale claim of a process that
died on this host).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..sweep.ids import check_trial_id
from .atomic import write_text_atomic

log = logging.getLogger(__name__)

STATES = ("done", "failed", "running", "pending")


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
        path = self.record_path(tid)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # cannot happen through write_record; a record edited or damaged by hand is set aside
            log.warning("unreadable record %s (%s): treated as missing", path, exc)
            return None

    def trial_ids(self) -> list[str]:
        if not self.trials_dir.is_dir():
            return []
        return sorted(p.name for p in self.trials_dir.iterdir() if p.is_dir() and len(p.name) == 16)

    # ---- claims ----------------------------------------------------------------------------------
    def claim(self, tid: str, info: dict[str, Any] | None = None) -> bool:
        """Mark a trial as running; False if a live claim exists (a stale one is taken over)."""
        path = self.claim_path(tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time(),
                   "slurm_job_id": os.environ.get("SLURM_JOB_ID"), **(info or {})}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                mine = os.environ.get("SLURM_JOB_ID") and (self.read_claim(tid) or {}).get("slurm_job_id") \
                    == os.environ.get("SLURM_JOB_ID")
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
            return json.loads(self.claim_path(tid).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

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
            return "done" if record.get("status") == "ok" else "failed"
        if self.claim_path(tid).exists() and self._claim_alive(tid):
            return "running"
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
