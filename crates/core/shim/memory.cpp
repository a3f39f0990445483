// How many bytes of host memory a tensor holds, in one call (for the GC accounting
// of crates/core/src/memory.rs, on every tensor handed to JS).
#include "shim.h"

extern "C" int64_t acc_host_bytes(acc_tensor t) noexcept {
  if (!t->defined() || !t->device().is_cpu()) return 0;
  return t->numel() * static_cast<int64_t>(t->element_size());
}
