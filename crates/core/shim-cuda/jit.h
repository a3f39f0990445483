// CUDA kernels compiled at run time (NVRTC) for the GPU in use, loaded and launched through the
// CUDA driver: the fusions libtorch's ATen operations do not offer (shim-cuda/kernels.cpp).
// NVRTC and the driver are opened with dlopen on first use, so nothing here is linked.
#pragma once
#include <ATen/ATen.h>
#include <dlfcn.h>
#include <string>
#include <initializer_list>
#include <vector>

namespace acc::jit {

// Sets `function` to the symbol `name` of `library` (a dlopen handle); false where it has none.
template <typename F>
bool bind(void* library, const char* name, F& function) {
  function = reinterpret_cast<F>(dlsym(library, name));
  return function != nullptr;
}

// Whether NVRTC and the CUDA driver could be loaded (once; later calls answer at once).
bool available();

// The `extern "C"` kernel `name` of `source` (CUDA C++, a string that lives for the process's
// life) for the current device; `options` are NVRTC's (e.g. "-DIN_BF16"). A source may
// `#include "acc_bf16.cuh"`: bf16_bits(f) and bf16_round(f), float32 to bf16 as ATen rounds, and
// bf16_value(bits), bf16 as float32.
// Each source is compiled once per options and device, then cached. Throws c10::Error naming
// what failed.
struct Kernel {
  void* function;  // CUfunction
};
Kernel get(const char* source, const std::vector<std::string>& options, const std::string& name);

// The kernels `names` (string literals: the answer is kept by their addresses) of `source`
// (as get), or false when compiling or loading it failed here (say, an NVRTC that does not
// know this GPU): a warning says why, once, and later calls with the same source, options and
// names answer false at once, for the caller's ATen path.
bool get_all(const char* source, const std::vector<std::string>& options, std::initializer_list<const char*> names,
             std::vector<Kernel>& kernels);

// Launches `kernel` on the current CUDA stream of the current device (so it is captured with
// the rest of a CUDA graph); `args` point at the kernel's arguments, in order.
void launch(Kernel kernel, unsigned grid_x, unsigned grid_y, unsigned block_x, unsigned block_y,
            std::vector<void*> args);

}  // namespace acc::jit
