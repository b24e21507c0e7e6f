//! Safe wrappers over `model/csrc/shim.cpp`: the libtorch calls tch 0.24 does not expose.

use anyhow::{bail, Result};
use std::ffi::{c_char, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn muninn_set_grad(t: *mut C_tensor, g: *mut C_tensor) -> *mut c_char;
    fn muninn_grad_mode_enabled() -> bool;
    fn muninn_cpu_alloc_reset(threshold: u64);
    fn muninn_cpu_alloc_stats(out: *mut u64);
}

/// Makes `g` the `.grad` of the leaf `t`: autograd then accumulates `t`'s gradients into `g` in
/// place (`g` may alias a range of a larger buffer). Shape, dtype and device must match.
pub fn set_grad(t: &Tensor, g: &Tensor) -> Result<()> {
    // SAFETY: both are live tensors; the shim only reads `g` and rebinds `t`'s grad slot, and
    // catches every C++ exception, returning it as a malloc'd string.
    let err = unsafe { muninn_set_grad(t.as_ptr() as *mut C_tensor, g.as_ptr() as *mut C_tensor) };
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
