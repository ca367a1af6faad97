#pragma once
// Host-side argument checks of chimera::overlap_add(_backward), shared by the CPU
// and CUDA kernels (needs ATen; the per-sample arithmetic is in overlap_add.h).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/core/ScalarType.h>

#include <ATen/ops/empty.h>

#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "common/overlap_add.h"

namespace chimera {
namespace ola {

struct Shape {
  int64_t batch = 1, n_frames = 0, n_fft = 0, hop = 0, start = 0, out_len = 0, full = 0;
};

inline void check_window(const at::Tensor& window, const at::Tensor& data, int64_t n_fft, int64_t hop,
                         const char* op) {
  TORCH_CHECK(window.dim() == 1, op, ": window must be 1-D (n_fft,), got shape ", window.sizes());
  TORCH_CHECK(window.size(0) == n_fft, op, ": window has ", window.size(0), " samples but the frames have n_fft=",
              n_fft);
  TORCH_CHECK(window.scalar_type() == data.scalar_type(), op, ": window dtype ", window.scalar_type(),
              " differs from the data dtype ", data.scalar_type());
  TORCH_CHECK(window.device() == data.device(), op, ": window is on ", window.device(), " but the data is on ",
              data.device());
  TORCH_CHECK(hop > 0 && hop <= n_fft, op, ": hop_length must be in [1, n_fft=", n_fft, "], got ", hop);
}

inline Shape forward_shape(const at::Tensor& frames, const at::Tensor& window, int64_t hop, bool center,
                           std::optional<int64_t> length) {
  const char* op = "overlap_add";
  TORCH_CHECK(frames.dim() >= 2, op, ": frames must be (..., n_frames, n_fft), got shape ", frames.sizes());
  TORCH_CHECK(at::isFloatingType(frames.scalar_type()), op, ": frames must be real floating point, got ",
              frames.scalar_type());
  Shape s;
  s.n_frames = frames.size(-2);
  s.n_fft = frames.size(-1);
  TORCH_CHECK(s.n_frames > 0 && s.n_fft > 0, op, ": need at least one frame of at least one sample, got shape ",
              frames.sizes());
  check_window(window, frames, s.n_fft, hop, op);
  TORCH_CHECK(!length.has_value() || *length >= 0, op, ": length must be >= 0 or None, got ", *length);
  s.hop = hop;
  s.batch = frames.numel() / (s.n_frames * s.n_fft);
  s.start = trim_start(s.n_fft, center);
  s.out_len = output_length(s.n_fft, hop, s.n_frames, center, length.has_value() ? *length : -1);
  s.full = full_length(s.n_fft, hop, s.n_frames);
  return s;
}

inline Shape backward_shape(const at::Tensor& grad, const at::Tensor& window, int64_t hop, bool center,
                            int64_t n_frames) {
  const char* op = "overlap_add_backward";
  TORCH_CHECK(grad.dim() >= 1, op, ": grad must be (..., length), got a scalar");
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), op, ": grad must be real floating point, got ",
              grad.scalar_type());
  TORCH_CHECK(n_frames > 0, op, ": n_frames must be positive, got ", n_frames);
  Shape s;
  s.n_fft = window.dim() == 1 ? window.size(0) : 0;
  check_window(window, grad, s.n_fft, hop, op);
  s.hop = hop;
  s.n_frames = n_frames;
  s.out_len = grad.size(-1);
  s.batch = s.out_len > 0 ? grad.numel() / s.out_len : 1;
  if (s.out_len == 0) {
    s.batch = 1;
    for (int64_t d = 0; d + 1 < grad.dim(); ++d) s.batch *= grad.size(d);
  }
  s.start = trim_start(s.n_fft, center);
  s.full = full_length(s.n_fft, hop, n_frames);
  return s;
}

// torch.istft's NOLA check: the envelope must not vanish where samples are kept.
// The window is read on the host (one small copy for CUDA tensors).
inline void check_nola(const at::Tensor& window, const Shape& s, const char* op) {
  const int64_t end = s.start + s.out_len < s.full ? s.start + s.out_len : s.full;
  if (end <= s.start) return;
  const at::Tensor w = window.to(at::kCPU).contiguous();
  double lowest = 0;
  int64_t where = -1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "overlap_add_nola", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    lowest = static_cast<double>(
        min_envelope<acc_t>(w.const_data_ptr<scalar_t>(), s.n_fft, s.hop, s.n_frames, s.start, end, &where));
  });
  TORCH_CHECK(!(std::abs(lowest) < kNolaTolerance), op, ": the window-sum-square envelope is ", lowest,
              " (below ", kNolaTolerance, ") at output sample ", where - s.start, ", so the signal cannot be recovered there: window",
              " and hop_length=", s.hop, " violate the NOLA condition (torch.istft rejects this too). Use center=True,",
              " a window that is non-zero at its ends, or a smaller hop_length.");
}

// Checked shape and the allocated output of overlap_add (..., out_len) and of its
// backward (..., n_frames, n_fft): the part of each kernel that is not device-specific.
inline std::pair<Shape, at::Tensor> forward_output(const at::Tensor& frames, const at::Tensor& window, int64_t hop,
                                                   bool center, std::optional<int64_t> length) {
  const Shape s = forward_shape(frames, window, hop, center, length);
  check_nola(window, s, "overlap_add");
  std::vector<int64_t> sizes(frames.sizes().begin(), frames.sizes().end() - 2);
  sizes.push_back(s.out_len);
  return {s, at::empty(sizes, frames.options())};
}

inline std::pair<Shape, at::Tensor> backward_output(const at::Tensor& grad, const at::Tensor& window, int64_t hop,
                                                    bool center, int64_t n_frames) {
  const Shape s = backward_shape(grad, window, hop, center, n_frames);
  check_nola(window, s, "overlap_add_backward");
  std::vector<int64_t> sizes(grad.sizes().begin(), grad.sizes().end() - 1);
  sizes.push_back(n_frames);
  sizes.push_back(s.n_fft);
  return {s, at::empty(sizes, grad.options())};
}

}  // namespace ola
}  // namespace chimera
