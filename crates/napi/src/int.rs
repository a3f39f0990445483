//! Integer arguments (sizes, dims, counts, seeds) read from JS numbers. napi-rs reads
//! an `i64` by truncation (NaN → 0, 1.5 → 1, Infinity → i64::MAX) and fails an array
//! conversion without naming the operation; these types accept any JS value and
//! judge it later, in the binding body, where the operation and argument are known.

use accelerate_core::{Error, Result};
use napi::bindgen_prelude::{FromNapiValue, TypeName, ValidateNapiValue};
use napi::{sys, ValueType};

/// The largest integer a JS number holds exactly (2^53 - 1).
pub const MAX_SAFE: f64 = 9_007_199_254_740_991.0;

/// One JS value as read, before judgement.
#[derive(Clone, Copy, Debug)]
enum Raw {
    Number(f64),
    Other(&'static str),
}

fn type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::Undefined => "undefined",
        ValueType::Null => "null",
        ValueType::Boolean => "a boolean",
        ValueType::Number => "a number",
        ValueType::String => "a string",
        ValueType::Symbol => "a symbol",
        ValueType::Object => "an object",
        ValueType::Function => "a function",
        ValueType::BigInt => "a BigInt",
        _ => "an unknown value",
    }
}

unsafe fn value_type(env: sys::napi_env, value: sys::napi_value) -> napi::Result<ValueType> {
    let mut t = 0;
    // SAFETY: called from a conversion with the callback's live env and one of its values.
    napi::check_status!(unsafe { sys::napi_typeof(env, value, &mut t) })?;
    Ok(ValueType::from(t))
}

unsafe fn read(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Raw> {
    // SAFETY: as for `value_type`.
    let t = unsafe { value_type(env, value) }?;
    if t != ValueType::Number {
        return Ok(Raw::Other(type_name(t)));
    }
    // SAFETY: `value` is a number, so napi_get_value_double succeeds.
    Ok(Raw::Number(unsafe { f64::from_napi_value(env, value) }?))
}

unsafe fn is_array(env: sys::napi_env, value: sys::napi_value) -> napi::Result<bool> {
    let mut array = false;
    // SAFETY: as for `value_type`.
    napi::check_status!(unsafe { sys::napi_is_array(env, value, &mut array) })?;
    Ok(array)
}

/// A number as JS prints it (Rust prints `inf`).
fn js(value: f64) -> String {
    match value {
        v if v.is_nan() => "NaN".into(),
        v if v == f64::INFINITY => "Infinity".into(),
        v if v == f64::NEG_INFINITY => "-Infinity".into(),
        v => v.to_string(),
    }
}

/// `value` as an integer in `min..=max` for argument `name` of `op`.
pub fn judge(op: &str, name: &str, value: f64, min: i64, max: i64) -> Result<i64> {
    let range = || {
        if min <= -(MAX_SAFE as i64) {
            "a safe integer".to_string()
        } else if max >= MAX_SAFE as i64 {
            format!("an integer ≥ {min}")
        } else {
            format!("an integer in [{min}, {max}]")
        }
    };
    if !value.is_finite() || value.fract() != 0.0 || value.abs() > MAX_SAFE {
        return Err(Error::invalid(
            op,
            format!("{name} must be {}, got {}", range(), js(value)),
        ));
    }
    if value < min as f64 || value > max as f64 {
        return Err(Error::invalid(
            op,
            format!("{name} must be {}, got {}", range(), js(value)),
        ));
    }
    Ok(value as i64)
}

fn judge_raw(op: &str, name: &str, raw: Raw, min: i64, max: i64) -> Result<i64> {
    match raw {
        Raw::Number(v) => judge(op, name, v, min, max),
        Raw::Other(what) => Err(Error::invalid(op, format!("{name} must be an integer, got {what}"))),
    }
}

/// A JS number meant as an integer (TypeScript type `Int`, a `number`).
#[derive(Clone, Copy, Debug)]
pub struct Int(Raw);

impl Int {
    /// Any safe integer (negative dims count from the end).
    pub fn get(self, op: &str, name: &str) -> Result<i64> {
        judge_raw(op, name, self.0, -(MAX_SAFE as i64), MAX_SAFE as i64)
    }
    /// A safe integer ≥ 0 (sizes, counts, indices).
    pub fn count(self, op: &str, name: &str) -> Result<usize> {
        Ok(judge_raw(op, name, self.0, 0, MAX_SAFE as i64)? as usize)
    }
    /// A safe integer ≥ 1.
    pub fn positive(self, op: &str, name: &str) -> Result<i64> {
        judge_raw(op, name, self.0, 1, MAX_SAFE as i64)
    }
    pub fn in_range(self, op: &str, name: &str, min: i64, max: i64) -> Result<i64> {
        judge_raw(op, name, self.0, min, max)
    }
}

impl From<i64> for Int {
    fn from(v: i64) -> Int {
        Int(Raw::Number(v as f64))
    }
}

/// A JS array meant as integers (TypeScript type `Ints`, a `number[]`).
#[derive(Clone, Debug)]
pub struct Ints(std::result::Result<Vec<Raw>, &'static str>);

impl Ints {
    fn each(&self, op: &str, name: &str, min: i64) -> Result<Vec<i64>> {
        let values = self
            .0
            .as_ref()
            .map_err(|what| Error::invalid(op, format!("{name} must be an array of integers, got {what}")))?;
        values
            .iter()
            .enumerate()
            .map(|(i, &raw)| judge_raw(op, &format!("{name}[{i}]"), raw, min, MAX_SAFE as i64))
            .collect()
    }
    /// Safe integers, negative allowed (dims).
    pub fn get(&self, op: &str, name: &str) -> Result<Vec<i64>> {
        self.each(op, name, -(MAX_SAFE as i64))
    }
    /// A shape: sizes ≥ 0, except that one -1 may ask for the size that fits (reshape, view, expand).
    pub fn shape(&self, op: &str, name: &str) -> Result<Vec<i64>> {
        self.each(op, name, -1)
    }
    /// Sizes ≥ 0.
    pub fn sizes(&self, op: &str, name: &str) -> Result<Vec<i64>> {
        self.each(op, name, 0)
    }
}

/// One dim or several (TypeScript type `Dims`, `number | number[]`).
#[derive(Clone, Debug)]
pub enum Dims {
    One(Int),
    Many(Ints),
}

impl Dims {
    pub fn get(&self, op: &str, name: &str) -> Result<Vec<i64>> {
        match self {
            Dims::One(one) => Ok(vec![one.get(op, name)?]),
            Dims::Many(many) => many.get(op, name),
        }
    }
}

impl FromNapiValue for Int {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        // SAFETY: forwarded from napi-rs with its env and value.
        Ok(Int(unsafe { read(env, value) }?))
    }
}

impl FromNapiValue for Ints {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        // SAFETY: forwarded from napi-rs with its env and value; elements are read
        // with napi_get_element from the array itself, below its length.
        unsafe {
            if !is_array(env, value)? {
                return Ok(Ints(Err(type_name(value_type(env, value)?))));
            }
            let mut length = 0u32;
            napi::check_status!(sys::napi_get_array_length(env, value, &mut length))?;
            let mut out = Vec::with_capacity(length.min(1 << 16) as usize);
            for i in 0..length {
                let mut element = std::ptr::null_mut();
                napi::check_status!(sys::napi_get_element(env, value, i, &mut element))?;
                out.push(read(env, element)?);
            }
            Ok(Ints(Ok(out)))
        }
    }
}

impl FromNapiValue for Dims {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        // SAFETY: forwarded from napi-rs with its env and value.
        unsafe {
            if is_array(env, value)? {
                Ok(Dims::Many(Ints::from_napi_value(env, value)?))
            } else {
                Ok(Dims::One(Int::from_napi_value(env, value)?))
            }
        }
    }
}

macro_rules! typed {
    ($($t:ty => $name:literal),*) => {$(
        impl TypeName for $t {
            fn type_name() -> &'static str {
                $name
            }
            fn value_type() -> ValueType {
                ValueType::Unknown
            }
        }
        impl ValidateNapiValue for $t {
            // Any value is accepted here and judged in the binding body.
            unsafe fn validate(_: sys::napi_env, _: sys::napi_value) -> napi::Result<sys::napi_value> {
                Ok(std::ptr::null_mut())
            }
        }
    )*};
}
typed!(Int => "Int", Ints => "Ints", Dims => "Dims");

/// Judges a binding argument for operation `op`, by name; values that need no
/// judgement pass through.
pub trait Checked {
    type Out;
    fn checked(self, op: &str, name: &str) -> Result<Self::Out>;
}

impl Checked for Int {
    type Out = i64;
    fn checked(self, op: &str, name: &str) -> Result<i64> {
        self.get(op, name)
    }
}

impl Checked for Option<Int> {
    type Out = Option<i64>;
    fn checked(self, op: &str, name: &str) -> Result<Option<i64>> {
        self.map(|v| v.get(op, name)).transpose()
    }
}

impl Checked for Ints {
    type Out = Vec<i64>;
    fn checked(self, op: &str, name: &str) -> Result<Vec<i64>> {
        self.get(op, name)
    }
}

macro_rules! unchecked {
    ($($t:ty),*) => {$(
        impl Checked for $t {
            type Out = $t;
            fn checked(self, _: &str, _: &str) -> Result<$t> {
                Ok(self)
            }
        }
    )*};
}
unchecked!(f64, Option<f64>, Option<String>, Option<bool>);
