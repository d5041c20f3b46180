#!/usr/bin/env bash
# cider alone under several environments (e.g. MLX's CUDA command-buffer
# knobs), one fresh `cider bench` process each, several rounds interleaved;
# prints per setting the medians of decode tok/s, the host time per decode
# step (graph build, MLX async eval) and ttft. Run on the lent GPU after
# `bench/gpu.sh install` (uses the carried .whl/b/cider).
#   bench/sweep.sh MODEL_DIR... -- "SETTING" ...   (SETTING: "K=V K=V" or "default";
#   CIDER=PATH in a setting runs another cider binary, e.g. an older build)
set -u
models=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do models+=("$1"); shift; done
shift
PY=${PY:-python3}
export LD_LIBRARY_PATH=$($PY -c 'import mlx; print(list(mlx.__path__)[0])')/lib
A=${SWEEP_ARGS:---prompt-tokens 128 --gen-tokens 256 --repeat 3 --warmup-tokens 32}
ROUNDS=${SWEEP_ROUNDS:-2}
out=$(mktemp -d)
for m in "${models[@]}"; do
    for r in $(seq $ROUNDS); do
        i=0
        for setting in "$@"; do
            i=$((i + 1))
            [ "$setting" = default ] && e="" || e=$setting
            env $e sh -c 'exec "${CIDER:-.whl/b/cider}" "$@"' sh bench --model "$m" $A --format json > "$out/$(basename $m).$i.$r.json" 2>/dev/null \
                || echo "failed: $m $setting" >&2
        done
    done
done
$PY - "$out" "${models[@]}" -- "$@" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1]); args = sys.argv[2:]; k = args.index("--")
models, settings = args[:k], args[k + 1:]
print(f"| model | setting | decode tok/s | build ms/tok | async eval ms/tok | ttft ms | ttft: until submitted ms | MLX peak GB |")
print("|---|---|---|---|---|---|---|---|")
for m in models:
    for i, s in enumerate(settings, 1):
        runs = [r for f in sorted(out.glob(f"{Path(m).name}.{i}.*.json")) if f.stat().st_size
                for r in json.loads(f.read_text())["runs"]]
        if not runs:
            continue
        med = lambda key: statistics.median(r[key] for r in runs)
        fs = f"{med('first_submit_ms'):.2f}" if all("first_submit_ms" in r for r in runs) else "-"
        print(f"| {Path(m).name} | {s} | {med('gen_tps'):.1f} | {med('build_ms'):.3f} | {med('submit_ms'):.3f} | {1e3 * med('ttft_s'):.2f} | {fs} | {med('peak_bytes') / 1e9:.3f} |")
PYEOF
