#pragma once
// Shared arithmetic of chimera::codebook_lookup (magbook / phasebook / combook masks).
//
// One row = the K logits of one time-frequency bin and source. The codebook is (K, D)
// real, D = 1 (real codebook) or D = 2 (complex codebook viewed as (re, im) pairs).
//
// Softmax conventions (never NaN for non-NaN logits):
// - finite row maximum m: p_k = exp(x_k - m) / sum_j exp(x_j - m);
// - m = +inf: the +inf entries share the mass equally (limit of equal huge logits);
// - m = -inf (every entry -inf): uniform, as if all logits were equal.
// Rows with an infinite maximum are locally constant, so their logits gradient is 0.
// Normalisation: out = y / |y|, and out = 0 where |y| = 0 (like torch.sgn), with gradient 0 there.
//
// The row helpers work in place on a buffer `e` of K accumulator values that holds the
// logits on entry (the CPU kernel copies a row into it, the CUDA kernel stages a tile of
// rows in shared memory), so each exp is evaluated once per pass over the row.
#include <cmath>
#include <cstdint>
#include <cstring>
#include "common/macros.h"

namespace chimera {
namespace codebook {

// Compare half / bfloat16 logits as float.
template <typename L> struct FloatOrDouble { using type = float; };
template <> struct FloatOrDouble<double> { using type = double; };
template <typename L> using float_or_double_t = typename FloatOrDouble<L>::type;

// exp(x) for x <= 0 (x = logit - row maximum). On the CPU a branch-free Cephes-style
// polynomial (about 1 ulp on [-87, 0], exactly 0 below) that gcc vectorises over the row,
// where std::exp is a scalar libm call; on the GPU the CUDA expf.
CHIMERA_HD float exp_nonpositive(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  // Branch-free, and the selects act on integer bits: gcc if-converts and vectorises the
  // loop over the row only then (float compares may trap under -ftrapping-math).
  const uint32_t lim = 0xC2AE0000u;  // bits of -87.0f; exp(-87) ~ 1.6e-38
  uint32_t ux;
  memcpy(&ux, &x, sizeof(ux));
  const bool under = ux > lim;  // x < -87 (negative floats order by magnitude), -inf included
  const uint32_t uc = under ? lim : ux;
  float xc;
  memcpy(&xc, &uc, sizeof(xc));
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (xc * 1.44269504088896341f + magic) - magic;  // round(x / ln 2)
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n ln 2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  float scale;
  memcpy(&scale, &bits, sizeof(scale));
  const float result = p * scale;
  uint32_t ur;
  memcpy(&ur, &result, sizeof(ur));
  ur &= static_cast<uint32_t>(under) - 1u;  // 0 below -87 (a mask: a select would become a branch)
  float out;
  memcpy(&out, &ur, sizeof(out));
  return out;
#endif
}

CHIMERA_HD double exp_nonpositive(double x) { return std::exp(x); }

// Overwrite the logits e[0..K) with unnormalised softmax weights; return 1 / sum of
// weights. `infinite` is set when the row maximum is +-inf.
template <typename A>
CHIMERA_HD A softmax_weights(A* e, int64_t K, bool& infinite) {
  A m = e[0];
  for (int64_t k = 1; k < K; ++k) m = e[k] > m ? e[k] : m;
  infinite = std::isinf(m);
  A sum = A(0);
  if (infinite) {  // indicator of the maximal entries: no inf - inf
    for (int64_t k = 0; k < K; ++k) {
      e[k] = e[k] == m ? A(1) : A(0);
      sum += e[k];
    }
  } else {
    for (int64_t k = 0; k < K; ++k) e[k] = exp_nonpositive(e[k] - m);  // vectorised on the CPU
    for (int64_t k = 0; k < K; ++k) sum += e[k];
  }
  return A(1) / sum;  // sum >= 1: the maximal entry contributes 1
}

// y = inv * sum_k e_k c_k   (c is (K, D) row-major)
template <typename A, int D>
CHIMERA_HD void weighted_sum(const A* e, A inv, const A* c, int64_t K, A* y) {
  A acc[D];
  for (int d = 0; d < D; ++d) acc[d] = A(0);
  for (int64_t k = 0; k < K; ++k)
    for (int d = 0; d < D; ++d) acc[d] += e[k] * c[k * D + d];
  for (int d = 0; d < D; ++d) y[d] = acc[d] * inv;
}

template <typename A, int D>
CHIMERA_HD A magnitude(const A* y) {
  if (D == 1) return std::fabs(y[0]);
  return std::hypot(y[0], y[D - 1]);  // no underflow of y^2 for tiny values
}

// out = y / |y|, 0 at |y| = 0. In place is fine.
template <typename A, int D>
CHIMERA_HD void normalize(const A* y, A* out) {
  const A n = magnitude<A, D>(y);
  for (int d = 0; d < D; ++d) out[d] = n > A(0) ? y[d] / n : A(0);
}

// Gradient through out = y / |y| (d out = (I - u u^T) / |y|):  gy = (g - u (u . g)) / |y|,
// 0 at |y| = 0.
template <typename A, int D>
CHIMERA_HD void normalize_backward(const A* y, const A* g, A* gy) {
  const A n = magnitude<A, D>(y);
  if (!(n > A(0))) {
    for (int d = 0; d < D; ++d) gy[d] = A(0);
    return;
  }
  A u[D];
  A ug = A(0);
  for (int d = 0; d < D; ++d) {
    u[d] = y[d] / n;
    ug += u[d] * g[d];
  }
  for (int d = 0; d < D; ++d) gy[d] = (g[d] - u[d] * ug) / n;
}

// Forward of mode "interpolate" for one row: e holds the logits (overwritten).
template <typename A, int D>
CHIMERA_HD void interpolate_row(A* e, const A* c, int64_t K, bool normalize_out, A* out) {
  bool infinite;
  const A inv = softmax_weights(e, K, infinite);
  weighted_sum<A, D>(e, inv, c, K, out);
  if (normalize_out) normalize<A, D>(out, out);
}

// argmax with torch.argmax's conventions: first index on ties, NaN counts as the maximum.
template <typename L>
CHIMERA_HD int64_t argmax_row(const L* x, int64_t K) {
  int64_t best = 0;
  float_or_double_t<L> bv = x[0];
  if (bv != bv) return 0;
  for (int64_t k = 1; k < K; ++k) {
    const float_or_double_t<L> v = x[k];
    if (v != v) return k;
    if (v > bv) {
      bv = v;
      best = k;
    }
  }
  return best;
}

// Backward of mode "interpolate" for one row, in two steps so that each kernel sums the
// codebook gradient its own way (per-thread buffers on the CPU, warp reductions on CUDA).
//
// Step 1: on entry e holds the logits; on exit the softmax weights (p_k = e_k * inv, inv
// returned) and gy, the gradient reaching y = sum_k p_k c_k (through the normalisation when
// there is one). The codebook gradient of the row is p_k * gy_d for entry k, component d.
template <typename A, int D>
CHIMERA_HD A interpolate_backward_weights(A* e, const A* c, int64_t K, const A* g, bool normalize_out, A* gy,
                                          bool& infinite) {
  const A inv = softmax_weights(e, K, infinite);
  if (normalize_out) {
    A y[D];
    weighted_sum<A, D>(e, inv, c, K, y);
    normalize_backward<A, D>(y, g, gy);
  } else {
    for (int d = 0; d < D; ++d) gy[d] = g[d];
  }
  return inv;
}

// Step 2: overwrite the weights e with the logits gradient p_k (s_k - sum_j p_j s_j),
// s_k = gy . c_k; 0 for a row with an infinite maximum (locally constant).
template <typename A, int D>
CHIMERA_HD void interpolate_backward_logits(A* e, A inv, bool infinite, const A* c, int64_t K, const A* gy) {
  if (infinite) {
    for (int64_t k = 0; k < K; ++k) e[k] = A(0);
    return;
  }
  A sbar = A(0);
  for (int64_t k = 0; k < K; ++k) {
    A s = A(0);
    for (int d = 0; d < D; ++d) s += gy[d] * c[k * D + d];
    sbar += e[k] * s;
  }
  sbar *= inv;
  for (int64_t k = 0; k < K; ++k) {
    A s = A(0);
    for (int d = 0; d < D; ++d) s += gy[d] * c[k * D + d];
    e[k] = e[k] * inv * (s - sbar);
  }
}

// Gradient reaching the codebook entry picked by mode "argmax": gy (through the normalisation).
template <typename A, int D>
CHIMERA_HD void argmax_backward_row(const A* c_pick, const A* g, bool normalize_out, A* gy) {
  if (normalize_out) {
    normalize_backward<A, D>(c_pick, g, gy);
  } else {
    for (int d = 0; d < D; ++d) gy[d] = g[d];
  }
}

}  // namespace codebook
}  // namespace chimera
