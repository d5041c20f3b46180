"""Greedy token ids from mlx-lm (the reference implementation) for a plain
prompt, tokenized as mlx-lm's stream_generate tokenizes a string.

    python tests/c/mlx_lm_greedy.py MODEL_DIR PROMPT MAX_TOKENS > ids.txt
"""

import sys

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step


def main() -> None:
    model_dir, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model, tokenizer = load(model_dir)
    bos = tokenizer.bos_token
    ids = tokenizer.encode(prompt, add_special_tokens=bos is None or not prompt.startswith(bos))
    out = []
    # No sampler: generate_step takes the argmax. EOS is ignored, as with --ignore-eos.
    for token, _ in generate_step(mx.array(ids), model, max_tokens=max_tokens):
        out.append(int(token))
    print(" ".join(map(str, out)))


if __name__ == "__main__":
    main()
