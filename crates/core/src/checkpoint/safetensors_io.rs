//! Reading and writing safetensors files (what Python's `safetensors` reads and writes).

use super::safe_read::{read_inside, read_regular};
use super::write_atomically;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

struct HostTensor {
    bytes: Vec<u8>,
    shape: Vec<usize>,
    dtype: Dtype,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_dtype(op: &str, name: &str, kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => {
            return Err(Error::invalid(
                op,
                format!("\"{name}\" has dtype {other:?}, which safetensors cannot store"),
            ))
        }
    })
}

fn to_kind(op: &str, name: &str, dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        other => {
            return Err(Error::invalid(
                op,
                format!("\"{name}\" has safetensors dtype {other:?}, which is not supported"),
            ))
        }
    })
}

fn host_copy(op: &str, name: &str, t: &Tensor) -> Result<HostTensor> {
    let bytes = crate::tensor::to_bytes(op, t)?;
    let shape = t.size().iter().map(|&d| d as usize).collect();
    Ok(HostTensor {
        bytes,
        shape,
        dtype: to_dtype(op, name, t.kind())?,
    })
}

/// Serializes named tensors (any device) with `metadata` (`{"format": "pt"}` is added).
pub fn serialize(op: &str, tensors: &[(String, Tensor)], metadata: &HashMap<String, String>) -> Result<Vec<u8>> {
    let hosts = tensors
        .iter()
        .map(|(n, t)| Ok((n.as_str(), host_copy(op, n, t)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut meta = metadata.clone();
    meta.entry("format".to_string()).or_insert_with(|| "pt".to_string());
    safetensors::tensor::serialize(hosts.iter().map(|(n, h)| (*n, h)), &Some(meta))
        .map_err(|e| Error::invalid(op, format!("cannot serialize: {e}")))
}

/// Writes named tensors to `path` atomically.
pub fn save_safetensors(
    op: &str,
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    write_atomically(op, path, &serialize(op, tensors, metadata)?)
}

/// What is wrong with a safetensors file, without quoting its contents.
fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::InvalidHeader => "its header is not UTF-8".into(),
        E::InvalidHeaderStart => "its header does not start with `{`".into(),
        E::InvalidHeaderDeserialization | E::JsonError(_) => "its header is not valid safetensors JSON".into(),
        E::HeaderTooLarge => "its header is larger than 100 MB".into(),
        E::HeaderTooSmall => "it is shorter than the 8-byte header length".into(),
        E::InvalidHeaderLength => "its header length runs past the end of the file".into(),
        E::TensorNotFound(name) => format!("tensor {:?} is missing", super::safe_read::shorten(name)),
        E::TensorInvalidInfo => "a tensor's shape, dtype and offsets disagree".into(),
        E::InvalidOffset(name) => format!(
            "the offsets of tensor {:?} are invalid",
            super::safe_read::shorten(name)
        ),
        E::IoError(e) => format!("cannot be read: {e}"),
        E::InvalidTensorView(..) => "a tensor's data does not match its shape and dtype".into(),
        E::MetadataIncompleteBuffer => "its tensors do not cover the data exactly (truncated or padded file)".into(),
        E::ValidationOverflow => "a tensor's declared size overflows".into(),
    }
}

/// Decodes safetensors bytes read from `path` onto the CPU, sorted by name.
fn decode(op: &str, path: &Path, bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::invalid(
            op,
            format!("{} is not a valid safetensors file: {}", path.display(), describe(&e)),
        )
    })?;
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        let kind =
            to_kind(op, &name, view.dtype()).map_err(|e| Error::invalid(op, format!("{}: {e}", path.display())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = crate::tensor::from_bytes(op, view.data(), &shape, kind, kind, Device::Cpu)
            .map_err(|e| Error::invalid(op, format!("{}: {e}", path.display())))?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads every tensor of a safetensors file onto the CPU, sorted by name. `path` may be
/// a symbolic link (the caller chose it), but must end at a regular file.
pub fn load_safetensors(op: &str, path: &Path) -> Result<Vec<(String, Tensor)>> {
    let target = std::fs::canonicalize(path).map_err(|e| {
        Error::io(
            op,
            std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display())),
        )
    })?;
    let bytes = read_regular(op, &target, u64::MAX).map_err(|e| rename_path(e, &target, path))?;
    decode(op, path, &bytes)
}

/// Reads the safetensors file `name` of checkpoint directory `dir` (only a regular file inside it).
pub fn load_safetensors_in(op: &str, dir: &Path, name: &str) -> Result<Vec<(String, Tensor)>> {
    let bytes = read_inside(op, dir, name, u64::MAX)?;
    decode(op, &dir.join(name), &bytes)
}

/// Names the path the caller gave in an error about its resolved target.
fn rename_path(e: Error, target: &Path, given: &Path) -> Error {
    if target == given {
        return e;
    }
    let op = e.op().to_string();
    let text = e.to_string();
    let rest = text.strip_prefix(&format!("{op}: ")).unwrap_or(&text);
    Error::invalid(
        op,
        rest.replacen(
            &target.display().to_string(),
            &format!("{} (→ {})", given.display(), target.display()),
            1,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("acc-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("test", e))?;
        let path = dir.join("t.safetensors");
        let tensors: Vec<(String, Tensor)> = [Kind::Float, Kind::BFloat16, Kind::Int64, Kind::Bool]
            .iter()
            .map(|&k| {
                (
                    format!("{k:?}"),
                    Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]).to_kind(k),
                )
            })
            .collect();
        save_safetensors("test", &path, &tensors, &HashMap::new())?;
        let loaded = load_safetensors("test", &path)?;
        assert_eq!(loaded.len(), tensors.len());
        for (name, t) in &tensors {
            assert!(
                loaded
                    .iter()
                    .any(|(n, l)| n == name && l.kind() == t.kind() && l.equal(t)),
                "{name}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
