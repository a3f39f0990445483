//! Model weights as Hugging Face writes them: `model.safetensors`, or shards
//! `model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`.

use super::safe_read::{entry_path, read_inside, shorten, JSON_LIMIT};
use super::safetensors_io::serialize;
use super::{load_safetensors_in, write_atomically};
use crate::{dtype, Error, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use tch::Tensor;

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * dtype::element_size(t.kind())) as u64
}

/// Groups tensors in order into shards of at most `max_shard_bytes` (a larger tensor gets its own).
fn plan_shards(tensors: &[(String, Tensor)], max_shard_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current = 0u64;
    for (i, (_, t)) in tensors.iter().enumerate() {
        let size = tensor_bytes(t);
        match shards.last_mut() {
            Some(shard) if current + size <= max_shard_bytes => {
                shard.push(i);
                current += size;
            }
            _ => {
                shards.push(vec![i]);
                current = size;
            }
        }
    }
    shards
}

/// Removes weight files of an earlier save that this save does not overwrite.
fn remove_stale(op: &str, dir: &Path, keep: &[String]) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(op, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_shard = name.starts_with("model-") && name.ends_with(".safetensors") && name.contains("-of-");
        let is_ours = is_shard || name == SINGLE || name == INDEX;
        if is_ours && !keep.contains(&name) {
            fs::remove_file(entry.path()).map_err(|e| Error::io(op, e))?;
        }
    }
    Ok(())
}

/// Saves named tensors into `dir`; returns the file names written.
pub fn save_model(dir: &Path, tensors: &[(String, Tensor)], max_shard_bytes: u64) -> Result<Vec<String>> {
    let op = "saveModel";
    if max_shard_bytes == 0 {
        return Err(Error::invalid(op, "maxShardSize must be positive"));
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(op, e))?;
    let shards = plan_shards(tensors, max_shard_bytes);
    let total: u64 = tensors.iter().map(|(_, t)| tensor_bytes(t)).sum();
    let mut written = Vec::new();
    if shards.len() <= 1 {
        write_atomically(op, &dir.join(SINGLE), &serialize(op, tensors, &HashMap::new())?)?;
        written.push(SINGLE.to_string());
    } else {
        let mut weight_map = Map::new();
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
            let part: Vec<(String, Tensor)> = shard
                .iter()
                .map(|&j| (tensors[j].0.clone(), tensors[j].1.shallow_clone()))
                .collect();
            write_atomically(op, &dir.join(&file), &serialize(op, &part, &HashMap::new())?)?;
            for (name, _) in &part {
                weight_map.insert(name.clone(), Value::String(file.clone()));
            }
            written.push(file);
        }
        let mut sorted: Vec<(String, Value)> = weight_map.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let index = json!({ "metadata": { "total_size": total }, "weight_map": Map::from_iter(sorted) });
        let text = serde_json::to_string_pretty(&index).map_err(|e| Error::invalid(op, e.to_string()))?;
        write_atomically(op, &dir.join(INDEX), text.as_bytes())?;
        written.push(INDEX.to_string());
    }
    remove_stale(op, dir, &written)?;
    Ok(written)
}

fn present(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Loads the weights saved in `dir`, sharded or not, onto the CPU. Reads only regular
/// files inside `dir`: an index entry naming `..`, an absolute path or a subdirectory is refused.
pub fn load_model(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let op = "loadModel";
    let index_path = dir.join(INDEX);
    if !present(&index_path) {
        if !present(&dir.join(SINGLE)) {
            return Err(Error::invalid(
                op,
                format!("{} holds neither {SINGLE} nor {INDEX}", dir.display()),
            ));
        }
        return load_safetensors_in(op, dir, SINGLE);
    }
    let bytes = read_inside(op, dir, INDEX, JSON_LIMIT)?;
    let index: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid(
            op,
            format!(
                "{} is not valid JSON (line {}, column {})",
                index_path.display(),
                e.line(),
                e.column()
            ),
        )
    })?;
    let weight_map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::invalid(op, format!("{} has no weight_map", index_path.display())))?;
    let mut files = Vec::new();
    for (name, file) in weight_map {
        let file = file.as_str().ok_or_else(|| {
            Error::invalid(
                op,
                format!(
                    "{}: the entry for {:?} is not a file name",
                    index_path.display(),
                    shorten(name)
                ),
            )
        })?;
        entry_path(op, dir, file)?;
        files.push(file);
    }
    files.sort_unstable();
    files.dedup();
    let mut out = Vec::new();
    for file in files {
        out.extend(load_safetensors_in(op, dir, file)?);
    }
    for name in weight_map.keys() {
        if !out.iter().any(|(n, _)| n == name) {
            return Err(Error::invalid(
                op,
                format!(
                    "{}: {:?} is listed but missing from its shard",
                    index_path.display(),
                    shorten(name)
                ),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn shards_by_size_and_loads_back() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("acc-shards-{}", std::process::id()));
        let tensors: Vec<(String, Tensor)> = (0..5)
            .map(|i| {
                (
                    format!("layer{i}.weight"),
                    Tensor::full([10], i as f64, (Kind::Float, Device::Cpu)),
                )
            })
            .collect();
        let files = save_model(&dir, &tensors, 100)?; // 40 bytes each: 2 per shard
        assert_eq!(files.len(), 4);
        assert_eq!(files[0], "model-00001-of-00003.safetensors");
        let loaded = load_model(&dir)?;
        assert_eq!(loaded.len(), 5);
        for (name, t) in &tensors {
            assert!(loaded.iter().any(|(n, l)| n == name && l.equal(t)));
        }
        save_model(&dir, &tensors, 1 << 20)?;
        assert!(
            !dir.join("model-00001-of-00003.safetensors").exists(),
            "stale shards removed"
        );
        assert_eq!(load_model(&dir)?.len(), 5);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
