// Shared by the C++ shim files: the C ABI conventions between libtorch and Rust.
// Every entry point returns 0 on success or -1 after storing the exception's
// message, which acc_last_error() returns; no C++ exception reaches Rust.
#pragma once
#include <ATen/ATen.h>
#include <string>
#include <vector>

namespace acc {
void set_last_error(const std::string& message);

// The dtype an operation on `input` computes in: autocast's for its device when autocast is
// on there and would convert `input` (not float64), else the input's (shim/autocast.cpp).
at::ScalarType compute_dtype(const at::Tensor& input);
// The same for a tensor of `dtype` on a device of type `device`.
at::ScalarType compute_dtype(at::DeviceType device, at::ScalarType dtype);

// A linear layer's gradients in its parameters' dtype (shim/linear.cpp): `a @ b` and the sum of
// `g`'s rows written in `dtype` (float32 for a bf16 `a`, `b`, `g`) without rounding to theirs first.
at::Tensor mm_as(const at::Tensor& a, const at::Tensor& b, at::ScalarType dtype);
at::Tensor sum_rows_as(const at::Tensor& g, at::ScalarType dtype);
// mm_as for a chain of small layers (shim/linear_chain.cpp): on a GPU one cuBLASLt call with a
// plan kept per shape (shim-cuda/matmul.cpp, products up to 2^32 multiply-adds), which with
// `a_row_sums` also writes there the sums of `a`'s rows in `dtype` (a Linear's bias gradient,
// `a` being its output's gradient transposed); ATen's elsewhere.
at::Tensor planned_mm_as(const at::Tensor& a, const at::Tensor& b, at::ScalarType dtype, at::Tensor* a_row_sums = nullptr);
// `h @ wt + bias` (no bias where undefined), through a ReLU if `relu`, written in `dtype`: h's,
// or float32 from a half-precision h, whose bias is then float32 (shim/linear.cpp). On a GPU one
// cuBLASLt call with a plan kept per shape (as planned_mm_as), the float32 straight from its
// accumulator; elsewhere ATen's product in h's dtype (the bias converted to it), then converted.
at::Tensor linear_as(const at::Tensor& h, const at::Tensor& wt, const at::Tensor& bias, bool relu, at::ScalarType dtype);
// `tensor` (a linear layer's weight or bias) in `dtype`, converted once per autocast region,
// version and dtype (shim/casts.cpp); clear_linear_casts forgets them when the outermost
// autocast region ends.
at::Tensor cached_cast(const at::Tensor& tensor, at::ScalarType dtype);
// The conversions of `tensors` (weights, biases, and a layer's input) to their compute dtype,
// made ahead for the linear layers that will use them, several in one multi-tensor copy.
void cast_ahead(const std::vector<at::Tensor>& tensors);
// `params` (one device, one dtype) and `input` (undefined: none) converted to `dtype` at once,
// in that order, for a chain of layers (shim/linear_chain.cpp): written on each call into
// buffers kept from the chain's previous call where no autograd graph holds them any more
// (shim/casts.cpp), so that a training step allocates nothing for them.
std::vector<at::Tensor> kept_casts(const std::vector<at::Tensor>& params, const at::Tensor& input, at::ScalarType dtype);
// `t` in `dtype` (itself if it is): on a GPU float32 to bf16 in one launch of our own kernel
// (less host work than ATen's conversion, for small tensors: see shim/casts.cpp).
at::Tensor converted(const at::Tensor& t, at::ScalarType dtype);
// A linear layer's `input` in `dtype`: its conversion made ahead (taken out of the cache: an
// input is used once), or a new one.
at::Tensor converted_input(const at::Tensor& input, at::ScalarType dtype);
void clear_linear_casts();

// A matrix in fp8: `data` (row-major), its transpose `data_t` (row-major, or undefined when not
// asked for) and the 0-dim float32 `scale` (data * scale is the original).
struct Fp8Quantized {
  at::Tensor data, data_t, scale;
};

// Kernels of the CUDA side (shim-cuda), which registers them when it is loaded. Where one does
// not apply (it says so, or its check says so) the caller takes its ATen path.
struct CudaKernels {
  // `input` (a matrix) in fp8 `dtype` with the power-of-two scale that brings an amax to at most
  // `max`, and its transpose when `transpose`. The amax is the input's own (dynamic scaling)
  // or, when `delayed`, the largest in `history` (shim/fp8.cpp's amax history, whose last entry
  // then receives the input's own); with a `history`, it is shifted after (see fp8.cpp). With
  // `gelu` 1 (erf) or 2 (tanh) the input's GELU is quantized instead of the input.
  bool (*fp8_quantize)(const at::Tensor& input, at::ScalarType dtype, double max, bool transpose,
                       const at::Tensor& history, bool delayed, int gelu, Fp8Quantized& result);
  // LayerNorm of contiguous matrices over their last dimension, with the residual add before it
  // or not, for the widths and dtypes layer_norm_fits (shim-cuda/kernels.h says what each
  // takes; shim/layer_norm.cpp checks the rest).
  bool (*layer_norm_fits)(const at::Tensor& x, bool add, at::ScalarType y_dtype);
  void (*layer_norm_forward)(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                             const at::Tensor& bias, double eps, at::Tensor& sum, at::Tensor& y, at::Tensor& mean,
                             at::Tensor& rstd);
  void (*layer_norm_backward)(const at::Tensor& dy, const at::Tensor& dsum, const at::Tensor& v,
                              const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& weight, bool add,
                              at::ScalarType x_dtype, at::Tensor& dv, at::Tensor& dx, at::Tensor& dweight,
                              at::Tensor& dbias);
  // Each row's cross-entropy of a matrix of logits, or their sum or mean, and their gradient
  // (softmax - one-hot) written into `grad` when it is defined (it may be the logits), for the
  // inputs it takes; and that gradient times the loss's and the scale for the mean
  // (shim-cuda/kernels.h; false for other inputs).
  bool (*cross_entropy_rows)(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index,
                             const at::Tensor& grad, int64_t reduction, at::Tensor& loss, at::Tensor& scale);
  bool (*cross_entropy_scale)(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& scale, at::Tensor& out);
  // Float32 tensors converted to bf16 ones of the same layout in one launch, for the inputs it
  // takes (shim-cuda/kernels.h; false, converting nothing, for others).
  bool (*to_bf16)(const std::vector<at::Tensor>& from, const std::vector<at::Tensor>& to);
  // `out` = a @ b (+ bias) (ReLU) in `dtype`, or with `row_sums` also a's row sums (undefined
  // where cuBLASLt has no algorithm with them), through cuBLASLt with a plan kept per shape,
  // for the inputs it takes (shim-cuda/kernels.h; false, leaving the work to the caller, for
  // others).
  bool (*matmul)(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias, bool relu, at::ScalarType dtype,
                 at::Tensor& out, at::Tensor* row_sums);
  // A bf16 or fp16 chain's small last layer's backward from its output's float32 gradient, in
  // one launch: the input's gradient (the chain's dtype, through the ReLU below when `relu`), the
  // weight's and the bias's (float32), each where wanted (shim-cuda/kernels.h; false, making
  // nothing, for others).
  bool (*head_backward)(const at::Tensor& g, const at::Tensor& h, const at::Tensor& w, bool relu, bool want_dh,
                        bool want_dw, bool want_db, at::Tensor& dh, at::Tensor& dw, at::Tensor& db);
};
// The registered kernels, or null (no CUDA side loaded).
const CudaKernels* cuda_kernels();
}

// Registers the CUDA side's kernels (shim/cuda_kernels.cpp); crates/core/src/cuda.rs calls it.
extern "C" void acc_set_cuda_kernels(const acc::CudaKernels* kernels);

#define ACC_PROTECT(...)                                   \
  try {                                                    \
    __VA_ARGS__;                                                  \
    return 0;                                              \
  } catch (const c10::Error& e) {                          \
    acc::set_last_error(e.what_without_backtrace());       \
  } catch (const std::exception& e) {                      \
    acc::set_last_error(e.what());                         \
  } catch (...) {                                          \
    acc::set_last_error("unknown C++ exception");          \
  }                                                        \
  return -1;

// tch hands tensors over as pointers to heap-allocated at::Tensor.
typedef at::Tensor* acc_tensor;

namespace acc {
// The `n` tensors an array of them points to, as a list (sharing them).
inline std::vector<at::Tensor> to_list(const acc_tensor* tensors, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}
}  // namespace acc
