#pragma once
// Shared arithmetic of chimera::codebook_lookup (magbook / phasebook / combook masks).
//
// One row = the K logits of one time-frequency bin and source. The codebook is (K, D)
// real, D = 1 (real codebook) or D = 2 (complex codebook viewed as (re, im) pairs).
//
// Softmax conventions:
// - finite row maximum m: p_k = exp(x_k - m) / sum_j exp(x_j - m);
// - m = +inf: the +inf entries share the mass equally (limit of equal huge logits);
// - m = -inf (every entry -inf): uniform, as if all logits were equal.
// Rows with an infinite maximum are locally constant, so their logits gradient is 0.
// A NaN logit makes its whole row NaN: output, logits gradient and its share of the
// codebook gradient (argmax too: the row's output is NaN, not the entry of the NaN).
// Normalisation: out = y / |y|, and out = 0 where |y| = 0 (like torch.sgn), with gradient 0 there.
//
// The interpolation helpers are written for a lane type V (common/lanes.h): a scalar on
// CUDA (one row per thread), a vector of W rows on the CPU (one row per lane). They work
// in place on a buffer `e` of K values of type V that holds the logits on entry (the CPU
// kernel transposes W rows into it, the CUDA kernel stages a tile of rows in shared
// memory), so each exp is evaluated once per pass over the row.
#include <cmath>
#include <cstdint>

#include "common/lanes.h"
#include "common/macros.h"

namespace chimera {
namespace codebook {

using lanes::scalar_t;

// Compare half / bfloat16 logits as float.
template <typename L> struct FloatOrDouble { using type = float; };
template <> struct FloatOrDouble<double> { using type = double; };
template <typename L> using float_or_double_t = typename FloatOrDouble<L>::type;

// exp(x) for x <= 0 (x = logit - row maximum), NaN for NaN. float on the CPU: a
// Cephes-style polynomial (about 1 ulp on [-87, 0], exactly 0 below) in plain arithmetic
// and bit operations, so it runs on every lane of a vector; on the GPU the CUDA expf.
// double: the library exp (lane by lane on the CPU).
template <typename V>
CHIMERA_HD V exp_nonpositive(const V& x) {
  using A = scalar_t<V>;
  if constexpr (sizeof(A) == 8) {
    if constexpr (lanes::is_vector<V>) {
      V out;
      for (int i = 0; i < lanes::width<V>; ++i) out[i] = std::exp(x[i]);
      return out;
    } else {
      return std::exp(x);
    }
  } else {
#ifdef __CUDA_ARCH__
    return expf(x);
#else
    using U = lanes::bits_t<V>;
    const auto under = x < -87.0f;  // exp(-87) ~ 1.6e-38; false for NaN, which flows through
    const V xc = under ? lanes::splat<V>(-87.0f) : x;
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
    const V t = xc * 1.44269504088896341f + magic;
    const V n = t - magic;                                         // round(x / ln 2), in [-126, 0]
    const V r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n ln 2, in two parts
    V p = lanes::splat<V>(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // 2^n from the bits of t = magic + n (same binade as magic: its low bits hold n).
    const U scale_bits = (lanes::bit_cast<U>(t) - lanes::bit_cast<uint32_t>(magic) + 127u) << 23;
    const V result = p * lanes::bit_cast<V>(scale_bits);
    return under ? V{} : result;
#endif
  }
}

// Overwrite the logits e[0..K) with unnormalised softmax weights; return 1 / sum of
// weights (NaN for a row with a NaN). `infinite` is set where the row maximum is +-inf.
template <typename V, typename M>
CHIMERA_HD V softmax_weights(V* e, int64_t K, M& infinite) {
  V m = e[0];
  for (int64_t k = 1; k < K; ++k) m = lanes::max_nan(m, e[k]);
  infinite = lanes::is_inf(m);
  // Rows with an infinite maximum take the indicator of their maximal entries (no inf - inf);
  // the others exp(x - m), where x - m <= 0 (NaN in a NaN row).
  const V shift = infinite ? V{} : m;
  const V one = lanes::splat<V>(1);
  V sum{};
  for (int64_t k = 0; k < K; ++k) {
    const V w = exp_nonpositive(e[k] - shift);
    e[k] = infinite ? (e[k] == m ? one : V{}) : w;
    sum += e[k];
  }
  return one / sum;  // sum >= 1 outside NaN rows: the maximal entry contributes 1
}

// y = inv * sum_k e_k c_k   (c is (K, D) row-major)
template <int D, typename V, typename A>
CHIMERA_HD void weighted_sum(const V* e, V inv, const A* c, int64_t K, V* y) {
  V acc[D];
  for (int d = 0; d < D; ++d) acc[d] = V{};
  for (int64_t k = 0; k < K; ++k)
    for (int d = 0; d < D; ++d) acc[d] += e[k] * c[k * D + d];
  for (int d = 0; d < D; ++d) y[d] = acc[d] * inv;
}

template <int D, typename V>
CHIMERA_HD V magnitude(const V* y) {
  if constexpr (D == 1) {
    return y[0] < 0 ? -y[0] : y[0];
  } else {
    return lanes::hypot(y[0], y[D - 1]);
  }
}

// out = y / |y|, 0 at |y| = 0 (NaN stays NaN). In place is fine.
template <int D, typename V>
CHIMERA_HD void normalize(const V* y, V* out) {
  const V n = magnitude<D>(y);
  for (int d = 0; d < D; ++d) out[d] = n == 0 ? V{} : y[d] / n;
}

// Gradient through out = y / |y| (d out = (I - u u^T) / |y|):  gy = (g - u (u . g)) / |y|,
// 0 at |y| = 0.
template <int D, typename V>
CHIMERA_HD void normalize_backward(const V* y, const V* g, V* gy) {
  const V n = magnitude<D>(y);
  V u[D];
  V ug{};
  for (int d = 0; d < D; ++d) {
    u[d] = y[d] / n;
    ug += u[d] * g[d];
  }
  for (int d = 0; d < D; ++d) gy[d] = n == 0 ? V{} : (g[d] - u[d] * ug) / n;
}

// Forward of mode "interpolate" for one row (lane): e holds the logits (overwritten).
template <int D, typename V, typename A>
CHIMERA_HD void interpolate_row(V* e, const A* c, int64_t K, bool normalize_out, V* out) {
  lanes::mask_t<V> infinite;
  const V inv = softmax_weights(e, K, infinite);
  weighted_sum<D>(e, inv, c, K, out);
  if (normalize_out) normalize<D>(out, out);
}

// argmax with torch.argmax's conventions: first index on ties, NaN counts as the maximum
// (so a row with a NaN returns its first NaN).
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

template <typename L>
CHIMERA_HD bool is_nan_logit(L v) {
  const float_or_double_t<L> f = v;
  return f != f;
}

// Output of mode "argmax" for one row: the picked entry (normalised), NaN for a NaN row.
template <int D, typename A>
CHIMERA_HD void argmax_lookup(const A* pick, bool nan_row, bool normalize_out, A* out) {
  if (normalize_out) {
    normalize<D>(pick, out);
  } else {
    for (int d = 0; d < D; ++d) out[d] = pick[d];
  }
  if (nan_row)
    for (int d = 0; d < D; ++d) out[d] = std::numeric_limits<A>::quiet_NaN();
}

// Backward of mode "interpolate" for one row (lane), in two steps so that each kernel sums
// the codebook gradient its own way (per-chunk sums on the CPU, warp reductions on CUDA).
//
// Step 1: on entry e holds the logits; on exit the softmax weights (p_k = e_k * inv, inv
// returned) and gy, the gradient reaching y = sum_k p_k c_k (through the normalisation when
// there is one). The codebook gradient of the row is p_k * gy_d for entry k, component d.
template <int D, typename V, typename A, typename M>
CHIMERA_HD V interpolate_backward_weights(V* e, const A* c, int64_t K, const V* g, bool normalize_out, V* gy,
                                          M& infinite) {
  const V inv = softmax_weights(e, K, infinite);
  if (normalize_out) {
    V y[D];
    weighted_sum<D>(e, inv, c, K, y);
    normalize_backward<D>(y, g, gy);
  } else {
    for (int d = 0; d < D; ++d) gy[d] = g[d];
  }
  return inv;
}

// Step 2: overwrite the weights e with the logits gradient p_k (s_k - sum_j p_j s_j),
// s_k = gy . c_k; 0 for a row with an infinite maximum (locally constant).
template <int D, typename V, typename A, typename M>
CHIMERA_HD void interpolate_backward_logits(V* e, V inv, M infinite, const A* c, int64_t K, const V* gy) {
  V sbar{};
  for (int64_t k = 0; k < K; ++k) {
    V s{};
    for (int d = 0; d < D; ++d) s += gy[d] * c[k * D + d];
    sbar += e[k] * s;
  }
  sbar *= inv;
  for (int64_t k = 0; k < K; ++k) {
    V s{};
    for (int d = 0; d < D; ++d) s += gy[d] * c[k * D + d];
    e[k] = infinite ? V{} : e[k] * inv * (s - sbar);
  }
}

// Gradient reaching the codebook entry picked by mode "argmax": gy (through the
// normalisation), NaN for a NaN row.
template <int D, typename A>
CHIMERA_HD void argmax_backward_row(const A* c_pick, const A* g, bool nan_row, bool normalize_out, A* gy) {
  if (normalize_out) {
    normalize_backward<D>(c_pick, g, gy);
  } else {
    for (int d = 0; d < D; ++d) gy[d] = g[d];
  }
  if (nan_row)
    for (int d = 0; d < D; ++d) gy[d] = std::numeric_limits<A>::quiet_NaN();
}

}  // namespace codebook
}  // namespace chimera
