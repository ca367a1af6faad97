// Detection and choice of the CPU kernels' instruction-set path (see isa.h).
#include "cpu/isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <strings.h>

namespace chimera {
namespace cpu {
namespace {

bool cpu_runs(Isa isa) {
#if CHIMERA_X86_CLONES
  // libgcc's checks include the OS saving the wide registers (XGETBV).
  switch (isa) {
    case Isa::Default:
      return true;
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2") &&
             __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return cpu_runs(Isa::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }
  return false;
#else
  return isa == Isa::Default;
#endif
}

Isa initial() {
  Isa best = best_supported();
  const char* env = std::getenv("CHIMERA_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best;
  Isa wanted;
  if (!parse_isa(env, wanted)) {
    TORCH_WARN("chimera: CHIMERA_CPU_CAPABILITY=", env, " is not one of default, avx2, avx512; using ", isa_name(best));
    return best;
  }
  if (static_cast<int>(wanted) > static_cast<int>(best)) {
    TORCH_WARN("chimera: CHIMERA_CPU_CAPABILITY=", env, " but this CPU/build supports at most ", isa_name(best),
               "; using ", isa_name(best));
    return best;
  }
  return wanted;
}

std::atomic<int>& current() {
  static std::atomic<int> value{static_cast<int>(initial())};
  return value;
}

}  // namespace

bool compiled(Isa isa) { return CHIMERA_X86_CLONES || isa == Isa::Default; }

bool supported(Isa isa) { return compiled(isa) && cpu_runs(isa); }

Isa best_supported() {
  for (Isa isa : {Isa::Avx512, Isa::Avx2})
    if (supported(isa)) return isa;
  return Isa::Default;
}

Isa capability() { return static_cast<Isa>(current().load(std::memory_order_relaxed)); }

void set_capability(Isa isa) {
  TORCH_CHECK(supported(isa), "chimera: the CPU kernels' ", isa_name(isa), " path is not ",
              compiled(isa) ? "supported by this CPU" : "compiled in this build", "; best is ", isa_name(best_supported()));
  current().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Default:
      return "default";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
  }
  return "?";
}

bool parse_isa(const char* name, Isa& out) {
  for (Isa isa : {Isa::Default, Isa::Avx2, Isa::Avx512}) {
    if (strcasecmp(name, isa_name(isa)) == 0) {
      out = isa;
      return true;
    }
  }
  return false;
}

}  // namespace cpu
}  // namespace chimera
