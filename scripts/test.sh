#!/usr/bin/env bash
# The whole test suite in one command, from a fresh clone: installs what the
# tests need, builds, then runs the Rust tests and the Python suites (parity
# with mlx-lm, chat templates, bad inputs, bindings).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export CIDER_PYTHON="$PWD/.venv/bin/python"
export CIDER_BIN="$PWD/target/release/cider"

echo "== cargo test"
cargo test --release --workspace 2>&1
bash scripts/test_c.sh

echo "== python bindings"
bash scripts/test_python.sh
echo "== pytest (parity with mlx-lm, chat templates, bad models; bindings ran above)"
.venv/bin/python -m pytest tests/python -q -p no:cacheprovider --ignore-glob='tests/python/test_bindings_*'

