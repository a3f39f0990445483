// Optimizer kernels tch does not bind: libtorch's fused Adam/AdamW/SGD steps and the
// foreach ops behind gradient clipping and zeroing, ported from torch/optim and
// torch/nn/utils/clip_grad.py. Rust passes lists as arrays of at::Tensor pointers.
#include "shim.h"
#include <c10/core/GradMode.h>
#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

namespace {

std::optional<at::Tensor> optional_on(acc_tensor t, const at::Device& device) {
  if (t == nullptr) return std::nullopt;
  return t->to(device);
}

// Indices of `keys` grouped by (device, dtype) in first-seen order, like
// Optimizer._group_tensors_by_device_and_dtype: fused and foreach kernels need one of each per call.
std::vector<std::vector<size_t>> group_by_device_and_dtype(const std::vector<at::Tensor>& keys) {
  std::vector<std::pair<std::pair<at::Device, at::ScalarType>, std::vector<size_t>>> groups;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto key = std::make_pair(keys[i].device(), keys[i].scalar_type());
    auto found = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == key; });
    if (found == groups.end()) {
      groups.push_back({key, {i}});
    } else {
      found->second.push_back(i);
    }
  }
  std::vector<std::vector<size_t>> out;
  for (auto& g : groups) out.push_back(std::move(g.second));
  return out;
}

std::vector<at::Tensor> pick(const std::vector<at::Tensor>& list, const std::vector<size_t>& indices) {
  std::vector<at::Tensor> out;
  if (list.empty()) return out;
  out.reserve(indices.size());
  for (size_t i : indices) out.push_back(list[i]);
  return out;
}

}  // namespace

// One Adam (decoupled = 0) or AdamW (decoupled = 1) step over params with grads, as
// torch.optim.adam._fused_adam: steps are incremented here, and given back when found_inf is set.
// max_exp_avg_sqs may be null when amsgrad is off; grad_scale and found_inf may be null.
// lr_tensor, when not null, is read for the learning rate when the kernel runs (a captured step).
extern "C" int acc_fused_adam(const acc_tensor* params, const acc_tensor* grads, const acc_tensor* exp_avgs,
                              const acc_tensor* exp_avg_sqs, const acc_tensor* max_exp_avg_sqs,
                              const acc_tensor* steps, int64_t n, double lr, double beta1, double beta2,
                              double weight_decay, double eps, int amsgrad, int maximize, int decoupled,
                              acc_tensor grad_scale, acc_tensor found_inf, acc_tensor lr_tensor) {
  ACC_PROTECT({
    c10::NoGradGuard no_grad;
    auto all_params = acc::to_list(params, n);
    auto all_grads = acc::to_list(grads, n);
    auto all_exp_avgs = acc::to_list(exp_avgs, n);
    auto all_exp_avg_sqs = acc::to_list(exp_avg_sqs, n);
    auto all_max = amsgrad ? acc::to_list(max_exp_avg_sqs, n) : std::vector<at::Tensor>{};
    auto all_steps = acc::to_list(steps, n);
    for (const auto& indices : group_by_device_and_dtype(all_params)) {
      auto device = all_params[indices[0]].device();
      auto device_steps = pick(all_steps, indices);
      auto scale = optional_on(grad_scale, device);
      auto inf = optional_on(found_inf, device);
      at::_foreach_add_(device_steps, 1);
      auto device_params = pick(all_params, indices);
      auto device_grads = pick(all_grads, indices);
      auto device_exp_avgs = pick(all_exp_avgs, indices);
      auto device_exp_avg_sqs = pick(all_exp_avg_sqs, indices);
      auto device_max = pick(all_max, indices);
      if (lr_tensor != nullptr) {
        auto rate = lr_tensor->to(device);
        if (decoupled) {
          at::_fused_adamw_(device_params, device_grads, device_exp_avgs, device_exp_avg_sqs, device_max,
                            device_steps, rate, beta1, beta2, weight_decay, eps, amsgrad != 0, maximize != 0, scale, inf);
        } else {
          at::_fused_adam_(device_params, device_grads, device_exp_avgs, device_exp_avg_sqs, device_max,
                           device_steps, rate, beta1, beta2, weight_decay, eps, amsgrad != 0, maximize != 0, scale, inf);
        }
      } else if (decoupled) {
        at::_fused_adamw_(device_params, device_grads, device_exp_avgs, device_exp_avg_sqs, device_max, device_steps,
                          lr, beta1, beta2, weight_decay, eps, amsgrad != 0, maximize != 0, scale, inf);
      } else {
        at::_fused_adam_(device_params, device_grads, device_exp_avgs, device_exp_avg_sqs, device_max, device_steps,
                         lr, beta1, beta2, weight_decay, eps, amsgrad != 0, maximize != 0, scale, inf);
      }
      if (inf.has_value()) {
        at::_foreach_sub_(device_steps, std::vector<at::Tensor>(device_steps.size(), *inf));
      }
    }
  })
}

// One SGD step, as torch.optim.sgd._fused_sgd. momentum_buffers is null when momentum is 0;
// with is_first_step the kernel initialises the (uninitialised) buffers from the gradients.
extern "C" int acc_fused_sgd(const acc_tensor* params, const acc_tensor* grads, const acc_tensor* momentum_buffers,
                             int64_t n, double weight_decay, double momentum, double lr, double dampening,
                             int nesterov, int maximize, int is_first_step, acc_tensor grad_scale,
                             acc_tensor found_inf, acc_tensor lr_tensor) {
  ACC_PROTECT({
    c10::NoGradGuard no_grad;
    auto all_params = acc::to_list(params, n);
    auto all_grads = acc::to_list(grads, n);
    auto all_buffers = momentum_buffers ? acc::to_list(momentum_buffers, n) : std::vector<at::Tensor>{};
    for (const auto& indices : group_by_device_and_dtype(all_params)) {
      auto device = all_params[indices[0]].device();
      if (lr_tensor != nullptr) {
        at::_fused_sgd_(pick(all_params, indices), pick(all_grads, indices), pick(all_buffers, indices), weight_decay,
                        momentum, lr_tensor->to(device), dampening, nesterov != 0, maximize != 0, is_first_step != 0,
                        optional_on(grad_scale, device), optional_on(found_inf, device));
      } else {
        at::_fused_sgd_(pick(all_params, indices), pick(all_grads, indices), pick(all_buffers, indices), weight_decay,
                        momentum, lr, dampening, nesterov != 0, maximize != 0, is_first_step != 0,
                        optional_on(grad_scale, device), optional_on(found_inf, device));
      }
    }
  })
}

// Sets each defined gradient to none, or zeroes it in place (detached), as Optimizer.zero_grad.
extern "C" int acc_zero_grads(const acc_tensor* params, int64_t n, int set_to_none) {
  ACC_PROTECT({
    c10::NoGradGuard no_grad;
    std::vector<at::Tensor> grads;
    for (int64_t i = 0; i < n; ++i) {
      at::Tensor& grad = params[i]->mutable_grad();
      if (!grad.defined()) continue;
      if (set_to_none) {
        grad.reset();
        continue;
      }
      if (grad.grad_fn()) {
        grad.detach_();
      } else {
        grad.requires_grad_(false);
      }
      grads.push_back(grad);
    }
    for (const auto& indices : group_by_device_and_dtype(grads)) at::_foreach_zero_(pick(grads, indices));
  })
}

// The gradients of `params` that exist (parameters without one are skipped).
static std::vector<at::Tensor> defined_grads(const acc_tensor* params, int64_t n) {
  std::vector<at::Tensor> grads;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& grad = params[i]->grad();
    if (grad.defined()) grads.push_back(grad);
  }
  return grads;
}

// The total `norm_type` norm of the defined gradients of `params` (0 when there are none), on
// the first gradient's device, as torch.nn.utils.get_total_norm.
extern "C" int acc_total_grad_norm(const acc_tensor* params, int64_t n, double norm_type, acc_tensor* out) {
  ACC_PROTECT({
    c10::NoGradGuard no_grad;
    auto grads = defined_grads(params, n);
    if (grads.empty()) {
      *out = new at::Tensor(at::scalar_tensor(0.0, at::kFloat));
      return 0;
    }
    auto first_device = grads[0].device();
    std::vector<at::Tensor> norms;
    for (const auto& indices : group_by_device_and_dtype(grads)) {
      for (auto& norm : at::_foreach_norm(pick(grads, indices), norm_type)) norms.push_back(norm.to(first_device));
    }
    *out = new at::Tensor(at::linalg_vector_norm(at::stack(norms), norm_type));
  })
}

// Multiplies the defined gradients of `params` by min(max_norm / (total_norm + 1e-6), 1), as
// torch.nn.utils.clip_grads_with_norm_ (which scales even when the factor is 1).
extern "C" int acc_clip_grads_with_norm(const acc_tensor* params, int64_t n, double max_norm, acc_tensor total_norm) {
  ACC_PROTECT({
    c10::NoGradGuard no_grad;
    auto grads = defined_grads(params, n);
    if (grads.empty()) return 0;
    auto clip_coef = at::reciprocal(*total_norm + 1e-6) * max_norm;
    auto clamped = at::clamp_max(clip_coef, 1.0);
    for (const auto& indices : group_by_device_and_dtype(grads)) {
      at::_foreach_mul_(pick(grads, indices), clamped.to(grads[indices[0]].device()));
    }
  })
}

// Clamps the defined gradients of `params` into [-value, value], as torch.nn.utils.clip_grad_value_.
extern "C" int acc_clip_grad_value(const acc_tensor* params, int64_t n, double value) {
  ACC_PROTECT({
    c10::NoGradGuard no_grad;
    auto grads = defined_grads(params, n);
    for (const auto& indices : group_by_device_and_dtype(grads)) {
      auto group = pick(grads, indices);
      at::_foreach_clamp_min_(group, -value);
      at::_foreach_clamp_max_(group, value);
    }
  })
}

// The TensorImpl behind `t`: the identity that shallow clones of one parameter share.
extern "C" int acc_tensor_identity(acc_tensor t, uintptr_t* out) {
  ACC_PROTECT({ *out = reinterpret_cast<uintptr_t>(t->unsafeGetTensorImpl()); })
}
