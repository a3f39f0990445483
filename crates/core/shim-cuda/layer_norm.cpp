// LayerNorm over the last dimension of a matrix, forward and backward, compiled for its width,
// optionally fused with the residual add before it (`normed = layer_norm(residual + x)`, as
// pre-LayerNorm transformers do between sublayers). Forward keeps each row in registers
// (mean, then the variance around it, as two passes over registers) and writes the output
// in float32 or bf16 (what the Linear after it reads under autocast). Backward makes the
// normalized input's gradient, adds the gradient its other uses gave it, and makes each
// block's partial sums of the weight's and the bias's gradients, in one pass over the output
// gradient and the input (ATen reads both twice, in two kernels, and the add, conversions and
// accumulation are passes of their own); a second small kernel adds the partial sums, in a
// fixed order, so the gradients are the same from run to run.
#include "kernels.h"
#include "jit.h"
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

// Compiled with -DCOLS4=<columns / 4>, -DTHREADS=<threads per block> (a multiple of 32),
// -DITERS=<ceil(COLS4 / THREADS)>, and -DADD=1 (the residual add), -DX_BF16 (x is bf16; with
// ADD only), -DY_BF16 (the output is bf16).
const char* SOURCE = R"CUDA(
#include "acc_bf16.cuh"
#define COLS (4 * COLS4)
#ifndef ADD
#define ADD 0
#endif

// Four neighbouring elements, read or written at once: float32, or bf16 (X_BF16 for the
// added input x and its gradient, Y_BF16 for the output and its gradient).
#ifdef X_BF16
typedef uint2 x4_t;
#else
typedef float4 x4_t;
#endif
#ifdef Y_BF16
typedef uint2 y4_t;
#else
typedef float4 y4_t;
#endif
__device__ __forceinline__ float4 widen(float4 v) { return v; }
__device__ __forceinline__ float4 widen(uint2 v) {
  return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u), __uint_as_float(v.y << 16),
                     __uint_as_float(v.y & 0xffff0000u));
}
__device__ __forceinline__ void narrow(float4 v, float4& out) { out = v; }
__device__ __forceinline__ void narrow(float4 v, uint2& out) {
  out = make_uint2(bf16_bits(v.x) | (bf16_bits(v.y) << 16), bf16_bits(v.z) | (bf16_bits(v.w) << 16));
}

__device__ __forceinline__ float4 operator-(float4 a, float b) { return make_float4(a.x - b, a.y - b, a.z - b, a.w - b); }
__device__ __forceinline__ float4 operator*(float4 a, float b) { return make_float4(a.x * b, a.y * b, a.z * b, a.w * b); }
__device__ __forceinline__ float4 operator*(float4 a, float4 b) { return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w); }
__device__ __forceinline__ float4 operator+(float4 a, float4 b) { return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); }
__device__ __forceinline__ float sum(float4 a) { return (a.x + a.y) + (a.z + a.w); }

// The sums of (a, b) over the block; every thread gets them. `shared` holds 2 * 32 floats.
__device__ __forceinline__ float2 block_sum(float a, float b, float* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, offset);
    b += __shfl_xor_sync(0xffffffffu, b, offset);
  }
  __syncthreads();  // the previous row's readers are done with `shared`
  if (threadIdx.x % 32 == 0) {
    shared[threadIdx.x / 32] = a;
    shared[32 + threadIdx.x / 32] = b;
  }
  __syncthreads();
  float2 total = make_float2(0.f, 0.f);
#pragma unroll
  for (int w = 0; w < THREADS / 32; ++w) {
    total.x += shared[w];
    total.y += shared[32 + w];
  }
  return total;
}

// y = (v - mean) * rstd * gamma + beta for each row of v = x, or with ADD v = residual + x
// (float32), which is also written to `sum`; mean and rstd (1 / sqrt(var + eps), the biased
// variance) are stored per row for backward.
extern "C" __global__ void __launch_bounds__(THREADS) forward(const x4_t* x, const float4* residual, const float4* gamma,
                                                              const float4* beta, float eps, long long rows, float4* sum,
                                                              y4_t* y, float* mean_out, float* rstd_out) {
  __shared__ float shared[64];
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    float4 v[ITERS];
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      v[i] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (j < COLS4) {
        v[i] = widen(x[row * COLS4 + j]);
#if ADD
        v[i] = residual[row * COLS4 + j] + v[i];
        sum[row * COLS4 + j] = v[i];
#endif
      }
      s += ::sum(v[i]);
    }
    const float mean = block_sum(s, 0.f, shared).x / COLS;
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      if (j < COLS4) {
        const float4 d = v[i] - mean;
        q += ::sum(d * d);
      }
    }
    const float rstd = rsqrtf(block_sum(q, 0.f, shared).x / COLS + eps);
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      if (j < COLS4) narrow((v[i] - mean) * rstd * gamma[j] + beta[j], y[row * COLS4 + j]);
    }
    if (threadIdx.x == 0) {
      mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
  }
}

// For each row, the gradient of the normalized input v (x, or residual + x) from dy, plus
// dsum (the gradient of `sum` from its other uses) where given, into dv (float32) and, with
// X_BF16, into dv_low as bf16 (x's gradient); and this block's sums over its rows of
// dy * vhat and dy (the weight's and the bias's gradients) into partial[blockIdx.x][0 and 1][COLS].
extern "C" __global__ void __launch_bounds__(THREADS) backward(const y4_t* dy, const float4* dsum, const float4* v,
                                                               const float* mean, const float* rstd,
                                                               const float4* gamma, long long rows, float4* dv,
                                                               x4_t* dv_low, float4* partial) {
  __shared__ float shared[64];
  float4 dgamma[ITERS], dbeta[ITERS];
#pragma unroll
  for (int i = 0; i < ITERS; ++i) dgamma[i] = dbeta[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const float m = mean[row], r = rstd[row];
    float4 g[ITERS], vhat[ITERS];
    float a = 0.f, b = 0.f;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      if (j < COLS4) {
        const float4 d = widen(dy[row * COLS4 + j]);
        vhat[i] = (v[row * COLS4 + j] - m) * r;
        g[i] = d * gamma[j];
        dgamma[i] = dgamma[i] + d * vhat[i];
        dbeta[i] = dbeta[i] + d;
        a += ::sum(g[i]);
        b += ::sum(g[i] * vhat[i]);
      }
    }
    const float2 t = block_sum(a, b, shared);
    const float mean_g = t.x / COLS, mean_gv = t.y / COLS;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      if (j < COLS4) {
        const float4 p = g[i] - mean_g;
        const float4 q = vhat[i] * mean_gv;
        float4 out = make_float4((p.x - q.x) * r, (p.y - q.y) * r, (p.z - q.z) * r, (p.w - q.w) * r);
        if (dsum != nullptr) out = dsum[row * COLS4 + j] + out;
        dv[row * COLS4 + j] = out;
#ifdef X_BF16
        narrow(out, dv_low[row * COLS4 + j]);
#endif
      }
    }
  }
#pragma unroll
  for (int i = 0; i < ITERS; ++i) {
    const int j = threadIdx.x + i * THREADS;
    if (j < COLS4) {
      partial[(blockIdx.x * 2LL) * COLS4 + j] = dgamma[i];
      partial[(blockIdx.x * 2LL + 1) * COLS4 + j] = dbeta[i];
    }
  }
}

// The sums over p of partial[p][0] into dgamma and of partial[p][1] into dbeta, in a fixed
// order. Blocks of 32 x 8 threads; each block adds 32 of the 2 * COLS columns.
extern "C" __global__ void reduce(const float* partial, int parts, float* dgamma, float* dbeta) {
  __shared__ float shared[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.f;
  if (c < 2 * COLS)
    for (int p = threadIdx.y; p < parts; p += 8) s += partial[(long long)p * 2 * COLS + c];
  shared[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < 2 * COLS) {
    float total = 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) total += shared[k][threadIdx.x];
    if (c < COLS)
      dgamma[c] = total;
    else
      dbeta[c - COLS] = total;
  }
}
)CUDA";

bool bf16(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16; }

// Threads per row: a warp per 128 columns, at most 256.
unsigned threads_for(int64_t cols) { return static_cast<unsigned>(std::min<int64_t>(256, (cols / 4 + 31) / 32 * 32)); }

std::vector<std::string> options_for(int64_t cols, bool add, bool x_bf16, bool y_bf16) {
  const int64_t vectors = cols / 4, threads = threads_for(cols);
  std::vector<std::string> options{"-DCOLS4=" + std::to_string(vectors), "-DTHREADS=" + std::to_string(threads),
                                   "-DITERS=" + std::to_string((vectors + threads - 1) / threads),
                                   "-DADD=" + std::to_string(add ? 1 : 0)};
  if (x_bf16) options.emplace_back("-DX_BF16");
  if (y_bf16) options.emplace_back("-DY_BF16");
  return options;
}

// Blocks in flight: four per multiprocessor, at most one per row.
unsigned grid(int64_t rows) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<unsigned>(std::min<int64_t>(rows, 4 * sms));
}

void check_inputs(const char* op, int64_t cols, std::initializer_list<const at::Tensor*> tensors) {
  for (const auto* t : tensors) {
    if (!t->defined()) continue;
    TORCH_CHECK(t->is_cuda() && (t->scalar_type() == at::kFloat || bf16(*t)) && t->is_contiguous(), op,
                ": expects contiguous float32 or bf16 CUDA tensors");
    TORCH_CHECK(t->size(-1) == cols || t->dim() == 1, op, ": expects rows of ", cols, " columns");
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, op, ": expects 16-byte aligned tensors");
  }
}

// The forward, backward and reduce kernels for `options`, compiled once (false where they
// cannot be: layer_norm_fits then sends the work to ATen).
bool kernels_for(const std::vector<std::string>& options, std::vector<acc::jit::Kernel>& kernels) {
  return acc::jit::get_all(SOURCE, options, {"forward", "backward", "reduce"}, kernels);
}

// The same, where layer_norm_fits has already compiled them.
std::vector<acc::jit::Kernel> compiled(const std::vector<std::string>& options) {
  std::vector<acc::jit::Kernel> kernels;
  TORCH_CHECK(kernels_for(options, kernels), "LayerNorm: the CUDA kernels are not available");
  return kernels;
}

}  // namespace

bool acc::kernels::layer_norm_fits(const at::Tensor& x, bool add, at::ScalarType y_dtype) {
  const int64_t cols = x.size(-1);
  const auto x_dtype = x.scalar_type();
  if (cols <= 0 || cols % 4 != 0 || cols > 8192 || !x.is_cuda() || !acc::jit::available()) return false;
  if (x_dtype != at::kFloat && !(add && x_dtype == at::kBFloat16)) return false;
  if (y_dtype != at::kFloat && y_dtype != at::kBFloat16) return false;
  // Compiled for this width and x's device now (once), so that a failure leaves the work to ATen.
  c10::cuda::CUDAGuard guard(x.device());
  std::vector<acc::jit::Kernel> kernels;
  return kernels_for(options_for(cols, add, x_dtype == at::kBFloat16, y_dtype == at::kBFloat16), kernels);
}

void acc::kernels::layer_norm_forward(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                      const at::Tensor& bias, double eps, at::Tensor& sum, at::Tensor& y,
                                      at::Tensor& mean, at::Tensor& rstd) {
  const int64_t rows = x.size(0), cols = x.size(1);
  const bool add = residual.defined();
  check_inputs("layer_norm_forward", cols, {&x, &residual, &weight, &bias, &y, &sum});
  TORCH_CHECK(!add || (residual.scalar_type() == at::kFloat && sum.scalar_type() == at::kFloat),
              "layer_norm_forward: expects a float32 residual and sum");
  c10::cuda::CUDAGuard guard(x.device());
  mean = at::empty({rows}, x.options().dtype(at::kFloat));
  rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  const void *px = x.data_ptr(), *pres = add ? residual.data_ptr() : nullptr, *pw = weight.data_ptr(),
             *pb = bias.data_ptr();
  void *psum = add ? sum.data_ptr() : nullptr, *py = y.data_ptr(), *pm = mean.data_ptr(), *pr = rstd.data_ptr();
  float e = static_cast<float>(eps);
  long long n = rows;
  const auto kernels = compiled(options_for(cols, add, bf16(x), bf16(y)));
  acc::jit::launch(kernels[0], grid(rows), 1, threads_for(cols), 1,
                   {&px, &pres, &pw, &pb, &e, &n, &psum, &py, &pm, &pr});
}

void acc::kernels::layer_norm_backward(const at::Tensor& dy, const at::Tensor& dsum, const at::Tensor& v,
                                       const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& weight,
                                       bool add, at::ScalarType x_dtype, at::Tensor& dv, at::Tensor& dx,
                                       at::Tensor& dweight, at::Tensor& dbias) {
  const int64_t rows = v.size(0), cols = v.size(1);
  check_inputs("layer_norm_backward", cols, {&dy, &dsum, &v, &mean, &rstd, &weight});
  TORCH_CHECK(v.scalar_type() == at::kFloat && (!dsum.defined() || dsum.scalar_type() == at::kFloat),
              "layer_norm_backward: expects a float32 input and sum gradient");
  c10::cuda::CUDAGuard guard(v.device());
  const unsigned blocks = grid(rows);
  const bool x_bf16 = x_dtype == at::kBFloat16;
  dv = at::empty_like(v);
  dx = x_bf16 ? at::empty_like(v, v.options().dtype(at::kBFloat16)) : dv;
  auto partial = at::empty({static_cast<int64_t>(blocks), 2, cols}, v.options());
  dweight = at::empty({cols}, v.options());
  dbias = at::empty({cols}, v.options());
  const void *pdy = dy.data_ptr(), *pds = dsum.defined() ? dsum.data_ptr() : nullptr, *pv = v.data_ptr(),
             *pm = mean.data_ptr(), *pr = rstd.data_ptr(), *pw = weight.data_ptr();
  void *pdv = dv.data_ptr(), *pdx = x_bf16 ? dx.data_ptr() : nullptr, *pp = partial.data_ptr(),
       *pdw = dweight.data_ptr(), *pdb = dbias.data_ptr();
  long long n = rows;
  const auto kernels = compiled(options_for(cols, add, x_bf16, bf16(dy)));
  acc::jit::launch(kernels[1], blocks, 1, threads_for(cols), 1,
                   {&pdy, &pds, &pv, &pm, &pr, &pw, &n, &pdv, &pdx, &pp});
  int parts = static_cast<int>(blocks);
  acc::jit::launch(kernels[2], static_cast<unsigned>((2 * cols + 31) / 32), 1, 32, 8,
                   {&pp, &parts, &pdw, &pdb});
}
