#pragma once
// Helpers marked CHIMERA_HD are compiled for both the CPU kernels and the CUDA
// kernels, so the CPU test suite exercises the arithmetic the GPU runs.
#ifdef __CUDACC__
#define CHIMERA_HD __host__ __device__ __forceinline__
#else
#define CHIMERA_HD inline
#endif
