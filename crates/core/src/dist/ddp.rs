//! Data-parallel training starts from the same parameters everywhere (the gradient
//! averaging itself runs during backward, in the reducer).

use super::collectives::broadcast_;
use crate::Result;
use tch::Tensor;

/// Copies process 0's parameter values to every process.
pub fn broadcast_parameters(params: &[Tensor]) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for p in params {
        let mut target = p.shallow_clone();
        broadcast_("prepare", &mut target, 0)?;
    }
    Ok(())
}
