// CPU kernels of chimera::overlap_add and chimera::overlap_add_backward.
//
// Both walk the full signal one hop-long segment at a time. Positions s*hop + r
// (0 <= r < hop) of segment s are covered by frames t = s, s-1, ... at offsets
// k = (s - t) * hop + r, so for each covering frame the segment reads (forward) or
// writes (backward) one contiguous run of that frame: a gather with contiguous,
// vectorisable inner loops, and every output (forward: sample, backward: frame
// element) is owned by exactly one segment, so tasks never race. The envelope of a
// segment is summed from the squared window once and shared by the whole batch.
// Extra memory: three hop-long buffers per task.
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

namespace chimera {
namespace {

using ola::Shape;

constexpr int64_t MIN_TASK_SAMPLES = 16384;  // output samples per parallel task, at least

// Tasks: segments x batch chunks, so short signals with a large batch still split.
struct Split {
  int64_t segments, batch_chunks, per_chunk;
};

Split split_work(int64_t segments, int64_t batch) {
  const int64_t threads = at::get_num_threads();
  int64_t chunks = 1;
  if (segments < 2 * threads) chunks = std::min(batch, (2 * threads + segments - 1) / std::max<int64_t>(segments, 1));
  chunks = std::max<int64_t>(chunks, 1);
  return {segments, chunks, (batch + chunks - 1) / chunks};
}

int64_t grain(const Shape& s, const Split& sp) {
  const int64_t per_task = std::max<int64_t>(1, sp.per_chunk * s.hop);
  return std::max<int64_t>(1, MIN_TASK_SAMPLES / per_task);
}

// Envelope reciprocal of positions s*hop + [r0, r1) (all inside the signal).
template <typename acc_t>
void segment_inv_envelope(const acc_t* wsq, const Shape& s, int64_t seg, int64_t r0, int64_t r1, acc_t* inv) {
  std::fill(inv + r0, inv + r1, acc_t(0));
  const int64_t t_hi = std::min(seg, s.n_frames - 1);
  for (int64_t t = t_hi; t >= 0; --t) {
    const int64_t k0 = (seg - t) * s.hop;
    const int64_t r_end = std::min(r1, s.n_fft - k0);
    if (r_end <= r0) break;  // older frames end before this segment
    const acc_t* ws = wsq + k0;
    for (int64_t r = r0; r < r_end; ++r) inv[r] += ws[r];
  }
  for (int64_t r = r0; r < r1; ++r) inv[r] = acc_t(1) / inv[r];
}

template <typename scalar_t>
void forward_cpu(const Shape& s, const scalar_t* frames, const scalar_t* window, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> w(s.n_fft), wsq(s.n_fft);
  for (int64_t k = 0; k < s.n_fft; ++k) {
    w[k] = static_cast<acc_t>(window[k]);
    wsq[k] = w[k] * w[k];
  }
  const int64_t p_end = std::min(s.start + s.out_len, s.full);  // beyond: zero padding
  const int64_t frame_stride = s.n_frames * s.n_fft;
  // Zero tail (length > what the frames cover), like torch.istft.
  const int64_t pad_from = std::max<int64_t>(p_end - s.start, 0);
  if (pad_from < s.out_len) {
    for (int64_t b = 0; b < s.batch; ++b) std::fill(out + b * s.out_len + pad_from, out + (b + 1) * s.out_len, scalar_t(0));
  }
  if (p_end <= s.start) return;
  const int64_t seg0 = s.start / s.hop, seg1 = (p_end - 1) / s.hop + 1;
  const Split sp = split_work(seg1 - seg0, s.batch);
  at::parallel_for(0, sp.segments * sp.batch_chunks, grain(s, sp), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> inv(s.hop), acc(s.hop);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t seg = seg0 + task / sp.batch_chunks;
      const int64_t b0 = (task % sp.batch_chunks) * sp.per_chunk, b1 = std::min(s.batch, b0 + sp.per_chunk);
      const int64_t base = seg * s.hop;
      const int64_t r0 = std::max<int64_t>(s.start - base, 0), r1 = std::min<int64_t>(s.hop, p_end - base);
      segment_inv_envelope(wsq.data(), s, seg, r0, r1, inv.data());
      const int64_t t_hi = std::min(seg, s.n_frames - 1);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(acc.begin() + r0, acc.begin() + r1, acc_t(0));
        const scalar_t* fb = frames + b * frame_stride;
        for (int64_t t = t_hi; t >= 0; --t) {
          const int64_t k0 = (seg - t) * s.hop;
          const int64_t r_end = std::min(r1, s.n_fft - k0);
          if (r_end <= r0) break;
          const scalar_t* f = fb + t * s.n_fft + k0;
          const acc_t* wk = w.data() + k0;
          acc_t* a = acc.data();
          for (int64_t r = r0; r < r_end; ++r) a[r] += static_cast<acc_t>(f[r]) * wk[r];
        }
        scalar_t* o = out + b * s.out_len + base - s.start;
        for (int64_t r = r0; r < r1; ++r) o[r] = static_cast<scalar_t>(acc[r] * inv[r]);
      }
    }
  });
}

template <typename scalar_t>
void backward_cpu(const Shape& s, const scalar_t* grad, const scalar_t* window, scalar_t* dframes) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> w(s.n_fft), wsq(s.n_fft);
  for (int64_t k = 0; k < s.n_fft; ++k) {
    w[k] = static_cast<acc_t>(window[k]);
    wsq[k] = w[k] * w[k];
  }
  // Every frame element lies in exactly one segment of the full signal.
  const int64_t kept0 = s.start, kept1 = std::min(s.start + s.out_len, s.full);
  const int64_t frame_stride = s.n_frames * s.n_fft;
  const int64_t segments = (s.full + s.hop - 1) / s.hop;
  const Split sp = split_work(segments, s.batch);
  at::parallel_for(0, sp.segments * sp.batch_chunks, grain(s, sp), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> inv(s.hop), q(s.hop);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t seg = task / sp.batch_chunks;
      const int64_t b0 = (task % sp.batch_chunks) * sp.per_chunk, b1 = std::min(s.batch, b0 + sp.per_chunk);
      const int64_t base = seg * s.hop;
      const int64_t r_len = std::min<int64_t>(s.hop, s.full - base);
      // Kept part of the segment: gradient flows there, zero elsewhere.
      const int64_t g0 = std::clamp<int64_t>(kept0 - base, 0, r_len), g1 = std::clamp<int64_t>(kept1 - base, g0, r_len);
      if (g1 > g0) segment_inv_envelope(wsq.data(), s, seg, g0, g1, inv.data());
      const int64_t t_hi = std::min(seg, s.n_frames - 1);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(q.begin(), q.begin() + r_len, acc_t(0));
        const scalar_t* g = grad + b * s.out_len + base - s.start;
        for (int64_t r = g0; r < g1; ++r) q[r] = static_cast<acc_t>(g[r]) * inv[r];
        scalar_t* db = dframes + b * frame_stride;
        for (int64_t t = t_hi; t >= 0; --t) {
          const int64_t k0 = (seg - t) * s.hop;
          const int64_t r_end = std::min(r_len, s.n_fft - k0);
          if (r_end <= 0) break;
          scalar_t* d = db + t * s.n_fft + k0;
          const acc_t* wk = w.data() + k0;
          const acc_t* qq = q.data();
          for (int64_t r = 0; r < r_end; ++r) d[r] = static_cast<scalar_t>(wk[r] * qq[r]);
        }
      }
    }
  });
}

at::Tensor overlap_add_cpu(const at::Tensor& frames, const at::Tensor& window, int64_t hop_length, bool center,
                           std::optional<int64_t> length) {
  const auto [s, out] = ola::forward_output(frames, window, hop_length, center, length);
  if (out.numel() == 0) return out;
  const at::Tensor f = frames.contiguous(), w = window.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "overlap_add_cpu", [&] {
    forward_cpu<scalar_t>(s, f.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                          out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor overlap_add_backward_cpu(const at::Tensor& grad, const at::Tensor& window, int64_t hop_length,
                                    bool center, int64_t n_frames) {
  const auto [s, dframes] = ola::backward_output(grad, window, hop_length, center, n_frames);
  if (dframes.numel() == 0) return dframes;
  const at::Tensor g = grad.contiguous(), w = window.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "overlap_add_backward_cpu", [&] {
    backward_cpu<scalar_t>(s, g.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
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
