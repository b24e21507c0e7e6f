#!/usr/bin/env bash
# The test command: installs what is missing (as scripts/setup.sh does, SLURM included), then runs
# every test of the workspace. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps-only --with-slurm
# Two cores: cargo runs two tests at a time, each with one libtorch/OpenMP thread.
export OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1
cargo test --workspace --no-run
# The real-SLURM test (tests/slurm.rs) mostly waits for SLURM's one-minute time limits: it runs beside
# the rest of the suite rather than after it, its output printed at the end.
slurm_log=$(mktemp)
trap 'rm -f "$slurm_log"' EXIT
cargo test --test slurm >"$slurm_log" 2>&1 &
slurm_pid=$!
rc=0
cargo test --workspace --no-fail-fast -- --skip on_a_real_slurm || rc=$?
slurm_rc=0
wait "$slurm_pid" || slurm_rc=$?
echo "--- tests/slurm.rs (run beside the others)"
cat "$slurm_log"
[ "$rc" -ne 0 ] && exit "$rc"
exit "$slurm_rc"
