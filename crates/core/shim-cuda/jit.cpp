// Run-time compiled kernels: NVRTC makes a cubin for the current GPU's architecture, the CUDA
// driver loads it into the device's primary context (the one the CUDA runtime, and so
// libtorch, uses) and launches it on the current stream.
#include "jit.h"
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda.h>
#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <map>
#include <memory>
#include <mutex>
#include <nvrtc.h>
#include <tuple>

namespace acc::jit {
namespace {

// The NVRTC and driver functions used here, looked up once.
struct Api {
  decltype(&::nvrtcCreateProgram) nvrtcCreateProgram;
  decltype(&::nvrtcCompileProgram) nvrtcCompileProgram;
  decltype(&::nvrtcGetProgramLogSize) nvrtcGetProgramLogSize;
  decltype(&::nvrtcGetProgramLog) nvrtcGetProgramLog;
  decltype(&::nvrtcGetCUBINSize) nvrtcGetCUBINSize;
  decltype(&::nvrtcGetCUBIN) nvrtcGetCUBIN;
  decltype(&::nvrtcDestroyProgram) nvrtcDestroyProgram;
  decltype(&::nvrtcGetErrorString) nvrtcGetErrorString;
  decltype(&::cuDeviceGet) cuDeviceGet;
  decltype(&::cuDevicePrimaryCtxRetain) cuDevicePrimaryCtxRetain;
  decltype(&::cuCtxGetCurrent) cuCtxGetCurrent;
  decltype(&::cuCtxSetCurrent) cuCtxSetCurrent;
  decltype(&::cuModuleLoadData) cuModuleLoadData;
  decltype(&::cuModuleGetFunction) cuModuleGetFunction;
  decltype(&::cuLaunchKernel) cuLaunchKernel;
  decltype(&::cuGetErrorString) cuGetErrorString;
};

// The directory of the loaded CUDA runtime (a pip torch keeps NVRTC beside it).
std::string cudart_directory() {
  std::string found;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        std::string path = info->dlpi_name != nullptr ? info->dlpi_name : "";
        if (path.find("libcudart.so") == std::string::npos) return 0;
        *static_cast<std::string*>(out) = path.substr(0, path.rfind('/') + 1);
        return 1;
      },
      &found);
  return found;
}

// NVRTC opens its builtins library by name when it compiles; loaded first from the same
// directory, it is found under that name without the directory being on the library path.
void preload_builtins(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> listing(opendir(dir.c_str()), closedir);
  if (!listing) return;
  while (dirent* entry = readdir(listing.get())) {
    const std::string name = entry->d_name;
    if (name.rfind("libnvrtc-builtins.so.", 0) == 0) dlopen((dir + name).c_str(), RTLD_NOW | RTLD_LOCAL);
  }
}

void* find_nvrtc() {
  const std::string soname = "libnvrtc.so." + std::to_string(CUDA_VERSION / 1000);
  if (void* h = dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD)) return h;
  if (auto dir = cudart_directory(); !dir.empty()) {
    if (void* h = dlopen((dir + soname).c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    // CUDA 12's pip wheels keep each library in its own package: nvidia/cuda_runtime/lib
    // beside nvidia/cuda_nvrtc/lib.
    const std::string runtime = "/cuda_runtime/lib/";
    if (const auto at = dir.rfind(runtime); at != std::string::npos && at + runtime.size() == dir.size()) {
      const auto sibling = dir.substr(0, at) + "/cuda_nvrtc/lib/" + soname;
      if (void* h = dlopen(sibling.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    }
  }
  if (void* h = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
  return dlopen("libnvrtc.so", RTLD_NOW | RTLD_LOCAL);
}

void* open_nvrtc() {
  void* h = find_nvrtc();
  Dl_info info{};
  if (h != nullptr && dladdr(dlsym(h, "nvrtcVersion"), &info) != 0 && info.dli_fname != nullptr) {
    const std::string path = info.dli_fname;
    preload_builtins(path.substr(0, path.rfind('/') + 1));
  }
  return h;
}

template <typename F>
void require(void* library, const char* name, F& function) {
  TORCH_CHECK(bind(library, name, function), "CUDA kernels: ", name, " not found (", dlerror(), ")");
}

const Api& api() {
  static const Api loaded = [] {
    Api a{};
    void* nvrtc = open_nvrtc();
    TORCH_CHECK(nvrtc != nullptr, "CUDA kernels: could not load NVRTC (libnvrtc.so.", CUDA_VERSION / 1000,
                ") beside the CUDA runtime or on the library path");
    void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    TORCH_CHECK(driver != nullptr, "CUDA kernels: could not load the CUDA driver (libcuda.so.1)");
    require(nvrtc, "nvrtcCreateProgram", a.nvrtcCreateProgram);
    require(nvrtc, "nvrtcCompileProgram", a.nvrtcCompileProgram);
    require(nvrtc, "nvrtcGetProgramLogSize", a.nvrtcGetProgramLogSize);
    require(nvrtc, "nvrtcGetProgramLog", a.nvrtcGetProgramLog);
    require(nvrtc, "nvrtcGetCUBINSize", a.nvrtcGetCUBINSize);
    require(nvrtc, "nvrtcGetCUBIN", a.nvrtcGetCUBIN);
    require(nvrtc, "nvrtcDestroyProgram", a.nvrtcDestroyProgram);
    require(nvrtc, "nvrtcGetErrorString", a.nvrtcGetErrorString);
    require(driver, "cuDeviceGet", a.cuDeviceGet);
    require(driver, "cuDevicePrimaryCtxRetain", a.cuDevicePrimaryCtxRetain);
    require(driver, "cuCtxGetCurrent", a.cuCtxGetCurrent);
    require(driver, "cuCtxSetCurrent", a.cuCtxSetCurrent);
    require(driver, "cuModuleLoadData", a.cuModuleLoadData);
    require(driver, "cuModuleGetFunction", a.cuModuleGetFunction);
    require(driver, "cuLaunchKernel", a.cuLaunchKernel);
    require(driver, "cuGetErrorString", a.cuGetErrorString);
    return a;
  }();
  return loaded;
}

void check(CUresult result, const char* what) {
  if (result == CUDA_SUCCESS) return;
  const char* message = nullptr;
  api().cuGetErrorString(result, &message);
  TORCH_CHECK(false, "CUDA kernels: ", what, " failed: ", message != nullptr ? message : "unknown error");
}

void check(nvrtcResult result, const char* what) {
  TORCH_CHECK(result == NVRTC_SUCCESS, "CUDA kernels: ", what, " failed: ", api().nvrtcGetErrorString(result));
}

// Makes the device's primary context (the runtime's, which libtorch uses) current on this
// thread if no context is; the runtime makes it current whenever it selects the device.
void ensure_context(int device) {
  const Api& a = api();
  CUcontext current = nullptr;
  check(a.cuCtxGetCurrent(&current), "cuCtxGetCurrent");
  if (current != nullptr) return;
  CUdevice handle;
  check(a.cuDeviceGet(&handle, device), "cuDeviceGet");
  CUcontext primary = nullptr;
  check(a.cuDevicePrimaryCtxRetain(&primary, handle), "cuDevicePrimaryCtxRetain");
  check(a.cuCtxSetCurrent(primary), "cuCtxSetCurrent");
}

// The header every source may include as "acc_bf16.cuh": float32 to bf16 as ATen rounds (to
// nearest even, NaN to the quiet NaN), as bits or as the float32 it stands for; bf16 bits as
// float32.
const char* BF16_HEADER = R"CUDA(
#pragma once
__device__ __forceinline__ unsigned int bf16_bits(float f) {
  const unsigned int bits = __float_as_uint(f);
  return f != f ? 0x7fc0u : (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ float bf16_round(float f) { return __uint_as_float(bf16_bits(f) << 16); }
__device__ __forceinline__ float bf16_value(unsigned short bits) { return __uint_as_float((unsigned int)bits << 16); }
)CUDA";

std::vector<char> compile(const char* source, const std::vector<std::string>& options, int device) {
  const Api& a = api();
  const auto* properties = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device));
  std::vector<std::string> all{"--gpu-architecture=sm_" + std::to_string(properties->major * 10 + properties->minor),
                               "-std=c++17"};
  all.insert(all.end(), options.begin(), options.end());
  std::vector<const char*> pointers;
  for (const auto& o : all) pointers.push_back(o.c_str());
  nvrtcProgram program;
  const char* headers[] = {BF16_HEADER};
  const char* header_names[] = {"acc_bf16.cuh"};
  check(a.nvrtcCreateProgram(&program, source, "kernels.cu", 1, headers, header_names), "nvrtcCreateProgram");
  std::unique_ptr<nvrtcProgram, void (*)(nvrtcProgram*)> owned(&program, [](nvrtcProgram* p) {
    api().nvrtcDestroyProgram(p);
  });
  if (a.nvrtcCompileProgram(program, static_cast<int>(pointers.size()), pointers.data()) != NVRTC_SUCCESS) {
    size_t size = 0;
    a.nvrtcGetProgramLogSize(program, &size);
    std::string log(size, '\0');
    a.nvrtcGetProgramLog(program, log.data());
    TORCH_CHECK(false, "CUDA kernels: compiling failed:\n", log);
  }
  size_t size = 0;
  check(a.nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize");
  std::vector<char> cubin(size);
  check(a.nvrtcGetCUBIN(program, cubin.data()), "nvrtcGetCUBIN");
  return cubin;
}

}  // namespace

bool available() {
  static const bool loaded = [] {
    try {
      api();
      return true;
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return loaded;
}

Kernel get(const char* source, const std::vector<std::string>& options, const std::string& name) {
  static std::mutex mutex;
  // Modules by source, options and device; their kernels by name as well.
  static std::map<std::tuple<const char*, std::vector<std::string>, int>, CUmodule> modules;
  static std::map<std::tuple<const char*, std::vector<std::string>, int, std::string>, Kernel> kernels;
  const int device = c10::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = kernels.find({source, options, device, name}); it != kernels.end()) return it->second;
  auto module = modules.find({source, options, device});
  if (module == modules.end()) {
    auto cubin = compile(source, options, device);
    ensure_context(device);
    CUmodule loaded;  // kept for the process's life, like the kernels that point into it
    check(api().cuModuleLoadData(&loaded, cubin.data()), "cuModuleLoadData");
    module = modules.emplace(std::make_tuple(source, options, device), loaded).first;
  }
  CUfunction function;
  check(api().cuModuleGetFunction(&function, module->second, name.c_str()), "cuModuleGetFunction");
  return kernels[{source, options, device, name}] = Kernel{function};
}

bool get_all(const char* source, const std::vector<std::string>& options, std::initializer_list<const char*> names,
             std::vector<Kernel>& kernels) {
  // The answer per source, options, device and names (empty: failed), so that a launch's
  // lookup is one search under one lock.
  using Key = std::tuple<const char*, std::vector<std::string>, int, std::vector<const char*>>;
  static std::mutex mutex;
  static std::map<Key, std::vector<Kernel>> found;
  Key key{source, options, static_cast<int>(c10::cuda::current_device()), std::vector<const char*>(names)};
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = found.find(key); it != found.end()) {
      kernels = it->second;
      return !kernels.empty();
    }
  }
  kernels.clear();
  try {
    for (const char* name : names) kernels.push_back(get(source, options, name));
  } catch (const c10::Error& e) {
    TORCH_WARN("accelerate-ts: a CUDA kernel is unavailable, so ATen's operations run instead: ",
               e.what_without_backtrace());
    kernels.clear();
  }
  std::lock_guard<std::mutex> lock(mutex);
  found.emplace(std::move(key), kernels);
  return !kernels.empty();
}

void launch(Kernel kernel, unsigned grid_x, unsigned grid_y, unsigned block_x, unsigned block_y,
            std::vector<void*> args) {
  if (grid_x == 0 || grid_y == 0) return;
  ensure_context(c10::cuda::current_device());
  auto stream = at::cuda::getCurrentCUDAStream().stream();
  check(api().cuLaunchKernel(static_cast<CUfunction>(kernel.function), grid_x, grid_y, 1, block_x, block_y, 1, 0,
                             stream, args.data(), nullptr),
        "cuLaunchKernel");
}

}  // namespace acc::jit
