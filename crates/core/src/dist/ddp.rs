//! Data-parallel training: the same starting parameters everywhere, and gradients
//! averaged across processes in buckets (one all-reduce per bucket, not per tensor).

use super::collectives::{allreduce_in_place, broadcast_, Reduce};
use crate::shim;
use crate::tensor::shapes;
use crate::{dtype, Error, Result};
use tch::{Kind, Tensor};

/// Copies process 0's parameter values to every process.
pub fn broadcast_parameters(params: &[Tensor]) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for p in params {
        let mut target = p.shallow_clone();
        broadcast_("prepare", &mut target, 0)?;
    }
    Ok(())
}

/// Averages the gradients of `params` across processes, in buckets of about
/// `bucket_bytes` per dtype; parameters without a gradient contribute zeros.
pub fn allreduce_gradients(params: &[Tensor], bucket_bytes: usize) -> Result<()> {
    let op = "backward";
    let _guard = tch::no_grad_guard();
    let fail = |t: &Tensor| {
        let shape = shapes(&[t]);
        move |e| Error::torch(op, shape.clone(), e)
    };
    let mut grads = Vec::with_capacity(params.len());
    for p in params.iter().filter(|p| p.requires_grad()) {
        let mut g = p.f_grad().map_err(fail(p))?;
        if !g.defined() {
            g = p.f_zeros_like().map_err(fail(p))?;
            shim::set_grad(p, &g)?;
        }
        grads.push(g);
    }
    let mut kinds: Vec<Kind> = grads.iter().map(Tensor::kind).collect();
    kinds.dedup();
    for kind in kinds {
        let mut bucket: Vec<&Tensor> = Vec::new();
        let mut bytes = 0;
        for g in grads.iter().filter(|g| g.kind() == kind) {
            bucket.push(g);
            bytes += g.numel() * dtype::element_size(kind);
            if bytes >= bucket_bytes {
                reduce_bucket(&bucket)?;
                bucket.clear();
                bytes = 0;
            }
        }
        if !bucket.is_empty() {
            reduce_bucket(&bucket)?;
        }
    }
    Ok(())
}

/// One flat buffer for the bucket (on the group's device), averaged, then copied back into each gradient.
fn reduce_bucket(bucket: &[&Tensor]) -> Result<()> {
    let op = "backward";
    let torch = |e| Error::torch(op, vec![], e);
    let device = super::collectives::group_device(op)?;
    let flat: Vec<Tensor> = bucket
        .iter()
        .map(|g| g.f_reshape([-1]))
        .collect::<std::result::Result<_, _>>()
        .map_err(torch)?;
    let buffer = Tensor::f_cat(&flat, 0)
        .map_err(torch)?
        .f_to_device(device)
        .map_err(torch)?;
    allreduce_in_place(op, &[&buffer], Reduce::Mean)?;
    let mut offset = 0;
    for g in bucket {
        let n = g.numel() as i64;
        let piece = buffer
            .f_narrow(0, offset, n)
            .map_err(torch)?
            .f_view(g.size().as_slice())
            .map_err(torch)?;
        let mut target = g.shallow_clone();
        target.f_copy_(&piece).map_err(torch)?;
        offset += n;
    }
    Ok(())
}
