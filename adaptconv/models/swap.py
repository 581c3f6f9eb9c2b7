"""Hot-swapping: replace chosen ``nn.Conv2d`` layers of any model by an adaptive operator.

Each selected conv is rebuilt with ``OpClass.from_conv(conv, **options)``, so trained (or pretrained)
weights are kept and function-preserving operators leave the model's output unchanged at the swap.

Selection (all given criteria must hold):

- ``pattern``: glob(s) on the module name (``"layer4.*"``, ``["stages.2.*", "stages.3.*"]``);
  ``exclude``: glob(s) that remove matches.
- ``stages``: network stages by output stride. When the model has timm's ``feature_info``, stage *i*
  is its *i*-th entry (resnet: 0 = stem, 1…4 = layer1…layer4; convnext: 0…3 = stages.0…3) and a conv
  belongs to the stage whose reduction equals the conv's output reduction. Without ``feature_info``
  stage = log2(output reduction) − 1.
- ``kernel_sizes`` and ``strides``: allowed values (square kernels/strides compare on their first
  element). By default 1×1 convs are left alone (``include_pointwise=False``): content-adaptive
  filtering is about spatial kernels.

Guides: ``guide="self"`` — each layer adapts to its own input. ``guide="image"`` — the network's input
image drives every swapped layer, resized (antialiased bilinear) to the layer's input resolution: the
joint-filtering use of PAC. A pre-forward hook on the model records the image.

Only plain ``nn.Conv2d`` modules are candidates: subclasses with their own forward (timm's
``Conv2dSame``, ``StdConv2d``, …) would change behaviour if rebuilt, so they are reported as skipped.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..ops import AdaptiveConv2d, get_op, resize_guide

GuideSource = Literal["self", "image"]


class SwapError(ValueError):
    """A selection that matches nothing, or an operator/guide combination that cannot work."""


@dataclass
class ConvSelection:
    pattern: str | list[str] | None = None
    exclude: str | list[str] | None = None
    stages: list[int] | None = None
    kernel_sizes: list[int] | None = None
    strides: list[int] | None = None
    include_pointwise: bool = False

    @classmethod
    def from_any(cls, select: ConvSelection | dict | str | None) -> ConvSelection:
        if select is None:
            return cls()
        if isinstance(select, ConvSelection):
            return select
        if isinstance(select, str):
            return cls(pattern=select)
        if isinstance(select, dict):
            unknown = set(select) - set(cls.__dataclass_fields__)
            if unknown:
                raise SwapError(
                    f"unknown selection keys {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}"
                )
            return cls(**select)
        raise SwapError(f"select must be a ConvSelection, a dict, a glob string or None, got {type(select).__name__}")

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in asdict(self).items() if v not in (None, False)]
        return ", ".join(parts) or "every spatial nn.Conv2d"


@dataclass
class SwapRecord:
    """One replaced layer."""

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    stage: int | None
    params_before: int
    params_after: int
    op: str
    guide: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _globs(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise SwapError("the model has no nn.Conv2d")


def conv_stages(model: nn.Module, example_inputs: tuple | None = None, probe_size: int = 64) -> dict[str, int | None]:
    """Stage index of every nn.Conv2d (see the module docstring), from one probe forward pass on
    ``example_inputs`` (default: one zero image of ``probe_size``², for single-input models)."""
    # Output stride of each conv relative to the input of the first conv that runs (the image as the
    # convolutions see it, after any resizing the model does first).
    reductions: dict[str, float] = {}
    first: list[int] = []
    hooks = []

    def record(mod, inp, out, name):
        if not first:
            first.append(inp[0].shape[-1])
        reductions[name] = first[0] / out.shape[-1]

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: record(mod, inp, out, name)))
    was_training = model.training
    try:
        model.eval()
        if example_inputs is None:
            param = next(model.parameters())
            example_inputs = (
                torch.zeros(1, _input_channels(model), probe_size, probe_size, device=param.device, dtype=param.dtype),
            )
        with torch.no_grad():
            model(*example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    # timm's stage table, on the model or on its backbone (task networks wrap one)
    info = getattr(model, "feature_info", None) or getattr(getattr(model, "backbone", None), "feature_info", None)
    table: dict[int, int] = {}
    if info is not None:
        entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        for i, entry in enumerate(entries):
            table.setdefault(int(entry["reduction"]), i)
    stages: dict[str, int | None] = {}
    for name, r in reductions.items():
        if table:
            stages[name] = table.get(int(round(r)))
        else:
            stages[name] = int(round(math.log2(r))) - 1 if r >= 1 else None
    return stages


def select_convs(
    model: nn.Module, select: ConvSelection | dict | str | None = None, example_inputs: tuple | None = None
) -> list[tuple[str, nn.Conv2d, int | None]]:
    """The (name, conv, stage) triples a selection matches, in module order."""
    sel = ConvSelection.from_any(select)
    include, exclude = _globs(sel.pattern), _globs(sel.exclude)
    try:
        stages = conv_stages(model, example_inputs)
    except Exception as exc:
        if sel.stages is not None:
            raise SwapError(
                f"cannot tell the stages of {type(model).__name__} from a probe forward pass ({exc}); "
                "pass example_inputs"
            ) from exc
        stages = {}
    chosen = []
    for name, m in model.named_modules():
        if type(m) is not nn.Conv2d:
            continue
        if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in exclude):
            continue
        if m.kernel_size == (1, 1) and not sel.include_pointwise and not (sel.kernel_sizes and 1 in sel.kernel_sizes):
            continue
        if sel.kernel_sizes is not None and m.kernel_size[0] not in sel.kernel_sizes:
            continue
        if sel.strides is not None and m.stride[0] not in sel.strides:
            continue
        stage = stages.get(name)
        if sel.stages is not None and stage not in sel.stages:
            continue
        chosen.append((name, m, stage))
    return chosen


class ImageGuide:
    """Holds the current input image of a model for the layers guided by it."""

    def __init__(self) -> None:
        self.image: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> None:  # forward pre-hook
        self.image = args[0] if args else None


class ImageGuidedConv(nn.Module):
    """An operator driven by the network's input image, resized to the layer's input resolution."""

    def __init__(self, op: AdaptiveConv2d, source: ImageGuide) -> None:
        super().__init__()
        self.op = op
        self._source = [source]  # a list, so the shared hook object is not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = self._source[0].image
        if image is None:
            raise RuntimeError("image-guided layer called outside its model's forward (no input image recorded)")
        return self.op(x, resize_guide(image.to(x.dtype), tuple(x.shape[-2:])))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def swap_convs(
    model: nn.Module,
    op: str,
    select: ConvSelection | dict | str | None = None,
    guide: GuideSource = "self",
    *,
    image_channels: int | None = None,
    example_inputs: tuple | None = None,
    **options: Any,
) -> list[SwapRecord]:
    """Replace the selected ``nn.Conv2d`` layers of ``model`` (in place) by operator ``op``.

    Returns what was swapped. Raises :class:`SwapError` when the selection matches nothing or the
    operator cannot take the requested guide.
    """
    cls = get_op(op)
    kind = getattr(cls, "kind", "conv")
    if kind != "conv":
        raise SwapError(
            f"operator {op!r} is of kind {kind!r}, not a convolution: it cannot replace an nn.Conv2d "
            f"(only operators of kind 'conv' are hot-swapped; tasks take the other kinds as options, "
            "e.g. task_options.upsampler=carafe, task_options.crf=paccrf)"
        )
    if guide not in ("self", "image"):
        raise SwapError(f"guide must be 'self' or 'image', got {guide!r}")
    if guide == "image" and cls.guide == "none":
        raise SwapError(f"operator {op!r} takes no guide, so guide='image' cannot apply; use guide='self'")
    if guide == "self" and cls.guide == "required":
        raise SwapError(f"operator {op!r} needs an external guide; use guide='image'")
    sel = ConvSelection.from_any(select)
    chosen = select_convs(model, sel, example_inputs)
    if not chosen:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        raise SwapError(
            f"selection ({sel.describe()}) matches no nn.Conv2d of {type(model).__name__}; "
            f"it has {len(convs)} convs, e.g. {convs[:6]}"
        )
    source = None
    if guide == "image":
        image_channels = image_channels or _input_channels(model)
        source = getattr(model, "_adaptconv_image_guide", None)
        if source is None:
            source = ImageGuide()
            model.register_forward_pre_hook(source)
            model._adaptconv_image_guide = source
        options = dict(options, guide_channels=image_channels)
    records = []
    for name, conv, stage in chosen:
        if op == "conv" and not options:
            # The baseline stays a true nn.Conv2d (same kernels, same speed); record what it covers.
            records.append(
                SwapRecord(
                    name,
                    conv.in_channels,
                    conv.out_channels,
                    tuple(conv.kernel_size),
                    tuple(conv.stride),
                    conv.groups,
                    stage,
                    _params(conv),
                    _params(conv),
                    op,
                    guide,
                )
            )
            continue
        new = cls.from_conv(conv, **options)
        new.train(conv.training)
        layer = ImageGuidedConv(new, source) if source is not None else new
        _set_submodule(model, name, layer)
        records.append(
            SwapRecord(
                name,
                conv.in_channels,
                conv.out_channels,
                tuple(conv.kernel_size),
                tuple(conv.stride),
                conv.groups,
                stage,
                _params(conv),
                _params(new),
                op,
                guide,
            )
        )
    return records


def swap_summary(records: Sequence[SwapRecord]) -> dict[str, Any]:
    """Totals for a trial record: layers swapped and parameters before/after."""
    return {
        "layers": len(records),
        "params_before": sum(r.params_before for r in records),
        "params_after": sum(r.params_after for r in records),
        "names": [r.name for r in records],
    }
