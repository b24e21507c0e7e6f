//! Safe wrappers over `model/csrc/shim.cpp`: the libtorch calls tch 0.24 does not expose.

use anyhow::{bail, Result};
use std::ffi::{c_char, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn muninn_set_grad(t: *mut C_tensor, g: *mut C_tensor) -> *mut c_char;
    fn muninn_backward(t: *mut C_tensor, g: *mut C_tensor) -> *mut c_char;
    fn muninn_grad_mode_enabled() -> bool;
    fn muninn_cpu_alloc_reset(threshold: u64);
    fn muninn_cpu_alloc_stats(out: *mut u64);
    fn muninn_fused_adamw(
        p: *const *mut C_tensor,
        g: *const *mut C_tensor,
        m: *const *mut C_tensor,
        v: *const *mut C_tensor,
        n: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        step: i64,
    ) -> *mut c_char;
    fn muninn_cuda_memory(index: i64, out: *mut i64) -> *mut c_char;
    fn muninn_profiler_start() -> *mut c_char;
    fn muninn_rms_norm(
        x: *mut C_tensor,
        w: *mut C_tensor,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn muninn_rope(
        x: *mut C_tensor,
        cos: *mut C_tensor,
        sin: *mut C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn muninn_profiler_stop(path: *const c_char) -> *mut c_char;
}

/// The shim's error string as a Result.
fn check(err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a NUL-terminated string from malloc, ours to free.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { libc::free(err.cast()) };
    bail!("{msg}")
}

fn ptrs(ts: &[Tensor]) -> Vec<*mut C_tensor> {
    ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
}

/// Makes `g` the `.grad` of the leaf `t`: autograd then accumulates `t`'s gradients into `g` in
/// place (`g` may alias a range of a larger buffer). Shape, dtype and device must match.
pub fn set_grad(t: &Tensor, g: &Tensor) -> Result<()> {
    // SAFETY: both are live tensors; the shim only reads `g` and rebinds `t`'s grad slot, and
    // catches every C++ exception, returning it as a malloc'd string.
    check(unsafe { muninn_set_grad(t.as_ptr() as *mut C_tensor, g.as_ptr() as *mut C_tensor) })
}

/// Backpropagates `grad` (shaped like `t`) through `t`'s graph: `torch.autograd.backward(t, grad)`,
/// the vector-Jacobian product without a `(t * grad).sum()` surrogate and its extra passes.
pub fn backward(t: &Tensor, grad: &Tensor) -> Result<()> {
    // SAFETY: two live tensors; exceptions (shape mismatch, no graph) come back as a string.
    check(unsafe { muninn_backward(t.as_ptr() as *mut C_tensor, grad.as_ptr() as *mut C_tensor) })
}

/// One step of `torch.optim.AdamW(fused=True)` over the tensors `p` (updated in place, with their
/// gradients `g` and moments `m`, `v`, all the same shapes), at 1-based step `step`.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    p: &[Tensor],
    g: &[Tensor],
    m: &[Tensor],
    v: &[Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
    step: u64,
) -> Result<()> {
    anyhow::ensure!(
        p.len() == g.len() && p.len() == m.len() && p.len() == v.len(),
        "fused_adamw: lists of different lengths"
    );
    let (pp, gp, mp, vp) = (ptrs(p), ptrs(g), ptrs(m), ptrs(v));
    // SAFETY: four arrays of p.len() live tensor handles; the kernel writes p, m, v in place.
    check(unsafe {
        muninn_fused_adamw(
            pp.as_ptr(),
            gp.as_ptr(),
            mp.as_ptr(),
            vp.as_ptr(),
            p.len() as i64,
            lr,
            betas.0,
            betas.1,
            weight_decay,
            eps,
            step as i64,
        )
    })
}

/// A GPU's caching-allocator memory, bytes (aggregated over its pools).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub allocated: i64,
    pub peak_allocated: i64,
    pub reserved: i64,
    pub peak_reserved: i64,
}

/// libtorch's CUDA (or ROCm) caching-allocator statistics of GPU `index` (peaks since the process
/// started). An error where libtorch has no CUDA allocator (a CPU build).
pub fn cuda_memory(index: usize) -> Result<DeviceMemory> {
    let mut out = [0i64; 4];
    // SAFETY: the shim writes four i64 and catches C++ exceptions.
    check(unsafe { muninn_cuda_memory(index as i64, out.as_mut_ptr()) })?;
    Ok(DeviceMemory {
        allocated: out[0],
        peak_allocated: out[1],
        reserved: out[2],
        peak_reserved: out[3],
    })
}

/// Whether autograd records operations on this thread (false inside `tch::no_grad`).
pub fn grad_mode_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { muninn_grad_mode_enabled() }
}

/// libtorch's CPU allocations as counted by the shim's wrapper allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuAllocStats {
    /// Bytes allocated now (of what was allocated since the first reset).
    pub current: u64,
    /// The most allocated at once since the last reset.
    pub peak: u64,
    /// Allocations of at least the reset's threshold since the last reset.
    pub large: u64,
}

/// Routes libtorch's CPU allocations through a counter (from the first call on, for the rest of the
/// process) and resets it: the peak restarts from what is allocated now, and allocations of at least
/// `threshold` bytes are counted from zero. Memory allocated before the first call is not seen.
pub fn cpu_alloc_reset(threshold: u64) {
    // SAFETY: installs (once) and resets atomics.
    unsafe { muninn_cpu_alloc_reset(threshold) }
}

pub fn cpu_alloc_stats() -> CpuAllocStats {
    let mut out = [0u64; 3];
    // SAFETY: the shim writes exactly three u64.
    unsafe { muninn_cpu_alloc_stats(out.as_mut_ptr()) };
    CpuAllocStats {
        current: out[0],
        peak: out[1],
        large: out[2],
    }
}

/// Starts libtorch's operator profiler (what `torch.profiler` records on the CPU).
pub fn profiler_start() -> Result<()> {
    // SAFETY: no arguments; exceptions come back as a string.
    check(unsafe { muninn_profiler_start() })
}

/// Stops the profiler and writes what it recorded to `path` as a Chrome trace (open in Perfetto).
pub fn profiler_stop(path: &std::path::Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path that outlives the call.
    check(unsafe { muninn_profiler_stop(c.as_ptr()) })
}

/// A tensor the shim created with `new at::Tensor(...)`, now owned by tch.
fn take_out(err: *mut c_char, out: *mut C_tensor) -> Result<Tensor> {
    check(err)?;
    // SAFETY: on success the shim stored a fresh heap-allocated tensor handle, ours alone.
    Ok(unsafe { Tensor::from_ptr(out) })
}

fn raw(t: &Tensor) -> *mut C_tensor {
    t.as_ptr() as *mut C_tensor
}

/// Whether [`rms_norm`] and [`rope`] take this tensor: fp32 on the CPU.
pub fn fused_kernels_take(t: &Tensor) -> bool {
    t.device() == tch::Device::Cpu && t.kind() == tch::Kind::Float
}

/// RMSNorm as one fused CPU kernel each way (`kernels.cpp`): x [..., d] contiguous fp32, w [d].
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    // SAFETY: live tensors in; the shim checks dtypes, devices and shapes before touching data.
    take_out(
        unsafe { muninn_rms_norm(raw(x), raw(w), eps, &mut out) },
        out,
    )
}

/// Interleaved-pair RoPE as one fused CPU kernel each way (`kernels.cpp`): x [B, T, H, hd] fp32
/// with a contiguous last dimension, cos/sin [T, hd/2] or [B, T, hd/2]. Returns a contiguous tensor.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    // SAFETY: as rms_norm.
    take_out(
        unsafe { muninn_rope(raw(x), raw(cos), raw(sin), &mut out) },
        out,
    )
}
