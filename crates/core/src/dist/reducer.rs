//! Gradient averaging overlapped with backward (the C++ reducer in shim/reducer.cpp):
//! buckets are all-reduced as soon as all their gradients are accumulated.

use super::group::with_group;
use crate::shim::check;
use crate::Result;
use std::ffi::c_void;
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn acc_reducer_new(
        group: *mut c_void,
        params: *const *const C_tensor,
        count: i32,
        bucket_bytes: i64,
        out: *mut *mut c_void,
    ) -> i32;
    fn acc_reducer_prepare(reducer: *mut c_void, sync: i32, deferred: i32) -> i32;
    fn acc_reducer_finish(reducer: *mut c_void) -> i32;
    fn acc_reducer_free(reducer: *mut c_void);
}

/// Averages the gradients of one model's parameters across processes, during backward.
pub struct Reducer {
    raw: *mut c_void,
}

impl Reducer {
    /// Buckets `params` (about `bucket_bytes` each) and hooks their gradient accumulation.
    pub fn new(params: &[Tensor], bucket_bytes: usize) -> Result<Reducer> {
        let op = "prepare";
        if bucket_bytes == 0 {
            return Err(crate::Error::invalid(op, "bucketBytes must be positive"));
        }
        let ptrs: Vec<*const C_tensor> = params.iter().map(Tensor::as_ptr).collect();
        let mut raw = std::ptr::null_mut();
        with_group(op, |g| {
            // SAFETY: the group and tensors are live for the call; the reducer keeps its own references.
            check(op, unsafe {
                acc_reducer_new(g.raw, ptrs.as_ptr(), ptrs.len() as i32, bucket_bytes as i64, &mut raw)
            })
        })?;
        Ok(Reducer { raw })
    }

    /// Call before each backward pass: `sync` false only accumulates (gradient accumulation);
    /// `deferred` averages only in `finish`, for gradients that arrive over several passes
    /// (activation checkpointing), where a parameter may accumulate more than once.
    pub fn prepare(&self, sync: bool, deferred: bool) -> Result<()> {
        // SAFETY: `raw` is live until drop.
        check("backward", unsafe {
            acc_reducer_prepare(self.raw, i32::from(sync), i32::from(deferred))
        })
    }

    /// Call after the backward pass: waits for the all-reduces and writes the averages into `.grad`.
    pub fn finish(&self) -> Result<()> {
        // SAFETY: `raw` is live until drop.
        check("backward", unsafe { acc_reducer_finish(self.raw) })
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: `raw` came from acc_reducer_new and is freed once.
        unsafe { acc_reducer_free(self.raw) }
    }
}
