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

// Compiled with -DIN_BF16 (else float input) and -DE5M2 (else e4m3).
const char* SOURCE = R"CUDA(
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
    const float4 a = values(x[i]), b = values(x[i + stride]);
    m = max(m, max(largest(a), largest(b)));
  }
  if (i < n) m = max(m, largest(values(x[i])));
  block_max_into(m, out);
}

// The largest of `count` non-negative floats (as bits: NaN above all), read by one thread.
__device__ __forceinline__ unsigned int largest_of(const unsigned int* bits, int count) {
  unsigned int m = 0;
  for (int i = 0; i < count; ++i) m = max(m, bits[i]);
  return m;
}

// Shifts an amax history of h <= 31 entries (newest first) by one, moving in the current
// call's amax from entry h and zeroing it for the next call. One warp.
extern "C" __global__ void roll(float* history, int h) {
  const int i = threadIdx.x;
  const float v = i == 0 ? history[h] : (i < h ? history[i - 1] : 0.f);
  __syncwarp();
  if (i < h) history[i] = v;
  if (i == 0) history[h] = 0.f;
}

// The power of two s with amax / s <= max (as shim/fp8.cpp: exp2(ceil(log2(max(amax, 1e-30) / max)))).
__device__ __forceinline__ float scale_of(unsigned int amax_bits, float max_value) {
  float a = __uint_as_float(amax_bits);
  a = a != a ? a : fmaxf(a, 1e-30f);
  return exp2f(ceilf(log2f(a / max_value)));
}

// out = fp8(x / s) for the [rows, cols] row-major x, and out_t = its transpose when not null;
// scale_out = s, where s is the scale of the largest of the `count` amaxes at `amax_bits`.
// When amax_out is not null, the largest |x| is recorded into it. rows and cols are multiples of 4. A block of 32 x 8 threads converts a tile
// of 128 x 128, each thread four neighbouring columns of 16 rows; for the transpose, each
// warp writes 128 bytes of a row of out_t at a time. The tile's rows are 129 bytes apart, so
// the transposing reads fall in different banks.
extern "C" __global__ void cast(const in4_t* x, long long rows, long long cols, const unsigned int* amax_bits,
                                int count, unsigned int* amax_out, float max_value, unsigned int* out,
                                unsigned int* out_t, float* scale_out) {
  __shared__ unsigned char tile[128 * 129];
  __shared__ unsigned int source;
  if (threadIdx.x == 0 && threadIdx.y == 0) source = largest_of(amax_bits, count);
  __syncthreads();
  const float s = scale_of(source, max_value);
  const float inverse = 1.0f / s;
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0) *scale_out = s;
  const long long r0 = (long long)blockIdx.x * 128, c0 = (long long)blockIdx.y * 128;
  const long long c = c0 + 4 * threadIdx.x;
  unsigned int m = 0;
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    const int tr = threadIdx.y + 8 * k;
    const long long r = r0 + tr;
    if (r < rows && c < cols) {
      const float4 v = values(x[(r * cols + c) / 4]);
      m = max(m, largest(v));
      const unsigned int packed = fp8x2(v.x * inverse, v.y * inverse) | (fp8x2(v.z * inverse, v.w * inverse) << 16);
      out[(r * cols + c) / 4] = packed;
      unsigned char* t = tile + tr * 129 + 4 * threadIdx.x;
      t[0] = packed & 0xff;
      t[1] = (packed >> 8) & 0xff;
      t[2] = (packed >> 16) & 0xff;
      t[3] = packed >> 24;
    }
  }
  if (amax_out != nullptr) block_max_into(m, amax_out);  // its __syncthreads also orders the tile
  if (out_t == nullptr) return;
  __syncthreads();
  // out_t[col][row]: each thread writes four neighbouring rows of one column.
  const long long r = r0 + 4 * threadIdx.x;
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    const int tc = threadIdx.y + 8 * k;
    const long long cc = c0 + tc;
    if (r < rows && cc < cols) {
      const unsigned char* t = tile + 4 * threadIdx.x * 129 + tc;
      out_t[(cc * rows + r) / 4] = t[0] | (t[129] << 8) | (t[2 * 129] << 16) | ((unsigned int)t[3 * 129] << 24);
    }
  }
}
)CUDA";

std::vector<std::string> options(const at::Tensor& t, at::ScalarType dtype) {
  std::vector<std::string> o;
  if (t.scalar_type() == at::kBFloat16) o.push_back("-DIN_BF16");
  if (dtype == at::kFloat8_e5m2) o.push_back("-DE5M2");
  return o;
}

unsigned blocks(int64_t n, int64_t per_block) { return static_cast<unsigned>((n + per_block - 1) / per_block); }

}  // namespace

bool acc::kernels::fp8_quantize(const at::Tensor& input, at::ScalarType dtype, double max, bool transpose,
                                const at::Tensor& history, bool delayed, acc::Fp8Quantized& result) {
  if (!input.is_cuda() || input.dim() != 2 || input.size(0) % 4 != 0 || input.size(1) % 4 != 0 ||
      blocks(input.size(1), 128) > 65535 || (input.scalar_type() != at::kFloat && input.scalar_type() != at::kBFloat16) ||
      !acc::jit::available())
    return false;
  if (history.defined() && (!history.is_cuda() || history.device() != input.device() ||
                            history.scalar_type() != at::kFloat || !history.is_contiguous() || history.numel() > 32))
    return false;
  c10::cuda::CUDAGuard guard(input.device());
  const auto t = input.contiguous();
  // Four elements are read at once.
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % (4 * t.element_size()) != 0) return false;
  const int64_t rows = t.size(0), cols = t.size(1);
  result.scale = at::empty({}, t.options().dtype(at::kFloat));
  result.data = at::empty({rows, cols}, t.options().dtype(dtype));
  result.data_t = transpose ? at::empty({cols, rows}, t.options().dtype(dtype)) : at::Tensor();
  const auto opts = options(t, dtype);
  const void* x = t.data_ptr();
  long long groups = t.numel() / 4, r = rows, c = cols;
  // The amaxes the scale comes from, and where this call's amax goes: without a history, a
  // scratch word; with one, its last entry (the current call's), which the history's
  // earlier entries give the scale instead when delayed.
  int h = history.defined() ? static_cast<int>(history.numel()) - 1 : 0;
  at::Tensor scratch = history.defined() ? at::Tensor() : at::zeros({1}, t.options().dtype(at::kFloat));
  float* current = history.defined() ? history.data_ptr<float>() + h : scratch.data_ptr<float>();
  const void* source = delayed ? history.data_ptr<float>() : current;
  int count = delayed ? h : 1;
  void* amax_out = delayed ? current : nullptr;
  if (!delayed) {
    void* bits = current;
    acc::jit::launch(acc::jit::get(SOURCE, opts, "amax"), std::min<unsigned>(blocks(groups, 256 * 8), 2048), 1, 256,
                     1, {&x, &groups, &bits});
  }
  float limit = static_cast<float>(max);
  void* out = result.data.data_ptr();
  void* out_t = transpose ? result.data_t.data_ptr() : nullptr;
  void* scale = result.scale.data_ptr();
  acc::jit::launch(acc::jit::get(SOURCE, opts, "cast"), blocks(rows, 128), blocks(cols, 128), 32, 8,
                   {&x, &r, &c, &source, &count, &amax_out, &limit, &out, &out_t, &scale});
  if (history.defined()) {
    void* entries = history.data_ptr();
    acc::jit::launch(acc::jit::get(SOURCE, opts, "roll"), 1, 1, 32, 1, {&entries, &h});
  }
  return true;
}
