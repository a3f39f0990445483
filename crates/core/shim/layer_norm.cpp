// LayerNorm over the last dimension, alone (`layer_norm`) or after a residual add
// (`add_layer_norm`: sum = residual + x, normed = layer_norm(sum), as pre-LayerNorm
// transformers do between sublayers), through the CUDA side's kernels (shim-cuda/layer_norm.cpp)
// where they apply: a float32 input (and residual), weight and bias on a GPU, the residual
// stream of a transformer under autocast, which runs layer_norm in float32 anyway. Everything
// else is ATen's operations. Same values, up to the order of summation.
#include "shim.h"
#include <torch/csrc/autograd/custom_function.h>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The kernels read 16 bytes at once.
at::Tensor aligned(const at::Tensor& t) {
  auto c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}

// Outputs: {normed} for a plain LayerNorm of x; {sum, normed} when a residual is given. normed
// is in `out_dtype`.
struct CudaLayerNorm : torch::autograd::Function<CudaLayerNorm> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& residual,
                               const at::Tensor& weight, const at::Tensor& bias, double eps, int64_t out_dtype) {
    const int64_t cols = x.size(-1);
    const bool add = residual.has_value();
    const auto x2 = aligned(x).view({-1, cols});
    const auto r2 = add ? aligned(*residual).view({-1, cols}) : at::Tensor();
    // Allocated whole, so that what is returned is no view (an in-place op on a custom
    // Function's view output is refused) and what is saved is the output itself.
    auto sum = add ? at::empty(x.sizes(), x.options().dtype(at::kFloat)) : at::Tensor();
    auto normed = at::empty(x.sizes(), x.options().dtype(static_cast<at::ScalarType>(out_dtype)));
    auto y2 = normed.view({-1, cols});
    auto sum2 = add ? sum.view({-1, cols}) : at::Tensor();
    at::Tensor mean, rstd;
    const auto w = aligned(weight);
    acc::cuda_kernels()->layer_norm_forward(x2, r2, w, aligned(bias), eps, sum2, y2, mean, rstd);
    ctx->save_for_backward({add ? sum : x2, w, mean, rstd});
    // An output's gradient that nothing produced stays undefined (not zeros): when only the sum
    // is used, its gradient passes through, and the weight and the bias get none.
    ctx->set_materialize_grads(false);
    ctx->saved_data["add"] = add;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["sizes"] = x.sizes().vec();
    if (add) return {sum, normed};
    return {normed};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto &weight = saved[1], &mean = saved[2], &rstd = saved[3];
    const auto v = saved[0].view({-1, weight.size(0)});
    const bool add = ctx->saved_data["add"].toBool();
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const auto& dnormed = add ? grad_outputs[1] : grad_outputs[0];
    const at::Tensor dsum_given = add ? grad_outputs[0] : at::Tensor();
    if (!dnormed.defined()) {
      // Only the sum was used: its gradient passes to x and to the residual.
      return {dsum_given.defined() ? dsum_given.to(x_dtype) : at::Tensor(), dsum_given, at::Tensor(), at::Tensor(),
              at::Tensor(), at::Tensor()};
    }
    const auto dsum = dsum_given.defined() ? aligned(dsum_given).view({-1, v.size(1)}) : at::Tensor();
    const auto dy = aligned(dnormed).view({-1, v.size(1)});
    at::Tensor dv, dx, dweight, dbias;
    acc::cuda_kernels()->layer_norm_backward(dy, dsum, v, mean, rstd, weight, add, x_dtype, dv, dx, dweight, dbias);
    return {dx.view(sizes), add ? dv.view(sizes) : at::Tensor(), dweight, dbias, at::Tensor(), at::Tensor()};
  }
};

bool float_cuda(const at::Tensor& t) { return t.defined() && t.is_cuda() && t.scalar_type() == at::kFloat; }

// Whether the CUDA side's kernels take this LayerNorm: normalized over the last dimension only,
// float32 input (or a float32 residual and a float32 or bf16 x of its shape), weight and bias
// on the same GPU, and a width and dtypes they were written for.
bool kernels_apply(const at::Tensor& x, const at::Tensor* residual, at::IntArrayRef shape, const at::Tensor& weight,
                   const at::Tensor& bias, at::ScalarType out_dtype) {
  const auto* kernels = acc::cuda_kernels();
  if (kernels == nullptr || shape.size() != 1 || x.dim() < 1 || x.numel() == 0 || !x.is_cuda()) return false;
  if (!float_cuda(weight) || !float_cuda(bias)) return false;
  if (weight.device() != x.device() || bias.device() != x.device()) return false;
  if (weight.numel() != shape[0] || bias.numel() != shape[0] || x.size(-1) != shape[0]) return false;
  if (residual != nullptr && (!float_cuda(*residual) || residual->device() != x.device() || residual->sizes() != x.sizes())) {
    return false;
  }
  return kernels->layer_norm_fits(x, residual != nullptr, out_dtype);
}
}  // namespace

// `layer_norm(input, shape, weight, bias, eps)`; `weight` and `bias` may be null. Shapes are
// checked by the caller (nn::functional::layer_norm).
extern "C" int acc_layer_norm(acc_tensor input, const int64_t* shape, int shape_len, acc_tensor weight,
                              acc_tensor bias, double eps, acc_tensor* out) {
  ACC_PROTECT({
    const at::IntArrayRef dims(shape, static_cast<size_t>(shape_len));
    const at::Tensor w = weight != nullptr ? *weight : at::Tensor();
    const at::Tensor b = bias != nullptr ? *bias : at::Tensor();
    if (kernels_apply(*input, nullptr, dims, w, b, at::kFloat)) {
      *out = new at::Tensor(CudaLayerNorm::apply(*input, std::nullopt, w, b, eps, static_cast<int64_t>(at::kFloat))[0]);
    } else {
      *out = new at::Tensor(at::layer_norm(*input, dims, w, b, eps));
    }
  })
}

// `sum = residual + x; normed = layer_norm(sum, [width], weight, bias, eps)` over the last
// dimension; `weight` and `bias` may be null. Under autocast normed is in its dtype (the
// conversion the Linear it feeds would make); otherwise in sum's. Shapes are checked by the
// caller (nn::functional::add_layer_norm).
extern "C" int acc_add_layer_norm(acc_tensor residual, acc_tensor x, acc_tensor weight, acc_tensor bias, double eps,
                                  acc_tensor* out_sum, acc_tensor* out_normed) {
  ACC_PROTECT({
    const at::Tensor w = weight != nullptr ? *weight : at::Tensor();
    const at::Tensor b = bias != nullptr ? *bias : at::Tensor();
    const int64_t width = x->size(-1);
    const auto sum_dtype = at::result_type(*residual, *x);
    const auto out_dtype = acc::compute_dtype(residual->device().type(), sum_dtype);
    if (kernels_apply(*x, residual, {width}, w, b, out_dtype)) {
      auto outputs = CudaLayerNorm::apply(*x, *residual, w, b, eps, static_cast<int64_t>(out_dtype));
      *out_sum = new at::Tensor(outputs[0]);
      *out_normed = new at::Tensor(outputs[1]);
    } else {
      auto sum = at::add(*residual, *x);
      auto normed = at::layer_norm(sum, {width}, w, b, eps).to(out_dtype);
      *out_sum = new at::Tensor(sum);
      *out_normed = new at::Tensor(normed);
    }
  })
}
