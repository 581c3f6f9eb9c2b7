"""The tiling core (adaptconv.ops.tiling): tiles cover the output once, gather/scatter_add are adjoint,
the tap views read what F.unfold reads, and the tiled-GEMM loop gives a plain convolution when the
per-tap work passes the taps through unweighted (through a contiguous buffer when the output's channel
stride aliases)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from adaptconv.ops import config
from adaptconv.ops.tiling import (
    Tile,
    gather,
    geometry,
    plan,
    row_span,
    scatter_add,
    tap,
    tiled_gemm,
    tiled_gemm_backward,
)


def test_tiles_cover_the_output_once():
    for b, ho, wo, per_pixel, budget in itertools.product((1, 3), (1, 7), (1, 5), (1, 16), (1, 50, 10**6)):
        with config.override(chunk_elements=budget):
            tiles = plan(b, ho, wo, per_pixel)
        seen = torch.zeros(b, ho, dtype=torch.int64)
        for b0, b1, r0, r1 in tiles.tiles:
            seen[b0:b1, r0:r1] += 1
        assert (seen == 1).all()
        assert tiles.most == max(t.nb * t.rows for t in tiles.tiles) * wo


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize(
    "pads,lo,hi",
    [((1, 1, 1, 1), 0, 10), ((2, 0, 1, 3), 1, 5), ((3, 3, 0, 0), 0, 2), ((3, 3, 0, 0), 10, 14), ((3, 3, 0, 0), 12, 14)],
)
def test_gather_pads_like_f_pad_and_scatter_add_is_its_adjoint(mode, pads, lo, hi):
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(2, 3, 8, 5, generator=gen, dtype=torch.float64)
    top, bottom, left, right = pads
    full = F.pad(t, (left, right, top, bottom), mode="replicate" if mode == "replicate" else "constant")
    got = gather(t, 0, 2, lo, hi, pads, mode)
    torch.testing.assert_close(got, full[:, :, lo:hi], rtol=0, atol=0)
    g = torch.randn(got.shape, generator=gen, dtype=torch.float64)  # <gather(t), g> = <t, scatter_add(g)>
    back = torch.zeros_like(t)
    scatter_add(back, g, 0, 2, lo, hi, pads, mode)
    torch.testing.assert_close((got * g).sum(), (t * back).sum())


def test_taps_read_what_unfold_reads():
    geom = geometry((3, 2), (2, 1), (1, 0), (1, 2))
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    ho, wo = geom.out_size(9, 7)
    cols = F.unfold(x, (3, 2), dilation=(1, 2), padding=(1, 0), stride=(2, 1)).view(2, 3, 6, ho, wo)
    xc = gather(x, 0, 2, *row_span(geom, 0, ho), geom.pads, "zeros")
    for j in range(geom.taps):
        torch.testing.assert_close(tap(xc, geom, j, ho, wo), cols[:, :, j], rtol=0, atol=0)


class _Unweighted:
    """Per-tap work of a plain convolution: X̃_j = x_j; its input gradient is q at the tap's shift."""

    def __init__(self, geom, tile: Tile, xc, gx=None):
        self.geom, self.tile, self.xc, self.gx = geom, tile, xc, gx
        self.gxc = torch.zeros_like(xc) if gx is not None else None

    def weighted(self, j, xj, out):
        out.copy_(xj)

    def backward(self, j, xj, q, p):
        from adaptconv.ops.tiling import tap_grouped

        tap_grouped(self.gxc, self.geom, j, self.tile.rows, q.shape[-1], q.shape[0]).add_(q)

    def finish(self):
        t = self.tile
        scatter_add(self.gx, self.gxc, t.b0, t.b1, *row_span(self.geom, t.r0, t.r1), self.geom.pads, "zeros")


@pytest.mark.parametrize("h,w,chunk", [(9, 7, 1 << 20), (9, 7, 12), (32, 16, 1 << 20), (32, 16, 8 * 16)])
def test_the_tiled_gemm_loop_is_a_convolution_with_unweighted_taps(h, w, chunk):
    """32×16 = 512 pixels: the channel stride aliases, so the output goes through the buffer."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    geom = geometry((3, 3), (1, 1), (1, 1), (1, 1))
    with config.override(chunk_elements=chunk):
        y = tiled_gemm(x, weight, bias, geom, 2, lambda tile, xc: _Unweighted(geom, tile, xc))
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        gx = torch.zeros_like(x)
        gw = tiled_gemm_backward(x, weight, gy, geom, 2, lambda tile, xc: _Unweighted(geom, tile, xc, gx), True, True)
    xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
    yr = F.conv2d(xr, wr, bias, padding=1, groups=2)
    yr.backward(gy)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(gx, xr.grad)
    torch.testing.assert_close(gw, wr.grad)
