"""Environment records: keys present, JSON-serialisable, SLURM ids, names of precision and memory format,
backend flags, and no crash without git or nvidia-smi."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import subprocess

import pytest
import torch

from adaptconv.measure import backend_flags, environment, git_state

# the package exports the function environment(), which shadows the module of the same name
env_mod = importlib.import_module("adaptconv.measure.environment")


def test_keys_present_and_json_serialisable():
    env = environment()
    json.loads(json.dumps(env))
    assert {
        "timestamp_utc",
        "git",
        "versions",
        "cuda",
        "cpu",
        "hostname",
        "slurm",
        "precision",
        "memory_format",
        "backends",
    } <= set(env)
    assert {"python", "torch", "torchvision", "timm", "numpy", "adaptconv"} <= set(env["versions"])
    assert env["versions"]["torch"] == torch.__version__
    assert {"torch_cuda_version", "cudnn_version", "devices", "driver_version", "available"} <= set(env["cuda"])
    assert {"model", "count", "torch_threads"} <= set(env["cpu"])
    assert env["cpu"]["torch_threads"] == torch.get_num_threads()
    assert {"cudnn_benchmark", "tf32_matmul", "tf32_cudnn", "float32_matmul_precision"} <= set(env["backends"])
    assert {"commit", "dirty"} <= set(env["git"])
    stamp = dt.datetime.fromisoformat(env["timestamp_utc"])
    assert stamp.utcoffset() == dt.timedelta(0)


def test_slurm_ids_are_picked_up(monkeypatch):
    for var in env_mod.SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    assert environment()["slurm"] == {}
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "hpc")
    assert environment()["slurm"] == {
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_JOB_ID": "4200",
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_JOB_PARTITION": "gpu",
        "SLURM_CLUSTER_NAME": "hpc",
    }


def test_precision_memory_format_and_device_are_recorded_as_names():
    env = environment(precision=torch.bfloat16, memory_format=torch.channels_last, device=torch.device("cpu"))
    assert (env["precision"], env["memory_format"], env["device"]) == ("bfloat16", "channels_last", "cpu")
    assert environment(precision="fp16-autocast")["precision"] == "fp16-autocast"
    assert environment()["precision"] is None


def test_backend_flags_follow_the_global_settings(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    assert backend_flags()["cudnn_benchmark"] is True
    assert environment()["backends"]["cudnn_benchmark"] is True
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert backend_flags()["cudnn_benchmark"] is False


def test_git_state_of_this_checkout_and_of_a_non_repository(tmp_path):
    state = git_state()
    if state["commit"] is not None:  # running from a git checkout of adaptconv
        assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)
    (tmp_path / "__init__.py").write_text("")
    assert git_state(tmp_path)["commit"] is None


def test_never_crashes_without_git_or_nvidia_smi(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError(args[0][0] if args else "?")

    monkeypatch.setattr(subprocess, "run", missing)
    env = environment()
    assert env["git"]["commit"] is None and env["cuda"]["nvidia_smi"] is None
    json.dumps(env)

    def hangs(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], 10)

    monkeypatch.setattr(subprocess, "run", hangs)
    assert environment()["git"]["commit"] is None


def test_nvidia_smi_output_is_parsed(monkeypatch):
    real_run = subprocess.run

    def fake_run(cmd, *args, **kwargs):
        if cmd[0] == "nvidia-smi":
            return subprocess.CompletedProcess(cmd, 0, stdout="0, NVIDIA H100 80GB HBM3, 550.54.15, 81559, GPU-abc\n")
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", fake_run)
    cuda = environment()["cuda"]
    assert cuda["driver_version"] == "550.54.15"
    assert cuda["nvidia_smi"][0]["name"] == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize(
    "value,name", [(torch.float16, "float16"), (torch.contiguous_format, "contiguous_format"), ("x", "x"), (None, None)]
)
def test_names(value, name):
    assert env_mod._name(value) == name


def test_environment_says_whether_pac_runs_compiled_cpu_kernels():
    """A CPU timing of PAC depends on it; collect keeps the first word for the report's table."""
    from adaptconv.ops import cpu_pac
    from adaptconv.results.collect import _environment

    env = environment()
    status = env["backends"]["pac_cpu_kernels"]
    assert status == cpu_pac.status()
    assert status.split(" (")[0] in ("on", "unavailable")
    assert _environment(env)["env.pac_cpu_kernels"] == status.split(" (")[0]
    with cpu_pac.disabled():
        off = environment()
    assert _environment(off)["env.pac_cpu_kernels"] == "off"
    assert _environment({})["env.pac_cpu_kernels"] is None  # records from before the key
