"""Classical (non-learned) guided depth upsamplers, in torch: the baselines a learned joint
upsampling network must beat besides plain bilinear interpolation.

- :func:`box_filter` — the mean over a (2r+1)×(2r+1) window, by cumulative sums (O(1) per pixel in r),
  averaging only over the pixels inside the image (as He et al.'s reference code does).
- :func:`guided_filter` — He, Sun & Tang, "Guided Image Filtering" (ECCV 2010 / TPAMI 2013), the
  colour-guide form: per window ``q = aᵀI + b`` with ``a = (Σ_I + εU)⁻¹ cov(I, p)``, ``b = p̄ − aᵀĪ``,
  then ``a`` and ``b`` averaged over the windows that cover each pixel. Applied to the bilinear
  upsampling of the low-resolution depth with the high-resolution RGB as guide.
- :func:`joint_bilateral_upsample` — Kopf, Cohen, Lischinski & Uyttendaele, "Joint Bilateral
  Upsampling" (SIGGRAPH 2007): each high-resolution pixel is the average of the low-resolution depth
  samples around it, weighted by a spatial Gaussian (distance on the low-resolution grid) times a range
  Gaussian of the colour difference between the pixel and the high-resolution pixel each sample was
  taken at.

All work on B×C×H×W float tensors on any device, without loops over pixels.
"""

from __future__ import annotations

import torch


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of ``x`` (B×C×H×W) over the (2r+1)² window around each pixel, clipped to the image
    (each output divides by the number of pixels of its window that lie inside the image)."""
    if radius < 0:
        raise ValueError(f"box_filter: radius must be >= 0, got {radius}")
    if radius == 0:
        return x.clone()

    def window_sum(t: torch.Tensor) -> torch.Tensor:
        # separable: along each axis, the sum over [i0, i1) is c[i1] − c[i0] with c the cumulative
        # sum after a leading zero
        for dim in (-2, -1):
            n = t.shape[dim]
            c = torch.cat([torch.zeros_like(t.narrow(dim, 0, 1)), t.cumsum(dim)], dim)
            i = torch.arange(n, device=t.device)
            t = c.index_select(dim, (i + radius + 1).clamp(max=n)) - c.index_select(dim, (i - radius).clamp(min=0))
        return t

    ones = torch.ones(1, 1, *x.shape[-2:], device=x.device, dtype=x.dtype)
    return window_sum(x) / window_sum(ones)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter of ``src`` (B×1×H×W, or B×C: each channel filtered alike) with a
    ``guide`` of B×Cg×H×W (Cg = 1: the grey-guide form; Cg > 1: the colour-guide form with a Cg×Cg
    covariance per window). ``eps`` regularises in the guide's units squared."""
    if guide.shape[0] != src.shape[0] or guide.shape[-2:] != src.shape[-2:]:
        raise ValueError(
            f"guided_filter: guide {tuple(guide.shape)} and src {tuple(src.shape)} must share "
            "batch size and height×width"
        )
    if eps <= 0:
        raise ValueError(f"guided_filter: eps must be > 0, got {eps}")
    # float64 for the window statistics: covariances are differences of nearly equal means
    dtype = src.dtype
    guide, src = guide.double(), src.double()
    b, cg, h, w = guide.shape
    mean = lambda t: box_filter(t, radius)  # noqa: E731
    mean_i = mean(guide)  # B×Cg×H×W
    mean_p = mean(src)  # B×C×H×W
    # cov(I, p) per guide channel and source channel: B×C×Cg×H×W
    cov_ip = torch.stack([mean(guide[:, j : j + 1] * src) - mean_i[:, j : j + 1] * mean_p for j in range(cg)], 2)
    # Σ_I: B×Cg×Cg×H×W (symmetric)
    var_i = torch.empty(b, cg, cg, h, w, dtype=guide.dtype, device=guide.device)
    for j in range(cg):
        for k in range(j, cg):
            v = mean(guide[:, j : j + 1] * guide[:, k : k + 1])[:, 0] - mean_i[:, j] * mean_i[:, k]
            var_i[:, j, k] = v
            var_i[:, k, j] = v
    if cg == 1:
        a = cov_ip / (var_i[:, :, 0] + eps)[:, None]  # B×C×1×H×W
    elif cg == 3:
        a = _solve_sym3(var_i, eps, cov_ip)
    else:
        eye = torch.eye(cg, dtype=guide.dtype, device=guide.device)
        sigma = var_i.permute(0, 3, 4, 1, 2) + eps * eye  # B×H×W×Cg×Cg
        rhs = cov_ip.permute(0, 3, 4, 2, 1)  # B×H×W×Cg×C
        a = torch.linalg.solve(sigma, rhs).permute(0, 4, 3, 1, 2)  # B×C×Cg×H×W
    bias = mean_p - (a * mean_i[:, None]).sum(2)  # B×C×H×W
    mean_a = mean(a.flatten(1, 2)).unflatten(1, (a.shape[1], cg))
    mean_b = mean(bias)
    return ((mean_a * guide[:, None]).sum(2) + mean_b).to(dtype)


def _solve_sym3(var: torch.Tensor, eps: float, rhs: torch.Tensor) -> torch.Tensor:
    """(Σ + eps·I)⁻¹ rhs per pixel for symmetric 3×3 Σ (B×3×3×H×W) and rhs B×C×3×H×W, by the
    adjugate (the colour guided filter's case; several times faster than a batched solve)."""
    a, b, c = var[:, 0, 0] + eps, var[:, 0, 1], var[:, 0, 2]
    d, e, f = var[:, 1, 1] + eps, var[:, 1, 2], var[:, 2, 2] + eps
    # adjugate of [[a, b, c], [b, d, e], [c, e, f]] (symmetric)
    i00, i01, i02 = d * f - e * e, c * e - b * f, b * e - c * d
    i11, i12, i22 = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * i00 + b * i01 + c * i02  # > 0: Σ + eps·I is positive definite
    r0, r1, r2 = rhs[:, :, 0], rhs[:, :, 1], rhs[:, :, 2]
    inv = [(i00, i01, i02), (i01, i11, i12), (i02, i12, i22)]
    det = det[:, None]
    return torch.stack([(row[0][:, None] * r0 + row[1][:, None] * r1 + row[2][:, None] * r2) / det for row in inv], 2)


def joint_bilateral_upsample(
    guide: torch.Tensor,
    depth_lr: torch.Tensor,
    scale: int,
    *,
    radius: int = 2,
    sigma_spatial: float = 1.0,
    sigma_range: float = 0.1,
) -> torch.Tensor:
    """Kopf et al.'s joint bilateral upsampling of ``depth_lr`` (B×C×h×w) by ``scale`` with the
    high-resolution ``guide`` (B×Cg×(h·scale)×(w·scale)).

    Low-resolution sample (i, j) is taken to sit at high-resolution pixel (i·s + ⌊s/2⌋, j·s + ⌊s/2⌋)
    (centre-pixel decimation). For a high-resolution pixel p at continuous low-resolution position
    p↓ = (p − ⌊s/2⌋)/s, the (2·radius+1)² samples q around ⌊p/s⌋ are weighted by
    exp(−|p↓ − q|²/2σ_s²) (σ_s in low-resolution pixels) · exp(−|I_p − I_q|²/2σ_r²) (σ_r in the
    guide's units; |·| over the guide's channels). Samples outside the image are left out."""
    b, c, h, w = depth_lr.shape
    s = scale
    if guide.shape[0] != b or tuple(guide.shape[-2:]) != (h * s, w * s):
        raise ValueError(
            f"joint_bilateral_upsample: guide {tuple(guide.shape)} must be B×Cg×{h * s}×{w * s} "
            f"for depth {tuple(depth_lr.shape)} at scale {s}"
        )
    o = s // 2
    guide_lr = guide[..., o::s, o::s]  # the colour at each sample
    dev, dt = depth_lr.device, depth_lr.dtype
    # per high-resolution row/column: its low-resolution cell and its offset from that cell's sample
    ys = torch.arange(h * s, device=dev)
    xs = torch.arange(w * s, device=dev)
    cell_y, cell_x = ys // s, xs // s
    off_y = (ys - o).to(dt) / s - cell_y.to(dt)  # p↓ − cell, in (−1, 1)
    off_x = (xs - o).to(dt) / s - cell_x.to(dt)
    num = torch.zeros(b, c, h * s, w * s, device=dev, dtype=dt)
    den = torch.zeros(b, 1, h * s, w * s, device=dev, dtype=dt)
    for dy in range(-radius, radius + 1):
        qy = cell_y + dy
        in_y = (qy >= 0) & (qy < h)
        qy = qy.clamp(0, h - 1)
        wy = torch.exp(-((off_y - dy) ** 2) / (2 * sigma_spatial**2)) * in_y
        for dx in range(-radius, radius + 1):
            qx = cell_x + dx
            in_x = (qx >= 0) & (qx < w)
            qx = qx.clamp(0, w - 1)
            wx = torch.exp(-((off_x - dx) ** 2) / (2 * sigma_spatial**2)) * in_x
            d_q = depth_lr[..., qy[:, None], qx[None, :]]  # B×C×H×W
            i_q = guide_lr[..., qy[:, None], qx[None, :]]
            rng = torch.exp(-(guide - i_q).square().sum(1, keepdim=True) / (2 * sigma_range**2))
            wgt = rng * (wy[:, None] * wx[None, :])
            num += wgt * d_q
            den += wgt
    # den > 0: the pixel's own cell is always inside the image with spatial weight > 0; the range
    # weight can underflow for a colour far from every sample, then fall back to the nearest sample
    nearest = depth_lr[..., cell_y[:, None], cell_x[None, :]]
    return torch.where(den > 1e-12, num / den.clamp(min=1e-12), nearest)
