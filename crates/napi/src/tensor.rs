//! The JS `Tensor` class: properties, conversion to host memory, autograd and
//! disposal. The regular operations are generated in `tensor_ops.rs`.

use accelerate_core::memory::Handle;
use accelerate_core::tensor::{self as core_tensor, ops};
use accelerate_core::{device, dtype, Error};
use napi::bindgen_prelude::{Buffer, Either, ObjectFinalize};
use napi::{Env, Result};
use napi_derive::napi;

use crate::convert::{
    guarded, parse_device, parse_dtype, report_memory, with_operand, wrap, wrap_all,
};

#[napi(custom_finalize)]
pub struct Tensor {
    pub(crate) handle: Handle,
}

impl ObjectFinalize for Tensor {
    fn finalize(self, env: Env) -> Result<()> {
        drop(self.handle);
        report_memory(&env);
        Ok(())
    }
}

#[napi]
impl Tensor {
    #[napi(getter)]
    pub fn shape(&self) -> Result<Vec<i64>> {
        guarded("shape", || Ok(self.handle.get("shape")?.size()))
    }

    #[napi(getter)]
    pub fn dtype(&self) -> Result<&'static str> {
        guarded("dtype", || {
            Ok(dtype::name(self.handle.get("dtype")?.kind()))
        })
    }

    #[napi(getter)]
    pub fn device(&self) -> Result<String> {
        guarded("device", || {
            Ok(device::name(self.handle.get("device")?.device()))
        })
    }

    #[napi(getter)]
    pub fn ndim(&self) -> Result<i64> {
        guarded("ndim", || Ok(self.handle.get("ndim")?.dim() as i64))
    }

    #[napi(getter)]
    pub fn numel(&self) -> Result<i64> {
        guarded("numel", || Ok(self.handle.get("numel")?.numel() as i64))
    }

    #[napi(getter)]
    pub fn is_disposed(&self) -> bool {
        self.handle.is_disposed()
    }

    /// Frees the tensor's memory now. Later calls on it throw. Idempotent.
    #[napi]
    pub fn dispose(&self, env: Env) {
        self.handle.dispose();
        report_memory(&env);
    }

    /// The value of a one-element tensor as a number (booleans as 0 or 1).
    #[napi]
    pub fn item(&self) -> Result<f64> {
        guarded("item", || core_tensor::item(&*self.handle.get("item")?))
    }

    /// The elements in row-major order as raw bytes of this tensor's dtype (copied to the host).
    #[napi]
    pub fn to_bytes(&self) -> Result<Buffer> {
        guarded("toBytes", || {
            Ok(core_tensor::to_bytes("toBytes", &*self.handle.get("toBytes")?)?.into())
        })
    }

    /// A copy converted to `dtype` and/or moved to `device` (the same tensor when nothing changes).
    #[napi]
    pub fn to(&self, env: Env, dtype: Option<String>, device: Option<String>) -> Result<Tensor> {
        guarded("to", || {
            let t = self.handle.get("to")?;
            let kind = parse_dtype("to", dtype.as_deref(), t.kind())?;
            let device = device
                .as_deref()
                .map_or(Ok(t.device()), |d| device::parse("to", d))?;
            Ok(wrap(
                &env,
                core_tensor::convert("to", t.shallow_clone(), kind, device)?,
            ))
        })
    }

    #[napi(getter)]
    pub fn requires_grad(&self) -> Result<bool> {
        guarded("requiresGrad", || {
            Ok(self.handle.get("requiresGrad")?.requires_grad())
        })
    }

    #[napi(setter)]
    pub fn set_requires_grad(&self, value: bool) -> Result<()> {
        guarded("requiresGrad", || {
            let t = self.handle.get("requiresGrad")?;
            ops::unary("requiresGrad", &t, |t| t.f_set_requires_grad(value)).map(drop)
        })
    }

    /// The accumulated gradient, or null before any backward pass reached this tensor.
    #[napi(getter)]
    pub fn grad(&self, env: Env) -> Result<Option<Tensor>> {
        guarded("grad", || {
            let g = ops::unary("grad", &*self.handle.get("grad")?, |t| t.f_grad())?;
            Ok(g.defined().then(|| wrap(&env, g)))
        })
    }

    /// Back-propagates from this tensor; a non-scalar needs `gradient` of its shape.
    #[napi]
    pub fn backward(&self, gradient: Option<&Tensor>) -> Result<()> {
        guarded("backward", || {
            let t = self.handle.get("backward")?;
            match gradient {
                None if t.numel() != 1 => Err(Error::invalid(
                    "backward",
                    format!(
                        "needs a gradient for a non-scalar tensor of shape {:?}",
                        t.size()
                    ),
                )),
                None => ops::unary("backward", &t, |t| {
                    t.f_backward().map(|_| tch::Tensor::new())
                })
                .map(drop),
                Some(g) => {
                    let g = g.handle.get("backward")?;
                    ops::binary("backward", &t, ops::Operand::Tensor(&g), |t, g| {
                        t.f_mul(g)?
                            .f_sum(None::<tch::Kind>)?
                            .f_backward()
                            .map(|_| tch::Tensor::new())
                    })
                    .map(drop)
                }
            }
        })
    }

    /// `t[i]`: an integer selects along dim 0; a tensor of indices or a boolean mask gathers.
    #[napi]
    pub fn index(&self, env: Env, i: Either<&Tensor, f64>) -> Result<Tensor> {
        guarded("index", || {
            let t = self.handle.get("index")?;
            Ok(wrap(
                &env,
                with_operand("index", &i, |i| ops::index(&t, i))?,
            ))
        })
    }

    /// Pieces of `size` (or of each size in a list) along `dim`.
    #[napi]
    pub fn split(
        &self,
        env: Env,
        size: Either<i64, Vec<i64>>,
        dim: Option<i64>,
    ) -> Result<Vec<Tensor>> {
        guarded("split", || {
            let sizes = match size {
                Either::A(one) => vec![one],
                Either::B(many) => many,
            };
            Ok(wrap_all(
                &env,
                ops::split(&*self.handle.get("split")?, &sizes, dim.unwrap_or(0))?,
            ))
        })
    }

    #[napi]
    pub fn chunk(&self, env: Env, chunks: i64, dim: Option<i64>) -> Result<Vec<Tensor>> {
        guarded("chunk", || {
            Ok(wrap_all(
                &env,
                ops::chunk(&*self.handle.get("chunk")?, chunks, dim.unwrap_or(0))?,
            ))
        })
    }
}

/// Creates a tensor from raw elements of `sourceDtype`, converted to `dtype` on `device`.
#[napi]
pub fn from_bytes(
    env: Env,
    bytes: &[u8],
    shape: Vec<i64>,
    source_dtype: String,
    dtype: Option<String>,
    device: Option<String>,
) -> Result<Tensor> {
    guarded("tensor", || {
        let source = accelerate_core::dtype::parse("tensor", &source_dtype)?;
        let target = parse_dtype("tensor", dtype.as_deref(), source)?;
        let device = parse_device("tensor", device.as_deref())?;
        Ok(wrap(
            &env,
            core_tensor::from_bytes("tensor", bytes, &shape, source, target, device)?,
        ))
    })
}
