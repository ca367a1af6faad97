// CPU kernels of chimera::codebook_lookup and chimera::codebook_lookup_backward.
//
// Rows (bins x sources) are split over threads, K lies innermost and contiguous, so a
// row is read once from memory into a K-long buffer that the shared row helpers
// (common/codebook.h) turn into softmax weights in place. The backward recomputes the
// softmax from the logits; nothing of size rows x K is saved or allocated besides the
// logits gradient itself. The codebook gradient is summed per thread over blocks of 256
// rows in the input precision, those block sums in float64, then over threads. The loops
// are in codebook_body.inc, compiled once per instruction-set path (cpu/isa.h).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "common/codebook.h"
#include "common/codebook_check.h"
#include "cpu/isa.h"

#define CHIMERA_ISA_BODY "cpu/codebook_body.inc"
#include "cpu/isa_clones.inc"

namespace chimera {
namespace {

using codebook::Shape;

at::Tensor codebook_lookup_cpu(const at::Tensor& logits, const at::Tensor& codebook, bool argmax, bool normalize) {
  const Shape s = codebook::check_lookup(logits, codebook, "codebook_lookup");
  const at::Tensor x = logits.contiguous();
  const at::Tensor c = codebook.contiguous();
  at::Tensor out = at::empty(s.out_sizes, codebook.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "codebook_lookup_cpu", [&] {
    using L = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "codebook_lookup_cpu", [&] {
      using A = scalar_t;
      if (s.D == 1)
        CHIMERA_CPU_DISPATCH(codebook_body::forward<L, A, 1>)(s, x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize, out.mutable_data_ptr<A>());
      else
        CHIMERA_CPU_DISPATCH(codebook_body::forward<L, A, 2>)(s, x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize, out.mutable_data_ptr<A>());
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> codebook_lookup_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                                                const at::Tensor& codebook, bool argmax, bool normalize,
                                                                std::array<bool, 2> output_mask) {
  const Shape s = codebook::check_lookup(logits, codebook, "codebook_lookup_backward");
  codebook::check_grad(grad, s, codebook, "codebook_lookup_backward");
  const at::Tensor x = logits.contiguous();
  const at::Tensor c = codebook.contiguous();
  const at::Tensor g = grad.contiguous();
  auto [gx, gc] = codebook::backward_outputs(x, c, argmax, output_mask);
  const bool write_gx = output_mask[0] && !argmax;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "codebook_lookup_backward_cpu", [&] {
    using L = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "codebook_lookup_backward_cpu", [&] {
      using A = scalar_t;
      L* gxp = write_gx ? gx.mutable_data_ptr<L>() : nullptr;
      A* gcp = output_mask[1] ? gc.mutable_data_ptr<A>() : nullptr;
      if (s.D == 1)
        CHIMERA_CPU_DISPATCH(codebook_body::backward<L, A, 1>)(s, g.const_data_ptr<A>(), x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize,
                              gxp, gcp);
      else
        CHIMERA_CPU_DISPATCH(codebook_body::backward<L, A, 2>)(s, g.const_data_ptr<A>(), x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize,
                              gxp, gcp);
    });
  });
  return {gx, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(chimera, CPU, m) {
  m.impl("codebook_lookup", &codebook_lookup_cpu);
  m.impl("codebook_lookup_backward", &codebook_lookup_backward_cpu);
}

}  // namespace chimera
