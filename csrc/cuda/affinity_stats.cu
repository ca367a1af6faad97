// CUDA kernels of chimera::affinity_stats and chimera::affinity_stats_backward.
// Same semantics as csrc/cpu/affinity_stats.cpp: the checks, dtype policy, allocation and
// gradient operands come from csrc/common/affinity_host.h, the per-pair and per-row
// arithmetic from csrc/common/affinity.h. Inputs float32/float64/float16/bfloat16;
// float16/bfloat16 are computed in float32, the statistics are float64.
//
// Forward (stats_kernel): block (chunk, item) walks its chunk of bins one tile at a
// time. A tile is staged feature-major in shared memory (Z = [V | Y] for a dense target,
// V plus the labels for an index target; Z and W Z), then each thread dots the rows of the
// statistics it owns over the tile, in the compute type, and adds that to a float64
// register. The statistics ("items") of one item are: the packed lower triangle of the
// Gram Z^T W Z, then for an index target V^T W Y and diag(Y^T W Y) as masked dots
// (label == c) -- no shared atomics, no one-hot -- then V^T w and last sum(w).
// Each block writes its partial sums; reduce_kernel adds the chunks in a fixed order and
// spreads them into the outputs, so results are bitwise reproducible (no float atomics).
// Extra memory: B * chunks * items doubles, chunks bounded by the SM count, not by N.
//
// Backward (grad_kernel): block (rows, item) stages G = g_vv + g_vv^T, H = g_vy^T and g =
// g_vsum of its item (g folded into H for an index target) and a tile of rows of V (and Y)
// in shared memory; one thread per bin row calls affinity::gradient_row_* into a shared dV
// tile, which is written back coalesced.
//
// Labels outside [0, C) raise an error after the kernel (a device flag is read back,
// which synchronises, as the CPU kernel and the reference also check).
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/affinity.h"
#include "common/affinity_host.h"

namespace chimera {
namespace {

constexpr int kThreads = 256;        // forward block size
constexpr int kItemsPerThread = 4;   // statistics one thread owns per block (registers)
constexpr int kMaxTile = 64;         // bins per shared-memory tile
constexpr int kGradRows = 128;       // backward: bin rows per block (one thread each)
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr int64_t kMaxGridY = 65535;  // gridDim.y limit: larger batches take several launches

enum ItemKind : int { kPair = 0, kVY = 1, kYY = 2, kVSum = 3, kWSum = 4, kNone = 5 };

using affinity::Shape;

// What only the CUDA kernels need beyond the shared checks (common/affinity_host.h).
void check_cuda(const char* op, const at::Tensor& emb) {
  TORCH_CHECK(emb.is_cuda(), op, ": embedding must be a CUDA tensor");
}

// Dynamic shared memory beyond 48 KiB must be requested per kernel; fail clearly when
// even the opt-in maximum is too small (very large D + C).
template <typename Kernel>
void reserve_smem(Kernel kernel, size_t bytes, const char* op, int64_t D, int64_t C) {
  if (bytes <= kDefaultSmem) return;
  const size_t limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(bytes <= limit, op, " (CUDA): D=", D, " and C=", C, " need ", bytes,
              " bytes of shared memory per block, the device allows ", limit);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Which statistic item q is, and its (i, j) operands.
__device__ __forceinline__ int item_kind(int64_t q, int64_t P, int64_t D, int64_t C, int64_t Q, int& i,
                                         int& j) {
  if (q >= Q) return kNone;
  if (q < P) {
    int64_t a, b;
    affinity::tri_unpack(q, a, b);
    i = static_cast<int>(a);
    j = static_cast<int>(b);
    return kPair;
  }
  if (q == Q - 1) return kWSum;
  if (q >= Q - 1 - D) {
    j = static_cast<int>(q - (Q - 1 - D));  // feature
    return kVSum;
  }
  q -= P;  // only index targets get here
  if (q < C * D) {
    i = static_cast<int>(q / D);  // class
    j = static_cast<int>(q % D);  // feature
    return kVY;
  }
  i = static_cast<int>(q - C * D);
  return kYY;
}

template <typename scalar_t, typename acc_t>
__global__ void stats_kernel(const scalar_t* __restrict__ V, const scalar_t* __restrict__ Yd,
                             const int64_t* __restrict__ labels, const scalar_t* __restrict__ W,
                             int64_t N, int D, int C, int E, int64_t P, int64_t Q, int64_t chunk, int tile,
                             int64_t b0, double* __restrict__ partial, int* __restrict__ bad_label) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int ld = tile + 1;  // odd row stride: rows i != j of one column hit different banks
  acc_t* zt = reinterpret_cast<acc_t*>(smem);  // E rows x tile bins: z
  acc_t* wzt = zt + E * ld;                     // E rows x tile bins: w z (2 loads per FMA, not 3)
  acc_t* wt = wzt + E * ld;                     // weights of the tile
  int* lab = reinterpret_cast<int*>(wt + ld);   // labels of the tile (index target)

  const int64_t b = b0 + blockIdx.y;  // launches of at most kMaxGridY items, from item b0
  const int64_t n0 = blockIdx.x * chunk, n1 = min(N, n0 + chunk);
  const bool index_target = labels != nullptr;

  int kind[kItemsPerThread], ii[kItemsPerThread], jj[kItemsPerThread];
  double acc[kItemsPerThread];
#pragma unroll
  for (int k = 0; k < kItemsPerThread; ++k) {
    const int64_t q = (static_cast<int64_t>(blockIdx.z) * kItemsPerThread + k) * blockDim.x + threadIdx.x;
    ii[k] = jj[k] = 0;
    kind[k] = item_kind(q, P, D, C, Q, ii[k], jj[k]);
    acc[k] = 0.0;
  }

  for (int64_t t0 = n0; t0 < n1; t0 += tile) {
    const int nt = static_cast<int>(min(static_cast<int64_t>(tile), n1 - t0));
    // Stage the tile: rows of V (and Y) are contiguous, so these loads are coalesced.
    // Bins past the end are zero (weight 0), so every dot may run over the whole tile.
    const scalar_t* v = V + (b * N + t0) * D;
    for (int n = threadIdx.x; n < tile; n += blockDim.x) {
      const int64_t g = b * N + t0 + n;
      wt[n] = n < nt ? (W ? static_cast<acc_t>(W[g]) : acc_t(1)) : acc_t(0);
      if (index_target) {
        int c = -1;
        if (n < nt) {
          const int64_t label = labels[g];
          if (label >= 0 && label < C) c = static_cast<int>(label);
          else *bad_label = 1;  // excluded here, reported by the host
        }
        lab[n] = c;
      }
    }
    __syncthreads();  // wt is read below
    for (int e = threadIdx.x; e < tile * D; e += blockDim.x) {
      const int n = e / D, d = e % D;
      const acc_t z = n < nt ? static_cast<acc_t>(v[e]) : acc_t(0);
      zt[d * ld + n] = z;
      wzt[d * ld + n] = wt[n] * z;
    }
    if (!index_target) {
      const scalar_t* y = Yd + (b * N + t0) * C;
      for (int e = threadIdx.x; e < tile * C; e += blockDim.x) {
        const int n = e / C, c = e % C;
        const acc_t z = n < nt ? static_cast<acc_t>(y[e]) : acc_t(0);
        zt[(D + c) * ld + n] = z;
        wzt[(D + c) * ld + n] = wt[n] * z;
      }
    }
    __syncthreads();

#pragma unroll
    for (int k = 0; k < kItemsPerThread; ++k) {
      acc_t s = 0;
      const acc_t* zi = zt + ii[k] * ld;
      const acc_t* wzj = wzt + jj[k] * ld;
      switch (kind[k]) {
        case kPair:
          for (int n = 0; n < tile; ++n) s += zi[n] * wzj[n];
          break;
        case kVY:  // V^T W Y[d][c] = sum over bins labelled c of w v_d
          for (int n = 0; n < tile; ++n) s += lab[n] == ii[k] ? wzj[n] : acc_t(0);
          break;
        case kYY:
          for (int n = 0; n < tile; ++n) s += lab[n] == ii[k] ? wt[n] : acc_t(0);
          break;
        case kVSum:
          for (int n = 0; n < tile; ++n) s += wzj[n];
          break;
        case kWSum:
          for (int n = 0; n < tile; ++n) s += wt[n];
          break;
        default:
          break;
      }
      acc[k] += static_cast<double>(s);  // tiles add up in float64, as on the CPU
    }
    __syncthreads();
  }

  double* out = partial + (b * gridDim.x + blockIdx.x) * Q;
#pragma unroll
  for (int k = 0; k < kItemsPerThread; ++k) {
    const int64_t q = (static_cast<int64_t>(blockIdx.z) * kItemsPerThread + k) * blockDim.x + threadIdx.x;
    if (q < Q) out[q] = acc[k];
  }
}

// One block per item: add the chunks of each statistic in chunk order and store it.
__global__ void reduce_kernel(const double* __restrict__ partial, int64_t chunks, int64_t Q, int64_t P,
                              int64_t D, int64_t C, bool index_target, double* __restrict__ vv,
                              double* __restrict__ vy, double* __restrict__ yy, double* __restrict__ wsum,
                              double* __restrict__ vsum) {
  const int64_t b = blockIdx.x;
  const double* part = partial + b * chunks * Q;
  double* ovv = vv + b * D * D;
  double* ovy = vy + b * D * C;
  double* oyy = yy + b * C * C;
  for (int64_t q = threadIdx.x; q < Q; q += blockDim.x) {
    double s = 0;
    for (int64_t k = 0; k < chunks; ++k) s += part[k * Q + q];
    if (q < P) {
      int64_t i, j;
      affinity::tri_unpack(q, i, j);
      affinity::spread_pair(i, j, s, D, index_target ? 0 : C, ovv, ovy, oyy);
    } else if (q == Q - 1) {
      wsum[b] = s;
    } else if (q >= Q - 1 - D) {
      vsum[b * D + q - (Q - 1 - D)] = s;
    } else if (q - P < C * D) {  // index target: V^T W Y, stored (d, c)
      const int64_t c = (q - P) / D, d = (q - P) % D;
      ovy[d * C + c] = s;
    } else {                     // index target: Y^T W Y is diagonal (yy was zeroed)
      const int64_t c = q - P - C * D;
      oyy[c * C + c] = s;
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void grad_kernel(const scalar_t* __restrict__ V, const scalar_t* __restrict__ Yd,
                            const int64_t* __restrict__ labels, const scalar_t* __restrict__ W,
                            const acc_t* __restrict__ G, const acc_t* __restrict__ H, const acc_t* __restrict__ g,
                            scalar_t* __restrict__ dV, int64_t N, int D, int C, int rows, int64_t b0,
                            int* __restrict__ bad_label) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int ld = D | 1;  // odd row stride: one row per thread without bank conflicts
  acc_t* sG = reinterpret_cast<acc_t*>(smem);  // D x D
  acc_t* sH = sG + D * D;                      // C x D
  acc_t* sv = sH + C * D;                      // rows x ld: V
  acc_t* so = sv + rows * ld;                  // rows x ld: dV
  acc_t* sy = so + rows * ld;                  // rows x C (dense target)
  acc_t* sg = sy + rows * C;                   // D: g (dense target)

  const int64_t b = b0 + blockIdx.y;  // launches of at most kMaxGridY items, from item b0
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows;
  const int nr = static_cast<int>(min(static_cast<int64_t>(rows), N - r0));
  const bool index_target = labels != nullptr;  // nr > 0 here: the labels pointer is not that of an empty tensor

  for (int e = threadIdx.x; e < D * D; e += blockDim.x) sG[e] = G[b * D * D + e];
  if (!index_target)
    for (int e = threadIdx.x; e < D; e += blockDim.x) sg[e] = g[b * D + e];
  for (int e = threadIdx.x; e < C * D; e += blockDim.x) sH[e] = H[b * C * D + e];
  const scalar_t* v = V + (b * N + r0) * D;
  for (int e = threadIdx.x; e < nr * D; e += blockDim.x) sv[(e / D) * ld + e % D] = static_cast<acc_t>(v[e]);
  if (!index_target) {
    const scalar_t* y = Yd + (b * N + r0) * C;
    for (int e = threadIdx.x; e < nr * C; e += blockDim.x) sy[e] = static_cast<acc_t>(y[e]);
  }
  __syncthreads();

  for (int r = threadIdx.x; r < nr; r += blockDim.x) {
    const int64_t g = b * N + r0 + r;
    const acc_t w = W ? static_cast<acc_t>(W[g]) : acc_t(1);
    const acc_t* row = sv + r * ld;
    acc_t* out = so + r * ld;
    if (index_target) {
      int64_t c = labels[g];
      if (c < 0 || c >= C) {
        *bad_label = 1;  // reported by the host; clamp so the read stays in bounds
        c = c < 0 ? 0 : C - 1;
      }
      affinity::gradient_row_index(row, c, w, sG, sH, D, D, out);
    } else {
      affinity::gradient_row_dense(row, sy + r * C, w, sG, sH, sg, D, C, D, out);
    }
  }
  __syncthreads();

  scalar_t* o = dV + (b * N + r0) * D;
  for (int e = threadIdx.x; e < nr * D; e += blockDim.x) o[e] = static_cast<scalar_t>(so[(e / D) * ld + e % D]);
}

void check_labels(const at::Tensor& flag, const char* op, int64_t C) {
  TORCH_CHECK(flag.item<int>() == 0, op, ": target label out of range [0, ", C, ")");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> affinity_stats_cuda(
    const at::Tensor& embedding, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t num_classes) {
  const char* op = "affinity_stats";
  const Shape s = affinity::check_inputs(op, embedding, target, weight, num_classes);
  check_cuda(op, embedding);
  const c10::cuda::CUDAGuard guard(embedding.device());
  auto out = affinity::allocate_stats(s, embedding);
  auto& [vv, vy, yy, wsum, vsum] = out;
  if (s.B == 0) return out;

  const at::Tensor V = embedding.contiguous();
  const at::Tensor Y = target.contiguous();
  const at::Tensor W = s.weighted ? weight->contiguous() : at::Tensor();
  const int64_t E = s.E();
  const int64_t P = affinity::tri_size(E);
  const int64_t Q = P + (s.index_target ? s.C * s.D + s.C : 0) + s.D + 1;
  TORCH_CHECK(E < (1 << 15), op, " (CUDA): D + C = ", E, " is too large");

  // Enough blocks to fill the device a few times over, each with at least 4 tiles.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t tiles = (s.N + kMaxTile - 1) / kMaxTile;
  const int64_t chunks = std::max<int64_t>(1, std::min((4 * sms + s.B - 1) / s.B, (tiles + 3) / 4));
  const int64_t chunk = ((s.N + chunks - 1) / chunks + kMaxTile - 1) / kMaxTile * kMaxTile;
  const int64_t zslices = (Q + kItemsPerThread * kThreads - 1) / (kItemsPerThread * kThreads);
  TORCH_CHECK(zslices <= 65535, op, " (CUDA): D + C = ", E, " is too large");
  at::Tensor partial = at::empty({s.B, chunks, Q}, vv.options());
  at::Tensor flag = at::zeros({1}, embedding.options().dtype(at::kInt));
  auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, V.scalar_type(), "affinity_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Halve the tile until the staged tile fits the default shared memory.
    int tile = kMaxTile;
    auto bytes = [&](int t) { return static_cast<size_t>(2 * E + 1) * (t + 1) * sizeof(acc_t) + t * sizeof(int); };
    while (tile > 8 && bytes(tile) > kDefaultSmem) tile /= 2;
    const size_t smem = bytes(tile);
    auto kernel = stats_kernel<scalar_t, acc_t>;
    reserve_smem(kernel, smem, op, s.D, s.C);
    for (int64_t b0 = 0; b0 < s.B; b0 += kMaxGridY) {
      const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(std::min(kMaxGridY, s.B - b0)),
                      static_cast<unsigned>(zslices));
      kernel<<<grid, kThreads, smem, stream>>>(
          V.const_data_ptr<scalar_t>(), s.index_target ? nullptr : Y.const_data_ptr<scalar_t>(),
          s.index_target ? Y.const_data_ptr<int64_t>() : nullptr, s.weighted ? W.const_data_ptr<scalar_t>() : nullptr,
          s.N, static_cast<int>(s.D), static_cast<int>(s.C), static_cast<int>(E), P, Q, chunk, tile, b0,
          partial.mutable_data_ptr<double>(), flag.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  reduce_kernel<<<static_cast<unsigned>(s.B), kThreads, 0, stream>>>(
      partial.const_data_ptr<double>(), chunks, Q, P, s.D, s.C, s.index_target, vv.mutable_data_ptr<double>(),
      vy.mutable_data_ptr<double>(), yy.mutable_data_ptr<double>(), wsum.mutable_data_ptr<double>(),
      vsum.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (s.index_target) check_labels(flag, op, s.C);
  return out;
}

at::Tensor affinity_stats_backward_cuda(const at::Tensor& grad_vv, const at::Tensor& grad_vy,
                                        const at::Tensor& embedding, const at::Tensor& target,
                                        const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& grad_vsum) {
  const char* op = "affinity_stats_backward";
  const Shape s = affinity::check_backward(op, grad_vv, grad_vy, grad_vsum, embedding, target, weight);
  check_cuda(op, embedding);
  const c10::cuda::CUDAGuard guard(embedding.device());
  const at::Tensor V = embedding.contiguous();
  at::Tensor dV = at::empty_like(V);
  if (V.numel() == 0) return dV;
  const at::Tensor Y = target.contiguous();
  const at::Tensor W = s.weighted ? weight->contiguous() : at::Tensor();
  at::Tensor flag = at::zeros({1}, embedding.options().dtype(at::kInt));
  auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, V.scalar_type(), "affinity_stats_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // G, H and g in the compute type (tiny: B * D * (D + C + 1)).
    const affinity::GradientOperands o = affinity::gradient_operands(
        s, grad_vv, grad_vy, grad_vsum, c10::CppTypeToScalarType<acc_t>::value);
    const int ld = static_cast<int>(s.D | 1);
    auto bytes = [&](int r) {
      return sizeof(acc_t) *
             static_cast<size_t>(s.D * s.D + s.C * s.D + r * (2 * ld + (s.index_target ? 0 : s.C)) + s.D);
    };
    int rows = kGradRows;
    while (rows > 32 && bytes(rows) > kDefaultSmem) rows /= 2;
    // Still more than the device's opt-in maximum (the D x D and C x D operands dominate for
    // large D): fewer rows per block rather than a refusal. Stopping at 32 refused float64
    // D = 64 on a 64 KiB device (Turing: 67 KiB at 32 rows, 51 KiB at 16). One thread per
    // row and no warp-level operations, so any block size works.
    const size_t optin = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
    while (rows > 1 && bytes(rows) > optin) rows /= 2;
    const size_t smem = bytes(rows);
    auto kernel = grad_kernel<scalar_t, acc_t>;
    reserve_smem(kernel, smem, op, s.D, s.C);
    for (int64_t b0 = 0; b0 < s.B; b0 += kMaxGridY) {
      const dim3 grid(static_cast<unsigned>((s.N + rows - 1) / rows), static_cast<unsigned>(std::min(kMaxGridY, s.B - b0)));
      kernel<<<grid, rows, smem, stream>>>(
          V.const_data_ptr<scalar_t>(), s.index_target ? nullptr : Y.const_data_ptr<scalar_t>(),
          s.index_target ? Y.const_data_ptr<int64_t>() : nullptr, s.weighted ? W.const_data_ptr<scalar_t>() : nullptr,
          o.G.const_data_ptr<acc_t>(), o.H.const_data_ptr<acc_t>(),
          s.index_target ? nullptr : o.g.const_data_ptr<acc_t>(), dV.mutable_data_ptr<scalar_t>(), s.N,
          static_cast<int>(s.D), static_cast<int>(s.C), rows, b0, flag.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (s.index_target) check_labels(flag, op, s.C);
  return dV;
}

}  // namespace

TORCH_LIBRARY_IMPL(chimera, CUDA, m) {
  m.impl("affinity_stats", &affinity_stats_cuda);
  m.impl("affinity_stats_backward", &affinity_stats_backward_cuda);
}

}  // namespace chimera
