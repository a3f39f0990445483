//! Conversions shared by every binding: core errors to JS errors, panics to
//! errors, new tensors to JS objects (with native memory reported to V8).

use accelerate_core::memory::{self, Handle};
use accelerate_core::tensor::ops::Operand;
use accelerate_core::{device, dtype, Error};
use napi::{sys, Env};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::tensor::{Tensor, TensorHandle, TensorOrNumber};

/// Native allocations are reported to V8 in steps of at least this many bytes.
const REPORT_STEP: i64 = 1 << 20;

/// `logical_not` → `logicalNot`: errors name operations as JS code calls them.
fn js_name(op: &str) -> String {
    let mut out = String::with_capacity(op.len());
    let mut upper = false;
    for c in op.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false
            }
            c => out.push(c),
        }
    }
    out
}

pub fn to_js(err: Error) -> napi::Error {
    let message = err.to_string();
    let op = err.op();
    let message = match message.strip_prefix(op) {
        Some(rest) => format!("{}{rest}", js_name(op)),
        None => message,
    };
    napi::Error::from_reason(message)
}

/// What a caught panic said, as the detail of a named error. tch panics with libtorch's
/// message wrapped in `Result::unwrap()`'s; only its first line is kept (the rest is a
/// C++ backtrace).
pub fn panic_detail(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    let text = text
        .strip_prefix("called `Result::unwrap()` on an `Err` value: ")
        .unwrap_or(text);
    let text = text.strip_prefix("Torch(\"").unwrap_or(text);
    // Debug-formatted, so libtorch's line breaks are the two characters `\n`.
    let first = text.split("\\n").next().unwrap_or("");
    let first = first.lines().next().unwrap_or("").trim().trim_end_matches("\")");
    if first.is_empty() {
        "the native code failed without a message (please report it)".to_string()
    } else {
        first.chars().take(300).collect()
    }
}

/// Runs a binding body so that neither an error nor a Rust panic can abort Node;
/// a panic becomes an error naming the operation and what the panic said.
pub fn guarded<T>(op: &str, body: impl FnOnce() -> accelerate_core::Result<T>) -> napi::Result<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result.map_err(to_js),
        Err(payload) => Err(napi::Error::from_reason(format!(
            "{}: {}",
            js_name(op),
            panic_detail(payload.as_ref())
        ))),
    }
}

pub fn report_memory(env: &Env) {
    let delta = memory::take_unreported_bytes(REPORT_STEP);
    if delta != 0 {
        let mut adjusted = 0;
        // SAFETY: `env` is the live env of the calling callback.
        unsafe { sys::napi_adjust_external_memory(env.raw(), delta, &mut adjusted) };
    }
}

pub fn wrap(env: &Env, tensor: tch::Tensor) -> Tensor {
    let handle = Handle::new(tensor);
    report_memory(env);
    Tensor { handle }
}

pub fn wrap_all(env: &Env, tensors: Vec<tch::Tensor>) -> Vec<Tensor> {
    tensors.into_iter().map(|t| wrap(env, t)).collect()
}

/// A new tensor as a bare handle, for the hot operations that TS wraps itself.
pub fn handle(env: &Env, tensor: tch::Tensor) -> TensorHandle {
    TensorHandle(wrap(env, tensor))
}

pub fn handles(env: &Env, tensors: Vec<tch::Tensor>) -> Vec<TensorHandle> {
    tensors.into_iter().map(|t| handle(env, t)).collect()
}

/// Calls `f` with the operand `x` borrowed for operation `op`.
pub fn with_operand<T>(
    op: &str,
    x: &TensorOrNumber,
    f: impl FnOnce(Operand) -> accelerate_core::Result<T>,
) -> accelerate_core::Result<T> {
    match x {
        TensorOrNumber::Tensor(t) => f(Operand::Tensor(&*t.handle.get(op)?)),
        TensorOrNumber::Number(v) => f(Operand::Scalar(*v)),
    }
}

/// Borrows every tensor of `list` for `op` and calls `f` with plain references.
pub fn with_all<T>(
    op: &str,
    list: &[Tensor],
    f: impl FnOnce(&[&tch::Tensor]) -> accelerate_core::Result<T>,
) -> accelerate_core::Result<T> {
    borrow_all(list, |t| t.handle.get(op), f)
}

/// As `with_all`, for an `op` that reads no data of the tensors (parameters whose gradients
/// it handles, which ZeRO stage 3 may hold released).
pub fn with_all_parameters<T>(
    op: &str,
    list: &[Tensor],
    f: impl FnOnce(&[&tch::Tensor]) -> accelerate_core::Result<T>,
) -> accelerate_core::Result<T> {
    borrow_all(list, |t| t.handle.peek(op), f)
}

fn borrow_all<'a, T>(
    list: &'a [Tensor],
    borrow: impl Fn(&'a Tensor) -> accelerate_core::Result<std::cell::Ref<'a, tch::Tensor>>,
    f: impl FnOnce(&[&tch::Tensor]) -> accelerate_core::Result<T>,
) -> accelerate_core::Result<T> {
    let borrowed = list.iter().map(borrow).collect::<accelerate_core::Result<Vec<_>>>()?;
    let refs: Vec<&tch::Tensor> = borrowed.iter().map(|r| &**r).collect();
    f(&refs)
}

pub fn parse_dtype(op: &str, name: Option<&str>, default: tch::Kind) -> accelerate_core::Result<tch::Kind> {
    name.map_or(Ok(default), |n| dtype::parse(op, n))
}

pub fn parse_device(op: &str, name: Option<&str>) -> accelerate_core::Result<tch::Device> {
    name.map_or(Ok(tch::Device::Cpu), |n| device::parse(op, n))
}
