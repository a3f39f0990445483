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
        let index = Tensor::f_from_slice(indices).map_err(|e| Error::torch(op, vec![], e))?;
        self.tensors
            .iter()
            .map(|t| {
                let fail = |e| Error::torch(op, shapes(&[t]), e);
                let index = if index.device() == t.device() {
                    index.shallow_clone()
                } else {
                    index.f_to_device(t.device()).map_err(fail)?
                };
                let rows = t.f_index_select(0, &index).map_err(fail)?;
                match device {
                    // Pinned host memory lets the copy run asynchronously: this thread does not
                    // wait for the GPU's queued work, so the training loop keeps running ahead.
                    Some(d @ Device::Cuda(_)) if rows.device() == Device::Cpu => rows
                        .f_pin_memory(d)
                        .and_then(|pinned| pinned.f_to_device_(d, pinned.kind(), true, false))
                        .map_err(fail),
                    Some(d) if d != rows.device() => rows.f_to_device(d).map_err(fail),
                    _ => Ok(rows),
                }
            })
            .collect()
    }
}

impl TensorDataset {
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
            let rows = self.gather(op, indices, None)?;
            if let Ok((copies, pending)) = crate::cuda::copy_async(&rows, index) {
                return Ok((copies, Some(pending)));
            }
        }
        Ok((self.gather(op, indices, device)?, None))
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
