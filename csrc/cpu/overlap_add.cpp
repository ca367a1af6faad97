// CPU kernels of chimera::overlap_add and chimera::overlap_add_backward.
//
// Both walk the full signal one hop-long segment at a time. Positions s*hop + r
// (0 <= r < hop) of segment s are covered by frames t = s, s-1, ... at offsets
// k = (s - t) * hop + r, so for each covering frame the segment reads (forward) or
// writes (backward) one contiguous run of that frame: a gather with contiguous,
// vectorisable inner loops, and every output (forward: sample, backward: frame
// element) is owned by exactly one segment, so tasks never race. The envelope of a
// segment is summed from the squared window once and shared by the whole batch.
// Extra memory: three hop-long buffers per task. The loops are in overlap_add_body.inc,
// compiled once per instruction-set path (cpu/isa.h).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/overlap_add.h"
#include "common/overlap_add_host.h"
#include "cpu/huge_pages.h"
#include "cpu/isa.h"

#define CHIMERA_ISA_BODY "cpu/overlap_add_body.inc"
#include "cpu/isa_clones.inc"

namespace chimera {
namespace {

at::Tensor overlap_add_cpu(const at::Tensor& frames, const at::Tensor& window, int64_t hop_length, bool center,
                           std::optional<int64_t> length) {
  const auto [s, out] = ola::forward_output(frames, window, hop_length, center, length);
  if (out.numel() == 0) return out;
  cpu::advise_huge_pages(out);
  const at::Tensor f = frames.contiguous(), w = window.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "overlap_add_cpu", [&] {
    CHIMERA_CPU_DISPATCH(ola_body::forward<scalar_t>)(s, f.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                          out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor overlap_add_backward_cpu(const at::Tensor& grad, const at::Tensor& window, int64_t hop_length,
                                    bool center, int64_t n_frames) {
  const auto [s, dframes] = ola::backward_output(grad, window, hop_length, center, n_frames);
  if (dframes.numel() == 0) return dframes;
  cpu::advise_huge_pages(dframes);
  const at::Tensor g = grad.contiguous(), w = window.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "overlap_add_backward_cpu", [&] {
    CHIMERA_CPU_DISPATCH(ola_body::backward<scalar_t>)(s, g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                           dframes.mutable_data_ptr<scalar_t>());
  });
  return dframes;
}

}  // namespace

TORCH_LIBRARY_IMPL(chimera, CPU, m) {
  m.impl("overlap_add", &overlap_add_cpu);
  m.impl("overlap_add_backward", &overlap_add_backward_cpu);
}

}  // namespace chimera
