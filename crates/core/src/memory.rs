//! Deterministic tensor lifetime: handles that can be disposed early, nested
//! scopes that dispose what was created inside them, and counters of what is
//! alive (tensors and bytes) so a host runtime can report native memory to its GC.

use crate::{shim, Error, Result};
use std::cell::{Ref, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicI64, Ordering};
use tch::Tensor;

static LIVE_TENSORS: AtomicI64 = AtomicI64::new(0);
static UNREPORTED_BYTES: AtomicI64 = AtomicI64::new(0);

struct Slot {
    tensor: RefCell<Option<Tensor>>,
    bytes: i64,
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

thread_local! {
    static SCOPES: RefCell<Vec<Vec<Weak<Slot>>>> = const { RefCell::new(Vec::new()) };
}

impl Handle {
    /// Takes ownership of `tensor`, counts it, and records it in the innermost open scope.
    pub fn new(tensor: Tensor) -> Handle {
        // Only host memory is reported to the JS garbage collector: GPU memory does not
        // pressure V8's heap, and reporting it would trigger a full collection every few steps.
        let bytes = shim::host_bytes(&tensor);
        let slot = Rc::new(Slot {
            tensor: RefCell::new(Some(tensor)),
            bytes,
        });
        LIVE_TENSORS.fetch_add(1, Ordering::Relaxed);
        UNREPORTED_BYTES.fetch_add(bytes, Ordering::Relaxed);
        SCOPES.with(|scopes| {
            if let Some(scope) = scopes.borrow_mut().last_mut() {
                scope.push(Rc::downgrade(&slot));
            }
        });
        Handle(slot)
    }

    /// A handle whose tensor is already gone: every use fails as disposed.
    pub fn disposed() -> Handle {
        Handle(Rc::new(Slot {
            tensor: RefCell::new(None),
            bytes: 0,
        }))
    }

    /// Borrows the tensor for operation `op`; a disposed handle is an error naming `op`.
    pub fn get(&self, op: &str) -> Result<Ref<'_, Tensor>> {
        Ref::filter_map(self.0.tensor.borrow(), Option::as_ref).map_err(|_| Error::Disposed { op: op.to_string() })
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

/// Opens a scope: handles created until the matching `end_scope` belong to it.
pub fn begin_scope() {
    SCOPES.with(|scopes| scopes.borrow_mut().push(Vec::new()));
}

/// Closes the innermost scope, disposing every handle created in it except those
/// in `keep`, which move to the enclosing scope (if any). Returns how many were disposed.
pub fn end_scope(keep: &[Handle]) -> usize {
    let created = SCOPES.with(|scopes| scopes.borrow_mut().pop()).unwrap_or_default();
    let mut disposed = 0;
    let mut kept = Vec::new();
    for weak in created {
        let Some(slot) = weak.upgrade() else { continue };
        if keep.iter().any(|k| Rc::ptr_eq(&k.0, &slot)) {
            kept.push(weak);
        } else if slot.tensor.borrow().is_some() {
            slot.release();
            disposed += 1;
        }
    }
    SCOPES.with(|scopes| {
        if let Some(parent) = scopes.borrow_mut().last_mut() {
            parent.extend(kept);
        }
    });
    disposed
}

pub fn scope_depth() -> usize {
    SCOPES.with(|scopes| scopes.borrow().len())
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
    fn scope_disposes_what_it_did_not_keep() {
        let before = live_tensors();
        begin_scope();
        let a = Handle::new(Tensor::from_slice(&[1.0f32, 2.0]));
        let b = Handle::new(Tensor::from_slice(&[3.0f32]));
        assert_eq!(end_scope(std::slice::from_ref(&a)), 1);
        assert!(!a.is_disposed());
        assert!(b.is_disposed());
        assert!(matches!(b.get("add"), Err(Error::Disposed { .. })));
        drop((a, b));
        assert_eq!(live_tensors(), before);
    }

    #[test]
    fn nested_scope_hands_kept_tensors_to_parent() {
        begin_scope();
        begin_scope();
        let inner = Handle::new(Tensor::from_slice(&[1i64]));
        end_scope(std::slice::from_ref(&inner));
        assert!(!inner.is_disposed());
        end_scope(&[]);
        assert!(inner.is_disposed());
    }
}
