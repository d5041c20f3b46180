#!/usr/bin/env bash
# Sweep MLX's CUDA command-buffer knobs on the lent GPU: for each setting,
# one bench/compare.py round per engine with that environment exported to
# both (so the ratio shows what cider gains over mlx-lm under equal knobs, and
# the medians show what the knob does to each). MLX reads these once, at its
# first GPU use (mlx/backend/cuda/device.cpp: MLX_USE_CUDA_GRAPHS,
# MLX_MAX_OPS_PER_BUFFER, MLX_MAX_MB_PER_BUFFER; H100 defaults 100 ops / 1000 MB).
#   bench/knobs.sh MODEL_DIR... -- "SETTING" "SETTING"...   (SETTING: "K=V K=V" or "default")
set -u
models=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do models+=("$1"); shift; done
shift
A=${KNOB_ARGS:---prompt-tokens 128 --gen-tokens 256 --rounds 1 --repeat 3 --warmup-tokens 32}
for setting in "$@"; do
    echo "=== $setting"
    if [ "$setting" = default ]; then
        bench/gpu.sh compare "${models[@]}" $A
    else
        env $setting bench/gpu.sh compare "${models[@]}" $A
    fi
done
