"""Task opbench: the operator layer alone, no data, steps 0, measured at several resolutions."""

import json

import pytest
import torch

from adaptconv.schema import ConfigError
from adaptconv.trial import parse_trial_config, run_trial
from adaptconv.trial.ids import trial_id

FAST = {"batch_sizes": [1, 2], "resolutions": [8, 12], "warmup": 1, "repeats": 2, "min_time_s": 0.0}
# measure_peak_memory collects garbage per run, slow in a big test process: only where asserted
NO_MEMORY = {**FAST, "memory": False}


def bench(op: str, **over) -> dict:
    cfg = {
        "task": "opbench",
        "op": op,
        "threads": 1,
        "task_options": {"channels_in": 4, "channels_out": 6},
        "measure": dict(NO_MEMORY),
    }
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("op,guide", [("conv", "none"), ("pac", "image")])
def test_opbench_trial_end_to_end(op, guide):
    cfg = bench(
        op,
        task_options={"channels_in": 4, "channels_out": 6, "guide": guide, "depth": 2},
        measure={**FAST, "batch_sizes": [1]},
    )
    rec = run_trial(cfg)
    assert rec["status"] == "ok", rec.get("error")
    json.dumps(rec, allow_nan=False)
    assert rec["steps"] == 0 and rec["metrics"] == {}
    assert rec["swap"]["layers"] == 2 and rec["swap"]["guide"] == guide
    m = rec["measurements"]
    assert m["params"]["total"] == rec["swap"]["params_after"] > 0
    # FLOPs at the first resolution: conv 2 layers, 2·k²·Cin·Cout·H·W each (+ bias adds)
    if op == "conv":
        macs = 9 * 4 * 6 * 8 * 8 + 9 * 6 * 6 * 8 * 8
        assert 2 * macs <= m["flops"]["flops"] <= 2 * macs + 2 * 6 * 8 * 8
    runs = m["runs"]
    assert [(r["resolution"], r["batch_size"], r["phase"]) for r in runs] == [
        (res, 1, phase) for res in (8, 12) for phase in ("inference", "train_step")
    ]
    for r in runs:
        assert "status" not in r, r
        assert r["input_shapes"][0] == [r["batch_size"], 4, r["resolution"], r["resolution"]]
        assert len(r["input_shapes"]) == (2 if guide == "image" else 1)
        assert r["latency"]["median_s"] > 0 and r["memory"]["peak_bytes"] > 0
    # memory grows with the input
    peak = {(r["resolution"], r["batch_size"], r["phase"]): r["memory"]["peak_bytes"] for r in runs}
    assert peak[(12, 1, "train_step")] > peak[(8, 1, "train_step")]


def test_out_of_memory_at_a_large_resolution_is_recorded_in_that_run(monkeypatch):
    from adaptconv.tasks.opbench import OpBench

    real = OpBench.example_inputs

    def inputs(self, batch_size, resolution=None):
        if resolution >= 12 and batch_size == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, batch_size, resolution)

    monkeypatch.setattr(OpBench, "example_inputs", inputs)
    rec = run_trial(bench("pac", measure={**NO_MEMORY, "latency": False, "flops": False}))
    assert rec["status"] == "ok"
    status = {(r["resolution"], r["batch_size"], r["phase"]): r.get("status") for r in rec["measurements"]["runs"]}
    assert status[(12, 2, "inference")] == status[(12, 2, "train_step")] == "oom"
    assert {s for k, s in status.items() if k[:2] != (12, 2)} == {None}
    oom = next(r for r in rec["measurements"]["runs"] if r.get("status") == "oom")
    assert "out of memory" in oom["error"] and oom["resolution"] == 12


def test_resolution_and_resolutions_and_trial_ids():
    # the ids of one resolution written either way are the same, and fixed: a change in how configs are
    # normalised shows here. (They changed once on purpose: issue 13 redesigned the upsampling network
    # and its defaults, so records of the old network no longer match — they measure another network.)
    old = {"task": "upsampling", "op": "pac", "measure": {"resolution": 96, "batch_sizes": [1, 4]}}
    assert trial_id(parse_trial_config(old).normalised()) == "d9117bc181d9c09e"
    assert trial_id(parse_trial_config({"task": "upsampling", "op": "pac"}).normalised()) == "a92fc10a95d77864"
    same = {"task": "upsampling", "op": "pac", "measure": {"resolutions": [96], "batch_sizes": [1, 4]}}
    assert trial_id(parse_trial_config(same).normalised()) == "d9117bc181d9c09e"
    two = parse_trial_config({"task": "upsampling", "measure": {"resolutions": [64, 96]}})
    assert two.measure.sides() == [64, 96] and two.measure.resolution is None
    assert parse_trial_config({"task": "upsampling"}).measure.sides() == [None]
    with pytest.raises(ConfigError, match="give one of them"):
        parse_trial_config({"task": "upsampling", "measure": {"resolution": 96, "resolutions": [96]}})
    with pytest.raises(ConfigError, match="repeats a value"):
        parse_trial_config({"task": "upsampling", "measure": {"resolutions": [64, 64]}})
    with pytest.raises(ConfigError, match="non-empty"):
        parse_trial_config({"task": "upsampling", "measure": {"resolutions": []}})


def test_multi_resolution_measurement_of_a_trained_task():
    rec = run_trial(
        {
            "task": "denoising",
            "threads": 1,
            "steps": 1,
            "batch_size": 2,
            "task_options": {"n_train": 4, "size": 16, "width": 4, "depth": 3, "test_crop": 16},
            "measure": {"batch_sizes": [1], "resolutions": [16, 24], "latency": False, "memory": False, "flops": False},
        }
    )
    assert rec["status"] == "ok", rec.get("error")
    assert [(r["resolution"], r["input_shapes"][0][-1]) for r in rec["measurements"]["runs"]] == [
        (16, 16),
        (16, 16),
        (24, 24),
        (24, 24),
    ]


def test_task_default_resolution_is_recorded_as_an_int():
    rec = run_trial(
        bench(
            "conv",
            measure={"batch_sizes": [1], "latency": False, "memory": False, "flops": False},
            task_options={"channels_in": 2, "size": 10},
        )
    )
    assert [r["resolution"] for r in rec["measurements"]["runs"]] == [10, 10]


@pytest.mark.parametrize(
    "over,match",
    [
        ({"steps": 5}, r"opbench trains nothing"),
        ({"swap": {"pattern": "x"}}, r"nothing to swap"),
        ({"guide": "image"}, r"task_options\.guide"),
        ({"task_options": {"channels_in": 6, "groups": 4}}, r"divisible by groups=4"),
        ({"task_options": {"guide": "rgb"}}, r"guide: 'none' or 'image'"),
    ],
)
def test_invalid_opbench_configs(over, match):
    with pytest.raises(ConfigError, match=match):
        parse_trial_config(bench("pac", **over))


def test_conv_ignores_the_guide_so_both_are_one_trial():
    a = parse_trial_config(bench("conv", task_options={"channels_in": 4, "guide": "image"})).normalised()
    b = parse_trial_config(bench("conv", task_options={"channels_in": 4, "channels_out": 4})).normalised()
    assert trial_id(a) == trial_id(b)
    c = parse_trial_config(bench("pac", task_options={"channels_in": 4, "guide": "image"})).normalised()
    d = parse_trial_config(bench("pac", task_options={"channels_in": 4})).normalised()
    assert trial_id(c) != trial_id(d)
