#!/usr/bin/env bash
# The C ABI suite in one command:
#   1. builds libcider (and the cider CLI, the reference for greedy parity);
#   2. regenerates include/cider.h with the pinned cbindgen and fails on any
#      difference from the committed header (--regen-header rewrites it);
#   3. installs libcider + header + cider.pc into a scratch prefix with
#      scripts/install.sh and checks pkg-config against the header's version;
#   4. runs tests/c/run.sh: the C and C++ tests compiled with
#      -Wall -Wextra -Werror against the committed header, linked through
#      pkg-config, natively and under valgrind memcheck.
#
#   scripts/test_c.sh [--regen-header]
# Environment: CIDER_MEMCHECK=valgrind|asan|none, CIDER_CYCLES (see tests/c/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CIDER_PYTHON=${CIDER_PYTHON:-$ROOT/.venv/bin/python}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BUILD="$CARGO_TARGET_DIR/c-tests"
mkdir -p "$BUILD"

REGEN=0
for arg in "$@"; do
  case "$arg" in
    --regen-header) REGEN=1 ;;
    *) echo "usage: $0 [--regen-header]" >&2; exit 2 ;;
  esac
done

echo "== header: regenerating include/cider.h (cbindgen pinned in ffi/header-gen/Cargo.toml)"
cargo build --locked --release --quiet --manifest-path ffi/header-gen/Cargo.toml
"$CARGO_TARGET_DIR/release/cider-header-gen" "$BUILD/cider.h"
if [ "$REGEN" = 1 ]; then
  cp "$BUILD/cider.h" include/cider.h
  echo "   wrote include/cider.h"
elif ! diff -u include/cider.h "$BUILD/cider.h"; then
  echo "error: include/cider.h differs from what ffi/src generates (diff above)." >&2
  echo "       Run scripts/test_c.sh --regen-header and commit the header." >&2
  exit 1
else
  echo "   include/cider.h is up to date"
fi

echo "== building libcider and the cider CLI (release)"
cargo build --release -p cider-ffi -p cider-cli

echo "== installing into a scratch prefix"
PREFIX="$BUILD/prefix"
rm -rf "$PREFIX"
CIDER_NO_BUILD=1 scripts/install.sh "$PREFIX" > /dev/null
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
HEADER_VERSION=$(sed -n 's/^#define CIDER_VERSION_STRING "\(.*\)"$/\1/p' include/cider.h)
PC_VERSION=$(pkg-config --modversion cider)
if [ "$PC_VERSION" != "$HEADER_VERSION" ]; then
  echo "error: pkg-config says cider $PC_VERSION, the header $HEADER_VERSION" >&2
  exit 1
fi
echo "   pkg-config cider $PC_VERSION: $(pkg-config --cflags --libs cider)"

export CIDER_C_BUILD="$BUILD"
export CIDER_BIN="$CARGO_TARGET_DIR/release/cider"
bash tests/c/run.sh
