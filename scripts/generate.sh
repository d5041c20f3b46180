#!/usr/bin/env bash
# The main job in one command: set up, then generate from a model folder.
#   scripts/generate.sh MODEL_DIR "prompt" [more cider generate flags]
# Without MODEL_DIR (or with "demo"), a tiny random-weight model is written
# by mlx-lm first, since no weights can be downloaded on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-demo}
PROMPT=${2:-"Write a haiku about cider."}
shift $(( $# > 2 ? 2 : $# )) || true
if [ "$MODEL" = "demo" ]; then
  scripts/setup.sh --test
  MODEL=target/demo-model
  [ -f "$MODEL/config.json" ] || .venv/bin/python tests/python/models.py "$MODEL" --arch llama
else
  scripts/setup.sh
fi
exec target/release/cider generate --model "$MODEL" --prompt "$PROMPT" "$@"
