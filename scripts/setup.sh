#!/usr/bin/env bash
# Installs what Muninn needs on a fresh Debian machine that has Rust, Python and apt, then builds.
# Idempotent: a second run only checks and builds.
#
# libtorch: if LIBTORCH or LIBTORCH_USE_PYTORCH is set (a cluster's ROCm/CUDA libtorch), that is used
# and nothing is installed. Otherwise torch==2.11.0 from PyPI goes into the project-local .venv and
# .venv/libtorch points at it; .cargo/config.toml hands that path to tch's build script.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
log() { printf 'setup: %s\n' "$*" >&2; }

# --- system packages (C/C++ toolchain for tch's shim) ------------------------------------------
need_apt=()
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
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
  torch_dir=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
  ln -sfn "$torch_dir" .venv/libtorch
  log "libtorch: .venv/libtorch -> $torch_dir"
fi

# --- build ---------------------------------------------------------------------------------------
log "building (cargo build --release)"
cargo build --release --quiet
log "done: target/release/muninn"
