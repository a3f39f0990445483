// crossEntropy of a GPU's [rows, classes] logits against class indices as one autograd node:
// one kernel (shim-cuda/cross_entropy.cpp) writes each row's loss and, when backward may come,
// the gradient softmax - one_hot, so backward is one multiply. ATen's runs a log-softmax and a
// negative log-likelihood forward, and backward two nodes, the second zeroing its gradient
// before scattering into it; for a classifier's small head that host work is most of the loss's
// time. The values are ATen's, computed in float32; where a target is neither a class nor the
// ignore index, the loss and that row's gradient are NaN (ATen stops the GPU with an assertion).
#include "shim.h"
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ATen's reduction numbers (at::Reduction).
constexpr int64_t NONE = 0;

// The kernel's results for the logits: `loss` (float32: the rows' losses, or their sum or
// mean), `scale` (for a sum or a mean) and `grad` (softmax - one_hot, or undefined). Handed to
// the autograd function as one value, not as its inputs (they have no gradient, and an input
// may not be undefined).
struct Results {
  at::Tensor loss, scale, grad;
};

struct CrossEntropy : torch::autograd::Function<CrossEntropy> {
  // Returns the loss in `dtype`; backward scales the gradient.
  // `logits` is an input for its edge only: the kernel has read them.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const Results& results, int64_t reduction,
                            at::ScalarType dtype) {
    // Only the kernel's own results are kept, not the logits (as ATen's log-softmax keeps its
    // output): the logits may change in place after the loss. Freed after backward (unless the
    // graph is retained).
    ctx->save_for_backward({results.grad, results.scale});
    ctx->saved_data["reduction"] = reduction;
    return results.loss.to(dtype);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // A backward that builds a graph (second-order gradients, which the library's backward
    // never asks for) would need the logits.
    TORCH_CHECK(!at::GradMode::is_enabled(), "crossEntropy: the GPU kernel's loss has no second-order gradient");
    auto saved = ctx->get_saved_variables();
    const auto reduction = ctx->saved_data["reduction"].toInt();
    const auto& g = grad_outputs[0];
    at::Tensor grad_logits;
    if (const auto& grad = saved[0]; grad.defined()) {
      const auto& scale = saved[1];  // undefined for reduction "none"
      const auto* kernels = acc::cuda_kernels();
      auto g32 = g.to(at::kFloat);
      if (kernels == nullptr || !kernels->cross_entropy_scale(grad, g32, scale, grad_logits)) {
        auto factor = reduction == NONE ? g32.unsqueeze(1) : g32.mul(scale);
        grad_logits = grad.mul(factor).to(grad.scalar_type());
      }
    }
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
}  // namespace

// `cross_entropy_loss(logits, targets, reduction, ignore_index)` for 2-d bf16 or float32 CUDA
// logits and int64 targets on their device, through the kernel; *out stays null where the
// kernel does not take them (the caller then uses ATen's).
extern "C" int acc_cross_entropy(acc_tensor logits, acc_tensor targets, int64_t reduction, int64_t ignore_index,
                                 acc_tensor* out) {
  ACC_PROTECT({
    *out = nullptr;
    const auto* kernels = acc::cuda_kernels();
    if (kernels == nullptr || reduction < 0 || reduction > 2) return 0;
    const auto& x = *logits;
    // Under autocast ATen computes cross-entropy in float32 and returns a float32 loss.
    const auto dtype = at::autocast::is_autocast_enabled(at::kCUDA) ? at::kFloat : x.scalar_type();
    const bool want_grad = at::GradMode::is_enabled() && x.requires_grad();
    auto grad = want_grad ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::Tensor();
    Results results{at::Tensor(), at::Tensor(), grad};
    if (!kernels->cross_entropy_rows(x, *targets, ignore_index, grad, reduction, results.loss, results.scale)) return 0;
    *out = new at::Tensor(CrossEntropy::apply(x, results, reduction, dtype));
  })
}
