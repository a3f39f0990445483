// `linear(gelu(input), weight, bias)` whose backward recomputes the GELU from `input` instead
// of keeping its output: a transformer MLP's hidden activation (4x the model's width per
// token) is then stored once, not twice. Recomputing costs one elementwise pass in backward.
// The operations and their dtypes are the ones the two separate calls run, under autocast
// too (the compute dtype is applied here, as autocast would), so results match them.
#include "linear_bias.h"
#include "shim.h"
#include <torch/csrc/autograd/custom_function.h>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct GeluLinear : torch::autograd::Function<GeluLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const std::string& approximate) {
    const auto dtype = acc::compute_dtype(input);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    // As the separate calls under autocast: the GELU in the input's dtype, the matmul in the
    // compute dtype.
    auto w = acc::cached_cast(weight, dtype);
    auto hidden = at::gelu(input, approximate).to(dtype);
    auto out = at::linear(hidden, w, bias ? std::optional<at::Tensor>(acc::cached_cast(*bias, dtype)) : std::nullopt);
    // w is the weight in the compute dtype, which the matmul's backward would keep too. An
    // input that needs no gradient is not needed at all: the hidden (in the compute dtype,
    // perhaps smaller than the input's) is kept instead, as the separate calls would.
    const bool recompute = input.requires_grad();
    ctx->save_for_backward({recompute ? input : hidden, w});
    ctx->saved_data["recompute"] = recompute;
    ctx->saved_data["approximate"] = approximate;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    acc::keep_bias_dtype(ctx, bias);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // As the separate calls' backward, which autocast does not touch (also when backward runs
    // inside an autocast region, on the CPU).
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto saved = ctx->get_saved_variables();
    const auto &input = saved[0], &w = saved[1];  // input, or the hidden (see forward)
    const auto approximate = ctx->saved_data["approximate"].toStringRef();
    auto dtype = [&](const char* key) { return static_cast<at::ScalarType>(ctx->saved_data[key].toInt()); };
    auto g = grad_outputs[0].to(w.scalar_type()).reshape({-1, w.size(0)});
    at::Tensor grad_input, grad_weight;
    const bool recompute = ctx->saved_data["recompute"].toBool();
    if (ctx->needs_input_grad(1)) {
      auto hidden = (recompute ? at::gelu(input, approximate).to(w.scalar_type()) : input).reshape({-1, w.size(1)});
      grad_weight = acc::mm_as(g.t(), hidden, dtype("weight_dtype"));
    }
    auto grad_bias = acc::bias_grad(ctx, g);
    if (recompute && ctx->needs_input_grad(0)) {
      grad_input = at::gelu_backward(g.mm(w).view(input.sizes()).to(input.scalar_type()), input, approximate);
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor()};
  }
};
}  // namespace

// `linear(gelu(input, approximate), weight, bias)`; `bias` may be null. Shapes and names are
// checked by the caller (nn::functional::gelu_linear).
extern "C" int acc_gelu_linear(acc_tensor input, acc_tensor weight, acc_tensor bias, const char* approximate,
                               acc_tensor* out) {
  ACC_PROTECT({
    *out = new at::Tensor(GeluLinear::apply(*input, *weight, acc::optional_bias(bias), std::string(approximate)));
  })
}
