// The CUDA side of the shim, built as a separate shared library (it links libtorch_cuda)
// that the engine loads only on CUDA hosts: the NCCL process group (whose collectives
// the main shim serves) and the caching allocator's statistics.
#include "../shim/shim.h"
#include "../shim/c10d_group.h"
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cstdio>
#include <torch/csrc/cuda/nccl.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

static thread_local std::string nccl_error;
void acc::set_last_error(const std::string& message) { nccl_error = message; }
extern "C" const char* acc_cuda_last_error() { return nccl_error.c_str(); }

// Rendezvous through a TCPStore at host:port (rank 0 serves it), then an NCCL group bound to cuda:device.
extern "C" int acc_nccl_group_new(const char* host, int port, int rank, int world_size, int64_t timeout_ms, int device,
                                  void** out) {
  ACC_PROTECT({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto prefixed = acc_rendezvous(host, port, rank, world_size, timeout);
    auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
    // Explicit collectives time out first (acc_wait polls them and names the missing ranks);
    // NCCL's watchdog, which tears the process down, covers the rest a little later.
    nccl_options->timeout = timeout + std::chrono::milliseconds(10000);
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, world_size, nccl_options);
    at::Device bound(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    backend->setBoundDeviceId(bound);
    backend->eagerConnectSingleDevice(bound);
    *out = new AccGroup{prefixed, backend, timeout, false, std::make_shared<AccArrivals>(prefixed, rank, world_size)};
  })
}

// Caching-allocator statistics of cuda:device in bytes: allocated now, reserved now, peak allocated.
extern "C" int acc_cuda_memory_stats(int device, int64_t* out) {
  ACC_PROTECT({
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    constexpr auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.reserved_bytes[all].current;
    out[2] = stats.allocated_bytes[all].peak;
  })
}

extern "C" int acc_cuda_reset_peak_memory(int device) {
  ACC_PROTECT(c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device)))
}

// Returns cached, unused blocks to the driver.
extern "C" int acc_cuda_empty_cache() { ACC_PROTECT(c10::cuda::CUDACachingAllocator::emptyCache()) }

extern "C" int acc_cuda_synchronize(int device) {
  ACC_PROTECT({
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    c10::cuda::device_synchronize();
  })
}

// The name, total memory and compute capability (major, minor) of cuda:device.
extern "C" int acc_cuda_device_info(int device, char* name, size_t name_length, int64_t* total_memory, int32_t* capability) {
  ACC_PROTECT({
    auto props = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device));
    std::snprintf(name, name_length, "%s", props->name);
    *total_memory = static_cast<int64_t>(props->totalGlobalMem);
    capability[0] = props->major;
    capability[1] = props->minor;
  })
}

// Versions as the libraries report them: CUDA runtime, cuDNN, NCCL (0 when unknown).
extern "C" int acc_cuda_versions(int64_t* out) {
  ACC_PROTECT({
    // Through libtorch_cuda, so this library needs no direct libcudart or libnccl symbols.
    const auto& hooks = at::detail::getCUDAHooks();
    out[0] = hooks.versionCUDART();
    out[1] = hooks.hasCuDNN() ? hooks.versionCuDNN() : 0;
    // torch packs NCCL's version as major << 32 | minor << 16 | patch; report it as NCCL does.
    auto nccl = torch::cuda::nccl::version();
    out[2] = static_cast<int64_t>((nccl >> 32) * 10000 + ((nccl >> 16) & 0xffff) * 100 + (nccl & 0xffff));
  })
}

// An uninitialised CPU tensor of `sizes` with `like`'s dtype, in pinned memory (the caching
// host allocator's).
extern "C" int acc_cuda_empty_pinned(acc_tensor like, const int64_t* sizes, int ndim, acc_tensor* out) {
  ACC_PROTECT({
    auto options = at::TensorOptions().dtype(like->scalar_type()).pinned_memory(true);
    *out = new at::Tensor(at::empty(c10::IntArrayRef(sizes, static_cast<size_t>(ndim)), options));
  })
}

namespace {
// A finished host-to-device copy on a side stream, waited for by the consumer.
struct AccCopy {
  at::cuda::CUDAEvent done;
};
}  // namespace

// Copies `n` CPU tensors to cuda:device on a side stream, from pinned memory without blocking;
// `out` receives the device tensors and `copy` an event for acc_cuda_copy_wait.
extern "C" int acc_cuda_copy_async(const acc_tensor* src, int n, int device, acc_tensor* out, void** copy) {
  ACC_PROTECT({
    auto index = static_cast<c10::DeviceIndex>(device);
    auto stream = c10::cuda::getStreamFromPool(false, index);
    c10::cuda::CUDAStreamGuard guard(stream);
    for (int i = 0; i < n; i++) {
      auto pinned = src[i]->is_pinned() ? *src[i] : src[i]->pin_memory();
      out[i] = new at::Tensor(pinned.to(at::Device(at::kCUDA, index), /*non_blocking=*/true));
    }
    auto done = new AccCopy();
    done->done.record(stream);
    *copy = done;
  })
}

// Makes the calling thread's current stream wait for the copy, and tells the allocator the
// tensors are used there (so their memory is not reused before that stream is done).
extern "C" int acc_cuda_copy_wait(void* copy, const acc_tensor* tensors, int n) {
  ACC_PROTECT({
    if (n == 0) return 0;
    auto current = c10::cuda::getCurrentCUDAStream(tensors[0]->device().index());
    static_cast<AccCopy*>(copy)->done.block(current);
    for (int i = 0; i < n; i++) c10::cuda::CUDACachingAllocator::recordStream(tensors[i]->storage().data_ptr(), current);
  })
}

extern "C" void acc_cuda_copy_free(void* copy) {
  try {
    delete static_cast<AccCopy*>(copy);
  } catch (...) {
  }
}

// ---- Captured steps (accelerator.compileStep): one CUDA graph per captured function. ----
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <functional>
#include <optional>

namespace {
struct AccGraph {
  c10::DeviceIndex device;
  at::cuda::CUDAGraph graph;
  c10::cuda::MempoolId_t pool;
  std::optional<c10::cuda::CUDAStream> previous;  // the stream capture left, restored after it
  bool capturing = false;
  bool captured = false;
};

// Leaves capture mode whatever happened during it, and gives the stream back. When the
// capture was invalidated, CUDAGraph::capture_end throws before it tells the allocators, and
// the graph would never give its memory pool back: this does both here.
void finish_capture(AccGraph& g, bool keep) {
  g.capturing = false;
  std::string failure;
  try {
    g.graph.capture_end();
  } catch (const std::exception& e) {
    failure = e.what();
    auto* host = at::getHostAllocator(at::kCUDA);
    for (auto& release : std::vector<std::function<void()>>{
             [&] { c10::cuda::CUDACachingAllocator::endAllocateToPool(g.device, g.pool); },
             [&] { c10::cuda::CUDACachingAllocator::releasePool(g.device, g.pool); },
             [&] { host->end_allocate_to_pool(g.pool); },
             [&] { host->release_pool(g.pool); },
         }) {
      try {
        release();
      } catch (...) {
      }
    }
  }
  if (g.previous) c10::cuda::setCurrentCUDAStream(*g.previous);
  g.previous.reset();
  if (!failure.empty() && keep) throw std::runtime_error(failure);
}
}  // namespace

extern "C" int acc_cuda_graph_new(int device, void** out) {
  ACC_PROTECT({
    auto g = std::make_unique<AccGraph>();
    g->device = static_cast<c10::DeviceIndex>(device);
    g->pool = at::cuda::graph_pool_handle();
    *out = g.release();
  })
}

// Starts capturing the calling thread's work on cuda:device (and that of the autograd threads
// that follow its stream) on a side stream, after the device has finished what is queued.
// Only the calling thread is kept from calls a capture forbids (cudaStreamCaptureModeThreadLocal),
// so a data loader copying batches on its own thread meanwhile is unaffected.
extern "C" int acc_cuda_graph_begin(void* handle) {
  ACC_PROTECT({
    auto& g = *static_cast<AccGraph*>(handle);
    TORCH_CHECK(!g.capturing && !g.captured, "this step is already captured");
    c10::cuda::set_device(g.device);
    c10::cuda::device_synchronize();
    g.previous = c10::cuda::getCurrentCUDAStream(g.device);
    // A high-priority stream: not one of the data loader's, which come from the other pool.
    c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(true, g.device));
    try {
      g.graph.register_generator_state(at::cuda::detail::getDefaultCUDAGenerator(g.device));
      g.graph.capture_begin(g.pool, cudaStreamCaptureModeThreadLocal);
    } catch (...) {
      c10::cuda::setCurrentCUDAStream(*g.previous);
      g.previous.reset();
      throw;
    }
    g.capturing = true;
  })
}

// Ends the capture begun by acc_cuda_graph_begin; an invalidated capture is an Error.
extern "C" int acc_cuda_graph_end(void* handle) {
  ACC_PROTECT({
    auto& g = *static_cast<AccGraph*>(handle);
    TORCH_CHECK(g.capturing, "no capture is under way");
    finish_capture(g, true);
    g.captured = true;
  })
}

// Ends a capture that failed (an Error inside the captured function), ignoring what CUDA says.
extern "C" int acc_cuda_graph_abort(void* handle) {
  ACC_PROTECT({
    auto& g = *static_cast<AccGraph*>(handle);
    if (g.capturing) finish_capture(g, false);
  })
}

// Runs the captured work again on the current stream, after whatever is queued there.
extern "C" int acc_cuda_graph_replay(void* handle) {
  ACC_PROTECT({
    auto& g = *static_cast<AccGraph*>(handle);
    TORCH_CHECK(g.captured, "nothing was captured");
    g.graph.replay();
  })
}

extern "C" void acc_cuda_graph_free(void* handle) {
  try {
    auto* g = static_cast<AccGraph*>(handle);
    if (g->capturing) finish_capture(*g, false);
    if (g->captured) {
      // A replay may still be running: its memory goes back to the allocator with the graph.
      c10::cuda::CUDAGuard guard(g->device);
      c10::cuda::device_synchronize();
    }
    delete g;
  } catch (...) {
  }
}
