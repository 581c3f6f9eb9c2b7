"""Digits classification learns: the conv network beats its trivial baselines by a wide margin.

A regression test of the whole training path (data, network, BatchNorm statistics, optimiser,
schedule, evaluation) at a budget of a few seconds. It fails when learning breaks: with a learning
rate of ~0 the network scores the majority baseline's ~10% (checked by hand when written).
"""

import math

import pytest
import torch
from torch import nn

from adaptconv.models.norm import warm_start_batchnorm
from adaptconv.tasks import get_task
from adaptconv.trial import parse_trial_config, run_trial

NO_MEASURE = {"latency": False, "memory": False, "flops": False}


def digits_trial(**over) -> dict:
    cfg = {
        "task": "classification",
        "dataset": "digits",
        "backbone": "simplecnn-s",
        "op": "conv",
        "seed": 0,
        "steps": 30,
        "batch_size": 32,
        "threads": 1,
        "eval_points": 1,
        "optimizer": {"lr": 0.01},
        "task_options": {"image_size": 16},
        "measure": NO_MEASURE,
    }
    cfg.update(over)
    return cfg


def test_conv_beats_the_majority_baseline_by_a_wide_margin():
    rec = run_trial(digits_trial())
    assert rec["status"] == "ok", rec.get("error")
    majority, chance = rec["baselines"]["majority"], rec["baselines"]["chance"]
    m = rec["metrics"]
    # digits are balanced: the majority class is ~10%; 30 steps of the conv net reach ~95%
    assert majority["top1"] < 15
    assert m["top1"] >= majority["top1"] + 70, (m, majority)
    assert m["loss"] < 0.5 * chance["loss"], (m, chance)
    # the training loss fell, and the eval-mode network agrees with it (BatchNorm statistics)
    assert rec["curve"]["loss"][-1] < 0.5 * rec["curve"]["loss"][0]


def _task(dataset="digits", **options):
    cfg = parse_trial_config(
        {"task": "classification", "dataset": dataset, "op": "conv", "steps": 1, "task_options": options}
    )
    task = get_task("classification")(cfg, torch.device("cpu"))
    train, test = task.build_data()
    return task, train, test


def test_baselines_chance_and_majority_from_the_training_labels():
    task, train, test = _task()
    assert task.train_class_counts.tolist() == torch.bincount(train.labels, minlength=10).tolist()
    base = task.baselines(test)
    assert base["chance"] == {"top1": 10.0, "top5": 50.0, "loss": pytest.approx(math.log(10))}
    # the majority class is the training set's most frequent (digits: class 3, 137 of 1347), scored
    # on the test labels
    assert int(task.train_class_counts.argmax()) == 3
    assert base["majority"]["top1"] == pytest.approx(100.0 * (test.labels == 3).double().mean().item())

    # a skewed training set decides what the majority predictor says, whatever the test set holds
    task.train_class_counts = torch.tensor([0, 20, 10, 0, 0, 0, 0, 50, 40, 30])
    base = task.baselines(test)["majority"]
    frac = {c: (test.labels == c).double().mean().item() for c in range(10)}
    assert base["top1"] == pytest.approx(100 * frac[7])
    assert base["top5"] == pytest.approx(100 * sum(frac[c] for c in (7, 8, 9, 1, 2)))
    prior = (task.train_class_counts.double() + 1) / (150 + 10)
    assert base["loss"] == pytest.approx(-prior.log()[test.labels].mean().item())


def test_baselines_with_fewer_than_five_classes():
    task, _, test = _task("synthetic", n_train=64, n_test=32, size=16)
    base = task.baselines(test)
    assert task.num_classes == 5
    assert base["chance"]["top5"] == 100.0 and base["majority"]["top5"] == 100.0
    assert base["chance"]["top1"] == 20.0


def test_warm_started_batchnorm_forgets_its_start():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    assert warm_start_batchnorm(nn.Sequential(bn)) == 1
    assert warm_start_batchnorm(nn.Sequential(bn)) == 1  # idempotent: one hook
    xs = [0.2 * torch.randn(4, 3, 5, 5) + 0.7 for _ in range(3)]
    for x in xs:
        bn(x)
    # the first batches are averaged cumulatively: nothing of the (0, 1) start is left
    means = torch.stack([x.mean((0, 2, 3)) for x in xs])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs])
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    # from batch 1/momentum on it is PyTorch's exponential moving average
    for _ in range(20):
        bn(xs[0])
    assert bn.momentum == 0.1
    before = bn.running_mean.clone()
    bn(xs[1])
    torch.testing.assert_close(bn.running_mean, 0.9 * before + 0.1 * means[1])
