#pragma once
// Host side of chimera::affinity_stats(_backward), shared by the CPU and CUDA kernels
// (needs ATen; the per-bin arithmetic is in affinity.h): argument checks, the dtype
// policy, the output allocation and the gradient operands of the backward.
//
// dtype policy (the same in chimera.ops.reference): the embedding is float32, float64,
// float16 or bfloat16; a dense target and the weights have the embedding's dtype; float16
// and bfloat16 are computed in float32. The statistics are float64, the gradient has the
// embedding's dtype.
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace chimera {
namespace affinity {

struct Shape {
  int64_t B, N, D, C;
  bool index_target, weighted;
  int64_t E() const { return index_target ? D : D + C; }  // columns of the Gram of Z = [V | Y]
};

inline bool accepted_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The dtype the kernels compute in: float16/bfloat16 in float32.
inline at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16 ? at::kFloat : t; }

inline Shape check_inputs(const char* op, const at::Tensor& emb, const at::Tensor& target,
                          const std::optional<at::Tensor>& weight, int64_t num_classes) {
  TORCH_CHECK(emb.dim() == 3, op, ": embedding must be (B, N, D), got ", emb.sizes());
  TORCH_CHECK(accepted_dtype(emb.scalar_type()), op, ": embedding must be float32, float64, float16 or bfloat16, got ",
              emb.scalar_type());
  TORCH_CHECK(target.device() == emb.device(), op, ": target is on ", target.device(), " but the embedding is on ",
              emb.device());
  // Integer labels of another width would otherwise be taken for a dense target of the wrong rank.
  TORCH_CHECK(target.scalar_type() == at::kLong || !at::isIntegralType(target.scalar_type(), /*includeBool=*/true), op,
              ": an index target must be int64 (torch.long) class indices, got ", target.scalar_type());
  Shape s{emb.size(0), emb.size(1), emb.size(2), 0, target.scalar_type() == at::kLong, weight.has_value()};
  if (s.index_target) {
    TORCH_CHECK(target.dim() == 2 && target.size(0) == s.B && target.size(1) == s.N, op,
                ": index target must be (B, N) = (", s.B, ", ", s.N, "), got ", target.sizes());
    TORCH_CHECK(num_classes > 0, op, ": num_classes must be positive for an index target, got ", num_classes);
    s.C = num_classes;
  } else {
    TORCH_CHECK(target.dim() == 3 && target.size(0) == s.B && target.size(1) == s.N, op,
                ": dense target must be (B, N, C), got ", target.sizes());
    TORCH_CHECK(target.scalar_type() == emb.scalar_type(), op, ": dense target dtype ", target.scalar_type(),
                " differs from embedding dtype ", emb.scalar_type());
    s.C = target.size(2);
    TORCH_CHECK(num_classes == s.C || num_classes <= 0, op, ": num_classes=", num_classes, " but the target has ",
                s.C, " classes");
  }
  if (s.weighted) {
    TORCH_CHECK(weight->device() == emb.device(), op, ": weight is on ", weight->device(),
                " but the embedding is on ", emb.device());
    TORCH_CHECK(weight->dim() == 2 && weight->size(0) == s.B && weight->size(1) == s.N, op,
                ": weight must be (B, N), got ", weight->sizes());
    TORCH_CHECK(weight->scalar_type() == emb.scalar_type(), op, ": weight dtype ", weight->scalar_type(),
                " differs from embedding dtype ", emb.scalar_type());
  }
  return s;
}

// (V^T W V, V^T W Y, Y^T W Y, sum w, V^T w): (B, D, D), (B, D, C), (B, C, C), (B,), (B, D), float64.
// Y^T W Y starts at zero: for an index target the kernels write its diagonal only.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_stats(const Shape& s,
                                                                                         const at::Tensor& emb) {
  const auto opts = emb.options().dtype(at::kDouble);
  return {at::empty({s.B, s.D, s.D}, opts), at::empty({s.B, s.D, s.C}, opts), at::zeros({s.B, s.C, s.C}, opts),
          at::empty({s.B}, opts), at::empty({s.B, s.D}, opts)};
}

inline Shape check_backward(const char* op, const at::Tensor& grad_vv, const at::Tensor& grad_vy,
                            const std::optional<at::Tensor>& grad_vsum, const at::Tensor& emb, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(grad_vy.dim() == 3, op, ": grad_vy must be (B, D, C), got ", grad_vy.sizes());
  const bool index_target = target.scalar_type() == at::kLong;
  const Shape s = check_inputs(op, emb, target, weight, index_target ? grad_vy.size(2) : -1);
  TORCH_CHECK(grad_vv.dim() == 3 && grad_vv.size(0) == s.B && grad_vv.size(1) == s.D && grad_vv.size(2) == s.D, op,
              ": grad_vv must be (B, D, D) = (", s.B, ", ", s.D, ", ", s.D, "), got ", grad_vv.sizes());
  TORCH_CHECK(grad_vy.size(0) == s.B && grad_vy.size(1) == s.D && grad_vy.size(2) == s.C, op,
              ": grad_vy must be (B, D, C) = (", s.B, ", ", s.D, ", ", s.C, "), got ", grad_vy.sizes());
  TORCH_CHECK(!grad_vsum.has_value() || (grad_vsum->dim() == 2 && grad_vsum->size(0) == s.B && grad_vsum->size(1) == s.D),
              op, ": grad_vsum must be (B, D) = (", s.B, ", ", s.D, "), got ",
              grad_vsum.has_value() ? grad_vsum->sizes() : at::IntArrayRef{});
  bool same_device = grad_vv.device() == emb.device() && grad_vy.device() == emb.device();
  if (grad_vsum.has_value()) same_device = same_device && grad_vsum->device() == emb.device();
  TORCH_CHECK(same_device, op, ": the gradients must be on the embedding's device ", emb.device());
  return s;
}

// dL/dV = W (V G + Y H + 1 g^T), row by row, with G = g_vv + g_vv^T (B, D, D), H = g_vy^T
// (B, C, D) and g = g_vsum (B, D), in the compute dtype. For an index target the row of Y
// is one-hot, so g is folded into every row of H (returned g is undefined); for a dense
// target g is returned (zeros without grad_vsum).
struct GradientOperands {
  at::Tensor G, H, g;
};

inline GradientOperands gradient_operands(const Shape& s, const at::Tensor& grad_vv, const at::Tensor& grad_vy,
                                          const std::optional<at::Tensor>& grad_vsum, at::ScalarType dtype) {
  GradientOperands o;
  o.G = at::add(grad_vv, grad_vv.transpose(1, 2)).to(dtype).contiguous();
  at::Tensor H = grad_vy.transpose(1, 2).to(at::kDouble);
  if (s.index_target) {
    if (grad_vsum.has_value()) H = at::add(H, grad_vsum->to(at::kDouble).unsqueeze(1));
  } else {
    o.g = grad_vsum.has_value() ? grad_vsum->to(dtype).contiguous() : at::zeros({s.B, s.D}, grad_vv.options().dtype(dtype));
  }
  o.H = H.to(dtype).contiguous();
  return o;
}

}  // namespace affinity
}  // namespace chimera
