#!/usr/bin/env bash
# Installs what cider needs on a fresh machine (beyond Rust, Python 3 and a
# C/C++ compiler): a virtualenv at .venv with MLX from PyPI, then builds
# cider in release mode. `--test` also installs the test tools (mlx-lm as
# the reference implementation, pytest, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

MLX_VERSION=0.32.4
MLX_LM_VERSION=0.32.2
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
if [ "$(uname -s)" = "Darwin" ]; then
  MLX_REQ="mlx==${MLX_VERSION}"
else
  # Linux: the CPU build of libmlx. NVIDIA users: CIDER_MLX_EXTRA=cuda13.
  MLX_REQ="mlx[${CIDER_MLX_EXTRA:-cpu}]==${MLX_VERSION}"
fi
echo "== installing ${MLX_REQ}"
"$VPY" -m pip install -q "$MLX_REQ"
if [ "${1:-}" = "--test" ]; then
  echo "== installing test tools"
  "$VPY" -m pip install -q "mlx-lm==${MLX_LM_VERSION}" "pytest>=8" "maturin>=1.7,<2" "mypy>=1.10"
fi

echo "== building cider (release)"
export CIDER_PYTHON="$PWD/$VPY"
cargo build --release --workspace
echo "== done: target/release/cider"
