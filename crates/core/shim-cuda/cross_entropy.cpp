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
#include "acc_bf16.cuh"
#define NEG_INF __int_as_float(0xff800000)
#define QNAN __int_as_float(0x7fc00000)

// VEC neighbouring logits, read or written at once (with VEC 8: 16 bytes of bf16, 32 of float32).
#ifdef IN_BF16
typedef unsigned short logit_t;
__device__ __forceinline__ float value(const logit_t* p) { return bf16_value(*p); }
__device__ __forceinline__ void store1(logit_t* p, float v) { *p = static_cast<unsigned short>(bf16_bits(v)); }
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
  u.x = bf16_bits(v[0]) | (bf16_bits(v[1]) << 16);
  u.y = bf16_bits(v[2]) | (bf16_bits(v[3]) << 16);
  u.z = bf16_bits(v[4]) | (bf16_bits(v[5]) << 16);
  u.w = bf16_bits(v[6]) | (bf16_bits(v[7]) << 16);
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

// For each row of logits [rows, cols] (cols a multiple of VEC), its loss: logsumexp -
// logit[target], 0 where the target is ignore_index, NaN where it is neither that nor a class;
// written to row_loss[row] if row_loss is given. With `partial`, each block also writes the
// sum of its rows' losses and the number of its rows not ignored (partial[2 * block] and
// partial[2 * block + 1]), for reduce_rows. With a `grad` matrix (which may be `logits`), its
// row is written with softmax - one_hot(target): zeros where ignored, NaN where the target is
// invalid.
extern "C" __global__ void __launch_bounds__(THREADS) rows_loss(const logit_t* logits, const long long* targets,
                                                                long long ignore_index, long long rows, long long cols,
                                                                logit_t* grad, float* row_loss, float* partial) {
  __shared__ float2 shared[32];
  float block_loss = 0.f, block_kept = 0.f;  // thread 0's
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
    if (threadIdx.x == 0) {
      const float loss = ignored ? 0.f : valid ? (total.x + logf(total.y)) - picked : QNAN;
      if (row_loss != nullptr) row_loss[row] = loss;
      block_loss += loss;
      block_kept += ignored ? 0.f : 1.f;
    }
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
  if (partial != nullptr && threadIdx.x == 0) {
    partial[2 * blockIdx.x] = block_loss;
    partial[2 * blockIdx.x + 1] = block_kept;
  }
}

// One warp: the blocks' partial sums added in a fixed order (the same result every run). The
// loss is their sum, or with `mean` the sum over the rows not ignored divided by their number
// (NaN when there are none, as ATen's); `scale` is what backward multiplies the gradient by:
// 1, or with `mean` 1 / max(number, 1).
extern "C" __global__ void reduce_rows(const float* partial, int blocks, int mean, float* loss, float* scale) {
  float sum = 0.f, kept = 0.f;
  for (int b = threadIdx.x; b < blocks; b += 32) {
    sum += partial[2 * b];
    kept += partial[2 * b + 1];
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    kept += __shfl_xor_sync(0xffffffffu, kept, offset);
  }
  if (threadIdx.x == 0) {
    *loss = mean ? sum / kept : sum;
    *scale = mean ? 1.f / fmaxf(kept, 1.f) : 1.f;
  }
}

// Backward: out = grad * g * scale[0] (scale null: 1), g one value (g_stride 0) or one per row
// (float32); VEC neighbouring elements at a time, all in one row (VEC divides cols).
extern "C" __global__ void scale_rows(const logit_t* grad, const float* g, long long g_stride, const float* scale,
                                      long long rows, long long cols, logit_t* out) {
  const float s = scale != nullptr ? *scale : 1.f, all = g[0] * s;
  const long long n = rows * cols, step = VEC * (long long)gridDim.x * blockDim.x;
  for (long long i = VEC * (blockIdx.x * (long long)blockDim.x + threadIdx.x); i < n; i += step) {
    const float f = g_stride == 0 ? all : g[(i / cols) * g_stride] * s;
    float v[VEC];
    loadv(grad + i, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] *= f;
    storev(out + i, v);
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
                                      const at::Tensor& grad, int64_t reduction, at::Tensor& loss, at::Tensor& scale) {
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
  c10::cuda::CUDAGuard guard(logits.device());  // the kernels are compiled and loaded for this device
  std::vector<acc::jit::Kernel> kernels;
  if (!acc::jit::get_all(SOURCE, options_for(bf16, vec, threads), {"rows_loss", "reduce_rows"}, kernels)) return false;
  const int64_t rows = logits.size(0);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(rows, 8 * sms));
  const auto options = logits.options().dtype(at::kFloat);
  at::Tensor partial;
  void *px = logits.data_ptr(), *pg = grad.defined() ? grad.data_ptr() : nullptr, *pl = nullptr, *pp = nullptr;
  if (reduction == 0) {
    loss = at::empty({rows}, options);
    pl = loss.data_ptr();
  } else {
    partial = at::empty({2 * static_cast<int64_t>(blocks)}, options);
    pp = partial.data_ptr();
  }
  const void* pt = targets.data_ptr();
  long long ignore = ignore_index, n = rows, width = cols;
  acc::jit::launch(kernels[0], blocks, 1, threads, 1, {&px, &pt, &ignore, &n, &width, &pg, &pl, &pp});
  if (reduction == 0) return true;
  loss = at::empty({}, options);
  scale = at::empty({}, options);
  int count = static_cast<int>(blocks), mean = reduction == 1 ? 1 : 0;
  void *ploss = loss.data_ptr(), *pscale = scale.data_ptr();
  const void* ppartial = partial.data_ptr();
  acc::jit::launch(kernels[1], 1, 1, 32, 1, {&ppartial, &count, &mean, &ploss, &pscale});
  return true;
}

bool acc::kernels::cross_entropy_scale(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& scale,
                                       at::Tensor& out) {
  const bool bf16 = grad.scalar_type() == at::kBFloat16;
  if ((!bf16 && grad.scalar_type() != at::kFloat) || !grad.is_cuda() || grad.dim() != 2 || !grad.is_contiguous()) {
    return false;
  }
  const int64_t rows = grad.size(0), cols = grad.size(1);
  // g: one value, or one a row (any stride: a sum's gradient comes expanded).
  const bool per_row = g.dim() == 1 && g.size(0) == rows;
  if (g.scalar_type() != at::kFloat || g.device() != grad.device() || !(g.numel() == 1 || per_row)) return false;
  if (scale.defined() && (scale.scalar_type() != at::kFloat || scale.numel() != 1 || scale.device() != grad.device())) {
    return false;
  }
  if (!acc::jit::available() || grad.numel() == 0) return false;
  out = at::empty_like(grad);
  const int vec = cols % 8 == 0 && aligned16(grad) && aligned16(out) ? 8 : 1;
  c10::cuda::CUDAGuard guard(grad.device());
  std::vector<acc::jit::Kernel> kernels;
  if (!acc::jit::get_all(SOURCE, options_for(bf16, vec, 256), {"scale_rows"}, kernels)) return false;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((grad.numel() / vec + 255) / 256, 16 * sms));
  const void *pgrad = grad.data_ptr(), *pg = g.data_ptr(), *pscale = scale.defined() ? scale.data_ptr() : nullptr;
  void* pout = out.data_ptr();
  long long stride = per_row ? g.stride(0) : 0, n = rows, width = cols;
  acc::jit::launch(kernels[0], blocks, 1, 256, 1, {&pgrad, &pg, &stride, &pscale, &n, &width, &pout});
  return true;
}
