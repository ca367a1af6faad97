// CPU kernels of chimera::affinity_stats and chimera::affinity_stats_backward.
//
// Forward: the bins of each item are cut into tasks of TASK_BINS bins (the last one
// shorter); each task walks its bins one tile at a time. A tile is staged row-major and
// padded to whole SIMD vectors (z = [v | y] and w z, in L1), then a register-blocked
// micro-kernel adds the tile's lower-triangle blocks of the Gram Z^T W Z in the input
// precision; each tile's sums are added to the task's float64 accumulators (which keeps
// float32 error below that of a float32 bmm). Index targets scatter w v by label instead
// of a one-hot. The tasks of an item are added in task order, so the result is a function
// of the shape alone, never of the thread count. Extra memory: one Gram per task.
//
// Backward: rows of dL/dV = W (V G + Y H + 1 g^T) in blocks of BLOCK_ROWS, groups of 4 rows
// held in registers against G and H padded to whole vectors; each block is staged in L1
// and copied out, with non-temporal stores when the gradient is too large for the cache.
//
// The loops are in affinity_stats_body.inc, compiled once per instruction-set path
// (cpu/isa.h); this file checks, allocates and dispatches (checks shared with CUDA in
// common/affinity_host.h).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/constant_pad_nd.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <vector>

#include "common/affinity.h"
#include "common/affinity_host.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

namespace chimera {
// Definitions shared by the host code below and the kernel body.
namespace affinity_cpu {

using affinity::Shape;

constexpr int VEC_BYTES = 32;              // SIMD vector of the micro-kernels (2 x 16 bytes on the baseline)
constexpr int64_t TASK_BINS = 16384;       // bins per forward task (fixed: thread count never changes a sum)
constexpr int64_t TILE_BYTES = 24 * 1024;  // staged z and w z of one forward tile: in L1
constexpr int64_t BLOCK_ROWS = 64;         // backward rows per block
constexpr int64_t STREAM_BYTES = int64_t(32) << 20;  // gradients this large bypass the cache

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Elements per vector and padded widths, for element type T.
template <typename T>
constexpr int64_t lanes() {
  return VEC_BYTES / sizeof(T);
}

// Forward tile: rows per tile for EP padded columns (z and w z in TILE_BYTES), a multiple of 8.
template <typename T>
inline int64_t tile_rows(int64_t EP) {
  const int64_t per_row = std::max<int64_t>(1, 2 * EP * static_cast<int64_t>(sizeof(T)));
  return std::clamp<int64_t>(TILE_BYTES / per_row / 8 * 8, 8, 128);
}

inline int64_t tasks_per_item(const Shape& s) { return std::max<int64_t>(1, (s.N + TASK_BINS - 1) / TASK_BINS); }

// Per-task float64 accumulators: the Gram (EP x EP, lower blocks), w v by label (C x DP),
// w by label (C), w v (DP, dense targets), sum w.
struct Layout {
  int64_t E, EP, DP, gram, cls, wcls, vsum, wsum, stride;
  template <typename T>
  static Layout of(const Shape& s) {
    Layout l;
    const int64_t L = lanes<T>();
    l.E = s.E();
    l.EP = round_up(l.E, L);
    l.DP = round_up(s.D, L);
    l.gram = 0;
    l.cls = l.gram + l.EP * l.EP;
    l.wcls = l.cls + s.C * l.DP;
    l.vsum = l.wcls + s.C;
    l.wsum = l.vsum + l.DP;
    l.stride = l.wsum + 1;
    return l;
  }
};

template <typename T>
struct Inputs {
  Shape s;
  const T* v;
  const T* y;             // dense target or null
  const int64_t* labels;  // index target or null
  const T* w;             // weights or null
  const T* v_end;         // one past the last element of v (vector loads stop before it)
};

template <typename T>
struct GradArgs {
  Inputs<T> in;
  const T* Gp;  // (B, D, DP): G, columns zero-padded
  const T* Hp;  // (B, C, DP): H (+ g folded in for index targets)
  const T* gp;  // (B, DP): g, dense targets only
  int64_t DP;
  T* out;
  bool stream;
};

inline void check_label(int64_t c, int64_t C, const char* op) {
  TORCH_CHECK(c >= 0 && c < C, op, ": target label ", c, " out of range [0, ", C, ")");
}

// Copy `count` elements to dst; with `stream`, the 16-byte-aligned part by non-temporal
// stores (no read-for-ownership, no cache pollution). Caller issues the fence.
template <typename T>
inline void copy_out(const T* src, int64_t count, T* dst, bool stream) {
#if defined(__SSE2__)
  if (stream) {
    char* d = reinterpret_cast<char*>(dst);
    const char* s = reinterpret_cast<const char*>(src);
    int64_t bytes = count * static_cast<int64_t>(sizeof(T));
    const int64_t head = std::min<int64_t>(bytes, (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15);
    std::memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    for (; bytes >= 16; d += 16, s += 16, bytes -= 16)
      _mm_stream_si128(reinterpret_cast<__m128i*>(d), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
    std::memcpy(d, s, bytes);
    return;
  }
#endif
  (void)stream;
  std::memcpy(dst, src, count * sizeof(T));
}

inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace affinity_cpu
}  // namespace chimera

#define CHIMERA_ISA_BODY "cpu/affinity_stats_body.inc"
#include "cpu/isa_clones.inc"

namespace chimera {
namespace {

using namespace affinity_cpu;

// Half inputs are computed in float32 (common/affinity_host.h).
at::Tensor in_compute_dtype(const at::Tensor& x) {
  return x.to(affinity::compute_dtype(x.scalar_type())).contiguous();
}

template <typename T>
Inputs<T> inputs_of(const Shape& s, const at::Tensor& V, const at::Tensor& Y, const at::Tensor& W) {
  const T* v = V.const_data_ptr<T>();
  return {s, v, s.index_target ? nullptr : Y.const_data_ptr<T>(), s.index_target ? Y.const_data_ptr<int64_t>() : nullptr,
          s.weighted ? W.const_data_ptr<T>() : nullptr, v + V.numel()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> affinity_stats_cpu(
    const at::Tensor& embedding, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t num_classes) {
  const Shape s = affinity::check_inputs("affinity_stats", embedding, target, weight, num_classes);
  auto out = affinity::allocate_stats(s, embedding);
  const at::Tensor V = in_compute_dtype(embedding);
  const at::Tensor Y = s.index_target ? target.contiguous() : in_compute_dtype(target);
  const at::Tensor W = s.weighted ? in_compute_dtype(*weight) : at::Tensor();
  auto& [vv, vy, yy, wsum, vsum] = out;
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "affinity_stats_cpu", [&] {
    CHIMERA_CPU_DISPATCH(affinity_body::stats<scalar_t>)(
        inputs_of<scalar_t>(s, V, Y, W), vv.mutable_data_ptr<double>(), vy.mutable_data_ptr<double>(),
        yy.mutable_data_ptr<double>(), wsum.mutable_data_ptr<double>(), vsum.mutable_data_ptr<double>());
  });
  return out;
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
                                       const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& grad_vsum) {
  const char* op = "affinity_stats_backward";
  const Shape s = affinity::check_backward(op, grad_vv, grad_vy, grad_vsum, embedding, target, weight);
  const at::Tensor V = in_compute_dtype(embedding);
  if (V.numel() == 0) return at::empty_like(embedding, at::MemoryFormat::Contiguous);
  const at::Tensor Y = s.index_target ? target.contiguous() : in_compute_dtype(target);
  const at::Tensor W = s.weighted ? in_compute_dtype(*weight) : at::Tensor();
  at::Tensor dV = at::empty_like(V, at::MemoryFormat::Contiguous);
  advise_huge_pages(dV.data_ptr(), dV.nbytes());
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "affinity_stats_backward_cpu", [&] {
    const int64_t DP = round_up(s.D, lanes<scalar_t>());
    const affinity::GradientOperands o = affinity::gradient_operands(s, grad_vv, grad_vy, grad_vsum, V.scalar_type());
    // Columns zero-padded to whole vectors, so the micro-kernel reads full vectors.
    const at::Tensor Gp = at::constant_pad_nd(o.G, {0, DP - s.D}).contiguous();
    const at::Tensor Hp = at::constant_pad_nd(o.H, {0, DP - s.D}).contiguous();
    const at::Tensor gp = s.index_target ? at::Tensor() : at::constant_pad_nd(o.g, {0, DP - s.D}).contiguous();
    const GradArgs<scalar_t> args{inputs_of<scalar_t>(s, V, Y, W), Gp.const_data_ptr<scalar_t>(),
                                  Hp.const_data_ptr<scalar_t>(), s.index_target ? nullptr : gp.const_data_ptr<scalar_t>(),
                                  DP, dV.mutable_data_ptr<scalar_t>(), dV.nbytes() >= static_cast<size_t>(STREAM_BYTES)};
    CHIMERA_CPU_DISPATCH(affinity_body::backward<scalar_t>)(args);
  });
  return dV.scalar_type() == embedding.scalar_type() ? dV : dV.to(embedding.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(chimera, CPU, m) {
  m.impl("affinity_stats", &affinity_stats_cpu);
  m.impl("affinity_stats_backward", &affinity_stats_backward_cpu);
}

}  // namespace chimera
