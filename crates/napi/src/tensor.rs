//! How tensors cross into JS. Each native tensor lives in a napi external (a
//! `TensorHandle`); `ts/tensor.ts` wraps each handle in its `Tensor` class.
//! Hot operations return bare handles that TS wraps (cheap); other bindings
//! return `Tensor`, built here by calling the registered TS class. Arguments
//! accept either form. This bypasses napi-rs classes, whose per-call borrow
//! tracking and per-instance bookkeeping cost about 1.5 µs per operation.

use accelerate_core::memory::Handle;
use napi::bindgen_prelude::{FromNapiRef, FromNapiValue, ToNapiValue, TypeName, Unknown, ValidateNapiValue, ValueType};
use napi::{check_status, sys, Env, Error, JsValue, Result, Status};
use napi_derive::napi;
use std::cell::Cell;
use std::ffi::c_void;

use crate::convert::report_memory_raw;

pub struct Tensor {
    pub(crate) handle: Handle,
}

/// A tensor returned to JS as a bare handle, for TS to wrap.
pub struct TensorHandle(pub(crate) Tensor);

/// Marks externals made here, so a foreign external is rejected rather than misread.
const TENSOR_TAG: sys::napi_type_tag = sys::napi_type_tag {
    lower: 0x6163_6365_6c65_7261,
    upper: 0x7465_2d74_656e_736f,
};

thread_local! {
    static TENSOR_CLASS: Cell<sys::napi_ref> = const { Cell::new(std::ptr::null_mut()) };
}

/// Called once by ts/tensor.ts: the class whose constructor takes a handle.
#[napi]
pub fn register_tensor_class(env: Env, tensor_class: Unknown) -> Result<()> {
    let mut reference = std::ptr::null_mut();
    // SAFETY: `class` is a live value of this env; the reference keeps it alive for the process.
    check_status!(unsafe { sys::napi_create_reference(env.raw(), tensor_class.raw(), 1, &mut reference) })?;
    TENSOR_CLASS.with(|c| c.set(reference));
    Ok(())
}

unsafe extern "C" fn finalize_tensor(env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the Box<Tensor> leaked in `create_external`, finalized exactly once.
    drop(unsafe { Box::from_raw(data.cast::<Tensor>()) });
    report_memory_raw(env);
}

unsafe fn create_external(env: sys::napi_env, tensor: Tensor) -> Result<sys::napi_value> {
    let data = Box::into_raw(Box::new(tensor));
    let mut value = std::ptr::null_mut();
    // SAFETY: `data` stays valid until `finalize_tensor` frees it.
    let status = unsafe {
        sys::napi_create_external(
            env,
            data.cast(),
            Some(finalize_tensor),
            std::ptr::null_mut(),
            &mut value,
        )
    };
    if status != sys::Status::napi_ok {
        drop(unsafe { Box::from_raw(data) });
        return Err(Error::new(Status::GenericFailure, "could not create a tensor handle"));
    }
    check_status!(unsafe { sys::napi_type_tag_object(env, value, &TENSOR_TAG) })?;
    Ok(value)
}

fn type_of(env: sys::napi_env, value: sys::napi_value) -> Result<ValueType> {
    let mut kind = 0;
    check_status!(unsafe { sys::napi_typeof(env, value, &mut kind) })?;
    Ok(ValueType::from(kind))
}

/// The tensor behind a handle or a TS `Tensor` (whose `_native` property holds the handle).
unsafe fn tensor_ref(env: sys::napi_env, value: sys::napi_value) -> Result<&'static Tensor> {
    let mut value = value;
    let mut kind = type_of(env, value)?;
    if kind == ValueType::Object {
        let mut inner = std::ptr::null_mut();
        check_status!(unsafe { sys::napi_get_named_property(env, value, c"_native".as_ptr(), &mut inner) })?;
        value = inner;
        kind = type_of(env, value)?;
    }
    let mut tagged = false;
    if kind == ValueType::External {
        check_status!(unsafe { sys::napi_check_object_type_tag(env, value, &TENSOR_TAG, &mut tagged) })?;
    }
    if !tagged {
        return Err(Error::new(Status::InvalidArg, format!("expected a Tensor, got {kind}")));
    }
    let mut data = std::ptr::null_mut();
    check_status!(unsafe { sys::napi_get_value_external(env, value, &mut data) })?;
    // SAFETY: tagged externals hold a Box<Tensor> that lives until the external is collected,
    // which cannot happen while JS passes it as an argument.
    Ok(unsafe { &*data.cast::<Tensor>() })
}

impl ToNapiValue for TensorHandle {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        unsafe { create_external(env, val.0) }
    }
}

impl TypeName for TensorHandle {
    fn type_name() -> &'static str {
        "TensorHandle"
    }
    fn value_type() -> ValueType {
        ValueType::External
    }
}

impl ToNapiValue for Tensor {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let handle = unsafe { create_external(env, val)? };
        let class_ref = TENSOR_CLASS.with(Cell::get);
        if class_ref.is_null() {
            return Err(Error::from_reason(
                "the Tensor class was not registered (import accelerate-ts, not the .node file)",
            ));
        }
        let mut class = std::ptr::null_mut();
        check_status!(unsafe { sys::napi_get_reference_value(env, class_ref, &mut class) })?;
        let mut instance = std::ptr::null_mut();
        let args = [handle];
        check_status!(unsafe { sys::napi_new_instance(env, class, 1, args.as_ptr(), &mut instance) })?;
        Ok(instance)
    }
}

impl TypeName for Tensor {
    fn type_name() -> &'static str {
        "Tensor"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl TypeName for &Tensor {
    fn type_name() -> &'static str {
        "Tensor"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl FromNapiRef for Tensor {
    unsafe fn from_napi_ref(env: sys::napi_env, napi_val: sys::napi_value) -> Result<&'static Self> {
        unsafe { tensor_ref(env, napi_val) }
    }
}

impl ValidateNapiValue for &Tensor {
    unsafe fn validate(env: sys::napi_env, napi_val: sys::napi_value) -> Result<sys::napi_value> {
        unsafe { tensor_ref(env, napi_val) }.map(|_| std::ptr::null_mut())
    }
}

/// An operand: a tensor (or handle) or a plain number, told apart with one type check.
pub enum TensorOrNumber {
    Tensor(&'static Tensor),
    Number(f64),
}

impl FromNapiValue for TensorOrNumber {
    unsafe fn from_napi_value(env: sys::napi_env, napi_val: sys::napi_value) -> Result<Self> {
        if type_of(env, napi_val)? == ValueType::Number {
            return Ok(TensorOrNumber::Number(unsafe { f64::from_napi_value(env, napi_val)? }));
        }
        unsafe { tensor_ref(env, napi_val) }
            .map(TensorOrNumber::Tensor)
            .map_err(|_| Error::new(Status::InvalidArg, "expected a Tensor or a number".to_string()))
    }
}

impl TypeName for TensorOrNumber {
    fn type_name() -> &'static str {
        "TensorOrNumber"
    }
    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}
