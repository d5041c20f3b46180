#!/usr/bin/env bash
# Installs libcider for C/C++ users: the shared and static libraries, the
# header and a pkg-config file, so that
#   cc prog.c $(pkg-config --cflags --libs cider)
# works once PKG_CONFIG_PATH includes PREFIX/lib/pkgconfig.
#
#   scripts/install.sh [PREFIX]        (default: ~/.local)
#
# Builds libcider (release) first unless CIDER_NO_BUILD=1. libcider loads the
# libmlx it was built against (the .venv's MLX, found by an rpath); keep that
# environment, or rebuild against another MLX with MLX_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PREFIX=${1:-${PREFIX:-$HOME/.local}}
case "$PREFIX" in /*) ;; *) PREFIX="$PWD/$PREFIX" ;; esac
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LIB_OUT="$TARGET_DIR/release"

if [ "${CIDER_NO_BUILD:-0}" != 1 ]; then
  if [ -z "${CIDER_PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then
    export CIDER_PYTHON="$ROOT/.venv/bin/python"
  fi
  echo "== building libcider (release)"
  cargo build --release -p cider-ffi
fi

case "$(uname -s)" in
  Darwin) SHARED=libcider.dylib ;;
  *) SHARED=libcider.so ;;
esac
for f in "$SHARED" libcider.a; do
  [ -f "$LIB_OUT/$f" ] || { echo "error: $LIB_OUT/$f is missing; build with: cargo build --release -p cider-ffi" >&2; exit 1; }
done

# The version comes from the header, which is generated from Cargo.toml.
VERSION=$(sed -n 's/^#define CIDER_VERSION_STRING "\(.*\)"$/\1/p' include/cider.h)
[ -n "$VERSION" ] || { echo "error: no CIDER_VERSION_STRING in include/cider.h" >&2; exit 1; }

# Where libmlx lives (for static linking): the rpath that build.rs gave libcider.
MLX_LIBDIR=""
if [ "$SHARED" = libcider.so ] && command -v readelf >/dev/null; then
  MLX_LIBDIR=$(readelf -d "$LIB_OUT/$SHARED" | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p' | tr ':' '\n' | grep -v '^\$ORIGIN' | head -n1 || true)
elif command -v otool >/dev/null; then
  MLX_LIBDIR=$(otool -l "$LIB_OUT/$SHARED" | awk '/LC_RPATH/{getline; getline; print $2; exit}')
fi

LIBDIR="$PREFIX/lib"
INCDIR="$PREFIX/include"
PCDIR="$LIBDIR/pkgconfig"
mkdir -p "$LIBDIR" "$INCDIR" "$PCDIR"
# Install by copy-then-rename so a program using the old library keeps its mapping.
install -m 0755 "$LIB_OUT/$SHARED" "$LIBDIR/.$SHARED.tmp" && mv -f "$LIBDIR/.$SHARED.tmp" "$LIBDIR/$SHARED"
install -m 0644 "$LIB_OUT/libcider.a" "$LIBDIR/.libcider.a.tmp" && mv -f "$LIBDIR/.libcider.a.tmp" "$LIBDIR/libcider.a"
install -m 0644 include/cider.h "$INCDIR/cider.h"

case "$(uname -s)" in
  Darwin) SYSLIBS="-lc++ -framework Foundation -framework Metal -framework Accelerate -liconv" ;;
  # Rust's std (rustc --print native-static-libs) plus libmlx's C++ runtime.
  *) SYSLIBS="-lstdc++ -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc" ;;
esac
MLX_FLAGS="-lmlx"
if [ -n "$MLX_LIBDIR" ]; then
  MLX_FLAGS="-L$MLX_LIBDIR -Wl,-rpath,$MLX_LIBDIR -lmlx"
fi

# Libs carries an rpath to libdir: a PREFIX such as ~/.local is not on the
# loader's default path, and programs should run without LD_LIBRARY_PATH.
cat > "$PCDIR/cider.pc" <<PC
prefix=$PREFIX
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: cider
Description: Embeddable LLM runtime on Apple MLX (C API, libcider)
Version: $VERSION
Cflags: -I\${includedir}
Libs: -L\${libdir} -Wl,-rpath,\${libdir} -lcider
Libs.private: $MLX_FLAGS $SYSLIBS
PC

echo "== installed libcider $VERSION to $PREFIX"
echo "   $LIBDIR/$SHARED, $LIBDIR/libcider.a, $INCDIR/cider.h, $PCDIR/cider.pc"
case ":${PKG_CONFIG_PATH:-}:" in
  *":$PCDIR:"*) ;;
  *) echo "   add it to pkg-config's path: export PKG_CONFIG_PATH=\"$PCDIR\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}\"" ;;
esac
