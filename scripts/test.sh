#!/usr/bin/env bash
# The test command: installs what is missing (as scripts/setup.sh does), then runs every test of the
# workspace. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps-only
# Two cores: cargo runs two tests at a time, each with one libtorch/OpenMP thread.
export OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1
cargo test --workspace --no-fail-fast
