// LayerNorm over the last dimension through the CUDA side's kernels (shim-cuda/layer_norm.cpp)
// where they apply: a float32 input, weight and bias on a GPU (the residual stream of a
// transformer under autocast, which runs layer_norm in float32 anyway). Everything else is
// ATen's layer_norm. Same values, up to the order of summation; backward is one pass over
// the output gradient and the input instead of ATen's two kernels.
#include "shim.h"
#include <torch/csrc/autograd/custom_function.h>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct CudaLayerNorm : torch::autograd::Function<CudaLayerNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& bias, double eps) {
    const auto x = input.contiguous().view({-1, input.size(-1)});
    at::Tensor y, mean, rstd;
    acc::cuda_kernels()->layer_norm_forward(x, weight, bias, eps, y, mean, rstd);
    ctx->save_for_backward({x, weight, mean, rstd});
    // Not a view (an in-place op on a custom Function's view output is refused).
    return at::_unsafe_view(y, input.sizes());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &mean = saved[2], &rstd = saved[3];
    auto dy = grad_outputs[0].contiguous().view({-1, x.size(1)});
    if (reinterpret_cast<uintptr_t>(dy.data_ptr()) % 16 != 0) dy = dy.clone();  // the kernels read 16 bytes at once
    at::Tensor dx, dweight, dbias;
    acc::cuda_kernels()->layer_norm_backward(dy, x, mean, rstd, weight, dx, dweight, dbias);
    return {dx.view(grad_outputs[0].sizes()), dweight, dbias, at::Tensor()};
  }
};

bool float_cuda(const at::Tensor& t) { return t.defined() && t.is_cuda() && t.scalar_type() == at::kFloat; }

// Whether the CUDA side's kernels take this LayerNorm: normalized over the last dimension only,
// float32 input, weight and bias on the same GPU, a width they were written for, and a 16-byte
// aligned input (a view at an odd offset is not).
bool kernels_apply(const at::Tensor& input, at::IntArrayRef shape, const at::Tensor& weight, const at::Tensor& bias) {
  const auto* kernels = acc::cuda_kernels();
  if (kernels == nullptr || shape.size() != 1 || input.dim() < 1 || input.numel() == 0) return false;
  if (!float_cuda(input) || !float_cuda(weight) || !float_cuda(bias)) return false;
  if (weight.device() != input.device() || bias.device() != input.device()) return false;
  if (!weight.is_contiguous() || !bias.is_contiguous() || weight.numel() != shape[0] || bias.numel() != shape[0]) {
    return false;
  }
  const auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  if (!aligned(weight) || !aligned(bias) || (input.is_contiguous() && !aligned(input))) return false;
  return input.size(-1) == shape[0] && kernels->layer_norm_fits(shape[0]);
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
    if (kernels_apply(*input, dims, w, b)) {
      *out = new at::Tensor(CudaLayerNorm::apply(*input, w, b, eps));
    } else {
      *out = new at::Tensor(at::layer_norm(*input, dims, w, b, eps));
    }
  })
}
