// CPU kernels for deformable convolution v1/v2: the bilinear sampling around its GEMMs.
//
// Built on first use by adaptconv/ops/deform_cpu.py (g++ -O3 -march=native -fopenmp) and called
// through ctypes; the GEMMs stay in PyTorch (MKL). Each call works on one tile: output pixels
// p0 … p0+n−1 (flattened over H'×W') of one sample.
//
// Layouts (all contiguous, row-major, one sample):
//   xh    H × W × C              the input, channels last, so the C values of a sampling corner are
//                                contiguous and every channel loop is a plain vector loop
//   off   (G·T·2) × H' × W'      offsets, [dy, dx] per tap, offset groups outermost (torchvision's)
//   mask  (G·T) × H' × W'        v2's mask, or null for v1
//   cols  n × (T·C)              the sampled taps of the tile, one row per pixel, the row ordered
//                                (conv group, tap, channel in group): the columns of conv group k
//                                are one block of T·C/groups, which a GEMM with the weight
//                                O/groups × (T·C/groups), permuted to (tap, channel), contracts
// T = kh·kw taps, G offset groups (channels split into G contiguous blocks, each with its offsets).
//
// Sampling follows torchvision's kernel exactly: the tap reads x at
//   (r·sh − ph + a·dh + dy, q·sw − pw + b·dw + dx)
// bilinearly, each of the four corners contributing only when it lies inside the image. A point
// with no corner inside (including a NaN or infinite offset, for which no comparison holds) reads
// 0 and has no gradient, and is never turned into an integer index.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

namespace {

struct Geom {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// A run of channels [c0, c1) inside one offset group and one conv group; its columns for tap j
// start at  k·T·Cg + j·Cg + (c0 − k·Cg)  in a cols row.
struct Segment {
  int64_t c0, c1, og, k;
};

std::vector<Segment> segments(int64_t C, int64_t groups, int64_t ogroups, int64_t lo, int64_t hi) {
  std::vector<Segment> out;
  const int64_t cg = C / groups, cog = C / ogroups;
  for (int64_t c = lo; c < hi;) {
    const int64_t k = c / cg, og = c / cog;
    const int64_t end = std::min({hi, (k + 1) * cg, (og + 1) * cog});
    out.push_back({c, end, og, k});
    c = end;
  }
  return out;
}

// Pixels per run of the coordinate pass below; its buffers (G·T·RUN·(4 int32 + 2 T)) stay in L1.
constexpr int64_t RUN = 64;

// The bilinear set-up of a run of np output pixels p … p+np−1 at every (offset group, tap) gj. It is
// computed a run at a time, vectorised over the pixels (the offsets are planar, so a run's offsets are
// contiguous): done point by point, the floors, conversions and index arithmetic cost more than the
// sampling itself on narrow layers. Writes, for corner k of (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1):
//   at[(4·gj + k)·RUN + ii]   its pixel index y·W + x in the H×W plane, or −1 outside the image;
//   ly/lx[gj·RUN + ii]        the fractional parts.
// A point with no corner inside (a NaN or ±inf offset included) gets four −1; the conversions to
// integers only ever see values in [−2, max(H, W)].
// Pixel indices are int32 (the caller keeps H·W < 2³¹). Returns how many of the offsets read were NaN
// or infinite (v − v is NaN exactly for those), so the caller needs no separate pass to find them.
template <typename T>
int64_t locate_run(const T* off, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t ogroups, const Geom& g,
                int64_t p, int64_t np, int32_t* at, T* ly, T* lx) {
  const int64_t hw = Ho * Wo;
  int32_t rb[RUN], qb[RUN];  // the window origin of each pixel of the run
  for (int64_t ii = 0, r = p / Wo, q = p % Wo; ii < np; ++ii) {
    rb[ii] = int32_t(r * g.sh - g.ph);
    qb[ii] = int32_t(q * g.sw - g.pw);
    if (++q == Wo) q = 0, ++r;
  }
  const int32_t H32 = int32_t(H), W32 = int32_t(W);
  const T fH = T(H), fW = T(W);
  int64_t nonfinite = 0;
  for (int64_t og = 0, gj = 0; og < ogroups; ++og)
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj, ++gj) {
        const T* __restrict__ oy = off + 2 * gj * hw + p;
        const T* __restrict__ ox = oy + hw;
        int32_t* __restrict__ a0 = at + 4 * gj * RUN;
        int32_t* __restrict__ a1 = a0 + RUN;
        int32_t* __restrict__ a2 = a1 + RUN;
        int32_t* __restrict__ a3 = a2 + RUN;
        T* __restrict__ fy_out = ly + gj * RUN;
        T* __restrict__ fx_out = lx + gj * RUN;
        const int32_t dy = int32_t(ki * g.dh), dx = int32_t(kj * g.dw);
#pragma omp simd reduction(+ : nonfinite)
        for (int64_t ii = 0; ii < np; ++ii) {
          nonfinite += int64_t(!(oy[ii] - oy[ii] == T(0))) + int64_t(!(ox[ii] - ox[ii] == T(0)));
          T py = T(rb[ii] + dy) + oy[ii], px = T(qb[ii] + dx) + ox[ii];
          // Clamped into [−2, H] × [−2, W] (a NaN to −2: the comparison fails), where a point outside
          // [−1, H) × [−1, W) has no corner inside; selects rather than branches, so the loop vectorises.
          py = py > T(-2) ? py : T(-2);
          py = py < fH ? py : fH;
          px = px > T(-2) ? px : T(-2);
          px = px < fW ? px : fW;
          // floor by truncation (std::floor does not vectorise without -fno-trapping-math)
          const int32_t ty = int32_t(py), tx = int32_t(px);
          const int32_t y0 = ty - (T(ty) > py), x0 = tx - (T(tx) > px), base = y0 * W32 + x0;
          const T fy = T(y0), fx = T(x0);
          const int32_t vy0 = (y0 >= 0) & (y0 < H32), vy1 = (y0 >= -1) & (y0 + 1 < H32);
          const int32_t vx0 = (x0 >= 0) & (x0 < W32), vx1 = (x0 >= -1) & (x0 + 1 < W32);
          a0[ii] = (vy0 & vx0) ? base : -1;
          a1[ii] = (vy0 & vx1) ? base + 1 : -1;
          a2[ii] = (vy1 & vx0) ? base + W32 : -1;
          a3[ii] = (vy1 & vx1) ? base + W32 + 1 : -1;
          fy_out[ii] = py - fy;
          fx_out[ii] = px - fx;
        }
      }
  return nonfinite;
}

// One thread's buffers for locate_run.
template <typename T>
struct Run {
  std::vector<int32_t> at;
  std::vector<T> ly, lx;
  explicit Run(int64_t GT) : at(4 * GT * RUN), ly(GT * RUN), lx(GT * RUN) {}
  // corner k of point (gj, ii): its first channel in the H×W×C plane plus c0, or the zero row
  const T* corner(const T* xh, const T* zeros, int64_t gj, int k, int64_t ii, int64_t C, int64_t c0) const {
    const int32_t a = at[(4 * gj + k) * RUN + ii];
    return a >= 0 ? xh + int64_t(a) * C + c0 : zeros;
  }
  bool outside(int64_t gj, int64_t ii) const {
    const int32_t* a = at.data() + 4 * gj * RUN + ii;
    return (a[0] & a[RUN] & a[2 * RUN] & a[3 * RUN]) == -1;  // all four −1 (an index is never negative otherwise)
  }
};

// ---------------------------------------------------------------------------------------------
// Forward: the tile's columns, cols[i, k, j, c] = m_j(p) · bilinear(x_c, p's tap j), p = p0 + i.
// Parallel over runs of the tile's pixels (each writes its own rows). Adds the number of non-finite
// offsets of the tile to *nonfinite (if not null).
template <typename T>
void deform_cols(const T* xh, const T* off, const T* mask, T* cols, int64_t C, int64_t H, int64_t W,
                 int64_t Ho, int64_t Wo, int64_t groups, int64_t ogroups, int64_t p0, int64_t n,
                 const int64_t* g8, int64_t* nonfinite, int nt) {
  const Geom g{g8[0], g8[1], g8[2], g8[3], g8[4], g8[5], g8[6], g8[7]};
  const int64_t Tn = g.kh * g.kw, hw = Ho * Wo, cg = C / groups, TC = Tn * C;
  const std::vector<Segment> segs = segments(C, groups, ogroups, 0, C);
  const std::vector<T> zeros(C, T(0));
  const int64_t runs = (n + RUN - 1) / RUN;
  int64_t found = 0;
#pragma omp parallel num_threads(int(std::min<int64_t>(nt, runs))) reduction(+ : found)
  {
    Run<T> run(ogroups * Tn);
#pragma omp for schedule(static)
    for (int64_t ri = 0; ri < runs; ++ri) {
      const int64_t i0 = ri * RUN, np = std::min(RUN, n - i0);
      found += locate_run(off, H, W, Ho, Wo, ogroups, g, p0 + i0, np, run.at.data(), run.ly.data(), run.lx.data());
      for (int64_t ii = 0; ii < np; ++ii) {
        const int64_t p = p0 + i0 + ii;
        T* row = cols + (i0 + ii) * TC;
        for (int64_t j = 0; j < Tn; ++j) {
          for (const Segment& s : segs) {
            const int64_t gj = s.og * Tn + j, len = s.c1 - s.c0;
            T* __restrict__ d = row + s.k * Tn * cg + j * cg + (s.c0 - s.k * cg);
            if (run.outside(gj, ii)) {
              std::fill(d, d + len, T(0));
              continue;
            }
            const T ly = run.ly[gj * RUN + ii], lx = run.lx[gj * RUN + ii];
            const T m = mask ? mask[gj * hw + p] : T(1), hy = T(1) - ly, hx = T(1) - lx;
            const T w0 = m * hy * hx, w1 = m * hy * lx, w2 = m * ly * hx, w3 = m * ly * lx;
            const T* __restrict__ a = run.corner(xh, zeros.data(), gj, 0, ii, C, s.c0);
            const T* __restrict__ b = run.corner(xh, zeros.data(), gj, 1, ii, C, s.c0);
            const T* __restrict__ c = run.corner(xh, zeros.data(), gj, 2, ii, C, s.c0);
            const T* __restrict__ e = run.corner(xh, zeros.data(), gj, 3, ii, C, s.c0);
#pragma omp simd
            for (int64_t t = 0; t < len; ++t) d[t] = w0 * a[t] + w1 * b[t] + w2 * c[t] + w3 * e[t];
          }
        }
      }
    }
  }
  if (nonfinite) *nonfinite += found;
}

// ---------------------------------------------------------------------------------------------
// Backward of pixels [i0, i1) of a tile, channels [lo, hi), given gcols = ∂L/∂cols (n × T·C):
//   gx (H×W×C, may be null) += m · w_corner · gcols            (scatter to the four corners)
//   acc[(3·gj + 0/1/2)·n + i] += m·Σ_c gcols·∂bilinear/∂dy, m·Σ_c gcols·∂bilinear/∂dx, Σ_c gcols·bilinear
// (acc may be null), over the channels [lo, hi) of offset group g, tap j (gj = g·T + j).
template <typename T>
void backward_block(const T* xh, const T* off, const T* mask, const T* gcols, T* gx, T* acc, int64_t C,
                    int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t groups, int64_t ogroups, int64_t p0,
                    int64_t n, const Geom& g, int64_t i0, int64_t i1, int64_t lo, int64_t hi, T* sink,
                    const T* zeros) {
  const int64_t Tn = g.kh * g.kw, hw = Ho * Wo, cg = C / groups, TC = Tn * C;
  const std::vector<Segment> segs = segments(C, groups, ogroups, lo, hi);
  Run<T> run(ogroups * Tn);
  for (int64_t r0 = i0; r0 < i1; r0 += RUN) {
    const int64_t np = std::min(RUN, i1 - r0);
    locate_run(off, H, W, Ho, Wo, ogroups, g, p0 + r0, np, run.at.data(), run.ly.data(), run.lx.data());
    for (int64_t ii = 0; ii < np; ++ii) {
      const int64_t i = r0 + ii, p = p0 + i;
      const T* grow = gcols + i * TC;
      for (int64_t j = 0; j < Tn; ++j) {
        for (const Segment& s : segs) {
          const int64_t gj = s.og * Tn + j, len = s.c1 - s.c0;
          if (run.outside(gj, ii)) continue;
          const T* __restrict__ gc = grow + s.k * Tn * cg + j * cg + (s.c0 - s.k * cg);
          const T m = mask ? mask[gj * hw + p] : T(1);
          const T ly = run.ly[gj * RUN + ii], lx = run.lx[gj * RUN + ii], hy = T(1) - ly, hx = T(1) - lx;
          const T w0 = m * hy * hx, w1 = m * hy * lx, w2 = m * ly * hx, w3 = m * ly * lx;
          const T* in[4];
          T* out[4];
          for (int k = 0; k < 4; ++k) {
            in[k] = run.corner(xh, zeros, gj, k, ii, C, s.c0);
            // a corner outside the image sends its gradient to a row of the sink (or nowhere)
            out[k] = gx && in[k] != zeros ? gx + (in[k] - xh) : sink + k * C;
          }
          if (acc) {
            const T* __restrict__ a = in[0];
            const T* __restrict__ b = in[1];
            const T* __restrict__ c = in[2];
            const T* __restrict__ e = in[3];
            T* __restrict__ ga = out[0];
            T* __restrict__ gb = out[1];
            T* __restrict__ gcc = out[2];
            T* __restrict__ ge = out[3];
            T sy = 0, sx = 0, sv = 0;
#pragma omp simd reduction(+ : sy, sx, sv)
            for (int64_t t = 0; t < len; ++t) {
              const T v = gc[t];
              sy += v * (hx * (c[t] - a[t]) + lx * (e[t] - b[t]));
              sx += v * (hy * (b[t] - a[t]) + ly * (e[t] - c[t]));
              sv += v * (hy * (hx * a[t] + lx * b[t]) + ly * (hx * c[t] + lx * e[t]));
              ga[t] += w0 * v;
              gb[t] += w1 * v;
              gcc[t] += w2 * v;
              ge[t] += w3 * v;
            }
            acc[(3 * gj) * n + i] += m * sy;
            acc[(3 * gj + 1) * n + i] += m * sx;
            acc[(3 * gj + 2) * n + i] += sv;
          } else if (gx) {
            const T wk[4] = {w0, w1, w2, w3};
            for (int k = 0; k < 4; ++k) {
              if (in[k] == zeros) continue;
              T* __restrict__ d = out[k];
              const T w = wk[k];
#pragma omp simd
              for (int64_t t = 0; t < len; ++t) d[t] += w * gc[t];
            }
          }
        }
      }
    }
  }
}

// Backward of one tile: ∂x into gxh (H×W×C, may be null), ∂offset into goff (G·T·2 × H'×W', may be
// null) and ∂mask into gmask (G·T × H'×W', may be null) at the tile's pixels. Two ways to share it
// between threads without two of them ever adding to the same element of gxh:
// - with priv (nt−1 planes H×W×C, zero on entry to a sample's first tile): the threads split the
//   pixels; thread t > 0 scatters into its own plane, which deform_reduce adds to gxh after the
//   sample's last tile. ∂offset/∂mask of a pixel are then one thread's sums;
// - without: the threads split the channels in whole cache lines and scatter straight into gxh, each
//   summing its channels' share of ∂offset/∂mask in its own buffer, added up at the end.
template <typename T>
void deform_backward(const T* xh, const T* off, const T* mask, const T* gcols, T* gxh, T* priv, T* goff,
                     T* gmask, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t groups,
                     int64_t ogroups, int64_t p0, int64_t n, const int64_t* g8, int nt) {
  const Geom g{g8[0], g8[1], g8[2], g8[3], g8[4], g8[5], g8[6], g8[7]};
  const int64_t Tn = g.kh * g.kw, hw = Ho * Wo, GT = ogroups * Tn;
  const bool want_coord = goff || gmask;
  const bool by_pixels = priv != nullptr || !gxh;
  const int64_t line = std::max<int64_t>(1, 64 / int64_t(sizeof(T)));
  const int64_t blocks = (C + line - 1) / line;
  const int nth = by_pixels ? nt : int(std::max<int64_t>(1, std::min<int64_t>(nt, blocks)));
  const int64_t part = want_coord ? 3 * GT * n : 0;  // [gj][dy, dx, mask][i]
  const int nparts = by_pixels ? 1 : nth;
  std::vector<T> parts(size_t(nparts) * part, T(0));
  const std::vector<T> zeros(C, T(0));
#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num(), nthr = omp_get_num_threads();
    std::vector<T> sink(4 * C);
    if (by_pixels) {
      T* gx = !gxh ? nullptr : tid == 0 ? gxh : priv + (tid - 1) * H * W * C;
      const int64_t i0 = n * tid / nthr, i1 = n * (tid + 1) / nthr;
      backward_block(xh, off, mask, gcols, gx, want_coord ? parts.data() : nullptr, C, H, W, Ho, Wo, groups,
                     ogroups, p0, n, g, i0, i1, 0, C, sink.data(), zeros.data());
    } else {
      const int64_t lo = std::min(C, (blocks * tid / nthr) * line);
      const int64_t hi = std::min(C, (blocks * (tid + 1) / nthr) * line);
      backward_block(xh, off, mask, gcols, gxh, want_coord ? parts.data() + tid * part : nullptr, C, H, W, Ho,
                     Wo, groups, ogroups, p0, n, g, 0, n, lo, hi, sink.data(), zeros.data());
    }
    if (want_coord) {
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t gi = 0; gi < GT * n; ++gi) {
        const int64_t gj = gi / n, i = gi % n;
        T sy = 0, sx = 0, sv = 0;
        for (int t = 0; t < nparts; ++t) {
          const T* pa = parts.data() + t * part;
          sy += pa[(3 * gj) * n + i];
          sx += pa[(3 * gj + 1) * n + i];
          sv += pa[(3 * gj + 2) * n + i];
        }
        if (goff) {
          goff[2 * gj * hw + p0 + i] = sy;
          goff[(2 * gj + 1) * hw + p0 + i] = sx;
        }
        if (gmask) gmask[gj * hw + p0 + i] = sv;
      }
    }
  }
}

// xh (HW × C) = x (C × HW) transposed, for nb samples: the channels-last copy the sampling reads. In
// blocks of pixels, so that each block's C rows are read once and its output is written contiguously
// (torch's permute(0, 2, 3, 1).contiguous() is several times slower on narrow maps).
template <typename T>
void deform_channels_last(const T* x, T* xh, int64_t nb, int64_t C, int64_t HW, int nt) {
  constexpr int64_t PB = 32;
  const int64_t blocks = (HW + PB - 1) / PB;
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t q0 = blk * PB, q1 = std::min(HW, q0 + PB);
      const T* src = x + b * C * HW;
      T* dst = xh + b * C * HW;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t q = q0; q < q1; ++q) dst[q * C + c] = src[c * HW + q];
    }
}

// gxh (size elements) += Σ of the nparts planes of priv, which are zeroed for the next sample.
template <typename T>
void deform_reduce(T* gxh, T* priv, int64_t nparts, int64_t size, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t e0 = 0; e0 < size; e0 += 4096) {
    const int64_t e1 = std::min(size, e0 + 4096);
    for (int64_t t = 0; t < nparts; ++t) {
      T* __restrict__ src = priv + t * size;
      for (int64_t e = e0; e < e1; ++e) {
        gxh[e] += src[e];
        src[e] = T(0);
      }
    }
  }
}

}  // namespace

#define ADAPTCONV_DEFORM_EXPORT(T, SFX)                                                              \
  extern "C" void deform_cols_##SFX(const T* xh, const T* off, const T* mask, T* cols, int64_t C,   \
                                    int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t groups,   \
                                    int64_t ogroups, int64_t p0, int64_t n, const int64_t* g8,      \
                                    int64_t* nonfinite, int nt) {                                   \
    deform_cols<T>(xh, off, mask, cols, C, H, W, Ho, Wo, groups, ogroups, p0, n, g8, nonfinite, nt); \
  }                                                                                                 \
  extern "C" void deform_channels_last_##SFX(const T* x, T* xh, int64_t nb, int64_t C, int64_t HW,  \
                                             int nt) {                                              \
    deform_channels_last<T>(x, xh, nb, C, HW, nt);                                                  \
  }                                                                                                 \
  extern "C" void deform_backward_##SFX(const T* xh, const T* off, const T* mask, const T* gcols,   \
                                        T* gxh, T* priv, T* goff, T* gmask, int64_t C, int64_t H,   \
                                        int64_t W, int64_t Ho, int64_t Wo, int64_t groups,          \
                                        int64_t ogroups, int64_t p0, int64_t n, const int64_t* g8,  \
                                        int nt) {                                                   \
    deform_backward<T>(xh, off, mask, gcols, gxh, priv, goff, gmask, C, H, W, Ho, Wo, groups,       \
                       ogroups, p0, n, g8, nt);                                                     \
  }                                                                                                 \
  extern "C" void deform_reduce_##SFX(T* gxh, T* priv, int64_t nparts, int64_t size, int nt) {      \
    deform_reduce<T>(gxh, priv, nparts, size, nt);                                                  \
  }

ADAPTCONV_DEFORM_EXPORT(float, f32)
ADAPTCONV_DEFORM_EXPORT(double, f64)

extern "C" int adaptconv_deform_cpu_abi() { return 3; }
