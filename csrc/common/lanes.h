#pragma once
// Lane types of the shared kernel arithmetic (csrc/common/*.h).
//
// A helper written for a value type V computes one row's quantity when V is a scalar
// (float, double: the CUDA kernels, one row per thread) or the same quantity of W rows
// at once when V is a GCC vector of W scalars (the CPU kernels, one row per lane; see
// cpu/simd.h). The same source text serves both: arithmetic and comparisons work
// element-wise on vectors, a comparison gives a mask (bool, or an integer vector) and
// `mask ? a : b` selects per lane. What differs (library calls, bit casts) is here.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/macros.h"

#if defined(__GNUC__) && !defined(__CUDACC__)
// The helpers take and return GCC vectors by value. They are always inlined, so no call
// ever uses the calling convention this warning is about.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace chimera {
namespace lanes {

// GCC vector of scalars S, BYTES wide (a dependent typedef: usable in templates).
template <typename S, int BYTES>
struct VectorOf {
  typedef S type __attribute__((vector_size(BYTES)));
};

template <typename V, typename = void>
struct Traits {  // a scalar: one lane
  using scalar = V;
  static constexpr int width = 1;
};

template <typename V>
struct Traits<V, std::enable_if_t<!std::is_arithmetic_v<V>>> {  // a GCC vector
  using scalar = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;
  static constexpr int width = sizeof(V) / sizeof(scalar);
};

template <typename V> using scalar_t = typename Traits<V>::scalar;
template <typename V> constexpr int width = Traits<V>::width;
template <typename V> constexpr bool is_vector = !std::is_arithmetic_v<V>;
// What a comparison of two V gives: bool for a scalar, an integer vector for a vector.
template <typename V> using mask_t = decltype(std::declval<V>() != std::declval<V>());

// Unsigned integer lanes of the same size as V's (for bit manipulation).
template <typename V, bool = is_vector<V>>
struct BitsOf {
  using type = std::conditional_t<sizeof(V) == 8, uint64_t, uint32_t>;
};
template <typename V>
struct BitsOf<V, true> {
  using type = typename VectorOf<std::conditional_t<sizeof(scalar_t<V>) == 8, uint64_t, uint32_t>, sizeof(V)>::type;
};
template <typename V> using bits_t = typename BitsOf<V>::type;

template <typename To, typename From>
CHIMERA_HD To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

// Every lane set to a.
template <typename V>
CHIMERA_HD V splat(scalar_t<V> a) {
  return V{} + a;
}

// sqrt(a^2 + b^2) without underflow of a^2 for tiny values; lane by lane (libm has no
// vector form, and it is off the hot path: only normalised lookups use it).
template <typename V>
CHIMERA_HD V hypot(const V& a, const V& b) {
  if constexpr (is_vector<V>) {
    V out;
    for (int i = 0; i < width<V>; ++i) out[i] = std::hypot(a[i], b[i]);
    return out;
  } else {
    return std::hypot(a, b);
  }
}

template <typename V>
CHIMERA_HD auto is_nan(const V& a) {
  return a != a;
}

template <typename V>
CHIMERA_HD auto is_inf(const V& a) {
  constexpr scalar_t<V> inf = std::numeric_limits<scalar_t<V>>::infinity();
  return (a == inf) | (a == -inf);
}

// max that propagates NaN: NaN once either argument was NaN.
template <typename V>
CHIMERA_HD V max_nan(const V& m, const V& v) {
  return ((v > m) | (v != v)) ? v : m;
}

// Sum of the lanes, in lane order (a fixed order: the result depends only on the values).
template <typename V>
CHIMERA_HD double sum_lanes(const V& a) {
  if constexpr (is_vector<V>) {
    double s = 0;
    for (int i = 0; i < width<V>; ++i) s += static_cast<double>(a[i]);
    return s;
  } else {
    return static_cast<double>(a);
  }
}

}  // namespace lanes
}  // namespace chimera
