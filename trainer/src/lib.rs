//! The training loop and its stateful parts (depth sampler, optimizer, checkpointer, metrics,
//! data-parallel communication) and the device choice every command shares.

pub mod ckpt;
pub mod config;
pub mod dist;
pub mod eval;
pub mod metrics;
pub mod optim;
pub use muninn_model::sampler;
pub mod schedule;
pub mod train;

use anyhow::{bail, Result};
use tch::Device;

/// `cpu`, `cuda`, `cuda:N`, or `auto` (the first GPU if libtorch sees one, else the CPU). ROCm builds
/// of libtorch expose AMD GPUs as `cuda` too.
pub fn parse_device(spec: &str) -> Result<Device> {
    spec.parse::<DeviceSpec>()?.resolve()
}

/// Where to run, as configs and flags spell it: `auto` (the GPU when there is one), `cpu`, `cuda`
/// (or `gpu`: the first GPU) and `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    Auto,
    Cpu,
    /// A GPU; `None` is the first (or, with several ranks, the local rank's).
    Cuda(Option<usize>),
}

impl DeviceSpec {
    /// The device, once libtorch confirms the GPU exists.
    pub fn resolve(self) -> Result<Device> {
        Ok(match self {
            DeviceSpec::Auto => Device::cuda_if_available(),
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(i) => require_cuda(i.unwrap_or(0))?,
        })
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = anyhow::Error;
    fn from_str(spec: &str) -> Result<Self> {
        Ok(match spec {
            "auto" => DeviceSpec::Auto,
            "cpu" => DeviceSpec::Cpu,
            "cuda" | "gpu" => DeviceSpec::Cuda(None),
            s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => DeviceSpec::Cuda(Some(i)),
                _ => bail!("unknown device `{spec}` (expected auto, cpu, cuda or cuda:N)"),
            },
        })
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        match d {
            DeviceSpec::Auto => "auto".into(),
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Cuda(None) => "cuda".into(),
            DeviceSpec::Cuda(Some(i)) => format!("cuda:{i}"),
        }
    }
}

fn require_cuda(i: usize) -> Result<Device> {
    let n = tch::Cuda::device_count() as usize;
    if i >= n {
        bail!("device cuda:{i} requested but libtorch sees {n} GPU(s)");
    }
    Ok(Device::Cuda(i))
}
