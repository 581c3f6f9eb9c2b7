"""PAC's PyTorch backend: the contraction and the feature distance in plain PyTorch, on any device and dtype.

It implements :class:`adaptconv.ops.pac_contraction.PacBackend` (the contract the compiled CPU backend
:mod:`adaptconv.ops.cpu_pac` and the Triton backend :mod:`adaptconv.ops.triton_pac` implement too), and
is the reference both are tested against. It runs wherever they do not (other dtypes, no compiler,
``config.cpu_kernels`` off, no Triton).

- The contraction ``y[b,o,p] = Σ_j Σ_c W[o,c,j] · K[b,j,p] · x_j[b,c,p] + bias[o]`` is the tiled-GEMM loop
  of :mod:`adaptconv.ops.tiling` with PAC's per-tap work (:class:`_PacTaps`): the K-weighted taps in
  forward; ``∂K_j = Σ_c q ⊙ x_j`` and ``∂x += K_j ⊙ q`` at the tap's shift in backward.
- The adapting kernel's distance ``d[b,j,p] = Σ_g γ_g (f_j[b,g,p] − c[b,g,p])²`` is computed tap by tap
  from the replicate-padded guide, never unfolding it; for stride 1 and odd kernels with the window's
  own centre it uses the symmetry d(p, p+δ) = d(p+δ, p) to compute each pair of opposite taps once.

What the backward pass reads (``saved``) is the input itself: x for the contraction, the guide for the
distance.
"""

from __future__ import annotations

import torch

from .tiling import (
    Geometry,
    Tile,
    gather,
    plan,
    row_span,
    scatter_add,
    tap,
    tap_grouped,
    tile_rows,
    tiled_gemm,
    tiled_gemm_backward,
)

__all__ = ["usable", "pac_forward", "pac_backward", "distance_forward", "distance_backward"]


def usable(*tensors: torch.Tensor) -> bool:
    """Always: this backend runs on every device and dtype."""
    return True


# --------------------------------------------------------------------------------------------------
# The contraction
class _PacTaps:
    """PAC's per-tap work on one tile (:class:`adaptconv.ops.tiling.TileTaps`): X̃_j = K_j ⊙ x_j."""

    def __init__(self, kernel, tile: Tile, geom: Geometry, groups: int, xc=None, gx=None, gk=None):
        self.kts = tile_rows(kernel, tile).unbind(1)
        self.tile, self.geom, self.groups, self.gx, self.gk = tile, geom, groups, gx, gk
        self.gxc = torch.zeros_like(xc) if gx is not None else None

    def weighted(self, j, xj, out):
        torch.mul(xj, self.kts[j], out=out)

    def backward(self, j, xj, q, p):
        tile = self.tile
        if self.gk is not None:
            self.gk[tile.b0 : tile.b1, j, tile.r0 : tile.r1] = torch.mul(q, xj, out=p).sum((0, 1))
        if self.gxc is not None:
            tap_grouped(self.gxc, self.geom, j, tile.rows, q.shape[-1], self.groups).addcmul_(q, self.kts[j])

    def finish(self):
        if self.gxc is not None:
            tile = self.tile
            scatter_add(
                self.gx, self.gxc, tile.b0, tile.b1, *row_span(self.geom, tile.r0, tile.r1), self.geom.pads, "zeros"
            )


def pac_forward(x, kernel, weight, bias, geom: Geometry, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x): the K-weighted taps of each tile stacked channel-major (F.unfold's order, so the GEMM sums
    in nn.Conv2d's order and K ≡ 1 reproduces it exactly), contracted with W in one GEMM."""
    y = tiled_gemm(x, weight, bias, geom, groups, lambda tile, xc: _PacTaps(kernel, tile, geom, groups))
    return y, x


def pac_backward(saved, kernel, weight, gy, geom: Geometry, groups: int, need_x: bool, need_k: bool, need_w: bool):
    """(∂x, ∂K, ∂W); ``saved`` is x."""
    x = saved
    gx = torch.zeros_like(x) if need_x else None
    gk = kernel.new_empty(kernel.shape) if need_k else None
    gw = tiled_gemm_backward(
        x,
        weight,
        gy,
        geom,
        groups,
        lambda tile, xc: _PacTaps(kernel, tile, geom, groups, xc, gx, gk),
        need_w,
        need_x or need_k,
    )
    return gx, gk, gw


# --------------------------------------------------------------------------------------------------
# The adapting kernel's distance:  d[b,j,p] = Σ_g γ_g (f_j[b,g,p] − c[b,g,p])²
def _centre(gc: torch.Tensor, geom: Geometry, rows: int, wo: int) -> torch.Tensor:
    """The window centre of a padded guide chunk (the average of the middle taps for even kernels),
    summed in the order of :func:`adaptconv.ops.taps.window_centres` so the values agree exactly."""
    out = None
    for j in geom.centre_taps:
        s = tap(gc, geom, j, rows, wo)
        out = s if out is None else out + s
    n = len(geom.centre_taps)
    return out if n == 1 else out / n


def distance_forward(guide, centre, scale, geom: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(d B×T×H'×W', guide); ``centre`` None means the window's own centre."""
    if centre is None and geom.symmetric:
        return _distance_forward_pairs(guide, scale, geom), guide
    b, cg_, h, w = guide.shape
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    out = guide.new_empty(b, t, ho, wo)
    tiles = plan(b, ho, wo, cg_)
    ebuf = guide.new_empty(cg_ * tiles.most)
    for tile in tiles.tiles:
        b0, b1, r0, r1 = tile
        nb, rows = tile.nb, tile.rows
        n = rows * wo
        gc = gather(guide, b0, b1, *row_span(geom, r0, r1), geom.pads, "replicate")
        c = _centre(gc, geom, rows, wo) if centre is None else tile_rows(centre, tile)
        e = ebuf[: cg_ * nb * n].view(nb, cg_, rows, wo)
        for j in range(t):
            torch.sub(tap(gc, geom, j, rows, wo), c, out=e)
            e.mul_(e)
            if scale is None:
                out[b0:b1, j, r0:r1] = e.sum(1)
            else:
                for s in range(nb):
                    torch.mv(e[s].view(cg_, n).t(), scale, out=out[b0 + s, j].view(-1)[r0 * wo : r1 * wo])
    return out, guide


def distance_backward(saved, centre, scale, gd, geom: Geometry, need_f: bool, need_c: bool, need_s: bool):
    """Gradients of Σ_g s_g (f_j − c)²; ``saved`` is the guide. With t_j = gd_j·(f_j − c): ∂f (at tap j)
    = 2s·t_j, ∂c = −2s·Σ_j t_j, and ∂s = Σ_j Σ_p t_j·(f_j − c) = Σ_q f·A + Σ_p c·(−Σ_j t_j) with A the
    taps' t_j accumulated where they were read (so ∂s costs no per-tap pass)."""
    guide, gd = saved, gd.contiguous()
    if centre is None and geom.symmetric:
        return _distance_backward_pairs(guide, scale, gd, geom, need_f, need_s)
    b, cg_, h, w = guide.shape
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    internal = centre is None
    gf = torch.zeros_like(guide) if need_f else None
    gcen = torch.zeros_like(centre) if (not internal and need_c) else None
    gs = guide.new_zeros(cg_) if need_s else None
    s4 = None if scale is None else scale.view(1, -1, 1, 1)
    need_a = need_f or need_s
    tiles = plan(b, ho, wo, cg_)
    ebuf = guide.new_empty(cg_ * tiles.most)
    accbuf = guide.new_empty(cg_ * tiles.most)
    for tile in tiles.tiles:
        b0, b1, r0, r1 = tile
        nb, rows = tile.nb, tile.rows
        lo, hi = row_span(geom, r0, r1)
        gc = gather(guide, b0, b1, lo, hi, geom.pads, "replicate")
        c = _centre(gc, geom, rows, wo) if internal else tile_rows(centre, tile)
        gdc = tile_rows(gd, tile)
        e = ebuf[: cg_ * nb * rows * wo].view(nb, cg_, rows, wo)
        acc = accbuf[: cg_ * nb * rows * wo].view(nb, cg_, rows, wo).zero_()  # −Σ_j t_j
        a = torch.zeros_like(gc) if need_a else None  # Σ_j t_j where tap j was read
        for j in range(t):
            torch.sub(tap(gc, geom, j, rows, wo), c, out=e)
            e.mul_(gdc[:, j, None])
            if need_a:
                tap(a, geom, j, rows, wo).add_(e)
            acc.sub_(e)
        if need_s:
            gs += (gc * a).sum((0, 2, 3)) + (c * acc).sum((0, 2, 3))
        if s4 is not None:
            acc.mul_(2 * s4)
        else:
            acc.mul_(2)
        if need_f:
            a.mul_(2 * s4 if s4 is not None else 2)
            if internal:  # the centre is the guide at the middle tap(s): its gradient goes there
                taps = geom.centre_taps
                share = acc / len(taps) if len(taps) > 1 else acc
                for j in taps:
                    tap(a, geom, j, rows, wo).add_(share)
            scatter_add(gf, a, b0, b1, lo, hi, geom.pads, "replicate")
        if gcen is not None:
            gcen[b0:b1, :, r0:r1] = acc
    return gf, gcen, gs


# Stride 1, odd kernel, the window centre as the centre (Geometry.symmetric): the distance is symmetric,
# d(p, p+δ) = d(p+δ, p), so the taps ±δ share one difference E_δ(q) = f(q+δ) − f(q), computed once on
# a box slightly larger than the tile (the centre tap's distance is exactly 0). This halves the work.
def _pair_boxes(geom: Geometry, rows: int, wo: int):
    """For each tap pair (j, mirror): the box origin, its size, δ, and where taps j and mirror read it."""
    (kh, kw), (dh, dw) = geom.kernel_size, geom.dilation
    ch, cw = (kh - 1) // 2 * dh, (kw - 1) // 2 * dw
    t = geom.taps
    out = []
    for j in range(t // 2):
        a, b = divmod(j, kw)
        oj = (a * dh, b * dw)
        om = (2 * ch - oj[0], 2 * cw - oj[1])
        delta = (oj[0] - ch, oj[1] - cw)
        r_lo, c_lo = min(ch, om[0]), min(cw, om[1])
        size = (rows + abs(delta[0]), wo + abs(delta[1]))
        out.append((j, t - 1 - j, (r_lo, c_lo), size, delta, (ch - r_lo, cw - c_lo), (om[0] - r_lo, om[1] - c_lo)))
    return out


def _box(t: torch.Tensor, origin, size) -> torch.Tensor:
    return t[:, :, origin[0] : origin[0] + size[0], origin[1] : origin[1] + size[1]]


def _pair_scratch(geom: Geometry, tiles, wo: int) -> int:
    """Pixels of the largest tile's box (the tile plus the window's reach)."""
    (kh, kw), (dh, dw) = geom.kernel_size, geom.dilation
    return max(t.nb * (t.rows + (kh - 1) * dh) for t in tiles.tiles) * (wo + (kw - 1) * dw)


def _distance_forward_pairs(guide, scale, geom: Geometry) -> torch.Tensor:
    b, cg_, h, w = guide.shape
    t = geom.taps
    ho, wo = geom.out_size(h, w)
    out = guide.new_empty(b, t, ho, wo)
    out[:, t // 2] = 0
    tiles = plan(b, ho, wo, cg_)
    most = _pair_scratch(geom, tiles, wo)
    ebuf = guide.new_empty(cg_ * most)
    dbuf = guide.new_empty(most)
    for tile in tiles.tiles:
        b0, b1, r0, r1 = tile
        nb, rows = tile.nb, tile.rows
        gc = gather(guide, b0, b1, *row_span(geom, r0, r1), geom.pads, "replicate")
        for j, jm, origin, size, delta, at_j, at_m in _pair_boxes(geom, rows, wo):
            n = size[0] * size[1]
            e = ebuf[: nb * cg_ * n].view(nb, cg_, *size)
            torch.sub(_box(gc, (origin[0] + delta[0], origin[1] + delta[1]), size), _box(gc, origin, size), out=e)
            e.mul_(e)
            d = dbuf[: nb * n].view(nb, *size)
            if scale is None:
                torch.sum(e, 1, out=d)
            else:
                for s_ in range(nb):
                    torch.mv(e[s_].view(cg_, n).t(), scale, out=d[s_].view(-1))
            out[b0:b1, j, r0:r1] = d[:, at_j[0] : at_j[0] + rows, at_j[1] : at_j[1] + wo]
            out[b0:b1, jm, r0:r1] = d[:, at_m[0] : at_m[0] + rows, at_m[1] : at_m[1] + wo]
    return out


def _distance_backward_pairs(guide, scale, gd, geom: Geometry, need_f: bool, need_s: bool):
    b, cg_, h, w = guide.shape
    ho, wo = geom.out_size(h, w)
    gf = torch.zeros_like(guide) if need_f else None
    gs = guide.new_zeros(cg_) if need_s else None
    tiles = plan(b, ho, wo, cg_)
    most = _pair_scratch(geom, tiles, wo)
    ebuf = guide.new_empty(cg_ * most)
    gbuf = guide.new_empty(most)
    for tile in tiles.tiles:
        b0, b1, r0, r1 = tile
        nb, rows = tile.nb, tile.rows
        lo, hi = row_span(geom, r0, r1)
        gc = gather(guide, b0, b1, lo, hi, geom.pads, "replicate")
        gdc = tile_rows(gd, tile)
        a = torch.zeros_like(gc)  # +t at q+δ, −t at q, t = G·E_δ
        for j, jm, origin, size, delta, at_j, at_m in _pair_boxes(geom, rows, wo):
            n = size[0] * size[1]
            g2 = gbuf[: nb * n].view(nb, *size).zero_()
            g2[:, at_j[0] : at_j[0] + rows, at_j[1] : at_j[1] + wo] += gdc[:, j]
            g2[:, at_m[0] : at_m[0] + rows, at_m[1] : at_m[1] + wo] += gdc[:, jm]
            e = ebuf[: nb * cg_ * n].view(nb, cg_, *size)
            shifted = (origin[0] + delta[0], origin[1] + delta[1])
            torch.sub(_box(gc, shifted, size), _box(gc, origin, size), out=e)
            e.mul_(g2[:, None])
            _box(a, shifted, size).add_(e)
            _box(a, origin, size).sub_(e)
        if need_s:
            gs += (gc * a).sum((0, 2, 3))  # Σ_q f·a = Σ t·E_δ
        if need_f:
            a.mul_(2 * scale.view(1, -1, 1, 1) if scale is not None else 2)
            scatter_add(gf, a, b0, b1, lo, hi, geom.pads, "replicate")
    return gf, None, gs
