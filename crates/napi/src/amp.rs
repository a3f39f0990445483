//! Bindings for mixed precision: autocast scopes (entered and left around a JS callback)
//! and the gradient scaler of float16 training.

use accelerate_core::amp::{self, DeviceType, GradScaler, ScalerOptions, ScalerState};
use accelerate_core::{device, dtype, Error};
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{guarded, with_all_parameters, wrap};
use crate::tensor::Tensor;

fn device_type(name: &str) -> accelerate_core::Result<DeviceType> {
    DeviceType::of("autocast", device::parse("autocast", name)?)
}

/// Turns autocast on (or off, with `enabled` false) in `dtype` for `device`'s type, with
/// Linear layers in fp8 when `fp8`; returns the token that `autocastExit` takes.
#[napi]
pub fn autocast_enter(device: String, dtype: String, enabled: bool, fp8: Option<bool>) -> Result<u32> {
    guarded("autocast", || {
        let kind = dtype::parse("autocast", &dtype)?;
        let token = amp::autocast::enter_scope(device_type(&device)?, kind, enabled, fp8.unwrap_or(false))?;
        Ok(token as u32)
    })
}

/// Restores the autocast setting from before the matching `autocastEnter` (innermost first).
#[napi]
pub fn autocast_exit(token: u32) -> Result<()> {
    guarded("autocast", || amp::autocast::exit_scope(token as usize))
}

/// Tells fp8 Linear layers which forward passes follow for activation checkpointing: 0 plain,
/// 1 a checkpointed module's first (gradient-free) pass, 2 its recomputation in backward,
/// which must scale as the first did. Returns the previous value, to restore.
#[napi]
pub fn fp8_pass(next: i32) -> Result<i32> {
    guarded("fp8Pass", || accelerate_core::shim::fp8_pass(next))
}

#[napi]
pub fn autocast_is_enabled(device: String) -> Result<bool> {
    guarded("autocast", || amp::autocast::is_enabled(device_type(&device)?))
}

#[napi(object)]
pub struct GradScalerOptions {
    pub init_scale: Option<f64>,
    pub growth_factor: Option<f64>,
    pub backoff_factor: Option<f64>,
    pub growth_interval: Option<f64>,
    pub enabled: Option<bool>,
}

/// A scaler's checkpoint state (torch's `scale`, `growth_factor`, ..., `_growth_tracker`).
#[napi(object)]
pub struct GradScalerState {
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: f64,
    pub growth_tracker: f64,
}

fn integer(op: &str, name: &str, value: f64) -> accelerate_core::Result<i64> {
    if value.fract() != 0.0 || !value.is_finite() {
        return Err(Error::invalid(op, format!("{name} must be an integer, got {value}")));
    }
    Ok(value as i64)
}

/// torch.amp.GradScaler in the engine.
#[napi]
pub struct GradScalerCore {
    inner: GradScaler,
}

#[napi]
impl GradScalerCore {
    #[napi(constructor)]
    pub fn new(options: GradScalerOptions) -> Result<Self> {
        guarded("GradScaler", || {
            let d = ScalerOptions::default();
            let growth_interval = match options.growth_interval {
                Some(v) => integer("GradScaler", "growthInterval", v)?,
                None => d.growth_interval,
            };
            let inner = GradScaler::new(ScalerOptions {
                init_scale: options.init_scale.unwrap_or(d.init_scale),
                growth_factor: options.growth_factor.unwrap_or(d.growth_factor),
                backoff_factor: options.backoff_factor.unwrap_or(d.backoff_factor),
                growth_interval,
                enabled: options.enabled.unwrap_or(d.enabled),
            })?;
            Ok(GradScalerCore { inner })
        })
    }

    #[napi(getter)]
    pub fn enabled(&self) -> bool {
        self.inner.is_enabled()
    }

    /// The current scale; null when disabled.
    #[napi]
    pub fn get_scale(&self) -> Result<Option<f64>> {
        guarded("scale", || self.inner.get_scale())
    }

    /// `loss` times the scale, as a new tensor.
    #[napi]
    pub fn scale(&mut self, env: Env, loss: Tensor) -> Result<Tensor> {
        guarded("scaleLoss", || {
            let scaled = self.inner.scale(&*loss.handle.get("scaleLoss")?)?;
            Ok(wrap(&env, scaled))
        })
    }

    /// Unscales the gradients of `params` in place, once per step; `grads`, when given, are
    /// where those gradients are held (ZeRO's partitions).
    #[napi]
    pub fn unscale(&mut self, params: Vec<Tensor>, grads: Option<Vec<Tensor>>) -> Result<()> {
        let inner = &mut self.inner;
        guarded("unscale", || {
            let held = match &grads {
                Some(list) => Some(
                    list.iter()
                        .map(|t| Ok(t.handle.get("unscale")?.shallow_clone()))
                        .collect::<accelerate_core::Result<Vec<_>>>()?,
                ),
                None => None,
            };
            with_all_parameters("unscale", &params, |ps| inner.unscale_held(ps, held.as_deref()))
        })
    }

    /// Unscales if needed; whether the optimizer over `params` may step (no inf/NaN).
    #[napi]
    pub fn should_step(&mut self, params: Vec<Tensor>) -> Result<bool> {
        let inner = &mut self.inner;
        guarded("step", || {
            with_all_parameters("step", &params, |ps| inner.should_step(ps))
        })
    }

    /// Backs off or grows the scale from what this step found.
    #[napi]
    pub fn update(&mut self) -> Result<()> {
        guarded("update", || self.inner.update())
    }

    #[napi]
    pub fn state_dict(&self) -> Result<GradScalerState> {
        guarded("stateDict", || {
            let s = self.inner.state_dict()?;
            Ok(GradScalerState {
                scale: s.scale,
                growth_factor: s.growth_factor,
                backoff_factor: s.backoff_factor,
                growth_interval: s.growth_interval as f64,
                growth_tracker: s.growth_tracker as f64,
            })
        })
    }

    #[napi]
    pub fn load_state_dict(&mut self, state: GradScalerState) -> Result<()> {
        let op = "GradScaler.loadStateDict";
        guarded(op, || {
            self.inner.load_state_dict(&ScalerState {
                scale: state.scale,
                growth_factor: state.growth_factor,
                backoff_factor: state.backoff_factor,
                growth_interval: integer(op, "growthInterval", state.growth_interval)?,
                growth_tracker: integer(op, "growthTracker", state.growth_tracker)?,
            })
        })
    }
}
