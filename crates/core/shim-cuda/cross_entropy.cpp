// Cross-entropy over the rows of a matrix of logits, and their gradient (softmax - one_hot)
// written into a given matrix, which may be the logits themselves: one kernel in place of
// ATen's row maximum, softmax, row sum, gathers, scatter and masks, each a pass over the
// [rows, classes] matrix. The fused head and loss (shim/fused_loss.cpp) overwrites its chunk of
// logits; crossEntropy on a GPU (shim/cross_entropy.cpp) writes a gradient buffer. Each row is
// read twice (the second time mostly from L2) and written once: pass 1 finds the largest logit
// and the sum of exp(logit - largest) (an online softmax, in float32); pass 2 writes
// softmax - one_hot(target).
#include "kernels.h"
#include "jit.h"
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

// Compiled with -DTHREADS=<threads per block>, -DVEC=8 (rows of a multiple of 8 logits, 16-byte
// aligned) or -DVEC=1 (any rows), and -DIN_BF16 (else float32 logits).
const char* SOURCE = R"CUDA(
#define NEG_INF __int_as_float(0xff800000)
#define QNAN __int_as_float(0x7fc00000)

// VEC neighbouring logits, read or written at once (with VEC 8: 16 bytes of bf16, 32 of float32).
#ifdef IN_BF16
typedef unsigned short logit_t;
__device__ __forceinline__ float value(const logit_t* p) { return __uint_as_float(static_cast<unsigned int>(*p) << 16); }
// float32 to bf16 bits as ATen rounds: to nearest even, NaN to the quiet NaN.
__device__ __forceinline__ unsigned int bf16(float f) {
  const unsigned int bits = __float_as_uint(f);
  return f != f ? 0x7fc0u : (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ void store1(logit_t* p, float v) { *p = static_cast<unsigned short>(bf16(v)); }
#if VEC == 8
__device__ __forceinline__ void loadv(const logit_t* p, float* v) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(w[i] << 16);
    v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void storev(logit_t* p, const float* v) {
  uint4 u;
  u.x = bf16(v[0]) | (bf16(v[1]) << 16);
  u.y = bf16(v[2]) | (bf16(v[3]) << 16);
  u.z = bf16(v[4]) | (bf16(v[5]) << 16);
  u.w = bf16(v[6]) | (bf16(v[7]) << 16);
  *reinterpret_cast<uint4*>(p) = u;
}
#endif
#else
typedef float logit_t;
__device__ __forceinline__ float value(const logit_t* p) { return *p; }
__device__ __forceinline__ void store1(logit_t* p, float v) { *p = v; }
#if VEC == 8
__device__ __forceinline__ void loadv(const logit_t* p, float* v) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void storev(logit_t* p, const float* v) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
#endif
#endif
#if VEC == 1
__device__ __forceinline__ void loadv(const logit_t* p, float* v) { v[0] = value(p); }
__device__ __forceinline__ void storev(logit_t* p, const float* v) { store1(p, v[0]); }
#endif

// (largest, sum of exp(x - largest)) of two parts of a row, as one.
__device__ __forceinline__ float2 combine(float2 a, float2 b) {
  if (a.x == NEG_INF) return b;
  if (b.x == NEG_INF) return a;
  const float m = fmaxf(a.x, b.x);
  return make_float2(m, a.y * expf(a.x - m) + b.y * expf(b.x - m));
}

__device__ __forceinline__ float2 block_combine(float2 v, float2* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float2 other = make_float2(__shfl_xor_sync(0xffffffffu, v.x, offset), __shfl_xor_sync(0xffffffffu, v.y, offset));
    v = combine(v, other);
  }
  __syncthreads();  // the previous row's readers are done with `shared`
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  float2 total = shared[0];
#pragma unroll
  for (int w = 1; w < THREADS / 32; ++w) total = combine(total, shared[w]);
  return total;
}

// For each row of logits [rows, cols] (cols a multiple of VEC): row_loss = logsumexp -
// logit[target], 0 where the target is ignore_index, NaN where it is neither that nor a class;
// with a `grad` matrix (which may be `logits`), its row is written with softmax -
// one_hot(target): zeros where ignored, NaN where the target is invalid.
extern "C" __global__ void __launch_bounds__(THREADS) rows_loss(const logit_t* logits, const long long* targets,
                                                                long long ignore_index, long long rows, long long cols,
                                                                logit_t* grad, float* row_loss) {
  __shared__ float2 shared[32];
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const logit_t* x = logits + row * cols;
    float2 part = make_float2(NEG_INF, 0.f);
    for (long long j = VEC * threadIdx.x; j < cols; j += VEC * THREADS) {
      float v[VEC];
      loadv(x + j, v);
      float m = v[0];
#pragma unroll
      for (int i = 1; i < VEC; ++i) m = fmaxf(m, v[i]);
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < VEC; ++i) s += m == NEG_INF ? 0.f : expf(v[i] - m);
      part = combine(part, make_float2(m, s));
    }
    const long long target = targets[row];
    const bool ignored = target == ignore_index, valid = !ignored && target >= 0 && target < cols;
    // Read before block_combine's barrier: after it, other warps may overwrite the row.
    const float picked = threadIdx.x == 0 && valid ? value(x + target) : 0.f;
    const float2 total = block_combine(part, shared);
    if (threadIdx.x == 0) row_loss[row] = ignored ? 0.f : valid ? (total.x + logf(total.y)) - picked : QNAN;
    if (grad == nullptr) continue;
    logit_t* out = grad + row * cols;
    const float inverse = 1.f / total.y;
    for (long long j = VEC * threadIdx.x; j < cols; j += VEC * THREADS) {
      float v[VEC];
      loadv(x + j, v);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float p = expf(v[i] - total.x) * inverse;
        v[i] = ignored ? 0.f : valid ? (j + i == target ? p - 1.f : p) : QNAN;
      }
      storev(out + j, v);
    }
  }
}
)CUDA";

std::vector<std::string> options_for(bool bf16, int vec, unsigned threads) {
  std::vector<std::string> options{"-DTHREADS=" + std::to_string(threads), "-DVEC=" + std::to_string(vec)};
  if (bf16) options.emplace_back("-DIN_BF16");
  return options;
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

}  // namespace

bool acc::kernels::cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index,
                                      const at::Tensor& grad, at::Tensor& row_loss) {
  const bool bf16 = logits.scalar_type() == at::kBFloat16;
  if (!bf16 && logits.scalar_type() != at::kFloat) return false;
  if (!logits.is_cuda() || logits.dim() != 2 || !logits.is_contiguous() || logits.numel() == 0) return false;
  if (grad.defined() && (grad.sizes() != logits.sizes() || grad.scalar_type() != logits.scalar_type() ||
                         grad.device() != logits.device() || !grad.is_contiguous())) {
    return false;
  }
  if (targets.scalar_type() != at::kLong || !targets.is_contiguous() || targets.numel() != logits.size(0) ||
      targets.device() != logits.device()) {
    return false;
  }
  if (!acc::jit::available()) return false;
  const int64_t cols = logits.size(1);
  const int vec = cols % 8 == 0 && aligned16(logits) && (!grad.defined() || aligned16(grad)) ? 8 : 1;
  // A warp a row for short rows (a classifier's few classes), eight for a vocabulary.
  const unsigned threads = cols <= 4 * 32 * vec ? 32 : 256;
  c10::cuda::CUDAGuard guard(logits.device());  // the kernel is compiled and loaded for this device
  std::vector<acc::jit::Kernel> kernels;
  if (!acc::jit::get_all(SOURCE, options_for(bf16, vec, threads), {"rows_loss"}, kernels)) return false;
  const int64_t rows = logits.size(0);
  row_loss = at::empty({rows}, logits.options().dtype(at::kFloat));
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(rows, 8 * sms));
  void *px = logits.data_ptr(), *pl = row_loss.data_ptr(), *pg = grad.defined() ? grad.data_ptr() : nullptr;
  const void* pt = targets.data_ptr();
  long long ignore = ignore_index, n = rows, width = cols;
  acc::jit::launch(kernels[0], blocks, 1, threads, 1, {&px, &pt, &ignore, &n, &width, &pg, &pl});
  return true;
}
