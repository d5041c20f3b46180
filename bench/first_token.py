"""Where cider's and mlx-lm's first greedy token can differ on a GPU.

cider computes the first token in one pass over the whole prompt; mlx-lm runs
the prompt without its last token, then that token alone. On the CPU the two
give bit-identical logits (tests/python/test_parity.py); on a GPU the matrix
products of a block of rows round differently from those of one row. This
runs both orders in mlx-lm itself on the same model and prompt, and prints
each argmax, the gap between the two largest logits, and the largest logit
difference between the orders: when mlx-lm's own two orders disagree, or the
gap is below the difference, a different first token from cider is rounding
and not a fault. Optionally reads cider's first token from `cider bench`.

    python bench/first_token.py MODEL_DIR [--prompt-tokens 128] [--cider PATH]
"""
import argparse
import json
import subprocess

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--cider", default=None)
    a = p.parse_args()
    model, _ = load(a.model)
    vocab = model.args.vocab_size
    ids = [(i * 7919 + 1) % vocab for i in range(a.prompt_tokens)]

    cache = make_prompt_cache(model)
    model(mx.array([ids[:-1]]), cache=cache)
    two = model(mx.array([ids[-1:]]), cache=cache)[0, -1].astype(mx.float32)
    cache = make_prompt_cache(model)
    one = model(mx.array([ids]), cache=cache)[0, -1].astype(mx.float32)
    mx.eval(two, one)

    def top2(x):
        s = mx.sort(x)
        return int(mx.argmax(x).item()), float((s[-1] - s[-2]).item())

    (t2, g2), (t1, g1) = top2(two), top2(one)
    diff = float(mx.max(mx.abs(two - one)).item())
    order = mx.argsort(-two)[:5].tolist()
    print("mlx-lm two passes, top 5: " + ", ".join(f"{i} ({two[i].item():.4f})" for i in order))
    print(f"{a.model}: mlx-lm two passes: token {t2} (top-2 gap {g2:.4f}); one pass: token {t1} "
          f"(gap {g1:.4f}); largest logit difference between the orders {diff:.4f}")
    if a.cider:
        out = subprocess.run([a.cider, "bench", "--model", a.model, "--prompt-tokens", str(a.prompt_tokens),
                              "--gen-tokens", "2", "--repeat", "1", "--warmup", "0", "--format", "json"],
                             check=True, capture_output=True, text=True).stdout
        print(f"cider's first token: {json.loads(out)['tokens'][0]}")


if __name__ == "__main__":
    main()
