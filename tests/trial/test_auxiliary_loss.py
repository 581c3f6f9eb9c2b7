"""The training loop's generic auxiliary-loss hook, exercised with sparse_gated's sparsity loss."""

import json

import torch
from torch import nn

from adaptconv.trial import run_trial
from adaptconv.trial.runner import _auxiliary_modules

NO_MEASURE = {"latency": False, "memory": False, "flops": False}


def tiny_classification(**over):
    cfg = {
        "task": "classification",
        "dataset": "digits",
        "backbone": "simplecnn-s",
        "steps": 8,
        "batch_size": 32,
        "threads": 1,
        "eval_points": 2,
        "measure": dict(NO_MEASURE),
    }
    cfg.update(over)
    return cfg


def test_modules_with_an_auxiliary_loss_are_found():
    class Aux(nn.Module):
        def auxiliary_loss(self):
            return torch.tensor(1.0)

    model = nn.Sequential(nn.Conv2d(1, 1, 1), Aux(), nn.Sequential(Aux()))
    assert [type(m).__name__ for m in _auxiliary_modules(model)] == ["Aux", "Aux"]


def test_sparse_gated_trial_trains_with_the_sparsity_loss_and_records_the_active_fraction():
    rec = run_trial(
        tiny_classification(
            op="sparse_gated", op_options={"budget": 0.25, "sparsity_weight": 2.0}, optimizer={"lr": 0.05}
        )
    )
    assert rec["status"] == "ok", rec.get("error")
    json.dumps(rec, allow_nan=False)
    curve = rec["curve"]
    assert len(curve["aux_loss"]) == len(curve["loss"]) == len(curve["active_fraction"])
    assert curve["aux_loss"][0] > 0  # from_conv starts all active, far from the budget
    assert curve["active_fraction"][0] > 0.85
    assert all("active_fraction" in e for e in curve["eval"][:-1])
    frac = rec["active_fraction"]
    assert 0 <= frac["eval"] <= 1 and frac["train"] == curve["active_fraction"][-1]
    # the sparsity loss is what moves the fraction: without it (weight 0) the masks stay (nearly) all on
    off = run_trial(
        tiny_classification(
            op="sparse_gated", op_options={"budget": 0.25, "sparsity_weight": 0.0}, optimizer={"lr": 0.05}
        )
    )
    assert off["status"] == "ok"
    assert off["curve"]["aux_loss"][-1] == 0.0
    assert frac["eval"] < off["active_fraction"]["eval"] - 0.2
    assert curve["active_fraction"][-1] < off["curve"]["active_fraction"][-1] - 0.2


def test_operators_without_auxiliary_loss_keep_their_record():
    rec = run_trial(tiny_classification(op="conv", steps=2))
    assert rec["status"] == "ok"
    assert "aux_loss" not in rec["curve"] and "active_fraction" not in rec
