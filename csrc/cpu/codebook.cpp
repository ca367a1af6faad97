// CPU kernels of chimera::codebook_lookup and chimera::codebook_lookup_backward.
//
// Rows (bins x sources) are split over threads, K lies innermost and contiguous, so a
// row is read once from memory into a K-long buffer that the shared row helpers
// (common/codebook.h) turn into softmax weights in place. The backward recomputes the
// softmax from the logits; nothing of size rows x K is saved or allocated besides the
// logits gradient itself. The codebook gradient is summed per thread over blocks of 256
// rows in the input precision, those block sums in float64, then over threads.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "common/codebook.h"
#include "common/codebook_check.h"

namespace chimera {
namespace {

using codebook::Shape;

constexpr int64_t GRAIN = 1024;  // rows per task, at least

template <typename L, typename A, int D>
void forward_cpu(const Shape& s, const L* x, const A* c, bool argmax, bool normalize, A* out) {
  const int64_t K = s.K;
  at::parallel_for(0, s.rows, GRAIN, [&](int64_t begin, int64_t end) {
    std::vector<A> e(K);
    for (int64_t r = begin; r < end; ++r) {
      const L* xr = x + r * K;
      A* o = out + r * D;
      if (argmax) {
        const A* pick = c + codebook::argmax_row(xr, K) * D;
        if (normalize) {
          codebook::normalize<A, D>(pick, o);
        } else {
          for (int d = 0; d < D; ++d) o[d] = pick[d];
        }
      } else {
        for (int64_t k = 0; k < K; ++k) e[k] = static_cast<A>(xr[k]);
        codebook::interpolate_row<A, D>(e.data(), c, K, normalize, o);
      }
    }
  });
}

constexpr int64_t FLUSH = 256;  // rows summed in the input precision before a float64 flush

template <typename L, typename A, int D>
void backward_cpu(const Shape& s, const A* g, const L* x, const A* c, bool argmax, bool normalize, L* gx,
                  A* gc) {
  const int64_t K = s.K;
  const bool want_gc = gc != nullptr;
  const int64_t threads = at::get_num_threads();
  std::vector<double> partial(want_gc ? static_cast<size_t>(threads * K * D) : 0, 0.0);
  at::parallel_for(0, s.rows, GRAIN, [&](int64_t begin, int64_t end) {
    std::vector<A> e(K), local(K * D, A(0));
    double* acc = want_gc ? partial.data() + at::get_thread_num() * K * D : nullptr;
    auto flush = [&] {
      for (int64_t q = 0; q < K * D; ++q) {
        acc[q] += local[q];
        local[q] = A(0);
      }
    };
    for (int64_t r = begin; r < end; ++r) {
      const L* xr = x + r * K;
      const A* gr = g + r * D;
      A gy[D];
      if (argmax) {  // only the codebook entry picked receives a gradient
        if (!want_gc) continue;
        const int64_t k = codebook::argmax_row(xr, K);
        codebook::argmax_backward_row<A, D>(c + k * D, gr, normalize, gy);
        for (int d = 0; d < D; ++d) acc[k * D + d] += gy[d];
        continue;
      }
      for (int64_t k = 0; k < K; ++k) e[k] = static_cast<A>(xr[k]);
      bool infinite;
      const A inv = codebook::interpolate_backward_weights<A, D>(e.data(), c, K, gr, normalize, gy, infinite);
      if (want_gc) {
        for (int64_t k = 0; k < K; ++k) {
          const A p = e[k] * inv;
          for (int d = 0; d < D; ++d) local[k * D + d] += p * gy[d];
        }
        if ((r - begin) % FLUSH == FLUSH - 1) flush();
      }
      if (gx != nullptr) {
        codebook::interpolate_backward_logits<A, D>(e.data(), inv, infinite, c, K, gy);
        L* gxr = gx + r * K;
        for (int64_t k = 0; k < K; ++k) gxr[k] = static_cast<L>(e[k]);
      }
    }
    if (want_gc) flush();
  });
  if (want_gc) {
    for (int64_t q = 0; q < K * D; ++q) {
      double total = 0;
      for (int64_t t = 0; t < threads; ++t) total += partial[t * K * D + q];
      gc[q] = static_cast<A>(total);
    }
  }
}

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
        forward_cpu<L, A, 1>(s, x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize, out.mutable_data_ptr<A>());
      else
        forward_cpu<L, A, 2>(s, x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize, out.mutable_data_ptr<A>());
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
        backward_cpu<L, A, 1>(s, g.const_data_ptr<A>(), x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize,
                              gxp, gcp);
      else
        backward_cpu<L, A, 2>(s, g.const_data_ptr<A>(), x.const_data_ptr<L>(), c.const_data_ptr<A>(), argmax, normalize,
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
