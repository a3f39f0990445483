// The optional bias of the autograd functions that act as a Linear layer (shim/linear.cpp,
// gelu_linear.cpp, fp8.cpp): handed over from C as a pointer that may be null, its dtype kept
// in forward, its gradient (the sum of the output gradient's rows, in that dtype) in backward.
#pragma once
#include "shim.h"
#include <optional>
#include <torch/csrc/autograd/custom_function.h>

namespace acc {
// The bias a C caller passed, or none for null.
inline std::optional<at::Tensor> optional_bias(acc_tensor bias) {
  return bias != nullptr ? std::optional<at::Tensor>(*bias) : std::nullopt;
}

// Keeps in `ctx` whether there is a bias and its dtype, for bias_grad.
inline void keep_bias_dtype(torch::autograd::AutogradContext* ctx, const std::optional<at::Tensor>& bias) {
  ctx->saved_data["bias_dtype"] = bias ? static_cast<int64_t>(bias->scalar_type()) : int64_t{-1};
}

// The bias's gradient from the output's gradient `g` (rows of outputs), when there is a bias
// and it needs one, else undefined. Only tensors given have an input edge: the bias's is index 2,
// after the input's and the weight's.
inline at::Tensor bias_grad(torch::autograd::AutogradContext* ctx, const at::Tensor& g) {
  const auto dtype = ctx->saved_data["bias_dtype"].toInt();
  if (dtype < 0 || !ctx->needs_input_grad(2)) return at::Tensor();
  return sum_rows_as(g, static_cast<at::ScalarType>(dtype));
}
}  // namespace acc
