//! ZeRO stage 1 (Rajbhandari et al., 2020) for one optimizer. Each param group's parameters
//! are laid end to end in one flat buffer, padded to a multiple of the world size; this
//! process owns one contiguous partition of it, keeps the optimizer state for that partition
//! only (and a copy of its parameters, the master partition), updates it from its slice of the
//! gradients data parallelism averaged, and all-gathers the updated partitions back into every
//! parameter. The optimizer itself keeps the hyperparameters (schedulers change them there);
//! its per-parameter state stays empty except while a checkpoint is written or read. Stages 2
//! and 3 shard per parameter instead (zero3.rs), so that gradients can be reduce-scattered
//! during backward.

use super::collectives::all_gather_into;
use super::group::world;
use super::zero3::Placement;
use crate::optim::{AmpInputs, Optimizer, ParamState, Slot};
use crate::{Error, Result};
use tch::{Device, Tensor};

/// One param group's flat layout and this process's partition of it.
struct Partition {
    params: Vec<Tensor>,
    /// Where each parameter starts in the flat buffer.
    offsets: Vec<i64>,
    /// The flat buffer's length, a multiple of the world size.
    padded: i64,
    /// This process's slice of the parameters (the master copy the update runs on; on the
    /// host when the optimizer is offloaded).
    master: Tensor,
    /// Where the master copy and the optimizer state live.
    home: Device,
    state: ParamState,
}

pub struct ZeroOptimizer {
    rank: i64,
    partitions: Vec<Partition>,
}

pub(super) fn bytes(t: &Tensor) -> i64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as i64
}

pub(super) fn fail(op: &str) -> impl Fn(tch::TchError) -> Error + '_ {
    move |e| Error::torch(op, vec![], e)
}

impl Partition {
    fn new(op: &str, params: &[Tensor], rank: i64, world: i64, offload: bool) -> Result<Partition> {
        let mut offsets = Vec::with_capacity(params.len());
        let mut total = 0i64;
        for p in params {
            offsets.push(total);
            total += p.numel() as i64;
        }
        let padded = ((total + world - 1) / world).max(1) * world;
        let mut partition = Partition {
            params: params.iter().map(Tensor::shallow_clone).collect(),
            offsets,
            padded,
            master: Tensor::new(),
            home: if offload {
                Device::Cpu
            } else {
                params.first().map_or(Device::Cpu, Tensor::device)
            },
            state: ParamState::new(),
        };
        partition.copy_master(op, rank, padded / world)?;
        Ok(partition)
    }

    /// Copies this process's slice of the parameters (`len` elements) into the master partition.
    fn copy_master(&mut self, op: &str, rank: i64, len: i64) -> Result<()> {
        let flat = Self::flatten(op, &self.params, self.padded, |_, p| Ok(p.shallow_clone()))?;
        self.master = flat
            .f_narrow(0, rank * len, len)
            .and_then(|t| t.f_to_device(self.home))
            .and_then(|t| t.f_detach_copy())
            .map_err(fail(op))?;
        Ok(())
    }

    fn len(&self) -> i64 {
        self.master.numel() as i64
    }

    /// The parameters' `pick`ed tensors (zeros where it gives none) end to end, zero-padded to `padded`.
    fn flatten(
        op: &str,
        params: &[Tensor],
        padded: i64,
        pick: impl Fn(usize, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let first = params
            .first()
            .ok_or_else(|| Error::invalid(op, "a param group without parameters"))?;
        let options = (first.kind(), first.device());
        let mut pieces = Vec::with_capacity(params.len() + 1);
        let mut total = 0i64;
        for (i, p) in params.iter().enumerate() {
            let t = pick(i, p)?;
            let piece = if t.defined() {
                t.f_reshape([-1])
            } else {
                Tensor::f_zeros([p.numel() as i64], options)
            };
            pieces.push(piece.and_then(|t| t.f_to_kind(options.0)).map_err(fail(op))?);
            total += p.numel() as i64;
        }
        if padded > total {
            pieces.push(Tensor::f_zeros([padded - total], options).map_err(fail(op))?);
        }
        Tensor::f_cat(&pieces, 0).map_err(fail(op))
    }

    /// This process's slice of the whole gradients data parallelism averaged.
    fn gradient_slice(&self, op: &str, rank: i64) -> Result<Tensor> {
        let flat = Self::flatten(op, &self.params, self.padded, |_, p| p.f_grad().map_err(fail(op)))?;
        flat.f_narrow(0, rank * self.len(), self.len())
            .and_then(|t| t.f_contiguous())
            .map_err(fail(op))
    }

    /// Copies every process's master partition back into the parameters.
    fn gather_parameters(&self, op: &str) -> Result<()> {
        let device = self.params.first().map_or(Device::Cpu, Tensor::device);
        let mine = self.master.f_to_device(device).map_err(fail(op))?;
        let full = mine
            .f_new_empty([self.padded], (mine.kind(), device))
            .map_err(fail(op))?;
        all_gather_into(op, &full, &mine)?;
        let _guard = tch::no_grad_guard();
        for (p, &offset) in self.params.iter().zip(&self.offsets) {
            let piece = full
                .f_narrow(0, offset, p.numel() as i64)
                .and_then(|t| t.f_view(p.size().as_slice()))
                .map_err(fail(op))?;
            let mut target = p.shallow_clone();
            target.f_copy_(&piece).map_err(fail(op))?;
        }
        Ok(())
    }
}

impl ZeroOptimizer {
    /// Partitions `optimizer`'s param groups across the processes of the process group.
    /// `offload` keeps the master partitions and the optimizer state on the host, where the update runs.
    pub fn new(optimizer: &Optimizer, offload: bool) -> Result<ZeroOptimizer> {
        let op = format!("{} (ZeRO stage 1)", optimizer.name());
        let (rank, world) = world();
        let partitions = optimizer
            .groups()
            .iter()
            .map(|g| Partition::new(&op, &g.params, rank as i64, world as i64, offload))
            .collect::<Result<Vec<_>>>()?;
        Ok(ZeroOptimizer {
            rank: rank as i64,
            partitions,
        })
    }

    /// Updates this process's partitions with `optimizer`'s hyperparameters, then gathers every
    /// process's partitions into the parameters.
    pub fn step(&mut self, optimizer: &Optimizer, amp: AmpInputs) -> Result<()> {
        let op = format!("{}.step (ZeRO stage 1)", optimizer.name());
        for (part, group) in self.partitions.iter_mut().zip(optimizer.groups()) {
            let grad = part.gradient_slice(&op, self.rank)?;
            let grad = grad.f_to_device(part.home).map_err(fail(&op))?;
            let master = part.master.shallow_clone();
            let mut slots = [Slot {
                param: &master,
                grad,
                state: &mut part.state,
            }];
            crate::optim::apply_update(&op, optimizer.algorithm(), &group.hyper, &mut slots, amp)?;
            part.gather_parameters(&op)?;
        }
        Ok(())
    }

    /// Gathers the whole per-parameter state into `optimizer` (as an unpartitioned optimizer
    /// holds it), for a state dict; every process must call it. `release_state` drops it again.
    pub fn consolidate_state(&self, optimizer: &mut Optimizer) -> Result<()> {
        let op = format!("{}.stateDict (ZeRO)", optimizer.name());
        let mut index = 0;
        for part in &self.partitions {
            let mut whole: Vec<(String, Tensor)> = Vec::new();
            for (name, t) in &part.state {
                if t.dim() == 0 {
                    whole.push((name.clone(), t.shallow_clone()));
                    continue;
                }
                let device = part.params.first().map_or(Device::Cpu, Tensor::device);
                let t = t.f_to_device(device).map_err(fail(&op))?;
                let full = t.f_new_empty([part.padded], (t.kind(), device)).map_err(fail(&op))?;
                all_gather_into(&op, &full, &t)?;
                // Back where the state lives (the host, when the optimizer is offloaded).
                whole.push((name.clone(), full.f_to_device(part.home).map_err(fail(&op))?));
            }
            for (p, &offset) in part.params.iter().zip(&part.offsets) {
                let mut state = ParamState::new();
                for (name, t) in &whole {
                    let piece = if t.dim() == 0 || t.numel() as i64 != part.padded {
                        t.f_detach_copy()
                    } else {
                        t.f_narrow(0, offset, p.numel() as i64)
                            .and_then(|x| x.f_view(p.size().as_slice()))
                    };
                    state.insert(name.clone(), piece.map_err(fail(&op))?);
                }
                optimizer.set_param_state(index, state);
                index += 1;
            }
        }
        Ok(())
    }

    /// Empties `optimizer`'s per-parameter state (after `consolidate_state`).
    pub fn release_state(&self, optimizer: &mut Optimizer) {
        release_state(optimizer);
    }

    /// Takes this process's partition of the whole state that `optimizer` just loaded from a
    /// checkpoint (saved on any number of processes), and empties `optimizer`'s; the master
    /// partitions are copied afresh from the parameters as they are now.
    pub fn take_state(&mut self, optimizer: &mut Optimizer) -> Result<()> {
        let op = format!("{}.loadStateDict (ZeRO)", optimizer.name());
        let mut index = 0;
        for part in &mut self.partitions {
            let states: Vec<ParamState> = (index..index + part.params.len())
                .map(|i| optimizer.take_param_state(i))
                .collect();
            index += part.params.len();
            let mut sliced = ParamState::new();
            let names: Vec<String> = states.iter().flat_map(|s| s.keys().cloned()).collect();
            for name in names {
                if sliced.contains_key(&name) {
                    continue;
                }
                let scalar = states.iter().find_map(|s| s.get(&name)).is_some_and(|t| t.dim() == 0);
                if scalar {
                    if let Some(t) = states.iter().find_map(|s| s.get(&name)) {
                        sliced.insert(name.clone(), t.f_detach_copy().map_err(fail(&op))?);
                    }
                    continue;
                }
                let full = Partition::flatten(&op, &part.params, part.padded, |i, _| {
                    Ok(states[i].get(&name).map_or_else(Tensor::new, Tensor::shallow_clone))
                })?;
                let mine = full
                    .f_narrow(0, self.rank * part.len(), part.len())
                    .and_then(|t| t.f_to_device(part.home))
                    .and_then(|t| t.f_detach_copy())
                    .map_err(fail(&op))?;
                sliced.insert(name, mine);
            }
            part.state = sliced;
        }
        self.refresh_masters()
    }

    /// Copies the parameters' current values into the master partitions (after a checkpoint
    /// or the user wrote the parameters: the next step updates from them).
    pub fn refresh_masters(&mut self) -> Result<()> {
        let op = "loadState (ZeRO)";
        for part in &mut self.partitions {
            let len = part.len();
            part.copy_master(op, self.rank, len)?;
        }
        Ok(())
    }

    /// Bytes of optimizer state this process holds: the partitions' state and master copies.
    pub fn optimizer_state_bytes(&self) -> Placement {
        let mut placement = Placement::default();
        for p in &self.partitions {
            placement.add(&p.master);
            p.state.values().for_each(|t| placement.add(t));
        }
        placement
    }
}

/// Empties `optimizer`'s per-parameter state, which ZeRO keeps partitioned (after a state dict
/// gathered it whole there).
pub(super) fn release_state(optimizer: &mut Optimizer) {
    for index in 0..optimizer.num_params() {
        optimizer.set_param_state(index, ParamState::new());
    }
}
