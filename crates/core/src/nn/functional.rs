//! Stateless neural-network operations (PyTorch's `torch.nn.functional`): losses,
//! activations, attention, and the numerics behind each layer. Errors name the
//! operation as users call it and the shapes involved.

use tch::{Kind, Reduction, Tensor};

use crate::tensor::shapes;
use crate::{dtype, Error, Result};

/// Parses a loss reduction: `mean`, `sum` or `none`.
pub fn reduction(op: &str, name: &str) -> Result<Reduction> {
    match name {
        "mean" => Ok(Reduction::Mean),
        "sum" => Ok(Reduction::Sum),
        "none" => Ok(Reduction::None),
        _ => Err(Error::invalid(
            op,
            format!("unknown reduction \"{name}\" (expected \"mean\", \"sum\" or \"none\")"),
        )),
    }
}

/// `x @ w.T + b`, as `torch.nn.functional.linear`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_as("linear", x, weight, bias)
}

pub(crate) fn linear_as(op: &str, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    check_linear_shapes(op, x, weight)?;
    if crate::amp::fp8::applies(x, weight) {
        return crate::shim::fp8_linear(op, x, weight, bias, None);
    }
    if autocast_lowers(x, weight) {
        return crate::shim::autocast_linear(op, x, weight, bias);
    }
    x.f_linear(weight, bias)
        .map_err(|e| Error::torch(op, shapes(&[x, weight]), e))
}

/// This thread's autocast setting for `device`'s type when autocast is on there.
fn autocast_on(device: tch::Device) -> Option<crate::amp::autocast::AutocastState> {
    crate::amp::DeviceType::of("autocast", device)
        .and_then(crate::amp::autocast::state)
        .ok()
        .filter(|state| state.enabled)
}

/// Whether autocast runs `x @ weight^T` below the precision of a float32 weight that will get
/// a gradient. Such a linear makes the weight's and bias's gradients in float32 straight from
/// the matmul and the row sum (shim/linear.cpp) instead of in bf16 and then converted: the
/// same forward, one kernel less per parameter and step, and gradients not rounded to bf16.
fn autocast_lowers(x: &Tensor, weight: &Tensor) -> bool {
    matches!(x.kind(), Kind::Float | Kind::BFloat16 | Kind::Half) && autocast_lowers_weight(weight)
}

/// The weight's part of `autocast_lowers`: a float32 weight that will get a gradient, on a
/// device where autocast is on.
fn autocast_lowers_weight(weight: &Tensor) -> bool {
    autocast_on(weight.device()).is_some()
        && weight.kind() == Kind::Float
        && weight.requires_grad()
        && crate::tensor::is_grad_enabled()
}

/// Converts ahead the weights and biases that `linear` will convert under autocast in this
/// region, and `input`, the input of the layer whose weight is the first of `weights`, if
/// `input_too` and that layer will convert it, in one multi-tensor copy per device instead of
/// one conversion each: a `Sequential` that is not one chain (`linear_chain`, which converts
/// its own) calls it before its layers run one by one, when launching kernels may bound its
/// step. `weights` is only asked for under autocast with gradients on (a forward pays nothing
/// otherwise). Nothing under fp8, whose layers read float32 weights.
pub(crate) fn cast_ahead(input: &Tensor, input_too: bool, weights: impl FnOnce() -> Vec<Tensor>) -> Result<()> {
    if autocast_on(input.device()).is_none() || !crate::tensor::is_grad_enabled() || crate::amp::fp8::is_enabled() {
        return Ok(());
    }
    let weights = weights();
    let mut lowered: Vec<&Tensor> = weights.iter().filter(|w| autocast_lowers_weight(w)).collect();
    if let Some(first) = weights.first().filter(|_| input_too) {
        if input.kind() == Kind::Float && autocast_lowers(input, first) {
            lowered.push(input);
        }
    }
    if lowered.is_empty() {
        return Ok(());
    }
    crate::shim::cast_ahead(&lowered)
}

/// A layer of a chain that `linear_chain` runs as one autograd node.
pub enum Link {
    Linear { weight: Tensor, bias: Option<Tensor> },
    Relu,
}

/// Runs `links` (Linear layers, each maybe followed by a ReLU) on `x` as one autograd node
/// (shim/linear_chain.cpp), or as one call without gradients (evaluation), when they fit: not
/// fp8, `x` of two or more dimensions, shapes that chain, and parameters of one dtype on `x`'s
/// device that is `x`'s, or that autocast converts like `x`. `None` when they do not: the
/// caller then runs the layers one by one, whose errors name the layer. A half-precision output
/// comes as float32 if `float32_output`.
pub(crate) fn linear_chain(x: &Tensor, links: &[Link], float32_output: bool) -> Result<Option<Tensor>> {
    if crate::amp::fp8::is_enabled() || x.dim() < 2 {
        return Ok(None);
    }
    let (mut weights, mut biases, mut relu) = (Vec::new(), Vec::new(), Vec::new());
    for link in links {
        match link {
            Link::Linear { weight, bias } => {
                weights.push(weight);
                biases.push(bias.as_ref());
                relu.push(false);
            }
            Link::Relu => match relu.last_mut() {
                Some(after) if !*after => *after = true,
                _ => return Ok(None),
            },
        }
    }
    let Some(kind) = weights.first().map(|w| w.kind()) else {
        return Ok(None);
    };
    let params = || weights.iter().copied().chain(biases.iter().flatten().copied());
    if !params().all(|p| p.kind() == kind && p.device() == x.device()) {
        return Ok(None);
    }
    let mut features = x.size().last().copied().unwrap_or(0);
    for (weight, bias) in weights.iter().zip(&biases) {
        let ws = weight.size();
        if ws.len() != 2 || ws[1] != features || bias.is_some_and(|b| b.size() != [ws[0]]) {
            return Ok(None);
        }
        features = ws[0];
    }
    let autocast = autocast_on(x.device()).and_then(|state| state.dtype());
    let lowerable = |k: Kind| matches!(k, Kind::Float | Kind::BFloat16 | Kind::Half);
    let dtypes_fit = match autocast {
        // Parameters in float32 or already in the compute dtype: their gradients are then
        // made exactly (shim/linear.cpp's mm_as); other half-precision ones run one by one.
        Some(compute) => lowerable(x.kind()) && (kind == Kind::Float || kind == compute),
        None => x.kind() == kind && (lowerable(kind) || kind == Kind::Double),
    };
    if !dtypes_fit {
        return Ok(None);
    }
    crate::shim::linear_chain("Sequential", x, &weights, &biases, &relu, float32_output).map(Some)
}

fn check_linear_shapes(op: &str, x: &Tensor, weight: &Tensor) -> Result<()> {
    let (xs, ws) = (x.size(), weight.size());
    if ws.len() != 2 || xs.last() != Some(&ws[1]) {
        return Err(Error::invalid(
            op,
            format!(
                "input of shape {xs:?} does not fit weight of shape {ws:?} (the input's last dimension must be {})",
                ws.get(1).copied().unwrap_or(0)
            ),
        ));
    }
    Ok(())
}

/// `linear(gelu(x, approximate), weight, bias)` keeping only `x` for backward, which
/// recomputes the GELU (shim/gelu_linear.cpp): a transformer MLP's hidden activation is stored
/// once instead of twice. Under fp8 the GELU is applied while quantizing its output to fp8
/// (shim/fp8.cpp), which keeps its fp8 copy and `x`.
pub fn gelu_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, approximate: &str) -> Result<Tensor> {
    const OP: &str = "geluLinear";
    gelu_approximation(OP, approximate)?;
    check_linear_shapes(OP, x, weight)?;
    let mut others = vec![("weight", weight)];
    others.extend(bias.map(|b| ("bias", b)));
    check_same_dtype(OP, x, &others)?;
    if crate::amp::fp8::applies(x, weight) {
        return crate::shim::fp8_linear(OP, x, weight, bias, Some(approximate));
    }
    crate::shim::gelu_linear(OP, x, weight, bias, approximate)
}

/// Outside autocast, each of `others` must have `input`'s dtype (as libtorch's matmuls want);
/// under autocast they are converted to its compute dtype.
fn check_same_dtype(op: &str, input: &Tensor, others: &[(&str, &Tensor)]) -> Result<()> {
    let autocast = autocast_on(input.device()).is_some();
    match others.iter().find(|(_, t)| t.kind() != input.kind()) {
        Some((name, other)) if !autocast => Err(Error::invalid(
            op,
            format!(
                "input is {} but {name} is {} (convert one, or run under autocast)",
                dtype::name(input.kind()),
                dtype::name(other.kind())
            ),
        )),
        _ => Ok(()),
    }
}

/// `linear_cross_entropy`'s rows per chunk when none are given: on the `gpt` workload (a
/// 50 304-word vocabulary, bf16, one H200) 4 096 rows ran at the plain head's speed, 2 048 rows
/// 16 % slower, and the chunk's logits take 0.4 GB.
pub const LINEAR_CROSS_ENTROPY_CHUNK_ROWS: i64 = 4096;

/// `cross_entropy(input @ weight^T, targets)` in chunks of rows (a C++ autograd function,
/// shim/fused_loss.cpp, which checks shapes and values); dtypes are checked here, by their
/// names in this library.
pub fn linear_cross_entropy(
    input: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    ignore_index: i64,
    chunk_rows: i64,
) -> Result<Tensor> {
    const OP: &str = "linearCrossEntropy";
    let (ik, wk, tk) = (input.kind(), weight.kind(), targets.kind());
    if !dtype::is_floating(ik) || !dtype::is_floating(wk) {
        return Err(Error::invalid(
            OP,
            format!(
                "input and weight must be floating-point, got {} and {}",
                dtype::name(ik),
                dtype::name(wk)
            ),
        ));
    }
    if dtype::is_floating(tk) || tk == Kind::Bool {
        return Err(Error::invalid(
            OP,
            format!(
                "targets must hold class indices (an integer dtype), got {}",
                dtype::name(tk)
            ),
        ));
    }
    check_same_dtype(OP, input, &[("weight", weight)])?;
    crate::shim::linear_cross_entropy(input, weight, targets, ignore_index, chunk_rows)
}

/// Cross entropy between unnormalised `logits` (classes on dim 1, or dim 0 for one
/// sample) and `target`: class indices, or class probabilities of the logits' shape.
pub fn cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    reduction: Reduction,
    label_smoothing: f64,
    ignore_index: i64,
) -> Result<Tensor> {
    const OP: &str = "crossEntropy";
    let (ls, ts) = (logits.size(), target.size());
    if ls.is_empty() {
        return Err(Error::invalid(
            OP,
            "logits need at least one dimension (the classes), got a 0-d tensor",
        ));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::invalid(
            OP,
            format!("labelSmoothing must be in [0, 1], got {label_smoothing}"),
        ));
    }
    if dtype::is_floating(target.kind()) {
        if ts != ls {
            return Err(Error::invalid(
                OP,
                format!("target probabilities of shape {ts:?} must have the logits' shape {ls:?}"),
            ));
        }
    } else if matches!(
        target.kind(),
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Uint8 | Kind::Int8
    ) {
        let mut expected = ls.clone();
        expected.remove(if ls.len() == 1 { 0 } else { 1 });
        if ts != expected {
            return Err(Error::invalid(
                OP,
                format!(
                    "target of shape {ts:?} does not fit logits of shape {ls:?} (class indices need shape {expected:?})"
                ),
            ));
        }
    } else {
        return Err(Error::invalid(
            OP,
            format!(
                "target must hold class indices (an integer dtype) or probabilities (a float dtype), got {}",
                dtype::name(target.kind())
            ),
        ));
    }
    // libtorch's cross_entropy wants int64 class indices.
    let converted;
    let target = if dtype::is_floating(target.kind()) || target.kind() == Kind::Int64 {
        target
    } else {
        converted = target
            .f_to_kind(Kind::Int64)
            .map_err(|e| Error::torch(OP, vec![ts.clone()], e))?;
        &converted
    };
    // Class indices into a GPU's 2-d logits: one kernel and one autograd node.
    if logits.device().is_cuda() && ls.len() == 2 && label_smoothing == 0.0 && target.kind() == Kind::Int64 {
        if let Some(loss) = crate::shim::cross_entropy(logits, target, reduction, ignore_index)? {
            return Ok(loss);
        }
    }
    logits
        .f_cross_entropy_loss(target, None::<Tensor>, reduction, ignore_index, label_smoothing)
        .map_err(|e| Error::torch(OP, vec![ls, ts], e))
}

/// Mean squared error; `input` and `target` must have the same shape (no silent broadcasting).
pub fn mse_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    const OP: &str = "mseLoss";
    let (is, ts) = (input.size(), target.size());
    if is != ts {
        return Err(Error::invalid(
            OP,
            format!("input of shape {is:?} and target of shape {ts:?} differ; reshape one to match"),
        ));
    }
    input
        .f_mse_loss(target, reduction)
        .map_err(|e| Error::torch(OP, vec![is, ts], e))
}

pub fn softmax(x: &Tensor, dim: i64) -> Result<Tensor> {
    x.f_softmax(dim, None::<Kind>)
        .map_err(|e| Error::torch("softmax", shapes(&[x]), e))
}

pub fn log_softmax(x: &Tensor, dim: i64) -> Result<Tensor> {
    x.f_log_softmax(dim, None::<Kind>)
        .map_err(|e| Error::torch("logSoftmax", shapes(&[x]), e))
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.f_relu().map_err(|e| Error::torch("relu", shapes(&[x]), e))
}

/// Checks a GELU approximation name: `none` (exact, erf) or `tanh`.
pub fn gelu_approximation(op: &str, approximate: &str) -> Result<()> {
    match approximate {
        "none" | "tanh" => Ok(()),
        _ => Err(Error::invalid(
            op,
            format!("unknown approximate \"{approximate}\" (expected \"none\" or \"tanh\")"),
        )),
    }
}

pub fn gelu(x: &Tensor, approximate: &str) -> Result<Tensor> {
    gelu_approximation("gelu", approximate)?;
    x.f_gelu(approximate).map_err(|e| Error::torch("gelu", shapes(&[x]), e))
}

pub(crate) fn check_probability(op: &str, p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::invalid(
            op,
            format!("dropout probability must be in [0, 1], got {p}"),
        ))
    }
}

/// Zeroes elements with probability `p` and scales the rest by `1/(1-p)` when
/// `training`; otherwise returns `x` itself.
pub fn dropout(x: &Tensor, p: f64, training: bool) -> Result<Tensor> {
    dropout_as("dropout", x, p, training)
}

pub(crate) fn dropout_as(op: &str, x: &Tensor, p: f64, training: bool) -> Result<Tensor> {
    if !training || p == 0.0 {
        return Ok(x.shallow_clone());
    }
    check_probability(op, p)?;
    x.f_dropout(p, true).map_err(|e| Error::torch(op, shapes(&[x]), e))
}

/// libtorch's fused scaled dot-product attention (flash / memory-efficient kernels where available).
/// `q`, `k`, `v` are `[..., seq, head_dim]`; `mask` is boolean (true = attend) or additive.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    dropout_p: f64,
    is_causal: bool,
    scale: Option<f64>,
) -> Result<Tensor> {
    const OP: &str = "scaledDotProductAttention";
    if mask.is_some() && is_causal {
        return Err(Error::invalid(OP, "pass either attnMask or isCausal, not both"));
    }
    check_probability(OP, dropout_p)?;
    Tensor::f_scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal, scale, false).map_err(|e| {
        let mut all = vec![q, k, v];
        all.extend(mask);
        Error::torch(OP, shapes(&all), e)
    })
}

/// Convolution padding: explicit per-side amounts, or PyTorch's `same` / `valid`.
#[derive(Clone, Debug)]
pub enum Padding {
    Explicit(Vec<i64>),
    Same,
    Valid,
}

impl Padding {
    pub fn parse(op: &str, name: &str) -> Result<Padding> {
        match name {
            "same" => Ok(Padding::Same),
            "valid" => Ok(Padding::Valid),
            _ => Err(Error::invalid(
                op,
                format!("unknown padding \"{name}\" (expected a number, a pair, \"same\" or \"valid\")"),
            )),
        }
    }
}

/// 2-D convolution of `[N, C, H, W]` (or `[C, H, W]`) input.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    op: &str,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: &[i64],
    padding: &Padding,
    dilation: &[i64],
    groups: i64,
) -> Result<Tensor> {
    let result = match padding {
        Padding::Explicit(p) => x.f_conv2d(weight, bias, stride, p.as_slice(), dilation, groups),
        Padding::Same => x.f_conv2d_padding(weight, bias, stride, "same", dilation, groups),
        Padding::Valid => x.f_conv2d_padding(weight, bias, stride, "valid", dilation, groups),
    };
    result.map_err(|e| Error::torch(op, shapes(&[x, weight]), e))
}

pub fn max_pool2d(
    op: &str,
    x: &Tensor,
    kernel: &[i64],
    stride: &[i64],
    padding: &[i64],
    dilation: &[i64],
    ceil_mode: bool,
) -> Result<Tensor> {
    x.f_max_pool2d(kernel, stride, padding, dilation, ceil_mode)
        .map_err(|e| Error::torch(op, shapes(&[x]), e))
}

/// Rows of `weight` selected by integer `indices` (any shape; the result adds a last dim).
pub fn embedding(op: &str, weight: &Tensor, indices: &Tensor) -> Result<Tensor> {
    if !matches!(indices.kind(), Kind::Int64 | Kind::Int) {
        return Err(Error::invalid(
            op,
            format!(
                "indices must be int64 or int32, got {} (shape {:?})",
                dtype::name(indices.kind()),
                indices.size()
            ),
        ));
    }
    Tensor::f_embedding(weight, indices, -1, false, false).map_err(|e| Error::torch(op, shapes(&[indices, weight]), e))
}

/// Normalises over the trailing dims given by `shape`, then applies the optional affine.
pub fn layer_norm(
    op: &str,
    x: &Tensor,
    shape: &[i64],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let xs = x.size();
    if xs.len() < shape.len() || xs[xs.len() - shape.len()..] != *shape {
        return Err(Error::invalid(
            op,
            format!("input of shape {xs:?} does not end with the normalized shape {shape:?}"),
        ));
    }
    if x.device().is_cuda() {
        return crate::shim::cuda_layer_norm(op, x, shape, weight, bias, eps);
    }
    x.f_layer_norm(shape, weight, bias, eps, true)
        .map_err(|e| Error::torch(op, vec![xs], e))
}

/// `(sum, normed)`: `sum = residual + x` and `normed = layer_norm(sum)` over the last
/// dimension (`weight` and `bias` of its width, or none), as a pre-LayerNorm transformer
/// computes between sublayers; under autocast `normed` is in autocast's dtype (the Linear it
/// feeds would convert it). On a GPU one kernel does the add and the LayerNorm, and one their
/// backward (shim/layer_norm.cpp).
pub fn add_layer_norm(
    residual: &Tensor,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "addLayerNorm";
    let (rs, xs) = (residual.size(), x.size());
    if rs != xs {
        return Err(Error::invalid(
            OP,
            format!("residual of shape {rs:?} and x of shape {xs:?} differ"),
        ));
    }
    let Some(&width) = xs.last() else {
        return Err(Error::invalid(OP, "x must have at least one dimension"));
    };
    for (name, t) in [("residual", residual), ("x", x)] {
        if !t.is_floating_point() {
            return Err(Error::invalid(
                OP,
                format!("{name} must be floating point, got {}", dtype::name(t.kind())),
            ));
        }
    }
    if residual.device() != x.device() {
        return Err(Error::invalid(
            OP,
            format!(
                "residual is on {} but x on {}",
                crate::device::name(residual.device()),
                crate::device::name(x.device())
            ),
        ));
    }
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if let Some(t) = t {
            if t.size() != [width] {
                return Err(Error::invalid(
                    OP,
                    format!("{name} of shape {:?} does not match the width {width}", t.size()),
                ));
            }
        }
    }
    crate::shim::add_layer_norm(OP, residual, x, weight, bias, eps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn close(a: &Tensor, b: &[f32]) -> bool {
        let b = Tensor::from_slice(b).reshape(a.size());
        a.allclose(&b, 1e-5, 1e-6, false)
    }

    #[test]
    fn cross_entropy_matches_pytorch() -> Result<()> {
        // torch.nn.functional.cross_entropy(torch.tensor([[1.,2.,3.],[1.,0.,-1.]]), torch.tensor([2,0]),
        //     label_smoothing=0.1) -> 0.5076059103012085; without smoothing -> 0.40760594606399536
        let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 1.0, 0.0, -1.0]).reshape([2, 3]);
        let target = Tensor::from_slice(&[2i64, 0]);
        let plain = cross_entropy(&logits, &target, Reduction::Mean, 0.0, -100)?;
        assert!(close(&plain, &[0.407_605_95]));
        let smooth = cross_entropy(&logits, &target, Reduction::Mean, 0.1, -100)?;
        assert!(close(&smooth, &[0.507_605_9]));
        Ok(())
    }

    #[test]
    fn cross_entropy_names_a_wrong_target_length() {
        let logits = Tensor::zeros([4, 10], (Kind::Float, Device::Cpu));
        let target = Tensor::zeros([5], (Kind::Int64, Device::Cpu));
        let err = cross_entropy(&logits, &target, Reduction::Mean, 0.0, -100)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "crossEntropy: target of shape [5] does not fit logits of shape [4, 10] (class indices need shape [4])"
            )
        );
    }

    #[test]
    fn linear_names_both_shapes() {
        let x = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let w = Tensor::zeros([5, 4], (Kind::Float, Device::Cpu));
        let err = linear(&x, &w, None).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("linear: input of shape [2, 3] does not fit weight of shape [5, 4] (the input's last dimension must be 4)")
        );
    }

    #[test]
    fn dropout_is_identity_in_eval() -> Result<()> {
        let _rng = crate::nn::rng_lock();
        let x = Tensor::ones([100], (Kind::Float, Device::Cpu));
        assert!(dropout(&x, 0.5, false)?.equal(&x));
        let y = dropout(&x, 0.5, true)?;
        let zeros = y.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        assert!(zeros > 20 && zeros < 80, "{zeros}");
        assert!(dropout(&x, 1.5, true).is_err());
        Ok(())
    }
}
