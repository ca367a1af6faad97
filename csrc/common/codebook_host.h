#pragma once
// Host-side argument checks and output allocation of chimera::codebook_lookup(_backward),
// shared by the CPU and CUDA kernels (needs ATen; the per-row arithmetic is in codebook.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <array>
#include <utility>
#include <vector>

namespace chimera {
namespace codebook {

struct Shape {
  int64_t rows, K, D;
  std::vector<int64_t> out_sizes;  // logits.shape[:-1] + codebook.shape[1:]
};

inline Shape check_lookup(const at::Tensor& logits, const at::Tensor& codebook, const char* name) {
  TORCH_CHECK(logits.dim() >= 1, name, ": logits must have a last dimension of size K, got a 0-d tensor");
  TORCH_CHECK(codebook.dim() == 1 || (codebook.dim() == 2 && codebook.size(1) == 2), name,
              ": codebook must be (K,) real or (K, 2) (a complex codebook viewed as real), got ", codebook.sizes());
  const int64_t K = logits.size(-1);
  TORCH_CHECK(K >= 1, name, ": the codebook dimension K of the logits is empty");
  TORCH_CHECK(codebook.size(0) == K, name, ": logits have K = ", K, " entries in their last dimension but the codebook has ",
              codebook.size(0));
  TORCH_CHECK(logits.device() == codebook.device(), name, ": logits on ", logits.device(), " but codebook on ",
              codebook.device());
  const auto ct = codebook.scalar_type(), lt = logits.scalar_type();
  TORCH_CHECK(ct == at::kFloat || ct == at::kDouble, name, ": codebook must be float32 or float64, got ", ct);
  TORCH_CHECK(lt == ct || (ct == at::kFloat && (lt == at::kHalf || lt == at::kBFloat16)), name, ": logits dtype ", lt,
              " does not match codebook dtype ", ct, " (float16/bfloat16 logits need a float32 codebook)");
  Shape s;
  s.K = K;
  s.D = codebook.dim() == 1 ? 1 : 2;
  s.rows = K ? logits.numel() / K : 0;
  s.out_sizes.assign(logits.sizes().begin(), logits.sizes().end() - 1);
  if (s.D == 2) s.out_sizes.push_back(2);
  return s;
}

inline void check_grad(const at::Tensor& grad, const Shape& s, const at::Tensor& codebook, const char* name) {
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(s.out_sizes), name, ": grad must have the output's shape ",
              at::IntArrayRef(s.out_sizes), ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == codebook.scalar_type(), name, ": grad dtype ", grad.scalar_type(),
              " differs from the codebook dtype ", codebook.scalar_type());
  TORCH_CHECK(grad.device() == codebook.device(), name, ": grad on ", grad.device(), " but codebook on ",
              codebook.device());
}

// The output of codebook_lookup: logits.shape[:-1] + codebook.shape[1:], the codebook's dtype.
inline at::Tensor forward_output(const Shape& s, const at::Tensor& codebook) {
  return at::empty(s.out_sizes, codebook.options().memory_format(at::MemoryFormat::Contiguous));
}

// The gradients codebook_lookup_backward returns, allocated: (0,) when not requested;
// argmax is piecewise constant, so its logits gradient is zero; the codebook gradient is
// accumulated into zeros.
inline std::pair<at::Tensor, at::Tensor> backward_outputs(const at::Tensor& logits, const at::Tensor& codebook,
                                                          bool argmax, std::array<bool, 2> output_mask) {
  at::Tensor gx = !output_mask[0] ? at::empty({0}, logits.options())
                  : argmax        ? at::zeros(logits.sizes(), logits.options())
                                  : at::empty(logits.sizes(), logits.options());
  return {gx, at::zeros(codebook.sizes(), codebook.options())};
}

}  // namespace codebook
}  // namespace chimera
