// A chain of linear layers, each maybe followed by a ReLU (a native nn.Sequential of Linear and
// ReLU layers), as one autograd node with a hand-written backward. Per step that is one node
// to record and to run instead of two or three per layer (the matmul's, the weight's
// transpose's, the ReLU's). On a GPU each product is one cuBLASLt call with a plan kept per
// shape (shim-cuda/matmul.cpp): the bias and the ReLU in its epilogue, a bias's gradient with
// its weight's. A step of small layers on a GPU is bound by the host's work per operation,
// which this cuts.
//
// The numbers are the layers': the same matmuls in the same dtype (autocast's compute dtype, or
// the parameters' without it), the same ReLU, and, as shim/linear.cpp, the parameters'
// gradients made in their own dtype by the matmul and the row sum. Parameters and input are
// converted on each call, at once, into buffers kept from call to call (shim/casts.cpp). One
// difference: under bf16 or fp16 on a GPU, a small last layer's backward
// (shim-cuda/head_backward.cpp) reads its float32 gradient as it is, where the layers would
// round it to the low precision first.
#include "shim.h"
#include <torch/csrc/autograd/custom_function.h>
#include <vector>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A layer's flags: a ReLU follows it; it has a bias.
constexpr int64_t RELU = 1, BIAS = 2;

struct LinearChain : torch::autograd::Function<LinearChain> {
  // Layer i multiplies by weights[i]^T, adds its bias if flags[i] & BIAS (biases holds those
  // layers' biases, in order), then applies a ReLU if flags[i] & RELU. The parameters share
  // one dtype.
  // With `float32_output`, a half-precision output is returned as float32 (mixed precision's
  // model wrapper asks for that), written so by the last product on a GPU, converted inside
  // this node elsewhere.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, at::TensorList weights,
                            at::TensorList biases, const std::vector<int64_t>& flags, bool float32_output) {
    const auto dtype = acc::compute_dtype(input);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto sizes = input.sizes().vec();
    const size_t n = weights.size();
    // A half-precision chain asked for a float32 output writes it from its last product on a
    // GPU (cuBLASLt's float32 accumulator, with the float32 bias), not rounded to half first.
    const bool half = dtype == at::kBFloat16 || dtype == at::kHalf;
    const bool float32_last = float32_output && half && input.is_cuda();
    // The parameters and the input as the products take them: those not in `dtype` converted,
    // all at once (acc::kept_casts), except a float32 bias that the last product reads as it is.
    std::vector<at::Tensor> w(weights.begin(), weights.end()), b(n), sources;
    std::vector<at::Tensor*> targets;
    const at::Tensor* bias = biases.data();
    auto convert = [&](at::Tensor& t) {
      if (t.defined() && t.scalar_type() != dtype) {
        sources.push_back(t);
        targets.push_back(&t);
      }
    };
    for (size_t i = 0; i < n; ++i) {
      convert(w[i]);
      if ((flags[i] & BIAS) == 0) continue;
      b[i] = *bias++;
      const bool bias_as_is = i + 1 == n && float32_last && b[i].scalar_type() == at::kFloat;
      if (!bias_as_is) convert(b[i]);
    }
    const bool convert_input = input.scalar_type() != dtype;
    auto casts = sources.empty() && !convert_input
                     ? std::vector<at::Tensor>{}
                     : acc::kept_casts(sources, convert_input ? input : at::Tensor(), dtype);
    for (size_t i = 0; i < targets.size(); ++i) *targets[i] = casts[i];
    // Each layer's input (the chain's, then every layer's output), then the weights as used.
    std::vector<at::Tensor> saved{(convert_input ? casts.back() : input).reshape({-1, sizes.back()})};
    for (size_t i = 0; i < n; ++i) {
      saved.push_back(acc::linear_as(saved[i], w[i].t(), b[i], (flags[i] & RELU) != 0,
                                     i + 1 == n && float32_last ? at::kFloat : dtype));
    }
    auto out = saved.back();
    if (sizes.size() != 2) {
      auto out_sizes = sizes;
      out_sizes.back() = out.size(-1);
      out = at::_unsafe_view(out, out_sizes);
    }
    // The output itself is kept where its ReLU's backward needs it (so that an in-place change
    // of it is an error in backward, as for a ReLU on its own), and nothing otherwise.
    saved.back() = (flags.back() & RELU) != 0 ? out : at::Tensor();
    if (float32_output && (out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kHalf)) out = out.to(at::kFloat);
    saved.insert(saved.end(), w.begin(), w.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["flags"] = flags;
    ctx->saved_data["input_sizes"] = sizes;
    ctx->saved_data["input_dtype"] = static_cast<int64_t>(input.scalar_type());
    ctx->saved_data["param_dtype"] = static_cast<int64_t>(weights[0].scalar_type());
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // Backward may run inside an autocast region (on the CPU, on the calling thread); its
    // matmuls must stay in the forward's dtypes.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto saved = ctx->get_saved_variables();
    const auto flags = ctx->saved_data["flags"].toIntVector();
    const auto n = flags.size();
    const at::Tensor* h = saved.data();          // h[i]: layer i's input; h[i + 1]: its output
    const at::Tensor* w = saved.data() + n + 1;  // w[i]: layer i's weight as used
    const auto param_dtype = static_cast<at::ScalarType>(ctx->saved_data["param_dtype"].toInt());
    // Input edges and gradient slots: the input, the n weights, the biases there are, then
    // the flags and float32_output (not tensors, no edges).
    std::vector<size_t> bias_slot(n, 0);
    size_t slots = 1 + n;
    for (size_t i = 0; i < n; ++i) {
      if ((flags[i] & BIAS) != 0) bias_slot[i] = slots++;
    }
    variable_list grads(slots + 2);
    auto needs = [&](size_t slot) { return slot != 0 && ctx->needs_input_grad(slot); };
    // Whether the gradient must go on below layer i: to an earlier layer's parameter or the input.
    auto needed_below = [&](size_t layer) {
      if (ctx->needs_input_grad(0)) return true;
      for (size_t j = 0; j < layer; ++j) {
        if (needs(1 + j) || needs(bias_slot[j])) return true;
      }
      return false;
    };
    // The output's gradient in its dtype (float32 when the chain wrote its output so): a ReLU
    // after the last layer masks it as it is, then it goes on in the chain's dtype.
    const auto dtype = h[0].scalar_type();
    auto g = grad_outputs[0].reshape({-1, grad_outputs[0].size(-1)});
    size_t i = n;
    // A bf16 or fp16 chain's small last layer (no ReLU after it) from a float32 gradient: its
    // backward in one launch, the ReLU below's mask included (shim-cuda/head_backward.cpp).
    bool masked_below = false;
    const auto* kernels = g.is_cuda() ? acc::cuda_kernels() : nullptr;
    const bool half = dtype == at::kBFloat16 || dtype == at::kHalf;
    if (kernels != nullptr && half && g.scalar_type() == at::kFloat && param_dtype == at::kFloat &&
        (flags[n - 1] & RELU) == 0) {
      const bool relu_below = n > 1 && (flags[n - 2] & RELU) != 0;
      const bool input = needed_below(n - 1), weight = needs(n), bias = needs(bias_slot[n - 1]);
      at::Tensor dh, dw, db;
      if (kernels->head_backward(g, h[n - 1], w[n - 1], relu_below, input, weight, bias, dh, dw, db)) {
        if (weight) grads[n] = dw;
        if (bias) grads[bias_slot[n - 1]] = db;
        if (!input) return grads;
        g = dh;
        masked_below = relu_below;
        i = n - 1;
      }
    }
    for (; i-- > 0;) {
      if ((flags[i] & RELU) != 0 && !masked_below) {
        g = at::threshold_backward(acc::converted(g, h[i + 1].scalar_type()), h[i + 1].reshape(g.sizes()), 0);
      }
      masked_below = false;
      g = acc::converted(g, dtype);
      // The weight's gradient and the bias's in one product where cuBLASLt can (its row sums).
      const bool weight = needs(1 + i), bias = needs(bias_slot[i]);
      if (weight) grads[1 + i] = acc::planned_mm_as(g.t(), h[i], param_dtype, bias ? &grads[bias_slot[i]] : nullptr);
      if (bias && !weight) grads[bias_slot[i]] = acc::sum_rows_as(g, param_dtype);
      if (!needed_below(i)) break;
      g = acc::planned_mm_as(g, w[i], dtype);
    }
    if (ctx->needs_input_grad(0)) {
      const auto input_dtype = static_cast<at::ScalarType>(ctx->saved_data["input_dtype"].toInt());
      grads[0] = g.view(ctx->saved_data["input_sizes"].toIntVector()).to(input_dtype);
    }
    return grads;
  }
};
}  // namespace

// The chain of `n` linear layers (see above): weights[i], biases[i] (null: none), relu[i] != 0
// where a ReLU follows layer i; a half-precision output as float32 if `float32_output`. Shapes
// and dtypes are checked by the caller (nn::Sequential).
extern "C" int acc_linear_chain(acc_tensor input, const acc_tensor* weights, const acc_tensor* biases,
                                const int32_t* relu, int64_t n, int32_t float32_output, acc_tensor* out) {
  ACC_PROTECT({
    std::vector<at::Tensor> w, b;
    std::vector<int64_t> flags;
    for (int64_t i = 0; i < n; ++i) {
      w.push_back(*weights[i]);
      if (biases[i] != nullptr) b.push_back(*biases[i]);
      flags.push_back((relu[i] != 0 ? RELU : 0) | (biases[i] != nullptr ? BIAS : 0));
    }
    *out = new at::Tensor(LinearChain::apply(*input, at::TensorList(w), at::TensorList(b), flags, float32_output != 0));
  })
}
