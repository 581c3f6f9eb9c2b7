"""Runs one stored trial: claim it, run it with its checkpoint, write its record, release it.

The same function runs in a local subprocess (``python -m adaptconv.sweep.worker STORE ID``), in
process (the debug executor) and inside a SLURM job (through submitit). A killed worker leaves no
record (records are written atomically, at the end) and its checkpoint lets the next attempt resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..results.store import ResultStore

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _trial_logging(path: Path):
    """Send the library's log records (and warnings) for this trial to its log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _job_caches() -> None:
    """Per-job compiler caches: concurrent jobs on one node must not race on one inductor/Triton cache."""
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    tag = f"{job}_{task}" if job and task else (job or f"pid{os.getpid()}")
    base = Path(os.environ.get("SLURM_TMPDIR") or os.environ.get("TMPDIR") or tempfile.gettempdir())
    for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        os.environ[var] = str(base / f"adaptconv-{tag}" / sub)


def requeue_count() -> int:
    """How many times SLURM has requeued this job (0 outside SLURM)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def execute_trial(store_root: str | os.PathLike, tid: str, *, checkpoint_every_s: float = 120.0,
                  extra: dict[str, Any] | None = None) -> str:
    """Run trial ``tid`` of the store; return its final state (or "running" if another process has it)."""
    from ..trial import run_trial

    store = ResultStore(store_root)
    if store.read_record(tid) is not None and store.read_record(tid).get("status") == "ok":
        return "done"
    if not store.claim(tid, extra):
        return "running"
    try:
        _job_caches()
        config = store.read_config(tid)
        attempts_file = store.trial_dir(tid) / "attempts"
        attempts = int(attempts_file.read_text()) + 1 if attempts_file.exists() else 1
        attempts_file.write_text(str(attempts))
        with _trial_logging(store.log_path(tid)):
            log.info("trial %s attempt %d starts (requeues so far: %d)", tid, attempts, requeue_count())
            record = run_trial(config, checkpoint=str(store.checkpoint_path(tid)),
                               checkpoint_every_s=checkpoint_every_s)
            record.update(trial_id=tid, attempts=attempts, requeues=requeue_count(),
                          suite=Path(store_root).name, finished=time.time())
            if extra:
                record["dispatch"] = extra
            store.write_record(tid, record)
            log.info("trial %s ended: %s", tid, record["status"])
        if record["status"] == "ok":
            with contextlib.suppress(FileNotFoundError):
                store.checkpoint_path(tid).unlink()
        return "done" if record["status"] == "ok" else "failed"
    finally:
        store.release(tid)


def serve(store_root: str, checkpoint_every_s: float) -> int:
    """Run trial ids read from stdin, one per line, in this process; answer ``<id> <state>`` per trial.

    The local executor keeps one such worker per slot so a sweep of short trials does not pay the
    interpreter and torch start-up for every trial. Each trial still runs through :func:`execute_trial`
    (claim, seeded run, atomic record); a worker that dies mid-trial loses only that trial, which the
    executor reports and replaces.
    """
    # the answers get the real stdout to themselves; anything else printed (by a library, at the C
    # level too) goes to stderr so it cannot be mistaken for an answer
    sys.stdout.flush()
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        tid = line.strip()
        if not tid:
            continue
        try:
            state = execute_trial(store_root, tid, checkpoint_every_s=checkpoint_every_s)
        except Exception as exc:  # the store itself failed (disk full, ...): report it, keep serving
            log.error("trial %s: %s: %s", tid, type(exc).__name__, exc)
            state = "crashed"
        answers.write(f"{tid} {state}\n")
        answers.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        return serve(argv[1], float(argv[2]) if len(argv) > 2 else 120.0)
    if len(argv) < 2:
        print("usage: python -m adaptconv.sweep.worker STORE_DIR TRIAL_ID [CHECKPOINT_EVERY_S]", file=sys.stderr)
        return 2
    every = float(argv[2]) if len(argv) > 2 else 120.0
    state = execute_trial(argv[0], argv[1], checkpoint_every_s=every)
    return 0 if state in ("done", "running") else 1


if __name__ == "__main__":
    sys.exit(main())
