// ZeRO stage 3 (parameters partitioned, as DeepSpeed's stage 3 and FSDP's full shard):
// each parameter keeps its shape, but its storage is freed while no module needs it; this
// process keeps a flat slice of it (its shard, `ceil(numel / world)` elements, zero-padded).
// A unit (the parameters one module uses) is all-gathered into full storage before the
// module's forward and released after; hooks on the module's outputs gather it again just
// before its backward, and a hook after each gradient accumulation reduce-scatters the
// unit's gradients into the shards' gradients once all have arrived, then frees the full
// gradients and the parameters. Parameters below a size threshold stay whole (persistent).
// The order in which units are gathered is recorded during the first forward and backward
// (as DeepSpeed does); after that, gathering a unit also starts the all-gathers of the units
// that follow it, up to a byte budget, so that they run while the module computes.
//
// Freeing is done as FSDP does it: the storage's bytes are released and the size set to 0,
// without touching the tensor's metadata or version counter, so the autograd graph's saved
// references to the parameter stay valid and see the data again once it is re-gathered. A
// freed parameter read by any operation raises c10's "data is not allocated yet" Error
// (libtorch checks storage_initialized() before handing out a data pointer).
#include "shim.h"
#include "c10d_group.h"
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <map>
#include <memory>
#include <mutex>

namespace {
struct Param {
  at::Tensor full;   // the model's parameter
  at::Tensor shard;  // this process's slice: shard_len elements
  at::Tensor grad;   // this process's slice of the averaged gradient, accumulated; or undefined
  int64_t numel = 0;
  int64_t shard_len = 0;
  bool persistent = false;
  int holds = 0;           // gathers not yet released; the storage stays allocated while > 0
  bool whole = false;      // the storage is allocated and holds the gathered values
  int prefetch = -1;       // the unit whose prefetch is gathering it now
  int backward_holds = 0;  // of those, taken for backward: dropped once its gradient is reduced
  int owner = -1;          // the unit that reduces its gradient (-1: it needs none)
  bool reduced = false;    // its gradient was reduced in this backward pass
};

struct Unit {
  std::vector<size_t> params;  // gathered together
  std::vector<size_t> owned;   // whose gradients it reduces
  size_t pending = 0;          // owned gradients not yet arrived in this backward pass
  bool gathered_for_backward = false;
};

void free_storage(Param& p) {
  auto* storage = p.full.storage().unsafeGetStorageImpl();
  storage->set_data_ptr_noswap(at::DataPtr(nullptr, p.full.device()));
  storage->set_nbytes(0);
  p.whole = false;
}

// An all-gather of some parameters' shards that may still be running.
struct Gathering {
  std::vector<size_t> params;
  at::Tensor output;
  int64_t total = 0;
  c10::intrusive_ptr<c10d::Work> work;
};

// The order units were gathered in during the first pass, and where each first appears.
struct Order {
  std::vector<size_t> units;
  std::map<size_t, size_t> first;
  void record(size_t u) {
    if (first.emplace(u, units.size()).second) units.push_back(u);
  }
};

void allocate_storage(Param& p) {
  auto* storage = p.full.storage().unsafeGetStorageImpl();
  const size_t bytes = static_cast<size_t>(p.numel) * p.full.element_size();
  if (storage->nbytes() == bytes && storage->data() != nullptr) return;
  storage->set_data_ptr_noswap(storage->allocator()->allocate(bytes));
  storage->set_nbytes(bytes);
}

struct Sharder : std::enable_shared_from_this<Sharder> {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  bool blocking_wait;
  std::shared_ptr<AccArrivals> arrivals;
  int rank = 0;
  int world = 1;
  std::vector<Param> params;
  std::vector<Unit> units;
  std::recursive_mutex mutex;
  bool dirty = false;  // a backward pass touched the state since the last settle()
  bool settle_queued = false;  // settle() runs when the backward pass in progress ends
  // A device whose copies to or from pinned host memory (offloaded shards and their
  // gradients) may still be running (-1: none); await_copies() waits for them.
  int copying_on = -1;
  bool recording = true;  // the first forward and backward record the order of units
  Order forward_order, backward_order;
  int64_t prefetch_bytes = 0;
  std::map<size_t, Gathering> prefetched;  // by unit
  int64_t prefetch_hits = 0;              // gathers that found their unit prefetched (for tests)

  void wait(const c10::intrusive_ptr<c10d::Work>& work) { acc_wait(work, blocking_wait, timeout, arrivals.get()); }

  // The mean across processes of this process's slice of `input` into `output`. Only with a
  // group: a single process keeps its gradients as they are (keep_gradients).
  void reduce_scatter_base(at::Tensor& output, at::Tensor& input) {
    c10d::ReduceScatterOptions options;
    options.reduceOp = c10d::ReduceOp::AVG;
    options.timeout = timeout;
    wait(backend->_reduce_scatter_base(output, input, options));
  }

  // Starts the all-gather of the shards of `need` (one collective); `finish` unpacks it. Only
  // with a group: a single process copies its shards straight in (all_gather).
  Gathering start(const std::vector<size_t>& need) {
    Gathering g;
    g.params = need;
    const auto device = params[need[0]].full.device();
    std::vector<at::Tensor> pieces;
    if (params[need[0]].shard.is_pinned() && device.is_cuda()) copying_on = device.index();
    for (auto i : need) {
      pieces.push_back(params[i].shard.to(device, /*non_blocking=*/true));
      g.total += params[i].shard_len;
    }
    auto input = pieces.size() == 1 ? pieces[0] : at::cat(pieces);
    g.output = at::empty({world * g.total}, input.options());
    c10d::AllgatherOptions options;
    options.timeout = timeout;
    g.work = backend->_allgather_base(g.output, input, options);
    return g;
  }

  // Waits for `g` and writes the gathered values into the parameters not already whole.
  void finish(Gathering& g) {
    wait(g.work);
    auto rows = g.output.view({world, g.total});
    at::NoGradGuard no_grad;
    int64_t offset = 0;
    for (auto i : g.params) {
      auto& p = params[i];
      p.prefetch = -1;
      if (!p.whole) {
        allocate_storage(p);
        auto whole = rows.narrow(1, offset, p.shard_len).reshape({-1}).narrow(0, 0, p.numel);
        // variable_data() shares the storage but not the version counter: saved tensors stay valid.
        p.full.variable_data().view({-1}).copy_(whole);
        p.whole = true;
      }
      offset += p.shard_len;
    }
  }

  // Writes the shards of `need` into their parameters' full storage. On one process the
  // shard is the whole value: it is copied straight in (from pinned memory without waiting).
  void all_gather(const std::vector<size_t>& need) {
    if (need.empty()) return;
    if (!backend) {
      at::NoGradGuard no_grad;
      for (auto i : need) {
        auto& p = params[i];
        p.prefetch = -1;
        if (p.whole) continue;
        allocate_storage(p);
        if (p.shard.is_pinned() && p.full.is_cuda()) copying_on = p.full.device().index();
        p.full.variable_data().view({-1}).copy_(p.shard.narrow(0, 0, p.numel), /*non_blocking=*/true);
        p.whole = true;
      }
      return;
    }
    auto g = start(need);
    finish(g);
  }

  // Finishes the prefetch of unit `u`, if one is running.
  void take_prefetch(size_t u) {
    auto found = prefetched.find(u);
    if (found == prefetched.end()) return;
    finish(found->second);
    prefetched.erase(found);
  }

  void gather(const std::vector<size_t>& idx) {
    std::vector<size_t> need;
    for (auto i : idx) {
      auto& p = params[i];
      if (p.prefetch >= 0) take_prefetch(static_cast<size_t>(p.prefetch));
      p.holds++;
      if (!p.persistent && !p.whole) need.push_back(i);
    }
    all_gather(need);
  }

  void release(size_t i) {
    auto& p = params[i];
    if (p.holds > 0 && --p.holds == 0 && !p.persistent) free_storage(p);
  }

  // After unit `u` was gathered: starts gathering the units that followed it in `order`,
  // until about prefetch_bytes are on their way (at least the next unit).
  void prefetch_after(size_t u, const Order& order) {
    if (recording || !backend || prefetch_bytes <= 0) return;
    auto at = order.first.find(u);
    if (at == order.first.end()) return;
    int64_t bytes = 0;
    for (size_t k = at->second + 1; k < order.units.size() && bytes < prefetch_bytes; k++) {
      const auto v = order.units[k];
      if (prefetched.count(v) != 0) continue;
      std::vector<size_t> need;
      for (auto i : units[v].params) {
        auto& p = params[i];
        if (p.persistent || p.whole || p.prefetch >= 0 || p.reduced) continue;
        need.push_back(i);
        bytes += p.numel * p.full.element_size();
      }
      if (need.empty()) continue;
      for (auto i : need) params[i].prefetch = static_cast<int>(v);
      prefetched.emplace(v, start(need));
    }
  }

  // Gathers `idx` for unit `u`: records the order on the first pass, takes the unit's
  // prefetch if one is running, and starts prefetching the units that follow in `order`.
  void gather_in_order(size_t u, const std::vector<size_t>& idx, Order& order) {
    if (recording) order.record(u);
    if (prefetched.count(u) != 0) prefetch_hits++;
    take_prefetch(u);
    gather(idx);
    prefetch_after(u, order);
  }

  // Gathers unit `u` for its module's forward.
  void gather_unit(size_t u) { gather_in_order(u, units[u].params, forward_order); }

  // Waits for prefetches nobody took, and frees what they gathered.
  void drop_prefetches() {
    for (auto& [u, g] : prefetched) finish(g);
    prefetched.clear();
    for (auto& p : params) {
      if (p.whole && p.holds == 0 && !p.persistent) free_storage(p);
    }
  }

  // From a hook: settle() runs when this backward pass ends, however it was started
  // (accelerator.backward or loss.backward), as FSDP's post-backward callback does.
  void queue_settle() {
    if (settle_queued) return;
    settle_queued = true;
    std::weak_ptr<Sharder> weak = weak_from_this();
    torch::autograd::Engine::get_default_engine().queue_callback([weak] {
      if (auto s = weak.lock()) s->settle();
    });
  }

  void gather_for_backward(size_t u) {
    std::lock_guard<std::recursive_mutex> lock(mutex);
    queue_settle();
    auto& unit = units[u];
    if (unit.gathered_for_backward) return;
    unit.gathered_for_backward = true;
    dirty = true;
    std::vector<size_t> idx;
    for (auto i : unit.params) {
      if (params[i].reduced) continue;
      params[i].backward_holds++;
      idx.push_back(i);
    }
    gather_in_order(u, idx, backward_order);
  }

  // Reduce-scatters the gradients of `idx` (one collective; zeros where one is missing) into
  // the shards' gradients, frees the full gradients, and drops backward's holds on them.
  void reduce(const std::vector<size_t>& idx) {
    if (idx.empty()) return;
    if (!backend) return keep_gradients(idx);
    std::vector<at::Tensor> columns;
    int64_t total = 0;
    for (auto i : idx) {
      auto& p = params[i];
      const auto& g = p.full.grad();
      auto flat = g.defined() ? g.reshape({-1}) : at::zeros({p.numel}, p.full.options());
      columns.push_back(at::constant_pad_nd(flat, {0, world * p.shard_len - p.numel}).view({world, p.shard_len}));
      total += p.shard_len;
    }
    // Rank-major: rank r's slice holds every parameter's r-th piece.
    auto input = (columns.size() == 1 ? columns[0] : at::cat(columns, 1)).contiguous().view({-1});
    auto output = at::empty({total}, input.options());
    reduce_scatter_base(output, input);
    int64_t offset = 0;
    for (auto i : idx) {
      auto& p = params[i];
      accumulate(p, output.narrow(0, offset, p.shard_len));
      offset += p.shard_len;
      done_reducing(i);
    }
  }

  // One process: each gradient is the shard's gradient as it is, with no copy on the device.
  void keep_gradients(const std::vector<size_t>& idx) {
    for (auto i : idx) {
      auto& p = params[i];
      const auto& g = p.full.grad();
      auto flat = g.defined() ? g.reshape({-1}) : at::zeros({p.numel}, p.full.options());
      if (p.shard_len != p.numel) flat = at::constant_pad_nd(flat, {0, p.shard_len - p.numel});
      accumulate(p, flat);
      done_reducing(i);
    }
  }

  // Adds `piece` (this process's slice of a reduced gradient) to parameter p's shard gradient.
  void accumulate(Param& p, const at::Tensor& piece) {
    at::NoGradGuard no_grad;
    if (!p.grad.defined() && p.shard.is_pinned() && piece.is_cuda()) {
      // Offloaded: into pinned memory without waiting; await_copies() runs before it is read.
      p.grad = at::empty({p.shard_len}, p.shard.options().pinned_memory(true));
      p.grad.copy_(piece, /*non_blocking=*/true);
      copying_on = piece.device().index();
    } else if (p.grad.defined()) {
      await_copies();
      p.grad.add_(piece.to(p.grad.device()));
    } else {
      p.grad = piece.to(p.shard.device()).clone();
    }
  }

  // Parameter i's full gradient has been reduced: it is freed, and backward's holds dropped.
  void done_reducing(size_t i) {
    auto& p = params[i];
    p.full.mutable_grad() = at::Tensor();
    p.reduced = true;
    for (; p.backward_holds > 0; p.backward_holds--) release(i);
  }

  // Waits for the copies to and from pinned host memory: before the host reads a gradient or
  // writes a shard (an optimizer step) that a copy may still be using.
  void await_copies() {
    if (copying_on < 0) return;
    c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->synchronizeDevice(static_cast<c10::DeviceIndex>(copying_on));
    copying_on = -1;
  }

  void on_grad(size_t i) {
    std::lock_guard<std::recursive_mutex> lock(mutex);
    auto& p = params[i];
    if (p.owner < 0) return;
    queue_settle();
    dirty = true;
    if (p.reduced) return reduce({i});
    auto& unit = units[p.owner];
    if (unit.pending > 0 && --unit.pending == 0) {
      std::vector<size_t> idx;
      for (auto j : unit.owned) {
        if (!params[j].reduced) idx.push_back(j);
      }
      reduce(idx);
    }
  }

  // After a backward pass: reduces gradients that arrived for units not complete (unused
  // parameters), drops what backward still holds, and resets the counts for the next pass.
  void settle() {
    std::lock_guard<std::recursive_mutex> lock(mutex);
    settle_queued = false;
    if (!dirty) return;
    for (auto& unit : units) {
      std::vector<size_t> idx;
      for (auto j : unit.owned) {
        if (!params[j].reduced && params[j].full.grad().defined()) idx.push_back(j);
      }
      reduce(idx);
    }
    for (size_t i = 0; i < params.size(); i++) {
      for (; params[i].backward_holds > 0; params[i].backward_holds--) release(i);
      params[i].reduced = false;
    }
    for (auto& unit : units) {
      unit.pending = unit.owned.size();
      unit.gathered_for_backward = false;
    }
    dirty = false;
    recording = false;
    drop_prefetches();
  }
};

struct GradHook : torch::autograd::PostAccumulateGradHook {
  std::weak_ptr<Sharder> sharder;
  size_t index;
  GradHook(std::weak_ptr<Sharder> s, size_t i) : sharder(std::move(s)), index(i) {}
  void operator()(const torch::autograd::Variable& /*param*/) override {
    if (auto s = sharder.lock()) s->on_grad(index);
  }
};

struct Handle {
  std::shared_ptr<Sharder> sharder;
};

Sharder& of(void* handle) { return *static_cast<Handle*>(handle)->sharder; }

std::vector<size_t> indices(const Sharder& s, const int64_t* idx, int count) {
  std::vector<size_t> out;
  for (int k = 0; k < count; k++) {
    TORCH_CHECK(idx[k] >= 0 && static_cast<size_t>(idx[k]) < s.params.size(), "parameter index out of range");
    out.push_back(static_cast<size_t>(idx[k]));
  }
  return out;
}
}  // namespace

// Shards `params` (identical on every process) across the group. `unit_params` lists each
// unit's parameter indices end to end, `unit_sizes` how many each has; a parameter's first
// unit reduces its gradient. Parameters with fewer than `persist_below` elements stay whole.
// `offload` keeps the shards on the host (pinned, for GPU parameters). `group` may be null
// on a single process: the shards are then whole and only offloading changes anything.
extern "C" int acc_zero3_new(void* group, acc_tensor* params, int count, const int64_t* unit_params,
                             const int64_t* unit_sizes, int unit_count, int64_t persist_below, int64_t prefetch_bytes,
                             int offload, void** out) {
  ACC_PROTECT({
    auto s = std::make_shared<Sharder>();
    if (auto g = static_cast<AccGroup*>(group)) {
      s->backend = g->backend;
      s->timeout = g->timeout;
      s->blocking_wait = g->blocking_wait;
      s->arrivals = g->arrivals;
      s->rank = g->backend->getRank();
      s->world = g->backend->getSize();
    }
    s->prefetch_bytes = prefetch_bytes;
    at::NoGradGuard no_grad;
    for (int i = 0; i < count; i++) {
      Param p;
      p.full = *params[i];
      p.whole = true;
      TORCH_CHECK(p.full.is_floating_point(), "ZeRO stage 3 shards floating-point parameters only");
      auto* storage = p.full.storage().unsafeGetStorageImpl();
      p.numel = p.full.numel();
      const bool exclusive = p.full.is_contiguous() && p.full.storage_offset() == 0 &&
                             storage->nbytes() == static_cast<size_t>(p.numel) * p.full.element_size() &&
                             storage->allocator() != nullptr && p.full.storage().use_count() == 1;
      // A parameter that is a view of a larger buffer gets storage of its own.
      if (!exclusive) p.full.set_data(p.full.detach().clone(at::MemoryFormat::Contiguous));
      p.shard_len = std::max<int64_t>(1, (p.numel + s->world - 1) / s->world);
      p.persistent = p.numel < persist_below;
      auto padded = at::constant_pad_nd(p.full.detach().reshape({-1}), {0, s->world * p.shard_len - p.numel});
      auto mine = padded.narrow(0, s->rank * p.shard_len, p.shard_len);
      if (offload != 0 && p.full.is_cuda()) {
        p.shard = at::empty({p.shard_len}, p.full.options().device(at::kCPU).pinned_memory(true));
        p.shard.copy_(mine);
      } else {
        p.shard = mine.clone();
      }
      s->params.push_back(std::move(p));
    }
    int64_t at = 0;
    for (int u = 0; u < unit_count; u++) {
      Unit unit;
      unit.params = indices(*s, unit_params + at, static_cast<int>(unit_sizes[u]));
      at += unit_sizes[u];
      for (auto i : unit.params) {
        auto& p = s->params[i];
        if (p.owner >= 0 || !p.full.requires_grad()) continue;
        p.owner = u;
        unit.owned.push_back(i);
      }
      unit.pending = unit.owned.size();
      s->units.push_back(std::move(unit));
    }
    for (size_t i = 0; i < s->params.size(); i++) {
      auto& p = s->params[i];
      if (p.persistent) continue;
      free_storage(p);
    }
    for (size_t i = 0; i < s->params.size(); i++) {
      if (s->params[i].owner < 0) continue;
      torch::autograd::impl::set_post_acc_grad_hooks(s->params[i].full, std::make_unique<GradHook>(s, i));
    }
    *out = new Handle{s};
  })
}

// Gathers unit `unit` before its module's forward (and starts prefetching the next ones).
extern "C" int acc_zero3_gather_unit(void* handle, int unit) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    TORCH_CHECK(unit >= 0 && static_cast<size_t>(unit) < s.units.size(), "unit index out of range");
    s.gather_unit(static_cast<size_t>(unit));
  })
}

// How many unit gathers found their unit prefetched.
extern "C" int64_t acc_zero3_prefetch_hits(void* handle) { return of(handle).prefetch_hits; }

// Gathers the parameters listed (a state read, a tied weight read in another module).
extern "C" int acc_zero3_gather(void* handle, const int64_t* idx, int count) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    s.gather(indices(s, idx, count));
  })
}

extern "C" int acc_zero3_release(void* handle, const int64_t* idx, int count) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    for (auto i : indices(s, idx, count)) s.release(i);
  })
}

// Adds parameters a unit's module used that belong to another module (tied weights): the
// unit gathers them too before its backward.
extern "C" int acc_zero3_add_to_unit(void* handle, int unit, const int64_t* idx, int count) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    TORCH_CHECK(unit >= 0 && static_cast<size_t>(unit) < s.units.size(), "unit index out of range");
    auto& params = s.units[unit].params;
    for (auto i : indices(s, idx, count)) {
      if (std::find(params.begin(), params.end(), i) == params.end()) params.push_back(i);
    }
  })
}

// Whether `t` shares storage with one of unit `unit`'s parameters (a module returning its own
// parameter, or a view of it, whose storage the unit's release would free).
extern "C" int acc_zero3_aliases_unit(void* handle, int unit, acc_tensor t, int* out) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    TORCH_CHECK(unit >= 0 && static_cast<size_t>(unit) < s.units.size(), "unit index out of range");
    *out = 0;
    if (!t->defined() || !t->has_storage()) return 0;
    const auto* storage = t->storage().unsafeGetStorageImpl();
    for (auto i : s.units[unit].params) {
      if (s.params[i].full.storage().unsafeGetStorageImpl() == storage) *out = 1;
    }
  })
}

// Hooks a unit's forward outputs: their gradients' arrival gathers the unit for its backward.
extern "C" int acc_zero3_hook_outputs(void* handle, int unit, acc_tensor* outputs, int count) {
  ACC_PROTECT({
    auto sharder = static_cast<Handle*>(handle)->sharder;
    TORCH_CHECK(unit >= 0 && static_cast<size_t>(unit) < sharder->units.size(), "unit index out of range");
    std::weak_ptr<Sharder> weak = sharder;
    const auto u = static_cast<size_t>(unit);
    for (int k = 0; k < count; k++) {
      if (!outputs[k]->requires_grad()) continue;
      outputs[k]->register_hook([weak, u](const at::Tensor& /*grad*/) {
        if (auto s = weak.lock()) s->gather_for_backward(u);
      });
    }
  })
}

// After backward (accelerator.backward, an optimizer step): settles, and waits for the copies
// of offloaded gradients and shards, so that the host may read and write them. The settle at
// the end of each backward pass does not wait: the device keeps working ahead of the host.
extern "C" int acc_zero3_settle(void* handle) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    s.settle();
    s.await_copies();
  })
}

// The index of `param` among the sharded parameters, or -1.
extern "C" int acc_zero3_index_of(void* handle, acc_tensor param, int64_t* out) {
  ACC_PROTECT({
    auto& s = of(handle);
    *out = -1;
    for (size_t i = 0; i < s.params.size(); i++) {
      if (s.params[i].full.unsafeGetTensorImpl() == param->unsafeGetTensorImpl()) *out = static_cast<int64_t>(i);
    }
  })
}

extern "C" int acc_zero3_count(void* handle) { return static_cast<int>(of(handle).params.size()); }

// The shard of parameter `i` (the tensor the optimizer updates in place), its gradient
// (`which` 1; undefined when none arrived) or the full parameter (`which` 2).
extern "C" int acc_zero3_tensor(void* handle, int64_t i, int which, acc_tensor* out) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    TORCH_CHECK(i >= 0 && static_cast<size_t>(i) < s.params.size(), "parameter index out of range");
    auto& p = s.params[i];
    if (which == 1) s.await_copies();
    *out = new at::Tensor(which == 0 ? p.shard : which == 1 ? p.grad : p.full);
  })
}

// Drops the shard gradients of the parameters listed (an optimizer's, after its step or zeroGrad).
extern "C" int acc_zero3_clear_grads(void* handle, const int64_t* idx, int count) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    s.await_copies();
    for (auto i : indices(s, idx, count)) s.params[i].grad = at::Tensor();
  })
}

// After the shards changed (an optimizer step): persistent parameters gather them again, in
// collectives of about 64 MiB (under stage 2 that is the whole model: never one buffer of it).
extern "C" int acc_zero3_refresh_persistent(void* handle) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    constexpr int64_t chunk_bytes = int64_t{64} << 20;
    std::vector<size_t> need;
    int64_t bytes = 0;
    for (size_t i = 0; i < s.params.size(); i++) {
      auto& p = s.params[i];
      if (!p.persistent && p.holds == 0) continue;
      p.whole = false;  // its values are stale: gathered again into the same storage
      need.push_back(i);
      bytes += p.numel * p.full.element_size();
      if (bytes >= chunk_bytes) {
        s.all_gather(need);
        need.clear();
        bytes = 0;
      }
    }
    s.all_gather(need);
  })
}

// Loads parameter `i` from `source` (a whole value, on any device): this process's shard takes
// its slice, and the parameter its value if it is whole now. Nothing is gathered.
extern "C" int acc_zero3_load(void* handle, int64_t i, acc_tensor source) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    TORCH_CHECK(i >= 0 && static_cast<size_t>(i) < s.params.size(), "parameter index out of range");
    auto& p = s.params[i];
    TORCH_CHECK(source->numel() == p.numel, "the value has ", source->numel(), " elements, the parameter ", p.numel);
    at::NoGradGuard no_grad;
    s.await_copies();  // a copy out of the pinned shard may still be reading it
    auto flat = source->detach().reshape({-1}).to(p.full.dtype());
    auto padded = at::constant_pad_nd(flat, {0, s.world * p.shard_len - p.numel});
    p.shard.copy_(padded.narrow(0, s.rank * p.shard_len, p.shard_len));
    if (p.whole) p.full.variable_data().view({-1}).copy_(flat);
  })
}

// Bytes of parameter storage this process holds now: on the device (full parameters
// gathered, and shards there) and on the host (offloaded shards).
extern "C" int acc_zero3_bytes(void* handle, int64_t* device, int64_t* host) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    *device = 0;
    *host = 0;
    for (auto& p : s.params) {
      const int64_t full = static_cast<int64_t>(p.full.storage().nbytes());
      const int64_t shard = p.shard.numel() * p.shard.element_size();
      (p.full.is_cuda() ? *device : *host) += full;
      (p.shard.is_cuda() ? *device : *host) += shard;
    }
  })
}

// Before the sharder goes: gathers every parameter for good, so the model is whole again
// (every process must call it, as for any collective).
extern "C" int acc_zero3_unshard(void* handle) {
  ACC_PROTECT({
    auto& s = of(handle);
    std::lock_guard<std::recursive_mutex> lock(s.mutex);
    s.settle();
    s.drop_prefetches();
    std::vector<size_t> need;
    for (size_t i = 0; i < s.params.size(); i++) {
      auto& p = s.params[i];
      if (!p.persistent && !p.whole) need.push_back(i);
      p.persistent = true;
    }
    s.all_gather(need);
    for (auto& p : s.params) torch::autograd::impl::set_post_acc_grad_hooks(p.full, nullptr);
  })
}

extern "C" void acc_zero3_free(void* handle) {
  auto h = static_cast<Handle*>(handle);
  try {
    std::lock_guard<std::recursive_mutex> lock(h->sharder->mutex);
    for (auto& p : h->sharder->params) torch::autograd::impl::set_post_acc_grad_hooks(p.full, nullptr);
  } catch (...) {
  }
  delete h;
}
