// CUDA kernels compiled at run time (NVRTC) for the GPU in use, loaded and launched through the
// CUDA driver: the fusions libtorch's ATen operations do not offer (shim-cuda/kernels.cpp).
// NVRTC and the driver are opened with dlopen on first use, so nothing here is linked.
#pragma once
#include <ATen/ATen.h>
#include <string>
#include <vector>

namespace acc::jit {

// Whether NVRTC and the CUDA driver could be loaded (once; later calls answer at once).
bool available();

// The `extern "C"` kernel `name` of `source` (CUDA C++, a string that lives for the process's
// life) for the current device; `options` are NVRTC's (e.g. "-DIN_BF16"). Each source is
// compiled once per options and device, then cached. Throws c10::Error naming what failed.
struct Kernel {
  void* function;  // CUfunction
};
Kernel get(const char* source, const std::vector<std::string>& options, const std::string& name);

// Launches `kernel` on the current CUDA stream of the current device (so it is captured with
// the rest of a CUDA graph); `args` point at the kernel's arguments, in order.
void launch(Kernel kernel, unsigned grid_x, unsigned grid_y, unsigned block_x, unsigned block_y,
            std::vector<void*> args);

}  // namespace acc::jit
