#pragma once
// Run-time choice of the instruction set of the CPU kernels, one mechanism for every op
// (the role ATen's DispatchStub plays for ATen's kernels).
//
// Each op's hot code lives in a kernel body (csrc/cpu/<op>_body.inc) that isa_clones.inc
// compiles once per path into its own namespace:
//   chimera::cpu::base    baseline of the target (x86-64 SSE2; aarch64 NEON: portable code only)
//   chimera::cpu::avx2    AVX2 + FMA                  (x86-64 with GCC only)
//   chimera::cpu::avx512  AVX-512 F/BW/DQ/VL + AVX2   (x86-64 with GCC only)
// and the host code calls CHIMERA_CPU_DISPATCH(name)(args...), which picks the copy of the
// path in use. The path is the best the CPU supports, or CHIMERA_CPU_CAPABILITY=
// default|avx2|avx512 (read once, like ATEN_CPU_CAPABILITY; capped at what the CPU
// supports, with a warning), or what set_capability() chose last (tests run every path).
namespace chimera {
namespace cpu {

enum class Isa : int { Default = 0, Avx2 = 1, Avx512 = 2 };

Isa capability();                  // the path the kernels take now
Isa best_supported();              // the best path compiled in that this CPU runs
bool compiled(Isa isa);            // this build has the path (x86-64 GCC: all three)
bool supported(Isa isa);           // compiled and runnable on this CPU
void set_capability(Isa isa);      // throws c10::Error when !supported(isa)
const char* isa_name(Isa isa);     // "default", "avx2", "avx512"
bool parse_isa(const char* name, Isa& out);

}  // namespace cpu
}  // namespace chimera

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CHIMERA_X86_CLONES 1
#else
#define CHIMERA_X86_CLONES 0
#endif

// CHIMERA_CPU_DISPATCH(ns::fn) or CHIMERA_CPU_DISPATCH(ns::fn<T, W>): a pointer to the copy
// of `fn` (declared in a kernel body) for the path in use.
#if CHIMERA_X86_CLONES
#define CHIMERA_CPU_DISPATCH(...)                                                                  \
  (::chimera::cpu::capability() == ::chimera::cpu::Isa::Avx512 ? &::chimera::cpu::avx512::__VA_ARGS__ \
   : ::chimera::cpu::capability() == ::chimera::cpu::Isa::Avx2 ? &::chimera::cpu::avx2::__VA_ARGS__   \
                                                               : &::chimera::cpu::base::__VA_ARGS__)
#else
#define CHIMERA_CPU_DISPATCH(...) (&::chimera::cpu::base::__VA_ARGS__)
#endif
