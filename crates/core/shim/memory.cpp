// How many bytes of host memory a tensor holds, in one call (for the GC accounting
// of crates/core/src/memory.rs, on every tensor handed to JS).
#include "shim.h"

extern "C" int64_t acc_host_bytes(acc_tensor t) noexcept {
  if (!t->defined() || !t->device().is_cpu()) return 0;
  return t->numel() * static_cast<int64_t>(t->element_size());
}

// Whether `t` has elements but no storage behind them: a parameter that ZeRO stage 3 has
// released (or a view of one). libtorch's kernels would read through a null pointer.
extern "C" int acc_storage_missing(acc_tensor t) noexcept {
  if (!t->defined() || !t->has_storage() || t->is_meta() || t->numel() == 0) return 0;
  auto* storage = t->unsafeGetTensorImpl()->storage().unsafeGetStorageImpl();
  return storage->_mutable_data_ptr_no_checks().get() == nullptr ? 1 : 0;
}
