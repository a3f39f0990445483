// The NCCL process group, built as a separate shared library (it links libtorch_cuda)
// that the engine loads only on CUDA hosts; the rest of the shim serves its collectives.
#include "../shim/shim.h"
#include "../shim/c10d_group.h"
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

static thread_local std::string nccl_error;
void acc::set_last_error(const std::string& message) { nccl_error = message; }
extern "C" const char* acc_nccl_last_error() { return nccl_error.c_str(); }

// Rendezvous through a TCPStore at host:port (rank 0 serves it), then an NCCL group bound to cuda:device.
extern "C" int acc_nccl_group_new(const char* host, int port, int rank, int world_size, int64_t timeout_ms, int device,
                                  void** out) {
  ACC_PROTECT({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(port);
    options.isServer = rank == 0;
    options.numWorkers = world_size;
    options.waitWorkers = false;
    options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("default_pg/", store);
    auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
    nccl_options->timeout = timeout;
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, world_size, nccl_options);
    at::Device bound(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    backend->setBoundDeviceId(bound);
    backend->eagerConnectSingleDevice(bound);
    *out = new AccGroup{store, backend, timeout};
  })
}
