//! ZeRO stage 3: parameters partitioned too (the C++ sharder in shim/zero3.cpp gathers them
//! per module and reduce-scatters their gradients during backward), and the optimizer that
//! updates this process's shards. With CPU offload of the optimizer, the update runs on a
//! host copy of each shard (the shard itself when the parameters are offloaded too), with the
//! optimizer state on the host.

use super::collectives::all_gather_into;
use super::collectives::{all_reduce, Reduce};
use super::group::{is_initialized, with_group};
use super::zero::{bytes, fail};
use crate::optim::{AmpInputs, Optimizer, ParamState, Slot};
use crate::shim::{check, owned};
use crate::{Error, Result};
use std::ffi::c_void;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn acc_zero3_new(
        group: *mut c_void,
        params: *const *const C_tensor,
        count: i32,
        unit_params: *const i64,
        unit_sizes: *const i64,
        unit_count: i32,
        persist_below: i64,
        prefetch_bytes: i64,
        offload: i32,
        out: *mut *mut c_void,
    ) -> i32;
    fn acc_zero3_gather_unit(sharder: *mut c_void, unit: i32) -> i32;
    fn acc_zero3_prefetch_hits(sharder: *mut c_void) -> i64;
    fn acc_zero3_gather(sharder: *mut c_void, idx: *const i64, count: i32) -> i32;
    fn acc_zero3_release(sharder: *mut c_void, idx: *const i64, count: i32) -> i32;
    fn acc_zero3_add_to_unit(sharder: *mut c_void, unit: i32, idx: *const i64, count: i32) -> i32;
    fn acc_zero3_hook_outputs(sharder: *mut c_void, unit: i32, outputs: *const *const C_tensor, count: i32) -> i32;
    fn acc_zero3_settle(sharder: *mut c_void) -> i32;
    fn acc_zero3_aliases_unit(sharder: *mut c_void, unit: i32, t: *const C_tensor, out: *mut i32) -> i32;
    fn acc_zero3_index_of(sharder: *mut c_void, param: *const C_tensor, out: *mut i64) -> i32;
    fn acc_zero3_count(sharder: *mut c_void) -> i32;
    fn acc_zero3_tensor(sharder: *mut c_void, index: i64, which: i32, out: *mut *mut C_tensor) -> i32;
    fn acc_zero3_clear_grads(sharder: *mut c_void, idx: *const i64, count: i32) -> i32;
    fn acc_zero3_refresh_persistent(sharder: *mut c_void) -> i32;
    fn acc_zero3_load(sharder: *mut c_void, index: i64, source: *const C_tensor) -> i32;
    fn acc_zero3_bytes(sharder: *mut c_void, device: *mut i64, host: *mut i64) -> i32;
    fn acc_zero3_unshard(sharder: *mut c_void) -> i32;
    fn acc_zero3_free(sharder: *mut c_void);
}

/// Bytes on the device and on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    pub device: i64,
    pub host: i64,
}

impl Placement {
    pub(super) fn add(&mut self, t: &Tensor) {
        if !t.defined() {
            return;
        }
        if t.device() == Device::Cpu {
            self.host += bytes(t);
        } else {
            self.device += bytes(t);
        }
    }
}

fn ints(op: &str, idx: &[usize]) -> Result<Vec<i64>> {
    idx.iter()
        .map(|&i| i64::try_from(i).map_err(|_| Error::invalid(op, "parameter index out of range")))
        .collect()
}

fn count(op: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::invalid(op, format!("{n} tensors are more than ZeRO stage 3 takes at once")))
}

/// One model's parameters, sharded across the process group.
pub struct Sharder {
    raw: *mut c_void,
}

/// Which of a parameter's tensors [`Sharder::tensor`] returns.
#[derive(Debug, Clone, Copy)]
pub enum Held {
    Shard = 0,
    ShardGrad = 1,
    Full = 2,
}

impl Sharder {
    /// Shards `params` (identical on every process). `units` lists, per module, the indices of
    /// the parameters it uses; parameters with fewer than `persist_below` elements stay whole;
    /// gathering a unit starts gathering about `prefetch_bytes` of the units that followed it
    /// in the first step; `offload` keeps the shards in (pinned) host memory.
    pub fn new(
        params: &[Tensor],
        units: &[Vec<usize>],
        persist_below: i64,
        prefetch_bytes: i64,
        offload: bool,
    ) -> Result<Sharder> {
        let op = "prepare (ZeRO stage 3)";
        let ptrs: Vec<*const C_tensor> = params.iter().map(Tensor::as_ptr).collect();
        let mut flat = Vec::new();
        let mut sizes = Vec::with_capacity(units.len());
        for unit in units {
            if let Some(&bad) = unit.iter().find(|&&i| i >= params.len()) {
                return Err(Error::invalid(
                    op,
                    format!("unit parameter {bad} of {} parameters", params.len()),
                ));
            }
            flat.extend(ints(op, unit)?);
            sizes.push(unit.len() as i64);
        }
        let mut raw = std::ptr::null_mut();
        let mut create = |group: *mut c_void| {
            // SAFETY: the group (or null, on one process), tensors and index arrays are live for
            // the call; the sharder keeps its own references to the tensors and the group's parts.
            check(op, unsafe {
                acc_zero3_new(
                    group,
                    ptrs.as_ptr(),
                    count(op, ptrs.len())?,
                    flat.as_ptr(),
                    sizes.as_ptr(),
                    count(op, sizes.len())?,
                    persist_below,
                    prefetch_bytes,
                    i32::from(offload),
                    &mut raw,
                )
            })
        };
        if is_initialized() {
            with_group(op, |g| create(g.raw))?;
        } else {
            create(std::ptr::null_mut())?;
        }
        Ok(Sharder { raw })
    }

    /// Gathers `unit` before its module's forward, and prefetches the units that follow it.
    pub fn gather_unit(&self, op: &str, unit: usize) -> Result<()> {
        // SAFETY: `raw` is live until drop.
        check(op, unsafe { acc_zero3_gather_unit(self.raw, count(op, unit)?) })
    }

    /// How many unit gathers found their unit already prefetched.
    pub fn prefetch_hits(&self) -> i64 {
        // SAFETY: `raw` is live until drop; the call cannot throw.
        unsafe { acc_zero3_prefetch_hits(self.raw) }
    }

    /// Gathers the parameters `idx` into their full storage (a state read, a tied weight).
    pub fn gather(&self, op: &str, idx: &[usize]) -> Result<()> {
        let idx = ints(op, idx)?;
        // SAFETY: `raw` is live until drop; `idx` for the call.
        check(op, unsafe {
            acc_zero3_gather(self.raw, idx.as_ptr(), count(op, idx.len())?)
        })
    }

    /// Releases one gather of the parameters `idx`; the last frees their storage.
    pub fn release(&self, op: &str, idx: &[usize]) -> Result<()> {
        let idx = ints(op, idx)?;
        // SAFETY: as in `gather`.
        check(op, unsafe {
            acc_zero3_release(self.raw, idx.as_ptr(), count(op, idx.len())?)
        })
    }

    /// Adds parameters another module owns (tied weights) to `unit`'s backward gathers.
    pub fn add_to_unit(&self, op: &str, unit: usize, idx: &[usize]) -> Result<()> {
        let idx = ints(op, idx)?;
        // SAFETY: as in `gather`.
        check(op, unsafe {
            acc_zero3_add_to_unit(self.raw, count(op, unit)?, idx.as_ptr(), count(op, idx.len())?)
        })
    }

    /// Hooks `unit`'s forward outputs, so that backward gathers the unit before it needs it.
    pub fn hook_outputs(&self, op: &str, unit: usize, outputs: &[&Tensor]) -> Result<()> {
        let ptrs: Vec<*const C_tensor> = outputs.iter().map(|t| t.as_ptr()).collect();
        // SAFETY: `raw` is live; the tensors are live for the call (the hooks keep no reference to them).
        check(op, unsafe {
            acc_zero3_hook_outputs(self.raw, count(op, unit)?, ptrs.as_ptr(), count(op, ptrs.len())?)
        })
    }

    /// Whether `t` shares storage with one of `unit`'s parameters.
    pub fn aliases_unit(&self, op: &str, unit: usize, t: &Tensor) -> Result<bool> {
        let mut out = 0;
        // SAFETY: `raw` and `t` are live for the call; `out` is a plain integer.
        check(op, unsafe {
            acc_zero3_aliases_unit(self.raw, count(op, unit)?, t.as_ptr(), &mut out)
        })?;
        Ok(out != 0)
    }

    /// After backward: reduces what is left and releases what backward still holds.
    pub fn settle(&self, op: &str) -> Result<()> {
        // SAFETY: `raw` is live until drop.
        check(op, unsafe { acc_zero3_settle(self.raw) })
    }

    pub fn len(&self) -> usize {
        // SAFETY: `raw` is live until drop; the call cannot throw.
        unsafe { acc_zero3_count(self.raw) }.max(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of `param` among the sharded parameters.
    pub fn index_of(&self, op: &str, param: &Tensor) -> Result<Option<usize>> {
        let mut index = -1i64;
        // SAFETY: `raw` and `param` are live for the call.
        check(op, unsafe { acc_zero3_index_of(self.raw, param.as_ptr(), &mut index) })?;
        Ok(usize::try_from(index).ok())
    }

    /// Parameter `index`'s shard, shard gradient (undefined when none) or full tensor; shares storage.
    pub fn tensor(&self, op: &str, index: usize, which: Held) -> Result<Tensor> {
        let mut out = std::ptr::null_mut();
        // SAFETY: `raw` is live; the shim allocates a fresh at::Tensor that `owned` takes.
        let status = unsafe { acc_zero3_tensor(self.raw, index as i64, which as i32, &mut out) };
        owned(op, status, out)
    }

    /// Drops the shard gradients of the parameters `idx`.
    pub fn clear_grads(&self, op: &str, idx: &[usize]) -> Result<()> {
        let idx = ints(op, idx)?;
        // SAFETY: `raw` is live until drop; `idx` for the call.
        check(op, unsafe {
            acc_zero3_clear_grads(self.raw, idx.as_ptr(), count(op, idx.len())?)
        })
    }

    /// The shard gradients of the parameters `idx` that have one (after backward settled).
    pub fn gradients(&self, op: &str, idx: &[usize]) -> Result<Vec<Tensor>> {
        self.settle(op)?;
        let mut grads = Vec::new();
        for &i in idx {
            let g = self.tensor(op, i, Held::ShardGrad)?;
            if g.defined() {
                grads.push(g);
            }
        }
        Ok(grads)
    }

    /// After the shards changed: the parameters that stay whole (or are gathered now) follow them.
    pub fn refresh_persistent(&self, op: &str) -> Result<()> {
        // SAFETY: `raw` is live until drop.
        check(op, unsafe { acc_zero3_refresh_persistent(self.raw) })
    }

    /// Loads parameter `index` from a whole value: the shard takes its slice (nothing is gathered).
    pub fn load(&self, op: &str, index: usize, source: &Tensor) -> Result<()> {
        // SAFETY: `raw` and `source` are live for the call.
        check(op, unsafe { acc_zero3_load(self.raw, index as i64, source.as_ptr()) })
    }

    /// Bytes of parameter storage held now (full parameters gathered, and shards).
    pub fn parameter_bytes(&self, op: &str) -> Result<Placement> {
        let mut placement = Placement::default();
        // SAFETY: `raw` is live; the outputs are plain integers.
        check(op, unsafe {
            acc_zero3_bytes(self.raw, &mut placement.device, &mut placement.host)
        })?;
        Ok(placement)
    }

    /// Bytes of shard gradients held now (between backward and the optimizer step).
    pub fn gradient_bytes(&self, op: &str) -> Result<Placement> {
        let mut placement = Placement::default();
        for i in 0..self.len() {
            placement.add(&self.tensor(op, i, Held::ShardGrad)?);
        }
        Ok(placement)
    }

    /// Gathers every parameter for good (the model is whole again) and removes the hooks.
    pub fn unshard(&self, op: &str) -> Result<()> {
        // SAFETY: `raw` is live until drop.
        check(op, unsafe { acc_zero3_unshard(self.raw) })
    }
}

impl Drop for Sharder {
    fn drop(&mut self) {
        // SAFETY: `raw` came from acc_zero3_new and is freed once.
        unsafe { acc_zero3_free(self.raw) }
    }
}

/// One parameter of the optimizer: its shard, where the update runs, and its state.
struct Entry {
    index: usize,
    shard: Tensor,
    /// The shard itself, or its host copy when the optimizer is offloaded and the shard is not.
    master: Tensor,
    state: ParamState,
}

impl Entry {
    fn separate_master(&self) -> bool {
        self.master.device() != self.shard.device()
    }
}

/// An optimizer over sharded parameters: each process updates its shards.
pub struct Zero3Optimizer {
    sharder: Rc<Sharder>,
    groups: Vec<Vec<Entry>>,
}

impl Zero3Optimizer {
    /// Takes over `optimizer`'s parameters, which `sharder` must shard; `offload` runs the
    /// update and keeps the state on the host.
    pub fn new(optimizer: &Optimizer, sharder: Rc<Sharder>, offload: bool) -> Result<Zero3Optimizer> {
        let op = format!("{} (ZeRO stage 3)", optimizer.name());
        let mut groups = Vec::new();
        for group in optimizer.groups() {
            let mut entries = Vec::new();
            for p in &group.params {
                let index = sharder.index_of(&op, p)?.ok_or_else(|| {
                    Error::invalid(
                        &op,
                        "the optimizer holds a parameter of no prepared model; prepare the model with its optimizer",
                    )
                })?;
                let shard = sharder.tensor(&op, index, Held::Shard)?;
                let master = if offload && shard.device() != Device::Cpu {
                    shard.f_to_device(Device::Cpu).map_err(fail(&op))?
                } else {
                    shard.shallow_clone()
                };
                entries.push(Entry {
                    index,
                    shard,
                    master,
                    state: ParamState::new(),
                });
            }
            groups.push(entries);
        }
        Ok(Zero3Optimizer { sharder, groups })
    }

    /// The sharder's indices of this optimizer's parameters.
    pub fn indices(&self) -> Vec<usize> {
        self.groups.iter().flatten().map(|e| e.index).collect()
    }

    /// Updates this process's shards with `optimizer`'s hyperparameters, drops the shard
    /// gradients, and refreshes the parameters that stay whole.
    pub fn step(&mut self, optimizer: &Optimizer, amp: AmpInputs) -> Result<()> {
        let op = format!("{}.step (ZeRO stage 3)", optimizer.name());
        self.sharder.settle(&op)?;
        for (entries, group) in self.groups.iter_mut().zip(optimizer.groups()) {
            let mut slots = Vec::with_capacity(entries.len());
            for entry in entries.iter_mut() {
                let grad = self.sharder.tensor(&op, entry.index, Held::ShardGrad)?;
                if !grad.defined() {
                    continue;
                }
                let grad = grad.f_to_device(entry.master.device()).map_err(fail(&op))?;
                slots.push(Slot {
                    param: &entry.master,
                    grad,
                    state: &mut entry.state,
                });
            }
            crate::optim::apply_update(&op, optimizer.algorithm(), &group.hyper, &mut slots, amp)?;
            for entry in entries.iter().filter(|e| e.separate_master()) {
                let mut shard = entry.shard.shallow_clone();
                shard.f_copy_(&entry.master).map_err(fail(&op))?;
            }
        }
        self.sharder.clear_grads(&op, &self.indices())?;
        self.sharder.refresh_persistent(&op)
    }

    /// Gathers the whole per-parameter state into `optimizer` (as an unsharded optimizer holds
    /// it), for a state dict; every process must call it. `release_state` drops it again.
    pub fn consolidate_state(&self, optimizer: &mut Optimizer) -> Result<()> {
        let op = format!("{}.stateDict (ZeRO stage 3)", optimizer.name());
        let world = super::group::world().1 as i64;
        for (index, entry) in self.groups.iter().flatten().enumerate() {
            let full = self.sharder.tensor(&op, entry.index, Held::Full)?;
            let (numel, shape) = (full.numel() as i64, full.size());
            let mut state = ParamState::new();
            for (name, t) in &entry.state {
                let whole = if t.dim() == 0 {
                    t.f_detach_copy().map_err(fail(&op))?
                } else {
                    // Gathered where the parameters live (the process group's device).
                    let shard = t.f_to_device(full.device()).map_err(fail(&op))?;
                    let gathered = if world == 1 {
                        shard
                    } else {
                        let gathered = shard
                            .f_new_empty([shard.numel() as i64 * world], (shard.kind(), shard.device()))
                            .map_err(fail(&op))?;
                        all_gather_into(&op, &gathered, &shard)?;
                        gathered
                    };
                    // Back where the state lives (the host, when the optimizer is offloaded).
                    gathered
                        .f_narrow(0, 0, numel)
                        .and_then(|x| x.f_view(shape.as_slice()))
                        .and_then(|x| x.f_to_device(t.device()))
                        .map_err(fail(&op))?
                };
                state.insert(name.clone(), whole);
            }
            optimizer.set_param_state(index, state);
        }
        Ok(())
    }

    /// Empties `optimizer`'s per-parameter state (after `consolidate_state`).
    pub fn release_state(&self, optimizer: &mut Optimizer) {
        super::zero::release_state(optimizer);
    }

    /// Takes this process's slices of the whole state `optimizer` just loaded (saved on any
    /// number of processes), and empties `optimizer`'s.
    pub fn take_state(&mut self, optimizer: &mut Optimizer) -> Result<()> {
        let op = format!("{}.loadStateDict (ZeRO stage 3)", optimizer.name());
        let (rank, world) = super::group::world();
        for (index, entry) in self.groups.iter_mut().flatten().enumerate() {
            let whole = optimizer.take_param_state(index);
            let len = entry.shard.numel() as i64;
            let mut mine = ParamState::new();
            for (name, t) in whole {
                let t = if t.dim() == 0 {
                    t.f_detach_copy()
                } else {
                    let flat = t.f_reshape([-1]).map_err(fail(&op))?;
                    let pad = len * world as i64 - flat.numel() as i64;
                    flat.f_constant_pad_nd([0, pad])
                        .and_then(|x| x.f_narrow(0, rank as i64 * len, len))
                        .and_then(|x| x.f_to_device(entry.master.device()))
                        .and_then(|x| x.f_detach_copy())
                }
                .map_err(fail(&op))?;
                mine.insert(name, t);
            }
            entry.state = mine;
        }
        Ok(())
    }

    /// After the shards were written (a checkpoint load): host masters copy them.
    pub fn refresh_masters(&mut self) -> Result<()> {
        let op = "loadState (ZeRO stage 3)";
        for entry in self.groups.iter_mut().flatten().filter(|e| e.separate_master()) {
            let mut master = entry.master.shallow_clone();
            master.f_copy_(&entry.shard).map_err(fail(op))?;
        }
        Ok(())
    }

    /// Bytes of optimizer state (moments, and host masters when separate) this process holds.
    pub fn state_bytes(&self) -> Placement {
        let mut placement = Placement::default();
        for entry in self.groups.iter().flatten() {
            if entry.separate_master() {
                placement.add(&entry.master);
            }
            for t in entry.state.values() {
                placement.add(t);
            }
        }
        placement
    }
}

/// The total `norm_type` norm of gradients sharded across processes (each process holds
/// `grads`, its slices), and, when it exceeds `max_norm`, scales them down to it in place.
/// Returns the norm before. Every process must call it.
pub fn clip_sharded_grad_norm(op: &str, grads: &[Tensor], max_norm: f64, norm_type: f64) -> Result<f64> {
    let Some(first) = grads.first() else {
        return Ok(0.0);
    };
    let infinite = norm_type.is_infinite();
    let mut local = Tensor::f_zeros([], (Kind::Double, first.device())).map_err(fail(op))?;
    for g in grads {
        let g = g.f_to_kind(Kind::Double).map_err(fail(op))?;
        let part = if infinite {
            g.f_abs().and_then(|a| a.f_max()).map_err(fail(op))?
        } else {
            g.f_abs()
                .and_then(|a| a.f_pow_tensor_scalar(norm_type))
                .and_then(|a| a.f_sum(Kind::Double))
                .map_err(fail(op))?
        };
        let part = part.f_to_device(local.device()).map_err(fail(op))?;
        local = if infinite {
            local.f_maximum(&part)
        } else {
            local.f_add(&part)
        }
        .map_err(fail(op))?;
    }
    let total = if super::group::is_initialized() {
        all_reduce(op, &local, if infinite { Reduce::Max } else { Reduce::Sum })?
    } else {
        local
    };
    let total = total.f_double_value(&[]).map_err(fail(op))?;
    let total = if infinite { total } else { total.powf(1.0 / norm_type) };
    let coefficient = max_norm / (total + 1e-6);
    if coefficient < 1.0 {
        for g in grads {
            let mut g = g.shallow_clone();
            let _scaled = g.f_mul_scalar_(coefficient).map_err(fail(op))?;
        }
    }
    Ok(total)
}
