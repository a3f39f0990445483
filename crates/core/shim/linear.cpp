// `input @ weight^T + bias` under autocast, with the weight's and the bias's gradients made in
// their own dtype (float32) by the matmul and the row sum themselves. Autocast's way makes them
// in the compute dtype (bf16) and converts them: for every Linear, every step, a bf16 gradient
// written, read back and written again as float32, one more kernel each. Forward is autocast's:
// input, weight and bias converted to the compute dtype, the same matmul, the same output; the
// gradients differ only in not being rounded to bf16 on the way (on every device).
#include "linear_bias.h"
#include "shim.h"
#include <torch/csrc/autograd/custom_function.h>
#include <vector>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct AutocastLinear : torch::autograd::Function<AutocastLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
    const auto dtype = acc::compute_dtype(input);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto x = acc::converted_input(input, dtype);
    auto w = acc::cached_cast(weight, dtype);
    auto out = at::linear(x, w, bias ? std::optional<at::Tensor>(acc::cached_cast(*bias, dtype)) : std::nullopt);
    // What the matmul's backward keeps under autocast too: the input in the compute dtype for
    // the weight's gradient, the weight in the compute dtype for the input's, each only if needed.
    ctx->save_for_backward({weight.requires_grad() ? x : at::Tensor(), input.requires_grad() ? w : at::Tensor()});
    ctx->saved_data["input_sizes"] = input.sizes().vec();
    ctx->saved_data["compute_dtype"] = static_cast<int64_t>(dtype);
    ctx->saved_data["input_dtype"] = static_cast<int64_t>(input.scalar_type());
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    acc::keep_bias_dtype(ctx, bias);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // Backward may run inside an autocast region (on the CPU, on the calling thread); its
    // float32 matmul must stay float32.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1];
    auto dtype = [&](const char* key) { return static_cast<at::ScalarType>(ctx->saved_data[key].toInt()); };
    const auto sizes = ctx->saved_data["input_sizes"].toIntVector();
    auto g = grad_outputs[0].to(dtype("compute_dtype"));
    g = g.reshape({-1, g.size(-1)});
    at::Tensor grad_input, grad_weight;
    if (ctx->needs_input_grad(0)) grad_input = g.mm(w).view(sizes).to(dtype("input_dtype"));
    if (ctx->needs_input_grad(1)) grad_weight = acc::mm_as(g.t(), x.reshape({-1, sizes.back()}), dtype("weight_dtype"));
    return {grad_input, grad_weight, acc::bias_grad(ctx, g)};
  }
};
}  // namespace

namespace {
bool half_precision(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf; }
}  // namespace

at::Tensor acc::mm_as(const at::Tensor& a, const at::Tensor& b, at::ScalarType dtype) {
  if (a.scalar_type() == dtype) return at::mm(a, b);
  // cuBLAS writes float32 straight from its float32 accumulator (mm's out_dtype, GPU only,
  // for bf16 and fp16 operands).
  if (a.is_cuda() && dtype == at::kFloat && half_precision(a)) return at::mm(a, b, dtype);
  // Elsewhere the same numbers from the operands converted: bf16 and fp16 values, and their
  // products, are exact in float32, whose sums are then the accumulator's.
  return at::mm(a.to(dtype), b.to(dtype));
}

at::Tensor acc::planned_mm_as(const at::Tensor& a, const at::Tensor& b, at::ScalarType dtype, at::Tensor* a_row_sums) {
  if (const auto* kernels = a.is_cuda() ? acc::cuda_kernels() : nullptr) {
    at::Tensor out;
    if (kernels->matmul(a, b, at::Tensor(), false, dtype, out, a_row_sums)) {
      // cuBLASLt may have no algorithm with the row sums for a shape: the product came alone.
      if (a_row_sums != nullptr && !a_row_sums->defined()) *a_row_sums = sum_rows_as(a.t(), dtype);
      return out;
    }
  }
  if (a_row_sums != nullptr) *a_row_sums = sum_rows_as(a.t(), dtype);
  return mm_as(a, b, dtype);
}

at::Tensor acc::linear_as(const at::Tensor& h, const at::Tensor& wt, const at::Tensor& bias, bool relu,
                          at::ScalarType dtype) {
  if (const auto* kernels = h.is_cuda() ? acc::cuda_kernels() : nullptr) {
    at::Tensor out;
    if (kernels->matmul(h, wt, bias, relu, dtype, out, nullptr)) return out;
  }
  const auto b = bias.defined() && bias.scalar_type() != h.scalar_type() ? bias.to(h.scalar_type()) : bias;
  at::Tensor out;
  if (b.defined()) {
    out = relu ? at::_addmm_activation(b, h, wt) : at::addmm(b, h, wt);
  } else {
    out = at::mm(h, wt);
    if (relu) out.relu_();
  }
  return out.scalar_type() == dtype ? out : out.to(dtype);
}

at::Tensor acc::sum_rows_as(const at::Tensor& g, at::ScalarType dtype) {
  // A gradient of 4 Mi elements (8 MiB in bf16) takes about as long to read as a kernel takes
  // to launch: below that the sum's one launch is faster than the product's two.
  constexpr int64_t large = int64_t{1} << 22;
  if (g.is_cuda() && dtype == at::kFloat && half_precision(g) && g.dim() == 2 && g.numel() >= large) {
    // On a GPU as a matrix-vector product, g^T @ 1: cuBLAS reads g at the memory's speed,
    // where ATen's sum over rows ran at about 40 % of it on an H200. Products by 1 are
    // exact, and cuBLAS accumulates in float32, as the sum does.
    return at::mm(g.t(), at::ones({g.size(0), 1}, g.options()), dtype).view({-1});
  }
  // The sum accumulates in float32 in any case; this stores it without rounding to g's dtype.
  return g.sum(0, false, dtype);
}

// `linear(input, weight, bias)` under autocast (see above); `bias` may be null. Shapes and
// dtypes are checked by the caller (nn::functional::linear).
extern "C" int acc_autocast_linear(acc_tensor input, acc_tensor weight, acc_tensor bias, acc_tensor* out) {
  ACC_PROTECT({
    *out = new at::Tensor(AutocastLinear::apply(*input, *weight, acc::optional_bias(bias)));
  })
}
