// Matrix products through cuBLASLt with each shape's plan kept: its descriptors and the
// algorithm cuBLASLt's heuristic chose, made on a shape's first product and reused after.
// ATen's cuBLASLt path (`_addmm_activation`, `mm` with an output dtype) makes the descriptors
// and asks the heuristic again on every call, host work that bounds a step of small layers on
// a GPU (shim/linear_chain.cpp). Larger products keep ATen's path (see `matmul`). Besides the product: a bias added and a ReLU in the epilogue,
// a float32 output from half-precision operands (from cuBLAS's float32 accumulator), and the
// first operand's row sums (a Linear's bias gradient) from the same call.
#include "jit.h"
#include "kernels.h"
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>
#include <dlfcn.h>
#include <algorithm>
#include <array>
#include <string>
#include <unordered_map>

namespace {

// The cuBLASLt functions used here, looked up in the library libtorch_cuda has loaded (this
// library does not link it: it lies outside the library path, beside libtorch's CUDA runtime).
struct Api {
  decltype(&::cublasLtMatmulDescCreate) desc_create;
  decltype(&::cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&::cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&::cublasLtMatrixLayoutCreate) layout_create;
  decltype(&::cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&::cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&::cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&::cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&::cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&::cublasLtMatmul) matmul;
};

// Null when cuBLASLt is not loaded or lacks a function (products then take ATen's path).
const Api* api() {
  static const Api* found = []() -> const Api* {
    const std::string soname = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (lib == nullptr) return nullptr;
    static Api table;
    bool all = true;
    auto get = [&](auto& fn, const char* name) { all = acc::jit::bind(lib, name, fn) && all; };
    get(table.desc_create, "cublasLtMatmulDescCreate");
    get(table.desc_destroy, "cublasLtMatmulDescDestroy");
    get(table.desc_set, "cublasLtMatmulDescSetAttribute");
    get(table.layout_create, "cublasLtMatrixLayoutCreate");
    get(table.layout_destroy, "cublasLtMatrixLayoutDestroy");
    get(table.pref_create, "cublasLtMatmulPreferenceCreate");
    get(table.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    get(table.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    get(table.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    get(table.matmul, "cublasLtMatmul");
    return all ? &table : nullptr;
  }();
  return found;
}

// A row-major matrix X[r, c] as cuBLASLt (column-major) reads it: with rows contiguous its
// storage is X^T (c x r, leading dimension stride(0)); with columns contiguous it is X itself,
// to be transposed (r x c, leading dimension stride(1)).
struct Operand {
  bool transposed;
  int64_t ld;
};
bool operand_of(const at::Tensor& x, Operand& out) {
  if (x.stride(1) == 1 && x.stride(0) >= x.size(1)) {
    out = {false, x.stride(0)};
    return true;
  }
  if (x.stride(0) == 1 && x.stride(1) >= x.size(0)) {
    out = {true, x.stride(1)};
    return true;
  }
  return false;
}

bool cuda_type(at::ScalarType t, cudaDataType_t& out) {
  switch (t) {
    case at::kFloat: out = CUDA_R_32F; return true;
    case at::kBFloat16: out = CUDA_R_16BF; return true;
    case at::kHalf: out = CUDA_R_16F; return true;
    default: return false;
  }
}

// The largest power of two, up to 256, that divides an address (cuBLASLt's kernels differ in
// the alignment they need; the heuristic is told the operands').
int64_t alignment(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  int64_t a = 1;
  while (a < 256 && address % (a * 2) == 0) a *= 2;
  return a;
}

// What a plan depends on: the product's shape and layouts, the types, the epilogue, the
// alignments, the device.
using Key = std::array<int64_t, 18>;
struct KeyHash {
  size_t operator()(const Key& key) const {
    size_t h = 0;
    for (auto v : key) h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

struct Plan {
  bool ok = false;
  bool row_sums = false;  // its epilogue writes the row sums (BGRADB)
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

// Plans per thread (autograd's backward runs on a device thread of its own; a plan's bias
// pointer is set per call). Bounded: a program whose shapes keep changing starts over.
constexpr size_t MAX_PLANS = 512;
thread_local std::unordered_map<Key, Plan, KeyHash> plans;

void release(const Api& lt, Plan& plan) {
  if (plan.desc != nullptr) lt.desc_destroy(plan.desc);
  for (auto layout : {plan.a, plan.b, plan.d}) {
    if (layout != nullptr) lt.layout_destroy(layout);
  }
  plan = Plan{};
}

// Makes `plan` for the column-major product D (m x n) = op(A) (m x k) op(B) (k x n); `ok` false
// when cuBLASLt offers no algorithm for it.
void make_plan(const Api& lt, Plan& plan, bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t lda,
               int64_t ldb, cudaDataType_t ab, cudaDataType_t d, cublasComputeType_t compute,
               cublasLtEpilogue_t epilogue, const std::array<int64_t, 4>& align, size_t workspace) {
  if (lt.desc_create(&plan.desc, compute, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) return;
  const cublasOperation_t op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  lt.desc_set(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a));
  lt.desc_set(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b));
  lt.desc_set(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
  if (lt.layout_create(&plan.a, ab, ta ? k : m, ta ? m : k, lda) != CUBLAS_STATUS_SUCCESS ||
      lt.layout_create(&plan.b, ab, tb ? n : k, tb ? k : n, ldb) != CUBLAS_STATUS_SUCCESS ||
      lt.layout_create(&plan.d, d, m, n, m) != CUBLAS_STATUS_SUCCESS) {
    return;
  }
  cublasLtMatmulPreference_t pref = nullptr;
  if (lt.pref_create(&pref) != CUBLAS_STATUS_SUCCESS) return;
  const uint64_t bytes = workspace;
  lt.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bytes, sizeof(bytes));
  const cublasLtMatmulPreferenceAttributes_t aligned[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4; ++i) {
    const auto value = static_cast<uint32_t>(align[i]);
    lt.pref_set(pref, aligned[i], &value, sizeof(value));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const auto status = lt.heuristic(at::cuda::getCurrentCUDABlasLtHandle(), plan.desc, plan.a, plan.b, plan.d, plan.d,
                                   pref, 1, &result, &found);
  lt.pref_destroy(pref);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) return;
  plan.algo = result.algo;
  plan.ok = true;
}
}  // namespace

namespace acc::kernels {

bool matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias, bool relu, at::ScalarType dtype,
            at::Tensor& out, at::Tensor* row_sums) {
  const Api* lt = api();
  if (lt == nullptr || !a.is_cuda() || a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(0) ||
      b.device() != a.device() || b.scalar_type() != a.scalar_type()) {
    return false;
  }
  const int64_t rows = a.size(0), inner = a.size(1), cols = b.size(1);
  if (rows == 0 || inner == 0 || cols == 0) return false;
  // Only products whose GPU time is near the host's per call (up to 2^32 multiply-adds, about
  // 10 µs in bf16 on an H200): above that the host's saving is nothing, and for `gpt`'s
  // Linear weight gradients (5 to 19 G multiply-adds) the heuristic's first algorithm made the
  // step 19 % slower than cuBLAS's own choice through ATen (BENCHMARKS.md).
  constexpr int64_t SMALL = int64_t{1} << 32;
  if (static_cast<double>(rows) * inner * cols > static_cast<double>(SMALL)) return false;
  // The output is a's dtype, or float32 from half-precision operands; a bias has the output's
  // dtype; the row sums are asked for without a bias or a ReLU.
  cudaDataType_t ab, d;
  if (!cuda_type(a.scalar_type(), ab) || !cuda_type(dtype, d)) return false;
  if (dtype != a.scalar_type() && dtype != at::kFloat) return false;
  const bool has_bias = bias.defined();
  if (has_bias && (bias.dim() != 1 || bias.size(0) != cols || bias.scalar_type() != dtype ||
                   bias.stride(0) != 1 || bias.device() != a.device())) {
    return false;
  }
  if (row_sums != nullptr && (has_bias || relu)) return false;
  Operand oa, ob;
  if (!operand_of(a, oa) || !operand_of(b, ob)) return false;
  c10::cuda::CUDAGuard guard(a.device());
  // The row-major product out[rows, cols] = a @ b, column-major: out^T (cols x rows) =
  // b^T (cols x inner) a^T (inner x rows). a's row sums are then the bias gradient of B's
  // columns (cuBLASLt's BGRADB).
  out = at::empty({rows, cols}, a.options().dtype(dtype));
  const cublasLtEpilogue_t epilogue = row_sums != nullptr ? CUBLASLT_EPILOGUE_BGRADB
                                      : has_bias          ? (relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                                          : (relu ? CUBLASLT_EPILOGUE_RELU : CUBLASLT_EPILOGUE_DEFAULT);
  // float32 operands multiply as ATen's float32 matmuls do (TF32 only where allowed).
  const bool tf32 = a.scalar_type() == at::kFloat &&
                    at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
                        at::Float32Precision::TF32;
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  // The bias is read with the output: the output's alignment as cuBLASLt sees it is the
  // smaller of the two. The row sums, when asked for, are allocated only if the plan writes
  // them; fresh from the caching allocator (whose blocks are multiples of 512 bytes), they
  // are 256-byte aligned, as aligned as `alignment` tells of any address.
  const int64_t out_align = alignment(out.data_ptr());
  const std::array<int64_t, 4> align{alignment(b.data_ptr()), alignment(a.data_ptr()), out_align,
                                     has_bias ? std::min(out_align, alignment(bias.data_ptr())) : out_align};
  const Key key{ob.transposed, oa.transposed, cols, rows, inner, ob.ld, oa.ld, ab, d, compute, epilogue,
                align[0], align[1], align[2], align[3], a.get_device(), 0, 0};
  auto found = plans.find(key);
  if (found == plans.end()) {
    if (plans.size() >= MAX_PLANS) {
      for (auto& [_, plan] : plans) release(*lt, plan);
      plans.clear();
    }
    found = plans.emplace(key, Plan{}).first;
    Plan& plan = found->second;
    auto make = [&](cublasLtEpilogue_t e) {
      make_plan(*lt, plan, ob.transposed, oa.transposed, cols, rows, inner, ob.ld, oa.ld, ab, d, compute, e, align,
                at::cuda::getCUDABlasLtWorkspaceSize());
    };
    make(epilogue);
    plan.row_sums = plan.ok && epilogue == CUBLASLT_EPILOGUE_BGRADB;
    // cuBLASLt may have no algorithm with the row sums for a shape: then the product alone,
    // under the same key, and the caller sums the rows.
    if (!plan.ok && epilogue == CUBLASLT_EPILOGUE_BGRADB) {
      release(*lt, plan);
      make(CUBLASLT_EPILOGUE_DEFAULT);
    }
  }
  Plan& plan = found->second;
  if (!plan.ok) return false;
  at::Tensor sums;
  const void* bias_ptr = has_bias ? bias.data_ptr() : nullptr;
  if (plan.row_sums) {
    sums = at::empty({rows}, a.options().dtype(dtype));
    bias_ptr = sums.data_ptr();
  }
  if (bias_ptr != nullptr) lt->desc_set(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr));
  const float alpha = 1, beta = 0;
  const auto status = lt->matmul(at::cuda::getCurrentCUDABlasLtHandle(), plan.desc, &alpha, b.data_ptr(), plan.a,
                                 a.data_ptr(), plan.b, &beta, out.data_ptr(), plan.d, out.data_ptr(), plan.d,
                                 &plan.algo, at::cuda::getCUDABlasLtWorkspace(),
                                 at::cuda::getCUDABlasLtWorkspaceSize(), at::cuda::getCurrentCUDAStream());
  if (status != CUBLAS_STATUS_SUCCESS) {
    plan.ok = false;  // ATen's path from now on for this shape
    return false;
  }
  if (row_sums != nullptr) *row_sums = sums;  // undefined where the plan has no row sums
  return true;
}
}  // namespace acc::kernels
