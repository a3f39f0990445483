// The process group handle shared by the Gloo shim (c10d.cpp), the reducer and the
// CUDA shim library (shim-cuda/cuda.cpp, NCCL), so collectives work on either backend.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <chrono>
#include <string>

struct AccGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  // Gloo's wait blocks the CPU until done (with the timeout); NCCL's only orders the
  // current CUDA stream after the collective, and its watchdog enforces the timeout.
  bool blocking_wait;
};

// The rendezvous store at host:port (rank 0 serves it), prefixed for the default group.
inline c10::intrusive_ptr<c10d::Store> acc_rendezvous(const char* host, int port, int rank, int world_size,
                                                      std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(port);
  options.isServer = rank == 0;
  options.numWorkers = world_size;
  options.waitWorkers = false;
  options.timeout = timeout;
  auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
  return c10::make_intrusive<c10d::PrefixStore>("default_pg/", store);
}

// Gloo's wait blocks the CPU until done (with the timeout); NCCL's orders the current stream.
inline void acc_wait(const c10::intrusive_ptr<c10d::Work>& work, bool blocking, std::chrono::milliseconds timeout) {
  if (blocking) {
    work->wait(timeout);
  } else {
    work->wait();
  }
}
