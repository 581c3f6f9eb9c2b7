// CPU kernels for PAC: the element-wise work around its GEMMs, fused into single passes.
//
// Built on first use by adaptconv/ops/cpu_pac.py (g++ -O3 -march=native -fopenmp) and called through
// ctypes; the GEMMs themselves stay in PyTorch (MKL). Everything works on *padded* inputs (the
// caller pads x with zeros and the guide by replication), so there is no boundary test in any loop:
// tap j = a·kw + b of output pixel (r, q) reads padded row r·sh + a·dh, column q·sw + b·dw.
//
// Layouts (all contiguous, row-major):
//   xp   B × C × Hp × Wp       the zero-padded input
//   K    B × T × Ho × Wo       the adapting kernel, T = kh·kw taps
//   cols C × T × nb × rows × Wo the K-weighted taps of one tile (nb samples from b0, output rows
//                             r0 … r0+rows−1): row c·T + j, F.unfold's order, so that one GEMM with the
//                             O × (C/g·T) weight gives the tile's output
//   fp   B × G × Hp × Wp       the replicate-padded guide (G guide channels)
//   cen  B × G × Ho × Wo       an explicit window centre, or null for the window's middle tap(s)
// Every function takes the thread count (torch.get_num_threads()) so it shares torch's pool.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

namespace {

struct Geom {
  int64_t kh, kw, sh, sw, dh, dw;
  int64_t taps() const { return kh * kw; }
  // offset of tap j of output pixel (r, 0) in a padded plane of width wp
  int64_t offset(int64_t j, int64_t r, int64_t wp) const {
    return (r * sh + (j / kw) * dh) * wp + (j % kw) * dw;
  }
};

// Column q of a row read with column stride sw; Unit (sw = 1, the common case) lets the compiler
// vectorise the loops with plain loads instead of gathers.
template <bool Unit>
inline int64_t col(int64_t q, int64_t sw) { return Unit ? q : q * sw; }

// ---------------------------------------------------------------------------------------------
// PAC contraction

template <typename T, bool Unit>
void pac_cols(const T* xp, const T* K, T* cols, int64_t C, int64_t Hp, int64_t Wp, int64_t Ho,
              int64_t Wo, int64_t b0, int64_t nb, int64_t r0, int64_t rows, Geom g, int nt) {
  const int64_t Tn = g.taps(), n = nb * rows * Wo, sw = g.sw;
  // one (channel, tap) row of cols per iteration; rows are short (W'), so no index arithmetic
  // beyond pointer steps inside
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t cj = 0; cj < C * Tn; ++cj) {
    const int64_t c = cj / Tn, j = cj % Tn;
    T* __restrict__ d = cols + cj * n;
    for (int64_t s = 0; s < nb; ++s) {
      const T* __restrict__ src = xp + ((b0 + s) * C + c) * Hp * Wp + g.offset(j, r0, Wp);
      const T* __restrict__ k = K + (((b0 + s) * Tn + j) * Ho + r0) * Wo;
      for (int64_t r = 0; r < rows; ++r, src += g.sh * Wp, k += Wo, d += Wo)
        for (int64_t q = 0; q < Wo; ++q) d[q] = src[col<Unit>(q, sw)] * k[q];
    }
  }
}

// Given qg = Wᵀ·gy for one tile (C × T × nb × rows × Wo, the gradient of the K-weighted taps):
//   gK[s, j, r, q]  = Σ_c qg[c, j, s, r, q] · x_j[s, c, r, q]      (gK may be null)
//   gxp[s, c, tap j of (r, q)] += K[s, j, r, q] · qg[c, j, s, r, q] (gxp may be null)
// One pass over qg, parallel over (sample, channel): each thread sums its channels' share of gK in
// its own buffer (tile-sized: T × nb × rows × Wo), and the buffers are added at the end.
// Tiles of one sample overlap in gxp (the halo rows): the caller runs them one after another, the
// first one (zero = 1) zeroing the sample's planes, which saves a pass over gxp.
template <typename T, bool Unit>
void pac_taps_backward(const T* qg, const T* xp, const T* K, T* gK, T* gxp, int64_t C, int64_t Hp,
                       int64_t Wp, int64_t Ho, int64_t Wo, int64_t b0, int64_t nb, int64_t r0,
                       int64_t rows, int zero, Geom g, int nt) {
  const int64_t Tn = g.taps(), n = nb * rows * Wo, sw = g.sw, plane = Hp * Wp;
  const int64_t part_size = gK ? Tn * n : 0;  // layout T × nb × rows × Wo
  std::vector<T> parts(size_t(nt) * part_size);
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
    T* part = gK ? parts.data() + tid * part_size : nullptr;
    if (part) std::fill(part, part + part_size, T(0));
#pragma omp for schedule(static)
    for (int64_t sc = 0; sc < nb * C; ++sc) {
      const int64_t s = sc / C, c = sc % C;
      const T* xplane = xp + ((b0 + s) * C + c) * plane;
      T* gplane = gxp ? gxp + ((b0 + s) * C + c) * plane : nullptr;
      if (gplane && zero) std::fill(gplane, gplane + plane, T(0));  // the sample's first tile
      for (int64_t j = 0; j < Tn; ++j) {
        const T* __restrict__ qr = qg + (c * Tn + j) * n + s * rows * Wo;
        const T* __restrict__ k = K + (((b0 + s) * Tn + j) * Ho + r0) * Wo;
        const int64_t off = g.offset(j, r0, Wp), step = g.sh * Wp;
        const T* __restrict__ src = xplane + off;
        if (part && gplane) {
          T* __restrict__ acc = part + j * n + s * rows * Wo;
          T* __restrict__ dst = gplane + off;
          for (int64_t r = 0; r < rows; ++r, qr += Wo, k += Wo, src += step, dst += step, acc += Wo)
            for (int64_t q = 0; q < Wo; ++q) {
              acc[q] += qr[q] * src[col<Unit>(q, sw)];
              dst[col<Unit>(q, sw)] += k[q] * qr[q];
            }
        } else if (part) {
          T* __restrict__ acc = part + j * n + s * rows * Wo;
          for (int64_t r = 0; r < rows; ++r, qr += Wo, src += step, acc += Wo)
            for (int64_t q = 0; q < Wo; ++q) acc[q] += qr[q] * src[col<Unit>(q, sw)];
        } else {
          T* __restrict__ dst = gplane + off;
          for (int64_t r = 0; r < rows; ++r, qr += Wo, k += Wo, dst += step)
            for (int64_t q = 0; q < Wo; ++q) dst[col<Unit>(q, sw)] += k[q] * qr[q];
        }
      }
    }
    if (gK) {  // implicit barrier above; now gK rows = Σ over the threads' buffers
      const int nth = omp_get_num_threads();
#pragma omp for schedule(static) collapse(2)
      for (int64_t s = 0; s < nb; ++s)
        for (int64_t jr = 0; jr < Tn * rows; ++jr) {
          const int64_t j = jr / rows, r = jr % rows;
          T* __restrict__ out = gK + (((b0 + s) * Tn + j) * Ho + r0 + r) * Wo;
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

// ---------------------------------------------------------------------------------------------
// PAC's feature distance  d[b, j, r, q] = Σ_c w_c (f_j[b, c, r, q] − centre[b, c, r, q])²

// The window centre of one guide plane at output row r: cen's row, or the mean of the middle taps
// (summed in their order, then divided, as the PyTorch path does), written to out[Wo].
template <typename T, bool Unit>
const T* centre_row(const T* fplane, const T* cen_row, const int64_t* ctaps, int64_t nct, int64_t r,
                    int64_t Wp, int64_t Wo, Geom g, T* out) {
  if (cen_row) return cen_row;
  const T* first = fplane + g.offset(ctaps[0], r, Wp);
  if (nct == 1 && Unit) return first;
  for (int64_t q = 0; q < Wo; ++q) out[q] = first[col<Unit>(q, g.sw)];
  for (int64_t i = 1; i < nct; ++i) {
    const T* t = fplane + g.offset(ctaps[i], r, Wp);
    for (int64_t q = 0; q < Wo; ++q) out[q] += t[col<Unit>(q, g.sw)];
  }
  if (nct > 1)
    for (int64_t q = 0; q < Wo; ++q) out[q] /= T(nct);
  return out;
}

template <typename T, bool Unit>
void distance_forward(const T* fp, const T* cen, const T* w, T* d, int64_t B, int64_t G, int64_t Hp,
                      int64_t Wp, int64_t Ho, int64_t Wo, const int64_t* ctaps, int64_t nct, Geom g,
                      int nt) {
  const int64_t Tn = g.taps(), sw = g.sw;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> buf(Wo);
#pragma omp for schedule(static) collapse(2)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t r = 0; r < Ho; ++r) {
        for (int64_t j = 0; j < Tn; ++j) {
          T* dr = d + ((b * Tn + j) * Ho + r) * Wo;
          for (int64_t q = 0; q < Wo; ++q) dr[q] = T(0);
        }
        for (int64_t c = 0; c < G; ++c) {
          const T* plane = fp + (b * G + c) * Hp * Wp;
          const T* cr = centre_row<T, Unit>(plane, cen ? cen + ((b * G + c) * Ho + r) * Wo : nullptr,
                                            ctaps, nct, r, Wp, Wo, g, buf.data());
          const T wc = w ? w[c] : T(1);
          for (int64_t j = 0; j < Tn; ++j) {
            const T* src = plane + g.offset(j, r, Wp);
            T* dr = d + ((b * Tn + j) * Ho + r) * Wo;
            for (int64_t q = 0; q < Wo; ++q) {
              const T e = src[col<Unit>(q, sw)] - cr[q];
              dr[q] += wc * e * e;
            }
          }
        }
      }
    }
  }
}

// Backward of distance_forward for gd = ∂L/∂d (B × T × Ho × Wo). With t = gd_j · (f_j − c):
//   gfp at tap j += 2 w_c t;   ∂centre = −2 w_c Σ_j t (into gcen when the centre is explicit, else
//   into gfp at the middle taps);  gw_part[b, c] = Σ_j Σ_p t · (f_j − c)  (the caller sums over b).
// gfp (B × G × Hp × Wp) is written whole (each plane zeroed first); gcen (dropped: no gradient wanted for an
// explicit centre) and gw_part may be null.
template <typename T, bool Unit>
void distance_backward(const T* fp, const T* cen, const T* w, const T* gd, T* gfp, T* gcen,
                       T* gw_part, int64_t B, int64_t G, int64_t Hp, int64_t Wp, int64_t Ho,
                       int64_t Wo, const int64_t* ctaps, int64_t nct, Geom g, int nt) {
  const int64_t Tn = g.taps(), sw = g.sw, hw = Ho * Wo;
#pragma omp parallel num_threads(nt)
  {
    // per thread: a centre row, −Σ_j t over the plane, and Σ t·e per column (a vector sum, so the
    // loop vectorises; it is reduced in double at the end of the plane)
    std::vector<T> buf(Wo), acc(hw), gwrow(Wo);
#pragma omp for schedule(static) collapse(2)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t c = 0; c < G; ++c) {
        const T* plane = fp + (b * G + c) * Hp * Wp;
        T* gplane = gfp + (b * G + c) * Hp * Wp;
        std::fill(gplane, gplane + Hp * Wp, T(0));
        const T w2 = T(2) * (w ? w[c] : T(1));
        std::fill(acc.begin(), acc.end(), T(0));
        std::fill(gwrow.begin(), gwrow.end(), T(0));
        T* gwr = gwrow.data();
        for (int64_t r = 0; r < Ho; ++r) {
          const T* cr = centre_row<T, Unit>(plane, cen ? cen + ((b * G + c) * Ho + r) * Wo : nullptr,
                                            ctaps, nct, r, Wp, Wo, g, buf.data());
          T* ar = acc.data() + r * Wo;
          for (int64_t j = 0; j < Tn; ++j) {
            const T* src = plane + g.offset(j, r, Wp);
            const T* gr = gd + ((b * Tn + j) * Ho + r) * Wo;
            T* dst = gplane + g.offset(j, r, Wp);
            for (int64_t q = 0; q < Wo; ++q) {
              const T e = src[col<Unit>(q, sw)] - cr[q];
              const T t = gr[q] * e;
              gwr[q] += t * e;
              dst[col<Unit>(q, sw)] += w2 * t;
              ar[q] -= w2 * t;
            }
          }
        }
        if (gcen) {
          std::memcpy(gcen + (b * G + c) * hw, acc.data(), sizeof(T) * hw);
        } else if (!cen) {
          const T share = T(1) / T(nct);
          for (int64_t i = 0; i < nct; ++i)
            for (int64_t r = 0; r < Ho; ++r) {
              T* dst = gplane + g.offset(ctaps[i], r, Wp);
              const T* ar = acc.data() + r * Wo;
              for (int64_t q = 0; q < Wo; ++q) dst[col<Unit>(q, sw)] += nct == 1 ? ar[q] : ar[q] * share;
            }
        }
        if (gw_part) {
          double sum = 0.0;
          for (int64_t q = 0; q < Wo; ++q) sum += double(gwr[q]);
          gw_part[b * G + c] = T(sum);
        }
      }
    }
  }
}

// Stride 1 with the window's middle tap as the centre (odd kernels: PacConv2d's usual case). Then
// tap j of output pixel (r, q) sits at a fixed offset from (r, q) in the padded plane, so a whole
// plane is one loop over i = r·Wp + q, i < len = (Ho−1)·Wp + Wo: d and gd live on the padded width
// (Ho × Wp, the Wp − Wo last columns of each row are junk: dropped from d, zero in gd), and no loop is
// W' short. The distance is also symmetric: with δ = o_j − o_c, the mirror tap m = T−1−j has
// o_m − o_c = −δ, and E(i) = f[i+o_j] − f[i+o_c] is tap j's difference at i and minus tap m's at
// i + |δ|. So each pair of taps is computed once: d_j(i) = D(i), d_m(i) = D(i + |δ|) with
// D = Σ_c w_c E², over i < len + |δ| (in bounds: |δ| ≤ o_c and len + 2·o_c = Hp·Wp).
template <typename T>
void distance_forward_flat(const T* fp, const T* w, T* d, int64_t B, int64_t G, int64_t Hp, int64_t Wp,
                           int64_t Ho, int64_t Wo, int64_t ctap, Geom g, int nt) {
  const int64_t Tn = g.taps(), len = (Ho - 1) * Wp + Wo, oc = g.offset(ctap, 0, Wp), hw = Ho * Wp;
  std::fill(d, d + B * Tn * hw, T(0));  // the centre tap, the junk columns
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> dbuf(len + oc);
#pragma omp for schedule(static)
    for (int64_t bj = 0; bj < B * ctap; ++bj) {
      const int64_t b = bj / ctap, j = bj % ctap, oj = g.offset(j, 0, Wp), dl = oc - oj;
      const int64_t n = len + dl;
      T* __restrict__ D = dbuf.data();
      std::fill(D, D + n, T(0));
      for (int64_t c = 0; c < G; ++c) {
        const T* plane = fp + (b * G + c) * Hp * Wp;
        const T* __restrict__ src = plane + oj;
        const T* __restrict__ cen = plane + oc;
        const T wc = w ? w[c] : T(1);
        for (int64_t i = 0; i < n; ++i) {
          const T e = src[i] - cen[i];
          D[i] += wc * e * e;
        }
      }
      std::copy(D, D + len, d + (b * Tn + j) * hw);
      std::copy(D + dl, D + dl + len, d + (b * Tn + Tn - 1 - j) * hw);
    }
  }
}

// Its backward; gd on the padded width too (B × T × Ho × Wp), zero in the junk columns. Per pair,
// G2(i) = gd_j(i) + gd_m(i − |δ|) (built once per sample), t = G2·E: tap j's position gets +2w·t, the
// centre −2w·t, and ∂w gets Σ t·E.
template <typename T>
void distance_backward_flat(const T* fp, const T* w, const T* gd, T* gfp, T* gw_part, int64_t B,
                            int64_t G, int64_t Hp, int64_t Wp, int64_t Ho, int64_t Wo, int64_t ctap,
                            Geom g, int nt) {
  const int64_t Tn = g.taps(), len = (Ho - 1) * Wp + Wo, oc = g.offset(ctap, 0, Wp), hw = Ho * Wp;
  const int64_t span = len + oc;  // room for any pair's range
  std::vector<T> g2(size_t(B * ctap * span));
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t bj = 0; bj < B * ctap; ++bj) {
      const int64_t b = bj / ctap, j = bj % ctap, dl = oc - g.offset(j, 0, Wp);
      const T* gj = gd + (b * Tn + j) * hw;
      const T* gm = gd + (b * Tn + Tn - 1 - j) * hw;
      T* out = g2.data() + bj * span;
      for (int64_t i = 0; i < len + dl; ++i)
        out[i] = (i < len ? gj[i] : T(0)) + (i >= dl ? gm[i - dl] : T(0));
    }
    std::vector<T> acc(len + oc);  // −Σ t, to be added at the centre positions
#pragma omp for schedule(static)
    for (int64_t bc = 0; bc < B * G; ++bc) {
      const int64_t b = bc / G, c = bc % G;
      const T* plane = fp + bc * Hp * Wp;
      T* gplane = gfp + bc * Hp * Wp;
      std::fill(gplane, gplane + Hp * Wp, T(0));
      const T w2 = T(2) * (w ? w[c] : T(1));
      T* __restrict__ a = acc.data();
      std::fill(a, a + len + oc, T(0));
      const T* __restrict__ cen = plane + oc;
      T gw = T(0);
      for (int64_t j = 0; j < ctap; ++j) {
        const int64_t oj = g.offset(j, 0, Wp), n = len + oc - oj;
        const T* __restrict__ src = plane + oj;
        const T* __restrict__ G2 = g2.data() + (b * ctap + j) * span;
        T* __restrict__ dst = gplane + oj;
        T part = T(0);
#pragma omp simd reduction(+ : part)
        for (int64_t i = 0; i < n; ++i) {
          const T e = src[i] - cen[i];
          const T t = G2[i] * e;
          part += t * e;
          dst[i] += w2 * t;
          a[i] -= w2 * t;
        }
        gw += part;
      }
      T* __restrict__ dc = gplane + oc;
      for (int64_t i = 0; i < len + oc; ++i) dc[i] += a[i];
      if (gw_part) gw_part[bc] = gw;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Padding and its adjoint, one pass per plane (P = B·C planes of H × W; the padded ones Hp × Wp).

// dst = src padded by zeros (replicate = 0) or by repeating the edge (replicate = 1).
template <typename T>
void pad_planes(const T* src, T* dst, int64_t P, int64_t H, int64_t W, int64_t top, int64_t left,
                int64_t Hp, int64_t Wp, int replicate, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t pl = 0; pl < P; ++pl) {
    const T* s = src + pl * H * W;
    T* d = dst + pl * Hp * Wp;
    for (int64_t r = 0; r < Hp; ++r) {
      T* dr = d + r * Wp;
      const int64_t ir = r - top;
      if (!replicate && (ir < 0 || ir >= H)) {
        std::fill(dr, dr + Wp, T(0));
        continue;
      }
      const T* sr = s + std::min(std::max(ir, int64_t(0)), H - 1) * W;
      const T lv = replicate ? sr[0] : T(0), rv = replicate ? sr[W - 1] : T(0);
      for (int64_t q = 0; q < left; ++q) dr[q] = lv;
      std::copy(sr, sr + W, dr + left);
      for (int64_t q = left + W; q < Wp; ++q) dr[q] = rv;
    }
  }
}

// dst = the image part of src (fold = 0), or the adjoint of replicate padding (fold = 1): each padded
// value added into the edge pixel it was copied from.
template <typename T>
void unpad_planes(const T* src, T* dst, int64_t P, int64_t H, int64_t W, int64_t top, int64_t left,
                  int64_t Hp, int64_t Wp, int fold, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t pl = 0; pl < P; ++pl) {
    const T* s = src + pl * Hp * Wp;
    T* d = dst + pl * H * W;
    for (int64_t r = 0; r < H; ++r) std::copy(s + (r + top) * Wp + left, s + (r + top) * Wp + left + W, d + r * W);
    if (!fold) continue;
    for (int64_t r = 0; r < Hp; ++r) {  // padded columns (every padded row too), into the edge columns
      const int64_t ir = std::min(std::max(r - top, int64_t(0)), H - 1);
      const bool inside = r >= top && r < top + H;
      T lsum = T(0), rsum = T(0);
      for (int64_t q = 0; q < left; ++q) lsum += s[r * Wp + q];
      for (int64_t q = left + W; q < Wp; ++q) rsum += s[r * Wp + q];
      if (!inside) {  // a padded row: all of it folds into the edge row
        for (int64_t q = 0; q < W; ++q) d[ir * W + q] += s[r * Wp + left + q];
      }
      d[ir * W] += lsum;
      d[ir * W + W - 1] += rsum;
    }
  }
}

// Run f<T, true> for unit column stride, f<T, false> otherwise.
#define ADAPTCONV_DISPATCH(fn, T, sw, ...) \
  ((sw) == 1 ? fn<T, true>(__VA_ARGS__) : fn<T, false>(__VA_ARGS__))

}  // namespace

// ---------------------------------------------------------------------------------------------
// C entry points, one per dtype (f32, f64). geom = {kh, kw, sh, sw, dh, dw}.
#define ADAPTCONV_EXPORT(T, SFX)                                                                      \
  extern "C" void pac_cols_##SFX(const T* xp, const T* K, T* cols, int64_t C, int64_t Hp,           \
                                 int64_t Wp, int64_t Ho, int64_t Wo, int64_t b0, int64_t nb,        \
                                 int64_t r0, int64_t rows, const int64_t* geom, int nt) {           \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                             \
    ADAPTCONV_DISPATCH(pac_cols, T, g.sw, xp, K, cols, C, Hp, Wp, Ho, Wo, b0, nb, r0, rows, g, nt); \
  }                                                                                                 \
  extern "C" void pac_taps_backward_##SFX(const T* qg, const T* xp, const T* K, T* gK, T* gxp,      \
                                          int64_t C, int64_t Hp, int64_t Wp, int64_t Ho,            \
                                          int64_t Wo, int64_t b0, int64_t nb, int64_t r0,           \
                                          int64_t rows, int zero, const int64_t* geom, int nt) {    \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                             \
    ADAPTCONV_DISPATCH(pac_taps_backward, T, g.sw, qg, xp, K, gK, gxp, C, Hp, Wp, Ho, Wo, b0, nb,   \
                       r0, rows, zero, g, nt);                                                      \
  }                                                                                                 \
  extern "C" void distance_forward_##SFX(const T* fp, const T* cen, const T* w, T* d, int64_t B,    \
                                         int64_t G, int64_t Hp, int64_t Wp, int64_t Ho, int64_t Wo, \
                                         const int64_t* ctaps, int64_t nct, const int64_t* geom,    \
                                         int nt) {                                                  \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                             \
    ADAPTCONV_DISPATCH(distance_forward, T, g.sw, fp, cen, w, d, B, G, Hp, Wp, Ho, Wo, ctaps, nct,  \
                       g, nt);                                                                      \
  }                                                                                                 \
  extern "C" void distance_backward_##SFX(const T* fp, const T* cen, const T* w, const T* gd,       \
                                          T* gfp, T* gcen, T* gw_part, int64_t B, int64_t G,        \
                                          int64_t Hp, int64_t Wp, int64_t Ho, int64_t Wo,           \
                                          const int64_t* ctaps, int64_t nct, const int64_t* geom,   \
                                          int nt) {                                                 \
    const Geom g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]};                             \
    ADAPTCONV_DISPATCH(distance_backward, T, g.sw, fp, cen, w, gd, gfp, gcen, gw_part, B, G, Hp, Wp, \
                       Ho, Wo, ctaps, nct, g, nt);                                                  \
  }

#define ADAPTCONV_EXPORT_FLAT(T, SFX)                                                                 \
  extern "C" void distance_forward_flat_##SFX(const T* fp, const T* w, T* d, int64_t B, int64_t G,  \
                                              int64_t Hp, int64_t Wp, int64_t Ho, int64_t Wo,       \
                                              int64_t ctap, const int64_t* geom, int nt) {          \
    distance_forward_flat<T>(fp, w, d, B, G, Hp, Wp, Ho, Wo, ctap,                                  \
                             Geom{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]}, nt);       \
  }                                                                                                 \
  extern "C" void distance_backward_flat_##SFX(const T* fp, const T* w, const T* gd, T* gfp,        \
                                               T* gw_part, int64_t B, int64_t G, int64_t Hp,        \
                                               int64_t Wp, int64_t Ho, int64_t Wo, int64_t ctap,    \
                                               const int64_t* geom, int nt) {                       \
    distance_backward_flat<T>(fp, w, gd, gfp, gw_part, B, G, Hp, Wp, Ho, Wo, ctap,                  \
                              Geom{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]}, nt);      \
  }

#define ADAPTCONV_EXPORT_PAD(T, SFX)                                                                  \
  extern "C" void pad_planes_##SFX(const T* src, T* dst, int64_t P, int64_t H, int64_t W,          \
                                   int64_t top, int64_t left, int64_t Hp, int64_t Wp, int replicate,\
                                   int nt) {                                                        \
    pad_planes<T>(src, dst, P, H, W, top, left, Hp, Wp, replicate, nt);                             \
  }                                                                                                 \
  extern "C" void unpad_planes_##SFX(const T* src, T* dst, int64_t P, int64_t H, int64_t W,        \
                                     int64_t top, int64_t left, int64_t Hp, int64_t Wp, int fold,   \
                                     int nt) {                                                      \
    unpad_planes<T>(src, dst, P, H, W, top, left, Hp, Wp, fold, nt);                                \
  }

ADAPTCONV_EXPORT(float, f32)
ADAPTCONV_EXPORT(double, f64)
ADAPTCONV_EXPORT_FLAT(float, f32)
ADAPTCONV_EXPORT_FLAT(double, f64)
ADAPTCONV_EXPORT_PAD(float, f32)
ADAPTCONV_EXPORT_PAD(double, f64)

// The ABI version the Python side checks (bump it with any signature change).
extern "C" int adaptconv_pac_cpu_abi() { return 3; }
