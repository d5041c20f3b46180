#!/usr/bin/env bash
# Builds the C tests against the committed include/cider.h, links them to
# libcider through pkg-config, makes the test models with mlx-lm, and runs
# every test natively and then under valgrind memcheck (zero errors, no
# definite or indirect leaks). Usually called by scripts/test_c.sh, which
# builds and installs libcider first and sets PKG_CONFIG_PATH.
#
# Environment:
#   PKG_CONFIG_PATH   must find cider.pc (scripts/install.sh writes it)
#   CIDER_C_BUILD     folder for binaries and models (default target/c-tests)
#   CIDER_BIN         the cider CLI (default target/release/cider)
#   CIDER_PYTHON      Python with mlx-lm (default .venv/bin/python)
#   CIDER_CYCLES      load/free cycles (default 1000; the issue's number)
#   CIDER_MEMCHECK    valgrind (default), asan (AddressSanitizer + LSan on
#                     the C side) or none
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${CIDER_C_BUILD:-$ROOT/target/c-tests}
BIN=${CIDER_BIN:-$ROOT/target/release/cider}
PY=${CIDER_PYTHON:-$ROOT/.venv/bin/python}
CYCLES=${CIDER_CYCLES:-1000}
MEMCHECK=${CIDER_MEMCHECK:-valgrind}
PROMPT="The quick brown fox"
MAX_TOKENS=24
WORK="$BUILD/work"
OUT="$BUILD/bin"

pkg-config --exists cider || { echo "error: pkg-config cannot find cider (set PKG_CONFIG_PATH; see scripts/install.sh)" >&2; exit 1; }
PC_LIBS=$(pkg-config --libs cider)
PC_DIR=$(pkg-config --variable=libdir cider)

echo "== C tests: making models in $WORK"
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
"$PY" tests/python/models.py "$WORK/model" --arch llama > /dev/null
# Corrupt copies: weights cut short, config.json that is not JSON, no chat
# template, and a file where a folder should be.
cp -r "$WORK/model" "$WORK/truncated"
truncate -s 100000 "$WORK/truncated/model.safetensors"
cp -r "$WORK/model" "$WORK/bad_json"
printf '{"model_type": "llama", ' > "$WORK/bad_json/config.json"
cp -r "$WORK/model" "$WORK/no_template"
rm -f "$WORK/no_template/chat_template.jinja"
echo "not a model" > "$WORK/not_a_folder"
# Three sizes for the model manager test (the vocabulary dominates, so the
# weights go about 1 : 2 : 4 with the hidden size).
for spec in small:32:1 medium:64:2 large:128:3; do
  IFS=: read -r name hidden seed <<< "$spec"
  "$PY" tests/python/models.py "$WORK/manager/$name" --arch llama --dtype float32 --seed "$seed" \
    --set hidden_size="$hidden" > /dev/null
done

echo "== C tests: reference tokens from mlx-lm and the cider CLI"
"$PY" tests/c/mlx_lm_greedy.py "$WORK/model" "$PROMPT" "$MAX_TOKENS" > "$WORK/expected_mlx_lm.txt"
"$BIN" generate --model "$WORK/model" --prompt "$PROMPT" --no-chat-template --max-tokens "$MAX_TOKENS" \
  --temp 0 --ignore-eos --format json > "$WORK/cli.json"
"$PY" -c 'import json, sys; print(" ".join(map(str, json.load(open(sys.argv[1]))["tokens"])))' \
  "$WORK/cli.json" > "$WORK/expected_cli.txt"

export CIDER_TEST_MANAGER_MODELS="$WORK/manager"
export CIDER_TEST_MODEL="$WORK/model" CIDER_TEST_WORK="$WORK" CIDER_TEST_PROMPT="$PROMPT" CIDER_TEST_MAX_TOKENS="$MAX_TOKENS"

CC=${CC:-gcc}
CXX=${CXX:-g++}
CFLAGS="-std=c99 -Wall -Wextra -Werror -g -O1"
ASAN="-fsanitize=address,undefined -fno-omit-frame-pointer"
INC="-I$ROOT/include -Itests/c" # the committed header, not an installed copy

echo "== C tests: compiling ($CC $CFLAGS, libs: $PC_LIBS)"
set -x
$CC $CFLAGS -pedantic $INC tests/c/test_header.c $PC_LIBS -o "$OUT/test_header"
$CC $CFLAGS $INC tests/c/test_api.c $PC_LIBS -o "$OUT/test_api"
$CC $CFLAGS -pthread $INC tests/c/test_threads.c $PC_LIBS -pthread -o "$OUT/test_threads"
$CC $CFLAGS $INC tests/c/test_load_cycles.c $PC_LIBS -o "$OUT/test_load_cycles"
$CC $CFLAGS $INC tests/c/test_manager.c $PC_LIBS -o "$OUT/test_manager"
$CXX -std=c++11 -Wall -Wextra -Werror -pedantic -g $INC tests/c/test_cxx.cpp $PC_LIBS -o "$OUT/test_cxx"
# The example is built exactly as its comment tells users to: pkg-config only.
$CC -std=c99 -Wall -Wextra -Werror -pedantic examples/c/generate.c $(pkg-config --cflags --libs cider) -o "$OUT/generate"
# libcider.a: the same API test, linked statically.
$CC $CFLAGS $INC tests/c/test_api.c "$PC_DIR/libcider.a" \
  $(pkg-config --static --libs-only-L --libs-only-other cider) \
  $(pkg-config --static --libs-only-l cider | sed 's/-lcider\b//') -o "$OUT/test_api_static"
if [ "$MEMCHECK" = asan ]; then
  $CC $CFLAGS $ASAN $INC tests/c/test_api.c $PC_LIBS -o "$OUT/test_api.asan"
  $CC $CFLAGS $ASAN -pthread $INC tests/c/test_threads.c $PC_LIBS -pthread -o "$OUT/test_threads.asan"
  $CC $CFLAGS $ASAN $INC tests/c/test_load_cycles.c $PC_LIBS -o "$OUT/test_load_cycles.asan"
  $CC $CFLAGS $ASAN $INC tests/c/test_manager.c $PC_LIBS -o "$OUT/test_manager.asan"
  $CC -std=c99 -Wall -Wextra -Werror $ASAN examples/c/generate.c $(pkg-config --cflags --libs cider) -o "$OUT/generate.asan"
fi
{ set +x; } 2>/dev/null

PASSED=0
FAILED=()
run() {
  local name=$1
  shift
  echo "-- $name"
  if "$@"; then
    PASSED=$((PASSED + 1))
  else
    echo "FAILED: $name (exit $?)"
    FAILED+=("$name")
  fi
}

example() {
  local out
  out=$("$@" 2>"$WORK/example.err") || { cat "$WORK/example.err"; return 1; }
  [ -n "$out" ] && grep -q " tokens (" "$WORK/example.err"
}

echo "== C tests: native"
run test_header "$OUT/test_header"
run test_cxx "$OUT/test_cxx"
run test_api "$OUT/test_api"
run test_api_static "$OUT/test_api_static"
run test_threads "$OUT/test_threads"
run test_manager "$OUT/test_manager"
run "test_load_cycles ($CYCLES)" "$OUT/test_load_cycles" "$CYCLES"
run "examples/c/generate" example "$OUT/generate" "$WORK/model" "Hello" 8

if [ "$MEMCHECK" = valgrind ]; then
  command -v valgrind > /dev/null || { echo "error: valgrind is not installed (or run with CIDER_MEMCHECK=asan)" >&2; exit 1; }
  echo "== C tests: valgrind memcheck"
  VG=(valgrind --quiet --error-exitcode=97 --leak-check=full --errors-for-leak-kinds=definite,indirect
      --show-leak-kinds=definite,indirect --track-origins=yes)
  run "valgrind test_api" "${VG[@]}" "$OUT/test_api"
  run "valgrind test_threads" "${VG[@]}" "$OUT/test_threads"
  run "valgrind test_manager" "${VG[@]}" "$OUT/test_manager"
  run "valgrind test_load_cycles (10)" "${VG[@]}" "$OUT/test_load_cycles" 10 --no-rss-check
  run "valgrind examples/c/generate" "${VG[@]}" "$OUT/generate" "$WORK/model" "Hello" 8
elif [ "$MEMCHECK" = asan ]; then
  # The C side is instrumented; libcider's allocations go through ASan's
  # malloc too, so leaks and bad frees of what cider hands out are caught.
  echo "== C tests: AddressSanitizer + LeakSanitizer + UBSan"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  run "asan test_api" "$OUT/test_api.asan"
  run "asan test_threads" "$OUT/test_threads.asan"
  run "asan test_manager" "$OUT/test_manager.asan"
  run "asan test_load_cycles (10)" "$OUT/test_load_cycles.asan" 10 --no-rss-check
  run "asan examples/c/generate" example "$OUT/generate.asan" "$WORK/model" "Hello" 8
elif [ "$MEMCHECK" != none ]; then
  echo "error: CIDER_MEMCHECK must be valgrind, asan or none, not $MEMCHECK" >&2
  exit 2
fi

echo "== C tests: $PASSED passed, ${#FAILED[@]} failed"
if [ ${#FAILED[@]} -ne 0 ]; then
  printf '   failed: %s\n' "${FAILED[@]}"
  exit 1
fi
