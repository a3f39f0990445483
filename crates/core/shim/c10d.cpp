// PyTorch's distributed engine (c10d) for Rust: a TCPStore rendezvous and a Gloo
// process group for CPU tensors, and the collectives for Gloo and NCCL groups alike.
#include "shim.h"
#include "c10d_group.h"
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <chrono>

namespace {
using Group = AccGroup;

// An explicit collective: its caller reads the result at once, so NCCL's wait may block too.
void wait(const Group* g, const c10::intrusive_ptr<c10d::Work>& work) {
  acc_wait(work, g->blocking_wait, g->timeout, g->arrivals.get(), /*poll=*/true);
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 1: return c10d::ReduceOp::AVG;
    case 3: return c10d::ReduceOp::MIN;
    case 4: return c10d::ReduceOp::MAX;
    default: return c10d::ReduceOp::SUM;
  }
}
}  // namespace

// Rendezvous through a TCPStore at host:port (rank 0 serves it), then a Gloo group.
// `local_address` is this process's address for Gloo's connections.
extern "C" int acc_group_new(const char* host, int port, int rank, int world_size, int64_t timeout_ms,
                             const char* local_address, void** out) {
  ACC_PROTECT({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto prefixed = acc_rendezvous(host, port, rank, world_size, timeout);
    // Gloo connects its full mesh under this default timeout, so it is the rendezvous one;
    // every collective below passes the collective timeout explicitly.
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(acc_rendezvous_timeout(timeout));
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(local_address)));
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world_size, gloo_options);
    *out = new Group{prefixed, backend, timeout, true, std::make_shared<AccArrivals>(prefixed, rank, world_size)};
  })
}

// Shuts the backend down (NCCL needs it before destruction), then frees the group.
extern "C" void acc_group_free(void* group) {
  auto g = static_cast<Group*>(group);
  try {
    g->backend->shutdown();
    delete g;
  } catch (...) {
  }
}

// op: 0 sum, 1 mean, 3 min, 4 max. Reduces `tensor` in place.
extern "C" int acc_allreduce(void* group, acc_tensor tensor, int op) {
  ACC_PROTECT({
    auto g = static_cast<Group*>(group);
    std::vector<at::Tensor> list{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = reduce_op(op);
    options.timeout = g->timeout;
    wait(g, g->backend->allreduce(list, options));
  })
}

extern "C" int acc_broadcast(void* group, acc_tensor tensor, int root) {
  ACC_PROTECT({
    auto g = static_cast<Group*>(group);
    std::vector<at::Tensor> list{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = g->timeout;
    wait(g, g->backend->broadcast(list, options));
  })
}

// Gathers equal-sized `input`s of every rank into `output` (world_size × input, rank-major).
extern "C" int acc_allgather_into(void* group, acc_tensor output, acc_tensor input) {
  ACC_PROTECT({
    auto g = static_cast<Group*>(group);
    c10d::AllgatherOptions options;
    options.timeout = g->timeout;
    wait(g, g->backend->_allgather_base(*output, *input, options));
  })
}

// Each rank receives the sum (or mean) of its slice of `input` (world_size × output).
extern "C" int acc_reduce_scatter_into(void* group, acc_tensor output, acc_tensor input, int op) {
  ACC_PROTECT({
    auto g = static_cast<Group*>(group);
    c10d::ReduceScatterOptions options;
    options.reduceOp = reduce_op(op);
    options.timeout = g->timeout;
    wait(g, g->backend->_reduce_scatter_base(*output, *input, options));
  })
}

extern "C" int acc_barrier(void* group) {
  ACC_PROTECT({
    auto g = static_cast<Group*>(group);
    c10d::BarrierOptions options;
    options.timeout = g->timeout;
    wait(g, g->backend->barrier(options));
  })
}
