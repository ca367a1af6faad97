#pragma once
// Transparent huge pages for the large outputs the CPU kernels allocate and then write in
// full (gradients as large as their input: 160 MB for the codebook benchmark's logits).
// Such a buffer is fresh memory from mmap, and touching it 4 KiB page by page costs more
// than computing it; where huge pages are enabled on request (madvise), ask for them over
// the buffer's 2 MiB-aligned interior before the first write. A hint: errors are ignored.
// (affinity_stats.cpp has its own copy of this function: fold it here when it is merged.)
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace chimera {
namespace cpu {

inline void advise_huge_pages(const at::Tensor& fresh) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t HUGE = uintptr_t(2) << 20;
  const size_t bytes = fresh.nbytes();
  if (bytes < 4 * HUGE) return;
  const uintptr_t data = reinterpret_cast<uintptr_t>(fresh.data_ptr());
  const uintptr_t begin = (data + HUGE - 1) & ~(HUGE - 1);
  const uintptr_t end = (data + bytes) & ~(HUGE - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)fresh;
#endif
}

}  // namespace cpu
}  // namespace chimera
