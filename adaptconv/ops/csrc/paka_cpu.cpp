// CPU kernels for PAKA: the attention-weighted taps around its GEMMs, in single passes.
//
//   y[b,o,p] = Σ_j Σ_c W[o,c,j] · x_j[b,c,p] · (1 + tanh(A_c[b,c,p] + A_s[b,j,p])) + bias[o]
//
// Built on first use by adaptconv/ops/cpu_build.py and called through ctypes (adaptconv/ops/cpu_paka.py);
// the GEMMs stay in PyTorch (MKL). Same layouts and tiles as PAC's kernels (pac_cpu.cpp):
//   xp   B × C × Hp × Wp        the zero-padded input
//   ac   B × C × Ho × Wo        channel attention A_c
//   as   B × T × Ho × Wo        tap attention A_s
//   cols C × T × nb × rows × Wo the weighted taps of one tile (nb samples from b0, output rows
//                              r0 … r0+rows−1), row c·T + j: F.unfold's order, so one GEMM with the
//                              O × (C/g·T) weight gives the tile's output
// Tap j = a·kw + b of output pixel (r, q) reads padded row r·sh + a·dh, column q·sw + b·dw.
// Every function takes the thread count (torch.get_num_threads()) so it shares torch's pool.

#include <algorithm>
#include <cmath>
#include <cstdint>
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

// tanh that the compiler vectorises: for float, a rational approximation (odd 13 / even 6 degree
// minimax, Eigen's; max abs error 4e-7, NaN in ⇒ NaN out); for double, the library's.
template <typename T>
inline T tanh_(T x);

template <>
inline float tanh_<float>(float v) {
  const float x = std::min(std::max(v, -9.f), 9.f), x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

template <>
inline double tanh_<double>(double x) { return std::tanh(x); }

// cols[c·T + j, s, r, q] = x_j · (1 + tanh(ac + as_j)), one (channel, tap) row per iteration.
template <typename T, bool Unit>
void paka_cols(const T* xp, const T* ac, const T* as, T* cols, int64_t C, int64_t Hp, int64_t Wp,
               int64_t Ho, int64_t Wo, int64_t b0, int64_t nb, int64_t r0, int64_t rows, Geom g, int nt) {
  const int64_t Tn = g.taps(), n = nb * rows * Wo, sw = g.sw;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> thbuf(Wo);
    T* __restrict__ th = thbuf.data();
#pragma omp for schedule(static)
    for (int64_t cj = 0; cj < C * Tn; ++cj) {
      const int64_t c = cj / Tn, j = cj % Tn;
      T* __restrict__ d = cols + cj * n;
      for (int64_t s = 0; s < nb; ++s) {
        const T* __restrict__ src = xp + ((b0 + s) * C + c) * Hp * Wp + g.offset(j, r0, Wp);
        const T* __restrict__ a = ac + (((b0 + s) * C + c) * Ho + r0) * Wo;
        const T* __restrict__ t = as + (((b0 + s) * Tn + j) * Ho + r0) * Wo;
        for (int64_t r = 0; r < rows; ++r, src += g.sh * Wp, a += Wo, t += Wo, d += Wo) {
          for (int64_t q = 0; q < Wo; ++q) th[q] = tanh_<T>(a[q] + t[q]);
          for (int64_t q = 0; q < Wo; ++q) {
            const T x = src[col<Unit>(q, sw)];
            d[q] = x + x * th[q];
          }
        }
      }
    }
  }
}

// The backward of one tile, in one pass over qg = Wᵀ·gy (C × T × nb × rows × Wo, the gradient of
// the weighted taps), parallel over (sample, channel). With th = tanh(ac + as_j), f = 1 + th,
// d = qg · x_j · (1 − th²):
//   cols   = x_j · f                      (the forward's columns again, for ∂W; may be null)
//   gxp   += f · qg at tap j's position   (the sample's first tile, zero = 1, zeroes its planes)
//   gac    = Σ_j d                        (written for the tile's rows)
//   gas_j  = Σ_c d                        (each thread sums its channels in its own buffer,
//                                          T × nb × rows × Wo, added up at the end)
// Any of cols, gxp, gac, gas may be null.
template <typename T, bool Unit>
void paka_backward(const T* qg, const T* xp, const T* ac, const T* as, T* cols, T* gxp, T* gac, T* gas,
                   int64_t C, int64_t Hp, int64_t Wp, int64_t Ho, int64_t Wo, int64_t b0, int64_t nb,
                   int64_t r0, int64_t rows, int zero, Geom g, int nt) {
  const int64_t Tn = g.taps(), n = nb * rows * Wo, sw = g.sw, plane = Hp * Wp, m = rows * Wo;
  const int64_t part_size = gas ? Tn * n : 0;
  const bool need_d = gac || gas;
  std::vector<T> parts(size_t(nt) * part_size);
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
    T* part = gas ? parts.data() + tid * part_size : nullptr;
    if (part) std::fill(part, part + part_size, T(0));
    std::vector<T> dbuf(Wo), thbuf(Wo);
#pragma omp for schedule(static)
    for (int64_t sc = 0; sc < nb * C; ++sc) {
      const int64_t s = sc / C, c = sc % C;
      const T* xplane = xp + ((b0 + s) * C + c) * plane;
      T* gplane = gxp ? gxp + ((b0 + s) * C + c) * plane : nullptr;
      if (gplane && zero) std::fill(gplane, gplane + plane, T(0));
      const T* arow0 = ac + (((b0 + s) * C + c) * Ho + r0) * Wo;
      T* garow0 = gac ? gac + (((b0 + s) * C + c) * Ho + r0) * Wo : nullptr;
      if (garow0) std::fill(garow0, garow0 + m, T(0));
      for (int64_t j = 0; j < Tn; ++j) {
        const T* __restrict__ qr = qg + (c * Tn + j) * n + s * m;
        const T* __restrict__ tr = as + (((b0 + s) * Tn + j) * Ho + r0) * Wo;
        const T* __restrict__ ar = arow0;
        const int64_t off = g.offset(j, r0, Wp), step = g.sh * Wp;
        const T* __restrict__ src = xplane + off;
        T* __restrict__ dst = gplane ? gplane + off : nullptr;
        T* __restrict__ cr = cols ? cols + (c * Tn + j) * n + s * m : nullptr;
        T* __restrict__ acc = part ? part + j * n + s * m : nullptr;
        T* __restrict__ ga = garow0;
        T* __restrict__ d = dbuf.data();
        T* __restrict__ th = thbuf.data();
        for (int64_t r = 0; r < rows; ++r, qr += Wo, tr += Wo, ar += Wo, src += step) {
          // tanh once per row, then one loop per output so that each vectorises
          for (int64_t q = 0; q < Wo; ++q) th[q] = tanh_<T>(ar[q] + tr[q]);
          if (cr) {
            for (int64_t q = 0; q < Wo; ++q) {
              const T x = src[col<Unit>(q, sw)];
              cr[q] = x + x * th[q];
            }
            cr += Wo;
          }
          if (dst) {
            for (int64_t q = 0; q < Wo; ++q) dst[col<Unit>(q, sw)] += qr[q] + qr[q] * th[q];
            dst += step;
          }
          if (need_d) {
            for (int64_t q = 0; q < Wo; ++q) d[q] = qr[q] * src[col<Unit>(q, sw)] * (T(1) - th[q] * th[q]);
            if (ga) {
              for (int64_t q = 0; q < Wo; ++q) ga[q] += d[q];
              ga += Wo;
            }
            if (acc) {
              for (int64_t q = 0; q < Wo; ++q) acc[q] += d[q];
              acc += Wo;
            }
          }
        }
      }
    }
    if (gas) {  // implicit barrier above; now gas rows = Σ over the threads' buffers
      const int nth = omp_get_num_threads();
#pragma omp for schedule(static) collapse(2)
      for (int64_t s = 0; s < nb; ++s)
        for (int64_t jr = 0; jr < Tn * rows; ++jr) {
          const int64_t j = jr / rows, r = jr % rows;
          T* __restrict__ out = gas + (((b0 + s) * Tn + j) * Ho + r0 + r) * Wo;
          const int64_t at = j * n + (s * rows + r) * Wo;
          std::copy(parts.data() + at, parts.data() + at + Wo, out);
          for (int t = 1; t < nth; ++t) {
            const T* __restrict__ p = parts.data() + t * part_size + at;
            for (int64_t q = 0; q < Wo; ++q) out[q] += p[q];
          }
        }
    }
  }
}

#define ADAPTCONV_DISPATCH(fn, T, sw, ...) \
  ((sw) == 1 ? fn<T, true>(__VA_ARGS__) : fn<T, false>(__VA_ARGS__))

}  // namespace

// C entry points, one per dtype (f32, f64). geom = {kh, kw, sh, sw, dh, dw}.
#define ADAPTCONV_EXPORT(T, SFX)                                                                     \
  extern "C" void paka_cols_##SFX(const T* xp, const T* ac, const T* as, T* cols, int64_t C,       \
                                  int64_t Hp, int64_t Wp, int64_t Ho, int64_t Wo, int64_t b0,      \
                                  int64_t nb, int64_t r0, int64_t rows, const int64_t* geom,       \
                                  int nt) {                                                        \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                            \
    ADAPTCONV_DISPATCH(paka_cols, T, g.sw, xp, ac, as, cols, C, Hp, Wp, Ho, Wo, b0, nb, r0, rows,  \
                       g, nt);                                                                     \
  }                                                                                                \
  extern "C" void paka_backward_##SFX(const T* qg, const T* xp, const T* ac, const T* as, T* cols, \
                                      T* gxp, T* gac, T* gas, int64_t C, int64_t Hp, int64_t Wp,   \
                                      int64_t Ho, int64_t Wo, int64_t b0, int64_t nb, int64_t r0,  \
                                      int64_t rows, int zero, const int64_t* geom, int nt) {       \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                            \
    ADAPTCONV_DISPATCH(paka_backward, T, g.sw, qg, xp, ac, as, cols, gxp, gac, gas, C, Hp, Wp, Ho, \
                       Wo, b0, nb, r0, rows, zero, g, nt);                                         \
  }

ADAPTCONV_EXPORT(float, f32)
ADAPTCONV_EXPORT(double, f64)

// The ABI version the Python side checks (bump it with any signature change).
extern "C" int adaptconv_paka_cpu_abi() { return 1; }
