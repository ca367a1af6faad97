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
#include "common/macros.h"

namespace chimera {
namespace codebook {

// Compare half / bfloat16 logits as float.
template <typename L> struct FloatOrDouble { using type = float; };
template <> struct FloatOrDouble<double> { using type = double; };
template <typename L> using float_or_double_t = typename FloatOrDouble<L>::type;

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
    for (int64_t k = 0; k < K; ++k) {
      e[k] = std::exp(e[k] - m);
      sum += e[k];
    }
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

// Backward of mode "interpolate" for one row. On entry e holds the logits; on exit the
// logits gradient  p_k (s_k - sum_j p_j s_j),  s_k = gy . c_k,  gy the gradient reaching
// y = sum_k p_k c_k (through the normalisation when there is one). For the codebook
// gradient add(k, d, p_k * gy_d) is called for every entry (a functor: plain adds on CPU,
// warp reductions on CUDA).
template <typename A, int D, typename AddCodebook>
CHIMERA_HD void interpolate_backward_row(A* e, const A* c, int64_t K, const A* g, bool normalize_out,
                                         AddCodebook& add) {
  bool infinite;
  const A inv = softmax_weights(e, K, infinite);
  A gy[D];
  if (normalize_out) {
    A y[D];
    weighted_sum<A, D>(e, inv, c, K, y);
    normalize_backward<A, D>(y, g, gy);
  } else {
    for (int d = 0; d < D; ++d) gy[d] = g[d];
  }
  A sbar = A(0);
  for (int64_t k = 0; k < K; ++k) {
    A s = A(0);
    for (int d = 0; d < D; ++d) s += gy[d] * c[k * D + d];
    sbar += e[k] * s;
  }
  sbar *= inv;
  for (int64_t k = 0; k < K; ++k) {
    const A p = e[k] * inv;
    A s = A(0);
    for (int d = 0; d < D; ++d) {
      s += gy[d] * c[k * D + d];
      add(k, d, p * gy[d]);
    }
    e[k] = infinite ? A(0) : p * (s - sbar);
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
