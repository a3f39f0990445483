// Autocast and gradient unscaling that tch lacks: autocast on or off with a dtype for
// a device type (tch's autocast has no dtype and covers CUDA only), entered and left as
// torch.autocast's __enter__/__exit__ do, and the foreach non-finite check + unscale.
#include "shim.h"
#include <ATen/autocast_mode.h>
#include <vector>

namespace {

// 0 = CPU, 1 = CUDA: the only device types the engine runs on.
at::DeviceType device_type(int32_t code) {
  TORCH_CHECK(code == 0 || code == 1, "autocast: unknown device type code ", code);
  return code == 0 ? at::kCPU : at::kCUDA;
}

}  // namespace

at::ScalarType acc::compute_dtype(at::DeviceType device, at::ScalarType dtype) {
  // As autocast's own eligibility: float64 (and any non-floating type) is never converted.
  const bool eligible = at::isFloatingType(dtype) && dtype != at::kDouble;
  const bool on = eligible && (device == at::kCUDA || device == at::kCPU) && at::autocast::is_autocast_enabled(device);
  return on ? at::autocast::get_autocast_dtype(device) : dtype;
}

at::ScalarType acc::compute_dtype(const at::Tensor& input) {
  return compute_dtype(input.device().type(), input.scalar_type());
}

// The current setting for a device type (autocast state is thread-local in libtorch).
extern "C" int acc_autocast_state(int32_t device, int32_t* enabled, int32_t* dtype) {
  ACC_PROTECT({
    auto type = device_type(device);
    *enabled = at::autocast::is_autocast_enabled(type) ? 1 : 0;
    *dtype = static_cast<int32_t>(at::autocast::get_autocast_dtype(type));
  })
}

// torch.autocast.__enter__: set the state, then count one more level of nesting.
extern "C" int acc_autocast_enter(int32_t device, int32_t enabled, int32_t dtype) {
  ACC_PROTECT({
    auto type = device_type(device);
    at::autocast::set_autocast_enabled(type, enabled != 0);
    at::autocast::set_autocast_dtype(type, static_cast<at::ScalarType>(dtype));
    at::autocast::increment_nesting();
  })
}

// torch.autocast.__exit__: leaving the outermost level frees the cached low-precision
// copies of weights (autocast's and shim/linear.cpp's); then the state from before the
// matching enter comes back.
extern "C" int acc_autocast_exit(int32_t device, int32_t enabled, int32_t dtype) {
  ACC_PROTECT({
    auto type = device_type(device);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
      acc::clear_linear_casts();
    }
    at::autocast::set_autocast_enabled(type, enabled != 0);
    at::autocast::set_autocast_dtype(type, static_cast<at::ScalarType>(dtype));
  })
}

// Multiplies every gradient by inv_scale in place and sets found_inf to 1 if any holds
// inf or NaN. All tensors share one device; the gradients also one dtype.
extern "C" int acc_amp_unscale(const acc_tensor* grads, int64_t n, acc_tensor found_inf, acc_tensor inv_scale) {
  ACC_PROTECT({
    auto list = acc::to_list(grads, n);
    at::_amp_foreach_non_finite_check_and_unscale_(list, *found_inf, *inv_scale);
  })
}
