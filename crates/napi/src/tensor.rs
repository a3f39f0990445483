//! How tensors cross into JS. Each native tensor handed to JS gets a slot in a
//! per-thread table; JS knows it by a handle, a BigInt made of the slot's index
//! and generation. The TS `Tensor` class (ts/tensor.ts) holds the handle, passes
//! it back on every call, and returns it (`releaseTensors`) when the JS object is
//! garbage-collected. Hot operations return the bare handle (`TensorHandle`) for
//! TS to wrap; other bindings return `Tensor`, built here by calling the
//! registered TS class. Arguments accept a handle or a `Tensor` object.
//!
//! Why not napi externals or napi-rs classes: every napi object with a finalizer
//! costs a weak reference and a finalizer queue entry in Node, over a microsecond
//! per operation; a JS `FinalizationRegistry` entry costs about a tenth of that.
//! Why a BigInt: a plain number would be indistinguishable from a scalar operand.
//!
//! `dispose()` frees the tensor and its slot at once; the slot's generation then
//! changes, so the stale handle reads as a disposed tensor.

use accelerate_core::memory::Handle;
use napi::bindgen_prelude::{
    BigUint64Array, FromNapiRef, FromNapiValue, ToNapiValue, TypeName, Unknown, ValidateNapiValue, ValueType,
};
use napi::{check_status, sys, Env, Error, JsValue, Result, Status};
use napi_derive::napi;
use std::cell::{Cell, RefCell};

use crate::convert::report_memory;
use crate::fast::fast_exports;

fast_exports!(FAST = [dispose_tensor[env](Unknown)]);

pub struct Tensor {
    pub(crate) handle: Handle,
}

/// A tensor returned to JS as its bare handle, for TS to wrap.
pub struct TensorHandle(pub(crate) Tensor);

struct Slot {
    generation: u32,
    tensor: Option<Tensor>,
}

/// Slots live in fixed-size chunks that never move, so a reference handed to a
/// binding stays valid while the table grows.
const CHUNK: usize = 1024;

#[derive(Default)]
struct Table {
    chunks: Vec<Box<[Slot; CHUNK]>>,
    len: usize,
    free: Vec<u32>,
}

fn split(handle: u64) -> (usize, u32) {
    ((handle & 0xffff_ffff) as usize, (handle >> 32) as u32)
}

impl Table {
    fn slot(&self, index: usize) -> Option<&Slot> {
        (index < self.len).then(|| &self.chunks[index / CHUNK][index % CHUNK])
    }

    fn slot_mut(&mut self, index: usize) -> Option<&mut Slot> {
        (index < self.len).then(|| &mut self.chunks[index / CHUNK][index % CHUNK])
    }

    fn insert(&mut self, tensor: Tensor) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None => {
                if self.len == self.chunks.len() * CHUNK {
                    self.chunks.push(Box::new(std::array::from_fn(|_| Slot {
                        generation: 0,
                        tensor: None,
                    })));
                }
                self.len += 1;
                self.len - 1
            }
        };
        let slot = &mut self.chunks[index / CHUNK][index % CHUNK];
        slot.tensor = Some(tensor);
        (u64::from(slot.generation) << 32) | index as u64
    }

    fn get(&self, handle: u64) -> Option<&Tensor> {
        let (index, generation) = split(handle);
        let slot = self.slot(index)?;
        (slot.generation == generation).then_some(slot.tensor.as_ref()?)
    }

    fn remove(&mut self, handle: u64) -> Option<Tensor> {
        let (index, generation) = split(handle);
        let slot = self.slot_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let tensor = slot.tensor.take()?;
        // Never u32::MAX: JS marks disposed tensors with an all-ones handle.
        slot.generation = (slot.generation + 1) % u32::MAX;
        self.free.push(index as u32);
        Some(tensor)
    }
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
    static TENSOR_CLASS: Cell<sys::napi_ref> = const { Cell::new(std::ptr::null_mut()) };
    /// What a stale handle resolves to: a tensor whose every use fails as disposed.
    static DISPOSED: &'static Tensor = Box::leak(Box::new(Tensor { handle: Handle::disposed() }));
}

fn insert(tensor: Tensor) -> u64 {
    TABLE.with(|table| table.borrow_mut().insert(tensor))
}

fn lookup(handle: u64) -> &'static Tensor {
    let found = TABLE.with(|table| {
        // SAFETY: chunks never move, and a slot's tensor is taken only by `remove`, which
        // runs in `dispose_tensor` and `release_tensors`; neither runs while another
        // binding holds this reference.
        table.borrow().get(handle).map(|t| unsafe { &*(t as *const Tensor) })
    });
    found.unwrap_or_else(|| DISPOSED.with(|d| *d))
}

/// Takes a tensor out of the table. Dropped by the caller, outside the table's borrow:
/// freeing a tensor runs libtorch code, never this table's.
fn remove(handle: u64) -> Option<Tensor> {
    TABLE.with(|table| table.borrow_mut().remove(handle))
}

/// Frees the slots of collected `Tensor` objects (ts/tensor.ts calls it in batches).
#[napi]
pub fn release_tensors(env: Env, handles: BigUint64Array) {
    for &handle in handles.iter() {
        drop(remove(handle));
    }
    report_memory(&env);
}

/// Frees a tensor's memory and its slot now (`Tensor.dispose`). Idempotent.
#[napi]
pub fn dispose_tensor(env: Env, tensor: Unknown) -> Result<()> {
    let handle = unsafe { handle_of(env.raw(), tensor.raw()) }?;
    if let Some(tensor) = remove(handle) {
        tensor.handle.dispose();
    }
    report_memory(&env);
    Ok(())
}

/// Called once by ts/tensor.ts: the class whose constructor takes a handle.
#[napi]
pub fn register_tensor_class(env: Env, tensor_class: Unknown) -> Result<()> {
    let mut class_ref = std::ptr::null_mut();
    // SAFETY: the class belongs to this env; the reference keeps it for the process.
    check_status!(unsafe { sys::napi_create_reference(env.raw(), tensor_class.raw(), 1, &mut class_ref) })?;
    TENSOR_CLASS.with(|c| c.set(class_ref));
    Ok(())
}

unsafe fn create_handle(env: sys::napi_env, tensor: Tensor) -> Result<sys::napi_value> {
    let handle = insert(tensor);
    let mut value = std::ptr::null_mut();
    let status = unsafe { sys::napi_create_bigint_uint64(env, handle, &mut value) };
    if status != sys::Status::napi_ok {
        drop(remove(handle));
        return Err(Error::new(Status::GenericFailure, "could not create a tensor handle"));
    }
    Ok(value)
}

fn type_of(env: sys::napi_env, value: sys::napi_value) -> Result<ValueType> {
    let mut kind = 0;
    check_status!(unsafe { sys::napi_typeof(env, value, &mut kind) })?;
    Ok(ValueType::from(kind))
}

/// The handle in `value`: a bare handle, or a TS `Tensor` (whose `_native` property holds one).
unsafe fn handle_of(env: sys::napi_env, value: sys::napi_value) -> Result<u64> {
    let given = type_of(env, value)?;
    let mut value = value;
    if given == ValueType::Object {
        check_status!(unsafe { sys::napi_get_named_property(env, value, c"_native".as_ptr(), &mut value) })?;
    }
    if type_of(env, value)? != ValueType::BigInt {
        return Err(Error::new(
            Status::InvalidArg,
            format!("expected a Tensor, got {given}"),
        ));
    }
    let (mut handle, mut lossless) = (0, false);
    check_status!(unsafe { sys::napi_get_value_bigint_uint64(env, value, &mut handle, &mut lossless) })?;
    Ok(handle)
}

unsafe fn tensor_ref(env: sys::napi_env, value: sys::napi_value) -> Result<&'static Tensor> {
    Ok(lookup(unsafe { handle_of(env, value) }?))
}

impl ToNapiValue for TensorHandle {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        unsafe { create_handle(env, val.0) }
    }
}

impl TypeName for TensorHandle {
    fn type_name() -> &'static str {
        "TensorHandle"
    }
    fn value_type() -> ValueType {
        ValueType::BigInt
    }
}

impl ToNapiValue for Tensor {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let class_ref = TENSOR_CLASS.with(Cell::get);
        if class_ref.is_null() {
            return Err(Error::from_reason(
                "the Tensor class was not registered (import accelerate-ts, not the .node file)",
            ));
        }
        let handle = unsafe { create_handle(env, val)? };
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

/// An operand: a Tensor or a plain number, told apart with one type check.
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
