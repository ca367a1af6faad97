#pragma once
// Shared arithmetic of the low-rank deep-clustering statistics and gradient (CPU and CUDA).
//
// Statistics of one item: the Gram matrix Z^T W Z of Z = [V | Y] (N x E, E = D + C
// for a dense target) holds V^T W V, V^T W Y and Y^T W Y at once. It is symmetric,
// so only its lower triangle is accumulated (CUDA: a packed list of (i, j) pairs; CPU:
// blocks on and below the diagonal) and spread into the outputs by spread_pair.
// For index targets Y is never materialised: V^T W Y and Y^T W Y are scattered by label.
// V^T w and sum w (the mean term of deep LDA) come with them.
#include <cstdint>
#include <cmath>
#include "common/macros.h"

namespace chimera {
namespace affinity {

CHIMERA_HD int64_t tri_size(int64_t n) { return n * (n + 1) / 2; }

CHIMERA_HD int64_t tri_index(int64_t i, int64_t j) { return i * (i + 1) / 2 + j; }  // j <= i

// Inverse of tri_index: pair p -> (i, j) with j <= i.
CHIMERA_HD void tri_unpack(int64_t p, int64_t& i, int64_t& j) {
  i = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(p) + 1.0) - 1.0) / 2.0);
  while (tri_index(i + 1, 0) <= p) ++i;  // guard against rounding of sqrt
  while (tri_index(i, 0) > p) --i;
  j = p - tri_index(i, 0);
}

// Store entry (i, j), j <= i, of the Gram of Z = [V | Y] (E = D + C) where it belongs
// in V^T W V (D x D), V^T W Y (D x C) or Y^T W Y (C x C), all row-major, mirrored.
template <typename Out>
CHIMERA_HD void spread_pair(int64_t i, int64_t j, Out s, int64_t D, int64_t C, Out* vv, Out* vy, Out* yy) {
  if (i < D) {                       // both in V
    vv[i * D + j] = s;
    vv[j * D + i] = s;
  } else if (j < D) {                // row of Y, column of V
    vy[j * C + (i - D)] = s;
  } else {                           // both in Y
    yy[(i - D) * C + (j - D)] = s;
    yy[(j - D) * C + (i - D)] = s;
  }
}

// dL/dV of one bin for a dense target row y (length C):
//   out[j] = w * (g[j] + sum_c y[c] H[c][j] + sum_i v[i] G[i][j]),
// with G = dL/d(VᵀWV) + its transpose (D x D), H = (dL/d(VᵀWY))ᵀ (C x D), both with row
// stride ld >= D, and g = dL/d(Vᵀw) (D). The sums run in this fixed order (the CPU
// micro-kernel keeps it too), so a row's value never depends on the rows computed with it.
template <typename T>
CHIMERA_HD void gradient_row_dense(const T* v, const T* y, T w, const T* G, const T* H, const T* g, int64_t D,
                                   int64_t C, int64_t ld, T* out) {
  for (int64_t j = 0; j < D; ++j) out[j] = g[j];
  for (int64_t c = 0; c < C; ++c) {
    const T yc = y[c];
    const T* h = H + c * ld;
    for (int64_t j = 0; j < D; ++j) out[j] += yc * h[j];
  }
  for (int64_t i = 0; i < D; ++i) {
    const T vi = v[i];
    const T* gi = G + i * ld;
    for (int64_t j = 0; j < D; ++j) out[j] += vi * gi[j];
  }
  for (int64_t j = 0; j < D; ++j) out[j] *= w;
}

// The same for an index target: the row of Y is one-hot, so g + Y H is row `label` of H
// once g has been added to every row of H (affinity_host.h, gradient_operands).
template <typename T>
CHIMERA_HD void gradient_row_index(const T* v, int64_t label, T w, const T* G, const T* H, int64_t D, int64_t ld,
                                   T* out) {
  const T* h = H + label * ld;
  for (int64_t j = 0; j < D; ++j) out[j] = h[j];
  for (int64_t i = 0; i < D; ++i) {
    const T vi = v[i];
    const T* gi = G + i * ld;
    for (int64_t j = 0; j < D; ++j) out[j] += vi * gi[j];
  }
  for (int64_t j = 0; j < D; ++j) out[j] *= w;
}

}  // namespace affinity
}  // namespace chimera
