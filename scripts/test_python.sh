#!/usr/bin/env bash
# The Python bindings (python/): builds the cider wheel, installs it into the test venv
# (.venv), checks that the extension finds libmlx through its rpath, runs
# tests/python/test_bindings_*.py, mypy.stubtest and mypy --strict, then does what a user
# does: `pip install ./python` into a fresh venv (pip's isolated build) and runs a check
# script there -- mlx-lm-made model, greedy tokens against mlx-lm's, streaming, threads, bad
# arguments -- with MLX_DIR, CIDER_PYTHON, VIRTUAL_ENV and LD_LIBRARY_PATH unset.
#
#   scripts/test_python.sh              # everything
#   scripts/test_python.sh --no-fresh   # skip the fresh-venv install (offline, faster)
#
# Builds are incremental: python/ is its own cargo workspace with its own target/, and the
# build backend (python/_build/cider_build.py) gives cargo a stable MLX_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

FRESH=1
[ "${1:-}" = "--no-fresh" ] && FRESH=0

VPY=.venv/bin/python
[ -x "$VPY" ] || scripts/setup.sh --test
"$VPY" -c "import maturin, mypy, pytest, mlx_lm" 2>/dev/null \
  || "$VPY" -m pip install -q "maturin>=1.7,<2" "mypy>=1.10" "pytest>=8" "mlx-lm==0.32.2"

echo "== python: building the wheel"
WHEELS=python/target/wheels
rm -f "$WHEELS"/cider-*.whl
"$VPY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" ./python
WHEEL=$(ls -t "$WHEELS"/cider-*.whl | head -1)
echo "$WHEEL"
"$VPY" -m pip install -q --force-reinstall --no-deps "$WHEEL"

echo "== python: the extension finds libmlx through its rpath"
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
EXT=$(ls "$SITE"/cider/_native*.so)
if [ "$(uname -s)" = "Linux" ]; then
  # (Not `tee /dev/stderr`: opening it truncates a log file that stderr is redirected to.)
  RP=$(readelf -d "$EXT" | grep -E "R(UN)?PATH"); echo "$RP"
  grep -q '\$ORIGIN/../mlx/lib' <<<"$RP"
  LIBS=$(env -u LD_LIBRARY_PATH ldd "$EXT" | grep libmlx); echo "$LIBS"
  grep -q "$SITE/cider/../mlx/lib/libmlx" <<<"$LIBS"
else
  otool -l "$EXT" | grep -A2 LC_RPATH | grep -q '@loader_path/../mlx/lib'
fi

echo "== python: pytest tests/python/test_bindings_*.py"
"$VPY" -m pytest tests/python/test_bindings_*.py -q -p no:cacheprovider

echo "== python: stubtest and mypy"
export MYPY_CACHE_DIR=/dev/null  # no .mypy_cache in the checkout
"$VPY" -m mypy.stubtest cider._native
"$VPY" -m mypy --strict -p cider

if [ "$FRESH" = 1 ]; then
  echo "== python: pip install ./python into a fresh venv"
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  "${PYTHON:-python3}" -m venv "$TMP/venv"
  FPY="$TMP/venv/bin/python"
  CLEAN=(env -u MLX_DIR -u CIDER_PYTHON -u VIRTUAL_ENV -u LD_LIBRARY_PATH -u PYTHONPATH)
  "${CLEAN[@]}" "$FPY" -m pip install -q --upgrade pip
  "${CLEAN[@]}" "$FPY" -m pip install -q ./python
  # A model made by mlx-lm, and mlx-lm's greedy tokens for it, from the test venv.
  "$VPY" tests/python/models.py "$TMP/model" --arch llama >/dev/null
  "$VPY" - "$TMP/model" >"$TMP/ref.json" <<'EOF'
import json, sys
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
model, tok = load(sys.argv[1])
ids = tok.encode("The quick brown fox")
out = [int(t) for t, _ in generate_step(mx.array(ids), model, max_tokens=12)]
print(json.dumps({"prompt": list(ids), "tokens": out}))
EOF
  (cd "$TMP" && "${CLEAN[@]}" "$FPY" - "$TMP/model" "$TMP/ref.json" <<'EOF'
import json, sys, threading
import cider
model = cider.load(sys.argv[1])
ref = json.load(open(sys.argv[2]))
r = model.generate_result("The quick brown fox", max_tokens=12, ignore_eos=True)
assert r.prompt_ids == ref["prompt"] and r.tokens == ref["tokens"], (r.tokens, ref)
pieces = list(cider.stream_generate(model, ref["prompt"], max_tokens=12, ignore_eos=True))
assert [p.token for p in pieces] == ref["tokens"] and "".join(p.text for p in pieces) == r.text
out = {}
ts = [threading.Thread(target=lambda i=i: out.__setitem__(i, model.generate("The quick brown fox", max_tokens=12, ignore_eos=True))) for i in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
assert set(out.values()) == {r.text}
for bad in (dict(temperature=-1.0), dict(top_p=2.0)):
    try:
        cider.generate(model, "x", **bad)
    except ValueError:
        pass
    else:
        raise AssertionError(bad)
try:
    cider.generate(model, 3.5)
except TypeError:
    pass
else:
    raise AssertionError("TypeError expected")
print("fresh venv: ok,", model.info.model_type, len(r.tokens), "tokens equal to mlx-lm's")
EOF
  )
  "${CLEAN[@]}" "$TMP/venv/bin/cider" tokenize --model "$TMP/model" --text "hello" >/dev/null
  "${CLEAN[@]}" "$FPY" -m cider generate --model "$TMP/model" --prompt hi --max-tokens 4 --format json >/dev/null
fi
echo "== python: ok"
