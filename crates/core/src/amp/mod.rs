//! Mixed precision: autocast with a dtype on the CPU and CUDA (through the C++ shim, as tch's
//! autocast has neither), and dynamic loss scaling for float16 (torch.amp.GradScaler).
//! fp8 matmuls for Linear layers ride on a bf16 autocast scope.
//! Parameters are never converted: master weights and optimizer state stay float32.

pub mod autocast;
pub mod fp8;
mod scaler;
mod unscale;

pub use autocast::{AutocastGuard, AutocastState, DeviceType};
pub use scaler::{GradScaler, ScalerOptions, ScalerState};
pub use unscale::unscale_grads;

#[cfg(test)]
mod tests;
