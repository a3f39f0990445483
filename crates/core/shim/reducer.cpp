// Data-parallel gradient averaging that overlaps backward, as PyTorch's DDP reducer:
// parameters are grouped into buckets in reverse order; a hook after each gradient
// accumulation counts down its bucket, and full buckets are all-reduced (asynchronously,
// strictly in bucket order so every rank issues the same sequence) while backward goes on.
#include "shim.h"
#include "c10d_group.h"
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <memory>
#include <mutex>

namespace {
struct Bucket {
  std::vector<size_t> params;  // indices into Reducer::params
  size_t pending = 0;
  at::Tensor flat;
  c10::intrusive_ptr<c10d::Work> work;
};

struct Reducer {
  // Copies of the group's parts, so the reducer outlives a destroyed group safely.
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  bool blocking_wait;
  std::shared_ptr<AccArrivals> arrivals;
  std::vector<at::Tensor> params;
  std::vector<size_t> bucket_of;
  std::vector<Bucket> buckets;
  std::mutex mutex;
  bool enabled = false;
  // Gradients arrive over several backward passes (activation checkpointing): a parameter may
  // accumulate more than once, so nothing is launched before `finish`.
  bool deferred = false;
  size_t next_launch = 0;

  void reset() {
    for (auto& b : buckets) {
      b.pending = b.params.size();
      b.flat = at::Tensor();
      b.work.reset();
    }
    next_launch = 0;
  }

  // Flattens bucket `i`'s gradients (zeros where a parameter got none) and starts its all-reduce.
  void launch(size_t i) {
    auto& b = buckets[i];
    std::vector<at::Tensor> pieces;
    for (auto p : b.params) {
      const auto& grad = params[p].grad();
      pieces.push_back(grad.defined() ? grad.reshape(-1) : at::zeros({params[p].numel()}, params[p].options()));
    }
    auto flat = at::cat(pieces);
    if (flat.device() != params[b.params[0]].device()) flat = flat.to(params[b.params[0]].device());
    TORCH_CHECK(blocking_wait || flat.is_cuda(), "NCCL needs the parameters on the GPU");
    if (blocking_wait && flat.is_cuda()) flat = flat.cpu();
    b.flat = flat;
    std::vector<at::Tensor> list{flat};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::AVG;
    options.timeout = timeout;
    b.work = backend->allreduce(list, options);
  }

  // Launches every bucket that is ready, in bucket order.
  void launch_ready() {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) launch(next_launch++);
  }

  void on_grad(size_t param) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!enabled || deferred) return;
    auto& b = buckets[bucket_of[param]];
    if (b.pending > 0 && --b.pending == 0) launch_ready();
  }
};

struct Hook : torch::autograd::PostAccumulateGradHook {
  std::weak_ptr<Reducer> reducer;
  size_t index;
  Hook(std::weak_ptr<Reducer> r, size_t i) : reducer(std::move(r)), index(i) {}
  void operator()(const torch::autograd::Variable& /*param*/) override {
    if (auto r = reducer.lock()) r->on_grad(index);
  }
};

struct Handle {
  std::shared_ptr<Reducer> reducer;
};
}  // namespace

// Buckets `params` (reverse order, about `bucket_bytes` each) and hooks their gradient accumulation.
extern "C" int acc_reducer_new(void* group, acc_tensor* params, int count, int64_t bucket_bytes, void** out) {
  ACC_PROTECT({
    auto r = std::make_shared<Reducer>();
    auto g = static_cast<AccGroup*>(group);
    r->backend = g->backend;
    r->timeout = g->timeout;
    r->blocking_wait = g->blocking_wait;
    r->arrivals = g->arrivals;
    for (int i = 0; i < count; i++) r->params.push_back(*params[i]);
    r->bucket_of.assign(count, 0);
    int64_t bytes = 0;
    for (int i = count - 1; i >= 0; i--) {
      const auto& p = r->params[i];
      if (!p.requires_grad()) continue;
      if (r->buckets.empty() || bytes >= bucket_bytes) {
        r->buckets.emplace_back();
        bytes = 0;
      }
      r->buckets.back().params.push_back(i);
      r->bucket_of[i] = r->buckets.size() - 1;
      bytes += p.numel() * p.element_size();
    }
    r->reset();
    for (int i = 0; i < count; i++) {
      if (!r->params[i].requires_grad()) continue;
      torch::autograd::impl::set_post_acc_grad_hooks(r->params[i], std::make_unique<Hook>(r, i));
    }
    *out = new Handle{r};
  })
}

// Before a backward pass: average its gradients (`sync` true) or only accumulate them; with
// `deferred`, average them only in `finish` (the gradients come from several passes).
extern "C" int acc_reducer_prepare(void* handle, int sync, int deferred) {
  ACC_PROTECT({
    auto r = static_cast<Handle*>(handle)->reducer;
    std::lock_guard<std::mutex> lock(r->mutex);
    r->reset();
    r->enabled = sync != 0;
    r->deferred = deferred != 0;
  })
}

// After the backward pass: launch what is left, wait for every bucket, write the averages back.
extern "C" int acc_reducer_finish(void* handle) {
  ACC_PROTECT({
    auto r = static_cast<Handle*>(handle)->reducer;
    std::lock_guard<std::mutex> lock(r->mutex);
    if (!r->enabled) return 0;
    r->enabled = false;
    for (auto& b : r->buckets) b.pending = 0;
    r->launch_ready();
    at::NoGradGuard no_grad;
    for (auto& b : r->buckets) {
      acc_wait(b.work, r->blocking_wait, r->timeout, r->arrivals.get());
      int64_t offset = 0;
      for (auto p : b.params) {
        auto& param = r->params[p];
        auto piece = b.flat.narrow(0, offset, param.numel()).view_as(param);
        offset += param.numel();
        auto& grad = param.mutable_grad();
        if (grad.defined()) {
          grad.copy_(piece, /*non_blocking=*/true);
        } else {
          grad = piece.to(param.device()).clone();
        }
      }
      b.flat = at::Tensor();
      b.work.reset();
    }
  })
}

extern "C" void acc_reducer_free(void* handle) {
  auto h = static_cast<Handle*>(handle);
  try {
    std::lock_guard<std::mutex> lock(h->reducer->mutex);
    h->reducer->enabled = false;
  } catch (...) {
  }
  delete h;
}
