// LayerNorm over the last dimension of a float32 matrix, forward and backward, compiled for
// its width. Forward keeps each row in registers (mean, then the variance around it, as two
// passes over registers). Backward makes the input's gradient and each block's partial sums
// of the weight's and the bias's gradients in one pass over the output gradient and the input
// (ATen reads both twice, in two kernels); a second small kernel adds the partial sums, in a
// fixed order, so the gradients are the same from run to run.
#include "kernels.h"
#include "jit.h"
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

// Compiled with -DCOLS4=<columns / 4>, -DTHREADS=<threads per block> (a multiple of 32),
// -DITERS=<ceil(COLS4 / THREADS)>.
const char* SOURCE = R"CUDA(
#define COLS (4 * COLS4)

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

// y = (x - mean) * rstd * gamma + beta for each row; mean and rstd (1 / sqrt(var + eps), the
// biased variance) are stored per row for backward.
extern "C" __global__ void __launch_bounds__(THREADS) forward(const float4* x, const float4* gamma, const float4* beta,
                                                              float eps, long long rows, float4* y, float* mean_out,
                                                              float* rstd_out) {
  __shared__ float shared[64];
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    float4 v[ITERS];
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      v[i] = j < COLS4 ? x[row * COLS4 + j] : make_float4(0.f, 0.f, 0.f, 0.f);
      s += sum(v[i]);
    }
    const float mean = block_sum(s, 0.f, shared).x / COLS;
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      if (j < COLS4) {
        const float4 d = v[i] - mean;
        q += sum(d * d);
      }
    }
    const float rstd = rsqrtf(block_sum(q, 0.f, shared).x / COLS + eps);
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      if (j < COLS4) y[row * COLS4 + j] = (v[i] - mean) * rstd * gamma[j] + beta[j];
    }
    if (threadIdx.x == 0) {
      mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
  }
}

// dx for each row, and this block's sums over its rows of dy * xhat and dy (the weight's and
// the bias's gradients) into partial[blockIdx.x][0 and 1][COLS].
extern "C" __global__ void __launch_bounds__(THREADS) backward(const float4* dy, const float4* x, const float* mean,
                                                               const float* rstd, const float4* gamma, long long rows,
                                                               float4* dx, float4* partial) {
  __shared__ float shared[64];
  float4 dgamma[ITERS], dbeta[ITERS];
#pragma unroll
  for (int i = 0; i < ITERS; ++i) dgamma[i] = dbeta[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const float m = mean[row], r = rstd[row];
    float4 g[ITERS], xhat[ITERS];
    float a = 0.f, b = 0.f;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      if (j < COLS4) {
        const float4 d = dy[row * COLS4 + j];
        xhat[i] = (x[row * COLS4 + j] - m) * r;
        g[i] = d * gamma[j];
        dgamma[i] = dgamma[i] + d * xhat[i];
        dbeta[i] = dbeta[i] + d;
        a += sum(g[i]);
        b += sum(g[i] * xhat[i]);
      }
    }
    const float2 t = block_sum(a, b, shared);
    const float mean_g = t.x / COLS, mean_gx = t.y / COLS;
#pragma unroll
    for (int i = 0; i < ITERS; ++i) {
      const int j = threadIdx.x + i * THREADS;
      if (j < COLS4) {
        const float4 v = g[i] - mean_g;
        const float4 w = xhat[i] * mean_gx;
        dx[row * COLS4 + j] = make_float4((v.x - w.x) * r, (v.y - w.y) * r, (v.z - w.z) * r, (v.w - w.w) * r);
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

struct Shape {
  int64_t rows, cols;
  unsigned threads;
  std::vector<std::string> options;
};

// Threads per row: a warp per 128 columns, at most 256.
unsigned threads_for(int64_t cols) { return static_cast<unsigned>(std::min<int64_t>(256, (cols / 4 + 31) / 32 * 32)); }

std::vector<std::string> options_for(int64_t cols) {
  const int64_t vectors = cols / 4, threads = threads_for(cols);
  return {"-DCOLS4=" + std::to_string(vectors), "-DTHREADS=" + std::to_string(threads),
          "-DITERS=" + std::to_string((vectors + threads - 1) / threads)};
}

Shape shape_of(const at::Tensor& x2d) {
  return {x2d.size(0), x2d.size(1), threads_for(x2d.size(1)), options_for(x2d.size(1))};
}

// Blocks in flight: four per multiprocessor, at most one per row.
unsigned grid(int64_t rows) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<unsigned>(std::min<int64_t>(rows, 4 * sms));
}

void check_inputs(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  for (const auto* t : tensors) {
    TORCH_CHECK(t->is_cuda() && t->scalar_type() == at::kFloat && t->is_contiguous(), op,
                ": expects contiguous float32 CUDA tensors");
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, op, ": expects 16-byte aligned tensors");
  }
}

}  // namespace

bool acc::kernels::layer_norm_fits(int64_t cols) {
  if (cols <= 0 || cols % 4 != 0 || cols > 8192 || !acc::jit::available()) return false;
  // Compiled for this width now (once), so that a failure leaves the work to ATen.
  std::vector<acc::jit::Kernel> kernels;
  return acc::jit::get_all(SOURCE, options_for(cols), {"forward", "backward", "reduce"}, kernels);
}

void acc::kernels::layer_norm_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                                      at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  check_inputs("layer_norm_forward", {&x, &weight, &bias});
  c10::cuda::CUDAGuard guard(x.device());
  const auto s = shape_of(x);
  y = at::empty_like(x);
  mean = at::empty({s.rows}, x.options());
  rstd = at::empty({s.rows}, x.options());
  const void *px = x.data_ptr(), *pw = weight.data_ptr(), *pb = bias.data_ptr();
  void *py = y.data_ptr(), *pm = mean.data_ptr(), *pr = rstd.data_ptr();
  float e = static_cast<float>(eps);
  long long rows = s.rows;
  acc::jit::launch(acc::jit::get(SOURCE, s.options, "forward"), grid(s.rows), 1, s.threads, 1,
                   {&px, &pw, &pb, &e, &rows, &py, &pm, &pr});
}

void acc::kernels::layer_norm_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                       const at::Tensor& rstd, const at::Tensor& weight, at::Tensor& dx,
                                       at::Tensor& dweight, at::Tensor& dbias) {
  check_inputs("layer_norm_backward", {&dy, &x, &mean, &rstd, &weight});
  c10::cuda::CUDAGuard guard(x.device());
  const auto s = shape_of(x);
  const unsigned blocks = grid(s.rows);
  dx = at::empty_like(x);
  auto partial = at::empty({static_cast<int64_t>(blocks), 2, s.cols}, x.options());
  dweight = at::empty({s.cols}, x.options());
  dbias = at::empty({s.cols}, x.options());
  const void *pdy = dy.data_ptr(), *px = x.data_ptr(), *pm = mean.data_ptr(), *pr = rstd.data_ptr(),
             *pw = weight.data_ptr();
  void *pdx = dx.data_ptr(), *pp = partial.data_ptr(), *pdw = dweight.data_ptr(), *pdb = dbias.data_ptr();
  long long rows = s.rows;
  acc::jit::launch(acc::jit::get(SOURCE, s.options, "backward"), blocks, 1, s.threads, 1,
                   {&pdy, &px, &pm, &pr, &pw, &rows, &pdx, &pp});
  int parts = static_cast<int>(blocks);
  acc::jit::launch(acc::jit::get(SOURCE, s.options, "reduce"), static_cast<unsigned>((2 * s.cols + 31) / 32), 1, 32, 8,
                   {&pp, &parts, &pdw, &pdb});
}
