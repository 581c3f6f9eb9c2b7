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

// The bilinear set-up of one sampling point: for each corner (y0,x0), (y0,x0+1), (y0+1,x0),
// (y0+1,x0+1) its element offset in the H×W×C plane, or −1 outside; the fractional parts.
template <typename T>
struct Point {
  int64_t at[4];
  T ly, lx;
};

template <typename T>
inline bool locate(T py, T px, int64_t H, int64_t W, int64_t C, Point<T>& pt) {
  // false when no corner can be inside: also for NaN (every comparison fails) and ±inf, so the
  // conversion to an integer below only ever sees values in [−1, H) × [−1, W)
  if (!(py >= T(-1) && py < T(H) && px >= T(-1) && px < T(W))) return false;
  const T fy = std::floor(py), fx = std::floor(px);
  const int64_t y0 = int64_t(fy), x0 = int64_t(fx);
  pt.ly = py - fy;
  pt.lx = px - fx;
  const bool vy0 = y0 >= 0, vy1 = y0 + 1 < H, vx0 = x0 >= 0, vx1 = x0 + 1 < W;
  pt.at[0] = (vy0 && vx0) ? (y0 * W + x0) * C : -1;
  pt.at[1] = (vy0 && vx1) ? (y0 * W + x0 + 1) * C : -1;
  pt.at[2] = (vy1 && vx0) ? ((y0 + 1) * W + x0) * C : -1;
  pt.at[3] = (vy1 && vx1) ? ((y0 + 1) * W + x0 + 1) * C : -1;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Forward: the tile's columns, cols[i, k, j, c] = m_j(p) · bilinear(x_c, p's tap j), p = p0 + i.
// Parallel over the tile's pixels (each writes its own row).
template <typename T>
void deform_cols(const T* xh, const T* off, const T* mask, T* cols, int64_t C, int64_t H, int64_t W,
                 int64_t Ho, int64_t Wo, int64_t groups, int64_t ogroups, int64_t p0, int64_t n,
                 const int64_t* g8, int nt) {
  const Geom g{g8[0], g8[1], g8[2], g8[3], g8[4], g8[5], g8[6], g8[7]};
  const int64_t Tn = g.kh * g.kw, hw = Ho * Wo, cg = C / groups, TC = Tn * C;
  const std::vector<Segment> segs = segments(C, groups, ogroups, 0, C);
  const std::vector<T> zeros(C, T(0));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = p0 + i, r = p / Wo, q = p % Wo;
    T* row = cols + i * TC;
    for (int64_t j = 0; j < Tn; ++j) {
      const T by = T(r * g.sh - g.ph + (j / g.kw) * g.dh), bx = T(q * g.sw - g.pw + (j % g.kw) * g.dw);
      for (const Segment& s : segs) {
        const int64_t gj = s.og * Tn + j, len = s.c1 - s.c0;
        T* __restrict__ d = row + s.k * Tn * cg + j * cg + (s.c0 - s.k * cg);
        Point<T> pt;
        if (!locate(by + off[2 * gj * hw + p], bx + off[(2 * gj + 1) * hw + p], H, W, C, pt)) {
          std::fill(d, d + len, T(0));
          continue;
        }
        const T m = mask ? mask[gj * hw + p] : T(1), hy = T(1) - pt.ly, hx = T(1) - pt.lx;
        const T w0 = m * hy * hx, w1 = m * hy * pt.lx, w2 = m * pt.ly * hx, w3 = m * pt.ly * pt.lx;
        const T* __restrict__ a = pt.at[0] >= 0 ? xh + pt.at[0] + s.c0 : zeros.data();
        const T* __restrict__ b = pt.at[1] >= 0 ? xh + pt.at[1] + s.c0 : zeros.data();
        const T* __restrict__ c = pt.at[2] >= 0 ? xh + pt.at[2] + s.c0 : zeros.data();
        const T* __restrict__ e = pt.at[3] >= 0 ? xh + pt.at[3] + s.c0 : zeros.data();
        for (int64_t t = 0; t < len; ++t) d[t] = w0 * a[t] + w1 * b[t] + w2 * c[t] + w3 * e[t];
      }
    }
  }
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
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t p = p0 + i, r = p / Wo, q = p % Wo;
    const T* grow = gcols + i * TC;
    for (int64_t j = 0; j < Tn; ++j) {
      const T by = T(r * g.sh - g.ph + (j / g.kw) * g.dh), bx = T(q * g.sw - g.pw + (j % g.kw) * g.dw);
      for (const Segment& s : segs) {
        const int64_t gj = s.og * Tn + j, len = s.c1 - s.c0;
        Point<T> pt;
        if (!locate(by + off[2 * gj * hw + p], bx + off[(2 * gj + 1) * hw + p], H, W, C, pt)) continue;
        const T* __restrict__ gc = grow + s.k * Tn * cg + j * cg + (s.c0 - s.k * cg);
        const T m = mask ? mask[gj * hw + p] : T(1);
        const T ly = pt.ly, lx = pt.lx, hy = T(1) - ly, hx = T(1) - lx;
        const T w0 = m * hy * hx, w1 = m * hy * lx, w2 = m * ly * hx, w3 = m * ly * lx;
        if (acc) {
          const T* __restrict__ a = pt.at[0] >= 0 ? xh + pt.at[0] + s.c0 : zeros;
          const T* __restrict__ b = pt.at[1] >= 0 ? xh + pt.at[1] + s.c0 : zeros;
          const T* __restrict__ c = pt.at[2] >= 0 ? xh + pt.at[2] + s.c0 : zeros;
          const T* __restrict__ e = pt.at[3] >= 0 ? xh + pt.at[3] + s.c0 : zeros;
          // a corner outside the image sends its gradient to a row of the sink (or nowhere)
          T* __restrict__ ga = gx && pt.at[0] >= 0 ? gx + pt.at[0] + s.c0 : sink;
          T* __restrict__ gb = gx && pt.at[1] >= 0 ? gx + pt.at[1] + s.c0 : sink + C;
          T* __restrict__ gcc = gx && pt.at[2] >= 0 ? gx + pt.at[2] + s.c0 : sink + 2 * C;
          T* __restrict__ ge = gx && pt.at[3] >= 0 ? gx + pt.at[3] + s.c0 : sink + 3 * C;
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
            if (pt.at[k] < 0) continue;
            T* __restrict__ d = gx + pt.at[k] + s.c0;
            const T w = wk[k];
            for (int64_t t = 0; t < len; ++t) d[t] += w * gc[t];
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
                                    int nt) {                                                       \
    deform_cols<T>(xh, off, mask, cols, C, H, W, Ho, Wo, groups, ogroups, p0, n, g8, nt);          \
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

extern "C" int adaptconv_deform_cpu_abi() { return 2; }
