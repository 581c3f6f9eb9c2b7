"""Window geometry shared by the operator families: taps, window centres, valid-tap masks.

Conventions: a k_h×k_w window has ``T = k_h·k_w`` taps in row-major order (the order of
``F.unfold`` and of a conv weight's last two dims). "Taps" tensors are ``B×C×T×H'×W'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Pair = tuple[int, int]


def pair(value, arg: str = "value", owner: str = "", minimum: int = 0) -> Pair:
    """Normalise an int or a 2-sequence of ints to a pair, with an error naming the argument."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if value[0] >= minimum and value[1] >= minimum:  # the common case, checked cheaply (every forward)
            return value
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        out = (value, value)
    elif (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{owner + ': ' if owner else ''}{arg} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{owner + ': ' if owner else ''}{arg} must be >= {minimum}, got {value!r}")
    return out


def conv_output_length(n: int, kernel: int, stride: int, padding_total: int, dilation: int) -> int:
    """nn.Conv2d's output-size formula along one axis; ``padding_total``: both sides' padding together."""
    return (n + padding_total - dilation * (kernel - 1) - 1) // stride + 1


def conv_output_size(size: Sequence[int], kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Pair:
    """nn.Conv2d's output size (symmetric ``padding`` on each axis)."""
    return tuple(  # type: ignore[return-value]
        conv_output_length(n, k, s, 2 * p, d) for n, k, s, p, d in zip(size, kernel_size, stride, padding, dilation)
    )


def unfold_taps(x: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> torch.Tensor:
    """All window taps of ``x`` (zero outside the image): B×C×T×H'×W'.

    This materialises k² copies of the input; it is the straightforward reference formulation.
    """
    b, c, h, w = x.shape
    ho, wo = conv_output_size((h, w), kernel_size, stride, padding, dilation)
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    return cols.view(b, c, kernel_size[0] * kernel_size[1], ho, wo)


def valid_taps(
    size: Sequence[int],
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """1×1×T×H'×W' mask: 1 where a tap falls inside the image, 0 where it reads padding."""
    ones = torch.ones(1, 1, *size, device=device, dtype=dtype)
    return unfold_taps(ones, kernel_size, stride, padding, dilation)


def centre_offsets(kernel: int, dilation: int) -> list[int]:
    """Offsets (in input pixels, from a window's first tap) of the window's middle tap(s).

    For an even kernel the centre falls between two taps; both neighbours are returned (the caller
    averages them), so the same definition works for every kernel size.
    """
    lo, hi = (kernel - 1) // 2, kernel // 2
    return sorted({lo * dilation, hi * dilation})


def window_centres(t: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair, dilation: Pair) -> torch.Tensor:
    """Sample ``t`` (B×C×H×W) at the centre of every conv window: B×C×H'×W'.

    Padding replicates the border, so a window whose centre lies in the padding reads the nearest
    image pixel (an operator's adaptive branch then never sees an artificial zero). For even kernels
    the centre is the average of the two (or four) middle taps.
    """
    b, c, h, w = t.shape
    ho, wo = conv_output_size((h, w), kernel_size, stride, padding, dilation)
    rows = centre_offsets(kernel_size[0], dilation[0])
    cols = centre_offsets(kernel_size[1], dilation[1])
    if tuple(stride) == (1, 1) and len(rows) == len(cols) == 1:
        # one centre per window, every one inside the image: a crop of t, no padded copy
        r, q = rows[0] - padding[0], cols[0] - padding[1]
        if r >= 0 and q >= 0 and r + ho <= h and q + wo <= w:
            return t if (r, q, ho, wo) == (0, 0, h, w) else t[:, :, r : r + ho, q : q + wo]
    if padding != (0, 0):
        t = F.pad(t, (padding[1], padding[1], padding[0], padding[0]), mode="replicate")
    out = None
    for r in rows:
        for q in cols:
            s = t[:, :, r : r + (ho - 1) * stride[0] + 1 : stride[0], q : q + (wo - 1) * stride[1] + 1 : stride[1]]
            out = s if out is None else out + s
    n = len(rows) * len(cols)
    return out if n == 1 else out / n


def centre_tap_weights(kernel_size: Pair, device=None, dtype=torch.float32) -> torch.Tensor:
    """T-vector averaging the middle tap(s) of a window: one-hot for odd kernels."""
    kh, kw = kernel_size
    m = torch.zeros(kh, kw, device=device, dtype=dtype)
    rows = sorted({(kh - 1) // 2, kh // 2})
    cols = sorted({(kw - 1) // 2, kw // 2})
    for r in rows:
        for q in cols:
            m[r, q] = 1.0 / (len(rows) * len(cols))
    return m.flatten()


def grouped_tap_matmul(taps: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Contract taps B×C×T×H'×W' with a conv weight O×(C/g)×kh×kw: B×O×H'×W'."""
    b, c, t, ho, wo = taps.shape
    o = weight.shape[0]
    cols = taps.reshape(b, groups, (c // groups) * t, ho * wo)
    w = weight.reshape(groups, o // groups, (c // groups) * t)
    out = torch.einsum("bgil,goi->bgol", cols, w)
    return out.reshape(b, o, ho, wo)
