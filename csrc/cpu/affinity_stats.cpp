// CPU kernels of chimera::affinity_stats and chimera::affinity_stats_backward.
//
// Forward: each task takes a range of bins of one item, copies a tile of TILE bins
// feature-major (Zt[e][n] and w*Zt[e][n]) and adds the tile's dot products for every
// pair of the packed lower-triangle Gram into float64 accumulators. The tile dot runs
// in the input precision over TILE bins (vectorised), the sum over tiles in float64,
// which keeps float32 error below that of a float32 bmm. Extra memory: one Gram per
// task, O(B * D^2 * tasks per item).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/add.h>
#include <ATen/ops/constant_pad_nd.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <vector>

#include "common/affinity.h"

namespace chimera {
namespace {

using affinity::tri_size;
using affinity::tri_unpack;

constexpr int64_t TILE = 128;         // bins per tile: 2 * E * TILE values stay in L1
constexpr int64_t MIN_TASK = 8192;    // bins per parallel task, at least
constexpr int LANES = 16;             // independent partial sums: lets gcc vectorise the dot

template <typename T>
__attribute__((always_inline)) inline double tile_dot(const T* __restrict a, const T* __restrict b) {
  T acc[LANES] = {};
  for (int64_t n = 0; n < TILE; n += LANES)
    for (int l = 0; l < LANES; ++l) acc[l] += a[n + l] * b[n + l];
  double s = 0;
  for (int l = 0; l < LANES; ++l) s += acc[l];
  return s;
}

#if defined(__x86_64__) && !defined(__clang__)
// Hot loops are compiled for AVX-512, AVX2+FMA and baseline x86-64, chosen at load time,
// so one binary runs anywhere and uses the wide units where present.
#define CHIMERA_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define CHIMERA_CLONES
#endif

// The packed Gram pairs of one tile.
template <typename T>
CHIMERA_CLONES void tile_pairs(const T* zt, const T* wzt, const int64_t* pi, const int64_t* pj, int64_t P,
                               double* acc) {
  for (int64_t p = 0; p < P; ++p) acc[p] += tile_dot(zt + pi[p] * TILE, wzt + pj[p] * TILE);
}

struct Shape {
  int64_t B, N, D, C;
  bool index_target, weighted;
};

Shape check_inputs(const at::Tensor& emb, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                   int64_t num_classes) {
  TORCH_CHECK(emb.dim() == 3, "affinity_stats: embedding must be (B, N, D), got ", emb.sizes());
  TORCH_CHECK(emb.scalar_type() == at::kFloat || emb.scalar_type() == at::kDouble,
              "affinity_stats (CPU): embedding must be float32 or float64, got ", emb.scalar_type());
  Shape s{emb.size(0), emb.size(1), emb.size(2), 0, target.scalar_type() == at::kLong, weight.has_value()};
  if (s.index_target) {
    TORCH_CHECK(target.dim() == 2 && target.size(0) == s.B && target.size(1) == s.N,
                "affinity_stats: index target must be (B, N) = (", s.B, ", ", s.N, "), got ", target.sizes());
    TORCH_CHECK(num_classes > 0, "affinity_stats: num_classes must be positive for an index target");
    s.C = num_classes;
  } else {
    TORCH_CHECK(target.dim() == 3 && target.size(0) == s.B && target.size(1) == s.N,
                "affinity_stats: dense target must be (B, N, C), got ", target.sizes());
    TORCH_CHECK(target.scalar_type() == emb.scalar_type(), "affinity_stats: dense target dtype ",
                target.scalar_type(), " differs from embedding dtype ", emb.scalar_type());
    s.C = target.size(2);
    TORCH_CHECK(num_classes == s.C || num_classes <= 0, "affinity_stats: num_classes=", num_classes,
                " but the target has ", s.C, " classes");
  }
  if (s.weighted) {
    TORCH_CHECK(weight->dim() == 2 && weight->size(0) == s.B && weight->size(1) == s.N,
                "affinity_stats: weight must be (B, N), got ", weight->sizes());
    TORCH_CHECK(weight->scalar_type() == emb.scalar_type(), "affinity_stats: weight dtype ",
                weight->scalar_type(), " differs from embedding dtype ", emb.scalar_type());
  }
  return s;
}

// Split each item's bins into the same number of tasks.
int64_t tasks_per_item(const Shape& s) {
  const int64_t threads = at::get_num_threads();
  const int64_t wanted = std::max<int64_t>(1, (2 * threads + s.B - 1) / s.B);
  return std::max<int64_t>(1, std::min(wanted, (s.N + MIN_TASK - 1) / MIN_TASK));
}

template <typename T>
void stats_cpu(const Shape& s, const T* V, const T* Yd, const int64_t* labels, const T* W,
               double* vv, double* vy, double* yy, double* wsum) {
  const int64_t D = s.D, C = s.C, N = s.N;
  const int64_t E = s.index_target ? D : D + C;  // columns of the Gram
  const int64_t P = tri_size(E);
  const int64_t per_item = tasks_per_item(s);
  const int64_t chunk = (N + per_item - 1) / per_item;
  // Per task: packed Gram (P), V^T W Y by label (C * D), label weights (C), sum w (1).
  const int64_t stride = P + C * D + C + 1;
  std::vector<double> partial(static_cast<size_t>(s.B * per_item * stride), 0.0);
  std::vector<int64_t> pair_i(P), pair_j(P);
  for (int64_t p = 0; p < P; ++p) tri_unpack(p, pair_i[p], pair_j[p]);

  at::parallel_for(0, s.B * per_item, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> zt(E * TILE), wzt(E * TILE), vy_tile(C * D);
    std::vector<T> y_tile(C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / per_item;
      const int64_t n0 = (task % per_item) * chunk, n1 = std::min(N, n0 + chunk);
      double* acc = partial.data() + task * stride;
      double* acc_vy = acc + P;
      double* acc_yy = acc_vy + C * D;
      double& acc_w = acc_yy[C];
      const T* Vb = V + b * N * D;
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t nt = std::min(TILE, n1 - t0);
        std::fill(zt.begin(), zt.end(), T(0));
        std::fill(wzt.begin(), wzt.end(), T(0));
        if (s.index_target) {
          std::fill(vy_tile.begin(), vy_tile.end(), T(0));
          std::fill(y_tile.begin(), y_tile.end(), T(0));
        }
        T wt = 0;
        for (int64_t n = 0; n < nt; ++n) {
          const int64_t g = b * N + t0 + n;
          const T w = W ? W[g] : T(1);
          const T* v = Vb + (t0 + n) * D;
          wt += w;
          for (int64_t d = 0; d < D; ++d) {
            zt[d * TILE + n] = v[d];
            wzt[d * TILE + n] = w * v[d];
          }
          if (s.index_target) {
            const int64_t c = labels[g];
            TORCH_CHECK(c >= 0 && c < C, "affinity_stats: target label ", c, " out of range [0, ", C, ")");
            T* row = vy_tile.data() + c * D;
            for (int64_t d = 0; d < D; ++d) row[d] += w * v[d];
            y_tile[c] += w;
          } else {
            const T* y = Yd + g * C;
            for (int64_t c = 0; c < C; ++c) {
              zt[(D + c) * TILE + n] = y[c];
              wzt[(D + c) * TILE + n] = w * y[c];
            }
          }
        }
        tile_pairs(zt.data(), wzt.data(), pair_i.data(), pair_j.data(), P, acc);
        if (s.index_target) {
          for (int64_t k = 0; k < C * D; ++k) acc_vy[k] += vy_tile[k];
          for (int64_t c = 0; c < C; ++c) acc_yy[c] += y_tile[c];
        }
        acc_w += wt;
      }
    }
  });

  // Reduce the tasks of each item and spread the packed Gram into the outputs.
  std::vector<double> tri(P);
  for (int64_t b = 0; b < s.B; ++b) {
    std::fill(tri.begin(), tri.end(), 0.0);
    double* ovv = vv + b * D * D;
    double* ovy = vy + b * D * C;
    double* oyy = yy + b * C * C;
    double w = 0;
    std::vector<double> lab_vy(C * D, 0.0), lab_yy(C, 0.0);
    for (int64_t k = 0; k < per_item; ++k) {
      const double* acc = partial.data() + (b * per_item + k) * stride;
      for (int64_t p = 0; p < P; ++p) tri[p] += acc[p];
      for (int64_t q = 0; q < C * D; ++q) lab_vy[q] += acc[P + q];
      for (int64_t c = 0; c < C; ++c) lab_yy[c] += acc[P + C * D + c];
      w += acc[P + C * D + C];
    }
    if (s.index_target) {
      affinity::unpack_gram(tri.data(), D, 0, ovv, ovy, oyy);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t d = 0; d < D; ++d) ovy[d * C + c] = lab_vy[c * D + d];
      for (int64_t c = 0; c < C; ++c)
        for (int64_t e = 0; e < C; ++e) oyy[c * C + e] = (c == e) ? lab_yy[c] : 0.0;
    } else {
      affinity::unpack_gram(tri.data(), D, C, ovv, ovy, oyy);
    }
    wsum[b] = w;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> affinity_stats_cpu(
    const at::Tensor& embedding, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t num_classes) {
  const Shape s = check_inputs(embedding, target, weight, num_classes);
  const auto opts = embedding.options().dtype(at::kDouble);
  at::Tensor vv = at::empty({s.B, s.D, s.D}, opts), vy = at::empty({s.B, s.D, s.C}, opts);
  at::Tensor yy = at::empty({s.B, s.C, s.C}, opts), wsum = at::empty({s.B}, opts);
  const at::Tensor V = embedding.contiguous();
  const at::Tensor Y = target.contiguous();
  const at::Tensor W = s.weighted ? weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "affinity_stats_cpu", [&] {
    stats_cpu<scalar_t>(s, V.const_data_ptr<scalar_t>(), s.index_target ? nullptr : Y.const_data_ptr<scalar_t>(),
                        s.index_target ? Y.const_data_ptr<int64_t>() : nullptr,
                        s.weighted ? W.const_data_ptr<scalar_t>() : nullptr, vv.mutable_data_ptr<double>(),
                        vy.mutable_data_ptr<double>(), yy.mutable_data_ptr<double>(), wsum.mutable_data_ptr<double>());
  });
  return {vv, vy, yy, wsum};
}

// The gradient is as large as the embedding (131 MB for the benchmark shape) and freshly
// allocated: touching it page by page costs more than computing it. Where transparent huge
// pages are enabled on request (madvise), ask for them over the buffer's aligned interior.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t HUGE = uintptr_t(2) << 20;
  if (bytes < 4 * HUGE) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + HUGE - 1) & ~(HUGE - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(HUGE - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: errors ignored
#else
  (void)data;
  (void)bytes;
#endif
}

template <typename T>
struct Rows {
  Shape s;
  const T* v;
  const T* y;            // dense target or null
  const int64_t* labels; // index target or null
  const T* w;            // weights or null
  T* out;
};

inline void check_label(int64_t c, int64_t C) {
  TORCH_CHECK(c >= 0 && c < C, "affinity_stats_backward: target label ", c, " out of range [0, ", C, ")");
}

// Rows [begin, end) of dL/dV with G, H padded to WIDTH columns (see accumulate_padded).
// One row; SPILL: store all WIDTH values, over the start of the rows after it.
template <typename T, int WIDTH, bool SPILL>
inline void backward_row(const Rows<T>& r, const T* gp, const T* hp, int64_t k) {
  const int64_t D = r.s.D, C = r.s.C;
  const T wk = r.w ? r.w[k] : T(1);
  if (r.labels) {
    const int64_t c = r.labels[k];
    check_label(c, C);
    affinity::gradient_row_index_padded<T, WIDTH, SPILL>(r.v + k * D, hp + c * WIDTH, wk, gp, D, r.out + k * D);
  } else {
    affinity::gradient_row_dense_padded<T, WIDTH, SPILL>(r.v + k * D, r.y + k * C, wk, gp, hp, D, C, r.out + k * D);
  }
}

// Rows [begin, end) of dL/dV with G, H padded to WIDTH columns (see accumulate_padded).
// Rows are written in increasing order with full-width stores that spill into the next
// rows of this range (rewritten right after); the rows whose spill would leave the range
// (its last WIDTH / D + 1) are stored exactly, so parallel ranges never overlap.
template <typename T, int WIDTH>
CHIMERA_CLONES void backward_rows(const Rows<T>& r, const T* Gp, const T* Hp, int64_t begin, int64_t end) {
  const int64_t N = r.s.N, D = r.s.D, C = r.s.C;
  const int64_t exact_from = end - (WIDTH + D - 1) / D;
  for (int64_t k = begin; k < end;) {  // row k = b * N + n, item by item (no division per row)
    const int64_t b = k / N, stop = std::min(end, (b + 1) * N);
    const T* gp = Gp + b * D * WIDTH;
    const T* hp = Hp + b * C * WIDTH;
    for (const int64_t fast = std::min(stop, exact_from); k < fast; ++k) backward_row<T, WIDTH, true>(r, gp, hp, k);
    for (; k < stop; ++k) backward_row<T, WIDTH, false>(r, gp, hp, k);
  }
}

template <typename T, int WIDTH>
void backward_padded(const Rows<T>& r, const at::Tensor& G, const at::Tensor& H) {
  // (B, D, D) and (B, C, D) -> zero-padded (B, D, WIDTH) and (B, C, WIDTH)
  const at::Tensor Gp = at::constant_pad_nd(G, {0, WIDTH - r.s.D}).contiguous();
  const at::Tensor Hp = at::constant_pad_nd(H, {0, WIDTH - r.s.D}).contiguous();
  const T* gp = Gp.const_data_ptr<T>();
  const T* hp = Hp.const_data_ptr<T>();
  at::parallel_for(0, r.s.B * r.s.N, 2048, [&](int64_t begin, int64_t end) {
    backward_rows<T, WIDTH>(r, gp, hp, begin, end);
  });
}

// Any D: the unpadded row formulas.
template <typename T>
void backward_generic(const Rows<T>& r, const T* g, const T* h) {
  const int64_t N = r.s.N, D = r.s.D, C = r.s.C;
  at::parallel_for(0, r.s.B * N, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / N;
      const T wk = r.w ? r.w[k] : T(1);
      if (r.labels) {
        check_label(r.labels[k], C);
        affinity::gradient_row_index(r.v + k * D, r.labels[k], wk, g + b * D * D, h + b * C * D, D, r.out + k * D);
      } else {
        affinity::gradient_row_dense(r.v + k * D, r.y + k * C, wk, g + b * D * D, h + b * C * D, D, C, r.out + k * D);
      }
    }
  });
}

at::Tensor affinity_stats_backward_cpu(const at::Tensor& grad_vv, const at::Tensor& grad_vy,
                                       const at::Tensor& embedding, const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight) {
  const bool index_target = target.scalar_type() == at::kLong;
  const Shape s = check_inputs(embedding, target, weight, index_target ? grad_vy.size(-1) : target.size(-1));
  TORCH_CHECK(grad_vv.dim() == 3 && grad_vv.size(0) == s.B && grad_vv.size(1) == s.D && grad_vv.size(2) == s.D,
              "affinity_stats_backward: grad_vv must be (B, D, D), got ", grad_vv.sizes());
  TORCH_CHECK(grad_vy.dim() == 3 && grad_vy.size(0) == s.B && grad_vy.size(1) == s.D && grad_vy.size(2) == s.C,
              "affinity_stats_backward: grad_vy must be (B, D, C), got ", grad_vy.sizes());
  const at::Tensor V = embedding.contiguous();
  const at::Tensor Y = target.contiguous();
  const at::Tensor W = s.weighted ? weight->contiguous() : at::Tensor();
  // G = g_vv + g_vv^T and H = g_vy^T, in the embedding's precision.
  const at::Tensor G = at::add(grad_vv, grad_vv.transpose(1, 2)).to(V.scalar_type()).contiguous();
  const at::Tensor H = grad_vy.transpose(1, 2).to(V.scalar_type()).contiguous();
  at::Tensor dV = at::empty_like(V);
  advise_huge_pages(dV.data_ptr(), dV.nbytes());
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "affinity_stats_backward_cpu", [&] {
    const Rows<scalar_t> rows{s, V.const_data_ptr<scalar_t>(), s.index_target ? nullptr : Y.const_data_ptr<scalar_t>(),
                              s.index_target ? Y.const_data_ptr<int64_t>() : nullptr,
                              s.weighted ? W.const_data_ptr<scalar_t>() : nullptr, dV.mutable_data_ptr<scalar_t>()};
    if (s.D <= 16) {
      backward_padded<scalar_t, 16>(rows, G, H);
    } else if (s.D <= 32) {
      backward_padded<scalar_t, 32>(rows, G, H);
    } else if (s.D <= 64) {
      backward_padded<scalar_t, 64>(rows, G, H);
    } else {
      backward_generic<scalar_t>(rows, G.const_data_ptr<scalar_t>(), H.const_data_ptr<scalar_t>());
    }
  });
  return dV;
}

}  // namespace

TORCH_LIBRARY_IMPL(chimera, CPU, m) {
  m.impl("affinity_stats", &affinity_stats_cpu);
  m.impl("affinity_stats_backward", &affinity_stats_backward_cpu);
}

}  // namespace chimera
