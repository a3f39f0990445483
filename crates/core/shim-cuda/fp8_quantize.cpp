// fp8 quantization of a matrix (instead of ATen's eight kernels, each a full pass): one pass
// that scales, casts and writes the fp8 matrix and, when asked, its transpose, after a pass
// for the largest magnitude (dynamic scaling) or none (delayed scaling: the scale comes from
// the amax history, and the cast records this call's largest magnitude into it; a one-warp
// kernel then shifts the history). The values are those of shim/fp8.cpp's portable path: the
// power-of-two scale that brings the largest magnitude (or the history's) to at most the
// format's largest value, computed by each block on the device, so nothing waits for the host
// and the kernels can be captured in a CUDA graph.
#include "kernels.h"
#include "jit.h"
#include <c10/cuda/CUDAGuard.h>

namespace {

// Compiled with -DIN_BF16 (else float input), -DE5M2 (else e4m3) and -DGELU=1 (erf) or 2
// (tanh) to quantize the input's GELU (shim/fp8.cpp's geluLinear).
const char* SOURCE = R"CUDA(
#include "acc_bf16.cuh"
#ifndef GELU
#define GELU 0
#endif
// Four neighbouring elements, read at once, and their values.
#ifdef IN_BF16
typedef uint2 in4_t;
__device__ __forceinline__ float4 values(in4_t v) {
  return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u), __uint_as_float(v.y << 16),
                     __uint_as_float(v.y & 0xffff0000u));
}
#else
typedef float4 in4_t;
__device__ __forceinline__ float4 values(in4_t v) { return v; }
#endif

// The activation applied before quantizing, as ATen's GELU computes it: in float32, its
// result rounded to the input's dtype (to nearest even, for bf16).
__device__ __forceinline__ float act(float v) {
#if GELU == 1
  float g = 0.5f * v * (1.f + erff(v * 0.70710678118654752440f));
#elif GELU == 2
  const float cube = v * v * v;
  float g = 0.5f * v * (1.f + tanhf(0.79788456080286535588f * (v + 0.044715f * cube)));
#else
  return v;
#endif
#if GELU != 0 && defined(IN_BF16)
  g = bf16_round(g);
#endif
#if GELU != 0
  return g;
#endif
}
__device__ __forceinline__ float4 activated(in4_t v) {
  const float4 f = values(v);
  return make_float4(act(f.x), act(f.y), act(f.z), act(f.w));
}

// Two floats to two fp8 values (`lo` in the low byte): round to nearest even, finite.
__device__ __forceinline__ unsigned int fp8x2(float lo, float hi) {
  unsigned short r;
#ifdef E5M2
  asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
#else
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
#endif
  return r;
}

__device__ __forceinline__ unsigned int magnitude(float v) { return __float_as_uint(fabsf(v)); }

__device__ __forceinline__ unsigned int largest(float4 v) {
  return max(max(magnitude(v.x), magnitude(v.y)), max(magnitude(v.z), magnitude(v.w)));
}

// The maximum of m over the block, atomically into *out (m: float bits, see amax).
__device__ __forceinline__ void block_max_into(unsigned int m, unsigned int* out) {
  for (int offset = 16; offset > 0; offset >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, offset));
  __shared__ unsigned int warps[32];
  const int thread = threadIdx.y * blockDim.x + threadIdx.x, threads = blockDim.x * blockDim.y;
  if (thread % 32 == 0) warps[thread / 32] = m;
  __syncthreads();
  if (thread < 32) {
    m = thread < threads / 32 ? warps[thread] : 0;
    for (int offset = 16; offset > 0; offset >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, offset));
    if (thread == 0) atomicMax(out, m);
  }
}

// The largest |x| of the n groups of four x (NaN if any is NaN), as float bits into *out: for
// non-negative floats and positive NaNs the integer order is the float order, so an integer
// maximum is exact. Each thread reads two groups an iteration.
extern "C" __global__ void amax(const in4_t* x, long long n, unsigned int* out) {
  unsigned int m = 0;
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  for (; i + stride < n; i += 2 * stride) {
    const float4 a = activated(x[i]), b = activated(x[i + stride]);
    m = max(m, max(largest(a), largest(b)));
  }
  if (i < n) m = max(m, largest(activated(x[i])));
  block_max_into(m, out);
}

// Shifts an amax history of h <= 30 entries (newest first) by one, moving in the current
// call's amax from entry h and zeroing it for the next call, and stores the largest entry in
// entry h + 1 (the next call's scale comes from it). One warp.
extern "C" __global__ void roll(float* history, int h) {
  const int i = threadIdx.x;
  const float v = i == 0 ? history[h] : (i < h ? history[i - 1] : 0.f);
  __syncwarp();
  if (i < h) history[i] = v;
  unsigned int m = i < h ? __float_as_uint(v) : 0u;  // amaxes are >= 0 (or NaN, which wins)
  for (int offset = 16; offset > 0; offset >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, offset));
  if (i == 0) {
    history[h] = 0.f;
    history[h + 1] = __uint_as_float(m);
  }
}

// The power of two s with amax / s <= max (as shim/fp8.cpp: exp2(ceil(log2(max(amax, 1e-30) / max)))).
__device__ __forceinline__ float scale_of(unsigned int amax_bits, float max_value) {
  float a = __uint_as_float(amax_bits);
  a = a != a ? a : fmaxf(a, 1e-30f);
  return exp2f(ceilf(log2f(a / max_value)));
}

// The 4 x 4 bytes of rows r[0..3] (byte i of each is column i) as columns: byte j of column
// i is r[j]'s byte i.
__device__ __forceinline__ void transpose4x4(const unsigned int r[4], unsigned int c[4]) {
  const unsigned int t0 = __byte_perm(r[0], r[1], 0x5140), t1 = __byte_perm(r[2], r[3], 0x5140);
  const unsigned int t2 = __byte_perm(r[0], r[1], 0x7362), t3 = __byte_perm(r[2], r[3], 0x7362);
  c[0] = __byte_perm(t0, t1, 0x5410);
  c[1] = __byte_perm(t0, t1, 0x7632);
  c[2] = __byte_perm(t2, t3, 0x5410);
  c[3] = __byte_perm(t2, t3, 0x7632);
}

// out = fp8(x / s) for the [rows, cols] row-major x, and out_t = its transpose when not null;
// scale_out = s, the scale of the amax at `amax_bits`. When amax_out is not null, the largest
// |x| is recorded into it. rows and cols are multiples of 4.
// A block of 32 x 8 threads converts a tile of 128 x 128: thread (tx, ty) the 4 x 4 blocks
// of rows 4a..4a+3 (a = ty + 8k, k < 4) and columns 4tx..4tx+3, whose rows it writes to out
// and whose columns (transposed in registers) to shared memory; then each warp writes rows of
// out_t, 128 bytes at a time. Shared words are XOR-swizzled by column group: no bank conflicts.
extern "C" __global__ void cast(const in4_t* x, long long rows, long long cols, const unsigned int* amax_bits,
                                unsigned int* amax_out, float max_value, unsigned int* out, unsigned int* out_t,
                                float* scale_out) {
  __shared__ unsigned int tile[128 * 32];  // [column][row group]
  const float s = scale_of(*amax_bits, max_value);
  const float inverse = 1.0f / s;
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0) *scale_out = s;
  const long long r0 = (long long)blockIdx.x * 128, c0 = (long long)blockIdx.y * 128;
  const long long c = c0 + 4 * threadIdx.x;
  unsigned int m = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int a = threadIdx.y + 8 * k;
    const long long r = r0 + 4 * a;
    if (r < rows && c < cols) {
      unsigned int packed[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float4 v = activated(x[((r + j) * cols + c) / 4]);
        m = max(m, largest(v));
        packed[j] = fp8x2(v.x * inverse, v.y * inverse) | (fp8x2(v.z * inverse, v.w * inverse) << 16);
        out[((r + j) * cols + c) / 4] = packed[j];
      }
      if (out_t != nullptr) {
        unsigned int columns[4];
        transpose4x4(packed, columns);
#pragma unroll
        for (int i = 0; i < 4; ++i) tile[(4 * threadIdx.x + i) * 32 + (a ^ threadIdx.x)] = columns[i];
      }
    }
  }
  if (amax_out != nullptr) block_max_into(m, amax_out);
  if (out_t == nullptr) return;
  __syncthreads();
  // out_t[col][row]: lane l of a warp writes rows 4l..4l+3 of one column.
  const long long r = r0 + 4 * threadIdx.x;
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    const int tc = threadIdx.y + 8 * k;
    const long long cc = c0 + tc;
    if (r < rows && cc < cols) out_t[(cc * rows + r) / 4] = tile[tc * 32 + (threadIdx.x ^ (tc >> 2))];
  }
}
)CUDA";

std::vector<std::string> options(const at::Tensor& t, at::ScalarType dtype, int gelu) {
  std::vector<std::string> o;
  if (gelu != 0) o.push_back("-DGELU=" + std::to_string(gelu));
  if (t.scalar_type() == at::kBFloat16) o.push_back("-DIN_BF16");
  if (dtype == at::kFloat8_e5m2) o.push_back("-DE5M2");
  return o;
}

unsigned blocks(int64_t n, int64_t per_block) { return static_cast<unsigned>((n + per_block - 1) / per_block); }

}  // namespace

bool acc::kernels::fp8_quantize(const at::Tensor& input, at::ScalarType dtype, double max, bool transpose,
                                const at::Tensor& history, bool delayed, int gelu, acc::Fp8Quantized& result) {
  if (!input.is_cuda() || input.dim() != 2 || input.size(0) % 4 != 0 || input.size(1) % 4 != 0 ||
      blocks(input.size(1), 128) > 65535 || (input.scalar_type() != at::kFloat && input.scalar_type() != at::kBFloat16) ||
      !acc::jit::available())
    return false;
  if (history.defined() && (!history.is_cuda() || history.device() != input.device() ||
                            history.scalar_type() != at::kFloat || !history.is_contiguous() || history.numel() > 32 ||
                            history.numel() < 3))
    return false;
  c10::cuda::CUDAGuard guard(input.device());
  const auto t = input.contiguous();
  // Four elements are read at once.
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % (4 * t.element_size()) != 0) return false;
  const auto opts = options(t, dtype, gelu);
  std::vector<acc::jit::Kernel> kernels;
  if (!acc::jit::get_all(SOURCE, opts, {"amax", "cast", "roll"}, kernels)) return false;
  const int64_t rows = t.size(0), cols = t.size(1);
  result.scale = at::empty({}, t.options().dtype(at::kFloat));
  result.data = at::empty({rows, cols}, t.options().dtype(dtype));
  result.data_t = transpose ? at::empty({cols, rows}, t.options().dtype(dtype)) : at::Tensor();
  const void* x = t.data_ptr();
  long long groups = t.numel() / 4, r = rows, c = cols;
  // The amaxes the scale comes from, and where this call's amax goes: without a history, a
  // scratch word; with one, its last entry (the current call's), which the history's
  // earlier entries give the scale instead when delayed.
  int h = history.defined() ? static_cast<int>(history.numel()) - 2 : 0;
  at::Tensor scratch = history.defined() ? at::Tensor() : at::zeros({1}, t.options().dtype(at::kFloat));
  float* current = history.defined() ? history.data_ptr<float>() + h : scratch.data_ptr<float>();
  const void* source = delayed ? history.data_ptr<float>() + h + 1 : current;
  void* amax_out = delayed ? current : nullptr;
  if (!delayed) {
    void* bits = current;
    acc::jit::launch(kernels[0], std::min<unsigned>(blocks(groups, 256 * 8), 2048), 1, 256,
                     1, {&x, &groups, &bits});
  }
  float limit = static_cast<float>(max);
  void* out = result.data.data_ptr();
  void* out_t = transpose ? result.data_t.data_ptr() : nullptr;
  void* scale = result.scale.data_ptr();
  acc::jit::launch(kernels[1], blocks(rows, 128), blocks(cols, 128), 32, 8,
                   {&x, &r, &c, &source, &amax_out, &limit, &out, &out_t, &scale});
  if (history.defined()) {
    void* entries = history.data_ptr();
    acc::jit::launch(kernels[2], 1, 1, 32, 1, {&entries, &h});
  }
  return true;
}
