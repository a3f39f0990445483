//! Tensors owned by a host language: handles that can be disposed early, the
//! reason a handle was freed (so a later use can say what freed it), and
//! counters of what is alive (tensors and bytes) so a host runtime can report
//! native memory to its GC. Scopes that free what a block created live in the
//! host, which knows its objects (ts/tensor.ts).

use crate::error::SHARDED;
use crate::{shim, Error, Result};
use std::cell::{Ref, RefCell};
use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use tch::Tensor;

static LIVE_TENSORS: AtomicI64 = AtomicI64::new(0);
static UNREPORTED_BYTES: AtomicI64 = AtomicI64::new(0);

/// What freed a tensor before a later use of it; the use's error says so, and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreedBy {
    /// `dispose()` or the end of a `using` block.
    Dispose,
    /// The end of the `tidy` call that created it.
    Tidy,
    /// The end of step `n` (counted from 1 in its epoch) of a prepared data loader.
    Step(u32),
}

impl fmt::Display for FreedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreedBy::Dispose => write!(f, "the tensor was disposed (by dispose() or at the end of a `using` block)"),
            FreedBy::Tidy => write!(
                f,
                "the tensor was freed at the end of the tidy() that created it; return it from the function or keep() it to use it later"
            ),
            FreedBy::Step(n) => write!(
                f,
                "the tensor was freed at the end of step {n} by the prepared loader; keep() it to use it later, or create it before the loop"
            ),
        }
    }
}

struct Slot {
    tensor: RefCell<Option<Tensor>>,
    bytes: i64,
    freed_by: FreedBy,
}

impl Slot {
    fn release(&self) {
        if self.tensor.borrow_mut().take().is_some() {
            LIVE_TENSORS.fetch_sub(1, Ordering::Relaxed);
            UNREPORTED_BYTES.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// A tensor owned by the host language. Cloning a handle shares the same slot.
#[derive(Clone)]
pub struct Handle(Rc<Slot>);

impl Handle {
    /// Takes ownership of `tensor` and counts it.
    pub fn new(tensor: Tensor) -> Handle {
        // Only host memory is reported to the JS garbage collector: GPU memory does not
        // pressure V8's heap, and reporting it would trigger a full collection every few steps.
        let bytes = shim::host_bytes(&tensor);
        LIVE_TENSORS.fetch_add(1, Ordering::Relaxed);
        UNREPORTED_BYTES.fetch_add(bytes, Ordering::Relaxed);
        Handle(Rc::new(Slot {
            tensor: RefCell::new(Some(tensor)),
            bytes,
            freed_by: FreedBy::Dispose,
        }))
    }

    /// A handle whose tensor `by` already freed: every use fails, saying so.
    pub fn freed(by: FreedBy) -> Handle {
        Handle(Rc::new(Slot {
            tensor: RefCell::new(None),
            bytes: 0,
            freed_by: by,
        }))
    }

    /// Borrows the tensor for operation `op`; a freed handle is an error naming `op` and what
    /// freed it, and so is a tensor whose storage ZeRO stage 3 released (kernels would crash on it).
    pub fn get(&self, op: &str) -> Result<Ref<'_, Tensor>> {
        let tensor = self.peek(op)?;
        if shim::storage_missing(&tensor) {
            return Err(Error::invalid(op, SHARDED));
        }
        Ok(tensor)
    }

    /// Borrows the tensor for what reads no data (shape, dtype, device, its gradient, a detached
    /// alias): also a parameter whose storage ZeRO stage 3 released.
    pub fn peek(&self, op: &str) -> Result<Ref<'_, Tensor>> {
        Ref::filter_map(self.0.tensor.borrow(), Option::as_ref).map_err(|_| Error::Disposed {
            op: op.to_string(),
            by: self.0.freed_by,
        })
    }

    /// Frees the tensor now; later uses fail with a "disposed" error. Idempotent.
    pub fn dispose(&self) {
        self.0.release();
    }

    pub fn is_disposed(&self) -> bool {
        self.0.tensor.borrow().is_none()
    }

    pub fn same_slot(&self, other: &Handle) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

/// Tensors currently owned by handles (not yet disposed or collected).
pub fn live_tensors() -> i64 {
    LIVE_TENSORS.load(Ordering::Relaxed)
}

/// Bytes allocated or freed since the last call, for the host GC's accounting.
/// Returns 0 until the change reaches `threshold` bytes, to keep the hot path cheap.
pub fn take_unreported_bytes(threshold: i64) -> i64 {
    let pending = UNREPORTED_BYTES.load(Ordering::Relaxed);
    if pending.abs() < threshold {
        return 0;
    }
    UNREPORTED_BYTES.fetch_sub(pending, Ordering::Relaxed);
    pending
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispose_frees_and_later_use_names_the_operation() {
        let before = live_tensors();
        let a = Handle::new(Tensor::from_slice(&[1.0f32, 2.0]));
        let shared = a.clone();
        assert_eq!(live_tensors(), before + 1);
        a.dispose();
        assert!(shared.is_disposed(), "clones share the slot");
        assert_eq!(live_tensors(), before);
        let err = a.get("add").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("add: the tensor was disposed"), "{err}");
    }

    #[test]
    fn a_freed_handle_says_what_freed_it() {
        let step = Handle::freed(FreedBy::Step(12));
        let err = step.get("mul").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.starts_with("mul: the tensor was freed at the end of step 12 by the prepared loader; keep()"),
            "{err}"
        );
        let tidy = Handle::freed(FreedBy::Tidy);
        assert!(matches!(
            tidy.get("sum"),
            Err(Error::Disposed { by: FreedBy::Tidy, .. })
        ));
    }
}
