//! The dtypes exposed to users, by name, and their libtorch kinds.

use crate::{Error, Result};
use tch::Kind;

/// Parses a dtype name (`float32`, `f32`, `bfloat16`, `bf16`, `int64`, `i64`, `bool`, ...).
pub fn parse(op: &str, name: &str) -> Result<Kind> {
    Ok(match name {
        "float32" | "f32" | "float" => Kind::Float,
        "float64" | "f64" | "double" => Kind::Double,
        "float16" | "f16" | "half" => Kind::Half,
        "bfloat16" | "bf16" => Kind::BFloat16,
        "int64" | "i64" | "long" => Kind::Int64,
        "int32" | "i32" | "int" => Kind::Int,
        "bool" => Kind::Bool,
        "uint8" | "u8" => Kind::Uint8,
        _ => {
            return Err(Error::invalid(
                op,
                format!(
                "unknown dtype \"{name}\" (expected float32, float64, float16, bfloat16, int64, int32, bool or uint8)"
            ),
            ))
        }
    })
}

/// The canonical name of a kind, as `parse` accepts it.
pub fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Bool => "bool",
        Kind::Uint8 => "uint8",
        Kind::Int8 => "int8",
        Kind::Int16 => "int16",
        _ => "unsupported",
    }
}

pub fn is_floating(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// Bytes per element.
pub fn element_size(kind: Kind) -> usize {
    match kind {
        Kind::Double | Kind::Int64 => 8,
        Kind::Float | Kind::Int => 4,
        Kind::Half | Kind::BFloat16 | Kind::Int16 => 2,
        _ => 1,
    }
}
