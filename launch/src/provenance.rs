//! What a launch records so that a run can be reproduced and debugged: the binary (its path, hash
//! and source commit), the command, and the environment variables that decide how ranks talk.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Prefixes of the variables recorded at launch and by every segment (MPI, NCCL/RCCL, libfabric,
/// MIOpen, ROCm/CUDA device selection, threads, the library path, SLURM's job facts).
pub const ENV_PREFIXES: [&str; 15] = [
    "SLURM_",
    "MPICH_",
    "OMPI_",
    "PMI_",
    "PMIX_",
    "NCCL_",
    "RCCL_",
    "FI_",
    "MIOPEN_",
    "HSA_",
    "HIP_",
    "ROCR_",
    "CUDA_",
    "OMP_",
    "LD_LIBRARY_PATH=",
];

/// The recorded variables of this process's environment.
pub fn env_snapshot() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            let kv = format!("{k}=");
            ENV_PREFIXES.iter().any(|p| kv.starts_with(p))
        })
        .collect()
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

#[derive(Debug, Serialize)]
pub struct Provenance {
    pub muninn_version: String,
    /// The commit the binary was built from, with "-dirty" if the tree had changes.
    pub git_commit: String,
    pub binary: String,
    pub binary_sha256: String,
    pub command: Vec<String>,
    pub workdir: String,
    pub cluster: String,
    pub cluster_profile: String,
    pub nodes: u32,
    pub ranks: u32,
    pub hours_per_segment: Option<f64>,
    pub segments: u32,
    pub launched_unix_s: u64,
    pub env: BTreeMap<String, String>,
}
