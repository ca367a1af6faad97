// Does this library hold a kernel image a device can run? Compiled with the same
// -gencode flags as every kernel of the extension, so one empty kernel answers for all:
// the runtime loads its image (SASS for the device's architecture, or PTX the driver can
// JIT) or says why not (cudaErrorNoKernelImageForDevice, cudaErrorUnsupportedPtxVersion,
// ...). Called once per device by chimera/ops/_registry.py, which otherwise runs the
// reference twins there; the device already has a context by then (its tensors do).
#include <cuda_runtime.h>

namespace chimera {
namespace {
__global__ void image_probe_kernel() {}
}  // namespace

// cudaSuccess (0) or the runtime's error, with its message; the current device is kept.
int cuda_image_status(int device, const char** message) {
  int current = 0;
  cudaError_t status = cudaGetDevice(&current);
  if (status == cudaSuccess) status = cudaSetDevice(device);
  if (status == cudaSuccess) {
    cudaFuncAttributes attributes;
    status = cudaFuncGetAttributes(&attributes, image_probe_kernel);
    cudaSetDevice(current);
  }
  if (status != cudaSuccess) cudaGetLastError();  // not sticky: clear it for the next CUDA call
  *message = cudaGetErrorString(status);
  return static_cast<int>(status);
}

}  // namespace chimera
