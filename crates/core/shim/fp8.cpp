// A Linear layer's matmuls in fp8 with dynamic per-tensor scaling (mixedPrecision "fp8", as
// torchao's float8 training with tensorwise scales): forward casts the input and the weight to
// float8_e4m3fn, backward casts the output gradient to float8_e5m2, and libtorch's _scaled_mm
// multiplies them with float32 accumulation. Each scale is the power of two that brings the
// tensor's largest magnitude to at most the format's largest value, computed on the device from
// the tensor itself (no host sync, capturable in a CUDA graph); a power of two is exact in every
// dtype, so scaling loses nothing before the cast. Backward saves the fp8 input, not the input.
#include "shim.h"
#include <torch/csrc/autograd/custom_function.h>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr double E4M3_MAX = 448.0;
constexpr double E5M2_MAX = 57344.0;

struct Scaled {
  at::Tensor data;   // fp8
  at::Tensor scale;  // float32, 0-dim: data * scale is the original
};

Scaled quantize(const at::Tensor& t, at::ScalarType dtype, double max) {
  auto amax = at::linalg_vector_norm(t, INFINITY, at::OptionalIntArrayRef{}, false, at::kFloat).clamp_min(1e-30);
  auto scale = at::exp2(at::ceil(at::log2(amax.div(max))));
  // One pass: the multiply stores straight into a row-major fp8 tensor (as _scaled_mm wants
  // its first operand, which a transposed input or gradient is not); by a power of two it is
  // exact, so the only rounding is the cast.
  auto data = at::empty(t.sizes(), t.options().dtype(dtype));
  at::mul_out(data, t, scale.reciprocal());
  return {data, scale};
}

// The same matrix in column-major layout, as _scaled_mm wants its second operand.
at::Tensor column_major(const at::Tensor& m) { return m.t().contiguous().t(); }

// _scaled_mm with cuBLASLt's layout contract checked on every device (the CPU would accept
// any layout, so the tests hold the GPU's): `a` row-major, `b` column-major.
at::Tensor scaled_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a, const at::Tensor& scale_b,
                     at::ScalarType out_dtype, bool fast_accum = false) {
  TORCH_CHECK(a.is_contiguous() && b.t().is_contiguous(), "fp8 matmul operands must be row-major and column-major");
  return at::_scaled_mm(a, b, scale_a, scale_b, std::nullopt, std::nullopt, out_dtype, fast_accum);
}

struct Fp8Linear : torch::autograd::Function<Fp8Linear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight) {
    const auto out_dtype = acc::compute_dtype(input);  // the layer's output dtype
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto sizes = input.sizes().vec();
    auto x = quantize(input.reshape({-1, weight.size(1)}), at::kFloat8_e4m3fn, E4M3_MAX);
    auto w = quantize(weight, at::kFloat8_e4m3fn, E4M3_MAX);
    // weight is [out, in] row-major, so its transpose is the column-major [in, out] operand.
    auto out = scaled_mm(x.data, w.data.t(), x.scale, w.scale, out_dtype, /*fast_accum=*/true);
    ctx->save_for_backward({x.data, x.scale, w.data, w.scale});
    ctx->saved_data["input_sizes"] = sizes;
    ctx->saved_data["input_dtype"] = static_cast<int64_t>(input.scalar_type());
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    sizes.back() = weight.size(0);
    // Not a view (an in-place op on a custom Function's view output is refused).
    return at::_unsafe_view(out, sizes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // backward may run inside autocast
    auto saved = ctx->get_saved_variables();
    const auto &x8 = saved[0], &x_scale = saved[1], &w8 = saved[2], &w_scale = saved[3];
    auto g = grad_outputs[0].reshape({-1, w8.size(0)});
    auto g8 = quantize(g, at::kFloat8_e5m2, E5M2_MAX);
    auto dtype = [&](const char* key) { return static_cast<at::ScalarType>(ctx->saved_data[key].toInt()); };
    at::Tensor grad_input, grad_weight;
    if (ctx->needs_input_grad(0)) {
      grad_input = scaled_mm(g8.data, column_major(w8), g8.scale, w_scale, dtype("input_dtype"))
                       .view(ctx->saved_data["input_sizes"].toIntVector());
    }
    if (ctx->needs_input_grad(1)) {
      grad_weight = scaled_mm(g8.data.t().contiguous(), column_major(x8), g8.scale, x_scale, dtype("weight_dtype"));
    }
    return {grad_input, grad_weight};
  }
};
}  // namespace

// `input @ weight^T + bias` through fp8 matmuls; `bias` may be null. The caller checks that
// every matmul dimension is a multiple of 16 (rows of input, in and out features). The bias is
// added outside the autograd function (a C++ Function cannot take an undefined tensor), in
// the output's dtype.
extern "C" int acc_fp8_linear(acc_tensor input, acc_tensor weight, acc_tensor bias, acc_tensor* out) {
  ACC_PROTECT({
    auto result = Fp8Linear::apply(*input, *weight);
    if (bias != nullptr) result = result.add(bias->to(result.scalar_type()));
    *out = new at::Tensor(std::move(result));
  })
}
