// Back-propagation from a tensor with an optional output gradient, as torch.autograd.backward.
#include "shim.h"
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/variable.h>
#include <mutex>

extern "C" int acc_backward(acc_tensor output, acc_tensor gradient) {
  ACC_PROTECT(torch::autograd::backward({*output}, {gradient ? *gradient : at::Tensor()}))
}

// Forgets each tensor's cached gradient accumulator, so that the next backward makes a new one
// on the stream it runs on. (An accumulator kept alive by an older graph stays tied to the
// stream it was made on, which a CUDA graph capture on another stream cannot wait for.)
extern "C" int acc_reset_grad_accumulators(const acc_tensor* tensors, int n) {
  ACC_PROTECT({
    for (int i = 0; i < n; i++) {
      auto* meta = torch::autograd::impl::get_autograd_meta(*tensors[i]);
      if (meta == nullptr) continue;
      std::lock_guard<std::mutex> lock(meta->mutex_);
      meta->grad_accumulator_.reset();
    }
  })
}
