"""Progress where no bar can be seen (output to a file), and Ctrl-C during ``run`` (issue 15)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptconv.results.store import ResultStore
from adaptconv.sweep.suite import load_suite

ADAPTCONV = str(Path(sys.executable).with_name("adaptconv"))
QUIET = "measure: {latency: false, memory: false, flops: false}"
SUITE = f"""\
name: progress
description: two tiny digits trials
base: {{task: classification, dataset: digits, steps: 20, batch_size: 8, threads: 1, {QUIET}}}
product: {{op: [conv, condconv]}}
seeds: [0]
"""


def _env(tmp_path):
    return {**os.environ, "ADAPTCONV_CACHE": str(tmp_path / "cache")}


def test_redirected_run_prints_a_line_per_trial_and_the_trial_logs_steps(tmp_path):
    (tmp_path / "progress.yaml").write_text(SUITE)
    out = subprocess.run(
        [ADAPTCONV, "run", "progress.yaml", "--results", "res"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 2, out.stdout
    assert re.match(
        r"\[1/2\] done +[0-9a-f]{16}  conv classification/digits seed 0  top1=[0-9.]+  [0-9.]+ s  ETA ", lines[0]
    ), lines[0]
    assert lines[1].startswith("[2/2] done") and " condconv " in lines[1] and lines[1].endswith("last")
    suite = load_suite(tmp_path / "progress.yaml")
    store = ResultStore(tmp_path / "res")
    log = store.log_path(suite.trials[0].id).read_text()
    steps = re.findall(r"step (\d+)/20  loss [0-9.]+", log)
    assert steps == [str(s) for s in range(2, 21, 2)], log


def test_trial_command_prints_step_lines_when_not_on_a_terminal(tmp_path):
    out = subprocess.run(
        [
            ADAPTCONV,
            "trial",
            "task=classification",
            "dataset=digits",
            "op=conv",
            "steps=10",
            "batch_size=8",
            "threads=1",
            "measure.latency=false",
            "measure.memory=false",
            "measure.flops=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "trial: evaluated in" in out.stderr and "trial: measured in" in out.stderr
    steps = re.findall(r"trial: step (\d+)/10  loss [0-9.]+  [0-9.]+ s  ETA [0-9.]+ s", out.stderr)
    assert steps == [str(s) for s in range(1, 11)], out.stderr
    assert '"status": "ok"' in out.stdout


@pytest.mark.parametrize("whole_group", [True, False], ids=["ctrl-c", "sigint-to-run-only"])
def test_ctrl_c_stops_cleanly_keeps_the_checkpoint_and_releases_the_claim(tmp_path, whole_group):
    long = SUITE.replace("steps: 20", "steps: 1000000").replace("[conv, condconv]", "[conv]")
    (tmp_path / "progress.yaml").write_text(long)
    suite = load_suite(tmp_path / "progress.yaml")
    tid = suite.trials[0].id
    store = ResultStore(tmp_path / "res")
    proc = subprocess.Popen(
        [ADAPTCONV, "run", "progress.yaml", "--results", "res", "--checkpoint-every", "0.2"],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not store.checkpoint_path(tid).exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(0.5)
        # Ctrl-C signals the terminal's whole foreground group; a plain `kill -INT` only the run
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout and "KeyboardInterrupt" not in stderr
    assert "interrupted" in stderr and "`adaptconv run progress.yaml --results res` again" in stderr
    assert store.checkpoint_path(tid).exists()
    assert not store.claim_path(tid).exists() and store.read_record(tid) is None
    assert store.state(tid) == "pending"


def test_a_long_trial_says_how_far_it_got_now_and_then(tmp_path, capsys):
    from adaptconv.sweep.executors import make_plan, run_local

    (tmp_path / "progress.yaml").write_text(
        SUITE.replace("steps: 20", "steps: 400").replace("[conv, condconv]", "[conv]")
    )
    suite = load_suite(tmp_path / "progress.yaml")
    assert run_local(make_plan(suite, ResultStore(tmp_path / "res")), max_parallel=1, heartbeat_s=1.0) == {"done": 1}
    out = capsys.readouterr().out
    beats = re.findall(
        r"^ +running  [0-9a-f]{16}  (step \d+/400|setup|train|eval|measure|starting)  [0-9.]+ s$", out, flags=re.M
    )
    assert any(b.startswith("step ") for b in beats), out
    assert re.search(r"^\[1/1\] done", out, flags=re.M)
