// CUDA kernels of chimera::codebook_lookup and chimera::codebook_lookup_backward.
//
// One thread per row (bin x source). A block stages a tile of up to 256 rows of logits
// (R x K, contiguous in memory) into shared memory with coalesced loads, converted to the
// accumulation type; each thread then runs the shared row helpers (common/codebook.h) on
// its row in place, and the backward writes the logits gradient back from the tile,
// coalesced. The codebook sits in shared memory. Its gradient is reduced over each warp
// with shuffles, over the block in shared memory, then added to global memory once per
// block (atomicAdd). float16/bfloat16 logits accumulate in float.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/codebook.h"
#include "common/codebook_host.h"
#include "common/static_switch.h"

namespace chimera {
namespace {

using codebook::Shape;

constexpr int THREADS = 256;
constexpr int64_t SMEM_BUDGET = 48 * 1024;  // default dynamic shared memory limit

struct Launch {
  int64_t rows_per_block;  // = threads per block, a multiple of 32 (whole warps for the shuffles)
  size_t smem;
  int64_t blocks;
};

// Tile rows are padded to an odd length so that the threads of a warp, each on its own
// row, hit distinct shared-memory banks.
__host__ __device__ inline int64_t padded(int64_t K) { return K % 2 == 0 ? K + 1 : K; }

// extra_kd: further (K, D) arrays in shared memory (the backward's codebook gradient).
template <typename A>
Launch plan(const Shape& s, int extra_kd) {
  const int64_t cb_bytes = (1 + extra_kd) * s.K * s.D * static_cast<int64_t>(sizeof(A));
  const int64_t row_bytes = padded(s.K) * static_cast<int64_t>(sizeof(A));
  const int64_t fit = (SMEM_BUDGET - cb_bytes) / row_bytes;
  TORCH_CHECK(fit >= 32, "codebook_lookup (CUDA): K = ", s.K, " is too large for the shared-memory tile of 32 rows (at most ",
              SMEM_BUDGET / static_cast<int64_t>(sizeof(A)) / (32 + (1 + extra_kd) * s.D), " entries for this dtype)");
  const int64_t rows = std::min<int64_t>(THREADS, fit / 32 * 32);
  const int64_t tiles = (s.rows + rows - 1) / rows;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(tiles, sms * 2048 / rows));
  return {rows, static_cast<size_t>(cb_bytes + rows * row_bytes), blocks};
}

// Stage rows [r0, r0 + R) of logits into tile (R rows of stride Kp) as A, coalesced;
// rows past the end become 0. Tile indices fit in 32 bits (R * Kp * sizeof(A) <= 48 KiB).
template <typename L, typename A>
__device__ void load_tile(const L* __restrict__ x, int64_t total, int64_t r0, int R, int K, int Kp, A* tile) {
  const int64_t base = r0 * K;
  for (int i = threadIdx.x; i < R * K; i += blockDim.x)
    tile[(i / K) * Kp + i % K] = base + i < total ? static_cast<A>(x[base + i]) : A(0);
}

template <typename L, typename A, int D>
__global__ void forward_kernel(const L* __restrict__ x, const A* __restrict__ c, int64_t rows, int64_t K, int64_t R,
                               bool argmax, bool normalize, A* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  A* cb = reinterpret_cast<A*>(smem_raw);
  A* tile = cb + K * D;
  for (int64_t i = threadIdx.x; i < K * D; i += blockDim.x) cb[i] = c[i];
  const int64_t total = rows * K;
  const int Kp = static_cast<int>(padded(K));
  for (int64_t r0 = blockIdx.x * R; r0 < rows; r0 += gridDim.x * R) {
    __syncthreads();  // codebook staged / previous tile consumed
    load_tile(x, total, r0, static_cast<int>(R), static_cast<int>(K), Kp, tile);
    __syncthreads();
    const int64_t r = r0 + threadIdx.x;  // blockDim.x == R
    if (r < rows) {
      A* e = tile + threadIdx.x * Kp;
      A* o = out + r * D;
      A y[D];
      if (argmax) {
        const int64_t k = codebook::argmax_row(e, K);
        codebook::argmax_lookup<D>(cb + k * D, e[k] != e[k], normalize, y);
      } else {
        codebook::interpolate_row<D>(e, cb, K, normalize, y);
      }
      for (int d = 0; d < D; ++d) o[d] = y[d];
    }
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

template <typename L, typename A, int D, bool WANT_GC>
__global__ void backward_kernel(const A* __restrict__ g, const L* __restrict__ x, const A* __restrict__ c, int64_t rows,
                                int64_t K, int64_t R, bool argmax, bool normalize, L* __restrict__ gx,
                                A* __restrict__ gc) {
  extern __shared__ unsigned char smem_raw[];
  A* cb = reinterpret_cast<A*>(smem_raw);
  A* tile = cb + K * D;
  const int Kp = static_cast<int>(padded(K));
  A* acc = tile + R * Kp;  // (K, D) codebook gradient of this block
  for (int64_t i = threadIdx.x; i < K * D; i += blockDim.x) {
    cb[i] = c[i];
    acc[i] = A(0);
  }
  const int64_t total = rows * K;
  for (int64_t r0 = blockIdx.x * R; r0 < rows; r0 += gridDim.x * R) {
    __syncthreads();
    load_tile(x, total, r0, static_cast<int>(R), static_cast<int>(K), Kp, tile);
    __syncthreads();
    const int64_t r = r0 + threadIdx.x;
    // Threads past the last row take a zero gradient (their tile row is 0), so every lane
    // joins the warp sums.
    const bool valid = r < rows;
    A gr[D];
    for (int d = 0; d < D; ++d) gr[d] = valid ? g[r * D + d] : A(0);
    if (argmax) {
      if (WANT_GC && valid) {
        const A* e = tile + threadIdx.x * Kp;
        const int64_t k = codebook::argmax_row(e, K);
        A gy[D];
        codebook::argmax_backward_row<D>(cb + k * D, gr, e[k] != e[k], normalize, gy);
        for (int d = 0; d < D; ++d) atomicAdd(acc + k * D + d, gy[d]);
      }
      continue;
    }
    A* e = tile + threadIdx.x * Kp;
    A gy[D];
    bool infinite;
    const A inv = codebook::interpolate_backward_weights<D>(e, cb, K, gr, normalize, gy, infinite);
    if (!valid)  // rows past the end add nothing, whatever the codebook holds (NaN through |y|)
      for (int d = 0; d < D; ++d) gy[d] = A(0);
    if (WANT_GC) {  // every lane takes part, with 0 for rows past the end
      for (int64_t k = 0; k < K; ++k) {
        const A p = e[k] * inv;
        for (int d = 0; d < D; ++d) {
          const A v = warp_sum(p * gy[d]);
          if ((threadIdx.x & 31) == 0) atomicAdd(acc + k * D + d, v);
        }
      }
    }
    if (gx != nullptr) codebook::interpolate_backward_logits<D>(e, inv, infinite, cb, K, gy);
    __syncthreads();
    if (gx != nullptr) {
      const int64_t base = r0 * K;
      for (int i = threadIdx.x; i < R * K && base + i < total; i += blockDim.x)
        gx[base + i] = static_cast<L>(tile[(i / K) * Kp + i % K]);
    }
  }
  if (WANT_GC) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < K * D; i += blockDim.x) atomicAdd(gc + i, acc[i]);
  }
}

at::Tensor codebook_lookup_cuda(const at::Tensor& logits, const at::Tensor& codebook, bool argmax, bool normalize) {
  const Shape s = codebook::check_lookup(logits, codebook, "codebook_lookup");
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor c = codebook.contiguous();
  at::Tensor out = codebook::forward_output(s, codebook);
  if (s.rows == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "codebook_lookup_cuda", [&] {
    using L = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "codebook_lookup_cuda", [&] {
      using A = scalar_t;
      const Launch p = plan<A>(s, 0);
      CHIMERA_DIM_SWITCH(s.D, D, [&] {
        forward_kernel<L, A, D><<<p.blocks, p.rows_per_block, p.smem, stream>>>(
            x.const_data_ptr<L>(), c.const_data_ptr<A>(), s.rows, s.K, p.rows_per_block, argmax, normalize,
            out.mutable_data_ptr<A>());
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

template <typename L, typename A, int D>
void launch_backward(const Shape& s, const at::Tensor& g, const at::Tensor& x, const at::Tensor& c, bool argmax,
                     bool normalize, L* gx, A* gc) {
  const Launch p = plan<A>(s, 1);  // + the block's codebook gradient
  const auto stream = at::cuda::getCurrentCUDAStream();
  CHIMERA_BOOL_SWITCH(gc != nullptr, WANT_GC, [&] {
    backward_kernel<L, A, D, WANT_GC><<<p.blocks, p.rows_per_block, p.smem, stream>>>(
        g.const_data_ptr<A>(), x.const_data_ptr<L>(), c.const_data_ptr<A>(), s.rows, s.K, p.rows_per_block, argmax,
        normalize, gx, gc);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> codebook_lookup_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                                                 const at::Tensor& codebook, bool argmax,
                                                                 bool normalize, std::array<bool, 2> output_mask) {
  const Shape s = codebook::check_lookup(logits, codebook, "codebook_lookup_backward");
  codebook::check_grad(grad, s, codebook, "codebook_lookup_backward");
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor c = codebook.contiguous();
  const at::Tensor g = grad.contiguous();
  auto [gx, gc] = codebook::backward_outputs(x, c, argmax, output_mask);
  const bool write_gx = output_mask[0] && !argmax;
  if (s.rows == 0 || (!write_gx && !output_mask[1])) return {gx, gc};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "codebook_lookup_backward_cuda", [&] {
    using L = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "codebook_lookup_backward_cuda", [&] {
      using A = scalar_t;
      L* gxp = write_gx ? gx.mutable_data_ptr<L>() : nullptr;
      A* gcp = output_mask[1] ? gc.mutable_data_ptr<A>() : nullptr;
      CHIMERA_DIM_SWITCH(s.D, D, [&] { launch_backward<L, A, D>(s, g, x, c, argmax, normalize, gxp, gcp); });
    });
  });
  return {gx, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(chimera, CUDA, m) {
  m.impl("codebook_lookup", &codebook_lookup_cuda);
  m.impl("codebook_lookup_backward", &codebook_lookup_backward_cuda);
}

}  // namespace chimera
