"""Registry, plugin discovery through entry points, and construction-time argument checks."""

import sys
import textwrap

import pytest
import torch

import adaptconv
from adaptconv import AdaptiveConv2d, OpRegistryError, create_op, list_ops, register_op
from adaptconv.ops import registry

BUILTINS = {"conv", "pac", "paka", "acda", "dfn", "deform", "mdeform", "condconv", "dynconv"}


def test_builtins_are_registered():
    assert BUILTINS <= set(list_ops())
    for name in BUILTINS:
        assert adaptconv.get_op(name).name == name


def test_operators_are_listed_by_kind():
    assert {"carafe"} <= set(list_ops(kind="upsampler")) and {"paccrf"} <= set(list_ops(kind="refiner"))
    kinds = [set(list_ops(kind=k)) for k in ("conv", "upsampler", "refiner")]
    assert set.union(*kinds) == set(list_ops()) and sum(map(len, kinds)) == len(list_ops())
    assert registry.op_kind("carafe") == "upsampler" and registry.op_kind("pac") == "conv"
    with pytest.raises(ValueError, match=r"kind must be one of \('conv', 'upsampler', 'refiner'\), got 'pool'"):
        list_ops(kind="pool")


def test_unknown_operator_suggests_a_name():
    with pytest.raises(OpRegistryError, match=r"did you mean 'pac'\?\)"):
        create_op("pacc", 4, 4, 3)


def test_unknown_option_lists_accepted_arguments():
    with pytest.raises(TypeError, match="accepted arguments: .*kernel_type"):
        create_op("pac", 4, 4, 3, kernel_typ="gaussian")


def test_name_clash_names_both_sources():
    with pytest.raises(
        OpRegistryError, match=r"'pac' is already registered by adaptconv\.ops\.pac:PacConv2d.*test_registry"
    ):

        @register_op("pac")
        class Other(AdaptiveConv2d):
            paper = "x"


class _NoStride(AdaptiveConv2d):
    paper = "test"
    supports = frozenset({"padding", "bias"})

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        *,
        guide_channels=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            guide_channels=guide_channels,
        )


@pytest.mark.parametrize("arg,value", [("stride", 2), ("dilation", 2), ("groups", 2)])
def test_unsupported_argument_is_refused_at_construction(arg, value):
    with pytest.raises(ValueError, match=f"does not support {arg}="):
        _NoStride(4, 4, 3, **{arg: value})
    _NoStride(4, 4, 3, padding=1)  # supported ones pass


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=0), "in_channels"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size"),
        (dict(stride=0), "stride"),
        (dict(padding=-1), "padding"),
        (dict(groups=3), "divisible by groups"),
        (dict(padding="same", stride=2), "padding='same'"),
        (dict(guide_channels=0), "guide_channels"),
    ],
)
def test_bad_conv_arguments_name_the_argument(kwargs, match):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        adaptconv.get_op("pac")(**args)


def test_padding_same_and_valid():
    op = create_op("pac", 2, 3, 5, padding="same", dilation=2)
    assert op.padding == (4, 4)
    assert create_op("conv", 2, 3, 3, padding="valid").padding == (0, 0)


def test_input_and_guide_errors_name_the_shapes():
    op = create_op("paka", 4, 4, 3, padding=1, guide_channels=2)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"guide shape \(1, 2, 4, 4\) does not match input shape \(1, 4, 8, 8\)"):
        op(x, torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="needs a guide"):
        op(x)
    with pytest.raises(ValueError, match=r"input has 3 channels"):
        op(torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="built self-guided"):
        create_op("pac", 4, 4, 3)(x, torch.randn(1, 2, 8, 8))


def test_resize_guide():
    g = torch.rand(1, 3, 32, 32)
    assert adaptconv.resize_guide(g, (8, 8)).shape == (1, 3, 8, 8)
    assert adaptconv.resize_guide(g, (32, 32)) is g


def test_unsupported_dtype_gives_a_clear_error():
    op = create_op("deform", 2, 2, 3, padding=1).to(torch.bfloat16)
    try:
        op(torch.randn(1, 2, 6, 6, dtype=torch.bfloat16))
    except TypeError as exc:
        assert "torch.bfloat16" in str(exc) and "deform" in str(exc)
    # (if a future torchvision implements bf16 on the CPU, the call simply succeeds)


# ---- plugins ---------------------------------------------------------------------------------------


def test_example_plugin_package_is_discovered():
    """examples/adaptconv-gated-op is pip-installed into the test environment by `make test`."""
    assert "gated" in list_ops(), (
        "the example plugin is not installed: `make test` installs examples/adaptconv-gated-op"
    )
    assert registry.op_source("gated").startswith("plugin adaptconv-gated-op")
    op = create_op("gated", 4, 6, 3, padding=1)
    assert op(torch.randn(2, 4, 8, 8)).shape == (2, 6, 8, 8)


def _write_dist(root, dist, entry_points, modules):
    """Lay out an installed distribution (dist-info with entry_points.txt, as pip writes it)."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"  # pip's escaping of the name
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[adaptconv.ops]\n{lines}\n")
    for name, src in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    for mod in [m for m in sys.modules if m.startswith("acplug_")]:
        del sys.modules[mod]
    registry.reload_plugins()


GOOD = """
    from adaptconv.ops.conv import Conv2d
    class Doubled(Conv2d):
        paper = "test plugin"
        def adaptive_forward(self, x, guide):
            return 2 * super().adaptive_forward(x, guide)
"""


def test_broken_and_clashing_plugins_are_reported_and_break_nothing(plugin_path):
    _write_dist(
        plugin_path,
        "acplug-broken",
        {"broken": "acplug_broken:Op"},
        {"acplug_broken": "raise ImportError('missing dependency: frobnicate')\n"},
    )
    _write_dist(plugin_path, "acplug-clash", {"pac": "acplug_clash:Doubled"}, {"acplug_clash": GOOD})
    _write_dist(plugin_path, "acplug-notop", {"notop": "acplug_notop:thing"}, {"acplug_notop": "thing = 3\n"})
    _write_dist(plugin_path, "acplug-good", {"doubled": "acplug_good:Doubled"}, {"acplug_good": GOOD})
    registry.reload_plugins()
    errors = {e.entry_point.split(" = ")[0]: e for e in adaptconv.plugin_errors()}
    assert "missing dependency: frobnicate" in errors["broken"].error
    assert errors["broken"].distribution == "acplug-broken"
    assert "already registered by adaptconv.ops.pac:PacConv2d" in errors["pac"].error
    assert "acplug_clash:Doubled" in errors["pac"].error
    assert "not an AdaptiveConv2d subclass" in errors["notop"].error
    # everything else still works, including the built-in that the clash tried to take
    assert adaptconv.get_op("pac").__module__ == "adaptconv.ops.pac"
    assert "doubled" in list_ops() and BUILTINS <= set(list_ops())
    op = create_op("doubled", 2, 2, 1, bias=False)
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(op(x), 2 * torch.nn.functional.conv2d(x, op.weight))
    with pytest.raises(OpRegistryError, match="failed to load: import failed"):
        create_op("broken", 2, 2, 3)
