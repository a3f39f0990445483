//! Safe wrappers over the C++ shim in `shim/` (libtorch APIs that tch does not bind).

use crate::{Error, Result};
use std::ffi::CStr;
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn acc_last_error() -> *const std::os::raw::c_char;
    fn acc_cpu_rng_state(out: *mut *mut C_tensor) -> i32;
    fn acc_set_cpu_rng_state(state: *const C_tensor) -> i32;
    fn acc_cuda_rng_state(index: i64, out: *mut *mut C_tensor) -> i32;
    fn acc_set_cuda_rng_state(index: i64, state: *const C_tensor) -> i32;
    fn acc_backward(output: *const C_tensor, gradient: *const C_tensor) -> i32;
    fn acc_reset_grad_accumulators(tensors: *const *const C_tensor, n: i32) -> i32;
    fn acc_host_bytes(tensor: *const C_tensor) -> i64;
    fn acc_storage_missing(tensor: *const C_tensor) -> i32;
    fn acc_set_cuda_kernels(kernels: *const std::ffi::c_void);
    fn acc_fp8_state(weight: *const C_tensor, out: *mut *mut C_tensor) -> i32;
    fn acc_fp8_state_columns() -> i64;
    fn acc_set_fp8_state(weight: *const C_tensor, state: *const C_tensor) -> i32;
    fn acc_fp8_pass(next: i32, previous: *mut i32) -> i32;
    fn acc_fp8_linear(
        input: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        gelu: *const std::os::raw::c_char,
        out: *mut *mut C_tensor,
    ) -> i32;
    fn acc_layer_norm(
        input: *const C_tensor,
        shape: *const i64,
        shape_len: i32,
        weight: *const C_tensor,
        bias: *const C_tensor,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> i32;
    fn acc_add_layer_norm(
        residual: *const C_tensor,
        x: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        eps: f64,
        out_sum: *mut *mut C_tensor,
        out_normed: *mut *mut C_tensor,
    ) -> i32;
    fn acc_cast_ahead(tensors: *const *const C_tensor, n: i64) -> i32;
    fn acc_forget_kept_casts();
    fn acc_linear_chain(
        input: *const C_tensor,
        weights: *const *const C_tensor,
        biases: *const *const C_tensor,
        relu: *const i32,
        n: i64,
        float32_output: i32,
        out: *mut *mut C_tensor,
    ) -> i32;
    fn acc_autocast_linear(
        input: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> i32;
    fn acc_gelu_linear(
        input: *const C_tensor,
        weight: *const C_tensor,
        bias: *const C_tensor,
        approximate: *const std::os::raw::c_char,
        out: *mut *mut C_tensor,
    ) -> i32;
    fn acc_cross_entropy(
        logits: *const C_tensor,
        targets: *const C_tensor,
        reduction: i64,
        ignore_index: i64,
        out: *mut *mut C_tensor,
    ) -> i32;
    fn acc_linear_cross_entropy(
        input: *const C_tensor,
        weight: *const C_tensor,
        targets: *const C_tensor,
        ignore_index: i64,
        chunk_rows: i64,
        out: *mut *mut C_tensor,
    ) -> i32;
}

/// Bytes of host memory `tensor` holds (0 for a tensor on a GPU).
pub fn host_bytes(tensor: &Tensor) -> i64 {
    // SAFETY: a live tensor; the shim function cannot throw.
    unsafe { acc_host_bytes(tensor.as_ptr()) }
}

/// Whether `tensor` has elements but no storage (a parameter ZeRO stage 3 released, or a view of one).
pub fn storage_missing(tensor: &Tensor) -> bool {
    // SAFETY: a live tensor; the shim function cannot throw.
    unsafe { acc_storage_missing(tensor.as_ptr()) != 0 }
}

/// Accumulates gradients of `output` into the leaves; a non-scalar `output` needs a `gradient` of its shape.
pub fn backward(op: &str, output: &Tensor, gradient: Option<&Tensor>) -> Result<()> {
    let gradient = gradient.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: live tensors (or null) for the duration of the call.
    check(op, unsafe { acc_backward(output.as_ptr(), gradient) })
}

/// Forgets the cached gradient accumulators of `tensors` (parameters): the next backward makes
/// new ones on its own stream (compileStep captures on a side stream).
pub fn reset_grad_accumulators(op: &str, tensors: &[&Tensor]) -> Result<()> {
    let ptrs: Vec<*const C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
    let n = i32::try_from(ptrs.len()).map_err(|_| Error::invalid(op, "too many tensors"))?;
    // SAFETY: live tensors for the duration of the call.
    check(op, unsafe { acc_reset_grad_accumulators(ptrs.as_ptr(), n) })
}

/// Turns a shim status code into a Result, reading the shim's last error message.
pub(crate) fn check(op: &str, status: i32) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated message.
    let message = unsafe { CStr::from_ptr(acc_last_error()) }.to_string_lossy();
    let detail = message.lines().next().unwrap_or("").to_string();
    Err(Error::invalid(op, detail))
}

/// Takes ownership of a tensor the shim allocated.
pub(crate) fn owned(op: &str, status: i32, ptr: *mut C_tensor) -> Result<Tensor> {
    check(op, status)?;
    if ptr.is_null() {
        return Err(Error::invalid(op, "the C++ shim returned no tensor"));
    }
    // SAFETY: on success the shim stored a fresh heap at::Tensor, which tch now owns.
    Ok(unsafe { Tensor::from_ptr(ptr) })
}

/// `cross_entropy_loss(logits, targets, reduction, ignore_index)` as one autograd node around
/// one kernel (shim/cross_entropy.cpp), or `None` where the kernel does not take these tensors
/// (not 2-d bf16 or float32 logits on a GPU with int64 targets there; no CUDA side).
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    reduction: tch::Reduction,
    ignore_index: i64,
) -> Result<Option<Tensor>> {
    crate::cuda::register_kernels_for(logits);
    let mut out = std::ptr::null_mut();
    // SAFETY: live tensors for the call; `out` is a valid out-pointer.
    let status = unsafe {
        acc_cross_entropy(
            logits.as_ptr(),
            targets.as_ptr(),
            reduction.to_int(),
            ignore_index,
            &mut out,
        )
    };
    check("crossEntropy", status)?;
    // SAFETY: a non-null `out` is a fresh heap at::Tensor from the shim, which tch now owns.
    Ok((!out.is_null()).then(|| unsafe { Tensor::from_ptr(out) }))
}

/// The mean cross-entropy of `input @ weight^T` against class indices `targets`, computed
/// `chunk_rows` rows at a time (shim/fused_loss.cpp), with its own backward.
pub fn linear_cross_entropy(
    input: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    ignore_index: i64,
    chunk_rows: i64,
) -> Result<Tensor> {
    crate::cuda::register_kernels_for(input);
    let mut out = std::ptr::null_mut();
    // SAFETY: live tensors for the call; `out` is a valid out-pointer.
    let status = unsafe {
        acc_linear_cross_entropy(
            input.as_ptr(),
            weight.as_ptr(),
            targets.as_ptr(),
            ignore_index,
            chunk_rows,
            &mut out,
        )
    };
    owned("linearCrossEntropy", status, out)
}

/// `input @ weight^T + bias` with fp8 matmuls (shim/fp8.cpp), of `gelu(input, approximate)`
/// when `gelu` is `Some(approximate)`; every matmul dimension must be a multiple of 16
/// (`amp::fp8::fits`).
pub fn fp8_linear(
    op: &str,
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    gelu: Option<&str>,
) -> Result<Tensor> {
    crate::cuda::register_kernels_for(input);
    let gelu = gelu
        .map(std::ffi::CString::new)
        .transpose()
        .map_err(|_| Error::invalid(op, "the GELU approximation contains a NUL byte"))?;
    let mut out = std::ptr::null_mut();
    let bias = bias.map_or(std::ptr::null(), Tensor::as_ptr);
    let gelu_ptr = gelu.as_ref().map_or(std::ptr::null(), |g| g.as_ptr());
    // SAFETY: live tensors (or null for the bias), a NUL-terminated string (or null) for the
    // call; `out` is a valid out-pointer.
    let status = unsafe { acc_fp8_linear(input.as_ptr(), weight.as_ptr(), bias, gelu_ptr, &mut out) };
    owned(op, status, out)
}

/// `layer_norm` on a GPU: the CUDA side's kernels where they apply, else ATen's (shim/layer_norm.cpp).
pub fn cuda_layer_norm(
    op: &str,
    input: &Tensor,
    shape: &[i64],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    crate::cuda::register_kernels();
    let mut out = std::ptr::null_mut();
    let weight = weight.map_or(std::ptr::null(), Tensor::as_ptr);
    let bias = bias.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: live tensors (or nulls), a slice valid for the call, and a valid out-pointer.
    let status = unsafe {
        acc_layer_norm(
            input.as_ptr(),
            shape.as_ptr(),
            shape.len() as i32,
            weight,
            bias,
            eps,
            &mut out,
        )
    };
    owned(op, status, out)
}

/// `(residual + x, layer_norm(residual + x))` over the last dimension, the second in
/// autocast's dtype under autocast: the CUDA side's fused kernels where they apply, else
/// ATen's operations (shim/layer_norm.cpp).
pub fn add_layer_norm(
    op: &str,
    residual: &Tensor,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    crate::cuda::register_kernels_for(x);
    let (mut sum, mut normed) = (std::ptr::null_mut(), std::ptr::null_mut());
    let weight = weight.map_or(std::ptr::null(), Tensor::as_ptr);
    let bias = bias.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: live tensors (or nulls) for the call, and valid out-pointers.
    let status = unsafe { acc_add_layer_norm(residual.as_ptr(), x.as_ptr(), weight, bias, eps, &mut sum, &mut normed) };
    // On failure neither is set; on success both are (owned takes each one's ownership).
    let sum = owned(op, status, sum)?;
    Ok((sum, owned(op, status, normed)?))
}

/// Converts `tensors` (weights, biases, inputs) ahead for the linear layers of the current
/// autocast region (shim/linear.cpp).
pub fn cast_ahead(tensors: &[&Tensor]) -> Result<()> {
    if let Some(first) = tensors.first() {
        crate::cuda::register_kernels_for(first);
    }
    let pointers: Vec<*const C_tensor> = tensors.iter().map(|t| t.as_ptr()).collect();
    let n = i64::try_from(pointers.len()).map_err(|_| Error::invalid("linear", "too many tensors"))?;
    // SAFETY: `pointers` holds live tensors borrowed for the call, and `n` is its length.
    let status = unsafe { acc_cast_ahead(pointers.as_ptr(), n) };
    check("linear", status)
}

/// Releases the conversions that chains of layers keep from one call to the next
/// (shim/casts.cpp), on this thread.
pub fn forget_kept_casts() {
    // SAFETY: plain call without arguments; it cannot fail.
    unsafe { acc_forget_kept_casts() }
}

/// Linear layers (`relu[i]`: a ReLU follows layer i) run as one autograd node
/// (shim/linear_chain.cpp); a half-precision output as float32 if `float32_output`.
pub fn linear_chain(
    op: &str,
    input: &Tensor,
    weights: &[&Tensor],
    biases: &[Option<&Tensor>],
    relu: &[bool],
    float32_output: bool,
) -> Result<Tensor> {
    let n = weights.len();
    if biases.len() != n || relu.len() != n {
        return Err(Error::invalid(
            op,
            "a chain needs a bias slot and a ReLU flag per layer",
        ));
    }
    crate::cuda::register_kernels_for(input);
    let weights: Vec<*const C_tensor> = weights.iter().map(|t| t.as_ptr()).collect();
    let biases: Vec<*const C_tensor> = biases
        .iter()
        .map(|b| b.map_or(std::ptr::null(), Tensor::as_ptr))
        .collect();
    let relu: Vec<i32> = relu.iter().map(|&r| i32::from(r)).collect();
    let mut out = std::ptr::null_mut();
    // SAFETY: live tensors (or nulls for absent biases) borrowed for the call, three arrays of
    // length `n`, and a valid out-pointer.
    let status = unsafe {
        acc_linear_chain(
            input.as_ptr(),
            weights.as_ptr(),
            biases.as_ptr(),
            relu.as_ptr(),
            n as i64,
            i32::from(float32_output),
            &mut out,
        )
    };
    owned(op, status, out)
}

/// `input @ weight^T + bias` under autocast, its parameters' gradients made in their dtype
/// (shim/linear.cpp).
pub fn autocast_linear(op: &str, input: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    let bias = bias.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: live tensors (or null for the bias) for the call; `out` is a valid out-pointer.
    let status = unsafe { acc_autocast_linear(input.as_ptr(), weight.as_ptr(), bias, &mut out) };
    owned(op, status, out)
}

/// `linear(gelu(input), weight, bias)` whose backward recomputes the GELU (shim/gelu_linear.cpp).
pub fn gelu_linear(
    op: &str,
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    approximate: &str,
) -> Result<Tensor> {
    let approximate = std::ffi::CString::new(approximate)
        .map_err(|_| Error::invalid(op, "approximate must not contain a NUL character"))?;
    let mut out = std::ptr::null_mut();
    let bias = bias.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: live tensors (or null for the bias) and a NUL-terminated string for the call;
    // `out` is a valid out-pointer.
    let status = unsafe { acc_gelu_linear(input.as_ptr(), weight.as_ptr(), bias, approximate.as_ptr(), &mut out) };
    owned(op, status, out)
}

/// The number of columns of an fp8 state (`fp8_state`).
pub fn fp8_state_columns() -> i64 {
    // SAFETY: a constant; the function takes nothing and cannot fail.
    unsafe { acc_fp8_state_columns() }
}

/// The fp8 amax histories of the Linear layer whose weight is `weight` (shim/fp8.cpp), a
/// float32 `[3, fp8_state_columns()]` CPU tensor, or an empty one when it has none (it never
/// ran in fp8).
pub fn fp8_state(weight: &Tensor) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    // SAFETY: a live tensor for the call; `out` is a valid out-pointer.
    let status = unsafe { acc_fp8_state(weight.as_ptr(), &mut out) };
    owned("fp8State", status, out)
}

/// Restores what `fp8_state` returned for `weight`.
pub fn set_fp8_state(weight: &Tensor, state: &Tensor) -> Result<()> {
    // SAFETY: live tensors for the duration of the call.
    check("setFp8State", unsafe {
        acc_set_fp8_state(weight.as_ptr(), state.as_ptr())
    })
}

/// Which forward passes follow for activation checkpointing under fp8 (shim/fp8.cpp's Pass: 0
/// plain, 1 a checkpointed module's first pass, 2 its recomputation); returns the previous.
pub fn fp8_pass(next: i32) -> Result<i32> {
    let mut previous = 0;
    // SAFETY: `previous` is a valid out-pointer for the call.
    check("fp8Pass", unsafe { acc_fp8_pass(next, &mut previous) })?;
    Ok(previous)
}

/// The default CPU generator's state (a uint8 tensor).
pub fn cpu_rng_state() -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    // SAFETY: `out` is a valid out-pointer.
    let status = unsafe { acc_cpu_rng_state(&mut out) };
    owned("cpuRngState", status, out)
}

pub fn set_cpu_rng_state(state: &Tensor) -> Result<()> {
    // SAFETY: `state` is a live tensor for the duration of the call.
    check("setCpuRngState", unsafe { acc_set_cpu_rng_state(state.as_ptr()) })
}

pub fn cuda_rng_state(index: usize) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    // SAFETY: `out` is a valid out-pointer.
    let status = unsafe { acc_cuda_rng_state(index as i64, &mut out) };
    owned("cudaRngState", status, out)
}

pub fn set_cuda_rng_state(index: usize, state: &Tensor) -> Result<()> {
    // SAFETY: `state` is a live tensor for the duration of the call.
    check("setCudaRngState", unsafe {
        acc_set_cuda_rng_state(index as i64, state.as_ptr())
    })
}

/// Hands the shim the CUDA side's table of kernels (`acc::CudaKernels`).
///
/// # Safety
/// `kernels` must point at a table that lives for the rest of the process.
pub(crate) unsafe fn set_cuda_kernels(kernels: *const std::ffi::c_void) {
    // SAFETY: the caller guarantees the table outlives every use.
    unsafe { acc_set_cuda_kernels(kernels) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rng_state_round_trips() -> Result<()> {
        let _rng = crate::nn::rng_lock();
        tch::manual_seed(7);
        let state = cpu_rng_state()?;
        let first = Tensor::randn([4], (tch::Kind::Float, tch::Device::Cpu));
        set_cpu_rng_state(&state)?;
        let again = Tensor::randn([4], (tch::Kind::Float, tch::Device::Cpu));
        assert!(first.equal(&again));
        Ok(())
    }
}
