//! Job rendering for clusters (SLURM on Frontier and CUDA clusters, `mpirun` locally), segment chains
//! and sweeps. Knows configs and the CLI, never libtorch. Filled by the launch issue.
