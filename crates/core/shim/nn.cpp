// Gradient slots tch cannot reach: dropping a tensor's .grad (PyTorch's `p.grad = None`).
#include "shim.h"

extern "C" int acc_nn_clear_grad(acc_tensor t) {
  ACC_PROTECT({ t->mutable_grad().reset(); })
}
