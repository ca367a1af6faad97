#pragma once
// Vector width of each instruction-set path of the CPU kernel bodies (cpu/isa.h), for
// bodies that compute on GCC vectors (common/lanes.h): a body included in namespace
// chimera::cpu::<path> finds its path's kVectorBytes by unqualified lookup, so
//   lanes::VectorOf<float, kVectorBytes>::type
// is 4 floats on the baseline (SSE2, NEON) and 8 with AVX2 and with AVX-512. The AVX-512
// path keeps 256-bit vectors (in AVX-512VL encodings, with 32 registers): GCC 12 lowers
// the compares and selects of 64-byte generic vectors lane by lane, and the codebook
// forward took 186 ms with 16-row blocks against 47 ms with 8-row ones (full benchmark
// shape, 2 threads, Intel Xeon, benchmarks/RESULTS.md).
#include <cstddef>
#include <new>

namespace chimera {
namespace cpu {
// kBlockVectors: 32-byte vectors per register block row of the deep-clustering
// micro-kernels (cpu/affinity_stats_body.inc: 4 rows x kBlockVectors accumulators plus
// the operands). Three fit AVX2's 16 ymm registers; on SSE2 each is two of its 16 xmm
// registers, and three spilled to the stack (the baseline forward ran 6x slower than the
// AVX2 one); NEON has 32 registers of 16 bytes. The block never changes a result: each
// output element sums the same terms in the same order.
namespace base {
constexpr int kVectorBytes = 16;
#if defined(__aarch64__)
constexpr int kBlockVectors = 2;
#else
constexpr int kBlockVectors = 1;
#endif
}
namespace avx2 {
constexpr int kVectorBytes = 32;
constexpr int kBlockVectors = 3;
}
namespace avx512 {
constexpr int kVectorBytes = 32;  // not 64: see above
constexpr int kBlockVectors = 3;
}

// n vectors of type V, aligned to their size, value-initialised (0). std::vector<V> would
// not do: GCC drops a vector type's alignment when it is a template argument.
template <typename V>
class VectorBuffer {
 public:
  explicit VectorBuffer(size_t n)
      : data_(static_cast<V*>(::operator new(n * sizeof(V) + (n == 0), std::align_val_t(sizeof(V))))) {
    for (size_t i = 0; i < n; ++i) data_[i] = V{};
  }
  ~VectorBuffer() { ::operator delete(data_, std::align_val_t(sizeof(V))); }
  VectorBuffer(const VectorBuffer&) = delete;
  VectorBuffer& operator=(const VectorBuffer&) = delete;
  V* data() { return data_; }
  V& operator[](size_t i) { return data_[i]; }

 private:
  V* data_;
};

}  // namespace cpu
}  // namespace chimera
