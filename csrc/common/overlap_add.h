#pragma once
// Shared index mapping and envelope of the overlap-add inverse STFT.
//
// Full-signal position p (before trimming) receives frame t at frame offset
// k = p - t * hop for every t with 0 <= k < n_fft, 0 <= t < n_frames:
//   y[p] = sum_t frames[t][k] * w[k] / env[p],   env[p] = sum_t w[k]^2.
// The envelope depends only on p, so it is computed from the window for each
// sample instead of by a second overlap-add. Output sample i is position
// p = i + start (start = n_fft / 2 with center, like torch.istft).
#include <cstdint>
#include "common/macros.h"

namespace chimera {
namespace ola {

// torch.istft rejects envelopes below this (NOLA condition). The Python side's copy is
// chimera.ops.reference.NOLA_TOLERANCE (tests/test_signal.py checks that both agree).
constexpr double kNolaTolerance = 1e-11;

CHIMERA_HD int64_t full_length(int64_t n_fft, int64_t hop, int64_t n_frames) { return n_fft + hop * (n_frames - 1); }

// First output position kept: torch.istft drops n_fft / 2 samples with center.
CHIMERA_HD int64_t trim_start(int64_t n_fft, bool center) { return center ? n_fft / 2 : 0; }

// Number of output samples: `length` when given (>= 0), else what torch.istft keeps.
CHIMERA_HD int64_t output_length(int64_t n_fft, int64_t hop, int64_t n_frames, bool center, int64_t length) {
  if (length >= 0) return length;
  const int64_t full = full_length(n_fft, hop, n_frames);
  const int64_t kept = center ? full - 2 * (n_fft / 2) : full;
  return kept > 0 ? kept : 0;
}

// Frames covering position p: t in [first_frame, last_frame] (empty when first > last).
CHIMERA_HD int64_t first_frame(int64_t p, int64_t n_fft, int64_t hop) { return p < n_fft ? 0 : (p - n_fft) / hop + 1; }
CHIMERA_HD int64_t last_frame(int64_t p, int64_t hop, int64_t n_frames) {
  const int64_t t = p / hop;
  return t < n_frames - 1 ? t : n_frames - 1;
}

// Window-sum-square envelope at full-signal position p.
template <typename Acc, typename W>
CHIMERA_HD Acc envelope(const W* window, int64_t p, int64_t n_fft, int64_t hop, int64_t n_frames) {
  Acc env = 0;
  const int64_t t1 = last_frame(p, hop, n_frames);
  for (int64_t t = first_frame(p, n_fft, hop); t <= t1; ++t) {
    const Acc w = static_cast<Acc>(window[p - t * hop]);
    env += w * w;
  }
  return env;
}

// One output sample at full-signal position p of one batch item (frames: n_frames x n_fft).
template <typename Acc, typename T, typename W>
CHIMERA_HD Acc overlap_add_sample(const T* frames, const W* window, int64_t p, int64_t n_fft, int64_t hop,
                                  int64_t n_frames) {
  Acc acc = 0, env = 0;
  const int64_t t1 = last_frame(p, hop, n_frames);
  for (int64_t t = first_frame(p, n_fft, hop); t <= t1; ++t) {
    const int64_t k = p - t * hop;
    const Acc w = static_cast<Acc>(window[k]);
    acc += static_cast<Acc>(frames[t * n_fft + k]) * w;
    env += w * w;
  }
  return acc / env;
}

// Adjoint: d frames[t][k] = w[k] * g[p - start] / env[p] with p = t * hop + k,
// zero where p is trimmed away. grad: one batch item, out_len samples.
template <typename Acc, typename T, typename W>
CHIMERA_HD Acc frame_grad(const T* grad, const W* window, int64_t t, int64_t k, int64_t n_fft, int64_t hop,
                          int64_t n_frames, int64_t start, int64_t out_len) {
  const int64_t p = t * hop + k;
  const int64_t i = p - start;
  // trimmed away: no gradient, but a NaN/Inf window sample still gives NaN (window * 0), as
  // the CPU kernel and the reference do
  if (i < 0 || i >= out_len) return static_cast<Acc>(window[k]) * Acc(0);
  return static_cast<Acc>(window[k]) * static_cast<Acc>(grad[i]) / envelope<Acc>(window, p, n_fft, hop, n_frames);
}

// Smallest envelope over the full-signal positions [begin, end) and where it is
// (host side, window in host memory). Away from both ends the envelope is periodic
// with period hop, so only the first n_fft positions, the last n_fft positions and
// one period in between are visited: O((2 n_fft + hop) * n_fft / hop).
template <typename Acc, typename W>
inline Acc min_envelope(const W* window, int64_t n_fft, int64_t hop, int64_t n_frames, int64_t begin, int64_t end,
                        int64_t* where) {
  Acc best = Acc(0);
  *where = -1;
  const int64_t full = full_length(n_fft, hop, n_frames);
  const int64_t tail = full - n_fft;  // positions from here on see the last frames' edge
  auto visit = [&](int64_t a, int64_t b) {
    for (int64_t p = a < begin ? begin : a; p < b && p < end; ++p) {
      const Acc e = envelope<Acc>(window, p, n_fft, hop, n_frames);
      // A NaN is the minimum and stays (torch.min in torch.istft's check): NaN out, no error.
      if (*where < 0 || (best == best && (e < best || e != e))) {
        best = e;
        *where = p;
      }
    }
  };
  visit(0, n_fft);                                   // head
  const int64_t mid = n_fft > begin ? n_fft : begin;  // interior: one period suffices
  if (mid < tail) visit(mid, (mid + hop < tail) ? mid + hop : tail);
  visit(tail > n_fft ? tail : n_fft, full);           // tail
  return best;
}

}  // namespace ola
}  // namespace chimera
