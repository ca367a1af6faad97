// CPU kernels of chimera::affinity_stats and chimera::affinity_stats_backward.
//
// Forward: each task takes a range of bins of one item, copies a tile of TILE bins
// feature-major (Zt[e][n] and w*Zt[e][n]) and adds the tile's dot products for every
// pair of the packed lower-triangle Gram into float64 accumulators. The tile dot runs
// in the input precision over TILE bins (vectorised), the sum over tiles in float64,
// which keeps float32 error below that of a float32 bmm. Extra memory: one Gram per
// task, O(B * D^2 * tasks per item). The loops are in affinity_stats_body.inc, compiled
// once per instruction-set path (cpu/isa.h); this file checks, allocates and dispatches.
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
#include "cpu/isa.h"

namespace chimera {
// Definitions shared by the host code below and the kernel body.
namespace affinity_cpu {

constexpr int64_t TILE = 128;         // bins per tile: 2 * E * TILE values stay in L1
constexpr int64_t MIN_TASK = 8192;    // bins per parallel task, at least
constexpr int LANES = 16;             // independent partial sums: lets gcc vectorise the dot

struct Shape {
  int64_t B, N, D, C;
  bool index_target, weighted;
};

inline Shape check_inputs(const at::Tensor& emb, const at::Tensor& target, const std::optional<at::Tensor>& weight,
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
inline int64_t tasks_per_item(const Shape& s) {
  const int64_t threads = at::get_num_threads();
  const int64_t wanted = std::max<int64_t>(1, (2 * threads + s.B - 1) / s.B);
  return std::max<int64_t>(1, std::min(wanted, (s.N + MIN_TASK - 1) / MIN_TASK));
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

}  // namespace affinity_cpu
}  // namespace chimera

#define CHIMERA_ISA_BODY "cpu/affinity_stats_body.inc"
#include "cpu/isa_clones.inc"

namespace chimera {
namespace {

using namespace affinity_cpu;

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
    CHIMERA_CPU_DISPATCH(affinity_body::stats<scalar_t>)(s, V.const_data_ptr<scalar_t>(), s.index_target ? nullptr : Y.const_data_ptr<scalar_t>(),
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
    CHIMERA_CPU_DISPATCH(affinity_body::backward<scalar_t>)(rows, G, H);
  });
  return dV;
}

}  // namespace

TORCH_LIBRARY_IMPL(chimera, CPU, m) {
  m.impl("affinity_stats", &affinity_stats_cpu);
  m.impl("affinity_stats_backward", &affinity_stats_backward_cpu);
}

}  // namespace chimera
