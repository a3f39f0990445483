// A Linear layer's matmuls in fp8 with per-tensor scaling (mixedPrecision "fp8", as torchao's
// float8 training with tensorwise scales): forward casts the input and the weight to
// float8_e4m3fn, backward casts the output gradient to float8_e5m2, and libtorch's _scaled_mm
// multiplies them with float32 accumulation. Each scale is the power of two that brings an
// amax to at most the format's largest value: the weight's own (dynamic scaling), and for the
// input and the output gradient the largest of their last 16 calls' (delayed scaling, below),
// computed on the device (no host sync, capturable in a CUDA graph); a power of two is exact
// in every dtype, so scaling loses nothing before the cast. Backward saves the fp8 input's and
// weight's transposes (the layouts its matmuls take), not the input; on a GPU the CUDA side
// quantizes each matrix and writes its transpose in one pass (shim-cuda/fp8_quantize.cpp).
#include "linear_bias.h"
#include "shim.h"
#include <torch/csrc/autograd/custom_function.h>
#include <unordered_map>

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr double E4M3_MAX = 448.0;
constexpr double E5M2_MAX = 57344.0;

// Each fp8 Linear's input, weight and output gradient have an amax history: the largest
// magnitudes of their last AMAX_HISTORY calls, newest first (0 where there was none), then the
// current call's, then the largest of the first AMAX_HISTORY. As in Transformer Engine's delayed scaling (history length 16), a call
// scales by the largest in the history and records its own amax for the calls after it;
// values beyond the format's range saturate to its largest value. The first call of each has
// no history and scales by its own amax (dynamic scaling).
constexpr int64_t AMAX_HISTORY = 16;

struct History {
  // float32 [AMAX_HISTORY + 3] on the tensors' device: the history as described above
  // (AMAX_HISTORY + 2 entries, what the kernels and checkpoints see), then the amax the last
  // checkpointed forward scaled by (see Pass).
  at::Tensor amax;
  at::Tensor seen;  // CPU int64 [1]: 1 once a call has recorded an amax (backward flips it)
};
constexpr int64_t CURRENT = AMAX_HISTORY, LARGEST = AMAX_HISTORY + 1, USED = AMAX_HISTORY + 2;

History new_history(const at::Device& device) {
  return {at::zeros({AMAX_HISTORY + 3}, at::TensorOptions().dtype(at::kFloat).device(device)),
          at::zeros({1}, at::kLong)};
}

// Activation checkpointing runs a module's forward twice: without gradients, then again in
// backward (ts/activation-checkpointing.ts says which through acc_fp8_pass). The second run
// must compute what the first did: the first keeps the amax it scaled by, and the second
// scales by it and records nothing, so the histories also advance once per step.
enum class Pass { normal = 0, checkpointed = 1, recompute = 2 };
thread_local Pass pass = Pass::normal;

// Moves the current call's amax to the front, shifting the rest by one, and stores their largest.
void roll(const at::Tensor& history) {
  auto shifted = at::cat({history.narrow(0, CURRENT, 1), history.narrow(0, 0, AMAX_HISTORY - 1)});
  history.narrow(0, 0, AMAX_HISTORY).copy_(shifted);
  history.narrow(0, CURRENT, 1).zero_();
  history.narrow(0, LARGEST, 1).copy_(shifted.max().reshape({1}));
}

// `t` (a matrix) in `dtype` with its scale, and its transpose when `transpose` (the
// column-major copy that backward's matmuls take), by its own amax, or by `history`'s (see
// above) when one is given. The CUDA side's kernels where they apply, else ATen's operations,
// which compute the same values.
// With `gelu` ("none" or "tanh", as ATen's gelu takes) the quantized matrix is t's GELU, in t's dtype.
acc::Fp8Quantized quantize(const at::Tensor& t, at::ScalarType dtype, double max, bool transpose, History* history,
                           const std::string& gelu = "") {
  acc::Fp8Quantized q;
  const Pass now = history != nullptr ? pass : Pass::normal;
  const bool recompute = now == Pass::recompute;
  const bool delayed = history != nullptr && (recompute || history->seen.item<int64_t>() > 0);
  const auto amaxes = history != nullptr ? history->amax : at::Tensor();
  if (now == Pass::checkpointed && delayed) amaxes[USED].copy_(amaxes[LARGEST]);
  bool done = false;
  if (!recompute) {
    if (history != nullptr) history->seen.fill_(1);
    const auto* kernels = acc::cuda_kernels();
    const int activation = gelu.empty() ? 0 : gelu == "tanh" ? 2 : 1;
    const auto kept = history != nullptr ? amaxes.narrow(0, 0, AMAX_HISTORY + 2) : at::Tensor();
    done = t.is_cuda() && kernels != nullptr &&
           kernels->fp8_quantize(t, dtype, max, transpose, kept, delayed, activation, q);
  }
  if (!done) {
    const auto source = gelu.empty() ? t : at::gelu(t, gelu);
    auto own = at::linalg_vector_norm(source, INFINITY, at::OptionalIntArrayRef{}, false, at::kFloat);
    auto amax = recompute ? amaxes[USED] : delayed ? amaxes[LARGEST] : own;
    q.scale = at::exp2(at::ceil(at::log2(amax.clamp_min(1e-30).div(max))));
    // By a power of two the multiply is exact, so the only rounding is the cast; the clamp
    // saturates what a delayed scale leaves beyond the format's range (ATen's cast would not).
    // Row-major, as _scaled_mm wants its first operand (which a transposed gradient is not).
    q.data = source.mul(q.scale.reciprocal()).clamp_(-max, max).to(dtype, false, false, at::MemoryFormat::Contiguous);
    if (transpose) q.data_t = q.data.t().contiguous();
    if (history != nullptr && !recompute) {
      amaxes.narrow(0, CURRENT, 1).copy_(own.reshape({1}));
      roll(amaxes);
    }
  }
  // A first call scaled by its own amax, now the history's newest entry.
  if (now == Pass::checkpointed && !delayed) amaxes[USED].copy_(amaxes[0]);
  return q;
}

// The amax histories of each fp8 Linear's input, weight and output gradient, by its weight (a weak
// reference, as the autocast cast cache keeps them); entries of freed weights are dropped.
struct LayerHistories {
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> owner;  // the weight
  History input, weight, grad;
};
thread_local std::unordered_map<const c10::TensorImpl*, LayerHistories> histories;

LayerHistories& histories_of(const at::Tensor& weight, const at::Device& device) {
  const auto* key = weight.unsafeGetTensorImpl();
  auto found = histories.find(key);
  // An entry left by a freed weight whose address a new one reuses is not its.
  if (found != histories.end() && found->second.owner.expired()) found = histories.end();
  if (found == histories.end()) {
    // Entries of freed weights are dropped when a new one is made, not on every call.
    for (auto it = histories.begin(); it != histories.end();) {
      it = it->second.owner.expired() ? histories.erase(it) : std::next(it);
    }
    found = histories
                .emplace(key, LayerHistories{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(
                                                 weight.getIntrusivePtr()),
                                             new_history(device), new_history(device), new_history(device)})
                .first;
  }
  // A model moved to another device takes its histories along.
  for (History* h : {&found->second.input, &found->second.weight, &found->second.grad}) {
    if (h->amax.device() != device) h->amax = h->amax.to(device);
  }
  return found->second;
}

// _scaled_mm with cuBLASLt's layout contract checked on every device (the CPU would accept
// any layout, so the tests hold the GPU's): `a` row-major, `b` column-major.
at::Tensor scaled_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a, const at::Tensor& scale_b,
                     at::ScalarType out_dtype, bool fast_accum = false,
                     const std::optional<at::Tensor>& bias = std::nullopt) {
  TORCH_CHECK(a.is_contiguous() && b.t().is_contiguous(), "fp8 matmul operands must be row-major and column-major");
  return at::_scaled_mm(a, b, scale_a, scale_b, bias, std::nullopt, out_dtype, fast_accum);
}

// `gelu` empty: input @ weight^T + bias; else linear(gelu(input, gelu), weight, bias), whose
// GELU is applied while quantizing (its output is never stored) and recomputed in backward
// from the input.
struct Fp8Linear : torch::autograd::Function<Fp8Linear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const std::string& gelu, bool grad_enabled) {
    const auto out_dtype = acc::compute_dtype(input);  // the layer's output dtype
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto sizes = input.sizes().vec();
    // Backward takes the input's transpose for the weight's gradient, the weight's for the input's.
    auto& layer = histories_of(weight, input.device());
    auto x = quantize(input.reshape({-1, weight.size(1)}), at::kFloat8_e4m3fn, E4M3_MAX,
                      grad_enabled && weight.requires_grad(), &layer.input, gelu);
    auto w = quantize(weight, at::kFloat8_e4m3fn, E4M3_MAX, grad_enabled && input.requires_grad(), &layer.weight);
    // Not saved variables: backward updates the gradient's history in place.
    ctx->saved_data["grad_amax"] = layer.grad.amax;
    ctx->saved_data["grad_seen"] = layer.grad.seen;
    // cuBLASLt adds a bf16 bias to the float32 accumulator before rounding (_scaled_mm takes
    // no other); for another output dtype the bias is added to the output.
    const bool bias_inside = bias && out_dtype == at::kBFloat16;
    // weight is [out, in] row-major, so its transpose is the column-major [in, out] operand.
    auto out = scaled_mm(x.data, w.data.t(), x.scale, w.scale, out_dtype, /*fast_accum=*/true,
                         bias_inside ? std::optional<at::Tensor>(bias->to(at::kBFloat16)) : std::nullopt);
    if (bias && !bias_inside) out.add_(bias->to(out_dtype));
    const bool recompute = !gelu.empty() && input.requires_grad();
    ctx->save_for_backward({x.data_t, x.scale, w.data_t, w.scale, recompute ? input : at::Tensor()});
    ctx->saved_data["gelu"] = gelu;
    ctx->saved_data["input_sizes"] = sizes;
    ctx->saved_data["input_dtype"] = static_cast<int64_t>(input.scalar_type());
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    acc::keep_bias_dtype(ctx, bias);
    sizes.back() = weight.size(0);
    // Not a view (an in-place op on a custom Function's view output is refused).
    return at::_unsafe_view(out, sizes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // backward may run inside autocast
    auto saved = ctx->get_saved_variables();
    // x_t: the (activated) input's [in, rows] transpose; w_t: the weight's [in, out] transpose.
    const auto &x_t = saved[0], &x_scale = saved[1], &w_t = saved[2], &w_scale = saved[3], &input = saved[4];
    auto g = grad_outputs[0].reshape({-1, grad_outputs[0].size(-1)});
    History history{ctx->saved_data["grad_amax"].toTensor(), ctx->saved_data["grad_seen"].toTensor()};
    auto g8 = quantize(g, at::kFloat8_e5m2, E5M2_MAX, ctx->needs_input_grad(1), &history);
    auto dtype = [&](const char* key) { return static_cast<at::ScalarType>(ctx->saved_data[key].toInt()); };
    at::Tensor grad_input, grad_weight;
    if (ctx->needs_input_grad(0)) {
      grad_input = scaled_mm(g8.data, w_t.t(), g8.scale, w_scale, dtype("input_dtype"))
                       .view(ctx->saved_data["input_sizes"].toIntVector());
      const auto gelu = ctx->saved_data["gelu"].toStringRef();
      if (!gelu.empty()) grad_input = at::gelu_backward(grad_input, input, gelu);
    }
    if (ctx->needs_input_grad(1)) {
      grad_weight = scaled_mm(g8.data_t, x_t.t(), g8.scale, x_scale, dtype("weight_dtype"));
    }
    // The bias's gradient from the unquantized output gradient, summed in float32.
    return {grad_input, grad_weight, acc::bias_grad(ctx, g), at::Tensor(), at::Tensor()};
  }
};
}  // namespace

// `input @ weight^T + bias` through fp8 matmuls, of the input's GELU when `gelu` ("none" or
// "tanh") is not null; `bias` may be null. The caller checks that every matmul dimension is a
// multiple of 16 (rows of input, in and out features).
extern "C" int acc_fp8_linear(acc_tensor input, acc_tensor weight, acc_tensor bias, const char* gelu,
                              acc_tensor* out) {
  ACC_PROTECT({
    // The transposes backward takes are made only when gradients are being recorded.
    *out = new at::Tensor(
        Fp8Linear::apply(*input, *weight, acc::optional_bias(bias), std::string(gelu != nullptr ? gelu : ""), at::GradMode::is_enabled()));
  })
}

// The columns of an fp8 state (acc_fp8_state): the one place their number is defined.
extern "C" int64_t acc_fp8_state_columns() { return AMAX_HISTORY + 3; }

// For checkpoints: the amax histories of the fp8 Linear whose weight is `weight`, as a CPU
// float32 [3, AMAX_HISTORY + 3] tensor, a row each for its input, weight and output gradient
// (the history as kept above, then 1 if it has recorded an amax, else 0); [0] when it has none.
extern "C" int acc_fp8_state(acc_tensor weight, acc_tensor* out) {
  ACC_PROTECT({
    auto found = histories.find(weight->unsafeGetTensorImpl());
    if (found == histories.end() || found->second.owner.expired()) {
      *out = new at::Tensor(at::empty({0}, at::kFloat));
    } else {
      std::vector<at::Tensor> rows;
      for (const History* h : {&found->second.input, &found->second.weight, &found->second.grad}) {
        rows.push_back(at::cat({h->amax.narrow(0, 0, AMAX_HISTORY + 2).cpu(), h->seen.to(at::kFloat)}));
      }
      *out = new at::Tensor(at::stack(rows));
    }
  })
}

// Restores what acc_fp8_state returned for `weight` (the histories then live on its device);
// an empty `state` forgets its histories (its next call scales by its own amax).
extern "C" int acc_set_fp8_state(acc_tensor weight, acc_tensor state) {
  ACC_PROTECT({
    if (state->numel() == 0) {
      histories.erase(weight->unsafeGetTensorImpl());
      return 0;
    }
    TORCH_CHECK(state->dim() == 2 && state->size(0) == 3 && state->size(1) == AMAX_HISTORY + 3,
                "an fp8 state has shape [3, ", AMAX_HISTORY + 3, "], not ", state->sizes());
    auto& layer = histories_of(*weight, weight->device());
    const auto values = state->to(at::kFloat);
    History* rows[] = {&layer.input, &layer.weight, &layer.grad};
    for (int64_t i = 0; i < 3; ++i) {
      rows[i]->amax.narrow(0, 0, AMAX_HISTORY + 2).copy_(values[i].narrow(0, 0, AMAX_HISTORY + 2));
      rows[i]->seen.fill_(values[i][AMAX_HISTORY + 2].item<float>() > 0 ? 1 : 0);
    }
  })
}

// Says what the forward passes that follow are for activation checkpointing (0 a plain one, 1
// the first, gradient-free pass of a checkpointed module, 2 its recomputation; see Pass);
// returns what it was, to be restored after.
extern "C" int acc_fp8_pass(int next, int* previous) {
  ACC_PROTECT({
    TORCH_CHECK(next >= 0 && next <= 2, "fp8Pass: pass ", next, " is not 0, 1 or 2");
    *previous = static_cast<int>(pass);
    pass = static_cast<Pass>(next);
  })
}
