#pragma once
// Run-time value -> compile-time constant, for kernels templated on a small set of cases.
//
//   CHIMERA_DIM_SWITCH(s.D, D, [&] { kernel<D>(...); });
//
// expands to a call of the lambda with `D` declared constexpr inside it, once per case,
// so the body is written once instead of once per `if` branch. The lambda's return value
// is returned. Usable in host code of .cpp and .cu files alike.

// Codebook entry width: 1 (real codebook) or 2 (complex, as (re, im) pairs). Anything
// else is the second case; callers check the value before switching.
#define CHIMERA_DIM_SWITCH(VALUE, NAME, ...)  \
  [&] {                                       \
    if ((VALUE) == 1) {                       \
      constexpr int NAME = 1;                 \
      return __VA_ARGS__();                   \
    } else {                                  \
      constexpr int NAME = 2;                 \
      return __VA_ARGS__();                   \
    }                                         \
  }()

#define CHIMERA_BOOL_SWITCH(COND, NAME, ...)  \
  [&] {                                       \
    if (COND) {                               \
      constexpr bool NAME = true;             \
      return __VA_ARGS__();                   \
    } else {                                  \
      constexpr bool NAME = false;            \
      return __VA_ARGS__();                   \
    }                                         \
  }()
