//! Parameters and their state: a replaceable shared slot for a layer's tensor,
//! loading values in place, moving to a device keeping identity, clearing gradients.

use std::cell::{Ref, RefCell};
use tch::{Device, Tensor};

use crate::tensor::shapes;
use crate::{Error, Result};

/// A layer's parameter. Everyone holding a shallow clone sees in-place updates and
/// device moves; `replace` swaps in another tensor (weight tying).
pub struct Param(RefCell<Tensor>);

impl Param {
    /// Takes `t` as a leaf that requires grad.
    pub fn new(op: &str, t: Tensor) -> Result<Param> {
        let t = t
            .f_set_requires_grad(true)
            .map_err(|e| Error::torch(op, shapes(&[&t]), e))?;
        Ok(Param(RefCell::new(t)))
    }

    pub fn get(&self) -> Ref<'_, Tensor> {
        self.0.borrow()
    }

    /// A shallow clone: the same tensor, storage and gradient.
    pub fn share(&self) -> Tensor {
        self.0.borrow().shallow_clone()
    }

    /// Shares `value` from now on; its shape must match, so the layer keeps working.
    pub fn replace(&self, layer: &str, name: &str, value: &Tensor) -> Result<()> {
        let (old, new) = (self.0.borrow().size(), value.size());
        if old != new {
            return Err(Error::invalid(
                "setParameter",
                format!("{layer}.{name} has shape {old:?}, got a tensor of shape {new:?}"),
            ));
        }
        *self.0.borrow_mut() = value.shallow_clone();
        Ok(())
    }
}

/// Copies each `(key, destination, source)` in place, without recording gradients.
/// All shapes are checked before anything is written, so a failed load changes nothing.
/// Sources may have another dtype or device; they are converted while copying.
pub fn load_in_place(entries: &[(&str, &Tensor, &Tensor)]) -> Result<()> {
    const OP: &str = "loadStateDict";
    for (key, dst, src) in entries {
        let (want, got) = (dst.size(), src.size());
        if want != got {
            return Err(Error::invalid(
                OP,
                format!("\"{key}\" has shape {got:?} in the checkpoint but {want:?} in the model"),
            ));
        }
    }
    let _guard = tch::no_grad_guard();
    for (key, dst, src) in entries {
        dst.shallow_clone()
            .f_copy_(src)
            .map_err(|e| Error::invalid(OP, format!("\"{key}\": {}", Error::torch(OP, vec![], e))))?;
    }
    Ok(())
}

/// Moves each tensor (and its gradient) to `device` in place: every holder of a
/// shallow clone, such as an optimizer or a host handle, sees the moved data.
pub fn move_in_place(tensors: &[&Tensor], device: Device) -> Result<()> {
    const OP: &str = "to";
    let _guard = tch::no_grad_guard();
    for t in tensors {
        if t.device() == device {
            continue;
        }
        let fail = |e| Error::torch(OP, shapes(&[t]), e);
        let moved = t.f_to_device(device).map_err(fail)?;
        let grad = t.f_grad().map_err(fail)?;
        t.shallow_clone().f_set_data(&moved).map_err(fail)?;
        if grad.defined() {
            let moved_grad = grad.f_to_device(device).map_err(fail)?;
            grad.shallow_clone().f_set_data(&moved_grad).map_err(fail)?;
        }
    }
    Ok(())
}

/// Drops each tensor's gradient (PyTorch's `zero_grad(set_to_none=True)`), as the optimizers do.
pub fn clear_grads(tensors: &[&Tensor]) -> Result<()> {
    crate::optim::kernels::zero_grads("zeroGrad", tensors, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn load_checks_every_shape_before_writing() -> Result<()> {
        let a = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let src_a = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let src_b = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let err = load_in_place(&[("a", &a, &src_a), ("b", &b, &src_b)])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("loadStateDict: \"b\" has shape [4] in the checkpoint but [3] in the model")
        );
        assert_eq!(a.sum(Kind::Float).double_value(&[]), 0.0);
        load_in_place(&[("a", &a, &src_a)])?;
        assert_eq!(a.sum(Kind::Float).double_value(&[]), 2.0);
        Ok(())
    }

    #[test]
    fn load_keeps_identity_and_leaf_status() -> Result<()> {
        let p = Param::new("test", Tensor::zeros([2], (Kind::Float, Device::Cpu)))?;
        let held = p.share();
        let src = Tensor::from_slice(&[1.0f32, 2.0]);
        load_in_place(&[("p", &p.get(), &src)])?;
        assert!(held.requires_grad());
        assert!(held.is_leaf());
        assert_eq!(held.double_value(&[1]), 2.0);
        Ok(())
    }

    #[test]
    fn clear_grads_leaves_no_gradient() -> Result<()> {
        let p = Param::new("test", Tensor::ones([2], (Kind::Float, Device::Cpu)))?;
        p.get().sum(Kind::Float).backward();
        assert!(p.share().grad().defined());
        clear_grads(&[&p.get()])?;
        assert!(!p.share().grad().defined());
        Ok(())
    }

    #[test]
    fn move_keeps_identity_and_moves_the_gradient() -> Result<()> {
        if !tch::Cuda::is_available() {
            return Ok(()); // needs a second device
        }
        let p = Param::new("test", Tensor::ones([2], (Kind::Float, Device::Cpu)))?;
        let held = p.share();
        p.get().sum(Kind::Float).backward();
        move_in_place(&[&p.get()], Device::Cuda(0))?;
        assert_eq!(held.device(), Device::Cuda(0));
        assert_eq!(held.grad().device(), Device::Cuda(0));
        assert!(held.is_leaf() && held.requires_grad());
        Ok(())
    }

    #[test]
    fn replace_rejects_another_shape() -> Result<()> {
        let p = Param::new("test", Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)))?;
        let err = p
            .replace("Linear", "weight", &Tensor::zeros([3], (Kind::Float, Device::Cpu)))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("setParameter: Linear.weight has shape [2, 3], got a tensor of shape [3]")
        );
        Ok(())
    }
}
