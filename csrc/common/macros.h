#pragma once
// Helpers marked CHIMERA_HD are compiled for both the CPU kernels and the CUDA
// kernels, so the CPU test suite exercises the arithmetic the GPU runs.
#ifdef __CUDACC__
#define CHIMERA_HD __host__ __device__ __forceinline__
#else
// always_inline: the CPU kernels are compiled once per instruction set (cpu/isa.h) while
// these helpers are compiled before the per-ISA target pragmas; inlined, they take the
// caller's ISA (AVX2 / AVX-512) instead of running the baseline copy.
#define CHIMERA_HD inline __attribute__((always_inline))
#endif
