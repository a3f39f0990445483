// Back-propagation from a tensor with an optional output gradient, as torch.autograd.backward.
#include "shim.h"
#include <torch/csrc/autograd/autograd.h>

extern "C" int acc_backward(acc_tensor output, acc_tensor gradient) {
  ACC_PROTECT(torch::autograd::backward({*output}, {gradient ? *gradient : at::Tensor()}))
}
