"""The trial: config validation, one trial per task end to end, failure statuses, determinism, CLI."""

import json

import pytest
import torch

from adaptconv.cli import main, parse_assignments
from adaptconv.schema import ConfigError
from adaptconv.trial import parse_trial_config, run_trial

NO_MEASURE = {"latency": False, "memory": False, "flops": False}
FAST_MEASURE = {"batch_sizes": [1, 2], "warmup": 1, "repeats": 3, "min_time_s": 0.0}

TINY = {
    "classification": dict(dataset="digits", backbone="simplecnn-s", steps=6, batch_size=32),
    "segmentation": dict(
        backbone="simplecnn-s",
        steps=4,
        batch_size=8,
        task_options=dict(n_train=32, n_test=8, size=32, decoder_width=16),
    ),
    "upsampling": dict(steps=4, batch_size=4, task_options=dict(patch=32, crops=16, width=8, layers=2)),
    "denoising": dict(steps=4, batch_size=4, task_options=dict(n_train=16, size=32, width=8, depth=3, test_crop=48)),
}


def tiny(task, **over):
    cfg = {"task": task, "threads": 1, **TINY[task], "measure": dict(NO_MEASURE)}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("task", list(TINY))
def test_each_task_runs_end_to_end_with_measurements(task):
    op = {"classification": "dynconv", "segmentation": "paka", "upsampling": "pac", "denoising": "dfn"}[task]
    rec = run_trial(tiny(task, op=op, measure=FAST_MEASURE))
    assert rec["status"] == "ok", rec.get("error")
    json.dumps(rec, allow_nan=False)  # a record is strict JSON
    from adaptconv.tasks import get_task

    assert set(get_task(task).metrics) <= set(rec["metrics"])
    assert rec["swap"]["layers"] > 0 and rec["swap"]["params_after"] > 0
    assert rec["curve"]["loss"] and rec["curve"]["eval"][-1]["step"] == rec["steps"]
    m = rec["measurements"]
    assert m["params"]["total"] > 0 and m["flops"]["flops"] > 0 and m["flops"]["uncounted_ops"] == {}
    phases = {(r["phase"], r["batch_size"]) for r in m["runs"]}
    assert phases == {("inference", 1), ("inference", 2), ("train_step", 1), ("train_step", 2)}
    for r in m["runs"]:
        assert r["latency"]["median_s"] > 0 and r["memory"]["peak_bytes"] > 0
    env = rec["environment"]
    assert env["versions"]["torch"] == torch.__version__ and env["cpu"]["torch_threads"] == 1 and env["hostname"]
    assert rec["config"]["op"] == op and rec["timing"]["total_s"] > 0


def test_same_config_twice_gives_the_same_metrics():
    cfg = tiny("upsampling", op="paka")
    a, b = run_trial(cfg), run_trial(cfg)
    assert a["status"] == b["status"] == "ok"
    assert a["metrics"] == b["metrics"] and a["curve"]["loss"] == b["curve"]["loss"]
    c = run_trial(tiny("upsampling", op="paka", seed=1))
    assert c["metrics"] != a["metrics"]


def test_function_preserving_swap_trains_from_the_same_start():
    """conv and pac (γ = 0 at the swap) start from the same function: the first loss is the same."""
    a = run_trial(tiny("upsampling", op="conv", steps=1, guide="self"))
    b = run_trial(tiny("upsampling", op="pac", steps=1, guide="self"))
    assert a["curve"]["loss"][0] == pytest.approx(b["curve"]["loss"][0], rel=1e-5)


def test_diverged_trial_reports_the_step():
    rec = run_trial(tiny("classification", optimizer={"name": "sgd", "lr": 1e12}, steps=30))
    assert rec["status"] == "diverged" and rec["error"]["step"] >= 1
    json.dumps(rec, allow_nan=False)


def test_failing_trial_returns_an_error_record():
    rec = run_trial(tiny("classification", op="pac", swap={"pattern": "nothing.*"}))
    assert rec["status"] == "error"
    assert "matches no nn.Conv2d" in rec["error"]["message"] and "Traceback" in rec["error"]["traceback"]
    assert rec["environment"]["versions"]["torch"]


def test_out_of_memory_is_reported_with_the_batch_size(monkeypatch):
    from adaptconv.tasks.classification import Classification

    def boom(self, model, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Classification, "loss", boom)
    rec = run_trial(tiny("classification"))
    assert rec["status"] == "oom" and rec["error"]["batch_size"] == 32


def test_dynconv_temperature_anneals_during_training_through_the_operator_hook(monkeypatch):
    from adaptconv.ops.dynconv import DynamicConv2d

    seen = []
    real = DynamicConv2d.on_train_step

    def spy(self, step, total):
        real(self, step, total)
        seen.append((step, total, self.temperature))

    monkeypatch.setattr(DynamicConv2d, "on_train_step", spy)
    run_trial(tiny("classification", op="dynconv", steps=20, op_options={"anneal": 0.5}))
    layers = len([s for s in seen if s[0] == 0])
    taus = [t for step, total, t in seen[::layers]]
    assert [s[0] for s in seen[::layers]] == list(range(20)) and {s[1] for s in seen} == {20}
    # 30 → 1 over the first 10 of 20 steps, then 1
    assert taus[0] == 30.0 and taus[5] == pytest.approx(30 - 29 * 0.5) and taus[10:] == [1.0] * 10


def test_the_retired_dynconv_anneal_key_says_where_it_went():
    with pytest.raises(
        ConfigError, match=r"dynconv_anneal: moved to op_options\.anneal.*write op_options\.anneal: 0\.3"
    ):
        parse_trial_config({"task": "classification", "op": "dynconv", "dynconv_anneal": 0.3})
    # at its old default it is dropped (stored records carry it); reading old results moves it
    assert parse_trial_config({"task": "classification", "op": "dynconv", "dynconv_anneal": 0.1}).op_options == {}
    old = parse_trial_config({"task": "classification", "op": "dynconv", "dynconv_anneal": 0.3}, registry=False)
    assert old.op_options == {"anneal": 0.3}


@pytest.mark.parametrize(
    "mapping,match",
    [
        ({"task": "upsampling", "op": "pak"}, r"op: unknown operator 'pak' \(did you mean 'paka'\?\)"),
        ({"task": "upsampling", "optimiser": {}}, r"optimiser: unknown key \(did you mean 'optimizer'\?\)"),
        ({"task": "upsampling", "optimizer": {"lr": "fast"}}, r"optimizer\.lr: expected float, got 'fast'"),
        ({"task": "segmentaton"}, r"task: 'segmentaton' is not one of .*did you mean 'segmentation'"),
        ({"task": "upsampling", "dataset": "digits"}, r"dataset: 'digits' does not serve task 'upsampling'"),
        ({"task": "classification", "backbone": "resnet81"}, r"backbone: 'resnet81' is neither built in"),
        ({"task": "upsampling", "steps": 5, "epochs": 1}, r"give one training budget"),
        (
            {"task": "upsampling", "task_options": {"scal": 4}},
            r"task_options\.scal: unknown key \(did you mean 'scale'\?\)",
        ),
        ({"task": "upsampling", "task_options": {"scale": 4, "patch": 30}}, r"patch: must be a multiple of scale=4"),
        ({"task": "upsampling", "swap": {"stage": [1]}}, r"swap\.stage: unknown key \(did you mean 'stages'\?\)"),
        ({"task": "denoising", "schedule": {"name": "linear"}}, r"schedule\.name: 'linear' is not one of"),
    ],
)
def test_invalid_configs_name_the_key(mapping, match):
    with pytest.raises(ConfigError, match=match):
        parse_trial_config(mapping)


def test_defaults_are_filled_per_task():
    cfg = parse_trial_config({"task": "upsampling"})
    assert cfg.dataset == "middlebury" and cfg.guide == "image" and cfg.swap == {"pattern": "target.layers.*"}
    assert cfg.task_options["scale"] == 8 and cfg.steps == 300


def test_cli_assignments_and_errors(capsys):
    cfg = parse_assignments(["task=upsampling", "optimizer.lr=0.01", "measure.batch_sizes=[1,4]", "op=pac"])
    assert cfg == {"task": "upsampling", "optimizer": {"lr": 0.01}, "measure": {"batch_sizes": [1, 4]}, "op": "pac"}
    assert main(["trial", "task=upsampling", "op=pacc"]) == 2
    assert "did you mean 'pac'" in capsys.readouterr().err
    assert main(["trial", "task"]) == 2
    assert "expected key=value" in capsys.readouterr().err


def test_cli_runs_a_trial_and_writes_the_record(tmp_path, capsys):
    out = tmp_path / "rec.json"
    args = [
        "trial",
        "task=classification",
        "dataset=digits",
        "backbone=simplecnn-s",
        "steps=3",
        "threads=1",
        "measure.latency=false",
        "measure.memory=false",
        "measure.flops=false",
        f"--out={out}",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "ok" and "top1" in summary["metrics"]
    assert json.loads(out.read_text())["config"]["steps"] == 3


def test_pretrained_weights_are_loaded_before_the_swap(tmp_path):
    from adaptconv.models.backbones import build_backbone

    torch.manual_seed(5)
    backbone, _ = build_backbone("simplecnn-s", 1, 7)  # another head size: the head is skipped
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": backbone.state_dict()}, path)
    rec = run_trial(tiny("classification", op="paka", pretrained=str(path), steps=0))
    assert rec["status"] == "ok", rec.get("error")
    info = rec["swap"]["pretrained"]
    assert info["loaded"] == len(backbone.state_dict()) - 2 and info["skipped"] == 2  # head weight and bias
    rec = run_trial(tiny("classification", pretrained=str(tmp_path / "missing.pt")))
    assert rec["status"] == "error" and "no file at" in rec["error"]["message"]


def test_upsampling_trained_on_synthetic_is_also_tested_on_middlebury():
    rec = run_trial(
        tiny(
            "upsampling",
            dataset="synthetic",
            task_options=dict(patch=32, size=32, n_train=8, n_test=2, width=8, layers=2, extra_test=["middlebury"]),
        )
    )
    assert rec["status"] == "ok", rec.get("error")
    assert {"rmse", "middlebury/rmse"} <= set(rec["metrics"])
    bilinear = rec["baselines"]["bilinear"]
    assert {"rmse", "middlebury/rmse"} <= set(bilinear)
    # Middlebury disparities are tens of pixels: its errors are in that unit, not the synthetic one
    assert bilinear["middlebury/rmse"] > 10 * bilinear["rmse"]
    assert rec["metrics"]["middlebury/rmse"] > 10 * rec["metrics"]["rmse"]


def test_a_trial_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    from adaptconv.tasks.upsampling import Upsampling

    cfg = tiny("upsampling", op="pac", steps=8, eval_points=2)
    whole = run_trial(cfg)
    real_loss = Upsampling.loss
    calls = {"n": 0}

    def dies_at_step_6(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")  # what a kill looks like to the loop: it just stops
        return real_loss(self, model, batch)

    ckpt = tmp_path / "ckpt.pt"
    monkeypatch.setattr(Upsampling, "loss", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, checkpoint=str(ckpt), checkpoint_every_s=0)
    assert ckpt.exists()
    monkeypatch.setattr(Upsampling, "loss", real_loss)
    resumed = run_trial(cfg, checkpoint=str(ckpt), checkpoint_every_s=0)
    assert resumed["resumed_from_step"] == 5
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["curve"]["loss"] == whole["curve"]["loss"]
