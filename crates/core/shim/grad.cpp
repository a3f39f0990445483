// Gradient slots that tch cannot assign: set a parameter's .grad.
#include "shim.h"

extern "C" int acc_set_grad(acc_tensor param, acc_tensor grad) {
  ACC_PROTECT(param->mutable_grad() = *grad)
}
