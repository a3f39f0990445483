// The table of kernels this library offers the main shim (shim/cuda_kernels.cpp), which the
// engine hands over when it loads this library (crates/core/src/cuda.rs).
#include "kernels.h"

extern "C" const acc::CudaKernels* acc_cuda_kernels() {
  static const acc::CudaKernels table{acc::kernels::fp8_quantize, acc::kernels::layer_norm_fits,
                                     acc::kernels::layer_norm_forward, acc::kernels::layer_norm_backward,
                                     acc::kernels::cross_entropy_rows, acc::kernels::cross_entropy_scale, acc::kernels::to_bf16,
                                     acc::kernels::matmul, acc::kernels::head_backward};
  return &table;
}
