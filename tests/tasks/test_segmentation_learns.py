"""Learning regression test: the conv segmenter beats the majority class on the synthetic scenes.

The main job's segmentation block at one fixed seed (16×16 scenes of one object covering 20–35 %, texture
contrast 0.25, cross-entropy weighted by 1/√class frequency; see adaptconv/tasks/segmentation.py for
why), on one CPU thread. It
fails when learning breaks — with a near-zero learning rate the network predicts (almost) one class,
which ``test_fails_when_learning_is_broken`` checks.
"""

from adaptconv.trial import run_trial

NO_MEASURE = {"latency": False, "memory": False, "flops": False}
CONFIG = dict(
    task="segmentation",
    dataset="synthetic",
    backbone="simplecnn-s",
    op="conv",
    seed=0,
    threads=1,
    steps=300,
    batch_size=8,
    optimizer={"lr": 3e-3},
    measure=NO_MEASURE,
    task_options=dict(
        size=16,
        n_train=320,
        n_test=128,
        decoder_width=16,
        class_weights="sqrt_inverse",
        scene=dict(texture_contrast=0.25, max_distractors=0, main_area=[0.2, 0.35]),
    ),
)
MIN_RATIO = 1.6  # conv's mIoU over the majority class's (measured: 2.2 at this seed)


def _ratio(config):
    rec = run_trial(config)
    assert rec["status"] == "ok", rec.get("error")
    majority = rec["baselines"]["majority"]
    return rec["metrics"]["miou"] / majority["miou"], rec


def test_conv_segmenter_beats_the_majority_class():
    ratio, rec = _ratio(CONFIG)
    majority = rec["baselines"]["majority"]
    # the baseline itself: background everywhere, i.e. its IoU (= its pixel share) over the 6 classes
    assert 10 < majority["miou"] < 14 and abs(majority["miou"] * 6 - majority["pixel_acc"]) < 1e-6
    assert ratio >= MIN_RATIO, f"conv mIoU {rec['metrics']['miou']:.1f} is only {ratio:.2f}× the majority class's"


def test_fails_when_learning_is_broken():
    ratio, _ = _ratio({**CONFIG, "optimizer": {"lr": 1e-12}})
    assert ratio < MIN_RATIO


def test_baselines_score_the_trivial_predictors_on_the_test_masks():
    """majority and chance recomputed by hand from the same masks the trial uses."""
    import torch

    from adaptconv.data import get_dataset
    from adaptconv.tasks.segmentation import confusion_matrix, segmentation_scores

    rec = run_trial({**CONFIG, "steps": 1, "seed": 3})
    assert rec["status"] == "ok", rec.get("error")
    scene = CONFIG["task_options"]["scene"]
    train = get_dataset("synthetic", "segmentation", "train", n=320, size=16, seed=3, **scene)
    test = get_dataset("synthetic", "segmentation", "test", n=128, size=16, seed=3 + 10_000, **scene)
    train_masks = torch.stack([train[i]["mask"] for i in range(len(train))])
    test_masks = torch.stack([test[i]["mask"] for i in range(len(test))])
    prior = torch.bincount(train_masks.flatten(), minlength=6).double() / train_masks.numel()
    majority = segmentation_scores(confusion_matrix(torch.full_like(test_masks, int(prior.argmax())), test_masks, 6))
    assert rec["baselines"]["majority"] == majority
    # chance: the expected confusion of predictions drawn from the prior; a large random draw agrees
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(prior, test_masks.numel() * 20, replacement=True, generator=gen)
    sampled = segmentation_scores(
        confusion_matrix(draws.view(20, *test_masks.shape), test_masks.expand(20, -1, -1, -1), 6)
    )
    for metric in ("miou", "pixel_acc"):
        assert abs(rec["baselines"]["chance"][metric] - sampled[metric]) < 0.3


def test_scene_and_class_weight_options_are_checked():
    import pytest

    from adaptconv.schema import ConfigError
    from adaptconv.trial import parse_trial_config

    for options, match in (
        ({"scene": {"textur_contrast": 0.5}}, "did you mean 'texture_contrast'"),
        ({"scene": {"main_area": [0.4, 0.2]}}, "main_area"),
        ({"class_weights": "inverse"}, "class_weights: one of none, sqrt_inverse"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_trial_config({"task": "segmentation", "task_options": options})
    # at their defaults the new options stay out of the normalised config (trial ids do not change)
    normalised = parse_trial_config({"task": "segmentation"}).normalised()["task_options"]
    assert "scene" not in normalised and "class_weights" not in normalised
