// CUDA kernels of chimera::overlap_add and chimera::overlap_add_backward.
//
// Forward: one thread per output sample gathers the <= ceil(n_fft / hop) frames that
// cover it (ola::overlap_add_sample) and divides by the envelope summed on the fly;
// neighbouring threads read neighbouring frame samples, so loads coalesce.
// Backward: one thread per frame element (ola::frame_grad). No atomics, no
// temporaries; the window is read through the read-only cache.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "common/overlap_add.h"
#include "common/overlap_add_host.h"

namespace chimera {
namespace {

using ola::Shape;

constexpr int THREADS = 256;

template <typename scalar_t>
__global__ void overlap_add_kernel(const scalar_t* __restrict__ frames, const scalar_t* __restrict__ window,
                                   scalar_t* __restrict__ out, Shape s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.batch * s.out_len) return;
  const int64_t b = idx / s.out_len;
  const int64_t p = idx - b * s.out_len + s.start;
  acc_t v = 0;
  if (p < s.full)  // beyond: zero padding up to `length`, like torch.istft
    v = ola::overlap_add_sample<acc_t>(frames + b * s.n_frames * s.n_fft, window, p, s.n_fft, s.hop, s.n_frames);
  out[idx] = static_cast<scalar_t>(v);
}

template <typename scalar_t>
__global__ void overlap_add_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ window,
                                            scalar_t* __restrict__ dframes, Shape s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_item = s.n_frames * s.n_fft;
  if (idx >= s.batch * per_item) return;
  const int64_t b = idx / per_item;
  const int64_t e = idx - b * per_item;
  const int64_t t = e / s.n_fft;
  const int64_t k = e - t * s.n_fft;
  dframes[idx] = static_cast<scalar_t>(
      ola::frame_grad<acc_t>(grad + b * s.out_len, window, t, k, s.n_fft, s.hop, s.n_frames, s.start, s.out_len));
}

unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + THREADS - 1) / THREADS); }

at::Tensor overlap_add_cuda(const at::Tensor& frames, const at::Tensor& window, int64_t hop_length, bool center,
                            std::optional<int64_t> length) {
  const auto [s, out] = ola::forward_output(frames, window, hop_length, center, length);
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(frames.device());
  const at::Tensor f = frames.contiguous(), w = window.contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "overlap_add_cuda", [&] {
    overlap_add_kernel<scalar_t><<<blocks_for(out.numel()), THREADS, 0, stream>>>(
        f.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor overlap_add_backward_cuda(const at::Tensor& grad, const at::Tensor& window, int64_t hop_length,
                                     bool center, int64_t n_frames) {
  const auto [s, dframes] = ola::backward_output(grad, window, hop_length, center, n_frames);
  if (dframes.numel() == 0) return dframes;
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous(), w = window.contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "overlap_add_backward_cuda", [&] {
    overlap_add_backward_kernel<scalar_t><<<blocks_for(dframes.numel()), THREADS, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dframes.mutable_data_ptr<scalar_t>(), s);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dframes;
}

}  // namespace

TORCH_LIBRARY_IMPL(chimera, CUDA, m) {
  m.impl("overlap_add", &overlap_add_cuda);
  m.impl("overlap_add_backward", &overlap_add_backward_cuda);
}

}  // namespace chimera
