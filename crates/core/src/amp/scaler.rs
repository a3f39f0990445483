//! Dynamic loss scaling for float16 training, as torch.amp.GradScaler: the loss is multiplied
//! by a scale before backward; before an optimizer step the gradients are unscaled and checked
//! for inf/NaN; a step with any is skipped and the scale shrinks, and after `growth_interval`
//! clean steps in a row it grows. With a process group, every process sees the same verdict.

use super::unscale::{unscale, unscale_grads};
use crate::optim::kernels::identity;
use crate::tensor::item;
use crate::{dist, Error, Result};
use tch::{Device, Kind, Tensor};

/// torch.amp.GradScaler's constructor arguments (and their defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerOptions {
    pub init_scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
    /// A disabled scaler leaves losses and gradients alone and never skips a step.
    pub enabled: bool,
}

impl Default for ScalerOptions {
    fn default() -> Self {
        ScalerOptions {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            enabled: true,
        }
    }
}

/// What a checkpoint keeps (torch's `scale`, `growth_factor`, `backoff_factor`,
/// `growth_interval`, `_growth_tracker`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerState {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
    /// Clean steps in a row since the scale last changed.
    pub growth_tracker: i64,
}

/// Gradients of one optimizer's parameters in this step (torch's per-optimizer state).
struct Unscaled {
    /// The parameters' TensorImpl identities, sorted: the same set in any order matches.
    key: Vec<usize>,
    found_inf: Tensor,
    stepped: bool,
}

pub struct GradScaler {
    options: ScalerOptions,
    init_growth_tracker: i64,
    /// Created on the device of the first scaled loss (float32 and int32 scalars, as torch).
    scale: Option<Tensor>,
    growth_tracker: Option<Tensor>,
    /// Since the last `update`.
    unscaled: Vec<Unscaled>,
}

fn check_options(op: &str, o: &ScalerOptions) -> Result<()> {
    let problem = if !(o.init_scale.is_finite() && o.init_scale > 0.0) {
        Some(format!("initScale must be a positive number, got {}", o.init_scale))
    } else if !(o.growth_factor.is_finite() && o.growth_factor > 1.0) {
        Some(format!("growthFactor must be > 1, got {}", o.growth_factor))
    } else if !(o.backoff_factor > 0.0 && o.backoff_factor < 1.0) {
        Some(format!("backoffFactor must be in (0, 1), got {}", o.backoff_factor))
    } else if o.growth_interval < 1 {
        Some(format!(
            "growthInterval must be a positive integer, got {}",
            o.growth_interval
        ))
    } else {
        None
    };
    problem.map_or(Ok(()), |p| Err(Error::invalid(op, p)))
}

impl GradScaler {
    pub fn new(options: ScalerOptions) -> Result<GradScaler> {
        check_options("GradScaler", &options)?;
        Ok(GradScaler {
            options,
            init_growth_tracker: 0,
            scale: None,
            growth_tracker: None,
            unscaled: Vec::new(),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.options.enabled
    }

    /// The current scale (the initial one before the first `scale`); None when disabled.
    pub fn get_scale(&self) -> Result<Option<f64>> {
        if !self.options.enabled {
            return Ok(None);
        }
        match &self.scale {
            Some(scale) => item(scale).map(Some),
            None => Ok(Some(self.options.init_scale)),
        }
    }

    fn scale_on(&mut self, op: &str, device: Device) -> Result<&Tensor> {
        if self.scale.is_none() {
            let full = |value: f64, kind: Kind| {
                Tensor::f_full([], value, (kind, device)).map_err(|e| Error::torch(op, Vec::new(), e))
            };
            self.growth_tracker = Some(full(self.init_growth_tracker as f64, Kind::Int)?);
            self.scale = Some(full(self.options.init_scale, Kind::Float)?);
        }
        self.scale
            .as_ref()
            .ok_or_else(|| Error::invalid(op, "internal error: no scale"))
    }

    /// `loss` times the scale (a new tensor; `loss` itself when disabled).
    pub fn scale(&mut self, loss: &Tensor) -> Result<Tensor> {
        if !self.options.enabled {
            return Ok(loss.shallow_clone());
        }
        let scale = self.scale_on("scaleLoss", loss.device())?;
        let on_device = scale.f_to_device(loss.device()).map_err(Error::on("scaleLoss", loss))?;
        loss.f_mul(&on_device).map_err(Error::on("scaleLoss", loss))
    }

    fn key(op: &str, params: &[&Tensor]) -> Result<Vec<usize>> {
        let mut key = params.iter().map(|p| identity(op, p)).collect::<Result<Vec<_>>>()?;
        key.sort_unstable();
        key.dedup();
        Ok(key)
    }

    /// Divides the gradients of `params` by the scale, in place, once per step: a second
    /// call for the same parameters before `update` does nothing.
    pub fn unscale(&mut self, params: &[&Tensor]) -> Result<()> {
        self.unscale_held(params, None)
    }

    /// As `unscale`, for `params` whose gradients are held apart (`grads`: ZeRO's partitions of
    /// them, on this process); the inf/NaN finding is shared across processes either way.
    pub fn unscale_held(&mut self, params: &[&Tensor], grads: Option<&[Tensor]>) -> Result<()> {
        let op = "unscale";
        if !self.options.enabled {
            return Ok(());
        }
        let key = Self::key(op, params)?;
        if self.unscaled.iter().any(|u| u.key == key) {
            return Ok(());
        }
        let scale = self.scale.as_ref().ok_or_else(|| {
            Error::invalid(
                op,
                "no loss was scaled in this step; scale the loss before backward (accelerator.backward does)",
            )
        })?;
        // As torch: the reciprocal in double precision, then float32 for the kernel.
        let inv_scale = scale
            .f_to_kind(Kind::Double)
            .and_then(|s| s.f_reciprocal())
            .and_then(|s| s.f_to_kind(Kind::Float))
            .map_err(Error::on(op, scale))?;
        let found_inf = tch::no_grad(|| match grads {
            Some(grads) => unscale(op, grads, &inv_scale),
            None => unscale_grads(op, params, &inv_scale),
        })?;
        // Processes may hold different gradients (or shards of them); all must skip together.
        let found_inf = if dist::is_initialized() {
            dist::all_reduce(op, &found_inf, dist::Reduce::Max)?
        } else {
            found_inf
        };
        self.unscaled.push(Unscaled {
            key,
            found_inf,
            stepped: false,
        });
        Ok(())
    }

    /// Unscales the gradients of `params` if this step has not yet, and returns whether the
    /// optimizer over them may step (no inf/NaN). Call `update` after the step.
    pub fn should_step(&mut self, params: &[&Tensor]) -> Result<bool> {
        let op = "step";
        if !self.options.enabled {
            return Ok(true);
        }
        self.unscale(params)?;
        let key = Self::key(op, params)?;
        let entry = self
            .unscaled
            .iter_mut()
            .find(|u| u.key == key)
            .ok_or_else(|| Error::invalid(op, "internal error: gradients were not unscaled"))?;
        if entry.stepped {
            return Err(Error::invalid(
                op,
                "this optimizer already stepped since the last update of the scale",
            ));
        }
        entry.stepped = true;
        Ok(item(&entry.found_inf)? == 0.0)
    }

    /// `should_step`, then `step` if allowed; returns whether it ran. Does not update the scale.
    pub fn step(&mut self, params: &[&Tensor], step: impl FnOnce() -> Result<()>) -> Result<bool> {
        let allowed = self.should_step(params)?;
        if allowed {
            step()?;
        }
        Ok(allowed)
    }

    /// Ends the step: halves (backs off) the scale if any gradient unscaled since the last
    /// update held inf/NaN, else counts a clean step and grows the scale every `growth_interval`.
    pub fn update(&mut self) -> Result<()> {
        let op = "update";
        if !self.options.enabled {
            return Ok(());
        }
        let (Some(scale), Some(tracker)) = (self.scale.as_mut(), self.growth_tracker.as_ref()) else {
            return Err(Error::invalid(op, "no loss was scaled since the last update"));
        };
        let mut found = match self.unscaled.first() {
            Some(first) => first.found_inf.f_to_device(scale.device()),
            None => {
                return Err(Error::invalid(
                    op,
                    "no gradients were unscaled or stepped since the last update",
                ))
            }
        }
        .map_err(Error::on(op, scale))?;
        for other in &self.unscaled[1..] {
            let here = other
                .found_inf
                .f_to_device(scale.device())
                .map_err(Error::on(op, scale))?;
            found = found.f_add(&here).map_err(Error::on(op, scale))?;
        }
        let o = self.options;
        scale
            .f_internal_amp_update_scale_(tracker, &found, o.growth_factor, o.backoff_factor, o.growth_interval)
            .map_err(Error::on(op, tracker))
            .map(drop)?;
        self.unscaled.clear();
        Ok(())
    }

    pub fn state_dict(&self) -> Result<ScalerState> {
        let growth_tracker = match &self.growth_tracker {
            Some(t) => item(t)? as i64,
            None => self.init_growth_tracker,
        };
        Ok(ScalerState {
            scale: self.get_scale()?.unwrap_or(self.options.init_scale),
            growth_factor: self.options.growth_factor,
            backoff_factor: self.options.backoff_factor,
            growth_interval: self.options.growth_interval,
            growth_tracker,
        })
    }

    pub fn load_state_dict(&mut self, state: &ScalerState) -> Result<()> {
        let op = "GradScaler.loadStateDict";
        let options = ScalerOptions {
            init_scale: state.scale,
            growth_factor: state.growth_factor,
            backoff_factor: state.backoff_factor,
            growth_interval: state.growth_interval,
            enabled: self.options.enabled,
        };
        check_options(op, &options)?;
        if state.growth_tracker < 0 || state.growth_tracker >= i64::from(i32::MAX) {
            return Err(Error::invalid(
                op,
                format!(
                    "growthTracker must be a non-negative integer, got {}",
                    state.growth_tracker
                ),
            ));
        }
        if let (Some(scale), Some(tracker)) = (self.scale.as_mut(), self.growth_tracker.as_mut()) {
            scale.f_fill_(state.scale).map_err(Error::on(op, scale)).map(drop)?;
            tracker
                .f_fill_(state.growth_tracker)
                .map_err(Error::on(op, tracker))
                .map(drop)?;
        }
        self.options = options;
        self.init_growth_tracker = state.growth_tracker;
        Ok(())
    }
}
