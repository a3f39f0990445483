// `input @ weight^T + bias` under autocast, with the weight's and the bias's gradients made in
// their own dtype (float32) by the matmul and the row sum themselves. Autocast's way makes them
// in the compute dtype (bf16) and converts them: for every Linear, every step, a bf16 gradient
// written, read back and written again as float32, one more kernel each. Forward is autocast's:
// input, weight and bias converted to the compute dtype, the same matmul, the same output; the
// gradients differ only in not being rounded to bf16 on the way (on every device).
#include "linear_bias.h"
#include "shim.h"
#include <torch/csrc/autograd/custom_function.h>
#include <algorithm>
#include <unordered_map>
#include <vector>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The weights this file converted in the current autocast region, as autocast's own cache
// keeps its conversions: a weight used several times in one region (shared layers, a
// recurrent loop) is converted and kept for backward once. A chain's input converted ahead with
// its weights (nn::Sequential) waits here too, until its first layer takes it. The cache is
// emptied when the
// outermost autocast region ends (shim/autocast.cpp), and an entry serves only the same
// tensor (a weak reference: a freed weight's address may be reused), at the same version
// (an in-place update makes it stale) and dtype.
struct CachedCast {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> weight;
  int64_t version;
  at::ScalarType dtype;
  at::Tensor cast;
};
thread_local std::unordered_map<const c10::TensorImpl*, CachedCast> weight_casts;

// The entry of a valid cached conversion of `weight` to `dtype`, or the end.
auto find_cast(const at::Tensor& weight, at::ScalarType dtype) {
  auto found = weight_casts.find(weight.unsafeGetTensorImpl());
  if (found == weight_casts.end()) return found;
  const auto& entry = found->second;
  const bool valid = !entry.weight.expired() && entry.version == weight._version() && entry.dtype == dtype;
  return valid ? found : weight_casts.end();
}

const at::Tensor* cached(const at::Tensor& weight, at::ScalarType dtype) {
  auto found = find_cast(weight, dtype);
  return found == weight_casts.end() ? nullptr : &found->second.cast;
}

void remember_cast(const at::Tensor& weight, const at::Tensor& cast) {
  weight_casts.insert_or_assign(
      weight.unsafeGetTensorImpl(),
      CachedCast{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(weight.getIntrusivePtr()),
                 weight._version(), cast.scalar_type(), cast});
}
}  // namespace

at::Tensor acc::converted(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype) return t;
  // On a GPU float32 to bf16 in one launch of our own kernel (shim-cuda/convert.cpp): less host
  // work than ATen's conversion, the same rounding; for small tensors (a chain's gradients),
  // whose conversion the host's work bounds.
  if (dtype == at::kBFloat16 && t.is_cuda() && t.is_contiguous()) {
    if (const auto* kernels = acc::cuda_kernels()) {
      auto out = at::empty(t.sizes(), t.options().dtype(dtype));
      if (kernels->to_bf16({t}, {out})) return out;
    }
  }
  return t.to(dtype);
}

// Taken out of the cache: a region running many steps would otherwise keep each step's input.
at::Tensor acc::converted_input(const at::Tensor& input, at::ScalarType dtype) {
  if (input.scalar_type() == dtype) return input;
  auto found = find_cast(input, dtype);
  // ATen's conversion: for a large input (a transformer's activations) its vectorised copy runs
  // faster on the GPU than our one-element-a-thread kernel.
  if (found == weight_casts.end()) return input.to(dtype);
  auto cast = std::move(found->second.cast);
  weight_casts.erase(found);
  return cast;
}

at::Tensor acc::cached_cast(const at::Tensor& tensor, at::ScalarType dtype) {
  if (tensor.scalar_type() == dtype) return tensor;
  if (const auto* cast = cached(tensor, dtype)) return *cast;
  auto cast = tensor.to(dtype);
  remember_cast(tensor, cast);
  return cast;
}

void acc::cast_ahead(const std::vector<at::Tensor>& tensors) {
  // The conversions cached_cast would make, grouped by device and dtypes: one multi-tensor
  // copy per group instead of one conversion per tensor (on a GPU, one kernel launch instead
  // of several, in a step that may be bound by launching them).
  struct Group {
    at::Device device;
    at::ScalarType from, to;
    std::vector<at::Tensor> sources, casts;
  };
  std::vector<Group> groups;
  for (const auto& tensor : tensors) {
    if (!tensor.defined()) continue;
    const auto dtype = compute_dtype(tensor);
    if (tensor.scalar_type() == dtype || cached(tensor, dtype) != nullptr) continue;
    auto group = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.device == tensor.device() && g.from == tensor.scalar_type() && g.to == dtype;
    });
    if (group == groups.end()) group = groups.insert(groups.end(), Group{tensor.device(), tensor.scalar_type(), dtype, {}, {}});
    group->sources.push_back(tensor);
  }
  at::NoGradGuard no_grad;
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  for (auto& group : groups) {
    // One allocation for the group's dense conversions, each a view with its source's layout at
    // an offset aligned to 128 bytes (as vectorised kernels and cuBLASLt prefer); others apart.
    constexpr int64_t align = 64;
    std::vector<int64_t> offsets;
    int64_t total = 0;
    for (const auto& source : group.sources) {
      offsets.push_back(total);
      if (source.is_non_overlapping_and_dense()) total += (source.numel() + align - 1) / align * align;
    }
    auto flat = at::empty({total}, group.sources[0].options().dtype(group.to));
    for (size_t i = 0; i < group.sources.size(); ++i) {
      const auto& source = group.sources[i];
      group.casts.push_back(source.is_non_overlapping_and_dense()
                                ? flat.as_strided(source.sizes(), source.strides(), offsets[i])
                                : at::empty_like(source, source.options().dtype(group.to)));
    }
    // On a GPU, float32 to bf16 in one launch of our own (shim-cuda/convert.cpp).
    const auto* kernels = group.device.is_cuda() ? acc::cuda_kernels() : nullptr;
    if (kernels == nullptr || !kernels->to_bf16(group.sources, group.casts)) at::_foreach_copy_(group.casts, group.sources);
    for (size_t i = 0; i < group.sources.size(); ++i) remember_cast(group.sources[i], group.casts[i]);
  }
}

namespace {
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

void acc::clear_linear_casts() { weight_casts.clear(); }

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

// Converts `tensors` (n weights, biases and inputs) for the current autocast region at once, for
// the linear layers that will use them (acc::cast_ahead).
extern "C" int acc_cast_ahead(const acc_tensor* tensors, int64_t n) {
  ACC_PROTECT({
    acc::cast_ahead(acc::to_list(tensors, n));
  })
}

// `linear(input, weight, bias)` under autocast (see above); `bias` may be null. Shapes and
// dtypes are checked by the caller (nn::functional::linear).
extern "C" int acc_autocast_linear(acc_tensor input, acc_tensor weight, acc_tensor bias, acc_tensor* out) {
  ACC_PROTECT({
    *out = new at::Tensor(AutocastLinear::apply(*input, *weight, acc::optional_bias(bias)));
  })
}
