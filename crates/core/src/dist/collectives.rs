//! Collectives on tensors of any device (Gloo works on CPU copies), with the
//! shapes checked across processes first so a mismatch fails everywhere instead of hanging.

use super::group::with_group;
use crate::shim::check;
use crate::{dtype, Error, Result};
use std::ffi::c_void;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn acc_allreduce(group: *mut c_void, tensor: *const C_tensor, op: i32) -> i32;
    fn acc_broadcast(group: *mut c_void, tensor: *const C_tensor, root: i32) -> i32;
    fn acc_allgather_into(group: *mut c_void, output: *const C_tensor, input: *const C_tensor) -> i32;
    fn acc_reduce_scatter_into(group: *mut c_void, output: *const C_tensor, input: *const C_tensor, op: i32) -> i32;
    fn acc_barrier(group: *mut c_void) -> i32;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum = 0,
    Mean = 1,
    Min = 3,
    Max = 4,
}

/// The device collective buffers live on: the CPU for Gloo, the group's GPU for NCCL.
pub(crate) fn group_device(op: &str) -> Result<Device> {
    with_group(op, |g| Ok(g.device))
}

/// A contiguous tensor with `t`'s values on the group's device (a copy unless it already is one).
fn host(op: &str, t: &Tensor) -> Result<Tensor> {
    let device = group_device(op)?;
    let moved = if t.device() == device {
        t.shallow_clone()
    } else {
        t.f_to_device(device).map_err(Error::on(op, t))?
    };
    moved.f_contiguous().map_err(Error::on(op, t))
}

/// Copies `t` to the CPU (collective results are read on the host).
fn to_cpu(op: &str, t: Tensor) -> Result<Tensor> {
    t.f_to_device(Device::Cpu).map_err(|e| Error::torch(op, vec![], e))
}

/// Sums (or means, mins, maxes) `t` across processes; returns a new tensor on `t`'s device.
pub fn all_reduce(op: &str, t: &Tensor, how: Reduce) -> Result<Tensor> {
    let buffer = host(op, t)?.f_detach_copy().map_err(Error::on(op, t))?;
    let buffer = if how == Reduce::Mean && !dtype::is_floating(buffer.kind()) {
        return Err(Error::invalid(
            op,
            format!("\"mean\" needs a floating-point tensor, got {}", dtype::name(t.kind())),
        ));
    } else {
        buffer
    };
    with_group(op, |g| {
        // SAFETY: the group and tensor outlive the blocking call.
        check(op, unsafe { acc_allreduce(g.raw, buffer.as_ptr(), how as i32) })
    })?;
    buffer.f_to_device(t.device()).map_err(Error::on(op, t))
}

/// Overwrites `t` with process `root`'s values.
pub fn broadcast_(op: &str, t: &mut Tensor, root: usize) -> Result<()> {
    let buffer = host(op, t)?;
    with_group(op, |g| {
        if root >= g.world_size {
            return Err(Error::invalid(
                op,
                format!("root {root} is not below world size {}", g.world_size),
            ));
        }
        // SAFETY: the group and tensor outlive the blocking call.
        check(op, unsafe { acc_broadcast(g.raw, buffer.as_ptr(), root as i32) })
    })?;
    if t.device() != buffer.device() || !t.is_contiguous() {
        let _guard = tch::no_grad_guard();
        t.f_copy_(&buffer).map_err(|e| Error::torch(op, vec![], e))?;
    }
    Ok(())
}

const MAX_DIMS: usize = 16;

/// Every process's (dtype code, shape) of `t`, in rank order.
fn shapes_of_all(op: &str, t: &Tensor) -> Result<Vec<(i64, Vec<i64>)>> {
    let size = t.size();
    if size.len() > MAX_DIMS {
        return Err(Error::invalid(
            op,
            format!("supports at most {MAX_DIMS} dimensions, got {}", size.len()),
        ));
    }
    let mut code = vec![-1i64; MAX_DIMS + 2];
    code[0] = size.len() as i64;
    code[1] = t.kind() as i64;
    code[2..2 + size.len()].copy_from_slice(&size);
    let device = group_device(op)?;
    let mine = Tensor::f_from_slice(&code)
        .map_err(|e| Error::torch(op, vec![], e))?
        .f_to_device(device)
        .map_err(Error::on(op, t))?;
    let world = with_group(op, |g| Ok(g.world_size))?;
    let all = Tensor::f_empty([(world * code.len()) as i64], (Kind::Int64, device)).map_err(Error::on(op, t))?;
    with_group(op, |g| {
        // SAFETY: the group and tensors outlive the blocking call.
        check(op, unsafe { acc_allgather_into(g.raw, all.as_ptr(), mine.as_ptr()) })
    })?;
    let all = to_cpu(op, all)?;
    let mut flat = vec![0i64; all.numel()];
    all.f_copy_data(&mut flat, all.numel()).map_err(Error::on(op, &all))?;
    Ok(flat
        .chunks(code.len())
        .map(|c| (c[1], c[2..2 + c[0].max(0) as usize].to_vec()))
        .collect())
}

/// Concatenates every process's `t` along dim 0 (a 0-d tensor counts as one element).
/// Different shapes or dtypes across processes fail on every process with all of them named.
pub fn all_gather(op: &str, t: &Tensor) -> Result<Tensor> {
    let t = if t.dim() == 0 {
        t.f_reshape([1]).map_err(Error::on(op, t))?
    } else {
        t.shallow_clone()
    };
    let all = shapes_of_all(op, &t)?;
    let (kind, size) = (t.kind(), t.size());
    if all.iter().any(|(k, s)| *k != kind as i64 || *s != size) {
        let listed: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(r, (_, s))| format!("rank {r} {s:?}"))
            .collect();
        return Err(Error::invalid(
            op,
            format!(
                "tensors differ across processes ({}); every process must pass the same shape and dtype (padAcrossProcesses pads them)",
                listed.join(", ")
            ),
        ));
    }
    let input = host(op, &t)?;
    let mut out_size = size.clone();
    out_size[0] *= all.len() as i64;
    let output = Tensor::f_empty(out_size.as_slice(), (kind, input.device())).map_err(Error::on(op, &t))?;
    with_group(op, |g| {
        // SAFETY: the group and tensors outlive the blocking call.
        check(op, unsafe {
            acc_allgather_into(g.raw, output.as_ptr(), input.as_ptr())
        })
    })?;
    output.f_to_device(t.device()).map_err(Error::on(op, &t))
}

/// Fills `output` (this process's slice) with the reduction across processes of its slice of
/// `input` (world size × `output`'s length, rank-major). Both contiguous, on the group's device.
pub fn reduce_scatter_into(op: &str, output: &Tensor, input: &Tensor, how: Reduce) -> Result<()> {
    with_group(op, |g| {
        if input.numel() != output.numel() * g.world_size {
            return Err(Error::invalid(
                op,
                format!(
                    "reduce-scatter input has {} elements, expected {} × {}",
                    input.numel(),
                    g.world_size,
                    output.numel()
                ),
            ));
        }
        // SAFETY: the group and tensors outlive the blocking call.
        check(op, unsafe {
            acc_reduce_scatter_into(g.raw, output.as_ptr(), input.as_ptr(), how as i32)
        })
    })
}

/// Fills `output` (world size × `input`'s length) with every process's `input`, rank-major.
pub fn all_gather_into(op: &str, output: &Tensor, input: &Tensor) -> Result<()> {
    with_group(op, |g| {
        if output.numel() != input.numel() * g.world_size {
            return Err(Error::invalid(
                op,
                format!(
                    "all-gather output has {} elements, expected {} × {}",
                    output.numel(),
                    g.world_size,
                    input.numel()
                ),
            ));
        }
        // SAFETY: the group and tensors outlive the blocking call.
        check(op, unsafe {
            acc_allgather_into(g.raw, output.as_ptr(), input.as_ptr())
        })
    })
}

/// Every process's bytes, in rank order (lengths may differ).
pub fn all_gather_bytes(op: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let length = Tensor::f_from_slice(&[bytes.len() as i64]).map_err(|e| Error::torch(op, vec![], e))?;
    let lengths = to_cpu(op, all_gather(op, &length)?)?;
    let count = lengths.numel();
    let mut sizes = vec![0i64; count];
    lengths
        .f_copy_data(&mut sizes, count)
        .map_err(Error::on(op, &lengths))?;
    let longest = sizes.iter().copied().max().unwrap_or(0).max(1);
    let mut padded = bytes.to_vec();
    padded.resize(longest as usize, 0);
    let gathered = to_cpu(
        op,
        all_gather(
            op,
            &Tensor::f_from_slice(&padded).map_err(|e| Error::torch(op, vec![], e))?,
        )?,
    )?;
    let count = gathered.numel();
    let mut flat = vec![0u8; count];
    gathered
        .f_copy_data(&mut flat, count)
        .map_err(Error::on(op, &gathered))?;
    Ok(flat
        .chunks(longest as usize)
        .zip(sizes)
        .map(|(chunk, n)| chunk[..n as usize].to_vec())
        .collect())
}

/// Waits until every process reaches this point.
pub fn barrier(op: &str) -> Result<()> {
    // SAFETY: the group outlives the blocking call.
    with_group(op, |g| check(op, unsafe { acc_barrier(g.raw) }))
}
