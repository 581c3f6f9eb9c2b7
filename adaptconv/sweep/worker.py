"""Runs one stored trial: claim it, run it with its checkpoint, write its record, release it.

The same function runs in a local subprocess (``python -m adaptconv.sweep.worker STORE ID``), in
process (the debug executor) and inside a SLURM job (through submitit, in a child process). While it
runs, the trial notes its progress (phase, step) in its claim. A worker killed from outside (SIGKILL,
SIGTERM, ...) leaves no record, and its checkpoint lets the next attempt resume; a worker that dies of
its own fault (SIGSEGV in a native kernel, SIGABRT, ...) gets a ``crashed`` record from its parent
process (:func:`handle_dead_worker`) naming the signal and the last step reached.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..results.store import CRASHED, ResultStore

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


def slurm_ids() -> dict[str, str]:
    """This process's SLURM job as the scheduler names it (``job_id``: ``<array>_<task>`` for an array
    task, as squeue/sacct print it), with the array's and the raw ids; empty outside SLURM."""
    raw = os.environ.get("SLURM_JOB_ID")
    if not raw:
        return {}
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    out = {"job_id": f"{array}_{task}" if array and task else raw, "raw_job_id": raw}
    if array and task:
        out.update(array_job_id=array, array_task_id=task)
    return out


#: signals sent from outside to stop a process (a person, the scheduler's requeue or cancel, a
#: shutdown): the trial is interrupted, not broken, and resumes from its checkpoint when run again.
#: Any other signal (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL, ...) means the trial crashed itself.
#: SIGUSR2 is SLURM's (submitit's) checkpoint-and-requeue signal.
INTERRUPT_SIGNALS = frozenset(
    {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2}
)


def _where(claim: dict[str, Any]) -> str:
    """How far the trial got, from the progress its process noted in its claim."""
    phase, step, total = claim.get("phase"), claim.get("step"), claim.get("total")
    if phase is None:
        return "before it reported any progress"
    if phase == "train":
        return (
            f"in training, after step {step} of {total}" if step else f"in training, before its first step (of {total})"
        )
    return f"in {phase} (after training step {step} of {total})" if total else f"in {phase}"


def _describe_exit(returncode: int) -> tuple[str, str | None, bool]:
    """(text, signal name, interrupted?) for a worker's exit status (negative: killed by that signal)."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
            name = sig.name
        except ValueError:
            sig, name = None, f"signal {-returncode}"
        return f"killed by {name} (signal {-returncode})", name, sig in INTERRUPT_SIGNALS
    return f"exited with status {returncode} without writing a record", None, False


def handle_dead_worker(
    store: ResultStore, tid: str, pid: int, returncode: int, executor: str, stderr_tail: str = ""
) -> tuple[str, str]:
    """Called by the parent of a worker process that died while it ran trial ``tid``.

    Returns ``(state, message)``: ``crashed`` when the worker died of its own fault (a signal other
    than the interrupts, or an exit without a record): a record with status ``crashed`` naming the
    signal and the last step reached is written, so the trial is counted and not run again without
    ``--retry-failed``; ``interrupted`` when it was stopped from outside (SIGKILL, SIGTERM, ...): no
    record, it resumes from its checkpoint on the next run; ``pending`` when the worker never claimed
    the trial (it died before, so the trial is not to blame); ``done``/``failed`` if the record is there.
    """
    record = store.read_record(tid)
    if record is not None:
        from ..results.store import state_of_status

        return state_of_status(record.get("status")), "the worker wrote its record before it ended"
    claim = store.read_claim(tid)
    how, sig_name, interrupted = _describe_exit(returncode)
    if claim is None or claim.get("pid") != pid:
        return "pending", (
            f"worker {how} before it started trial {tid}: the trial stays pending"
            + (f"; its stderr ended with:\n{stderr_tail}" if stderr_tail.strip() else "")
        )
    where = _where(claim)
    attempt = claim.get("attempt")
    now = time.time()
    event = {
        "attempt": attempt,
        "time": claim.get("progress_time") or now,
        "host": claim.get("host"),
        "phase": claim.get("phase"),
        "step": claim.get("step"),
        "total": claim.get("total"),
    }
    if interrupted:
        message = (
            f"worker {how} {where}: no record; the trial stays pending and resumes from its checkpoint on the next run"
        )
        if attempt is not None:
            store.log_attempt(tid, {**event, "event": "interrupted", "signal": sig_name})
        _append_log(store, tid, f"trial {tid} attempt {attempt} interrupted: {message}")
        store.release(tid)
        return "interrupted", message
    message = f"worker process {how} {where}"
    error: dict[str, Any] = {
        "message": message,
        "phase": claim.get("phase"),
        "last_step": claim.get("step"),
        "total_steps": claim.get("total"),
        "pid": pid,
        "host": claim.get("host"),
    }
    if sig_name:
        error.update(signal=sig_name, signal_number=-returncode)
    else:
        error["exit_code"] = returncode
    # faulthandler's stack is what tells where it died; its list of loaded extension modules is noise
    stderr_tail = "\n".join(line for line in stderr_tail.splitlines() if not line.startswith("Extension modules:"))
    if stderr_tail.strip():
        error["stderr_tail"] = stderr_tail[-4000:]
    if attempt is not None:
        store.log_attempt(tid, {**event, "time": now, "event": CRASHED, "signal": sig_name})
    try:
        config = store.read_config(tid)
    except (OSError, ValueError):
        config = {}
    record = {
        "schema": 1,
        "status": CRASHED,
        "config": config,
        "metrics": {},
        "curve": {},
        "measurements": {},
        "swap": {},
        "timing": {},
        "error": error,
        "environment": {
            "hostname": claim.get("host"),
            "slurm": claim.get("slurm") or {},
            "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        },
        "trial_id": tid,
        "attempts": attempt,
        "requeues": claim.get("requeues", 0),
        "suite": store.suite_name(),
        "finished": now,
        "dispatch": {"executor": executor, "record_written_by": "parent process"},
    }
    if claim.get("slurm"):
        record["slurm"] = claim["slurm"]
    _finish_record(store, tid, record)
    store.write_record(tid, record)
    _append_log(store, tid, f"trial {tid} attempt {attempt} crashed: {message}")
    store.release(tid)
    return CRASHED, message + " (recorded as crashed; `adaptconv run --retry-failed` runs it again)"


def _append_log(store: ResultStore, tid: str, line: str) -> None:
    with contextlib.suppress(OSError):
        with open(store.log_path(tid), "a", encoding="utf-8") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S") + f" ERROR adaptconv.sweep.worker: {line}\n")


def _finish_record(store: ResultStore, tid: str, record: dict[str, Any]) -> None:
    """Attach the history of every attempt and the total time over all of them."""
    history = store.attempt_history(tid)
    if history:
        record["attempt_history"] = history
        walls = [a["wall_s"] for a in history if a.get("wall_s") is not None]
        record.setdefault("timing", {})["all_attempts_s"] = sum(walls)


def _note_interrupted(store: ResultStore, tid: str, previous: dict[str, Any] | None) -> None:
    """An attempt whose process was killed (no parent saw it, e.g. a SLURM requeue) left its claim:
    log how far it got, once."""
    if not previous or previous.get("attempt") is None:
        return
    n = previous["attempt"]
    if any(a["attempt"] == n and "end" in a for a in store.attempt_history(tid)):
        return
    store.log_attempt(
        tid,
        {
            "attempt": n,
            "event": "interrupted",
            "time": previous.get("progress_time") or previous.get("start"),
            "host": previous.get("host"),
            "phase": previous.get("phase"),
            "step": previous.get("step"),
            "total": previous.get("total"),
        },
    )


def execute_trial(
    store_root: str | os.PathLike, tid: str, *, checkpoint_every_s: float = 120.0, extra: dict[str, Any] | None = None
) -> str:
    """Run trial ``tid`` of the store; return its final state (or "running" if another process has it)."""
    from ..trial import run_trial

    store = ResultStore(store_root)
    if store.read_record(tid) is not None and store.read_record(tid).get("status") == "ok":
        return "done"
    previous = store.read_claim(tid)  # a stale claim of a killed attempt says how far that one got
    slurm = slurm_ids()
    if not store.claim(tid, {**(extra or {}), "slurm": slurm, "requeues": requeue_count()}):
        return "running"
    progress_failed = []

    def progress(phase: str, step: int, total: int) -> None:
        try:
            store.note_progress(tid, phase, step, total)
        except OSError as exc:  # a full or flaky disk must not fail the trial; say it once
            if not progress_failed:
                progress_failed.append(exc)
                log.warning("trial %s: cannot note progress in %s: %s", tid, store.claim_path(tid), exc)

    attempts = None
    try:
        _job_caches()
        config = store.read_config(tid)
        _note_interrupted(store, tid, previous)
        attempts_file = store.trial_dir(tid) / "attempts"
        attempts = int(attempts_file.read_text()) + 1 if attempts_file.exists() else 1
        attempts_file.write_text(str(attempts))
        store.update_claim(tid, attempt=attempts)
        store.log_attempt(
            tid,
            {
                "attempt": attempts,
                "event": "start",
                "time": time.time(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "requeues": requeue_count(),
                **({"slurm_job_id": slurm["job_id"]} if slurm else {}),
            },
        )
        with _trial_logging(store.log_path(tid)):
            log.info("trial %s attempt %d starts (requeues so far: %d)", tid, attempts, requeue_count())
            record = run_trial(
                config,
                checkpoint=str(store.checkpoint_path(tid)),
                checkpoint_every_s=checkpoint_every_s,
                progress=progress,
            )
            record.update(
                trial_id=tid,
                attempts=attempts,
                requeues=requeue_count(),
                suite=store.suite_name(),
                finished=time.time(),
            )
            if slurm:
                record["slurm"] = slurm
            if extra:
                record["dispatch"] = extra
            store.log_attempt(
                tid,
                {
                    "attempt": attempts,
                    "event": "end",
                    "time": record["finished"],
                    "outcome": record["status"],
                    "timing": record.get("timing") or {},
                    "steps": record.get("steps"),
                    "resumed_from_step": record.get("resumed_from_step"),
                },
            )
            _finish_record(store, tid, record)
            store.write_record(tid, record)
            log.info("trial %s ended: %s", tid, record["status"])
        if record["status"] == "ok":
            with contextlib.suppress(FileNotFoundError):
                store.checkpoint_path(tid).unlink()
        return "done" if record["status"] == "ok" else "failed"
    except BaseException as exc:  # interrupted in this process (Ctrl-C, SystemExit): note how far it got
        if attempts is not None and not isinstance(exc, Exception):
            claim = store.read_claim(tid) or {}
            with contextlib.suppress(OSError):
                store.log_attempt(
                    tid,
                    {
                        "attempt": attempts,
                        "event": "interrupted",
                        "time": time.time(),
                        "phase": claim.get("phase"),
                        "step": claim.get("step"),
                        "total": claim.get("total"),
                        "reason": type(exc).__name__,
                    },
                )
        raise
    finally:
        store.release(tid)


def serve(store_root: str, checkpoint_every_s: float, extra: dict[str, Any] | None = None) -> int:
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
            state = execute_trial(store_root, tid, checkpoint_every_s=checkpoint_every_s, extra=extra)
        except Exception as exc:  # the store itself failed (disk full, ...): report it, keep serving
            log.error("trial %s: %s: %s", tid, type(exc).__name__, exc)
            state = "error"
        answers.write(f"{tid} {state}\n")
        answers.flush()
    return 0


def _ignore_usr2() -> None:  # runs in the child between fork and exec; an ignored signal stays ignored
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def run_in_child(
    store_root: str | os.PathLike, tid: str, *, checkpoint_every_s: float = 120.0, executor: str = "slurm"
) -> str:
    """Run trial ``tid`` in a child worker process and watch it: the SLURM job's side of what the local
    executor does. If the child dies of its own fault (a native kernel's SIGSEGV...), this process —
    still alive — writes the ``crashed`` record. Returns the trial's state; raises if the child was
    stopped from outside (the trial resumes from its checkpoint when its job runs again).

    The child ignores SIGUSR2: that is submitit's signal to this process (checkpoint and requeue); when
    submitit's handler then ends this process, the child is stopped too and resumes on the rerun.
    """
    import subprocess

    store = ResultStore(store_root)
    args = [
        sys.executable,
        "-m",
        "adaptconv.sweep.worker",
        "--executor",
        executor,
        str(store_root),
        tid,
        str(checkpoint_every_s),
    ]
    tail = ""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err:
        proc = subprocess.Popen(args, stderr=err, preexec_fn=_ignore_usr2)
        try:
            returncode = proc.wait()
        except BaseException:  # submitit requeues the job and exits, or this process is interrupted
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        finally:
            err.seek(0)
            for chunk in iter(lambda: err.read(1 << 16), ""):  # the child's stderr into this job's log
                sys.stderr.write(chunk)
                tail = (tail + chunk)[-16000:]
            sys.stderr.flush()
    if returncode == 0 or (returncode == 1 and store.read_record(tid) is not None):
        return store.state(tid)
    state, message = handle_dead_worker(store, tid, proc.pid, returncode, executor, tail)
    print(f"adaptconv: trial {tid}: {message}", file=sys.stderr, flush=True)
    if state == "interrupted":
        raise RuntimeError(f"trial {tid}: {message}")
    return state


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    faulthandler.enable()  # a fatal signal prints the Python stack to stderr, which the parent keeps
    extra = None
    if len(argv) > 1 and argv[0] == "--executor":
        extra = {"executor": argv[1]}
        argv = argv[2:]
    try:
        if argv and argv[0] == "--serve":
            return serve(argv[1], float(argv[2]) if len(argv) > 2 else 120.0, extra)
        if len(argv) < 2:
            print(
                "usage: python -m adaptconv.sweep.worker [--executor NAME] STORE_DIR TRIAL_ID [CHECKPOINT_EVERY_S]",
                file=sys.stderr,
            )
            return 2
        # a single trial (a SLURM job's child): its progress lines go to stderr too, i.e. the job's output
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s trial " + argv[1] + ": %(message)s", "%H:%M:%S"))
        logging.getLogger("adaptconv.progress").addHandler(handler)
        every = float(argv[2]) if len(argv) > 2 else 120.0
        state = execute_trial(argv[0], argv[1], checkpoint_every_s=every, extra=extra)
        return 0 if state in ("done", "running") else 1
    except KeyboardInterrupt:
        # Ctrl-C: the claim is released and the checkpoint stays. End by SIGINT, without a traceback,
        # so a parent sees an interruption (resumable), not an exit of the trial's own fault
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130


if __name__ == "__main__":
    sys.exit(main())
