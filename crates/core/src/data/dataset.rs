//! A dataset of named tensors that share their first dimension: sample `i` is
//! row `i` of each, and a batch is gathered by indexing the big tensors once.

use crate::cuda::PendingCopy;
use crate::tensor::shapes;
use crate::{Error, Result};
use tch::{Device, Tensor};

pub struct TensorDataset {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    len: usize,
}

impl TensorDataset {
    /// Takes `(name, tensor)` pairs; all tensors need the same size along dim 0.
    pub fn new(op: &str, named: Vec<(String, Tensor)>) -> Result<TensorDataset> {
        if named.is_empty() {
            return Err(Error::invalid(op, "needs at least one tensor"));
        }
        if let Some((name, t)) = named.iter().find(|(_, t)| t.dim() == 0) {
            return Err(Error::invalid(
                op,
                format!("\"{name}\" is a 0-d tensor (shape {:?}); every tensor needs a first dimension to index samples along", t.size()),
            ));
        }
        let sizes: Vec<i64> = named.iter().map(|(_, t)| t.size()[0]).collect();
        if sizes.iter().any(|&s| s != sizes[0]) {
            let listed: Vec<String> = named
                .iter()
                .zip(&sizes)
                .map(|((name, _), size)| format!("\"{name}\" has {size}"))
                .collect();
            return Err(Error::invalid(
                op,
                format!("all tensors need the same size along dim 0, but {}", listed.join(", ")),
            ));
        }
        let (names, tensors) = named.into_iter().unzip();
        Ok(TensorDataset {
            names,
            tensors,
            len: sizes[0] as usize,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Another dataset over the same tensor storage (for a background thread).
    pub fn shallow_clone(&self) -> TensorDataset {
        TensorDataset {
            names: self.names.clone(),
            tensors: self.tensors.iter().map(Tensor::shallow_clone).collect(),
            len: self.len,
        }
    }

    /// Sample `index` (negative counts from the end): row `index` of each tensor, as views.
    pub fn get(&self, op: &str, index: i64) -> Result<Vec<Tensor>> {
        let len = self.len as i64;
        if index < -len || index >= len {
            return Err(Error::invalid(
                op,
                format!("index {index} is out of range for a dataset of {len} samples"),
            ));
        }
        self.tensors
            .iter()
            .map(|t| t.f_select(0, index).map_err(|e| Error::torch(op, shapes(&[t]), e)))
            .collect()
    }

    /// The rows `indices` of each tensor, in that order, moved to `device` if given.
    pub fn gather(&self, op: &str, indices: &[i64], device: Option<Device>) -> Result<Vec<Tensor>> {
        // Rows bound for a GPU are gathered into pinned host memory: the copy then runs
        // asynchronously, and this thread does not wait for the GPU's queued work.
        let pinned = matches!(device, Some(Device::Cuda(_)));
        self.rows(op, indices, pinned)?
            .into_iter()
            .map(|rows| {
                let moved = match device {
                    Some(d @ Device::Cuda(_)) if rows.device() == Device::Cpu => {
                        if rows.f_is_pinned(d).unwrap_or(false) {
                            rows.f_to_device_(d, rows.kind(), true, false)
                        } else {
                            rows.f_pin_memory(d)
                                .and_then(|p| p.f_to_device_(d, p.kind(), true, false))
                        }
                    }
                    Some(d) if d != rows.device() => rows.f_to_device(d),
                    _ => return Ok(rows),
                };
                moved.map_err(|e| Error::torch(op, shapes(&[&rows]), e))
            })
            .collect()
    }

    /// Like `gather`, but a copy to a GPU runs on a side stream (from pinned memory) and is
    /// returned pending: the consumer waits for it with `PendingCopy::wait` on its own stream.
    pub fn gather_async(
        &self,
        op: &str,
        indices: &[i64],
        device: Option<Device>,
    ) -> Result<(Vec<Tensor>, Option<PendingCopy>)> {
        let on_cpu = self.tensors.iter().all(|t| t.device() == Device::Cpu);
        if let (Some(Device::Cuda(index)), true) = (device, on_cpu) {
            let rows = self.rows(op, indices, true)?;
            if let Ok((copies, pending)) = crate::cuda::copy_async(&rows, index) {
                return Ok((copies, Some(pending)));
            }
        }
        Ok((self.gather(op, indices, device)?, None))
    }

    /// The rows `indices` of each tensor where it is, in pinned host memory if `pinned` and
    /// it can be. A contiguous tensor on the CPU is copied a row at a time on this thread;
    /// ATen's `index_select` would use its thread pool, whose idle workers spin on the cores
    /// the training loop needs while a background thread gathers batches.
    fn rows(&self, op: &str, indices: &[i64], pinned: bool) -> Result<Vec<Tensor>> {
        let len = self.len as i64;
        if let Some(bad) = indices.iter().find(|&&i| i < 0 || i >= len) {
            return Err(Error::invalid(
                op,
                format!("index {bad} is out of range for a dataset of {len} samples"),
            ));
        }
        self.tensors
            .iter()
            .map(|t| {
                let fail = |e| Error::torch(op, shapes(&[t]), e);
                if t.device() == Device::Cpu && t.is_contiguous() {
                    let mut shape = t.size();
                    shape[0] = indices.len() as i64;
                    let host = if pinned {
                        crate::cuda::empty_pinned(t, &shape).ok()
                    } else {
                        None
                    };
                    let rows = match host {
                        Some(host) => host,
                        None => Tensor::f_empty(shape.as_slice(), (t.kind(), Device::Cpu)).map_err(fail)?,
                    };
                    copy_rows(t, indices, &rows);
                    return Ok(rows);
                }
                let index = Tensor::f_from_slice(indices)
                    .and_then(|i| i.f_to_device(t.device()))
                    .map_err(fail)?;
                t.f_index_select(0, &index).map_err(fail)
            })
            .collect()
    }
}

/// Copies rows `indices` of `src` into `dst`, in order, one `memcpy` a row. `src` is a
/// contiguous CPU tensor, every index is in `0..len` (checked by the caller), and `dst` a fresh
/// contiguous CPU tensor of `indices.len()` such rows.
fn copy_rows(src: &Tensor, indices: &[i64], dst: &Tensor) {
    let len = src.size()[0];
    if len == 0 || indices.is_empty() {
        return;
    }
    let row = (src.numel() / len as usize) * src.kind().elt_size_in_bytes();
    let (from, to) = (src.data_ptr() as *const u8, dst.data_ptr() as *mut u8);
    for (k, &i) in indices.iter().enumerate() {
        // SAFETY: `src` is contiguous and holds `len` rows of `row` bytes from `from`, and
        // 0 <= i < len (checked by `rows`), so the source row lies inside it; `dst` was made for
        // this call with `indices.len()` rows of the same dtype and trailing shape, so row k
        // lies inside it; a fresh tensor shares no memory with `src`.
        unsafe { std::ptr::copy_nonoverlapping(from.add(i as usize * row), to.add(k * row), row) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(pairs: &[(&str, Tensor)]) -> Vec<(String, Tensor)> {
        pairs.iter().map(|(n, t)| (n.to_string(), t.shallow_clone())).collect()
    }

    #[test]
    fn gathers_rows_in_order() {
        let x = Tensor::arange(12, (tch::Kind::Float, Device::Cpu)).reshape([6, 2]);
        let y = Tensor::arange(6, (tch::Kind::Int64, Device::Cpu));
        let ds = TensorDataset::new("TensorDataset", named(&[("x", x), ("y", y)])).unwrap();
        assert_eq!(ds.len(), 6);
        let batch = ds.gather("DataLoader", &[4, 0, 5], None).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(batch[0].reshape([-1])).unwrap(),
            vec![8., 9., 0., 1., 10., 11.]
        );
        assert_eq!(Vec::<i64>::try_from(&batch[1]).unwrap(), vec![4, 0, 5]);
        let last = ds.get("get", -1).unwrap();
        assert_eq!(Vec::<f32>::try_from(&last[0]).unwrap(), vec![10., 11.]);
        assert!(ds.get("get", 6).is_err());
    }

    #[test]
    fn gathers_rows_of_strided_tensors_and_rejects_bad_indices() {
        // A transposed view is not contiguous: gathered by index_select, the same rows.
        let x = Tensor::arange(12, (tch::Kind::Float, Device::Cpu)).reshape([2, 6]).tr();
        let flags = Tensor::from_slice(&[true, false, true, true, false, false]);
        let ds = TensorDataset::new("TensorDataset", named(&[("x", x.shallow_clone()), ("flags", flags)])).unwrap();
        let batch = ds.gather("DataLoader", &[5, 0], None).unwrap();
        assert!(batch[0].equal(&x.index_select(0, &Tensor::from_slice(&[5i64, 0]))));
        assert_eq!(Vec::<bool>::try_from(&batch[1]).unwrap(), vec![false, true]);
        for bad in [6, -1] {
            let err = ds.gather("DataLoader", &[0, bad], None).err().unwrap().to_string();
            assert!(err.contains(&format!("index {bad} is out of range")), "{err}");
        }
    }

    #[test]
    fn mismatched_sizes_name_every_tensor() {
        let x = Tensor::zeros([5, 2], (tch::Kind::Float, Device::Cpu));
        let y = Tensor::zeros([4], (tch::Kind::Float, Device::Cpu));
        let err = TensorDataset::new("TensorDataset", named(&[("x", x), ("y", y)]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"x\" has 5") && err.contains("\"y\" has 4"), "{err}");
    }
}
