"""FLOPs and parameters of a module, with nothing silently left out.

Units: **FLOP**, where one multiply-add is 2 FLOPs (PyTorch's ``FlopCounterMode`` convention; fvcore
and many papers report MACs, 1 per multiply-add). :class:`FlopReport` carries both; ``macs`` is
defined as ``flops / 2``.

How it counts: the module runs once (eager, never compiled) under
``torch.utils.flop_counter.FlopCounterMode`` with PyTorch's formulas (mm, addmm, bmm, baddbmm,
convolution and its backward, attention) plus the formulas registered here for the ops the
content-adaptive operators are made of and PyTorch does not count. Every op that executes is
recorded; each is either

- **counted** by a formula (``by_op``),
- **free** by decision (``free_ops``): data movement with no arithmetic — views and reshapes,
  copies and dtype casts, allocation and filling, concatenation, padding, indexing and gathering,
  nearest-neighbour resampling, and ``aten.im2col`` (the unfold: pure data movement, though it
  costs k² × the input in memory), or
- **uncounted** (``uncounted_ops``): executed with no formula. A non-empty list means the total is a
  lower bound; the report says so (``complete`` is False) instead of printing a silently low number.

Conventions of the formulas added here (``formula_notes()`` lists them per op):

- pointwise arithmetic, comparisons and activations: 1 FLOP per output element and elementary
  operation (``add``, ``mul``, ``exp``, ``tanh``, ``sigmoid``, ``pow``, ``relu`` …; a transcendental
  counts 1, a convention — its hardware cost is higher); fused ones count their parts
  (``addcmul`` 2, ``silu`` 2, ``gelu`` 5 …), their backward formulas likewise (``tanh_backward`` 3);
- reductions: 1 FLOP per input element (``sum``; ``mean`` adds 1 per output element);
- softmax / log-softmax: 5 per element (max, subtract, exp, sum, divide); backward 4;
- normalisation layers (naive): 2 per element to normalise, +2 for the affine, +4 to compute batch
  statistics in training; backward 9 per element;
- bilinear interpolation (``torchvision::deform_conv2d``, ``grid_sampler_2d``, bilinear upsampling):
  7 per interpolated value (4 multiplies, 3 adds), plus 10 per sampling location (position, fraction
  and the four corner weights, shared by all channels of an offset group); a v2 mask adds 1.
  ``deform_conv2d`` adds the convolution's ``2·B·O·(C/g)·k²·H'·W'`` on the sampled columns;
  its backward (an estimate) counts twice the convolution plus 33 per sampled value (+4 with mask);
- scatter-adds (``col2im``, pooling and padding backward, ``index_add``): 1 per added element.

Bias additions fused into ``convolution``/``addmm`` are not counted, as in PyTorch's formulas.
PyTorch's ``convolution_backward`` formula is replaced by a groups-aware one: torch 2.14's counts the
weight gradient of a grouped convolution as if it were dense (CondConv and dynamic convolution run
as one convolution with ``groups = batch``, depthwise convolutions have ``groups = channels``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from math import prod
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from ..ops import config as ops_config
from .latency import call_model

log = logging.getLogger(__name__)

aten = torch.ops.aten

FLOP_UNIT = "FLOP (one multiply-add = 2 FLOPs)"
MAC_UNIT = "MAC (= FLOP / 2)"

#: Bilinear interpolation of one value from its 4 neighbours: 4 multiplies + 3 adds.
BILINEAR_VALUE_FLOPS = 7
#: Per sampling location: position (2 adds), fractions and complements (4), corner weights (4).
BILINEAR_LOCATION_FLOPS = 10
#: deform_conv2d backward per sampled value (estimate): recompute the column (7), scatter its gradient
#: to 4 neighbours (8), offset gradients for dy and dx (2 × 9).
DEFORM_BACKWARD_VALUE_FLOPS = 33
#: A v2 mask: forward multiply (1); backward: mask the column and its gradient, mask gradient (4).
DEFORM_MASK_FWD_FLOPS = 1
DEFORM_MASK_BWD_FLOPS = 4


# --------------------------------------------------------------------------------------------------
# Shape helpers (formulas receive tensor arguments as torch.Size, outputs as ``out_shape``)
def _numel(shape: Any) -> int:
    return int(prod(shape)) if isinstance(shape, torch.Size) else 0


def _first_out(out_shape: Any) -> Any:
    if isinstance(out_shape, torch.Size) or out_shape is None:
        return out_shape
    if isinstance(out_shape, (tuple, list)) and out_shape:
        return out_shape[0]
    return None


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    return (int(v[0]), int(v[-1])) if v else (1, 1)


# --------------------------------------------------------------------------------------------------
# Formula factories
def _per_output(factor: int) -> Callable[..., int]:
    def formula(*args, out_shape=None, **kwargs) -> int:
        return factor * _numel(_first_out(out_shape))

    return formula


def _per_input(factor: int, plus_output: int = 0) -> Callable[..., int]:
    def formula(*args, out_shape=None, **kwargs) -> int:
        return factor * _numel(args[0]) + plus_output * _numel(_first_out(out_shape))

    return formula


def _per_largest_of_first_two(factor: int) -> Callable[..., int]:
    def formula(*args, out_shape=None, **kwargs) -> int:
        return factor * max(_numel(a) for a in args[:2])

    return formula


def _norm_forward(training: bool | None, weight_index: int = 1) -> Callable[..., int]:
    """2/element to normalise, +2 with an affine weight, +4 computing batch statistics."""

    def formula(*args, out_shape=None, **kwargs) -> int:
        train = training
        if train is None:  # the first bool argument after the tensors is the training flag
            train = next((a for a in args[3:] if isinstance(a, bool)), True)
        affine = isinstance(args[weight_index] if len(args) > weight_index else kwargs.get("weight"), torch.Size)
        return _numel(args[0]) * (2 + (2 if affine else 0) + (4 if train else 0))

    return formula


def _sum_to(*args, out_shape=None, **kwargs) -> int:
    """Scatter-add of a larger gradient into a smaller tensor: one add per extra element
    (padding backward): numel(grad_output) - numel(grad_input)."""
    return max(0, _numel(args[0]) - _numel(_first_out(out_shape)))


def _pool_forward(*args, out_shape=None, **kwargs) -> int:
    kh, kw = _pair(args[1])
    return _numel(_first_out(out_shape)) * kh * kw


def _avg_pool_backward(*args, out_shape=None, **kwargs) -> int:
    kh, kw = _pair(args[2])
    return _numel(args[0]) * (kh * kw + 1)


def _aa_upsample(*args, out_shape=None, **kwargs) -> int:
    """Antialiased bilinear resize, separable: 2 FLOPs per tap per pass, ~2·scale+1 taps per pass."""
    inp, out = args[0], _first_out(out_shape)
    if not isinstance(inp, torch.Size) or not isinstance(out, torch.Size):
        return 0
    taps = [int(2 * max(1.0, i / max(o, 1))) + 1 for i, o in zip(inp[-2:], out[-2:])]
    return 2 * _numel(out) * sum(taps)


def _grid_sampler(*args, out_shape=None, **kwargs) -> int:
    out = _first_out(out_shape)
    grid, mode = args[1], args[2]
    locations = _numel(grid) // 2
    per_value = {0: BILINEAR_VALUE_FLOPS, 1: 0, 2: 35}.get(mode, BILINEAR_VALUE_FLOPS)
    per_location = {0: BILINEAR_LOCATION_FLOPS, 1: 6, 2: 50}.get(mode, BILINEAR_LOCATION_FLOPS)
    return _numel(out) * per_value + locations * per_location


def _grid_sampler_backward(*args, out_shape=None, **kwargs) -> int:
    grad, grid, mode = args[0], args[2], args[3]
    locations = _numel(grid) // 2
    per_value = {0: 8 + 18, 1: 1, 2: 32 + 70}.get(mode, 26)
    per_location = {0: BILINEAR_LOCATION_FLOPS, 1: 6, 2: 50}.get(mode, BILINEAR_LOCATION_FLOPS)
    return _numel(grad) * per_value + locations * per_location


def _index_put(*args, out_shape=None, **kwargs) -> int:
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    return _numel(args[2]) if accumulate else 0


def _index_add(*args, out_shape=None, **kwargs) -> int:
    source = args[3] if len(args) > 3 else kwargs.get("source")
    return _numel(source)


def _mv(*args, out_shape=None, **kwargs) -> int:
    mat = args[0] if len(args) == 2 else args[1]
    return 2 * _numel(mat)


def _addmm_inplace(*args, out_shape=None, **kwargs) -> int:
    """addmm_(self, m1, m2) / baddbmm_ / addbmm(_)(self, b1, b2): 2 per multiply-add of the product."""
    a, b = args[1], args[2]
    return 2 * _numel(a) * (b[-1] if isinstance(b, torch.Size) else 0)


def _dot(*args, out_shape=None, **kwargs) -> int:
    return 2 * _numel(args[0])


def _sdpa_cpu(*args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(args[0], args[1], args[2])


def _sdpa_cpu_backward(*args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(args[0], args[1], args[2], args[3])


def _conv_backward(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """convolution_backward, groups-aware: grad_input and grad_weight each cost the forward's FLOPs.

    PyTorch's own formula (torch 2.14) builds grad_weight's count from transposed shapes that lose the
    group division, so a grouped convolution's backward is overcounted by up to ``groups``× (×32 for a
    depthwise conv with 64 channels); this replaces it. For ``groups=1`` both agree exactly.
    """
    spatial = x_shape[2:] if transposed else grad_out_shape[2:]
    forward = 2 * x_shape[0] * prod(w_shape) * prod(spatial)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _deform_parts(input_shape, weight_shape, out_hw, offset_groups) -> tuple[int, int, int]:
    """(conv MAC-FLOPs, sampled values, sampling locations) of a deformable convolution."""
    b, c = input_shape[0], input_shape[1]
    o, cpg, kh, kw = weight_shape
    pixels = b * out_hw[0] * out_hw[1]
    taps = kh * kw
    return 2 * pixels * o * cpg * taps, pixels * c * taps, pixels * offset_groups * taps


def deform_conv2d_flops(input_shape, weight_shape, output_shape, offset_groups: int = 1, use_mask: bool = False) -> int:
    """Forward FLOPs of ``torchvision.ops.deform_conv2d``: the convolution on the sampled columns
    (``2·B·O·(C/g)·k²·H'·W'``) + bilinear sampling (7 per value, +1 with a mask, over ``B·C·k²·H'·W'``
    values) + 10 per sampling location (``B·G_offset·k²·H'·W'``)."""
    conv, values, locations = _deform_parts(input_shape, weight_shape, tuple(output_shape[-2:]), offset_groups)
    per_value = BILINEAR_VALUE_FLOPS + (DEFORM_MASK_FWD_FLOPS if use_mask else 0)
    return conv + values * per_value + locations * BILINEAR_LOCATION_FLOPS


def _deform_forward(*args, out_shape=None, **kwargs) -> int:
    inp, weight = args[0], args[1]
    offset_groups, use_mask = args[12], bool(args[13])
    return deform_conv2d_flops(inp, weight, out_shape, offset_groups, use_mask)


def _deform_backward(*args, out_shape=None, **kwargs) -> int:
    grad, inp, weight = args[0], args[1], args[2]
    offset_groups, use_mask = args[13], bool(args[14])
    conv, values, locations = _deform_parts(inp, weight, tuple(grad[-2:]), offset_groups)
    per_value = DEFORM_BACKWARD_VALUE_FLOPS + (DEFORM_MASK_BWD_FLOPS if use_mask else 0)
    return 2 * conv + values * per_value + locations * BILINEAR_LOCATION_FLOPS


# --------------------------------------------------------------------------------------------------
# The tables
_POINTWISE: dict[int, tuple[str, ...]] = {
    1: (
        "add",
        "add_",
        "sub",
        "sub_",
        "rsub",
        "mul",
        "mul_",
        "div",
        "div_",
        "neg",
        "neg_",
        "reciprocal",
        "reciprocal_",
        "sqrt",
        "sqrt_",
        "rsqrt",
        "rsqrt_",
        "abs",
        "abs_",
        "sign",
        "sgn",
        "exp",
        "exp_",
        "exp2",
        "expm1",
        "log",
        "log_",
        "log2",
        "log10",
        "log1p",
        "tanh",
        "tanh_",
        "sigmoid",
        "sigmoid_",
        "pow",
        "pow_",
        "erf",
        "erf_",
        "erfinv",
        "sin",
        "cos",
        "atan",
        "floor",
        "ceil",
        "round",
        "trunc",
        "frac",
        "relu",
        "relu_",
        "relu6",
        "threshold",
        "threshold_",
        "threshold_backward",
        "clamp",
        "clamp_",
        "clamp_min",
        "clamp_min_",
        "clamp_max",
        "clamp_max_",
        "hardtanh",
        "hardtanh_",
        "hardtanh_backward",
        "maximum",
        "minimum",
        "fmax",
        "fmin",
        "ge",
        "gt",
        "le",
        "lt",
        "eq",
        "ne",
        "logical_and",
        "logical_or",
        "logical_not",
        "bitwise_and",
        "bitwise_or",
        "square",
    ),
    2: (
        "addcmul",
        "addcmul_",
        "addcdiv",
        "addcdiv_",
        "lerp",
        "lerp_",
        "silu",
        "silu_",
        "leaky_relu",
        "leaky_relu_",
        "leaky_relu_backward",
        "native_dropout",
        "native_dropout_backward",
        "xlogy",
    ),
    3: (
        "tanh_backward",
        "sigmoid_backward",
        "hardsigmoid",
        "hardsigmoid_",
        "hardsigmoid_backward",
        "hardswish_backward",
        "softplus",
        "elu",
        "elu_",
        "elu_backward",
        "logit",
    ),
    4: ("hardswish", "hardswish_", "softplus_backward", "_softmax_backward_data", "_log_softmax_backward_data"),
    5: ("gelu", "gelu_", "mish", "mish_", "_softmax", "_log_softmax", "_safe_softmax"),
    6: ("silu_backward", "mish_backward"),
    8: ("gelu_backward",),
}

_REDUCTIONS: dict[str, tuple[int, int]] = {  # name: (per input element, per output element)
    "sum": (1, 0),
    "nansum": (1, 0),
    "mean": (1, 1),
    "nanmean": (1, 1),
    "prod": (1, 0),
    "amax": (1, 0),
    "amin": (1, 0),
    "max": (1, 0),
    "min": (1, 0),
    "aminmax": (2, 0),
    "argmax": (1, 0),
    "argmin": (1, 0),
    "logsumexp": (3, 1),
    "cumsum": (1, 0),
    "cumprod": (1, 0),
    "norm": (2, 1),
    "linalg_vector_norm": (2, 1),
    "var": (3, 1),
    "std": (3, 2),
    "var_mean": (3, 2),
    "std_mean": (3, 3),
    "_adaptive_avg_pool2d": (1, 1),
    "_adaptive_avg_pool3d": (1, 1),
    "adaptive_max_pool2d": (1, 0),
    "col2im": (1, 0),
    "all": (1, 0),
    "any": (1, 0),  # logical reductions (e.g. deform's finiteness check): one AND/OR each
}

_NORM_NOTE = "per input element: 2 to normalise, +2 with an affine weight, +4 computing batch statistics"
_OTHER: dict[str, tuple[Callable[..., int], str]] = {
    # normalisation layers
    **{
        name: (_norm_forward(None), _NORM_NOTE)
        for name in (
            "native_batch_norm",
            "_native_batch_norm_legit",
            "_native_batch_norm_legit_functional",
            "cudnn_batch_norm",
            "miopen_batch_norm",
        )
    },
    **{
        name: (_norm_forward(False), _NORM_NOTE + " (eval: none)")
        for name in ("_native_batch_norm_legit_no_training", "_batch_norm_no_update")
    },
    **{
        name: (_norm_forward(True), _NORM_NOTE + " (training)")
        for name in ("_batch_norm_with_update", "_batch_norm_with_update_functional", "native_group_norm")
    },
    **{name: (_norm_forward(True, weight_index=2), _NORM_NOTE) for name in ("native_layer_norm", "_fused_rms_norm")},
    **{
        name: (_per_largest_of_first_two(9), "9 per input element")
        for name in (
            "native_batch_norm_backward",
            "batch_norm_backward",
            "cudnn_batch_norm_backward",
            "miopen_batch_norm_backward",
            "native_layer_norm_backward",
            "native_group_norm_backward",
            "_fused_rms_norm_backward",
        )
    },
    # pooling
    **{
        name: (_pool_forward, "kh·kw per output element")
        for name in ("max_pool2d", "max_pool2d_with_indices", "mkldnn_max_pool2d", "avg_pool2d")
    },
    "max_pool2d_with_indices_backward": (_per_input(1), "1 per grad_output element (scatter-add)"),
    "avg_pool2d_backward": (_avg_pool_backward, "kh·kw + 1 per grad_output element"),
    "_adaptive_avg_pool2d_backward": (_per_largest_of_first_two(1), "1 per input element"),
    "adaptive_max_pool2d_backward": (_per_input(1), "1 per grad_output element (scatter-add)"),
    # resampling
    "upsample_bilinear2d": (_per_output(BILINEAR_VALUE_FLOPS), "7 per output element"),
    "upsample_bilinear2d_backward": (_per_input(8), "8 per grad_output element"),
    "upsample_bicubic2d": (_per_output(35), "35 per output element (separable 4-tap cubic)"),
    "upsample_bicubic2d_backward": (_per_input(32), "32 per grad_output element"),
    "_upsample_bilinear2d_aa": (_aa_upsample, "separable antialiased filter: 2 per tap per pass"),
    "upsample_nearest2d_backward": (_per_input(1), "1 per grad_output element (scatter-add)"),
    "_upsample_nearest_exact2d_backward": (_per_input(1), "1 per grad_output element (scatter-add)"),
    **{
        name: (
            _grid_sampler,
            "bilinear: 7 per output element + 10 per location; nearest: 6 per location; bicubic (estimate): 35 + 50",
        )
        for name in ("grid_sampler_2d", "cudnn_grid_sampler")
    },
    "grid_sampler_2d_backward": (
        _grid_sampler_backward,
        "estimate, bilinear: 26 per grad_output element + 10 per location",
    ),
    # scatter-adds
    **{
        name: (_sum_to, "1 per element added back from the padding")
        for name in (
            "replication_pad1d_backward",
            "replication_pad2d_backward",
            "replication_pad3d_backward",
            "reflection_pad1d_backward",
            "reflection_pad2d_backward",
            "reflection_pad3d_backward",
        )
    },
    **{
        name: (_index_add, "1 per source element")
        for name in ("index_add", "index_add_", "scatter_add", "scatter_add_")
    },
    **{
        name: (_index_put, "1 per value with accumulate=True, else 0")
        for name in ("index_put", "index_put_", "_index_put_impl_")
    },
    "embedding_dense_backward": (_per_input(1), "1 per grad_output element (scatter-add)"),
    # linear algebra PyTorch leaves out
    **{
        name: (_addmm_inplace, "2 per multiply-add of the matrix product (as PyTorch's addmm/baddbmm)")
        for name in ("addmm_", "baddbmm_", "addbmm", "addbmm_")
    },
    "mv": (_mv, "2 per matrix element"),
    "addmv": (_mv, "2 per matrix element"),
    "dot": (_dot, "2 per element"),
    "vdot": (_dot, "2 per element"),
    "_scaled_dot_product_flash_attention_for_cpu": (_sdpa_cpu, "PyTorch's SDPA formula"),
    "_scaled_dot_product_flash_attention_for_cpu_backward": (_sdpa_cpu_backward, "PyTorch's SDPA backward formula"),
}

#: Executed but deliberately 0 FLOPs: data movement, allocation, views.
FREE_OPS: tuple[str, ...] = (
    # views and reshapes
    "view",
    "_unsafe_view",
    "reshape",
    "_reshape_alias",
    "view_as",
    "expand",
    "expand_as",
    "permute",
    "transpose",
    "transpose_",
    "t",
    "t_",
    "unsqueeze",
    "unsqueeze_",
    "squeeze",
    "squeeze_",
    "slice",
    "select",
    "narrow",
    "as_strided",
    "as_strided_",
    "unfold",
    "split",
    "split_with_sizes",
    "chunk",
    "unbind",
    "flatten",
    "unflatten",
    "movedim",
    "diagonal",
    "alias",
    "detach",
    "detach_",
    "lift_fresh",
    "view_as_real",
    "view_as_complex",
    "_conj",
    "_neg_view",
    "resolve_conj",
    "resolve_neg",
    # copies and casts
    "clone",
    "contiguous",
    "copy_",
    "copy",
    "_to_copy",
    "to",
    "_copy_from",
    "_copy_from_and_resize",
    "lift_fresh_copy",
    "_local_scalar_dense",
    "set_",
    "resize_",
    "_assert_tensor_metadata",
    # allocation and filling
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "zeros",
    "zeros_like",
    "new_zeros",
    "ones",
    "ones_like",
    "new_ones",
    "full",
    "full_like",
    "new_full",
    "fill",
    "fill_",
    "zero_",
    "scalar_tensor",
    "arange",
    "linspace",
    "eye",
    "tensor",
    # random numbers (generation, not arithmetic on data)
    "bernoulli",
    "bernoulli_",
    "uniform_",
    "normal_",
    "random_",
    "rand",
    "randn",
    "randint",
    "randperm",
    "rand_like",
    "randn_like",
    "exponential_",
    # concatenation, padding, reordering, selection, indexing
    "cat",
    "stack",
    "flip",
    "roll",
    "repeat",
    "constant_pad_nd",
    "replication_pad1d",
    "replication_pad2d",
    "replication_pad3d",
    "reflection_pad1d",
    "reflection_pad2d",
    "reflection_pad3d",
    "slice_backward",
    "select_backward",
    "slice_scatter",
    "select_scatter",
    "as_strided_scatter",
    "index",
    "index_select",
    "gather",
    "take",
    "masked_select",
    "masked_fill",
    "masked_fill_",
    "where",
    "scatter",
    "scatter_",
    "embedding",
    "pixel_shuffle",
    "pixel_unshuffle",
    "channel_shuffle",
    # the unfold (k² copies of the input: data movement, its cost is memory) and nearest resampling
    "im2col",
    "upsample_nearest1d",
    "upsample_nearest2d",
    "upsample_nearest3d",
    "_upsample_nearest_exact1d",
    "_upsample_nearest_exact2d",
    "_upsample_nearest_exact3d",
)


def _packet(namespace: Any, name: str):
    packet = getattr(namespace, name, None)
    return packet if isinstance(packet, torch._ops.OpOverloadPacket) else None


def _build_formulas() -> tuple[dict[Any, Callable[..., int]], dict[str, str]]:
    formulas: dict[Any, Callable[..., int]] = {}
    notes: dict[str, str] = {}

    def add(name: str, formula: Callable[..., int], note: str, namespace=aten, override: bool = False) -> None:
        packet = _packet(namespace, name)
        if packet is None or (packet in flop_registry and not override):  # absent, or PyTorch counts it
            return
        formulas[packet] = formula
        notes[str(packet)] = note

    for factor, names in _POINTWISE.items():
        for name in names:
            add(name, _per_output(factor), f"{factor} per output element")
    for name, (per_in, per_out) in _REDUCTIONS.items():
        note = f"{per_in} per input element" + (f" + {per_out} per output element" if per_out else "")
        add(name, _per_input(per_in, per_out), note)
    for name, (formula, note) in _OTHER.items():
        add(name, formula, note)
    add(
        "convolution_backward",
        _conv_backward,
        "2 × forward conv FLOPs per requested gradient (input, weight), groups-aware (replaces PyTorch's)",
        override=True,
    )
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision.*)

        tv = torch.ops.torchvision
        add(
            "deform_conv2d",
            _deform_forward,
            "conv 2·B·O·(C/g)·k²·H'W' + 7 per sampled value (+1 with mask) + 10 per sampling location",
            tv,
        )
        add(
            "_deform_conv2d_backward",
            _deform_backward,
            "estimate: 2 × conv + 33 per sampled value (+4 with mask) + 10 per sampling location",
            tv,
        )
    except Exception as exc:  # torchvision missing or broken: its ops will show up as uncounted
        log.debug("flops: torchvision formulas not registered: %s", exc)
    return formulas, notes


CUSTOM_FORMULAS, _NOTES = _build_formulas()
_FREE_PACKETS = frozenset(p for p in (_packet(aten, n) for n in FREE_OPS) if p is not None)
_FREE_PACKETS = _FREE_PACKETS | frozenset(
    p for p in (_packet(torch.ops.prim, n) for n in ("device", "layout")) if p is not None
)


def formula_notes() -> dict[str, str]:
    """The formula of every op counted by adaptconv's own formulas (PyTorch's are not listed)."""
    return dict(_NOTES)


def free_op_names() -> list[str]:
    """The ops treated as 0 FLOPs by decision (data movement, views, allocation)."""
    return sorted(str(p) for p in _FREE_PACKETS)


# --------------------------------------------------------------------------------------------------
@dataclass
class FlopReport:
    """FLOPs of one forward (``mode="inference"``) or forward + backward (``mode="training"``) pass.

    - ``flops`` (FLOP, multiply-add = 2) and ``macs`` (= flops / 2; for non-multiply-add ops this
      halving is a convention, not a count of multiply-adds).
    - ``by_op``: FLOPs per op (``aten.convolution`` …), largest first.
    - ``by_module``: FLOPs per top-level child module (PyTorch's ModuleTracker attribution; in training
      mode the backward's attribution is best-effort) and ``"(rest)"``: the parent's own ops.
    - ``op_calls``: every op that executed (overload name → calls); ``free_ops`` the ones that are
      0 FLOPs by decision; ``uncounted_ops`` the ones with no formula (then ``complete`` is False and
      ``flops`` is a lower bound).
    """

    flops: int
    macs: float
    mode: str
    by_op: dict[str, int]
    by_module: dict[str, int]
    op_calls: dict[str, int]
    free_ops: dict[str, int]
    uncounted_ops: dict[str, int]
    device: str = "cpu"
    units: dict[str, str] = field(default_factory=lambda: {"flops": FLOP_UNIT, "macs": MAC_UNIT})

    @property
    def complete(self) -> bool:
        """True when every executed op had a formula or is free by decision."""
        return not self.uncounted_ops

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["complete"] = self.complete
        return d


@dataclass
class ParameterCount:
    total: int
    trainable: int
    buffers: int  # elements in buffers (running statistics, fixed bases …), not parameters

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["non_trainable"] = self.non_trainable
        return d


def count_parameters(model: torch.nn.Module) -> ParameterCount:
    """Parameter elements (shared parameters counted once), trainable ones, and buffer elements."""
    params = list(model.parameters())
    return ParameterCount(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        buffers=sum(b.numel() for b in model.buffers()),
    )


class _OpRecorder(TorchDispatchMode):
    """Counts every op that reaches the kernels (below FlopCounterMode, after its decompositions)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[Any] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func] += 1
        return func(*args, **(kwargs or {}))


def _is_compiled(model: Any) -> bool:
    if getattr(getattr(model, "forward", None), "_torchdynamo_orig_callable", None) is not None:
        return True
    modules = model.modules() if isinstance(model, torch.nn.Module) else [model]
    return any(hasattr(m, "_orig_mod") or type(m).__name__ == "OptimizedModule" for m in modules)


def _grad_targets(model: torch.nn.Module, inputs: Any) -> list[torch.Tensor]:
    targets = [p for p in model.parameters() if p.requires_grad]
    targets += [t for t in torch.utils._pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    return targets


def count_flops(model: torch.nn.Module, inputs: Any, *, mode: str = "inference") -> FlopReport:
    """Count the FLOPs of ``model`` on ``inputs`` (a tensor, a tuple of positional arguments, or a
    dict of keyword arguments) by running it once, eagerly.

    ``mode="inference"``: one forward in eval mode under ``torch.no_grad``.
    ``mode="training"``: one forward in train mode and the backward to every trainable parameter
    (and every input that requires grad), seeded with a gradient of ones; the optimizer step is not
    included. Gradients are computed for what requires grad: give the input ``requires_grad=True``
    to count a layer as it runs inside a network (its input gradient included), leave it off for a
    first layer. ``.grad`` fields are left as they were; buffers (BatchNorm running
    statistics) and the train/eval flags are restored afterwards.

    What can be seen: every op that goes through PyTorch's dispatcher (aten, torchvision, any
    ``torch.library`` custom op — listed as uncounted until it has a formula; operator authors
    register one with ``torch.utils.flop_counter.register_flop_formula``). A kernel launched directly
    from Python (a raw Triton or CUDA-extension call, a ctypes call into a compiled library) bypasses
    the dispatcher and is invisible to any dispatch-level counter. So the count runs with adaptconv's
    compiled CPU kernels off (``config.override(cpu_kernels=False)``: the operators then compute the
    same maths with PyTorch ops; with them on, the sampling and filtering inside those kernels went
    uncounted, 3–60% of an operator's FLOPs); FLOPs are device-independent, so count on the CPU when a
    CUDA path uses such kernels (``FlopReport.device`` records where the count ran).

    Refuses a ``torch.compile``'d module: compiled graphs fuse and decompose ops differently, and the
    count must describe the model, not a compiler's rewriting of it.
    """
    if mode not in ("inference", "training"):
        raise ValueError(f"count_flops: mode must be 'inference' or 'training', got {mode!r}")
    if _is_compiled(model):
        raise TypeError(
            "count_flops: got a torch.compile'd module (OptimizedModule or compiled forward); count FLOPs "
            "on the eager module instead (the original is model._orig_mod)"
        )
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"count_flops: model must be an nn.Module, got {type(model).__name__}")

    flags = {m: m.training for m in model.modules()}
    saved_buffers = {name: b.detach().clone() for name, b in model.named_buffers()} if mode == "training" else {}
    saved_grads: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False, custom_mapping=CUSTOM_FORMULAS)
    # the compiled CPU kernels are ctypes calls the counter cannot see (see above)
    with ops_config.override(cpu_kernels=False):
        try:
            if mode == "inference":
                model.eval()
                with torch.no_grad(), recorder, counter:
                    call_model(model, inputs)
            else:
                model.train()
                targets = _grad_targets(model, inputs)
                if not targets:
                    raise ValueError(
                        "count_flops(mode='training'): nothing requires grad (no trainable parameters "
                        "and no input with requires_grad)"
                    )
                saved_grads = [(t, t.grad) for t in targets]
                for t in targets:
                    t.grad = None
                with torch.enable_grad(), recorder, counter:
                    output = call_model(model, inputs)
                    outs = [
                        t
                        for t in torch.utils._pytree.tree_leaves(output)
                        if isinstance(t, torch.Tensor) and t.requires_grad
                    ]
                    if not outs:
                        raise ValueError(
                            "count_flops(mode='training'): the output does not depend on anything that requires grad"
                        )
                    # backward(inputs=...) rather than autograd.grad: the module tracker's backward hooks
                    # do not support autograd.grad with leaf inputs. The .grad fields it fills are restored.
                    torch.autograd.backward(outs, grad_tensors=[torch.ones_like(t) for t in outs], inputs=targets)
        finally:
            for t, g in saved_grads:
                t.grad = g
            for m, training in flags.items():
                m.training = training
            if saved_buffers:
                with torch.no_grad():
                    for name, b in model.named_buffers():
                        if name in saved_buffers:
                            b.copy_(saved_buffers[name])

    counts = counter.get_flop_counts()
    global_counts = counts.get("Global", {})
    by_op = {str(k): int(v) for k, v in sorted(global_counts.items(), key=lambda kv: -kv[1])}
    total = int(sum(global_counts.values()))

    root = type(model).__name__
    by_module: dict[str, int] = {}
    for name, _ in model.named_children():
        key = f"{root}.{name}"
        if key in counts:
            by_module[name] = int(sum(counts[key].values()))
    if by_module:
        by_module["(rest)"] = total - sum(by_module.values())

    op_calls: dict[str, int] = {}
    free: Counter[str] = Counter()
    uncounted: Counter[str] = Counter()
    for func, n in recorder.calls.items():
        name = str(func)
        op_calls[name] = op_calls.get(name, 0) + n
        packet = getattr(func, "_overloadpacket", func)
        if packet in counter.flop_registry:
            continue
        if packet in _FREE_PACKETS:
            free[name] += n
        else:
            uncounted[name] += n
    if uncounted:
        log.warning(
            "count_flops: %d op(s) executed without a FLOP formula and counted 0: %s",
            len(uncounted),
            ", ".join(sorted(uncounted)),
        )
    return FlopReport(
        flops=total,
        macs=total / 2,
        mode=mode,
        by_op=by_op,
        by_module=by_module,
        op_calls=dict(sorted(op_calls.items())),
        free_ops=dict(sorted(free.items())),
        uncounted_ops=dict(sorted(uncounted.items())),
        device=_device_of(model, inputs),
    )


def _device_of(model: torch.nn.Module, inputs: Any) -> str:
    for t in list(model.parameters()) + [
        x for x in torch.utils._pytree.tree_leaves(inputs) if isinstance(x, torch.Tensor)
    ]:
        return str(t.device.type)
    return "cpu"
