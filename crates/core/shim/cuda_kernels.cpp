// The CUDA side's kernels, registered by it when the engine loads it on a CUDA host
// (crates/core/src/cuda.rs): the main shim cannot link them, as it runs without CUDA.
#include "shim.h"
#include <atomic>

namespace {
std::atomic<const acc::CudaKernels*> registered{nullptr};
}

const acc::CudaKernels* acc::cuda_kernels() { return registered.load(std::memory_order_acquire); }

extern "C" void acc_set_cuda_kernels(const acc::CudaKernels* kernels) {
  registered.store(kernels, std::memory_order_release);
}
