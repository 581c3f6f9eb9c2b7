// CPU kernels for ACDA: the per-pixel atom filtering around its 1×1 channel-mixing GEMM.
//
//   Z[b, c·M + m, p] = Σ_j D[b, m, j, p] · x_j[b, c, p];    y = coef · Z + bias
//
// Built on first use by adaptconv/ops/cpu_build.py and called through ctypes (adaptconv/ops/cpu_acda.py);
// the GEMMs stay in PyTorch (MKL). Layouts (contiguous, row-major), tiles as in PAC's kernels:
//   xp   B × C × Hp × Wp          the zero-padded input
//   D    B × M × T × Ho × Wo      the atoms
//   z    C × M × nb × rows × Wo   Z of one tile (nb samples from b0, output rows r0 … r0+rows−1), row
//                                 c·M + m: coef's own input order, so one GEMM with the
//                                 O × (C/g·M) coefficients gives the tile's output
// Tap j = a·kw + b of output pixel (r, q) reads padded row r·sh + a·dh, column q·sw + b·dw.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

namespace {

struct Geom {
  int64_t kh, kw, sh, sw, dh, dw;
  int64_t taps() const { return kh * kw; }
  int64_t offset(int64_t j, int64_t r, int64_t wp) const {
    return (r * sh + (j / kw) * dh) * wp + (j % kw) * dw;
  }
};

template <bool Unit>
inline int64_t col(int64_t q, int64_t sw) { return Unit ? q : q * sw; }

struct Dims {
  int64_t C, M, Hp, Wp, Ho, Wo, b0, nb, r0, rows;
};

// Explicit vectors (GCC/Clang vector extensions, 32 bytes: 8 floats or 4 doubles) over the pixels of a
// row: the per-pixel products over taps and atoms then run on accumulators held in registers. The
// pixels past the last whole vector of a row, and strided rows (sw > 1), take the scalar loops.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t L = 32 / sizeof(T);
};

template <typename T>
inline typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline void vstore(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof v);
}

constexpr int64_t GM = 6, GJ = 3, GD2 = 2;

// The atoms of output row r of sample s (M·T rows of Wo) copied together: in D they lie H'·W' apart,
// which for a power-of-two map (32×32: 4 KiB) puts all of them in the same L1 sets.
template <typename T>
inline const T* atom_row(const T* D, int64_t s, int64_t r, const Dims& d, int64_t Tn, T* buf) {
  const int64_t hw = d.Ho * d.Wo;
  const T* src = D + (d.b0 + s) * d.M * Tn * hw + (d.r0 + r) * d.Wo;
  for (int64_t mj = 0; mj < d.M * Tn; ++mj) std::copy(src + mj * hw, src + mj * hw + d.Wo, buf + mj * d.Wo);
  return buf;
}

// The number of pixels of a row of Wo that the vector loops take.
template <typename T, bool Unit>
inline int64_t vector_part(int64_t Wo) {
  return Unit ? Wo - Wo % Vec<T>::L : 0;
}

// Z of channel c, sample s, output row r (M rows of Wo, at z + (c·M)·n + (s·rows + r)·Wo), from the
// row's atoms Ds (M·T × Wo, atom_row below). xv: a buffer of T vectors.
template <typename T, bool Unit>
inline void z_row(const T* xplane, const T* Ds, T* z, int64_t c, int64_t s, int64_t r, const Dims& d,
                  const Geom& g, typename Vec<T>::type* xv) {
  using V = typename Vec<T>::type;
  const int64_t Tn = g.taps(), n = d.nb * d.rows * d.Wo, Wo = d.Wo, sw = g.sw, hw = Wo;
  T* zs = z + c * d.M * n + (s * d.rows + r) * Wo;
  const int64_t vp = vector_part<T, Unit>(Wo);
  for (int64_t q = 0; q < vp; q += Vec<T>::L) {
    for (int64_t j = 0; j < Tn; ++j) xv[j] = vload(xplane + g.offset(j, d.r0 + r, d.Wp) + q);
    // GM atoms at a time: independent sums, so the FMAs overlap instead of waiting on each other (the
    // last group repeats atom M−1 where M is not a multiple of GM, and stores it once)
    for (int64_t m0 = 0; m0 < d.M; m0 += GM) {
      const T* Dm[GM];
      for (int64_t i = 0; i < GM; ++i) Dm[i] = Ds + std::min(m0 + i, d.M - 1) * Tn * hw + q;
      V acc[GM];
      for (int64_t i = 0; i < GM; ++i) acc[i] = vload(Dm[i]) * xv[0];
      for (int64_t j = 1; j < Tn; ++j)
        for (int64_t i = 0; i < GM; ++i) acc[i] += vload(Dm[i] + j * hw) * xv[j];
      for (int64_t i = 0; i < GM && m0 + i < d.M; ++i) vstore(zs + (m0 + i) * n + q, acc[i]);
    }
  }
  for (int64_t m = 0; m < d.M; ++m) {
    T* zr = zs + m * n;
    for (int64_t q = vp; q < Wo; ++q) zr[q] = T(0);
    for (int64_t j = 0; j < Tn; ++j) {
      const T* src = xplane + g.offset(j, d.r0 + r, d.Wp);
      const T* dr = Ds + (m * Tn + j) * hw;
      for (int64_t q = vp; q < Wo; ++q) zr[q] += dr[q] * src[col<Unit>(q, sw)];
    }
  }
}

// The threads split the channels; each walks the tile row by row with its channels inside, so a row's
// atoms (M·T rows of W') stay in L1 across the channels instead of coming from L2 once per channel.
inline void channel_share(int64_t C, int64_t& c0, int64_t& c1) {
  const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
  c0 = C * tid / nth;
  c1 = C * (tid + 1) / nth;
}

template <typename T, bool Unit>
void acda_z(const T* xp, const T* D, T* z, Dims d, Geom g, int nt) {
#pragma omp parallel num_threads(nt)
  {
    std::vector<typename Vec<T>::type> xv(g.taps());
    std::vector<T> dbuf(d.M * g.taps() * d.Wo);
    int64_t c0, c1;
    channel_share(d.C, c0, c1);
    for (int64_t s = 0; s < d.nb; ++s)
      for (int64_t r = 0; r < d.rows; ++r) {
        const T* Ds = atom_row(D, s, r, d, g.taps(), dbuf.data());
        for (int64_t c = c0; c < c1; ++c) {
          const T* xplane = xp + ((d.b0 + s) * d.C + c) * d.Hp * d.Wp;
          z_row<T, Unit>(xplane, Ds, z, c, s, r, d, g, xv.data());
        }
      }
  }
}

// ∂x of one output row of channel c with unit column stride: first t_j = Σ_m D_m,j · gz_m for every tap
// (rows of tb, whose margins of (kw−1)·dw stay zero), then per tap row a one pass over the padded
// input row it reads, adding Σ_b t_(a,b) shifted by b·dw: each ∂x element is read and written once per
// tap row, instead of once per tap at overlapping, shifted addresses (which defeats store forwarding).
template <typename T>
inline void gx_row_gather(const T* gr, const T* Dr, T* gplane, T* tb, int64_t r, const Dims& d,
                          const Geom& g) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::L;
  const int64_t Tn = g.taps(), M = d.M, n = d.nb * d.rows * d.Wo, Wo = d.Wo;
  const int64_t pad = (g.kw - 1) * g.dw, lrow = Wo + 2 * pad, vp = Wo - Wo % L;
  for (int64_t q = 0; q < vp; q += L) {
    V gv[GM];
    for (int64_t m0 = 0; m0 < M; m0 += GM) {
      const int64_t nm = std::min(GM, M - m0);
      for (int64_t i = 0; i < nm; ++i) gv[i] = vload(gr + (m0 + i) * n + q);
      for (int64_t j = 0; j < Tn; ++j) {
        T* out = tb + j * lrow + pad + q;
        V a = m0 ? vload(out) : V{};
        for (int64_t i = 0; i < nm; ++i) a += vload(Dr + ((m0 + i) * Tn + j) * Wo + q) * gv[i];
        vstore(out, a);
      }
    }
  }
  for (int64_t j = 0; j < Tn; ++j)
    for (int64_t q = vp; q < Wo; ++q) {
      T a = T(0);
      for (int64_t m = 0; m < M; ++m) a += Dr[(m * Tn + j) * Wo + q] * gr[m * n + q];
      tb[j * lrow + pad + q] = a;
    }
  const int64_t nx = Wo + pad, vx = nx - nx % L;
  for (int64_t a = 0; a < g.kh; ++a) {
    T* drow = gplane + g.offset(a * g.kw, d.r0 + r, d.Wp);
    const T* t0 = tb + a * g.kw * lrow + pad;
    for (int64_t x = 0; x < vx; x += L) {
      V acc = vload(t0 + x);
      for (int64_t b = 1; b < g.kw; ++b) acc += vload(t0 + b * lrow + x - b * g.dw);
      vstore(drow + x, vload(drow + x) + acc);
    }
    for (int64_t x = vx; x < nx; ++x) {
      T acc = t0[x];
      for (int64_t b = 1; b < g.kw; ++b) acc += t0[b * lrow + x - b * g.dw];
      drow[x] += acc;
    }
  }
}

// The backward of one tile from gz = coefᵀ·gy (C × M × nb × rows × Wo, the gradient of Z):
//   z    the forward's Z again, for ∂coef (may be null)
//   gxp  += Σ_m D_m,j · gz_m at tap j's position (the sample's first tile, zero = 1, zeroes its planes;
//          may be null)
//   gD   [b0+s, m, j, r0+r, q] = Σ_c gz[c, m] · x_j[c]  (may be null)
// The first two split the channels between the threads (which own their ∂x planes), ∂D the output
// rows (which own their ∂D rows), so no thread needs a private copy.
template <typename T, bool Unit>
void acda_backward(const T* gz, const T* xp, const T* D, T* z, T* gxp, T* gD, Dims d, int zero, Geom g,
                   int nt) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::L;
  const int64_t Tn = g.taps(), M = d.M, n = d.nb * d.rows * d.Wo, Wo = d.Wo, sw = g.sw, hw = d.Ho * Wo;
  const int64_t plane = d.Hp * d.Wp, vp = vector_part<T, Unit>(Wo);
#pragma omp parallel num_threads(nt)
  {
    std::vector<V> xv(std::max(Tn, M));
    if (z || gxp) {
      int64_t c0, c1;
      channel_share(d.C, c0, c1);  // each thread owns its channels' ∂x planes
      if (gxp && zero)
        for (int64_t s = 0; s < d.nb; ++s)
          std::fill(gxp + ((d.b0 + s) * d.C + c0) * plane, gxp + ((d.b0 + s) * d.C + c1) * plane, T(0));
      std::vector<T> dbuf(M * Tn * Wo);
      std::vector<T> tb(Tn * (Wo + 2 * (g.kw - 1) * g.dw));  // gx_row_gather's rows, zero margins
      for (int64_t s = 0; s < d.nb; ++s)
        for (int64_t r = 0; r < d.rows; ++r) {
          const T* Dr = atom_row(D, s, r, d, Tn, dbuf.data());  // + (m·T + j)·W'
          for (int64_t c = c0; c < c1; ++c) {
            const T* xplane = xp + ((d.b0 + s) * d.C + c) * plane;
            if (z) z_row<T, Unit>(xplane, Dr, z, c, s, r, d, g, xv.data());
            if (!gxp) continue;
            T* gplane = gxp + ((d.b0 + s) * d.C + c) * plane;
            const T* gr = gz + c * M * n + (s * d.rows + r) * Wo;  // + m·n: atom m's row
            if (Unit) {
              gx_row_gather<T>(gr, Dr, gplane, tb.data(), r, d, g);
              continue;
            }
            for (int64_t q = 0; q < vp; q += L) {
              for (int64_t m = 0; m < M; ++m) xv[m] = vload(gr + m * n + q);
              for (int64_t j0 = 0; j0 < Tn; j0 += GJ) {  // GJ taps at a time, as GM atoms above
                const T* Dj[GJ];
                for (int64_t i = 0; i < GJ; ++i) Dj[i] = Dr + std::min(j0 + i, Tn - 1) * Wo + q;
                V a[GJ];
                for (int64_t i = 0; i < GJ; ++i) a[i] = vload(Dj[i]) * xv[0];
                for (int64_t m = 1; m < M; ++m)
                  for (int64_t i = 0; i < GJ; ++i) a[i] += vload(Dj[i] + m * Tn * Wo) * xv[m];
                for (int64_t i = 0; i < GJ && j0 + i < Tn; ++i) {
                  T* dst = gplane + g.offset(j0 + i, d.r0 + r, d.Wp) + q;
                  vstore(dst, vload(dst) + a[i]);
                }
              }
            }
            for (int64_t j = 0; j < Tn; ++j) {
              T* dst = gplane + g.offset(j, d.r0 + r, d.Wp);
              for (int64_t q = vp; q < Wo; ++q) {
                T a = T(0);
                for (int64_t m = 0; m < M; ++m) a += Dr[(m * Tn + j) * Wo + q] * gr[m * n + q];
                dst[col<Unit>(q, sw)] += a;
              }
            }
          }
        }
#pragma omp barrier
    }
    if (gD) {
#pragma omp for schedule(static) collapse(2)
      for (int64_t s = 0; s < d.nb; ++s)
        for (int64_t r = 0; r < d.rows; ++r) {
          T* gDs = gD + (d.b0 + s) * M * Tn * hw + (d.r0 + r) * Wo;  // + (m·T + j)·hw
          const T* xs = xp + (d.b0 + s) * d.C * plane;
          const T* gs = gz + (s * d.rows + r) * Wo;
          // GD2 atoms × GJ taps at a time, their sums over the channels held in registers: with all
          // M·T sums in memory every FMA also loaded and stored one, and the stores bound the loop
          // (the last block repeats atom M−1 / tap T−1 where they do not divide, stored once)
          for (int64_t q = 0; q < vp; q += L)
            for (int64_t m0 = 0; m0 < M; m0 += GD2)
              for (int64_t j0 = 0; j0 < Tn; j0 += GJ) {
                const T* gp[GD2];
                const T* xq[GJ];
                for (int64_t i = 0; i < GD2; ++i) gp[i] = gs + std::min(m0 + i, M - 1) * n + q;
                for (int64_t i = 0; i < GJ; ++i) xq[i] = xs + g.offset(std::min(j0 + i, Tn - 1), d.r0 + r, d.Wp) + q;
                V a[GD2][GJ] = {};
                for (int64_t c = 0; c < d.C; ++c) {
                  V gv[GD2];
                  for (int64_t k = 0; k < GD2; ++k) gv[k] = vload(gp[k] + c * M * n);
                  for (int64_t i = 0; i < GJ; ++i) {
                    const V xi = vload(xq[i] + c * plane);
                    for (int64_t k = 0; k < GD2; ++k) a[k][i] += gv[k] * xi;
                  }
                }
                for (int64_t k = 0; k < GD2 && m0 + k < M; ++k)
                  for (int64_t i = 0; i < GJ && j0 + i < Tn; ++i) vstore(gDs + ((m0 + k) * Tn + j0 + i) * hw + q, a[k][i]);
              }
          for (int64_t mj = 0; mj < M * Tn; ++mj) {
            const int64_t m = mj / Tn, j = mj % Tn;
            for (int64_t q = vp; q < Wo; ++q) {
              T a = T(0);
              for (int64_t c = 0; c < d.C; ++c)
                a += gs[(c * M + m) * n + q] * xs[c * plane + g.offset(j, d.r0 + r, d.Wp) + col<Unit>(q, sw)];
              gDs[mj * hw + q] = a;
            }
          }
        }
    }
  }
}

#define ADAPTCONV_DISPATCH(fn, T, sw, ...) \
  ((sw) == 1 ? fn<T, true>(__VA_ARGS__) : fn<T, false>(__VA_ARGS__))

}  // namespace

// C entry points, one per dtype (f32, f64). dims = {C, M, Hp, Wp, Ho, Wo, b0, nb, r0, rows},
// geom = {kh, kw, sh, sw, dh, dw}.
#define ADAPTCONV_EXPORT(T, SFX)                                                                     \
  extern "C" void acda_z_##SFX(const T* xp, const T* D, T* z, const int64_t* dims,                 \
                               const int64_t* geom, int nt) {                                      \
    const Dims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7], dims[8],  \
                 dims[9]};                                                                         \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                            \
    ADAPTCONV_DISPATCH(acda_z, T, g.sw, xp, D, z, d, g, nt);                                       \
  }                                                                                                \
  extern "C" void acda_backward_##SFX(const T* gz, const T* xp, const T* D, T* z, T* gxp, T* gD,   \
                                      const int64_t* dims, int zero, const int64_t* geom, int nt) { \
    const Dims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7], dims[8],  \
                 dims[9]};                                                                         \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                            \
    ADAPTCONV_DISPATCH(acda_backward, T, g.sw, gz, xp, D, z, gxp, gD, d, zero, g, nt);             \
  }

ADAPTCONV_EXPORT(float, f32)
ADAPTCONV_EXPORT(double, f64)

// The ABI version the Python side checks (bump it with any signature change).
extern "C" int adaptconv_acda_cpu_abi() { return 1; }
