// Mixed precision's conversions of linear layers' parameters and inputs to the compute dtype
// (bf16 or fp16), made as few times and with as few launches as the layers allow:
// - cached_cast: once per autocast region, version and dtype, as autocast's own cache
//   (shim/linear.cpp's layers);
// - cast_ahead: several at once, one multi-tensor conversion per device, ahead of the layers
//   that will take them from that cache (a Sequential run layer by layer);
// - kept_casts: a chain's parameters and input, written on every call into buffers kept from
//   one call to the next (shim/linear_chain.cpp).
#include "shim.h"
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <algorithm>
#include <unordered_map>
#include <vector>

namespace {
using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

// The weights converted in the current autocast region, as autocast's own cache keeps its
// conversions: a weight used several times in one region (shared layers, a recurrent loop) is
// converted and kept for backward once. A layer's input converted ahead with its weights
// (nn::Sequential) waits here too, until the layer takes it. The cache is emptied when the
// outermost autocast region ends (shim/autocast.cpp), and an entry serves only the same
// tensor (a weak reference: a freed weight's address may be reused), at the same version
// (an in-place update makes it stale) and dtype.
struct CachedCast {
  WeakImpl weight;
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
  weight_casts.insert_or_assign(weight.unsafeGetTensorImpl(),
                                CachedCast{WeakImpl(weight.getIntrusivePtr()), weight._version(), cast.scalar_type(), cast});
}

// Writes `sources` (one device, one dtype) converted into `casts` (one dtype): on a GPU float32
// to bf16 in one launch of our own (shim-cuda/convert.cpp), else one multi-tensor copy.
void convert_into(const std::vector<at::Tensor>& sources, const std::vector<at::Tensor>& casts) {
  at::NoGradGuard no_grad;
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto* kernels = sources[0].is_cuda() ? acc::cuda_kernels() : nullptr;
  if (kernels == nullptr || !kernels->to_bf16(sources, casts)) at::_foreach_copy_(casts, sources);
}

// Room for `sources`' conversions to `dtype` (not yet written): the dense ones views of one
// allocation, each with its source's layout at an offset aligned to 128 bytes (as vectorised
// kernels and cuBLASLt prefer), the others apart.
std::vector<at::Tensor> allocated_group(const std::vector<at::Tensor>& sources, at::ScalarType dtype) {
  constexpr int64_t align = 64;
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (const auto& source : sources) {
    offsets.push_back(total);
    if (source.is_non_overlapping_and_dense()) total += (source.numel() + align - 1) / align * align;
  }
  // Below autograd's view tracking: the views do not keep `flat` alive, so that the group's
  // storage is held by the views alone (see `unshared`).
  at::AutoDispatchBelowADInplaceOrView plain;
  auto flat = at::empty({total}, sources[0].options().dtype(dtype));
  std::vector<at::Tensor> casts;
  for (size_t i = 0; i < sources.size(); ++i) {
    const auto& source = sources[i];
    casts.push_back(source.is_non_overlapping_and_dense()
                        ? flat.as_strided(source.sizes(), source.strides(), offsets[i])
                        : at::empty_like(source, source.options().dtype(dtype)));
  }
  return casts;
}

// `sources` (one device, one dtype) converted to `dtype` at once.
std::vector<at::Tensor> converted_group(const std::vector<at::Tensor>& sources, at::ScalarType dtype) {
  auto casts = allocated_group(sources, dtype);
  convert_into(sources, casts);
  return casts;
}

// A chain's conversions kept for its next call (acc::kept_casts): its parameters' (views of one
// allocation, in order) and its input's (an allocation of its own, or undefined), written on
// `stream`. Found by the chain's first converted parameter.
struct KeptGroup {
  std::vector<WeakImpl> params;
  std::vector<at::Tensor> casts;
  at::Tensor input;
  c10::Stream stream;
};
thread_local std::unordered_map<const c10::TensorImpl*, KeptGroup> kept_groups;

// Kept only for chains of up to 16 Mi parameters (32 MiB in bf16): small layers, whose step the
// host's work per operation bounds. Larger chains' conversions are made per call and freed
// after backward, as autocast's are.
constexpr int64_t KEEP_LIMIT = int64_t{1} << 24;

// Whether only the group holds `cast` and its storage (`views` tensors share that storage): no
// autograd graph saved it, so it can be written again.
bool unshared(const at::Tensor& cast, size_t views) {
  return cast.use_count() == 1 && cast.storage().use_count() == static_cast<size_t>(views);
}

// Whether `cast` can receive `source` converted to `dtype` in place: the same layout.
bool fits(const at::Tensor& cast, const at::Tensor& source, at::ScalarType dtype) {
  return cast.defined() && !cast.is_inference() && cast.scalar_type() == dtype && cast.device() == source.device() &&
         cast.sizes() == source.sizes() && cast.strides() == source.strides();
}

bool reusable(const KeptGroup& group, const std::vector<at::Tensor>& params, at::ScalarType dtype,
              const c10::Stream& stream) {
  if (group.stream != stream || group.params.size() != params.size()) return false;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& weak = group.params[i];
    if (weak.expired() || weak._unsafe_get_target() != params[i].unsafeGetTensorImpl() ||
        !fits(group.casts[i], params[i], dtype) || !unshared(group.casts[i], params.size())) {
      return false;
    }
  }
  return true;
}
}  // namespace

at::Tensor acc::converted(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype) return t;
  // On a GPU, a dense tensor through convert_into: float32 to bf16 is one launch of our own
  // kernel, less host work than ATen's conversion, the same rounding; for small tensors (a
  // chain's gradients), whose conversion the host's work bounds.
  if (!t.is_cuda() || !t.is_non_overlapping_and_dense()) return t.to(dtype);
  auto out = at::empty_like(t, t.options().dtype(dtype));
  convert_into({t}, {out});
  return out;
}

// Taken out of the cache: a region running many steps would otherwise keep each step's input.
at::Tensor acc::converted_input(const at::Tensor& input, at::ScalarType dtype) {
  if (input.scalar_type() == dtype) return input;
  auto found = find_cast(input, dtype);
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
  // conversion per group instead of one per tensor (on a GPU, one kernel launch instead of
  // several, in a step that may be bound by launching them).
  struct Group {
    at::Device device;
    at::ScalarType from, to;
    std::vector<at::Tensor> sources;
  };
  std::vector<Group> groups;
  for (const auto& tensor : tensors) {
    if (!tensor.defined()) continue;
    const auto dtype = compute_dtype(tensor);
    if (tensor.scalar_type() == dtype || cached(tensor, dtype) != nullptr) continue;
    auto group = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.device == tensor.device() && g.from == tensor.scalar_type() && g.to == dtype;
    });
    if (group == groups.end()) group = groups.insert(groups.end(), Group{tensor.device(), tensor.scalar_type(), dtype, {}});
    group->sources.push_back(tensor);
  }
  for (auto& group : groups) {
    auto casts = converted_group(group.sources, group.to);
    for (size_t i = 0; i < group.sources.size(); ++i) remember_cast(group.sources[i], casts[i]);
  }
}

std::vector<at::Tensor> acc::kept_casts(const std::vector<at::Tensor>& params, const at::Tensor& input,
                                        at::ScalarType dtype) {
  auto all = params;
  if (input.defined()) all.push_back(input);
  int64_t total = 0;
  for (const auto& t : all) total += t.numel();
  // Kept: dense parameters (views of one allocation); an input of any layout.
  const auto dense = [](const at::Tensor& p) { return p.is_non_overlapping_and_dense(); };
  const bool keep = !params.empty() && total <= KEEP_LIMIT && std::all_of(params.begin(), params.end(), dense);
  if (!keep) return converted_group(all, dtype);

  const auto device = params[0].device();
  const auto stream = c10::impl::VirtualGuardImpl(device.type()).getStream(device);
  // Dead chains' groups go at any chain's next call (a few groups: a few atomic reads).
  for (auto it = kept_groups.begin(); it != kept_groups.end();) {
    it = it->second.params[0].expired() ? kept_groups.erase(it) : std::next(it);
  }
  const auto key = params[0].unsafeGetTensorImpl();
  auto found = kept_groups.find(key);
  if (found == kept_groups.end() || !reusable(found->second, params, dtype, stream)) {
    // A new group: the chain's first call, new parameters, or the last conversions still held
    // by a graph not yet run backward.
    KeptGroup group{{}, allocated_group(params, dtype), at::Tensor(), stream};
    for (const auto& p : params) group.params.emplace_back(p.getIntrusivePtr());
    found = kept_groups.insert_or_assign(key, std::move(group)).first;
  }
  auto& group = found->second;
  // The input's conversion apart from the parameters', as its own allocation: a graph keeps it
  // (or a view of it) until backward, and the parameters' can be written again before that.
  if (input.defined() && !(fits(group.input, input, dtype) && unshared(group.input, 1))) {
    const auto options = input.options().dtype(dtype);
    group.input = input.is_non_overlapping_and_dense() ? at::empty_strided(input.sizes(), input.strides(), options)
                                                       : at::empty(input.sizes(), options);
  }
  auto casts = group.casts;
  if (input.defined()) casts.push_back(group.input);
  convert_into(all, casts);
  // Written in place: a holder the checks above could not see would then fail autograd's
  // version check in backward instead of reading the new values (our kernel bumps no version).
  for (auto& cast : casts) cast.unsafeGetTensorImpl()->bump_version();
  return casts;
}

void acc::clear_linear_casts() { weight_casts.clear(); }

// Releases the chains' kept conversions (before the allocator's cache is emptied).
extern "C" void acc_forget_kept_casts() noexcept { kept_groups.clear(); }

// Converts `tensors` (n weights, biases and inputs) for the current autocast region at once, for
// the linear layers that will use them (acc::cast_ahead).
extern "C" int acc_cast_ahead(const acc_tensor* tensors, int64_t n) {
  ACC_PROTECT({
    acc::cast_ahead(acc::to_list(tensors, n));
  })
}
