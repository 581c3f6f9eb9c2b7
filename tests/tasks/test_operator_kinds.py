"""Upsamplers and refiners are found through the registry by kind: an operator registered in-process
(as a plugin would be) is usable as ``task_options.upsampler`` / ``task_options.crf``; CARAFE and PAC-CRF
are built exactly as they were before the lookup by name."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv.models.backbones import build_backbone
from adaptconv.models.networks import (
    FCNSegmenter,
    JointUpsamplingNet,
    build_refiner,
    build_upsampler,
    refiner_choices,
    upsampler_choices,
)
from adaptconv.ops import registry
from adaptconv.ops.base import AdaptiveModule
from adaptconv.ops.carafe import Carafe
from adaptconv.ops.paccrf import PacCRF
from adaptconv.schema import ConfigError
from adaptconv.trial import parse_trial_config, run_trial

NO_MEASURE = {"latency": False, "memory": False, "flops": False}
UPSAMPLING = dict(
    task="upsampling",
    threads=1,
    steps=2,
    batch_size=4,
    measure=NO_MEASURE,
    task_options=dict(patch=32, crops=8, width=8, layers=1),
)
SEGMENTATION = dict(
    task="segmentation",
    threads=1,
    backbone="simplecnn-s",
    steps=2,
    batch_size=8,
    measure=NO_MEASURE,
    task_options=dict(n_train=16, n_test=8, size=16, decoder_width=8),
)


def _with(base, **task_options):
    return {**base, "task_options": {**base["task_options"], **task_options}}


class NearestMix(AdaptiveModule):
    """A plugin-like upsampler that predicts no kernels: nearest upsampling, then a learned 1×1 mix."""

    kind = "upsampler"
    paper = "test plugin"
    from_conv_note = "not a convolution: an upsampler"

    def __init__(self, channels, scale_factor=2, *, gain=1.0):
        super().__init__(channels, scale_factor=scale_factor)
        self.mix = nn.Conv2d(channels, channels, 1)
        self.gain = gain

    def adaptive_forward(self, x, guide):
        return self.gain * self.mix(F.interpolate(x, scale_factor=self.scale_factor, mode="nearest"))


class TapKernels(AdaptiveModule):
    """A plugin-like kernel-predicting upsampler: one conv predicts k_up² logits per output pixel."""

    kind = "upsampler"
    paper = "test plugin"
    from_conv_note = "not a convolution: an upsampler"

    def __init__(self, channels, scale_factor=2, *, k_up=3):
        super().__init__(channels, scale_factor=scale_factor)
        self.k_up = k_up
        self.predict = nn.Conv2d(channels, scale_factor**2 * k_up**2, 3, padding=1)

    def kernel_logits(self, x):
        return F.pixel_shuffle(self.predict(x), self.scale_factor)

    def adaptive_forward(self, x, guide):
        return F.interpolate(x, scale_factor=self.scale_factor, mode="nearest")


class Smooth(AdaptiveModule):
    """A plugin-like refiner without a guide: logits plus a learned depthwise 3×3 smoothing."""

    kind = "refiner"
    paper = "test plugin"
    guide = "none"
    from_conv_note = "not a convolution: a refiner"

    def __init__(self, channels):
        super().__init__(channels)
        self.smooth = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def adaptive_forward(self, x, guide):
        return x + self.smooth(x)


@pytest.fixture
def plugin_ops():
    """The three operators registered in this process (as an entry point would), removed afterwards."""
    names = {"nearestmix": NearestMix, "tapkernels": TapKernels, "smoothref": Smooth}
    for name, cls in names.items():
        registry.register_op(name)(cls)
    yield names
    for name in names:
        registry.OPS.remove(name)


def test_choices_come_from_the_registry(plugin_ops):
    assert upsampler_choices()[:2] == ["bilinear", "carafe"]
    assert {"nearestmix", "tapkernels"} <= set(upsampler_choices())
    assert refiner_choices()[:1] == ["none"] and {"paccrf", "smoothref"} <= set(refiner_choices())
    assert "pac" not in upsampler_choices() and "carafe" not in refiner_choices()


def test_unknown_upsampler_or_refiner_lists_the_choices(plugin_ops):
    with pytest.raises(
        ConfigError,
        match=r"upsampler: one of bilinear, carafe, nearestmix, tapkernels, "
        r"got 'nearestmx' \(did you mean 'nearestmix'\?\)",
    ):
        parse_trial_config(_with(UPSAMPLING, upsampler="nearestmx"))
    with pytest.raises(ConfigError, match=r"crf: one of none, paccrf, smoothref, got 'pac'"):
        parse_trial_config(_with(SEGMENTATION, crf="pac"))  # an operator, but not a refiner
    # crf_iters is a refiner's num_iters: refused, not ignored, for one that has none
    with pytest.raises(ConfigError, match=r"crf_iters: refiner 'smoothref' takes no num_iters"):
        parse_trial_config(_with(SEGMENTATION, crf="smoothref", crf_iters=2))
    parse_trial_config(_with(SEGMENTATION, crf="smoothref"))


def test_plugin_upsampler_and_refiner_in_a_segmentation_trial(plugin_ops):
    rec = run_trial(_with(SEGMENTATION, upsampler="nearestmix", crf="smoothref"))
    assert rec["status"] == "ok", rec.get("error")
    assert {"upsampler": "nearestmix", "crf": "smoothref"}.items() <= rec["config"]["task_options"].items()
    assert 0 <= rec["metrics"]["miou"] <= 100


@pytest.mark.parametrize("name", ["nearestmix", "tapkernels"])
def test_plugin_upsampler_in_an_upsampling_trial(plugin_ops, name):
    rec = run_trial(_with(UPSAMPLING, upsampler=name))
    assert rec["status"] == "ok", rec.get("error")
    assert rec["config"]["task_options"]["upsampler"] == name and rec["metrics"]["rmse"] > 0


def test_networks_use_the_plugin_operators_through_the_kind_contract(plugin_ops):
    backbone, channels = build_backbone("simplecnn-s", 3, features_only=True)
    refiner = build_refiner("smoothref", 5, guide_channels=3, num_iters=4)  # not offered what it does not take
    assert isinstance(refiner, Smooth) and refiner.guide_channels is None
    seg = FCNSegmenter(backbone, channels, 5, 8, upsampler="nearestmix", reductions=[1, 2, 4], refiner=refiner)
    assert [type(u).__name__ for u in seg.upsamplers] == ["Identity", "NearestMix", "NearestMix"]
    assert [getattr(u, "scale_factor", 1) for u in seg.upsamplers] == [1, 2, 4]
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        y = seg(x)
        seg.upsamplers[1].gain = 0.0  # the plugin's output is what the decoder sums
        assert not torch.equal(seg(x), y)
    assert y.shape == (2, 5, 12, 12)

    # an upsampler without kernel_logits gives the joint net's base upsampling; base kernels stay bilinear
    net = JointUpsamplingNet(8, 1, upsampler="nearestmix", scale=4)
    assert isinstance(net.upsample, NearestMix) and not net.kernels_from_upsampler
    bilinear = JointUpsamplingNet(8, 1, scale=4)
    d = torch.rand(1, 1, 3, 3)
    torch.testing.assert_close(net.base_logits(d, 4), bilinear.base_logits(d, 4))
    # one with kernel_logits gives the base kernels, offered k_up = 2·radius + 1
    net = JointUpsamplingNet(8, 1, upsampler="tapkernels", scale=4, radius=2)
    assert net.kernels_from_upsampler and net.upsample.k_up == 5
    assert torch.equal(net.base_logits(d, 4), net.upsample.kernel_logits(d))
    assert net(torch.rand(1, 3, 12, 12), d).shape == (1, 1, 12, 12)


def test_a_kernel_window_other_than_the_nets_is_an_error(plugin_ops):
    class Fixed5(TapKernels):
        def __init__(self, channels, scale_factor=2):  # declares no k_up: keeps its own 5×5 window
            super().__init__(channels, scale_factor, k_up=5)

    registry.register_op("fixed5")(Fixed5)
    try:
        net = JointUpsamplingNet(8, 1, upsampler="fixed5", scale=2)
        with pytest.raises(ValueError, match=r"'fixed5''s kernel_logits gave \(1, 25, 6, 6\), expected B×9×6×6"):
            net(torch.rand(1, 3, 6, 6), torch.rand(1, 1, 3, 3))
    finally:
        registry.OPS.remove("fixed5")


def test_an_operator_of_another_kind_is_refused_by_the_builders():
    with pytest.raises(ValueError, match=r"'paccrf' is an operator of kind 'refiner', not of kind 'upsampler'"):
        build_upsampler("paccrf", 4, 2)
    with pytest.raises(ValueError, match=r"'pac' is an operator of kind 'conv', not of kind 'refiner'"):
        build_refiner("pac", 4, 3)


# ---- the built-ins are built exactly as before the lookup by name -----------------------------------


def test_fcn_with_carafe_and_paccrf_is_the_network_built_before():
    """Before: ``Carafe(width, r // r0, compressed_channels=width)`` per coarser map, made after the
    classifier, and ``PacCRF(classes, guide_channels=3, num_iters=crf_iters)`` made before the network."""
    torch.manual_seed(0)
    backbone, channels = build_backbone("simplecnn-s", 3, features_only=True)
    crf = build_refiner("paccrf", 5, 3, num_iters=3)
    new = FCNSegmenter(backbone, channels, 5, 16, upsampler="carafe", reductions=[1, 2, 4], refiner=crf)

    torch.manual_seed(0)
    backbone, channels = build_backbone("simplecnn-s", 3, features_only=True)
    crf = PacCRF(5, guide_channels=3, num_iters=3)
    old = FCNSegmenter(backbone, channels, 5, 16, refiner=crf)  # bilinear: no upsampler drawn yet
    old.upsampler = "carafe"
    old.upsamplers = nn.ModuleList(
        [nn.Identity(), Carafe(16, 2, compressed_channels=16), Carafe(16, 4, compressed_channels=16)]
    )
    new_state, old_state = new.state_dict(), old.state_dict()
    assert sorted(new_state) == sorted(old_state)
    for key in new_state:
        assert torch.equal(new_state[key], old_state[key]), key
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    new.eval(), old.eval()
    with torch.no_grad():
        assert torch.equal(new(x), old(x))


def test_joint_net_with_carafe_is_the_network_built_before():
    """Before: ``Carafe(1, scale, k_up=2r+1, compressed_channels=width, init="bilinear", init_floor=floor)``
    and base logits ``pixel_shuffle(encoder(compressor(depth)), s)``."""
    torch.manual_seed(0)
    net = JointUpsamplingNet(8, 2, upsampler="carafe", scale=4, floor=2e-3)
    torch.manual_seed(0)
    ref = Carafe(1, 4, k_up=3, compressed_channels=8, init="bilinear", init_floor=2e-3)
    assert isinstance(net.upsample, Carafe) and net.kernels_from_upsampler
    for (k1, v1), (k2, v2) in zip(net.upsample.state_dict().items(), ref.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1
    d = torch.rand(2, 1, 5, 4)
    with torch.no_grad():
        assert torch.equal(net.base_logits(d, 4), F.pixel_shuffle(ref.encoder(ref.compressor(d)), 4))
