"""Hot-swapping into real timm backbones and the task networks."""

import pytest
import timm
import torch
from torch import nn

from adaptconv import get_op
from adaptconv.models.networks import DnCNN, JointUpsamplingNet, SimpleCNN
from adaptconv.models.swap import ImageGuidedConv, SwapError, conv_stages, select_convs, swap_convs

TIMM_MODELS = ["resnet18", "mobilenetv3_small_050", "convnext_atto", "efficientnet_b0"]
PRESERVING = ["pac", "paka", "deform", "mdeform", "condconv", "dynconv"]


def _randomise_norms(model):
    """timm zero-initialises the last norm of each residual branch, which would hide any change a swap
    makes inside it: give every norm layer random affine parameters and statistics."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) or "Norm" in type(m).__name__:
                for attr in ("weight", "bias"):
                    t = getattr(m, attr, None)
                    if isinstance(t, torch.Tensor):
                        t.copy_(torch.rand_like(t) + 0.5 if attr == "weight" else torch.randn_like(t) * 0.1)
                if getattr(m, "running_var", None) is not None:
                    m.running_var.uniform_(0.5, 1.5)
                    m.running_mean.normal_(0, 0.1)


def _pair(name):
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval()
    _randomise_norms(ref)
    model = timm.create_model(name, pretrained=False).eval()
    model.load_state_dict(ref.state_dict())
    return ref, model


@pytest.mark.parametrize("name", TIMM_MODELS)
@pytest.mark.parametrize("op", PRESERVING)
def test_function_preserving_swap_keeps_the_output(name, op):
    assert get_op(op).function_preserving
    ref, model = _pair(name)
    records = swap_convs(model, op, {"stages": [3, 4]})
    assert records and all(r.op == op for r in records)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    swapped = {n for n, m in model.named_modules() if isinstance(m, get_op(op))}
    assert swapped == {r.name for r in records}


def test_image_guide_preserves_and_then_adapts():
    ref, model = _pair("resnet18")
    records = swap_convs(model, "pac", "layer2.*", guide="image")
    assert all(isinstance(model.get_submodule(r.name), ImageGuidedConv) for r in records)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)  # γ = 0: exact at the swap
        for r in records:
            model.get_submodule(r.name).op.set_guide_scale(50.0)
        change = (model(x) - ref(x)).abs().max() / ref(x).abs().max()
        assert change > 1e-2


def test_selection_by_pattern_kernel_stride_and_stage():
    model = timm.create_model("resnet18", pretrained=False)
    stages = conv_stages(model)
    assert stages["conv1"] == 0 and stages["layer1.0.conv1"] == 1 and stages["layer4.1.conv2"] == 4
    assert stages["layer2.0.conv1"] == 2  # the stride-2 conv that opens a stage belongs to it
    names = [n for n, _, _ in select_convs(model, {"pattern": "layer3.*"})]
    assert names == ["layer3.0.conv1", "layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2"]  # 1×1 downsample left out
    names = [n for n, _, _ in select_convs(model, {"pattern": "layer3.*", "include_pointwise": True})]
    assert "layer3.0.downsample.0" in names
    names = [n for n, _, _ in select_convs(model, {"strides": [2]})]
    assert names == ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    names = [n for n, _, _ in select_convs(model, {"kernel_sizes": [7]})]
    assert names == ["conv1"]
    names = [n for n, _, _ in select_convs(model, {"stages": [4], "exclude": "*.conv2"})]
    assert names == ["layer4.0.conv1", "layer4.1.conv1"]


def test_convnext_stage_indices_follow_feature_info():
    stages = conv_stages(timm.create_model("convnext_atto", pretrained=False))
    assert stages["stages.2.blocks.0.conv_dw"] == 2 and stages["stages.0.blocks.0.conv_dw"] == 0


def test_records_count_parameters():
    model = timm.create_model("resnet18", pretrained=False)
    records = swap_convs(model, "condconv", "layer4.1.conv2", num_experts=3)
    (r,) = records
    assert r.params_before == 512 * 512 * 9
    assert r.params_after == sum(p.numel() for p in model.layer4[1].conv2.parameters())
    assert r.params_after > 3 * r.params_before


def test_empty_selection_is_rejected():
    model = timm.create_model("resnet18", pretrained=False)
    with pytest.raises(SwapError, match="matches no nn.Conv2d"):
        swap_convs(model, "pac", "backbone.*")
    with pytest.raises(SwapError, match="unknown selection keys"):
        swap_convs(model, "pac", {"stage": [3]})
    with pytest.raises(SwapError, match="takes no guide"):
        swap_convs(model, "conv", "layer4.*", guide="image")


def test_conv_baseline_stays_nn_conv2d():
    model = timm.create_model("resnet18", pretrained=False)
    records = swap_convs(model, "conv", "layer4.*")
    assert len(records) == 4 and type(model.layer4[0].conv1) is nn.Conv2d


def test_subclasses_of_conv2d_are_not_candidates():
    model = timm.create_model("tf_efficientnet_b0", pretrained=False)  # uses Conv2dSame
    same = [n for n, m in model.named_modules() if type(m).__name__ == "Conv2dSame"]
    assert same
    chosen = {n for n, _, _ in select_convs(model, {"kernel_sizes": [3, 5]})}
    assert not chosen & set(same)


def test_task_networks_swap_with_multi_input_probe():
    net = JointUpsamplingNet(8, 2).eval()
    ref = JointUpsamplingNet(8, 2).eval()
    ref.load_state_dict(net.state_dict())
    rgb, lr = torch.rand(1, 3, 32, 32), torch.rand(1, 1, 4, 4)
    records = swap_convs(net, "pac", "target.layers.*", guide="image", example_inputs=(rgb, lr))
    assert [r.name for r in records] == ["target.layers.0", "target.layers.1"]
    with torch.no_grad():
        torch.testing.assert_close(net(rgb, lr), ref(rgb, lr))
    dn = DnCNN(1, 8, 4)
    assert len(swap_convs(dn, "paka", "body.*")) == 2
    cnn = SimpleCNN(1, 10, widths=(8, 16))
    assert {r.stage for r in swap_convs(cnn, "dfn", {"stages": [1]})} == {1}
