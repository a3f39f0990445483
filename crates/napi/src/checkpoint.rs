//! Checkpoint files for JS: safetensors, sharded model weights, atomic writes, RNG state.

use accelerate_core::{checkpoint, shim};
use napi::bindgen_prelude::{Buffer, Either};
use napi::{Env, Result};
use napi_derive::napi;
use std::collections::HashMap;
use std::path::Path;

use crate::convert::{guarded, wrap, wrap_all};
use crate::tensor::Tensor;

#[napi(object, object_from_js = false)]
pub struct NamedTensors {
    pub names: Vec<String>,
    pub tensors: Vec<Tensor>,
}

fn named(op: &str, names: Vec<String>, tensors: &[Tensor]) -> accelerate_core::Result<Vec<(String, tch::Tensor)>> {
    if names.len() != tensors.len() {
        return Err(accelerate_core::Error::invalid(
            op,
            format!("{} names for {} tensors", names.len(), tensors.len()),
        ));
    }
    names
        .into_iter()
        .zip(tensors)
        .map(|(n, t)| Ok((n, t.handle.get(op)?.shallow_clone())))
        .collect()
}

fn unzip(env: &Env, list: Vec<(String, tch::Tensor)>) -> NamedTensors {
    let (names, tensors): (Vec<String>, Vec<tch::Tensor>) = list.into_iter().unzip();
    NamedTensors {
        names,
        tensors: wrap_all(env, tensors),
    }
}

/// Writes named tensors to a safetensors file, atomically.
#[napi]
pub fn save_safetensors(
    path: String,
    names: Vec<String>,
    tensors: Vec<Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    guarded("saveSafetensors", || {
        let list = named("saveSafetensors", names, &tensors)?;
        checkpoint::save_safetensors(
            "saveSafetensors",
            Path::new(&path),
            &list,
            &metadata.unwrap_or_default(),
        )
    })
}

#[napi]
pub fn load_safetensors(env: Env, path: String) -> Result<NamedTensors> {
    guarded("loadSafetensors", || {
        Ok(unzip(
            &env,
            checkpoint::load_safetensors("loadSafetensors", Path::new(&path))?,
        ))
    })
}

/// Reads the safetensors file `name` of checkpoint directory `dir`: only a regular file
/// inside it (a symbolic link out, a FIFO or a device is refused).
#[napi]
pub fn load_safetensors_in(env: Env, dir: String, name: String) -> Result<NamedTensors> {
    guarded("loadState", || {
        Ok(unzip(
            &env,
            checkpoint::load_safetensors_in("loadState", Path::new(&dir), &name)?,
        ))
    })
}

/// The bytes of the (JSON) file `name` of checkpoint directory `dir`, under the same
/// rules as `loadSafetensorsIn`, at most 256 MiB.
#[napi]
pub fn read_checkpoint_file(dir: String, name: String, op: Option<String>) -> Result<Buffer> {
    let op = op.unwrap_or_else(|| "loadState".to_string());
    guarded(&op, || {
        Ok(checkpoint::read_inside(&op, Path::new(&dir), &name, checkpoint::JSON_LIMIT)?.into())
    })
}

/// Removes what interrupted saves of `dir` left beside it; returns the paths removed.
#[napi]
pub fn clean_staging(dir: String, op: Option<String>) -> Result<Vec<String>> {
    let op = op.unwrap_or_else(|| "loadState".to_string());
    guarded(&op, || {
        Ok(checkpoint::clean_staging(&op, Path::new(&dir))?
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect())
    })
}

/// Saves model weights into `dir`, sharded above `maxShardBytes`; returns the files written.
#[napi]
pub fn save_model(dir: String, names: Vec<String>, tensors: Vec<Tensor>, max_shard_bytes: f64) -> Result<Vec<String>> {
    guarded("saveModel", || {
        let max_shard_bytes = crate::int::judge(
            "saveModel",
            "maxShardSize",
            max_shard_bytes,
            1,
            crate::int::MAX_SAFE as i64,
        )?;
        checkpoint::save_model(
            Path::new(&dir),
            &named("saveModel", names, &tensors)?,
            max_shard_bytes as u64,
        )
    })
}

#[napi]
pub fn load_model(env: Env, dir: String) -> Result<NamedTensors> {
    guarded("loadModel", || {
        Ok(unzip(&env, checkpoint::load_model(Path::new(&dir))?))
    })
}

/// Writes a file through a temporary name renamed into place.
#[napi]
pub fn write_file_atomic(path: String, data: Either<String, Buffer>) -> Result<()> {
    guarded("writeFileAtomic", || {
        let bytes: &[u8] = match &data {
            Either::A(text) => text.as_bytes(),
            Either::B(buffer) => buffer,
        };
        checkpoint::write_atomically("writeFileAtomic", Path::new(&path), bytes)
    })
}

/// An empty directory beside `dir` to fill, then `commitStagingDir(staging, dir)`.
#[napi]
pub fn staging_dir(dir: String) -> Result<String> {
    guarded("saveState", || {
        Ok(checkpoint::staging_dir("saveState", Path::new(&dir))?
            .to_string_lossy()
            .into_owned())
    })
}

#[napi]
pub fn commit_staging_dir(staging: String, dir: String) -> Result<()> {
    guarded("saveState", || {
        checkpoint::commit_staging("saveState", Path::new(&staging), Path::new(&dir))
    })
}

/// The number of columns of an fp8 state (`fp8State`).
#[napi]
pub fn fp8_state_columns() -> i64 {
    shim::fp8_state_columns()
}

/// The fp8 amax histories of the Linear layer whose weight is `weight` (a float32
/// [3, fp8StateColumns()] tensor; empty when it never ran in fp8), for exact resumes.
#[napi]
pub fn fp8_state(env: Env, weight: Tensor) -> Result<Tensor> {
    guarded("fp8State", || {
        // Only the weight's identity is read: a parameter ZeRO stage 3 released is fine.
        Ok(wrap(&env, shim::fp8_state(&*weight.handle.peek("fp8State")?)?))
    })
}

#[napi]
pub fn set_fp8_state(weight: Tensor, state: Tensor) -> Result<()> {
    guarded("setFp8State", || {
        shim::set_fp8_state(&*weight.handle.peek("setFp8State")?, &*state.handle.get("setFp8State")?)
    })
}

/// The default CPU generator state (a uint8 tensor), for exact resumes.
#[napi]
pub fn cpu_rng_state(env: Env) -> Result<Tensor> {
    guarded("cpuRngState", || Ok(wrap(&env, shim::cpu_rng_state()?)))
}

#[napi]
pub fn set_cpu_rng_state(state: Tensor) -> Result<()> {
    guarded("setCpuRngState", || {
        shim::set_cpu_rng_state(&*state.handle.get("setCpuRngState")?)
    })
}

#[napi]
pub fn cuda_rng_state(env: Env, index: u32) -> Result<Tensor> {
    guarded("cudaRngState", || Ok(wrap(&env, shim::cuda_rng_state(index as usize)?)))
}

#[napi]
pub fn set_cuda_rng_state(index: u32, state: Tensor) -> Result<()> {
    guarded("setCudaRngState", || {
        shim::set_cuda_rng_state(index as usize, &*state.handle.get("setCudaRngState")?)
    })
}
