// The default CPU and CUDA generators' states, for checkpoints that resume exactly.
#include "shim.h"
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

// Writes the CPU generator state into a new uint8 tensor at *out.
extern "C" int acc_cpu_rng_state(acc_tensor* out) {
  ACC_PROTECT({
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    *out = new at::Tensor(gen.get_state());
  })
}

extern "C" int acc_set_cpu_rng_state(acc_tensor state) {
  ACC_PROTECT({
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*state);
  })
}

// The state of CUDA device `index`'s default generator (CUDA hooks are loaded with libtorch_cuda).
extern "C" int acc_cuda_rng_state(int64_t index, acc_tensor* out) {
  ACC_PROTECT({
    auto gen = at::globalContext().defaultGenerator(at::Device(at::kCUDA, index));
    std::lock_guard<std::mutex> lock(gen.mutex());
    *out = new at::Tensor(gen.get_state());
  })
}

extern "C" int acc_set_cuda_rng_state(int64_t index, acc_tensor state) {
  ACC_PROTECT({
    auto gen = at::globalContext().defaultGenerator(at::Device(at::kCUDA, index));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*state);
  })
}
