"""Spatially sparse gated convolution (Verelst & Tuytelaars, CVPR 2020, "Dynamic Convolutions:
Exploiting Spatial Sparsity for Faster Inference").

A small mask unit decides, per output pixel, whether the convolution runs there::

    logit = window_centre(Conv1×1(guide))        B×1×H'×W'   (the guide is x when self-guided)
    m     = Gumbel-sigmoid straight-through hard mask of logit    (training)
          = [logit ≥ 0]                                            (eval)
    y     = m ⊙ conv(x)              (residual=False)
    y     = x + m ⊙ conv(x)          (residual=True: the gated residual block of the paper)

A sparsity loss ``sparsity_weight · (mean(m) − budget)²`` (:meth:`SparseGatedConv2d.auxiliary_loss`,
from the last forward's straight-through mask) pulls the active fraction toward ``budget``; the trial's
training loop adds it to the task loss. The loss here is per layer, a simplification of the paper's
FLOP-weighted network-level criterion.

Two computations of the same function:

- the dense masked path (training, any forward that needs gradients, and the reference):
  ``conv2d(x) * m``;
- two sparse paths (eval mode without grad), both exact, outputs channels-last in memory:
  the *tile* path (:func:`tiled_masked_conv2d`) convolves only the t×t output tiles holding an active
  pixel (their input windows gathered into a batch, F.conv2d with padding 0, mask, scatter): oneDNN
  does the arithmetic, so it is faster than nn.Conv2d once enough tiles are off (clustered masks);
  the *pixel* path (:func:`sparse_masked_conv2d`) gathers the receptive field of each active pixel
  (9·C values) and multiplies by the weight: it scales with scattered pixels but costs about 3× the
  dense conv per pixel. ``sparse_path="auto"`` picks the cheapest of dense / tiles / pixels from the
  active fractions and :data:`TILE_COST` / :data:`PIXEL_COST`.

``block_size`` makes the mask itself block-structured (the mask unit's logits averaged over
block_size² output tiles, one Gumbel decision per tile): training and inference then agree on whole
tiles and the tile path skips the mask multiply.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptiveConv2d, ConvWeightMixin
from .registry import register_op
from .taps import window_centres

Pair = tuple[int, int]

#: Inference cost models, as fractions of the dense conv's time, fitted to medians measured on the
#: shared 2-core CPU (B=8 56×56 and B=1 224×224, 64→64, k=3; benchmarks/test_sparse_gated.py):
#: ``fixed + per · active``. The tile path pays a fixed NCHW→NHWC pass, the scatter and the halo; the
#: pixel path gathers 9·C values per active pixel, about 3× the dense conv's cost per pixel.
TILE_COST = (0.45, 0.95)  # × fraction of active tiles
PIXEL_COST = (0.2, 2.8)  # × fraction of active pixels
SPARSE_PATHS = ("auto", "tiles", "pixels")

#: Elements of the gathered patch matrix per chunk of active pixels (about 8 MiB in float32): keeps
#: the gather and its matmul in cache instead of materialising every receptive field at once.
_CHUNK_ELEMENTS = 1 << 21


def gumbel_sigmoid_mask(logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class Gumbel-softmax on ``logits``: ``(soft, hard)``.

    ``soft = sigmoid((logit + g₁ − g₂)/τ)``; g₁ − g₂ of two Gumbel(0, 1) is Logistic(0, 1), drawn
    from one uniform of torch's global RNG (so a seeded trial reproduces). ``hard = [soft ≥ ½]``.
    """
    u = torch.rand_like(logits, dtype=torch.float32).clamp_(1e-6, 1 - 1e-6).to(logits.dtype)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    return soft, (soft >= 0.5).to(logits.dtype)


@functools.lru_cache(maxsize=8)
def tap_index(
    batch: int,
    in_size: Pair,
    out_size: Pair,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    device: torch.device,
) -> torch.Tensor:
    """(B·H'·W')×(kh·kw) flat indices into B·H·W of the input pixel each tap of each output pixel
    reads; ``B·H·W`` where the tap falls in the zero padding (the caller appends a zero row there).

    Depends only on the shapes and the geometry, so it is cached (a few entries: inference repeats
    the same shapes) and the sparse path only gathers rows of it.
    """
    h, w = in_size
    ho, wo = out_size
    ty = torch.arange(kernel_size[0], device=device) * dilation[0] - padding[0]
    tx = torch.arange(kernel_size[1], device=device) * dilation[1] - padding[1]
    iy = (torch.arange(ho, device=device) * stride[0]).unsqueeze(1) + ty  # H'×kh
    ix = (torch.arange(wo, device=device) * stride[1]).unsqueeze(1) + tx  # W'×kw
    inside = ((iy >= 0) & (iy < h)).view(ho, 1, -1, 1) & ((ix >= 0) & (ix < w)).view(1, wo, 1, -1)
    flat = (iy * w).view(ho, 1, -1, 1) + ix.view(1, wo, 1, -1)  # H'×W'×kh×kw
    image = torch.where(inside, flat, torch.full_like(flat, -1)).view(1, ho * wo, -1)
    offsets = (torch.arange(batch, device=device) * (h * w)).view(-1, 1, 1)
    index = torch.where(image >= 0, image + offsets, torch.full_like(image, batch * h * w))
    return index.view(batch * ho * wo, -1)


def channels_last_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B×C×H×W) as (B·H·W + 1)×C rows, pixel-major, with one zero row at the end that the
    taps falling in the zero padding index (see :func:`tap_index`)."""
    b, c, h, w = x.shape
    rows = x.new_empty(b * h * w + 1, c)
    rows[:-1].view(b, h, w, c).copy_(x.permute(0, 2, 3, 1))
    rows[-1].zero_()
    return rows


def sparse_masked_conv2d(
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
    groups: int = 1,
    residual: bool = False,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv2d(x) * mask`` (plus ``x`` when ``residual``) computed at the active pixels only.

    ``mask`` is B×1×H'×W' (non-zero = active; its values are not multiplied in, it is a 0/1 mask).
    Forward only (no autograd through the gather): the inference path. The output is channels-last
    in memory. ``rows``: :func:`channels_last_rows` of ``x`` if the caller has it (with ``residual``
    it is overwritten with the output).
    """
    b, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    ho, wo = mask.shape[2:]
    active = mask.reshape(-1).nonzero().squeeze(1)  # flat indices into B·H'·W'
    taps = tap_index(
        b, (h, w), (ho, wo), (kh, kw), tuple(stride), tuple(padding), tuple(dilation), x.device
    ).index_select(0, active)
    t = kh * kw
    og = o // groups
    if rows is None:
        rows = channels_last_rows(x)
    if groups == 1:
        wmat = weight.permute(2, 3, 1, 0).reshape(t * c, o)  # (tap, channel) × out, matching the gather
    else:
        wmat = weight.view(groups, og, cg, kh, kw).permute(0, 3, 4, 2, 1).reshape(groups, t * cg, og)
    n = active.numel()
    vals = x.new_empty(n, o)
    chunk = max(1, _CHUNK_ELEMENTS // (t * c))
    for s in range(0, n, chunk):
        # embedding is index_select on rows, but measured ~2-3× faster on the CPU for this gather
        patches = F.embedding(taps[s : s + chunk].reshape(-1), rows)  # (n·t)×c
        m = patches.shape[0] // t
        if groups == 1:
            out = vals[s : s + m]
            if bias is None:
                torch.mm(patches.view(m, t * c), wmat, out=out)
            else:
                torch.addmm(bias, patches.view(m, t * c), wmat, out=out)
        else:
            grouped = patches.view(m, t, groups, cg).permute(2, 0, 1, 3).reshape(groups, m, t * cg)
            out = torch.bmm(grouped, wmat).permute(1, 0, 2).reshape(m, o)
            if bias is not None:
                out = out + bias
            vals[s : s + m] = out
    if residual:
        # y = x + m·conv(x): add into the channels-last copy of x we already hold.
        y = rows[:-1]
        y.index_add_(0, active, vals)
    else:
        y = x.new_zeros(b * ho * wo, o)
        y.index_copy_(0, active, vals)
    return y.view(b, ho, wo, -1).permute(0, 3, 1, 2)


def tile_activity(mask: torch.Tensor, tile: int) -> torch.Tensor:
    """B×⌈H'/t⌉×⌈W'/t⌉ bool: which t×t output tiles hold an active pixel (max over the tile, done
    as a reshape + amax: F.max_pool2d is several times slower on this shape)."""
    b, _, ho, wo = mask.shape
    ny, nx = -(-ho // tile), -(-wo // tile)
    padded = F.pad(mask, (0, nx * tile - wo, 0, ny * tile - ho)) if (ho % tile or wo % tile) else mask
    return padded.view(b, ny, tile, nx, tile).amax(dim=(2, 4)) != 0


def tiled_masked_conv2d(
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
    groups: int = 1,
    residual: bool = False,
    tile: int = 8,
    mask_is_tiled: bool = False,
) -> torch.Tensor:
    """``conv2d(x) * mask`` (plus ``x`` when ``residual``) computed on the t×t output tiles that hold
    an active pixel only: each such tile's receptive field (its input window plus the halo) is
    gathered into a batch, convolved by F.conv2d with padding 0 (so the dense conv kernel, oneDNN on
    the CPU, does the arithmetic), multiplied by the mask and scattered into the output.

    Exact for any 0/1 mask and any stride, padding, dilation and groups: tile outputs are the conv's
    outputs at those pixels (the halo covers every tap), the mask is applied after. Its cost falls
    with the fraction of active *tiles*, so it pays for clustered masks, not scattered pixels.
    ``mask_is_tiled``: the mask is constant on each tile (a block mask aligned to ``tile``), so the
    multiply is skipped. Forward only; the output is channels-last in memory.
    """
    b, c, h, w = x.shape
    o = weight.shape[0]
    kh, kw = weight.shape[2:]
    ho, wo = mask.shape[2:]
    t = tile
    ny, nx = -(-ho // t), -(-wo // t)
    (sy, sx), (py, px), (dy, dx) = stride, padding, dilation
    ey, ex = (t - 1) * sy + dy * (kh - 1) + 1, (t - 1) * sx + dx * (kw - 1) + 1  # a tile's input window
    hp, wp = max(h + 2 * py, (ny - 1) * t * sy + ey), max(w + 2 * px, (nx - 1) * t * sx + ex)
    active = tile_activity(mask, t).view(-1).nonzero().squeeze(1)  # flat indices into B·ny·nx
    n = active.numel()
    y = x.new_empty(b, ny * t, nx * t, o)  # channels-last, padded to whole tiles (cropped at the end)
    if residual:
        y[:, :h, :w].copy_(x.permute(0, 2, 3, 1))
    if n == 0:
        if not residual:
            y.zero_()
        return y[:, :ho, :wo].permute(0, 3, 1, 2)
    # x into a zero-bordered channels-last buffer: one pass over x (NCHW → NHWC); every tile window is
    # then inside the buffer and each of its rows is one contiguous run of ex·C values.
    buf = x.new_empty(b, hp, wp, c)
    buf[:, :py].zero_()
    buf[:, py + h :].zero_()
    buf[:, py : py + h, :px].zero_()
    buf[:, py : py + h, px + w :].zero_()
    buf[:, py : py + h, px : px + w].copy_(x.permute(0, 2, 3, 1))
    bi, rem = active.div(ny * nx, rounding_mode="floor"), active.remainder(ny * nx)
    ti, tj = rem.div(nx, rounding_mode="floor"), rem.remainder(nx)
    start = (bi * hp + ti * (t * sy)) * wp + tj * (t * sx)  # each tile window's top-left pixel
    rows = (start.unsqueeze(1) + torch.arange(ey, device=x.device) * wp).view(-1)
    # Overlapping view: row i = pixels i … i+ex−1 of the buffer (ex·C contiguous values).
    runs = buf.view(-1).as_strided((b * hp * wp - ex + 1, ex * c), (c, 1))
    tiles = runs.index_select(0, rows).view(n, ey, ex, c).permute(0, 3, 1, 2)
    out = F.conv2d(tiles, weight, bias, stride, 0, dilation, groups)  # n×O×t×t
    out = out.permute(0, 2, 3, 1).contiguous()  # free when oneDNN kept channels-last
    if not mask_is_tiled:
        mt = mask if not (ho % t or wo % t) else F.pad(mask, (0, nx * t - wo, 0, ny * t - ho))
        mt = mt.view(b, ny, t, nx, t).permute(0, 1, 3, 2, 4).reshape(b * ny * nx, t, t)
        out.mul_(mt.index_select(0, active).unsqueeze(-1).to(out.dtype))
    # Scatter: output row r of tile (b, ty, tx) is row ((b·ny + ty)·t + r)·nx + tx of y seen as
    # (B·ny·t·nx)×(t·O) (non-overlapping runs of t pixels).
    dst = ((((bi * ny + ti) * t).unsqueeze(1) + torch.arange(t, device=x.device)) * nx + tj.unsqueeze(1)).view(-1)
    flat = y.view(-1, t * o)
    if residual:
        flat.index_add_(0, dst, out.view(n * t, t * o))
    else:
        # zero only the rows of inactive tiles: the active ones are overwritten anyway
        inactive = torch.ones(flat.shape[0], dtype=torch.bool, device=x.device)
        inactive[dst] = False
        if n * t < flat.shape[0]:
            flat.index_fill_(0, inactive.nonzero().squeeze(1), 0)
        flat.index_copy_(0, dst, out.view(n * t, t * o))
    return y[:, :ho, :wo].permute(0, 3, 1, 2)


def dense_masked_conv2d(
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
    groups: int = 1,
    residual: bool = False,
) -> torch.Tensor:
    """The dense reference (and training path): ``conv2d(x)·mask`` (+ ``x``), differentiable in all."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups) * mask
    return x + y if residual else y


class _LastMask:
    """The mask of the last forward (for the sparsity loss and statistics). Not state: a copy or a
    pickle of the module starts empty (a mask tensor inside an autograd graph cannot be deep-copied)."""

    __slots__ = ("mask",)

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> _LastMask:
        return _LastMask()

    def __reduce__(self):
        return (_LastMask, ())


@register_op("sparse_gated")
class SparseGatedConv2d(ConvWeightMixin, AdaptiveConv2d):
    """A convolution computed only where a learned per-pixel mask is on.

    Options: ``residual`` (``y = x + m ⊙ conv(x)``; needs in == out channels and an output at the
    input's size), ``budget`` (target active fraction for the sparsity loss; None: no loss),
    ``sparsity_weight``, ``temperature`` (Gumbel-sigmoid τ), ``sparse_inference`` (False: eval runs
    the dense masked path too), ``dense_above`` (eval without grad runs a sparse path only when at
    most this fraction is active), ``sparse_path`` ("auto": the cheapest of dense / tiles / pixels by
    the cost model; "tiles" or "pixels": that path whenever sparse), ``tile_size`` (output tile of the
    tile path with per-pixel masks), ``block_size`` (None: per-pixel mask; n: one decision per n×n
    output tile, and the tile path uses n), ``init_active_logit`` (mask-unit bias set by
    :meth:`from_conv`).
    """

    paper = "Verelst & Tuytelaars, Dynamic Convolutions: Exploiting Spatial Sparsity for Faster Inference, CVPR 2020"
    guide = "optional"
    function_preserving = False
    from_conv_note = (
        "exact in eval mode: the conv's weights are copied, the mask unit's weight zeroed and its "
        "bias set to init_active_logit (3) so every pixel is active (logit ≥ 0); in training mode "
        "the Gumbel noise still switches off about sigmoid(−3) ≈ 5% of the pixels, so the "
        "train-mode function is not the conv's"
    )

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
        residual: bool = False,
        budget: float | None = 0.5,
        sparsity_weight: float = 1.0,
        temperature: float = 1.0,
        sparse_inference: bool = True,
        dense_above: float = 1.0,
        init_active_logit: float = 3.0,
        sparse_path: str = "auto",
        tile_size: int = 8,
        block_size: int | None = None,
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
        label = type(self).name or type(self).__name__
        if budget is not None and not (isinstance(budget, (int, float)) and 0 <= budget <= 1):
            raise ValueError(f"{label}: budget must be a fraction of active pixels in [0, 1] or None, got {budget!r}")
        if not (isinstance(sparsity_weight, (int, float)) and sparsity_weight >= 0):
            raise ValueError(f"{label}: sparsity_weight must be >= 0, got {sparsity_weight!r}")
        if not (isinstance(dense_above, (int, float)) and 0 <= dense_above <= 1):
            raise ValueError(f"{label}: dense_above must be a fraction in [0, 1], got {dense_above!r}")
        if not (isinstance(init_active_logit, (int, float)) and init_active_logit >= 0):
            raise ValueError(f"{label}: init_active_logit must be >= 0 (every pixel active), got {init_active_logit!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"{label}: temperature must be > 0, got {temperature!r}")
        if sparse_path not in SPARSE_PATHS:
            raise ValueError(f"{label}: sparse_path must be one of {SPARSE_PATHS}, got {sparse_path!r}")
        if isinstance(tile_size, bool) or not (isinstance(tile_size, int) and tile_size >= 1):
            raise ValueError(f"{label}: tile_size must be an int >= 1, got {tile_size!r}")
        if block_size is not None and (
            isinstance(block_size, bool) or not (isinstance(block_size, int) and block_size >= 1)
        ):
            raise ValueError(f"{label}: block_size must be None or an int >= 1, got {block_size!r}")
        if residual:
            keeps_size = all(
                s == 1 and 2 * p == d * (k - 1)
                for s, p, d, k in zip(self.stride, self.padding, self.dilation, self.kernel_size)
            )
            if in_channels != out_channels or not keeps_size:
                raise ValueError(
                    f"{label}: residual=True computes x + m·conv(x), so the conv's output must have the input's "
                    f"shape: got in_channels={in_channels} → out_channels={out_channels}, "
                    f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                    f"dilation={self.dilation} (an input C×H×W maps to {out_channels}×H'×W' with "
                    f"H' = H + 2·{self.padding[0]} − {self.dilation[0]}·({self.kernel_size[0]}−1) − 1)//"
                    f"{self.stride[0]} + 1); use stride 1 and padding = dilation·(k−1)/2"
                )
        self.residual = bool(residual)
        self.budget = None if budget is None else float(budget)
        self.sparsity_weight = float(sparsity_weight)
        self.temperature = float(temperature)
        self.sparse_inference = bool(sparse_inference)
        self.dense_above = float(dense_above)
        self.init_active_logit = float(init_active_logit)
        self.sparse_path = sparse_path
        self.tile_size = int(tile_size)
        self.block_size = None if block_size is None else int(block_size)
        self.init_conv_weight()
        # The mask unit: one logit per pixel from the guide (or x), read at each window's centre so the
        # mask lands at the output resolution for any stride/padding/dilation. Default nn.Conv2d
        # initialisation: about half the pixels active at the start.
        self.mask_unit = nn.Conv2d(self.adapt_channels, 1, 1)
        self._last = _LastMask()

    # ----------------------------------------------------------------------------------------------
    def mask_logits(self, guide: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The mask unit's logits, B×1×H'×W'. ``rows``: the guide already in channels-last rows
        (:func:`channels_last_rows`), which makes the 1×1 conv a matrix-vector product."""
        if rows is None:
            unit = self.mask_unit(guide)
        else:
            b, _, h, w = guide.shape
            unit = torch.addmv(self.mask_unit.bias.expand(b * h * w), rows[:-1], self.mask_unit.weight.view(-1))
            unit = unit.view(b, 1, h, w)
        return window_centres(unit, self.kernel_size, self.stride, self.padding, self.dilation)

    def mask(self, guide: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The mask (B×1×H'×W'): straight-through Gumbel hard mask in training (forward value 0/1,
        gradient of the soft one), ``logit ≥ 0`` in eval (no gradient to the mask unit)."""
        logits = self.mask_logits(guide, rows)
        ho, wo = logits.shape[2:]
        if self.block_size is not None:
            # one decision per block: the mean logit of its pixels (partial edge blocks: of those inside)
            logits = F.avg_pool2d(logits, self.block_size, self.block_size, ceil_mode=True)
        if self.training:
            soft, hard = gumbel_sigmoid_mask(logits, self.temperature)
            # soft − soft.detach() is exactly 0: the forward value is exactly the 0/1 hard mask
            m = hard + (soft - soft.detach())
        else:
            m = (logits >= 0).to(logits.dtype)
        if self.block_size is not None:
            n = self.block_size
            m = m.repeat_interleave(n, 2).repeat_interleave(n, 3)[:, :, :ho, :wo]
        return m

    def adaptive_forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        fast = not self.training and self.sparse_inference and not torch.is_grad_enabled()
        m = self.mask(guide)
        self._last.mask = m
        geo = (self.stride, self.padding, self.dilation, self.groups)
        path = self.inference_path(m) if fast else "dense"
        if path == "tiles":
            tile = self.block_size or self.tile_size
            return tiled_masked_conv2d(
                x,
                m,
                self.weight,
                self.bias,
                *geo,
                residual=self.residual,
                tile=tile,
                mask_is_tiled=self.block_size is not None,
            )
        if path == "pixels":
            return sparse_masked_conv2d(x, m, self.weight, self.bias, *geo, residual=self.residual)
        return dense_masked_conv2d(x, m, self.weight, self.bias, *geo, residual=self.residual)

    def inference_path(self, m: torch.Tensor) -> str:
        """ "dense", "tiles" or "pixels" for an eval forward without grad with mask ``m``: dense above
        ``dense_above`` active; else the forced ``sparse_path``, or ("auto") the cheapest by the cost
        model (:data:`TILE_COST`, :data:`PIXEL_COST`; the dense conv costs 1)."""
        pixels = float(m.mean())
        if pixels > self.dense_above:
            return "dense"
        if self.sparse_path != "auto":
            return self.sparse_path
        tiles = pixels if self.block_size is not None else float(tile_activity(m, self.tile_size).float().mean())
        costs = {
            "dense": 1.0,
            "tiles": TILE_COST[0] + TILE_COST[1] * tiles,
            "pixels": PIXEL_COST[0] + PIXEL_COST[1] * pixels,
        }
        return min(costs, key=costs.__getitem__)

    # ----------------------------------------------------------------------------------------------
    def auxiliary_loss(self) -> torch.Tensor:
        """``sparsity_weight · (mean active fraction − budget)²`` of the last forward's mask (its
        straight-through gradient reaches the mask unit in training). Zero before any forward or with
        ``budget=None``."""
        m = self._last.mask
        if m is None or self.budget is None:
            return self.weight.new_zeros(())
        return self.sparsity_weight * (m.float().mean() - self.budget).square()

    def active_fraction(self) -> float | None:
        """Fraction of active output pixels in the last forward (None before any)."""
        m = self._last.mask
        return None if m is None else float(m.detach().float().mean())

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **options: Any) -> SparseGatedConv2d:
        op = cls.build_like(conv, **options)
        op.copy_conv_weight(conv)
        with torch.no_grad():
            # Constant logit init_active_logit ≥ 0: every pixel active in eval ⇒ exactly the conv.
            op.mask_unit.weight.zero_()
            op.mask_unit.bias.fill_(op.init_active_logit)
        return op

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", budget={self.budget}"
        if self.residual:
            s += ", residual=True"
        if self.block_size is not None:
            s += f", block_size={self.block_size}"
        if self.sparsity_weight != 1.0:
            s += f", sparsity_weight={self.sparsity_weight}"
        if not math.isclose(self.temperature, 1.0):
            s += f", temperature={self.temperature}"
        return s
