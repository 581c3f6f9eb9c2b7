"""The common interface of every content-adaptive convolution in adaptconv.

An operator is an :class:`AdaptiveConv2d`: constructed with ``nn.Conv2d``'s arguments (plus its own
keyword options), called as ``op(x, guide=None)``, and returning a tensor of exactly the shape
``nn.Conv2d`` would return for the same arguments.

Guides
------
``guide_channels=None`` builds a *self-guided* operator: it adapts to its own input ``x`` and calling
it with a guide is an error.  ``guide_channels=Cg`` builds a *guided* operator whose adaptive part
reads a ``B×Cg×H×W`` guide **at the input's resolution** (same H×W as ``x``).  A guide at another
resolution is rejected with an error naming both shapes; resize it first (see :func:`resize_guide`),
which is what the hot-swapping layer does for image guides.

Subclasses implement :meth:`adaptive_forward`; :meth:`forward` validates the inputs first so every
operator, built-in or plugin, gives the same clear errors.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .taps import conv_output_size, pair

GuideNeed = Literal["none", "optional", "required"]
#: What an operator is: a drop-in ``nn.Conv2d`` (hot-swappable), a content-aware upsampler, or a
#: refinement head (input and output of the same shape, e.g. mean-field CRF over logits).
OpKind = Literal["conv", "upsampler", "refiner"]
OP_KINDS: tuple[str, ...] = ("conv", "upsampler", "refiner")

#: The ``nn.Conv2d`` arguments an operator may declare support for (besides in/out/kernel_size).
CONV_ARGS = ("stride", "padding", "dilation", "groups", "bias")


class OperatorBase(nn.Module):
    """What every operator shares, whatever its kind.

    - ``device=`` and ``dtype=`` constructor arguments, as ``nn.Conv2d`` and timm's layers take: every
      subclass's ``__init__`` gets them from :meth:`__init_subclass__`, which runs the constructor with
      ``device`` as the default device (parameters and buffers are created there, not on the CPU and
      moved) and casts the floating-point parameters and buffers to ``dtype`` afterwards. An operator's
      author writes neither.
    - :meth:`on_train_step`, the hook of the training loop.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _with_factory_kwargs(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def on_train_step(self, step: int, total: int) -> None:
        """Called by the training loop (:func:`adaptconv.run_trial`) before optimiser step ``step``
        (0-based) of ``total``: where an operator keeps a schedule of its own (dynamic convolution anneals
        its softmax temperature over the first part of training). Nothing by default; a loop of your own
        calls :func:`notify_train_step`."""


#: the constructor arguments every operator takes besides its own (``nn.Conv2d``'s factory arguments)
FACTORY_KWARGS = ("device", "dtype")


def _with_factory_kwargs(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` taking ``device=`` and ``dtype=`` too (see :class:`OperatorBase`). A subclass's
    ``super().__init__(...)`` reaches the parent's wrapper without them, inside the outer call's device."""

    @functools.wraps(init)
    def __init__(self, *args: Any, device: Any = None, dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            label = type(self).name or type(self).__name__
            raise ValueError(f"{label}: dtype must be a floating-point torch.dtype, got {dtype!r}")
        with torch.device(device) if device is not None else contextlib.nullcontext():
            init(self, *args, **kwargs)
        if dtype is not None:
            self.to(dtype=dtype)

    params = list(inspect.signature(init).parameters.values())
    tail = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    head = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in FACTORY_KWARGS]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in FACTORY_KWARGS]
    __init__.__signature__ = inspect.Signature(head + extra + tail)  # type: ignore[attr-defined]
    return __init__


def notify_train_step(model: nn.Module, step: int, total: int) -> None:
    """Call :meth:`OperatorBase.on_train_step` on every operator in ``model``."""
    for module in model.modules():
        if isinstance(module, OperatorBase):
            module.on_train_step(step, total)


class AdaptiveConv2d(OperatorBase):
    """Base class of all operators: a drop-in replacement for ``nn.Conv2d``.

    Class metadata (set by subclasses; ``name`` is filled in by :func:`adaptconv.register_op`):

    - ``name``: registry name.
    - ``paper``: short citation of the method.
    - ``guide``: ``"none"`` (cannot take a guide), ``"optional"`` (self-guided unless built with
      ``guide_channels``) or ``"required"`` (must be built with ``guide_channels``).
    - ``supports``: which of ``stride, padding, dilation, groups, bias`` the operator implements.
      A non-default value of anything else raises at construction.
    - ``function_preserving``: whether :meth:`from_conv` reproduces the conv's function exactly.
    - ``from_conv_note``: one line on what :meth:`from_conv` does for this operator.
    - ``kind``: ``"conv"`` (non-conv kinds derive from :class:`AdaptiveModule`).
    """

    kind: ClassVar[OpKind] = "conv"
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    guide: ClassVar[GuideNeed] = "optional"
    supports: ClassVar[frozenset[str]] = frozenset(CONV_ARGS)
    function_preserving: ClassVar[bool] = False
    from_conv_note: ClassVar[str] = ""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        guide_channels: int | None = None,
        device: Any = None,  # device and dtype are taken by OperatorBase's wrapper before this runs:
        dtype: torch.dtype | None = None,  # named here for readers and type checkers
    ) -> None:
        super().__init__()
        label = type(self).name or type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{label}: {arg} must be a positive int, got {value!r}")
        self.kernel_size = pair(kernel_size, "kernel_size", label, minimum=1)
        self.stride = pair(stride, "stride", label, minimum=1)
        self.dilation = pair(dilation, "dilation", label, minimum=1)
        self.padding = _resolve_padding(padding, self.kernel_size, self.stride, self.dilation, label)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{label}: in_channels={in_channels} and out_channels={out_channels} must both be "
                f"divisible by groups={groups}"
            )
        given = {
            "stride": self.stride != (1, 1),
            "padding": self.padding != (0, 0),
            "dilation": self.dilation != (1, 1),
            "groups": groups != 1,
            "bias": bool(bias),
        }
        unsupported = [a for a, used in given.items() if used and a not in self.supports]
        if unsupported:
            shown = {
                "stride": self.stride,
                "padding": self.padding,
                "dilation": self.dilation,
                "groups": groups,
                "bias": bias,
            }
            bad = ", ".join(f"{a}={shown[a]}" for a in unsupported)
            raise ValueError(
                f"{label} does not support {bad}; it supports: {', '.join(sorted(self.supports)) or 'none'} "
                "(an unsupported argument is refused rather than silently ignored)"
            )
        check_guide_channels(label, self.guide, guide_channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.guide_channels = guide_channels
        self.has_bias = bool(bias)

    # ----------------------------------------------------------------------------------------------
    # Geometry shared by every operator
    @property
    def adapt_channels(self) -> int:
        """Channels the adaptive branch reads: the guide's if guided, else the input's."""
        return self.guide_channels if self.guide_channels is not None else self.in_channels

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an input of ``height×width`` (nn.Conv2d's formula)."""
        return conv_output_size((height, width), self.kernel_size, self.stride, self.padding, self.dilation)

    # ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        guide = self.check_inputs(x, guide)
        try:
            return self.adaptive_forward(x, guide)
        except (RuntimeError, NotImplementedError) as exc:
            # Kernels missing for a dtype on a device (e.g. bf16 deformable sampling on the CPU) raise
            # cryptic messages; say which operator, dtype and device it was.
            if "not implemented for" in str(exc) or "Could not run" in str(exc):
                raise TypeError(
                    f"{self.name or type(self).__name__}: dtype {x.dtype} is not supported on device "
                    f"{x.device.type} by an underlying kernel ({str(exc).splitlines()[0]})"
                ) from exc
            raise

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Compute the output. ``guide`` is the validated guide, or ``x`` itself when self-guided."""
        raise NotImplementedError

    def check_inputs(self, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        """Validate ``x`` and ``guide``; return the tensor the adaptive branch should read."""
        label = self.name or type(self).__name__
        check_input_tensor(label, x, self.in_channels)
        check_input_dtype(label, self, x)
        eff = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size)]
        if any(n + 2 * p < e for n, p, e in zip(x.shape[2:], self.padding, eff)):
            raise ValueError(
                f"{label}: input of spatial size {tuple(x.shape[2:])} with padding {self.padding} is smaller "
                f"than the dilated kernel {tuple(eff)}"
            )
        if guide is None:
            if self.guide_channels is not None:
                raise ValueError(
                    f"{label} was built with guide_channels={self.guide_channels} and needs a guide: "
                    f"call it as op(x, guide) with a B×{self.guide_channels}×{x.shape[2]}×{x.shape[3]} tensor"
                )
            return x
        if self.guide_channels is None:
            raise ValueError(
                f"{label} was built self-guided (guide_channels=None) but got a guide of shape "
                f"{tuple(guide.shape)}; build it with guide_channels={guide.shape[1] if guide.dim() == 4 else '?'}"
            )
        check_guide_tensor(label, x, guide, self.guide_channels)
        return guide

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def conv_kwargs(cls, conv: nn.Conv2d) -> dict[str, Any]:
        """The constructor arguments that reproduce ``conv``'s geometry."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{cls.name or cls.__name__}.from_conv expects an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"{cls.name or cls.__name__}.from_conv: padding_mode={conv.padding_mode!r} is not supported "
                "(only zero padding)"
            )
        return dict(
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )

    @classmethod
    def build_like(cls, conv: nn.Conv2d, **options: Any) -> AdaptiveConv2d:
        """A new operator with ``conv``'s geometry, in its dtype (so weights copied afterwards keep their
        full precision) and on its device. It is initialised on the CPU and then moved, as the task
        networks are: a trial's initial weights come from the CPU generator whatever device it runs on
        (trial ids leave the device out, so the same trial must start from the same weights)."""
        op = cls(**cls.conv_kwargs(conv), **options, device="cpu", dtype=conv.weight.dtype)
        return op.to(device=conv.weight.device)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options: Any) -> AdaptiveConv2d:
        """Build the operator from a trained ``nn.Conv2d``, copying its weights.

        Operators whose maths allow it (``function_preserving``) compute exactly ``conv``'s function
        right after this call; the others copy what they can (see ``from_conv_note``).
        """
        raise NotImplementedError(f"{cls.name or cls.__name__} does not implement from_conv")

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )
        if self.groups != 1:
            s += f", groups={self.groups}"
        if not self.has_bias:
            s += ", bias=False"
        if self.guide_channels is not None:
            s += f", guide_channels={self.guide_channels}"
        return s


class AdaptiveModule(OperatorBase):
    """Base of the operators that are not a drop-in ``nn.Conv2d`` (``kind`` other than ``"conv"``).

    They share :class:`AdaptiveConv2d`'s metadata (``name``, ``paper``, ``guide``, ``from_conv_note``,
    ``function_preserving``) so the registry, ``adaptconv ops`` and ``adaptconv check-op`` treat every
    kind alike, but their constructor and shapes follow their kind:

    - ``"upsampler"``: ``cls(channels, scale_factor=s, **options)``; ``op(x)`` maps B×C×H×W to
      B×C×sH×sW (the shape of nearest upsampling).
    - ``"refiner"``: ``cls(channels, guide_channels=Cg, **options)``; ``op(x, guide)`` maps B×C×H×W
      and a B×Cg×H×W guide to B×C×H×W (``cls(channels)`` and ``op(x)`` for one that takes no guide).

    The tasks build any registered operator of these kinds by name (``task_options.upsampler`` /
    ``task_options.crf``) through these constructors. Their networks also offer settings by keyword,
    given only to a constructor that declares that keyword: ``compressed_channels`` (the width of a
    kernel-predicting branch), ``k_up`` (the odd side of the low-resolution window each output pixel's
    kernel spans), ``init="bilinear"`` and ``init_floor`` (start as bilinear upsampling, other taps at
    that weight) for an upsampler; ``num_iters`` (``task_options.crf_iters``) for a refiner. An
    upsampler that predicts its kernels may expose ``kernel_logits(x)`` (B×k_up²×sH×sW, taps row-major
    over the k_up×k_up low-resolution pixels around each output pixel's own cell, before the softmax):
    the joint upsampling network then uses them as its base kernels.

    They are never hot-swapped for a convolution (:meth:`from_conv` refuses). :meth:`identity_check`
    runs the operator's defining identity for ``check-op``.
    """

    kind: ClassVar[OpKind] = "upsampler"
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    guide: ClassVar[GuideNeed] = "none"
    supports: ClassVar[frozenset[str]] = frozenset()  # no nn.Conv2d arguments
    function_preserving: ClassVar[bool] = False
    from_conv_note: ClassVar[str] = "not a convolution: cannot replace an nn.Conv2d"

    def __init__(
        self,
        channels: int,
        *,
        scale_factor: int = 1,
        guide_channels: int | None = None,
        device: Any = None,  # taken by OperatorBase's wrapper (see AdaptiveConv2d.__init__)
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        label = type(self).name or type(self).__name__
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"{label}: channels must be a positive int, got {channels!r}")
        if not isinstance(scale_factor, int) or isinstance(scale_factor, bool) or scale_factor < 1:
            raise ValueError(f"{label}: scale_factor must be a positive int, got {scale_factor!r}")
        if self.kind != "upsampler" and scale_factor != 1:
            raise ValueError(f"{label} is a {self.kind} and keeps the resolution; drop scale_factor={scale_factor}")
        check_guide_channels(label, self.guide, guide_channels)
        self.in_channels = self.out_channels = channels
        self.scale_factor = scale_factor
        self.guide_channels = guide_channels

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height * self.scale_factor, width * self.scale_factor

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self.adaptive_forward(x, self.check_inputs(x, guide))

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def check_inputs(self, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor | None:
        """Validate ``x`` and ``guide``; return the guide (None for an unguided operator)."""
        label = self.name or type(self).__name__
        check_input_tensor(label, x, self.in_channels)
        check_input_dtype(label, self, x)
        if guide is None:
            if self.guide_channels is not None:
                raise ValueError(
                    f"{label} was built with guide_channels={self.guide_channels} and needs a guide: "
                    f"call it as op(x, guide) with a B×{self.guide_channels}×{x.shape[2]}×{x.shape[3]} tensor"
                )
            return None
        if self.guide_channels is None:
            raise ValueError(f"{label} takes no guide (guide_channels=None) but got one of shape {tuple(guide.shape)}")
        check_guide_tensor(label, x, guide, self.guide_channels)
        return guide

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options: Any) -> AdaptiveModule:
        raise TypeError(
            f"{cls.name or cls.__name__} is an operator of kind {cls.kind!r}, not a convolution: "
            "it cannot be built from an nn.Conv2d"
        )

    @classmethod
    def identity_check(cls) -> str:
        """Check the operator's defining identity; return what was shown, raise AssertionError if it fails."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        s = f"{self.in_channels}"
        if self.scale_factor != 1:
            s += f", scale_factor={self.scale_factor}"
        if self.guide_channels is not None:
            s += f", guide_channels={self.guide_channels}"
        return s


# ---- checks shared by every kind of operator -------------------------------------------------------


def check_guide_channels(label: str, need: str, guide_channels: int | None) -> None:
    """Constructor check of ``guide_channels`` against the operator's ``guide`` need."""
    if guide_channels is not None:
        if need == "none":
            raise ValueError(f"{label} does not adapt to a guide; drop guide_channels={guide_channels}")
        if not isinstance(guide_channels, int) or isinstance(guide_channels, bool) or guide_channels < 1:
            raise ValueError(f"{label}: guide_channels must be a positive int or None, got {guide_channels!r}")
    elif need == "required":
        raise ValueError(f"{label} needs a guide: pass guide_channels=<channels of the guide>")


def check_input_tensor(label: str, x, in_channels: int) -> None:
    """``x`` must be a floating-point B×C×H×W tensor with the channels the operator was built for."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{label}: input must be a B×C×H×W tensor, got shape {shape}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{label}: input has {x.shape[1]} channels (shape {tuple(x.shape)}), "
            f"the layer was built for in_channels={in_channels}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{label}: input must be a floating-point tensor, got {x.dtype}")


def check_input_dtype(label: str, module: nn.Module, x: torch.Tensor) -> None:
    """The input must have the layer's dtype (that of its first floating-point parameter), else the
    kernels fail deep inside with "expected scalar type Double but found Float". Under autocast the
    dtypes differ on purpose (autocast casts per operation), so nothing is checked there."""
    if torch.is_autocast_enabled(x.device.type):
        return
    for p in module.parameters():
        if p.is_floating_point():
            if p.dtype != x.dtype:
                raise TypeError(
                    f"{label}: input dtype {x.dtype} differs from the layer's dtype {p.dtype} (its "
                    f"parameters); convert one of them: layer.to({x.dtype}) or x.to({p.dtype})"
                )
            return


def check_guide_tensor(label: str, x: torch.Tensor, guide: torch.Tensor, guide_channels: int) -> None:
    """A given guide must be B×Cg×H×W at the input's batch size, resolution and dtype."""
    if guide.dim() != 4 or guide.shape[0] != x.shape[0] or guide.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"{label}: guide shape {tuple(guide.shape)} does not match input shape {tuple(x.shape)}: "
            "the guide must be B×Cg×H×W at the input's batch size and resolution "
            "(resize it with adaptconv.resize_guide)"
        )
    if guide.shape[1] != guide_channels:
        raise ValueError(
            f"{label}: guide has {guide.shape[1]} channels (shape {tuple(guide.shape)}), "
            f"the layer was built for guide_channels={guide_channels}"
        )
    if guide.dtype != x.dtype:
        raise TypeError(f"{label}: guide dtype {guide.dtype} differs from input dtype {x.dtype}")


def _resolve_padding(padding, kernel_size, stride, dilation, label) -> tuple[int, int]:
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            totals = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
            if stride != (1, 1) or any(t % 2 for t in totals):
                raise ValueError(
                    f"{label}: padding='same' needs stride 1 and an odd dilated kernel "
                    f"(kernel_size={kernel_size}, dilation={dilation}, stride={stride}); give padding as ints"
                )
            return (totals[0] // 2, totals[1] // 2)
        raise ValueError(f"{label}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    return pair(padding, "padding", label, minimum=0)


def resize_guide(guide: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a guide to ``size`` (H, W) so it can drive a layer at that resolution.

    Downsampling uses antialiasing so a high-resolution image guide is low-passed, not aliased.
    """
    if tuple(guide.shape[-2:]) == tuple(size):
        return guide
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(
            guide,
            size=size,
            mode=mode,
            align_corners=False,
            antialias=size[0] < guide.shape[-2] or size[1] < guide.shape[-1],
        )
    return F.interpolate(guide, size=size, mode=mode)


def kaiming_uniform_(weight: torch.Tensor, fan_in: int) -> None:
    """nn.Conv2d's default weight initialisation (kaiming_uniform with a=sqrt(5))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def conv_bias_init_(bias: torch.Tensor, fan_in: int) -> None:
    """nn.Conv2d's default bias initialisation."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        bias.uniform_(-bound, bound)


class ConvWeightMixin:
    """A spatially shared O×(C/g)×kh×kw weight and an optional bias, initialised like nn.Conv2d."""

    # what the AdaptiveConv2d it is mixed into provides (declared for the type checker)
    kernel_size: tuple[int, int]
    in_channels: int
    out_channels: int
    groups: int
    has_bias: bool
    weight: nn.Parameter
    bias: nn.Parameter | None
    if TYPE_CHECKING:

        def register_parameter(self, name: str, param: nn.Parameter | None) -> None: ...

    def init_conv_weight(self) -> None:
        kh, kw = self.kernel_size
        fan_in = (self.in_channels // self.groups) * kh * kw
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels // self.groups, kh, kw))
        kaiming_uniform_(self.weight, fan_in)
        if self.has_bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels))
            conv_bias_init_(self.bias, fan_in)
        else:
            self.register_parameter("bias", None)

    def copy_conv_weight(self, conv: nn.Conv2d) -> None:
        """Copy ``conv``'s weight and bias (which must have this layer's shapes)."""
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                if self.bias is None:
                    raise ValueError("copy_conv_weight: the conv has a bias and this layer has none")
                self.bias.copy_(conv.bias)


class ChannelMixMixin:
    """For operators that filter each channel on its own (dfn, involution, ddf): an optional 1×1
    projection mixes the channels (needed when in ≠ out, and to hold a conv's channel mixing in
    ``from_conv``) and then carries the bias; without it the bias is added directly."""

    projection: nn.Conv2d | None
    bias: nn.Parameter | None
    if TYPE_CHECKING:

        def register_parameter(self, name: str, param: nn.Parameter | None) -> None: ...

    def init_channel_mix(self, in_channels: int, out_channels: int, groups: int, bias: bool, projection: bool) -> None:
        if projection:
            self.projection = nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=bias)
            self.register_parameter("bias", None)
        else:
            self.projection = None
            self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def mix_channels(self, z: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return self.projection(z)
        return z if self.bias is None else z + self.bias.view(1, -1, 1, 1)


def rank1_kernel_fit(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-1 fit ``W[o, c, :] ≈ P[o, c] · f`` of a conv weight (float64): one shared k×k
    filter ``f`` and a 1×1 projection ``P`` (O×C/g), sign-fixed so that ``f`` sums to ≥ 0."""
    o, cpg, kh, kw = weight.shape
    u, s, vh = torch.linalg.svd(weight.detach().double().reshape(o * cpg, kh * kw), full_matrices=False)
    filt, proj = vh[0], u[:, 0] * s[0]
    if filt.sum() < 0:
        filt, proj = -filt, -proj
    return filt, proj.view(o, cpg, 1, 1)
