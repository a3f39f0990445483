// Linear + cross-entropy computed in chunks of rows: the [rows, classes] logits exist one
// chunk at a time, in the compute dtype (bfloat16 under bf16 autocast), and the gradients
// with respect to the input and the weight are computed during the forward pass, so backward
// only scales them by the incoming gradient. For a language model's head this never
// materialises the whole logits or their gradient (Liger Kernel's fused linear cross-entropy,
// on ATen operations). Per chunk: the logits matmul, one softmax, a row sum, one row maximum and the two
// gradient matmuls; no elementwise pass over the chunk in float32. On a GPU one kernel
// (shim-cuda/cross_entropy.cpp) replaces the reductions and the softmax where it applies.
#include "shim.h"
#include <cmath>
#include <torch/csrc/autograd/custom_function.h>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// grad_weight (float32) += a^T @ b, with a and b in the compute dtype.
void accumulate_weight_grad(at::Tensor& grad_weight, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == grad_weight.scalar_type()) {
    grad_weight.addmm_(a.t(), b);
  } else if (a.is_cuda()) {
    at::addmm_out(grad_weight, grad_weight, a.t(), b, grad_weight.scalar_type());  // float32 accumulation in cuBLAS
  } else {
    grad_weight.add_(at::mm(a.t(), b).to(grad_weight.scalar_type()));
  }
}

// at::Reduction's number for a sum.
constexpr int64_t SUM = 2;

struct LinearCrossEntropy : torch::autograd::Function<LinearCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& targets,
                            int64_t ignore_index, int64_t chunk_rows, bool grad_mode) {
    // Dtypes are checked by the caller (nn::functional::linear_cross_entropy); shapes and values here.
    TORCH_CHECK(input.dim() >= 1, "input must have a features dimension, got a 0-d tensor");
    TORCH_CHECK(weight.dim() == 2, "weight must be [classes, features], got ", weight.sizes());
    TORCH_CHECK(input.size(-1) == weight.size(1), "input has ", input.size(-1), " features but weight expects ", weight.size(1));
    TORCH_CHECK(targets.sizes() == input.sizes().slice(0, input.dim() - 1), "targets of shape ", targets.sizes(),
                " do not fit input of shape ", input.sizes(), " (they need its shape without the features dimension)");
    // The head's matmuls run in autocast's dtype (bf16), or the input's.
    const auto dtype = acc::compute_dtype(input);
    const int64_t classes = weight.size(0);
    auto t = targets.reshape({-1}).to(at::kLong);
    auto kept = t.ne(ignore_index);
    // A target that is neither a class nor ignoreIndex: an Error where checking is free (on the
    // CPU); on a GPU, where checking would wait for it, a NaN loss and NaN gradients instead.
    auto invalid = kept.logical_and(t.lt(0).logical_or(t.ge(classes)));
    if (t.is_cpu() && invalid.any().item<bool>()) {
      TORCH_CHECK(false, "targets hold ", t.masked_select(invalid)[0].item<int64_t>(), ", which is neither a class in [0, ", classes,
                  ") nor the ignoreIndex ", ignore_index);
    }
    // Explicit dtypes from here on: autocast would run the softmax in float32.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto accumulate = dtype == at::kDouble ? at::kDouble : at::kFloat;
    auto x = input.reshape({-1, input.size(-1)}).to(dtype);
    auto w = weight.to(dtype);
    const int64_t rows = x.size(0);
    // The mean over no rows is NaN, as crossEntropy's; the gradients are then 0.
    auto count = kept.sum().to(accumulate);
    auto loss = at::zeros({}, x.options().dtype(accumulate));
    // Gradients are computed here only when backward may come (not under noGrad).
    const bool want_input = grad_mode && input.requires_grad(), want_weight = grad_mode && weight.requires_grad();
    auto grad_input = want_input ? at::empty({rows, x.size(1)}, input.options()) : at::Tensor();
    auto grad_weight = want_weight ? at::zeros_like(weight, weight.options().dtype(accumulate)) : at::Tensor();
    const bool want_grad = want_input || want_weight;
    const auto* kernels = acc::cuda_kernels();
    for (int64_t start = 0; start < rows; start += chunk_rows) {
      const int64_t n = std::min(chunk_rows, rows - start);
      auto xc = x.narrow(0, start, n);
      auto logits = at::mm(xc, w.t());
      at::Tensor chunk_loss, unused;
      if (kernels != nullptr && logits.is_cuda() &&
          kernels->cross_entropy_rows(logits, t.narrow(0, start, n), ignore_index, want_grad ? logits : at::Tensor(),
                                      SUM, chunk_loss, unused)) {
        // One kernel (shim-cuda/cross_entropy.cpp): the rows' summed loss (float32), and the
        // gradient written over the logits, its rows already zero where ignored and NaN where invalid.
        loss.add_(chunk_loss);
        if (!want_grad) continue;
        if (want_input) grad_input.narrow(0, start, n).copy_(at::mm(logits, w));
        if (want_weight) accumulate_weight_grad(grad_weight, logits, xc);
        continue;
      }
      auto keep = kept.narrow(0, start, n).unsqueeze(1);
      auto bad = invalid.narrow(0, start, n).unsqueeze(1);
      auto safe = t.narrow(0, start, n).clamp(0, classes - 1).unsqueeze(1);
      // Each row's loss is logsumexp - logit[target] = (max - logit[target]) + log(sum / max
      // probability), from reductions over the (bf16) probabilities in float32: the largest
      // probability is at least 1/classes (no underflow), and a confident row's loss, about
      // the sum of the other probabilities, is resolved to float32's absolute precision (as
      // the plain head's) rather than bf16's.
      auto [largest, argmax] = at::max(logits, 1, true);
      auto probs = at::_softmax(logits, 1, false);
      auto total = probs.sum({1}, true, accumulate);
      // The largest probability is the largest logit's (softmax and rounding keep the order):
      // a gather, not a second pass over the chunk.
      auto top = probs.gather(1, argmax).to(accumulate);
      auto row_loss = (largest.to(accumulate) - logits.gather(1, safe).to(accumulate)).add_(total.sub(top).div_(top).log1p_());
      loss.add_(row_loss.masked_fill_(keep.logical_not(), 0).masked_fill_(bad, NAN).sum());
      if (!want_grad) continue;
      logits = at::Tensor();
      // d(loss)/d(logits) = softmax - one_hot on kept rows, the target's entry being minus the
      // sum of the others (probability - sum, in float32, not probability - 1 in bf16); the
      // division by the count is applied once, to the finished gradients.
      auto grad = probs.scatter_(1, safe, probs.gather(1, safe).to(accumulate).sub_(total).to(dtype));
      auto mask = keep.to(dtype).masked_fill_(bad, NAN);
      if (want_input) grad_input.narrow(0, start, n).copy_(at::mm(grad, w).mul_(mask));
      if (want_weight) accumulate_weight_grad(grad_weight, grad, xc.mul(mask));
    }
    if (want_input) grad_input.div_(count.clamp_min(1));
    if (want_weight) grad_weight.div_(count.clamp_min(1));
    ctx->save_for_backward({grad_input, grad_weight});
    ctx->saved_data["input_sizes"] = input.sizes().vec();
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return loss.div(count);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // The saved gradients are constants: a graph of this backward would miss second-order terms.
    TORCH_CHECK(!at::GradMode::is_enabled(), "second-order gradients (a backward that records a graph) are not supported");
    auto saved = ctx->get_saved_variables();
    const auto& g = grad_outputs[0];
    at::Tensor grad_input, grad_weight;
    if (saved[0].defined()) grad_input = saved[0].mul(g.to(saved[0].scalar_type())).reshape(ctx->saved_data["input_sizes"].toIntVector());
    if (saved[1].defined()) {
      grad_weight = saved[1].mul(g).to(static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt()));
    }
    return {grad_input, grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
}  // namespace

// The mean cross-entropy of `input @ weight^T` against class indices `targets`, rows equal
// to `ignore_index` left out, computed `chunk_rows` rows at a time.
extern "C" int acc_linear_cross_entropy(acc_tensor input, acc_tensor weight, acc_tensor targets, int64_t ignore_index,
                                        int64_t chunk_rows, acc_tensor* out) {
  ACC_PROTECT({
    TORCH_CHECK(chunk_rows > 0, "chunkRows must be positive, got ", chunk_rows);
    const bool grad_mode = at::GradMode::is_enabled();
    *out = new at::Tensor(LinearCrossEntropy::apply(*input, *weight, *targets, ignore_index, chunk_rows, grad_mode));
  })
}
