"""Conformance checks every operator must pass: the gate behind ``adaptconv check-op``.

Each check builds the operator with small, deterministic inputs and returns a :class:`CheckResult`
(passed, failed with the reason, or skipped with the reason). The checks are generic — they know
nothing of an operator's maths — so a plugin author runs exactly what the built-ins pass.

The checks that apply depend on the operator's ``kind``: convolutions (:data:`CHECKS`) against
``nn.Conv2d``; upsamplers and refiners (:data:`KIND_CHECKS`) against their kind's shape contract
(nearest upsampling's shape; the input's shape), plus the identity the operator declares in
``identity_check``.
"""

from __future__ import annotations

import copy
import itertools
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .base import CONV_ARGS, OP_KINDS, AdaptiveConv2d, AdaptiveModule
from .registry import get_op


@dataclass
class CheckResult:
    name: str
    status: str  # "pass" | "fail" | "skip"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"


class CheckFailed(AssertionError):
    pass


class Skip(Exception):
    pass


GUIDE_CHANNELS = 3


def _supports(cls: type[AdaptiveConv2d], arg: str) -> bool:
    return arg in cls.supports


def _geometry(cls, kernel_size=3, stride=1, padding=1, dilation=1, groups=1, bias=True) -> dict:
    """Conv arguments reduced to what ``cls`` supports (unsupported ones dropped to their default)."""
    geo = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    defaults = dict(stride=1, padding=0, dilation=1, groups=1, bias=False)
    for arg in CONV_ARGS:
        if not _supports(cls, arg):
            geo[arg] = defaults[arg]
    return geo


def _build(cls, cin, cout, guided=False, **geo) -> AdaptiveConv2d:
    if cls.guide == "required":
        guided = True
    kwargs = dict(geo)
    if guided:
        kwargs["guide_channels"] = GUIDE_CHANNELS
    return cls(cin, cout, **kwargs)


def _inputs(op: AdaptiveConv2d, b: int, h: int, w: int, dtype=torch.float32, seed: int = 0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, op.in_channels, h, w, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    guide = None
    if op.guide_channels is not None:
        guide = torch.rand(b, op.guide_channels, h, w, generator=gen, dtype=torch.float64).to(device, dtype)
    return x, guide


def _perturb(op: nn.Module, scale: float = 0.1, seed: int = 1) -> None:
    """Move every parameter off its initialisation so adaptive branches (often zero-initialised)
    really take part in the checks."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in op.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) * scale)


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    _expect(a.shape == b.shape, f"{what}: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    err = (a - b).abs().max().item() if a.numel() else 0.0
    _expect(
        torch.allclose(a, b, atol=atol, rtol=rtol), f"{what}: max abs difference {err:.3g} (atol {atol}, rtol {rtol})"
    )


# --------------------------------------------------------------------------------------------------
# The checks. Each takes the operator class and returns a detail string or raises CheckFailed/Skip.


def check_metadata(cls) -> str:
    _expect(bool(cls.name), "no registry name")
    _expect(bool(cls.paper), "class attribute `paper` is empty")
    _expect(cls.guide in ("none", "optional", "required"), f"guide={cls.guide!r} is not none/optional/required")
    extra = set(cls.supports) - set(CONV_ARGS)
    _expect(not extra, f"supports lists unknown arguments {sorted(extra)}")
    _expect(isinstance(cls.function_preserving, bool), "function_preserving must be a bool")
    return f"guide={cls.guide}, supports={','.join(sorted(cls.supports)) or 'none'}"


def check_unsupported_args_raise(cls) -> str:
    bad = dict(stride=2, padding=1, dilation=2, groups=2, bias=True)
    refused = []
    for arg in CONV_ARGS:
        if _supports(cls, arg):
            continue
        geo = _geometry(cls)
        geo[arg] = bad[arg]
        try:
            _build(cls, 4, 4, **geo)
        except (ValueError, TypeError) as exc:
            _expect(arg in str(exc), f"{arg}={bad[arg]} raised, but the message does not name {arg!r}: {exc}")
            refused.append(arg)
        else:
            raise CheckFailed(f"{arg}={bad[arg]} is not in `supports` but was accepted silently")
    if not refused:
        raise Skip("supports every nn.Conv2d argument")
    return f"refused with a clear error: {', '.join(refused)}"


def check_shapes(cls) -> str:
    n = 0
    grid = itertools.product((1, 3, 5), (1, 2), (0, 1, 2), (1, 2), ((9, 9), (10, 7)))
    for k, s, p, d, (h, w) in grid:
        geo = _geometry(cls, k, s, p, d)
        op = _build(cls, 4, 6, **geo).eval()
        ref = nn.Conv2d(4, 6, geo["kernel_size"], geo["stride"], geo["padding"], geo["dilation"])
        if (h + 2 * geo["padding"] < geo["dilation"] * (k - 1) + 1) or (
            w + 2 * geo["padding"] < geo["dilation"] * (k - 1) + 1
        ):
            continue
        x, guide = _inputs(op, 2, h, w)
        with torch.no_grad():
            y, y_ref = op(x, guide), ref(x)
        _expect(
            y.shape == y_ref.shape,
            f"k={k} stride={geo['stride']} padding={geo['padding']} dilation={geo['dilation']} input {h}×{w}: "
            f"output {tuple(y.shape)}, nn.Conv2d gives {tuple(y_ref.shape)}",
        )
        _expect(bool(torch.isfinite(y).all()), f"non-finite output at k={k} s={s} p={p} d={d} {h}×{w}")
        n += 1
    if _supports(cls, "groups"):
        op = _build(cls, 4, 6, **_geometry(cls, groups=2)).eval()
        x, guide = _inputs(op, 2, 8, 8)
        with torch.no_grad():
            _expect(op(x, guide).shape == (2, 6, 8, 8), "groups=2: wrong output shape")
        n += 1
    return f"{n} geometries match nn.Conv2d"


def as_function_of_everything(op: nn.Module, x: torch.Tensor, guide: torch.Tensor | None = None):
    """``(f, inputs, names)``: the operator as a function of its input, its guide (if any) and every
    trainable parameter, with fresh leaf copies of them as ``inputs`` — what gradcheck needs."""
    names = [n for n, p in op.named_parameters() if p.requires_grad]
    params = [p.detach().clone().requires_grad_(True) for n, p in op.named_parameters() if p.requires_grad]
    buffers = dict(op.named_buffers())
    inputs = [x.detach().clone().requires_grad_(True)]
    if guide is not None:
        inputs.append(guide.detach().clone().requires_grad_(True))
    n_in = len(inputs)

    def f(*args):
        return functional_call(
            op, {**buffers, **dict(zip(names, args[n_in:]))}, (args[0], args[1] if guide is not None else None)
        )

    return f, tuple(inputs + params), ["x", "guide"][:n_in] + names


def gradcheck_operator(
    op: nn.Module,
    x: torch.Tensor,
    guide: torch.Tensor | None = None,
    *,
    fast_mode: bool = False,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
) -> bool:
    """torch.autograd.gradcheck (float64) of ``op`` with respect to input, guide and every parameter."""
    f, inputs, _ = as_function_of_everything(op, x, guide)
    return torch.autograd.gradcheck(
        f, inputs, eps=eps, atol=atol, rtol=rtol, fast_mode=fast_mode, raise_exception=False
    )


def check_gradients(cls, fast: bool = True) -> str:
    """gradcheck in float64; ``fast`` uses torch's fast mode (a random projection of the Jacobian),
    which keeps the check quick for operators with large adaptive branches."""
    geo = _geometry(cls, 3, 2, 1, 1, groups=2)
    guided = cls.guide != "none"
    op = _build(cls, 2, 2, guided=guided, **geo).double().eval()
    _perturb(op)
    x, guide = _inputs(op, 2, 5, 5, torch.float64)
    ok = gradcheck_operator(op, x, guide, fast_mode=fast)
    _expect(ok, "torch.autograd.gradcheck failed (float64) for input, guide or a parameter")
    params = [p for p in op.parameters() if p.requires_grad]
    n_el = sum(p.numel() for p in params)
    return (
        f"gradcheck{' (fast mode)' if fast else ''} float64 passes for input{', guide' if guide is not None else ''} and "
        f"{len(params)} parameter tensors ({n_el} elements)"
    )


def _batch_independent(op: nn.Module, x: torch.Tensor, guide: torch.Tensor | None) -> str:
    with torch.no_grad():
        whole = op(x, guide)
        parts = torch.cat([op(x[i : i + 1], None if guide is None else guide[i : i + 1]) for i in range(len(x))])
    _close(whole, parts, 1e-5, 1e-4, "f(batch) vs cat(f(sample))")
    return "f(cat(x₁…x₄)) == cat(f(x₁)…f(x₄)) in eval mode"


def _trains_at_batch1(op: nn.Module, x: torch.Tensor, guide: torch.Tensor | None) -> str:
    x.requires_grad_(True)
    op(x, guide).square().mean().backward()
    _expect(x.grad is not None and bool(torch.isfinite(x.grad).all()), "input gradient missing or non-finite")
    missing = [n for n, p in op.named_parameters() if p.requires_grad and p.grad is None]
    _expect(not missing, f"parameters with no gradient after backward: {missing}")
    bad = [n for n, p in op.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    _expect(not bad, f"non-finite gradients: {bad}")
    return "forward+backward at batch size 1 in train mode; every parameter gets a finite gradient"


def check_batch_independence(cls) -> str:
    op = _build(cls, 4, 6, **_geometry(cls, groups=2)).eval()
    _perturb(op)
    return _batch_independent(op, *_inputs(op, 4, 9, 8))


def check_train_batch1(cls) -> str:
    op = _build(cls, 4, 6, **_geometry(cls)).train()
    return _trains_at_batch1(op, *_inputs(op, 1, 8, 8))


def _precisions(
    op: nn.Module, x: torch.Tensor, guide: torch.Tensor | None, refusal_ok: bool
) -> tuple[list[str], torch.Tensor]:
    """float64 against float32, then float16/bfloat16 on every device against float32 (a clear
    TypeError naming the dtype counts as a pass when ``refusal_ok``). Returns the notes and y32."""
    with torch.no_grad():
        y32 = op(x, guide)
        y64 = copy.deepcopy(op).to(torch.float64)(x.double(), None if guide is None else guide.double())
    _expect(y64.dtype == torch.float64, f"float64 module returned {y64.dtype}")
    _close(y64.float(), y32, 1e-4, 1e-3, "float64 vs float32")
    notes = ["float32", "float64"]
    try:  # an input in another dtype than the layer's is refused naming both
        with torch.no_grad():
            op(x.double(), None if guide is None else guide.double())
    except TypeError as exc:
        _expect(
            "float64" in str(exc) and "float32" in str(exc),
            f"a float64 input into the float32 layer raised an error not naming both dtypes: {exc}",
        )
        notes.append("float64 input into float32 refused naming both")
    except RuntimeError as exc:
        raise CheckFailed(
            f"a float64 input into the float32 layer raised a raw error instead of a TypeError naming "
            f"the operator and both dtypes: {str(exc).splitlines()[0]}"
        ) from None
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        for dtype in (torch.float16, torch.bfloat16):
            low = copy.deepcopy(op).to(device=device, dtype=dtype)
            try:
                with torch.no_grad():
                    yl = low(x.to(device, dtype), None if guide is None else guide.to(device, dtype))
            except TypeError as exc:
                if not refusal_ok:
                    raise
                # A clear refusal is acceptable: it must name the dtype.
                _expect(str(dtype) in str(exc), f"{dtype} on {device} raised an error not naming the dtype: {exc}")
                notes.append(f"{str(dtype)[6:]}@{device}: refused clearly")
                continue
            _expect(
                yl.dtype == dtype and yl.device.type == device,
                f"{dtype} on {device} returned {yl.dtype} on {yl.device}",
            )
            tol = 5e-2 if dtype == torch.float16 else 1e-1
            err = (yl.float().cpu() - y32).abs().max().item() / (y32.abs().max().item() + 1e-6)
            _expect(err < tol, f"{dtype} on {device}: relative error {err:.3g} vs float32 (tolerance {tol})")
            notes.append(f"{str(dtype)[6:]}@{device} (rel err {err:.1e})")
    return notes, y32


def check_dtypes_devices(cls) -> str:
    op = _build(cls, 4, 6, **_geometry(cls)).eval()
    _perturb(op)
    x, guide = _inputs(op, 2, 8, 8)
    notes, y32 = _precisions(op, x, guide, refusal_ok=True)
    if torch.cuda.is_available():
        opc = copy.deepcopy(op).cuda()
        with torch.no_grad():
            yc = opc(x.cuda(), None if guide is None else guide.cuda())
        _close(yc.cpu(), y32, 1e-4, 1e-3, "CUDA vs CPU")
        notes.append("cuda float32")
    return ", ".join(notes)


def _guide_matters(op: nn.Module, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """The output depends on the guide, and wrong-shaped guides are refused naming the guide. Returns y."""
    with torch.no_grad():
        y, y2 = op(x, guide), op(x, torch.rand_like(guide))
    _expect(not torch.allclose(y, y2), "the output does not depend on the guide")
    for bad, what in (
        (guide[:, :, :4], "a guide at another resolution"),
        (guide[:, :2], "a guide with wrong channels"),
    ):
        try:
            op(x, bad)
        except ValueError as exc:
            _expect("guide" in str(exc), f"{what} raised without naming the guide: {exc}")
        else:
            raise CheckFailed(f"{what} ({tuple(bad.shape)}) was accepted")
    return y


def check_guide(cls) -> str:
    if cls.guide == "none":
        try:
            _build(cls, 4, 6, guided=True, **_geometry(cls))
        except ValueError:
            return "refuses guide_channels (not a guided operator)"
        raise CheckFailed("guide='none' but guide_channels was accepted")
    op = _build(cls, 4, 6, guided=True, **_geometry(cls)).eval()
    _perturb(op)
    x, guide = _inputs(op, 2, 8, 8)
    y = _guide_matters(op, x, guide)
    _expect(y.shape == (2, 6, 8, 8), f"guided output shape {tuple(y.shape)}")
    return "output depends on the guide; wrong guide shapes are refused with an error"


def check_from_conv(cls) -> str:
    geos = [
        _geometry(cls, 3, 1, 1, 1),
        _geometry(cls, 3, 2, 0, 2, groups=2),
        _geometry(cls, 5, 1, 2, 1),
        _geometry(cls, 1, 1, 0, 1),
    ]
    worst = 0.0
    for geo in geos:
        conv = nn.Conv2d(4, 6, **geo).double()
        with torch.no_grad():  # weights that float32 cannot hold exactly: catches a copy through float32
            for p in conv.parameters():
                p.add_(torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 1e-3)
        try:
            op = cls.from_conv(conv)
        except NotImplementedError:
            raise Skip("from_conv is not implemented") from None
        _expect(isinstance(op, cls), f"from_conv returned {type(op).__name__}")
        _expect(next(op.parameters()).dtype == torch.float64, "from_conv did not keep the conv's dtype")
        x = torch.randn(2, 4, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        guide = None
        if op.guide_channels is not None:
            guide = torch.rand(2, op.guide_channels, 9, 9, dtype=torch.float64)
        for mode in ("eval", "train"):
            getattr(op, mode)()
            with torch.no_grad():
                y, ref = op(x, guide), conv(x)
            _expect(y.shape == ref.shape, f"from_conv output {tuple(y.shape)} vs conv {tuple(ref.shape)}")
            worst = max(worst, (y - ref).abs().max().item())
            if cls.function_preserving:
                _close(y, ref, 1e-8, 1e-6, f"from_conv ({mode} mode, {geo}) vs the conv")
    if cls.function_preserving:
        return f"exactly the conv's function (max |Δ| {worst:.1e}, float64) over {len(geos)} geometries"
    return f"runs and keeps shapes; not function-preserving by design (max |Δ| {worst:.2g}): {cls.from_conv_note}"


def _live(cls, guided: bool, **geo) -> tuple[AdaptiveConv2d, torch.Tensor, torch.Tensor | None]:
    """A perturbed float64 layer in eval mode whose output on its inputs is not constant (a gated
    operator may switch every pixel off for some weights, and then any two geometries agree)."""
    for seed in range(1, 9):
        op = _build(cls, 4, 4, guided=guided, **geo).double().eval()
        _perturb(op, seed=seed)
        x, guide = _inputs(op, 2, 10, 10, torch.float64, seed=seed)
        with torch.no_grad():
            if op(x, guide).std() > 1e-6:
                return op, x, guide
    raise CheckFailed(f"the output is constant for 8 random weights and inputs ({geo})")


def _shared(cls, guided: bool, state: dict, **geo) -> AdaptiveConv2d:
    """The operator in float64 eval mode with ``geo`` (3×3, stride 1, padding 1 unless given) and the
    parameters and buffers of ``state`` (another geometry of the same operator)."""
    full = dict(kernel_size=3, stride=1, padding=1, dilation=1, groups=1, bias=True)
    full.update(geo)
    op = _build(cls, 4, 4, guided=guided, **_geometry(cls, **full)).double().eval()
    try:
        op.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckFailed(
            f"the state of the 3×3 stride-1 layer does not load into the layer with {geo} "
            f"(the checks compare the two with the same weights): {str(exc).splitlines()[0]}"
        ) from None
    return op


def check_arguments_take_effect(cls) -> str:
    """Each supported argument does what it does to a convolution, shown on the operator itself with
    its weights shared between geometries — not through ``from_conv``, which need not be exact:

    - ``stride`` 2 gives the stride-1 output at every second pixel (with a constant guide, so an
      operator may pool what generates its kernels, as involution does);
    - ``padding`` 0 gives the interior of the padding-1 output, whose border depends on the input's;
    - ``dilation`` 2 (padding 2) changes the output of dilation 1 (padding 1), whose shape it keeps;
    - ``groups`` 2: an output group does not depend on the input channels of the other group (guided,
      so the adaptive branch reads the guide only);
    - ``bias`` changes the output.

    An operator that ignores an argument while keeping the output shape fails here even when every
    shape matches nn.Conv2d."""
    guided = cls.guide != "none"
    base, x, guide = _live(cls, guided, **_geometry(cls, 3, 1, 1, 1))
    state = base.state_dict()
    with torch.no_grad():
        y = base(x, guide)

    def stride() -> str:
        strided = _shared(cls, guided, state, stride=2)
        what = "stride=2 against the stride-1 output at every second pixel (same weights)"
        try:
            _close(strided(x, guide), y[..., ::2, ::2], 1e-9, 1e-7, what)
        except CheckFailed:
            if guide is None:
                raise
            # an operator may pool what generates its kernels (involution): then the identity holds
            # for a constant guide, as long as the output still varies with the input
            flat = torch.full_like(guide, 0.5)
            ref = base(x, flat)
            if ref.std() < 1e-6:
                raise
            _close(strided(x, flat), ref[..., ::2, ::2], 1e-9, 1e-7, what + " with a constant guide")
        return "stride"

    def padding() -> str:
        _close(
            _shared(cls, guided, state, padding=0)(x, guide),
            y[..., 1:-1, 1:-1],
            1e-9,
            1e-7,
            "padding=0 against the interior of the padding=1 output (same weights)",
        )
        # the padded border is computed from the input's border, not filled in
        frame = torch.ones_like(x, dtype=torch.bool)
        frame[..., 1:-1, 1:-1] = False
        y2 = base(torch.where(frame, x + 1.0, x), guide)
        _expect(
            not torch.allclose(y2[frame[:, :1].expand_as(y2)], y[frame[:, :1].expand_as(y)]),
            "padding=1: the output's border does not change when the input's border does",
        )
        return "padding"

    def dilation() -> str:
        y2 = _shared(cls, guided, state, dilation=2, padding=2)(x, guide)
        _expect(
            y2.shape == y.shape,
            f"dilation=2 padding=2 gives {tuple(y2.shape)}, dilation=1 padding=1 "
            f"{tuple(y.shape)}: nn.Conv2d gives the same shape for both",
        )
        _expect(
            not torch.allclose(y2, y, atol=1e-9, rtol=1e-7),
            "dilation=2 (padding 2) gives the same output as dilation=1 (padding 1) with the same weights: "
            "the operator ignores dilation",
        )
        return "dilation"

    def groups() -> str:
        if not guided:
            return "groups skipped (self-guided only: its kernels may read every channel)"
        op, xg, g = _live(cls, True, **_geometry(cls, groups=2))
        y0 = op(xg, g)
        for changed, kept in ((slice(2, 4), slice(0, 2)), (slice(0, 2), slice(2, 4))):
            x2 = xg.clone()
            x2[:, changed] += 1.0
            y1 = op(x2, g)
            _close(
                y1[:, kept],
                y0[:, kept],
                1e-9,
                1e-7,
                f"groups=2: output channels {kept.start}-{kept.stop - 1} after changing input channels "
                f"{changed.start}-{changed.stop - 1} (the other group)",
            )
            _expect(
                not torch.allclose(y1[:, changed], y0[:, changed]),
                f"groups=2: output channels {changed.start}-{changed.stop - 1} do not depend on their own "
                "input channels",
            )
        return "groups"

    def bias() -> str:
        nobias = _build(cls, 4, 4, guided=guided, **_geometry(cls, 3, 1, 1, 1, bias=False)).double().eval()
        nobias.load_state_dict(state, strict=False)
        _expect(
            not torch.allclose(nobias(x, guide), y, atol=1e-9, rtol=1e-7),
            "bias=False gives the same output as bias=True with the same other weights: the bias is ignored",
        )
        return "bias"

    done, failures = [], []
    for arg, sub in (
        ("stride", stride),
        ("padding", padding),
        ("dilation", dilation),
        ("groups", groups),
        ("bias", bias),
    ):
        if not _supports(cls, arg):
            continue
        try:
            with torch.no_grad():
                done.append(sub())
        except CheckFailed as exc:  # every argument is tried, so one report names all that misbehave
            failures.append(str(exc))
    if failures:
        raise CheckFailed("; ".join(failures))
    if not done:
        raise Skip("supports none of stride, padding, dilation, groups, bias")
    return "with shared weights: " + ", ".join(done)


def check_state_dict(cls) -> str:
    op = _build(cls, 4, 6, **_geometry(cls)).eval()
    _perturb(op)
    other = _build(cls, 4, 6, **_geometry(cls)).eval()
    other.load_state_dict(op.state_dict())
    x, guide = _inputs(op, 2, 8, 8)
    with torch.no_grad():
        _close(other(x, guide), op(x, guide), 0, 0, "output after load_state_dict")
    return "a fresh instance loaded with state_dict computes the same output"


def _factory_arguments(build: Callable[..., nn.Module]) -> str:
    """``device=`` and ``dtype=`` as nn.Conv2d takes them: ``build(**kw)`` builds the operator."""
    torch.manual_seed(0)
    plain = build()
    torch.manual_seed(0)
    wide = build(dtype=torch.float64)
    for (name, a), b in zip(plain.state_dict().items(), wide.state_dict().values()):
        if a.is_floating_point():
            _expect(b.dtype == torch.float64, f"dtype=float64: {name} is {b.dtype}")
            _close(b, a.double(), 0, 0, f"dtype=float64: {name} (the same initial values as a cast)")
    meta = build(device="meta")  # built where asked: nothing is created on the CPU and moved
    placed = [n for n, t in [*meta.named_parameters(), *meta.named_buffers()] if t.device.type != "meta"]
    _expect(not placed, f"device='meta': {', '.join(placed)} not created on the device")
    return "device= and dtype= build the operator where and in what it is asked"


def check_factory_arguments(cls) -> str:
    geo = _geometry(cls)
    guided = cls.guide == "required"
    return _factory_arguments(lambda **kw: cls(4, 6, **geo, guide_channels=GUIDE_CHANNELS if guided else None, **kw))


CHECKS: list[tuple[str, Callable[[type[AdaptiveConv2d]], str]]] = [
    ("metadata", check_metadata),
    ("unsupported arguments raise", check_unsupported_args_raise),
    ("output shapes", check_shapes),
    ("arguments take effect", check_arguments_take_effect),
    ("gradients (gradcheck)", check_gradients),
    ("batch independence", check_batch_independence),
    ("batch size 1 in train mode", check_train_batch1),
    ("dtypes and devices", check_dtypes_devices),
    ("device and dtype arguments", check_factory_arguments),
    ("guide", check_guide),
    ("from_conv", check_from_conv),
    ("state_dict round trip", check_state_dict),
]


# --------------------------------------------------------------------------------------------------
# Operators of the other kinds (AdaptiveModule): upsamplers and refiners.


def _build_kind(cls, channels: int = 4, scale: int = 2, **factory: Any) -> AdaptiveModule:
    if cls.kind == "upsampler":
        return cls(channels, scale_factor=scale, **factory)
    if cls.guide == "required":
        return cls(channels, guide_channels=GUIDE_CHANNELS, **factory)
    return cls(channels, **factory)


def _expected_shape(op: AdaptiveModule, x: torch.Tensor) -> tuple[int, ...]:
    if op.kind == "upsampler":  # the shape of nearest upsampling
        return tuple(F.interpolate(x[:, :, :, :], scale_factor=op.scale_factor, mode="nearest").shape)
    return tuple(x.shape)


def check_kind_metadata(cls) -> str:
    _expect(bool(cls.name), "no registry name")
    _expect(bool(cls.paper), "class attribute `paper` is empty")
    _expect(cls.kind in OP_KINDS[1:], f"kind={cls.kind!r} is not one of {OP_KINDS[1:]}")
    _expect(cls.guide in ("none", "optional", "required"), f"guide={cls.guide!r} is not none/optional/required")
    _expect(cls.function_preserving is False, "an operator that is not a conv cannot be function-preserving")
    _expect(bool(cls.from_conv_note), "class attribute `from_conv_note` is empty")
    return f"kind={cls.kind}, guide={cls.guide}"


def check_kind_shapes(cls) -> str:
    n = 0
    scales = (1, 2, 3, 4) if cls.kind == "upsampler" else (1,)
    for scale, channels, (h, w) in itertools.product(scales, (1, 3), ((1, 1), (5, 5), (6, 7), (8, 3))):
        op = _build_kind(cls, channels, scale).eval()
        x, guide = _inputs(op, 2, h, w)
        with torch.no_grad():
            y = op(x, guide)
        want = _expected_shape(op, x)
        _expect(
            tuple(y.shape) == want,
            f"scale {scale}, {channels} channels, input {h}×{w}: output {tuple(y.shape)}, expected {want}",
        )
        _expect(bool(torch.isfinite(y).all()), f"non-finite output at scale {scale}, input {h}×{w}")
        n += 1
    what = "nearest upsampling's shape" if cls.kind == "upsampler" else "the input's shape"
    return f"{n} sizes{'/factors' if cls.kind == 'upsampler' else ''} give {what}"


def check_kind_gradients(cls, fast: bool = True) -> str:
    op = _build_kind(cls, 2).double().eval()
    _perturb(op)
    x, guide = _inputs(op, 2, 4, 5, torch.float64)
    _expect(
        gradcheck_operator(op, x, guide, fast_mode=fast),
        "torch.autograd.gradcheck failed (float64) for input, guide or a parameter",
    )
    params = [p for p in op.parameters() if p.requires_grad]
    return (
        f"gradcheck{' (fast mode)' if fast else ''} float64 passes for input{', guide' if guide is not None else ''} "
        f"and {len(params)} parameter tensors ({sum(p.numel() for p in params)} elements)"
    )


def check_kind_batch_independence(cls) -> str:
    op = _build_kind(cls, 3).eval()
    _perturb(op)
    return _batch_independent(op, *_inputs(op, 4, 7, 6))


def check_kind_train_batch1(cls) -> str:
    op = _build_kind(cls, 3).train()
    return _trains_at_batch1(op, *_inputs(op, 1, 6, 6))


def check_kind_dtypes(cls) -> str:
    op = _build_kind(cls, 3).eval()
    _perturb(op)
    notes, _ = _precisions(op, *_inputs(op, 2, 6, 6), refusal_ok=False)
    return ", ".join(notes)


def check_kind_guide(cls) -> str:
    op = _build_kind(cls, 3).eval()
    _perturb(op)
    x, guide = _inputs(op, 2, 6, 6)
    if cls.guide == "none":
        try:
            op(x, torch.rand(2, GUIDE_CHANNELS, 6, 6))
        except ValueError as exc:
            _expect("guide" in str(exc), f"a guide was refused without naming the guide: {exc}")
            return "refuses a guide (not a guided operator)"
        raise CheckFailed("guide='none' but a guide was accepted")
    if guide is None:
        raise Skip("built without a guide by default")
    _guide_matters(op, x, guide)
    try:
        op(x)
    except ValueError as exc:
        _expect("guide" in str(exc), f"a missing guide raised without naming the guide: {exc}")
    else:
        raise CheckFailed("a missing guide was accepted")
    return "output depends on the guide; missing and wrong-shaped guides are refused with an error"


def check_kind_state_dict(cls) -> str:
    op = _build_kind(cls, 3).eval()
    _perturb(op)
    other = _build_kind(cls, 3).eval()
    other.load_state_dict(op.state_dict())
    x, guide = _inputs(op, 2, 6, 6)
    with torch.no_grad():
        _close(other(x, guide), op(x, guide), 0, 0, "output after load_state_dict")
    return "a fresh instance loaded with state_dict computes the same output"


def check_kind_identity(cls) -> str:
    try:
        return cls.identity_check()
    except NotImplementedError:
        raise Skip("the operator declares no identity (identity_check)") from None
    except AssertionError as exc:
        raise CheckFailed(str(exc)) from None


def check_not_swappable(cls) -> str:
    try:
        cls.from_conv(nn.Conv2d(4, 4, 3))
    except TypeError as exc:
        _expect(cls.kind in str(exc), f"from_conv refused without naming the kind: {exc}")
        return f"from_conv refuses: {exc}"
    raise CheckFailed(f"from_conv accepted an nn.Conv2d for an operator of kind {cls.kind!r}")


def check_kind_factory_arguments(cls) -> str:
    return _factory_arguments(lambda **kw: _build_kind(cls, **kw))


KIND_CHECKS: list[tuple[str, Callable[[type[AdaptiveModule]], str]]] = [
    ("metadata", check_kind_metadata),
    ("output shapes", check_kind_shapes),
    ("gradients (gradcheck)", check_kind_gradients),
    ("batch independence", check_kind_batch_independence),
    ("batch size 1 in train mode", check_kind_train_batch1),
    ("dtypes and devices", check_kind_dtypes),
    ("device and dtype arguments", check_kind_factory_arguments),
    ("guide", check_kind_guide),
    ("identity", check_kind_identity),
    ("not a conv (from_conv refuses)", check_not_swappable),
    ("state_dict round trip", check_kind_state_dict),
]


def checks_for(cls) -> list[tuple[str, Callable]]:
    """The checks that apply to an operator of ``cls.kind``."""
    return CHECKS if getattr(cls, "kind", "conv") == "conv" else KIND_CHECKS


def run_checks(
    op: str | type[AdaptiveConv2d] | type[AdaptiveModule], only: list[str] | None = None
) -> Iterator[CheckResult]:
    """Run the conformance checks that apply to an operator's kind (a registry name or a class),
    yielding each result."""
    cls = get_op(op) if isinstance(op, str) else op
    for name, check in checks_for(cls):
        if only and name not in only:
            continue
        torch.manual_seed(0)
        try:
            yield CheckResult(name, "pass", check(cls))
        except Skip as exc:
            yield CheckResult(name, "skip", str(exc))
        except CheckFailed as exc:
            yield CheckResult(name, "fail", str(exc))
        except Exception as exc:  # an operator crashing is a failure to report, not a crash of the checker
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            yield CheckResult(name, "fail", f"{type(exc).__name__}: {exc} (at {tb.filename}:{tb.lineno})")
