"""Tests against a real SLURM cluster: the single-node one that ``slurm/local/start.sh`` starts.

The ``slurm_cluster`` fixture finds it through its state directory (``$ADAPTCONV_SLURM_DIR``,
default ``/tmp/adaptconv-slurm``), checks that its slurmctld runs and that ``sinfo`` answers
within a few seconds with the node idle or mixed, points ``SLURM_CONF`` at its config for the
session (submitit runs sbatch/sacct/scancel through ``os.environ``) and yields a
:class:`SlurmCluster`. Without such a cluster every test that uses the fixture is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SKIP_REASON = "no local SLURM: start it with slurm/local/start.sh (CI does)"
DEFAULT_DIR = "/tmp/adaptconv-slurm"  # keep in step with slurm/local/start.sh
READY_STATES = ("idle", "mixed")
SINFO_TIMEOUT_S = 5.0  # a dead slurmctld makes sinfo hang ~10 s before it gives up
READY_WAIT_S = 10.0  # a node still "completing" the jobs of an earlier run gets this long


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slurm: runs jobs on the local SLURM cluster of slurm/local/start.sh (skipped without it)",
    )


@dataclass(frozen=True)
class SlurmCluster:
    """The running local cluster, as the tests see it."""

    state_dir: Path
    conf: Path  # SLURM_CONF
    partition: str  # the default partition
    node: str
    env: dict[str, str]  # os.environ plus SLURM_CONF: for subprocesses

    def run(self, *cmd: str, timeout: float = 10.0) -> str:
        """Run a SLURM client command (``squeue``, ``sacct``, ``scontrol``...); return its stdout."""
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def config(self) -> dict[str, str]:
        """``scontrol show config`` as a dict (values as printed, e.g. ``'5 sec'``)."""
        out = {}
        for line in self.run("scontrol", "show", "config").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip()
        return out


def _pid_runs(pid_file: Path, comm: str) -> bool:
    try:
        pid = int(pid_file.read_text().strip())
        return Path(f"/proc/{pid}/comm").read_text().strip() == comm
    except (OSError, ValueError):
        return False


def _probe() -> SlurmCluster | str:
    """The cluster, or why there is none usable."""
    state_dir = Path(os.environ.get("ADAPTCONV_SLURM_DIR", DEFAULT_DIR))
    conf = state_dir / "etc" / "slurm.conf"
    if not conf.is_file():
        return f"no {conf}"
    if not _pid_runs(state_dir / "run" / "slurmctld.pid", "slurmctld"):
        return f"slurmctld of {state_dir} is not running"
    for tool in ("sinfo", "sbatch", "sacct", "scontrol"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        try:
            done = subprocess.run(
                ["sinfo", "--noheader", "--format=%P|%T|%N"],
                env=env,
                capture_output=True,
                text=True,
                timeout=SINFO_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"sinfo did not answer within {SINFO_TIMEOUT_S:.0f} s"
        if done.returncode != 0:
            return f"sinfo failed: {done.stderr.strip()}"
        rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 2]
        default = [r for r in rows if r[0].endswith("*")] or rows
        if not default:
            return f"sinfo shows no partition: {done.stdout.strip()!r}"
        partition, state, node = default[0]
        if state in READY_STATES:  # a suffix ("idle*": not responding, "idle~"...) is not ready
            return SlurmCluster(state_dir, conf, partition.rstrip("*"), node, env)
        if time.monotonic() > deadline:
            return f"node {node} is {state!r}, not idle/mixed"
        time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local SLURM cluster (skips the test when there is none); sets SLURM_CONF meanwhile."""
    found = _probe()
    if isinstance(found, str):
        pytest.skip(f"{SKIP_REASON} [{found}]")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(found.conf))
        yield found
