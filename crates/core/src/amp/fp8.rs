//! Linear layers in fp8 (mixedPrecision "fp8"): while an autocast scope entered with fp8 is
//! open on this thread, `linear` runs its matmuls through `_scaled_mm` with dynamic per-tensor
//! scales (shim/fp8.cpp): e4m3 input and weight forward, e5m2 output gradient backward. Shapes
//! whose matmul dimensions are not all multiples of 16 (fp8 GEMMs need them) run in the
//! autocast dtype instead.

use std::cell::Cell;
use tch::{Device, Kind, Tensor};

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
}

/// fp8 Linear layers on (or off) until dropped; guards nest, and each restores what was set before it.
#[must_use = "fp8 ends when the guard is dropped"]
pub struct Fp8Guard {
    previous: bool,
}

impl Fp8Guard {
    pub fn new(on: bool) -> Fp8Guard {
        Fp8Guard {
            previous: ON.with(|c| c.replace(on)),
        }
    }
}

impl Drop for Fp8Guard {
    fn drop(&mut self) {
        ON.with(|c| c.set(self.previous));
    }
}

pub fn is_enabled() -> bool {
    ON.with(Cell::get)
}

/// Whether `x @ weight^T` runs in fp8: fp8 is on and the matmul `fits`.
pub fn applies(x: &Tensor, weight: &Tensor) -> bool {
    is_enabled() && fits(x, weight)
}

/// Whether `x @ weight^T` can run in fp8 here: a float32 or bfloat16 input and weight (a
/// float16 tensor's scales can overflow its range) on the CPU or a GPU, and rows, input
/// features and output features all multiples of 16.
pub fn fits(x: &Tensor, weight: &Tensor) -> bool {
    let floating = |t: &Tensor| matches!(t.kind(), Kind::Float | Kind::BFloat16);
    let device = matches!(x.device(), Device::Cpu | Device::Cuda(_));
    let (ws, xs) = (weight.size(), x.size());
    let [out, features] = ws[..] else { return false };
    let rows = if features > 0 {
        xs.iter().product::<i64>() / features
    } else {
        0
    };
    device && floating(x) && floating(weight) && [rows, features, out].iter().all(|&d| d > 0 && d % 16 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore() {
        assert!(!is_enabled());
        {
            let _on = Fp8Guard::new(true);
            assert!(is_enabled());
            {
                let _off = Fp8Guard::new(false);
                assert!(!is_enabled());
            }
            assert!(is_enabled());
        }
        assert!(!is_enabled());
    }

    #[test]
    fn fits_needs_multiples_of_16() {
        let w = Tensor::zeros([32, 16], (Kind::Float, Device::Cpu));
        assert!(fits(&Tensor::zeros([2, 8, 16], (Kind::Float, Device::Cpu)), &w));
        assert!(!fits(&Tensor::zeros([3, 16], (Kind::Float, Device::Cpu)), &w));
        assert!(!fits(&Tensor::zeros([16, 16], (Kind::Int64, Device::Cpu)), &w));
        assert!(!fits(&Tensor::zeros([16, 16], (Kind::Half, Device::Cpu)), &w));
        let narrow = Tensor::zeros([24, 16], (Kind::Float, Device::Cpu));
        assert!(!fits(&Tensor::zeros([16, 16], (Kind::Float, Device::Cpu)), &narrow));
    }
}
