// Several float32 tensors converted to bf16 in one kernel launch, for mixed precision's
// conversions ahead of a chain of layers (shim/linear.cpp's cast_ahead): one driver call on the
// host, where ATen's multi-tensor copy took about 150 µs of host time per call in `mlp`'s
// profile on an H200 host, and a chain's step on a GPU is bound by the host's work.
#include "kernels.h"
#include "jit.h"
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

constexpr int MAX_TENSORS = 32;

// Compiled with -DMAX_TENSORS=<table size>.
const char* SOURCE = R"CUDA(
#include "acc_bf16.cuh"

struct Table {
  const float* from[MAX_TENSORS];
  unsigned short* to[MAX_TENSORS];
  long long n[MAX_TENSORS];
};

// Tensor blockIdx.y: to[i] = from[i] in bf16 for its n elements; four at a time (one 16-byte
// read, one 8-byte write) where both addresses allow it, then the rest one by one.
extern "C" __global__ void to_bf16(Table table) {
  const float* from = table.from[blockIdx.y];
  unsigned short* to = table.to[blockIdx.y];
  const long long n = table.n[blockIdx.y];
  const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long done = 0;
  if (reinterpret_cast<unsigned long long>(from) % 16 == 0 && reinterpret_cast<unsigned long long>(to) % 8 == 0) {
    const float4* from4 = reinterpret_cast<const float4*>(from);
    uint2* to4 = reinterpret_cast<uint2*>(to);
    for (long long i = first; i < n / 4; i += stride) {
      const float4 v = from4[i];
      to4[i] = make_uint2(bf16_bits(v.x) | (bf16_bits(v.y) << 16), bf16_bits(v.z) | (bf16_bits(v.w) << 16));
    }
    done = n / 4 * 4;
  }
  for (long long i = done + first; i < n; i += stride) {
    to[i] = static_cast<unsigned short>(bf16_bits(from[i]));
  }
}
)CUDA";

// The kernel's parameter, as SOURCE declares it.
struct Table {
  const void* from[MAX_TENSORS];
  void* to[MAX_TENSORS];
  long long n[MAX_TENSORS];
};

}  // namespace

bool acc::kernels::to_bf16(const std::vector<at::Tensor>& from, const std::vector<at::Tensor>& to) {
  if (from.empty() || from.size() != to.size()) return false;
  const auto device = from[0].device();
  for (size_t i = 0; i < from.size(); ++i) {
    const auto &a = from[i], &b = to[i];
    // The same layout, dense: element k of one's memory is element k of the other's.
    if (!a.is_cuda() || a.device() != device || b.device() != device || a.scalar_type() != at::kFloat ||
        b.scalar_type() != at::kBFloat16 || !a.is_non_overlapping_and_dense() || a.sizes() != b.sizes() ||
        a.strides() != b.strides()) {
      return false;
    }
  }
  if (!acc::jit::available()) return false;
  c10::cuda::CUDAGuard guard(device);
  std::vector<acc::jit::Kernel> kernels;
  static const std::vector<std::string> options{"-DMAX_TENSORS=" + std::to_string(MAX_TENSORS)};
  if (!acc::jit::get_all(SOURCE, options, {"to_bf16"}, kernels)) return false;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // One launch per MAX_TENSORS tensors (the table's size).
  for (size_t start = 0; start < from.size(); start += MAX_TENSORS) {
    const size_t count = std::min(from.size() - start, static_cast<size_t>(MAX_TENSORS));
    Table table{};
    int64_t largest = 0;
    for (size_t i = 0; i < count; ++i) {
      table.from[i] = from[start + i].data_ptr();
      table.to[i] = to[start + i].data_ptr();
      table.n[i] = from[start + i].numel();
      largest = std::max<int64_t>(largest, table.n[i]);
    }
    if (largest == 0) continue;
    // Enough threads for four elements each in the largest tensor, up to four blocks per SM.
    const auto blocks = static_cast<unsigned>(std::min<int64_t>((largest + 1023) / 1024, 4 * sms));
    acc::jit::launch(kernels[0], blocks, static_cast<unsigned>(count), 256, 1, {&table});
  }
  return true;
}
