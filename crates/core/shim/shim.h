// Shared by the C++ shim files: the C ABI conventions between libtorch and Rust.
// Every entry point returns 0 on success or -1 after storing the exception's
// message, which acc_last_error() returns; no C++ exception reaches Rust.
#pragma once
#include <ATen/ATen.h>
#include <string>

namespace acc {
void set_last_error(const std::string& message);

// The dtype an operation on `input` computes in: autocast's for its device when autocast is
// on there and would convert `input` (not float64), else the input's (shim/autocast.cpp).
at::ScalarType compute_dtype(const at::Tensor& input);

// A linear layer's gradients in its parameters' dtype (shim/linear.cpp): `a @ b` and the sum of
// `g`'s rows written in `dtype` (float32 for a bf16 `a`, `b`, `g`) without rounding to theirs first.
at::Tensor mm_as(const at::Tensor& a, const at::Tensor& b, at::ScalarType dtype);
at::Tensor sum_rows_as(const at::Tensor& g, at::ScalarType dtype);
// `weight` in `dtype`, converted once per autocast region, version and dtype (shim/linear.cpp);
// clear_linear_casts forgets them when the outermost autocast region ends.
at::Tensor cast_weight(const at::Tensor& weight, at::ScalarType dtype);
void clear_linear_casts();
}

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
