// The backward of a bf16 or fp16 chain's last layer when it is small (a classifier's head: at
// most 32 outputs) and its output's gradient comes in float32 (mixed precision's float32 output,
// fed to a float32 loss), in one launch of our own up to 512 rows, two beyond
// (shim/linear_chain.cpp).
// ATen's and cuBLASLt's way is four: the gradient's conversion to half, the weight's product
// (with the bias's row sums), the input's product, the ReLU's mask below; a step of small layers
// on a GPU is bound by the host's work per launch. The products read the float32 gradient as
// it is (the four-launch way rounds it to half first) and accumulate in float32. "Half" is the
// chain's dtype: bf16, or fp16 (compiled with -DIN_FP16).
#include "kernels.h"
#include "jit.h"
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

constexpr int64_t MAX_OUTPUTS = 32;
// Layers of up to 2 Mi input elements (rows × input features): small ones, whose step the host
// bounds. Measured on an H200 with 10 outputs (GPU time, ours / ATen's four operations in a CUDA
// graph): 6.6 / 14.5 µs at 64 × 2048, 23.9 / 18.6 at 512 × 2048, 22.0 / 23.6 at 1024 × 2048,
// 19.5 / 25.3 at 8192 × 128; beyond, slower: 40.4 / 28.9 at 4096 × 1024, 52.0 / 38.3 at 65536 × 64.
constexpr int64_t MAX_ELEMENTS = int64_t{1} << 21;
// Up to this many rows, one range of rows per block and one launch (the weight's and bias's
// sums written directly); beyond it, ranges of about RANGE_ROWS rows (at most MAX_RANGES) whose
// sums a second launch adds in order.
constexpr int64_t ONE_RANGE_ROWS = 512, RANGE_ROWS = 256, MAX_RANGES = 64;

const char* SOURCE = R"CUDA(
#include "acc_bf16.cuh"

struct Args {
  const float* g;            // [rows, outputs], strides g_row and g_col: the output's gradient
  long long g_row, g_col;
  const unsigned short* h;   // [rows, inputs] half, contiguous: the layer's input
  const unsigned short* w;   // [outputs, inputs] half, contiguous: its weight as used
  unsigned short* dh;        // [rows, inputs] half: the input's gradient, or null
  float* dw;                 // [outputs, inputs]: the weight's gradient, or null
  float* db;                 // [outputs]: the bias's gradient, or null
  float* range_dw;           // with several ranges: each range's sums, [ranges, outputs, inputs]
  float* range_db;           // and [ranges, outputs]
  long long rows, range_rows;
  int outputs, inputs, relu;  // relu: dh is 0 where h is not above 0 (the ReLU below's backward)
  int ranges;
};

// A half's bits as float32, and float32 rounded to the nearest half (ties to even).
#ifdef IN_FP16
__device__ __forceinline__ float half_value(unsigned short bits) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
  return f;
}
__device__ __forceinline__ unsigned short half_bits(float f) {
  unsigned short bits;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(f));
  return bits;
}
#else
__device__ __forceinline__ float half_value(unsigned short bits) { return bf16_value(bits); }
__device__ __forceinline__ unsigned short half_bits(float f) { return (unsigned short)bf16_bits(f); }
#endif

#define TILE 64  // rows of g staged in shared memory at a time

// Block (x: a group of 32 columns of h, y: a range of rows), 256 threads: lane = column, the
// 8 warps split the tile's rows. Per row, one read of h gives dh's element and the column's
// share of dw; block x = 0 also sums g's rows for db.
extern "C" __global__ void __launch_bounds__(256) head_backward(Args a) {
  // The tile's rows of g (zeros past the outputs and the rows), read by a warp's lanes at once.
  __shared__ __align__(16) float sg[TILE][32];
  __shared__ float sums[8][32][33];  // each warp's sums, then added across the warps
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, n = a.outputs;
  const int j = blockIdx.x * 32 + lane;
  const bool in = j < a.inputs;
  // The weight's column j (zeros past the outputs), and this thread's sums of dw's column j.
  float wj[32], acc[32];
#pragma unroll
  for (int k = 0; k < 32; ++k) {
    wj[k] = in && k < n ? half_value(a.w[(long long)k * a.inputs + j]) : 0.f;
    acc[k] = 0.f;
  }
  float bias_sum = 0.f;  // block x = 0: output `lane`'s sum over this warp's rows
  const long long first = blockIdx.y * a.range_rows;
  const long long end = min(a.rows, first + a.range_rows);
  for (long long r0 = first; r0 < end; r0 += TILE) {
    const int count = (int)min((long long)TILE, end - r0);
    // This warp's 8 rows of the tile (rows warp, warp + 8, ...): their h first, all loads in
    // flight at once (a store to dh could alias h, so the compiler would not move them ahead).
    float hv[TILE / 8];
#pragma unroll
    for (int q = 0; q < TILE / 8; ++q) {
      const int r = warp + 8 * q;
      hv[q] = in && r < count ? half_value(a.h[(r0 + r) * a.inputs + j]) : 0.f;
    }
    __syncthreads();  // the last tile's readers are done
    for (int idx = tid; idx < TILE * 32; idx += 256) {
      const int r = idx >> 5, k = idx & 31;
      sg[r][k] = r < count && k < n ? a.g[(r0 + r) * a.g_row + k * a.g_col] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < TILE / 8; ++q) {
      const int r = warp + 8 * q;
      if (r >= count) break;
      float s = 0.f;
      const float4* row = reinterpret_cast<const float4*>(sg[r]);
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const float4 v = row[c];
        s += v.x * wj[4 * c] + v.y * wj[4 * c + 1] + v.z * wj[4 * c + 2] + v.w * wj[4 * c + 3];
        acc[4 * c] += v.x * hv[q];
        acc[4 * c + 1] += v.y * hv[q];
        acc[4 * c + 2] += v.z * hv[q];
        acc[4 * c + 3] += v.w * hv[q];
      }
      if (a.dh != nullptr && in) {
        if (a.relu && hv[q] <= 0.f) s = 0.f;  // as ATen's threshold_backward: a NaN h passes s
        a.dh[(r0 + r) * a.inputs + j] = half_bits(s);
      }
      bias_sum += sg[r][lane];
    }
  }
  const bool several = a.ranges > 1;
  if (a.dw != nullptr) {
#pragma unroll
    for (int k = 0; k < 32; ++k) sums[warp][k][lane] = acc[k];
    __syncthreads();
    float* out = several ? a.range_dw + (long long)blockIdx.y * n * a.inputs : a.dw;
    for (int idx = tid; idx < n * 32; idx += 256) {
      const int k = idx >> 5, c = blockIdx.x * 32 + (idx & 31);
      float s = 0.f;
      for (int w = 0; w < 8; ++w) s += sums[w][k][idx & 31];
      if (c < a.inputs) out[(long long)k * a.inputs + c] = s;
    }
  }
  if (a.db != nullptr && blockIdx.x == 0) {
    __syncthreads();  // sums is free again
    sums[warp][0][lane] = bias_sum;
    __syncthreads();
    if (tid < n) {
      float s = 0.f;
      for (int w = 0; w < 8; ++w) s += sums[w][0][tid];
      (several ? a.range_db + (long long)blockIdx.y * n : a.db)[tid] = s;
    }
  }
}

// With several ranges: dw and db as the ranges' sums added in order (the same every run).
extern "C" __global__ void head_backward_sum(Args a) {
  const long long weights = (long long)a.outputs * a.inputs, total = weights + a.outputs;
  for (long long e = blockIdx.x * 256LL + threadIdx.x; e < total; e += gridDim.x * 256LL) {
    const bool weight = e < weights;
    if (weight ? a.dw == nullptr : a.db == nullptr) continue;
    const float* from = weight ? a.range_dw + e : a.range_db + (e - weights);
    const long long stride = weight ? weights : a.outputs;
    float s = 0.f;
    for (int range = 0; range < a.ranges; ++range) s += from[range * stride];
    if (weight) a.dw[e] = s; else a.db[e - weights] = s;
  }
}
)CUDA";

// The kernels' parameter, as SOURCE declares it.
struct Args {
  const void* g;
  long long g_row, g_col;
  const void* h;
  const void* w;
  void* dh;
  void* dw;
  void* db;
  void* range_dw;
  void* range_db;
  long long rows, range_rows;
  int outputs, inputs, relu;
  int ranges;
};

bool contiguous_half(const at::Tensor& t, at::ScalarType half, const at::Device& device) {
  return t.scalar_type() == half && t.device() == device && t.dim() == 2 && t.is_contiguous();
}

void* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

}  // namespace

bool acc::kernels::head_backward(const at::Tensor& g, const at::Tensor& h, const at::Tensor& w, bool relu, bool want_dh,
                                 bool want_dw, bool want_db, at::Tensor& dh, at::Tensor& dw, at::Tensor& db) {
  if (!g.is_cuda() || g.scalar_type() != at::kFloat || g.dim() != 2) return false;
  const auto device = g.device();
  const int64_t rows = g.size(0), outputs = g.size(1);
  const auto half = h.scalar_type();
  if ((half != at::kBFloat16 && half != at::kHalf) || !contiguous_half(h, half, device) ||
      !contiguous_half(w, half, device) || h.size(0) != rows || w.size(0) != outputs || w.size(1) != h.size(1)) {
    return false;
  }
  const int64_t inputs = h.size(1);
  if (rows == 0 || inputs == 0 || outputs == 0 || outputs > MAX_OUTPUTS || rows * inputs > MAX_ELEMENTS) return false;
  if (!(want_dh || want_dw || want_db) || !acc::jit::available()) return false;
  c10::cuda::CUDAGuard guard(device);
  std::vector<acc::jit::Kernel> kernels;
  static const std::vector<std::string> bf16{}, fp16{"-DIN_FP16"};
  if (!acc::jit::get_all(SOURCE, half == at::kHalf ? fp16 : bf16, {"head_backward", "head_backward_sum"}, kernels)) {
    return false;
  }
  const auto floats = g.options();
  dh = want_dh ? at::empty({rows, inputs}, h.options()) : at::Tensor();
  dw = want_dw ? at::empty({outputs, inputs}, floats) : at::Tensor();
  db = want_db ? at::empty({outputs}, floats) : at::Tensor();
  const int64_t ranges =
      rows <= ONE_RANGE_ROWS ? 1 : std::min<int64_t>((rows + RANGE_ROWS - 1) / RANGE_ROWS, MAX_RANGES);
  const int64_t range_rows = (rows + ranges - 1) / ranges;
  // Each range's sums, where the second launch adds them.
  const bool sums = ranges > 1 && (want_dw || want_db);
  const auto range_sums = sums ? at::empty({ranges, outputs * inputs + outputs}, floats) : at::Tensor();
  Args args{g.data_ptr(),
            g.stride(0),
            g.stride(1),
            h.data_ptr(),
            w.data_ptr(),
            data_or_null(dh),
            data_or_null(dw),
            data_or_null(db),
            sums ? range_sums.data_ptr() : nullptr,
            sums ? range_sums.data_ptr<float>() + ranges * outputs * inputs : nullptr,
            rows,
            range_rows,
            static_cast<int>(outputs),
            static_cast<int>(inputs),
            relu ? 1 : 0,
            static_cast<int>(ranges)};
  acc::jit::launch(kernels[0], static_cast<unsigned>((inputs + 31) / 32), static_cast<unsigned>(ranges), 256, 1,
                   {&args});
  if (sums) {
    const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const auto blocks = std::min<int64_t>((outputs * inputs + outputs + 255) / 256, 4 * sms);
    acc::jit::launch(kernels[1], static_cast<unsigned>(blocks), 1, 256, 1, {&args});
  }
  return true;
}
