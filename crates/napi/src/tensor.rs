//! How tensors cross into JS. Each native tensor handed to JS gets a slot in a
//! per-thread table; JS knows it by a handle, a BigInt made of the slot's index
//! and generation. The TS `Tensor` class (ts/tensor.ts) holds the handle, passes
//! it back on every call, and returns it (`releaseTensors`) when the JS object is
//! garbage-collected or its scope ends. Hot operations return the bare handle
//! (`TensorHandle`) for TS to wrap; other bindings return `Tensor`, built here by
//! calling the factory that TS registered.
//!
//! Why not napi externals or napi-rs classes: every napi object with a finalizer
//! costs a weak reference and a finalizer queue entry in Node, over a microsecond
//! per operation; a JS `FinalizationRegistry` entry costs about a tenth of that.
//! Why a BigInt: a plain number would be indistinguishable from a scalar operand.
//!
//! Handles cannot be forged: a `Tensor` argument must be an object of the registered
//! class (checked with `instanceof`); a bare handle is accepted only as a `TensorArg`,
//! which only the op-table methods take, and TS passes them handles of real tensors
//! only (its `raw()` refuses a BigInt from the user). A converted argument holds its
//! own reference to the slot's tensor, so JS code that runs while a binding converts
//! its arguments (a getter that disposes a tensor) cannot free what the call uses:
//! that tensor reads as disposed instead.
//!
//! `dispose()` frees the tensor and its slot at once; JS then holds a marker handle
//! (generation `u32::MAX`, never a live slot's) whose index says what freed it.

use accelerate_core::memory::{FreedBy, Handle};
use napi::bindgen_prelude::{
    BigUint64Array, FromNapiValue, ToNapiValue, TypeName, Unknown, ValidateNapiValue, ValueType,
};
use napi::{check_status, sys, Env, Error, JsValue, Result, Status};
use napi_derive::napi;
use std::cell::{Cell, RefCell};

use crate::convert::report_memory;
use crate::fast::fast_exports;

fast_exports!(FAST = [dispose_tensor[env](Unknown)]);

/// A tensor argument or result. As an argument: a JS `Tensor` object (never a bare handle).
#[derive(Clone)]
pub struct Tensor {
    pub(crate) handle: Handle,
}

/// A tensor argument of the op-table methods (crates/napi/src/tensor_ops.rs, tensor_api.rs):
/// a handle, which TS passes for the receiver and for operands it checked, or a `Tensor`.
pub struct TensorArg(pub(crate) Tensor);

impl std::ops::Deref for TensorArg {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}

/// A tensor returned to JS as its bare handle, for TS to wrap.
pub struct TensorHandle(pub(crate) Tensor);

struct Slot {
    generation: u32,
    tensor: Option<Tensor>,
    /// A weak reference to the JS object holding this slot's handle, once it is watched.
    weak: sys::napi_ref,
}

/// What leaves the table with a slot: its tensor, and its weak reference (if watched),
/// which the caller deletes with its env.
struct Removed {
    tensor: Tensor,
    weak: sys::napi_ref,
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots with a weak reference now; how many were watched since the last sweep, and
    /// how many more make the next sweep due.
    watched: usize,
    watched_since_sweep: usize,
    next_sweep: usize,
}

fn split(handle: u64) -> (usize, u32) {
    ((handle & 0xffff_ffff) as usize, (handle >> 32) as u32)
}

/// Watched tensors between sweeps, at least: a sweep visits every slot, so sweeping only
/// after as many new watches as there are watched slots keeps its cost per tensor constant.
const SWEEP_EVERY: usize = 1024;

impl Table {
    fn live_slot(&mut self, handle: u64) -> Option<&mut Slot> {
        let (index, generation) = split(handle);
        let slot = self.slots.get_mut(index)?;
        (slot.generation == generation && slot.tensor.is_some()).then_some(slot)
    }

    fn insert(&mut self, tensor: Tensor) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    tensor: None,
                    weak: std::ptr::null_mut(),
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.tensor = Some(tensor);
        (u64::from(slot.generation) << 32) | index as u64
    }

    fn get(&self, handle: u64) -> Option<&Tensor> {
        let (index, generation) = split(handle);
        let slot = self.slots.get(index)?;
        (slot.generation == generation).then_some(slot.tensor.as_ref()?)
    }

    fn remove(&mut self, handle: u64) -> Option<Removed> {
        let (index, _) = split(handle);
        let slot = self.live_slot(handle)?;
        let tensor = slot.tensor.take()?;
        let weak = std::mem::replace(&mut slot.weak, std::ptr::null_mut());
        // Never u32::MAX: that generation marks freed tensors in JS.
        slot.generation = (slot.generation + 1) % u32::MAX;
        if !weak.is_null() {
            self.watched -= 1;
        }
        self.free.push(index as u32);
        Some(Removed { tensor, weak })
    }

    /// Gives the slot of `handle` the weak reference `weak`; returns it back if the slot is
    /// gone (or already watched), for the caller to delete.
    fn watch(&mut self, handle: u64, weak: sys::napi_ref) -> Option<sys::napi_ref> {
        let Some(slot) = self.live_slot(handle).filter(|slot| slot.weak.is_null()) else {
            return Some(weak);
        };
        slot.weak = weak;
        self.watched += 1;
        self.watched_since_sweep += 1;
        None
    }

    fn sweep_due(&self) -> bool {
        self.watched_since_sweep >= self.next_sweep.max(SWEEP_EVERY)
    }

    /// The handles and weak references of every watched slot; starts a new sweep period,
    /// as long as there are watched slots now (what the sweep frees only shortens it).
    fn take_watched(&mut self) -> Vec<(u64, sys::napi_ref)> {
        self.watched_since_sweep = 0;
        self.next_sweep = self.watched;
        let watched = self.slots.iter().enumerate().filter(|(_, slot)| !slot.weak.is_null());
        watched
            .map(|(index, slot)| ((u64::from(slot.generation) << 32) | index as u64, slot.weak))
            .collect()
    }
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
    /// The TS `Tensor` class (for `instanceof`) and the factory that wraps a new handle in one.
    static TENSOR_CLASS: Cell<sys::napi_ref> = const { Cell::new(std::ptr::null_mut()) };
    static TENSOR_FACTORY: Cell<sys::napi_ref> = const { Cell::new(std::ptr::null_mut()) };
}

/// Marker handles that JS holds for freed tensors: generation `u32::MAX` (never a live
/// slot's) and an index saying what freed it (ts/tensor.ts writes them).
const MARKER_GENERATION: u32 = u32::MAX;
const MARKER_DISPOSED: u32 = u32::MAX;
const MARKER_TIDY: u32 = u32::MAX - 1;

fn freed_by(handle: u64) -> FreedBy {
    let (index, generation) = split(handle);
    match (generation, index as u32) {
        (MARKER_GENERATION, MARKER_TIDY) => FreedBy::Tidy,
        (MARKER_GENERATION, step) if step != MARKER_DISPOSED => FreedBy::Step(step),
        _ => FreedBy::Dispose,
    }
}

fn insert(tensor: Tensor) -> u64 {
    TABLE.with(|table| table.borrow_mut().insert(tensor))
}

/// The tensor behind `handle`, as a new reference to its slot (alive however long the
/// caller needs it); a freed or unknown handle gives a tensor whose uses say what freed it.
fn lookup(handle: u64) -> Tensor {
    let found = TABLE.with(|table| table.borrow().get(handle).cloned());
    found.unwrap_or_else(|| Tensor {
        handle: Handle::freed(freed_by(handle)),
    })
}

/// Takes a tensor out of the table and deletes its weak reference. The tensor is returned
/// to be dropped outside the table's borrow: freeing a tensor runs libtorch code, never this table's.
fn remove(env: sys::napi_env, handle: u64) -> Option<Tensor> {
    let removed = TABLE.with(|table| table.borrow_mut().remove(handle))?;
    if !removed.weak.is_null() {
        // SAFETY: the reference was made in this env and is deleted once: `remove` cleared it.
        unsafe { sys::napi_delete_reference(env, removed.weak) };
    }
    Some(removed.tensor)
}

/// Frees the slots of `Tensor` objects whose scope ended (ts/tensor.ts calls it in batches).
/// A slot's tensor stays alive while a running call still uses it.
#[napi]
pub fn release_tensors(env: Env, handles: BigUint64Array) {
    for &handle in handles.iter() {
        drop(remove(env.raw(), handle));
    }
    report_memory(&env);
}

/// Hands `tensors` (JS `Tensor` objects that no scope will free) to the garbage collector:
/// each gets a weak reference, and every so often a sweep frees the slots whose object was
/// collected. Unlike a FinalizationRegistry or a Node-API finalizer, which wait for the event
/// loop, the collector clears a weak reference while it runs, so a synchronous loop that drops
/// tensors frees them as it goes.
#[napi]
pub fn watch_tensors(env: Env, tensors: Vec<Unknown>) -> Result<()> {
    for tensor in tensors {
        let handle = unsafe { object_handle(env.raw(), tensor.raw()) }?;
        let mut weak = std::ptr::null_mut();
        // SAFETY: a live object of this env; a reference count of 0 makes the reference weak.
        check_status!(unsafe { sys::napi_create_reference(env.raw(), tensor.raw(), 0, &mut weak) })?;
        if let Some(unused) = TABLE.with(|table| table.borrow_mut().watch(handle, weak)) {
            // SAFETY: just created in this env, and stored nowhere.
            unsafe { sys::napi_delete_reference(env.raw(), unused) };
        }
    }
    if collector_ran(env.raw())? || TABLE.with(|table| table.borrow().sweep_due()) {
        sweep(env.raw());
    }
    report_memory(&env);
    Ok(())
}

/// Frees the watched tensors collected since the last sweep, if the collector ran since.
pub fn free_collected(env: &Env) -> Result<()> {
    if collector_ran(env.raw())? {
        sweep(env.raw());
        report_memory(env);
    }
    Ok(())
}

thread_local! {
    /// A weak reference to an object nothing else holds: once it reads empty, the garbage
    /// collector ran (and may have collected watched tensors) since it was made.
    static COLLECTOR_PROBE: Cell<sys::napi_ref> = const { Cell::new(std::ptr::null_mut()) };
}

/// Whether the garbage collector ran since the last call that answered yes (then a new probe is set).
fn collector_ran(env: sys::napi_env) -> Result<bool> {
    let probe = COLLECTOR_PROBE.with(Cell::get);
    if !probe.is_null() {
        let mut object = std::ptr::null_mut();
        // SAFETY: the probe is a live reference of this env, deleted only below.
        check_status!(unsafe { sys::napi_get_reference_value(env, probe, &mut object) })?;
        if !object.is_null() {
            return Ok(false);
        }
        // SAFETY: as above; it is replaced right after.
        unsafe { sys::napi_delete_reference(env, probe) };
    }
    let (mut object, mut fresh) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: a new object of this env; a reference count of 0 makes the reference weak.
    check_status!(unsafe { sys::napi_create_object(env, &mut object) })?;
    check_status!(unsafe { sys::napi_create_reference(env, object, 0, &mut fresh) })?;
    COLLECTOR_PROBE.with(|p| p.set(fresh));
    Ok(!probe.is_null())
}

/// Frees the watched slots whose JS object the garbage collector has collected.
fn sweep(env: sys::napi_env) {
    for (handle, weak) in TABLE.with(|table| table.borrow_mut().take_watched()) {
        let mut object = std::ptr::null_mut();
        // SAFETY: `weak` is a live reference of this env: only `remove` deletes it, and a
        // removed slot is no longer in the list taken above, which runs no JS.
        let status = unsafe { sys::napi_get_reference_value(env, weak, &mut object) };
        if status == sys::Status::napi_ok && object.is_null() {
            drop(remove(env, handle));
        }
    }
}

/// Frees a tensor's memory and its slot now (`Tensor.dispose` passes its handle). Idempotent.
#[napi]
pub fn dispose_tensor(env: Env, handle: Unknown) -> Result<()> {
    let handle = unsafe { bare_handle(env.raw(), handle.raw()) }?;
    if let Some(tensor) = remove(env.raw(), handle) {
        tensor.handle.dispose();
    }
    report_memory(&env);
    Ok(())
}

/// Called once by ts/tensor.ts: the `Tensor` class, and the function that wraps a new handle in one.
#[napi]
pub fn register_tensor_class(env: Env, tensor_class: Unknown, factory: Unknown) -> Result<()> {
    for (value, cell) in [(tensor_class, &TENSOR_CLASS), (factory, &TENSOR_FACTORY)] {
        let mut reference = std::ptr::null_mut();
        // SAFETY: the value belongs to this env; the reference keeps it for the process.
        check_status!(unsafe { sys::napi_create_reference(env.raw(), value.raw(), 1, &mut reference) })?;
        cell.with(|c| c.set(reference));
    }
    Ok(())
}

fn registered(
    env: sys::napi_env,
    cell: &'static std::thread::LocalKey<Cell<sys::napi_ref>>,
) -> Result<sys::napi_value> {
    let reference = cell.with(Cell::get);
    if reference.is_null() {
        return Err(Error::from_reason(
            "the Tensor class was not registered (import accelerate-ts, not the .node file)",
        ));
    }
    let mut value = std::ptr::null_mut();
    check_status!(unsafe { sys::napi_get_reference_value(env, reference, &mut value) })?;
    Ok(value)
}

unsafe fn create_handle(env: sys::napi_env, tensor: Tensor) -> Result<sys::napi_value> {
    let handle = insert(tensor);
    let mut value = std::ptr::null_mut();
    let status = unsafe { sys::napi_create_bigint_uint64(env, handle, &mut value) };
    if status != sys::Status::napi_ok {
        drop(remove(env, handle));
        return Err(Error::new(Status::GenericFailure, "could not create a tensor handle"));
    }
    Ok(value)
}

fn type_of(env: sys::napi_env, value: sys::napi_value) -> Result<ValueType> {
    let mut kind = 0;
    check_status!(unsafe { sys::napi_typeof(env, value, &mut kind) })?;
    Ok(ValueType::from(kind))
}

fn not_a_tensor(given: ValueType) -> Error {
    Error::new(Status::InvalidArg, format!("expected a Tensor, got {given}"))
}

/// The handle in a BigInt, which must fit 64 bits.
unsafe fn bare_handle(env: sys::napi_env, value: sys::napi_value) -> Result<u64> {
    let (mut handle, mut lossless) = (0, false);
    // Node checks the type itself (napi_bigint_expected): only a failure pays for a typeof.
    let status = unsafe { sys::napi_get_value_bigint_uint64(env, value, &mut handle, &mut lossless) };
    if status != sys::Status::napi_ok || !lossless {
        return Err(not_a_tensor(type_of(env, value)?));
    }
    Ok(handle)
}

/// The handle held by a JS `Tensor` object; anything else (a look-alike object too) is an error.
unsafe fn object_handle(env: sys::napi_env, value: sys::napi_value) -> Result<u64> {
    let given = type_of(env, value)?;
    if given != ValueType::Object {
        return Err(not_a_tensor(given));
    }
    let mut is_tensor = false;
    check_status!(unsafe { sys::napi_instanceof(env, value, registered(env, &TENSOR_CLASS)?, &mut is_tensor) })?;
    if !is_tensor {
        return Err(not_a_tensor(given));
    }
    let mut handle = std::ptr::null_mut();
    check_status!(unsafe { sys::napi_get_named_property(env, value, c"_native".as_ptr(), &mut handle) })?;
    unsafe { bare_handle(env, handle) }
}

impl FromNapiValue for Tensor {
    unsafe fn from_napi_value(env: sys::napi_env, napi_val: sys::napi_value) -> Result<Self> {
        Ok(lookup(unsafe { object_handle(env, napi_val) }?))
    }
}

impl TensorArg {
    /// The tensor in `value`, whose type `given` the caller already read.
    unsafe fn of_type(env: sys::napi_env, value: sys::napi_value, given: ValueType) -> Result<Self> {
        let handle = match given {
            ValueType::BigInt => unsafe { bare_handle(env, value) }?,
            _ => unsafe { object_handle(env, value) }?,
        };
        Ok(TensorArg(lookup(handle)))
    }
}

impl FromNapiValue for TensorArg {
    unsafe fn from_napi_value(env: sys::napi_env, napi_val: sys::napi_value) -> Result<Self> {
        unsafe { TensorArg::of_type(env, napi_val, type_of(env, napi_val)?) }
    }
}

impl ValidateNapiValue for Tensor {
    unsafe fn validate(env: sys::napi_env, napi_val: sys::napi_value) -> Result<sys::napi_value> {
        unsafe { object_handle(env, napi_val) }.map(|_| std::ptr::null_mut())
    }
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
        let factory = registered(env, &TENSOR_FACTORY)?;
        let handle = unsafe { create_handle(env, val)? };
        let mut undefined = std::ptr::null_mut();
        check_status!(unsafe { sys::napi_get_undefined(env, &mut undefined) })?;
        let mut instance = std::ptr::null_mut();
        let args = [handle];
        check_status!(unsafe { sys::napi_call_function(env, undefined, factory, 1, args.as_ptr(), &mut instance) })?;
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

impl TypeName for TensorArg {
    fn type_name() -> &'static str {
        "Tensor"
    }
    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

/// An operand of the op-table methods: a Tensor (or its handle) or a plain number.
pub enum TensorOrNumber {
    Tensor(TensorArg),
    Number(f64),
}

impl FromNapiValue for TensorOrNumber {
    unsafe fn from_napi_value(env: sys::napi_env, napi_val: sys::napi_value) -> Result<Self> {
        let given = type_of(env, napi_val)?;
        if given == ValueType::Number {
            return Ok(TensorOrNumber::Number(unsafe { f64::from_napi_value(env, napi_val)? }));
        }
        unsafe { TensorArg::of_type(env, napi_val, given) }
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
