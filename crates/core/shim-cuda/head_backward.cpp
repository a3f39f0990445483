// The backward of a bf16 chain's last layer when it is small (a classifier's head: at most 32
// outputs) and its output's gradient comes in float32 (mixed precision's float32 output, fed to
// a float32 loss), in one launch of our own (shim/linear_chain.cpp). ATen's and cuBLASLt's way
// is four: the gradient's conversion to bf16, the weight's product (with the bias's row sums),
// the input's product, the ReLU's mask below; a step of small layers on a GPU is bound by the
// host's work per launch. The products read the float32 gradient as it is (the four-launch way
// rounds it to bf16 first) and accumulate in float32.
#include "kernels.h"
#include "jit.h"
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

constexpr int64_t MAX_OUTPUTS = 32;
// Layers of up to 16 Mi input elements (rows × input features): small ones, whose step the host
// bounds; the weight's gradient loops over the rows in each block.
constexpr int64_t MAX_ELEMENTS = int64_t{1} << 24;

const char* SOURCE = R"CUDA(
#include "acc_bf16.cuh"

struct Args {
  const float* g;            // [rows, outputs], strides g_row and g_col: the output's gradient
  long long g_row, g_col;
  const unsigned short* h;   // [rows, inputs] bf16, contiguous: the layer's input
  const unsigned short* w;   // [outputs, inputs] bf16, contiguous: its weight as used
  unsigned short* dh;        // [rows, inputs] bf16: the input's gradient, or null
  float* dw;                 // [outputs, inputs]: the weight's gradient, or null
  float* db;                 // [outputs]: the bias's gradient, or null
  long long rows;
  int outputs, inputs, relu;  // relu: dh is 0 where h is not above 0 (the ReLU below's backward)
  int dh_blocks, dw_blocks;   // the blocks that write dh, then dw (32 columns each), then db (one)
};

__device__ __forceinline__ float bf16_value(unsigned short bits) { return __uint_as_float((unsigned int)bits << 16); }

// 256 threads a block: 8 warps, which split the rows for dw and db.
extern "C" __global__ void __launch_bounds__(256) head_backward(Args a) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (blockIdx.x < a.dh_blocks) {
    // dh[i, j] = sum over k of g[i, k] w[k, j], masked by the ReLU.
    const long long total = a.rows * a.inputs;
    for (long long e = blockIdx.x * 256LL + tid; e < total; e += a.dh_blocks * 256LL) {
      const long long i = e / a.inputs;
      const int j = (int)(e - i * a.inputs);
      float s = 0.f;
      for (int k = 0; k < a.outputs; ++k) s += a.g[i * a.g_row + k * a.g_col] * bf16_value(a.w[(long long)k * a.inputs + j]);
      if (a.relu && !(bf16_value(a.h[e]) > 0.f)) s = 0.f;
      a.dh[e] = (unsigned short)bf16_bits(s);
    }
    return;
  }
  // Each warp's sums for 32 columns (or, for db, 32 outputs), then added across the warps.
  __shared__ float partial[8][32][33];
  float acc[32];
#pragma unroll
  for (int k = 0; k < 32; ++k) acc[k] = 0.f;
  const int block = blockIdx.x - a.dh_blocks;
  if (block < a.dw_blocks) {
    // dw[k, j] = sum over i of g[i, k] h[i, j]: lane j of the block's 32 columns, rows split by warp.
    const int j = block * 32 + lane;
    for (long long i = warp; i < a.rows; i += 8) {
      const float hv = j < a.inputs ? bf16_value(a.h[i * a.inputs + j]) : 0.f;
#pragma unroll
      for (int k = 0; k < 32; ++k) {
        if (k < a.outputs) acc[k] += a.g[i * a.g_row + k * a.g_col] * hv;
      }
    }
#pragma unroll
    for (int k = 0; k < 32; ++k) partial[warp][k][lane] = acc[k];
    __syncthreads();
    for (int idx = tid; idx < a.outputs * 32; idx += 256) {
      const int k = idx >> 5, column = block * 32 + (idx & 31);
      float s = 0.f;
      for (int w = 0; w < 8; ++w) s += partial[w][k][idx & 31];
      if (column < a.inputs) a.dw[(long long)k * a.inputs + column] = s;
    }
    return;
  }
  // db[k] = sum over i of g[i, k]: lane k, rows split by warp.
  float s = 0.f;
  if (lane < a.outputs) {
    for (long long i = warp; i < a.rows; i += 8) s += a.g[i * a.g_row + lane * a.g_col];
  }
  partial[warp][0][lane] = s;
  __syncthreads();
  if (tid < a.outputs) {
    float total = 0.f;
    for (int w = 0; w < 8; ++w) total += partial[w][0][tid];
    a.db[tid] = total;
  }
}
)CUDA";

// The kernel's parameter, as SOURCE declares it.
struct Args {
  const void* g;
  long long g_row, g_col;
  const void* h;
  const void* w;
  void* dh;
  void* dw;
  void* db;
  long long rows;
  int outputs, inputs, relu;
  int dh_blocks, dw_blocks;
};

bool contiguous_bf16(const at::Tensor& t, const at::Device& device) {
  return t.scalar_type() == at::kBFloat16 && t.device() == device && t.dim() == 2 && t.is_contiguous();
}

}  // namespace

bool acc::kernels::head_backward(const at::Tensor& g, const at::Tensor& h, const at::Tensor& w, bool relu, bool want_dh,
                                 bool want_dw, bool want_db, at::Tensor& dh, at::Tensor& dw, at::Tensor& db) {
  if (!g.is_cuda() || g.scalar_type() != at::kFloat || g.dim() != 2) return false;
  const auto device = g.device();
  const int64_t rows = g.size(0), outputs = g.size(1);
  if (!contiguous_bf16(h, device) || !contiguous_bf16(w, device) || h.size(0) != rows || w.size(0) != outputs ||
      w.size(1) != h.size(1)) {
    return false;
  }
  const int64_t inputs = h.size(1);
  if (rows == 0 || inputs == 0 || outputs == 0 || outputs > MAX_OUTPUTS || rows * inputs > MAX_ELEMENTS) return false;
  if (!(want_dh || want_dw || want_db) || !acc::jit::available()) return false;
  c10::cuda::CUDAGuard guard(device);
  std::vector<acc::jit::Kernel> kernels;
  if (!acc::jit::get_all(SOURCE, {}, {"head_backward"}, kernels)) return false;
  const auto floats = g.options();
  dh = want_dh ? at::empty({rows, inputs}, h.options()) : at::Tensor();
  dw = want_dw ? at::empty({outputs, inputs}, floats) : at::Tensor();
  db = want_db ? at::empty({outputs}, floats) : at::Tensor();
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  Args args{g.data_ptr(), g.stride(0), g.stride(1), h.data_ptr(), w.data_ptr(),
            want_dh ? dh.data_ptr() : nullptr, want_dw ? dw.data_ptr() : nullptr, want_db ? db.data_ptr() : nullptr,
            rows, static_cast<int>(outputs), static_cast<int>(inputs), relu ? 1 : 0,
            // dh: one element a thread, up to eight blocks per SM (then a thread takes several).
            want_dh ? static_cast<int>(std::min<int64_t>((rows * inputs + 255) / 256, 8 * sms)) : 0,
            want_dw ? static_cast<int>((inputs + 31) / 32) : 0};
  const auto blocks = static_cast<unsigned>(args.dh_blocks + args.dw_blocks + (want_db ? 1 : 0));
  acc::jit::launch(kernels[0], blocks, 1, 256, 1, {&args});
  return true;
}
