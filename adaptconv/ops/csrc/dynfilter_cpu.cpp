// CPU kernels for the per-pixel, per-channel-group filtering of DFN (and of PAC with shared filters,
// PAC pooling, CARAFE's reassembly and PAC-CRF's messages, which run on the same contraction):
//
//   y[b, c, p] = Σ_j F[b, g(c), j, p] · x_j[b, c, p]        g(c) = c / (C/G), no channel mixing
//
// Built on first use by adaptconv/ops/cpu_build.py and called through ctypes
// (adaptconv/ops/cpu_dynfilter.py). There is no GEMM: each output is a short sum over the taps, one
// vectorised pass. DDF's decoupled filter is the same sum with a per-(channel, tap) scale,
// F[b, g(c), j, p] · S[b, c, j] (S its channel filter, F its spatial one), so it runs here too.
// Layouts (contiguous, row-major):
//   xp  B × C × Hp × Wp        the zero-padded input
//   F   B × G × T × Ho × Wo    the filters
//   S   B × C × T              the per-(channel, tap) scale, or null for 1
//   y   B × C × Ho × Wo
// Tap j = a·kw + b of output pixel (r, q) reads padded row r·sh + a·dh, column q·sw + b·dw.

#include <algorithm>
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

struct Dims {
  int64_t B, C, G, Hp, Wp, Ho, Wo;
};

// y, parallel over (sample, channel) planes.
template <typename T, bool Unit>
void dynfilter_forward(const T* xp, const T* F, const T* S, T* y, Dims d, Geom g, int nt) {
  const int64_t Tn = g.taps(), hw = d.Ho * d.Wo, cg = d.C / d.G, sw = g.sw;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t bc = 0; bc < d.B * d.C; ++bc) {
    const int64_t b = bc / d.C, c = bc % d.C;
    const T* xplane = xp + bc * d.Hp * d.Wp;
    const T* Fg = F + (b * d.G + c / cg) * Tn * hw;
    T* yplane = y + bc * hw;
    for (int64_t r = 0; r < d.Ho; ++r) {
      T* __restrict__ yr = yplane + r * d.Wo;
      std::fill(yr, yr + d.Wo, T(0));
      for (int64_t j = 0; j < Tn; ++j) {
        const T* __restrict__ src = xplane + g.offset(j, r, d.Wp);
        const T* __restrict__ fr = Fg + j * hw + r * d.Wo;
        const T sc = S ? S[bc * Tn + j] : T(1);
        for (int64_t q = 0; q < d.Wo; ++q) yr[q] += sc * fr[q] * src[col<Unit>(q, sw)];
      }
    }
  }
}

// ∂x (into the padded gxp, written whole; may be null) and ∂S[b, c, j] = Σ_p F_j·gy·x_j (may be null) in
// parallel over (sample, channel) planes, then ∂F[b, g, j, r] = Σ_{c in g} S_c,j · gy[c, r] · x_j[c, r]
// (may be null) over (sample, group, output row).
template <typename T, bool Unit>
void dynfilter_backward(const T* xp, const T* F, const T* S, const T* gy, T* gxp, T* gF, T* gS, Dims d,
                        Geom g, int nt) {
  const int64_t Tn = g.taps(), hw = d.Ho * d.Wo, cg = d.C / d.G, sw = g.sw, plane = d.Hp * d.Wp;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> sums(gS ? Tn * d.Wo : 0);  // ∂S per tap and column, reduced after the plane
    if (gxp || gS) {
#pragma omp for schedule(static)
      for (int64_t bc = 0; bc < d.B * d.C; ++bc) {
        const int64_t b = bc / d.C, c = bc % d.C;
        T* gplane = gxp ? gxp + bc * plane : nullptr;
        if (gplane) std::fill(gplane, gplane + plane, T(0));
        std::fill(sums.begin(), sums.end(), T(0));
        const T* Fg = F + (b * d.G + c / cg) * Tn * hw;
        const T* xplane = xp + bc * plane;
        const T* gplane_y = gy + bc * hw;
        // taps outside, rows inside: the shifted read-modify-writes of one tap are a whole plane apart
        // from the next tap's, which they overlap (adjacent taps back to back defeat store forwarding)
        for (int64_t j = 0; j < Tn; ++j)
          for (int64_t r = 0; r < d.Ho; ++r) {
            const T* __restrict__ gr = gplane_y + r * d.Wo;
            const T* __restrict__ fr = Fg + j * hw + r * d.Wo;
            if (gplane) {
              T* __restrict__ dst = gplane + g.offset(j, r, d.Wp);
              const T sc = S ? S[bc * Tn + j] : T(1);
              for (int64_t q = 0; q < d.Wo; ++q) dst[col<Unit>(q, sw)] += sc * fr[q] * gr[q];
            }
            if (gS) {
              const T* __restrict__ src = xplane + g.offset(j, r, d.Wp);
              T* __restrict__ acc = sums.data() + j * d.Wo;
              for (int64_t q = 0; q < d.Wo; ++q) acc[q] += fr[q] * gr[q] * src[col<Unit>(q, sw)];
            }
          }
        if (gS)
          for (int64_t j = 0; j < Tn; ++j) {
            double total = 0.0;
            for (int64_t q = 0; q < d.Wo; ++q) total += double(sums[j * d.Wo + q]);
            gS[bc * Tn + j] = T(total);
          }
      }
    }
    if (gF) {
#pragma omp for schedule(static) collapse(2)
      for (int64_t bg = 0; bg < d.B * d.G; ++bg)
        for (int64_t r = 0; r < d.Ho; ++r) {
          const int64_t b = bg / d.G, grp = bg % d.G;
          for (int64_t j = 0; j < Tn; ++j) {
            T* __restrict__ acc = gF + (bg * Tn + j) * hw + r * d.Wo;
            std::fill(acc, acc + d.Wo, T(0));
            for (int64_t c = grp * cg; c < (grp + 1) * cg; ++c) {
              const T* __restrict__ src = xp + (b * d.C + c) * plane + g.offset(j, r, d.Wp);
              const T* __restrict__ gr = gy + (b * d.C + c) * hw + r * d.Wo;
              const T sc = S ? S[(b * d.C + c) * Tn + j] : T(1);
              for (int64_t q = 0; q < d.Wo; ++q) acc[q] += sc * gr[q] * src[col<Unit>(q, sw)];
            }
          }
        }
    }
  }
}

#define ADAPTCONV_DISPATCH(fn, T, sw, ...) \
  ((sw) == 1 ? fn<T, true>(__VA_ARGS__) : fn<T, false>(__VA_ARGS__))

}  // namespace

// C entry points, one per dtype (f32, f64). dims = {B, C, G, Hp, Wp, Ho, Wo}, geom = {kh, kw, sh, sw, dh, dw}.
#define ADAPTCONV_EXPORT(T, SFX)                                                                     \
  extern "C" void dynfilter_forward_##SFX(const T* xp, const T* F, const T* S, T* y,              \
                                          const int64_t* dims, const int64_t* geom, int nt) {      \
    const Dims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};                   \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                            \
    ADAPTCONV_DISPATCH(dynfilter_forward, T, g.sw, xp, F, S, y, d, g, nt);                            \
  }                                                                                                \
  extern "C" void dynfilter_backward_##SFX(const T* xp, const T* F, const T* S, const T* gy,      \
                                           T* gxp, T* gF, T* gS, const int64_t* dims,              \
                                           const int64_t* geom, int nt) {                          \
    const Dims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};                   \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                            \
    ADAPTCONV_DISPATCH(dynfilter_backward, T, g.sw, xp, F, S, gy, gxp, gF, gS, d, g, nt);                 \
  }

ADAPTCONV_EXPORT(float, f32)
ADAPTCONV_EXPORT(double, f64)

// The ABI version the Python side checks (bump it with any signature change).
extern "C" int adaptconv_dynfilter_cpu_abi() { return 2; }
