// The kernels the CUDA side offers the main shim (registered through acc::CudaKernels).
#pragma once
#include "../shim/shim.h"

namespace acc::kernels {
// Quantizes the [rows, cols] matrix `input` (float32 or bf16, on a GPU) to `dtype` as
// acc::CudaKernels::fp8_quantize says (shim-cuda/fp8_quantize.cpp). False, leaving the work
// to the caller, for other inputs.
bool fp8_quantize(const at::Tensor& input, at::ScalarType dtype, double max, bool transpose, const at::Tensor& history,
                  bool delayed, int gelu, Fp8Quantized& result);

// LayerNorm over the last dimension of contiguous [rows, cols] CUDA matrices with a float32
// weight and bias (shim-cuda/layer_norm.cpp), for the widths and dtypes layer_norm_fits:
// x float32, or bf16 when a float32 residual is added first (`add`); the output float32 or
// bf16. Forward normalizes x, or residual + x, which it then writes into `sum`; it fills the
// given `y` and returns each row's mean and 1 / standard deviation. Backward takes the
// output's gradient `dy` (y's dtype), the gradient `dsum` of sum's other uses (or undefined),
// the normalized input `v` (x, or sum); it returns v's whole gradient `dv` (float32), x's
// gradient `dx` (dv, or a bf16 copy for a bf16 x) and the weight's and the bias's.
bool layer_norm_fits(const at::Tensor& x, bool add, at::ScalarType y_dtype);
void layer_norm_forward(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                        const at::Tensor& bias, double eps, at::Tensor& sum, at::Tensor& y, at::Tensor& mean,
                        at::Tensor& rstd);
void layer_norm_backward(const at::Tensor& dy, const at::Tensor& dsum, const at::Tensor& v, const at::Tensor& mean,
                         const at::Tensor& rstd, const at::Tensor& weight, bool add, at::ScalarType x_dtype,
                         at::Tensor& dv, at::Tensor& dx, at::Tensor& dweight, at::Tensor& dbias);

// Cross-entropy of each row of `logits` (a contiguous [rows, classes] bf16 or float32 CUDA
// matrix) against int64 `targets` (shim-cuda/cross_entropy.cpp): a row's loss (float32) is
// logsumexp - logit[target], 0 where the target is `ignore_index` and NaN where it is neither
// that nor a class. With `reduction` 0 `loss` holds the rows' losses; 1 (mean over the rows
// not ignored: NaN when there are none) or 2 (sum) makes `loss` 0-d and `scale` the 0-d factor
// for backward (1 / max(rows not ignored, 1), or 1). A defined `grad` (the logits' shape and
// dtype, contiguous; it may be `logits` itself) receives softmax - one_hot(target), zero rows
// where ignored and NaN rows where invalid. False, leaving the work to the caller, for other
// inputs.
bool cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index,
                        const at::Tensor& grad, int64_t reduction, at::Tensor& loss, at::Tensor& scale);
// crossEntropy's backward: `out` = `grad` * `g` * `scale`, g float32 with one value or one a
// row, scale cross_entropy_rows's (undefined, for reduction 0: 1). False for other inputs.
bool cross_entropy_scale(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& scale, at::Tensor& out);
// Converts each float32 CUDA tensor of `from` into the bf16 tensor of `to` at its index (the
// same sizes and strides, dense), in one launch per 32 tensors (shim-cuda/convert.cpp). False,
// converting nothing, for other tensors.
bool to_bf16(const std::vector<at::Tensor>& from, const std::vector<at::Tensor>& to);
// `out` (new, [a rows, b columns], `dtype`) = a @ b, plus `bias` where defined (`dtype`, one per
// column), through a ReLU if `relu`; with `row_sums` (no bias, no ReLU) also the sums of a's rows
// in `dtype` (left undefined where cuBLASLt has no algorithm with them for the shape: the
// caller sums). a and b: 2-d CUDA matrices of one dtype (float32, bf16, fp16) with rows or columns
// contiguous; `dtype` a's, or float32. One cuBLASLt call with a plan kept per shape
// (shim-cuda/matmul.cpp). False, leaving the work to the caller, for other inputs or where
// cuBLASLt has no algorithm.
bool matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias, bool relu, at::ScalarType dtype,
            at::Tensor& out, at::Tensor* row_sums);
// The backward of a chain's small last layer in one launch (shim-cuda/head_backward.cpp): from
// `g` (float32 [rows, outputs], any strides), its input `h` and weight `w` (bf16 or fp16, one
// dtype, contiguous [rows, inputs] and [outputs, inputs]), the input's gradient `dh` (h's dtype,
// 0 where `relu` and h is not above 0), the weight's `dw` and the bias's `db` (float32), each
// made where wanted. False, making nothing, for other inputs (more than 32 outputs, more than
// 2 Mi input elements). One launch up to 512 rows, two beyond (the rows' ranges' sums added in
// a fixed order).
bool head_backward(const at::Tensor& g, const at::Tensor& h, const at::Tensor& w, bool relu, bool want_dh, bool want_dw,
                   bool want_db, at::Tensor& dh, at::Tensor& dw, at::Tensor& db);
}  // namespace acc::kernels
