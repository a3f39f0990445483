// The kernels the CUDA side offers the main shim (registered through acc::CudaKernels).
#pragma once
#include "../shim/shim.h"

namespace acc::kernels {
// Quantizes the [rows, cols] matrix `input` (float32 or bf16, on a GPU) to `dtype` as
// acc::CudaKernels::fp8_quantize says (shim-cuda/fp8_quantize.cpp). False, leaving the work
// to the caller, for other inputs.
bool fp8_quantize(const at::Tensor& input, at::ScalarType dtype, double max, bool transpose, const at::Tensor& history,
                  bool delayed, int gelu, Fp8Quantized& result);

// LayerNorm over the last dimension of contiguous float32 [rows, cols] CUDA matrices with a
// weight and a bias (shim-cuda/layer_norm.cpp), for widths that layer_norm_fits. Forward
// returns the output and each row's mean and 1 / standard deviation; backward the gradients
// of the input, the weight and the bias.
bool layer_norm_fits(int64_t cols);
void layer_norm_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps, at::Tensor& y,
                        at::Tensor& mean, at::Tensor& rstd);
void layer_norm_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                         const at::Tensor& weight, at::Tensor& dx, at::Tensor& dweight, at::Tensor& dbias);
}  // namespace acc::kernels
