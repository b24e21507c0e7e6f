//! The training loop and its stateful parts (depth sampler, optimizer, checkpointer, metrics,
//! data-parallel communication) and the device choice every command shares.

pub mod ckpt;
pub mod config;
pub mod dist;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod sampler;
pub mod schedule;
pub mod train;

use anyhow::{bail, Result};
use tch::Device;

/// `cpu`, `cuda`, `cuda:N`, or `auto` (the first GPU if libtorch sees one, else the CPU). ROCm builds
/// of libtorch expose AMD GPUs as `cuda` too.
pub fn parse_device(spec: &str) -> Result<Device> {
    Ok(match spec {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" | "gpu" => require_cuda(0)?,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => require_cuda(i)?,
            _ => bail!("unknown device `{spec}` (expected auto, cpu, cuda or cuda:N)"),
        },
    })
}

fn require_cuda(i: usize) -> Result<Device> {
    let n = tch::Cuda::device_count() as usize;
    if i >= n {
        bail!("device cuda:{i} requested but libtorch sees {n} GPU(s)");
    }
    Ok(Device::Cuda(i))
}
