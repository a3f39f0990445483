// Linear + cross-entropy computed in chunks of rows: the [rows, classes] logits exist one
// chunk at a time (in float32), and the gradients with respect to the input and the weight
// are computed during the forward pass, so backward only scales them by the incoming
// gradient. For a language model's head this never materialises the whole logits or their
// gradient (Liger Kernel's fused linear cross-entropy, on ATen operations).
#include "shim.h"
#include <torch/csrc/autograd/custom_function.h>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LinearCrossEntropy : torch::autograd::Function<LinearCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& targets,
                            int64_t ignore_index, int64_t chunk_rows) {
    TORCH_CHECK(weight.dim() == 2, "weight must be [classes, features], got ", weight.sizes());
    TORCH_CHECK(input.size(-1) == weight.size(1), "input has ", input.size(-1), " features but weight expects ", weight.size(1));
    auto x = input.reshape({-1, input.size(-1)});
    auto t = targets.reshape({-1}).to(at::kLong);
    TORCH_CHECK(t.size(0) == x.size(0), "targets hold ", t.size(0), " values for ", x.size(0), " rows of input");
    const int64_t rows = x.size(0);
    auto kept = t.ne(ignore_index);
    auto count = kept.sum().clamp_min(1).to(at::kFloat);
    auto loss = at::zeros({}, x.options().dtype(at::kFloat));
    const bool want_input = input.requires_grad(), want_weight = weight.requires_grad();
    auto grad_input = want_input ? at::empty_like(x) : at::Tensor();
    auto grad_weight = want_weight ? at::zeros_like(weight, weight.options().dtype(at::kFloat)) : at::Tensor();
    for (int64_t start = 0; start < rows; start += chunk_rows) {
      const int64_t n = std::min(chunk_rows, rows - start);
      auto xc = x.narrow(0, start, n);
      auto tc = t.narrow(0, start, n);
      auto mask = kept.narrow(0, start, n).unsqueeze(1);
      auto safe = tc.clamp_min(0).unsqueeze(1);
      // Log-probabilities in float32 (ATen reads float16 logits on a GPU without a separate copy).
      auto log_probs = at::log_softmax(at::matmul(xc, weight.t()), 1, at::kFloat);
      loss.sub_((log_probs.gather(1, safe) * mask).sum());
      if (!want_input && !want_weight) continue;
      // d(loss)/d(logits) = (softmax - one_hot) / count on kept rows, in place of the log-probabilities.
      auto grad = log_probs.exp_();
      grad.scatter_add_(1, safe, at::full({n, 1}, -1.0, grad.options()));
      grad.mul_(mask.to(at::kFloat).div(count));
      auto grad_c = grad.to(xc.scalar_type());
      if (want_input) grad_input.narrow(0, start, n).copy_(at::matmul(grad_c, weight.to(grad_c.scalar_type())));
      if (want_weight) grad_weight.add_(at::matmul(grad_c.t(), xc).to(at::kFloat));
    }
    ctx->save_for_backward({grad_input, grad_weight});
    ctx->saved_data["input_sizes"] = input.sizes().vec();
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return loss.div(count);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto& g = grad_outputs[0];
    at::Tensor grad_input, grad_weight;
    if (saved[0].defined()) grad_input = saved[0].mul(g.to(saved[0].scalar_type())).reshape(ctx->saved_data["input_sizes"].toIntVector());
    if (saved[1].defined()) {
      grad_weight = saved[1].mul(g).to(static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt()));
    }
    return {grad_input, grad_weight, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
}  // namespace

// The mean cross-entropy of `input @ weight^T` against class indices `targets`, rows equal
// to `ignore_index` left out, computed `chunk_rows` rows at a time.
extern "C" int acc_linear_cross_entropy(acc_tensor input, acc_tensor weight, acc_tensor targets, int64_t ignore_index,
                                        int64_t chunk_rows, acc_tensor* out) {
  ACC_PROTECT({
    TORCH_CHECK(chunk_rows > 0, "chunkRows must be positive, got ", chunk_rows);
    *out = new at::Tensor(LinearCrossEntropy::apply(*input, *weight, *targets, ignore_index, chunk_rows));
  })
}
