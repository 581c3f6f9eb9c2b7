"""CARAFE as the upsampler and PAC-CRF as the refinement head of the task networks, end to end."""

import pytest
import torch

from adaptconv.models.backbones import build_backbone
from adaptconv.models.networks import FCNSegmenter, JointUpsamplingNet
from adaptconv.ops.carafe import Carafe
from adaptconv.ops.paccrf import PacCRF
from adaptconv.schema import ConfigError
from adaptconv.trial import parse_trial_config, run_trial
from adaptconv.trial.ids import trial_id

NO_MEASURE = {"latency": False, "memory": False, "flops": False}
UPSAMPLING = dict(
    task="upsampling",
    threads=1,
    steps=3,
    batch_size=4,
    measure=NO_MEASURE,
    task_options=dict(patch=32, crops=8, width=8, layers=1),
)
SEGMENTATION = dict(
    task="segmentation",
    threads=1,
    backbone="simplecnn-s",
    steps=3,
    batch_size=8,
    measure=NO_MEASURE,
    task_options=dict(n_train=16, n_test=8, size=32, decoder_width=16),
)


def _with(base, **task_options):
    return {**base, "task_options": {**base["task_options"], **task_options}}


def test_upsampling_trial_with_carafe():
    rec = run_trial(_with(UPSAMPLING, upsampler="carafe"))
    assert rec["status"] == "ok", rec.get("error")
    assert rec["config"]["task_options"]["upsampler"] == "carafe"
    assert rec["swap"]["layers"] == 1 and rec["metrics"]["rmse"] > 0
    # the default stays plain bilinear: a different trial, a different result
    base = run_trial(UPSAMPLING)
    assert base["status"] == "ok" and base["metrics"]["rmse"] != rec["metrics"]["rmse"]


def test_segmentation_trial_with_carafe_and_paccrf():
    rec = run_trial(_with(SEGMENTATION, upsampler="carafe", crf="paccrf", crf_iters=2))
    assert rec["status"] == "ok", rec.get("error")
    assert {"upsampler": "carafe", "crf": "paccrf", "crf_iters": 2}.items() <= rec["config"]["task_options"].items()
    assert 0 <= rec["metrics"]["miou"] <= 100


def test_networks_hold_the_heads():
    net = JointUpsamplingNet(8, 1, upsampler="carafe", scale=4)
    assert isinstance(net.upsample, Carafe) and net.upsample.scale_factor == 4
    out = net(torch.rand(2, 3, 16, 16), torch.rand(2, 1, 4, 4))
    assert out.shape == (2, 1, 16, 16)
    backbone, channels = build_backbone("simplecnn-s", 3, features_only=True)
    seg = FCNSegmenter(backbone, channels, 5, 8, upsampler="carafe", reductions=[1, 2, 4], refiner=PacCRF(5))
    assert [getattr(u, "scale_factor", 1) for u in seg.upsamplers] == [1, 2, 4]
    assert seg(torch.rand(2, 3, 17, 19)).shape == (2, 5, 17, 19)  # odd sizes too


def test_default_configs_keep_their_trial_ids():
    """The new task options are left out of the normalised config at their defaults."""
    for base, new in ((UPSAMPLING, {"upsampler"}), (SEGMENTATION, {"upsampler", "crf", "crf_iters"})):
        cfg = parse_trial_config(base).normalised()
        assert not new & set(cfg["task_options"])
        explicit = _with(base, **{"upsampler": "bilinear"})
        assert trial_id(parse_trial_config(explicit).normalised()) == trial_id(cfg)


@pytest.mark.parametrize(
    "base,options,match",
    [
        (UPSAMPLING, dict(upsampler="nearest"), "upsampler: one of bilinear, carafe"),
        (SEGMENTATION, dict(crf="dense"), "crf: one of none, paccrf"),
        (SEGMENTATION, dict(crf_iters=-1), "crf_iters"),
    ],
)
def test_bad_head_options_are_refused(base, options, match):
    with pytest.raises(ConfigError, match=match):
        parse_trial_config(_with(base, **options))


def test_a_non_conv_operator_as_op_is_an_error_naming_its_kind():
    # refused with the config (so `plan` refuses it too), naming the task option that takes it
    with pytest.raises(
        ConfigError,
        match=r"'carafe' is an operator of kind 'upsampler', not a convolution.*"
        r"`task_options\.upsampler: carafe`",
    ):
        run_trial({**UPSAMPLING, "op": "carafe"})
