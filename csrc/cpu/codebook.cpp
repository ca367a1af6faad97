// CPU kernels of chimera::codebook_lookup and chimera::codebook_lookup_backward.
//
// Rows (bins x sources) are split over threads, K lies innermost and contiguous. A block
// of W rows (the vector width of the instruction-set path) is transposed into K vectors
// that the shared row helpers (common/codebook.h) turn into softmax weights in place, one
// row per lane. The backward recomputes the softmax from the logits; nothing of size
// rows x K is saved or allocated besides the logits gradient itself. The codebook
// gradient is summed per lane over blocks of 256 rows in the input precision, those
// block sums in float64 per chunk of rows (a size fixed by the shape), then over chunks
// in order: the same bits for any number of threads. The loops are in codebook_body.inc,
// compiled once per instruction-set path (cpu/isa.h).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/codebook.h"
#include "common/codebook_host.h"
#include "common/static_switch.h"
#include "cpu/huge_pages.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#define CHIMERA_ISA_BODY "cpu/codebook_body.inc"
#include "cpu/isa_clones.inc"

namespace chimera {
namespace {

using codebook::Shape;

at::Tensor codebook_lookup_cpu(const at::Tensor& logits, const at::Tensor& codebook, bool argmax, bool normalize) {
  const Shape s = codebook::check_lookup(logits, codebook, "codebook_lookup");
  const at::Tensor x = logits.contiguous();
  const at::Tensor c = codebook.contiguous();
  at::Tensor out = codebook::forward_output(s, codebook);
  if (s.rows == 0) return out;
  cpu::advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "codebook_lookup_cpu", [&] {
    using L = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "codebook_lookup_cpu", [&] {
      using A = scalar_t;
      CHIMERA_DIM_SWITCH(s.D, D, [&] {
        CHIMERA_CPU_DISPATCH(codebook_body::forward<L, A, D>)
        (s, x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize, out.mutable_data_ptr<A>());
      });
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
  if (s.rows == 0 || (!write_gx && !output_mask[1])) return {gx, gc};
  if (write_gx) cpu::advise_huge_pages(gx);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "codebook_lookup_backward_cpu", [&] {
    using L = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "codebook_lookup_backward_cpu", [&] {
      using A = scalar_t;
      L* gxp = write_gx ? gx.mutable_data_ptr<L>() : nullptr;
      A* gcp = output_mask[1] ? gc.mutable_data_ptr<A>() : nullptr;
      CHIMERA_DIM_SWITCH(s.D, D, [&] {
        CHIMERA_CPU_DISPATCH(codebook_body::backward<L, A, D>)
        (s, g.const_data_ptr<A>(), x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize, gxp, gcp);
      });
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
