// The process group handle shared by the Gloo shim (c10d.cpp) and the NCCL shim
// library (shim-nccl/nccl.cpp), so collectives work on either backend.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <chrono>

struct AccGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  // Gloo's wait blocks the CPU until done (with the timeout); NCCL's only orders the
  // current CUDA stream after the collective, and its watchdog enforces the timeout.
  bool blocking_wait;
};
