"""Where a GPU prompt pass's device time goes, by op, on mlx-lm's own model.

A 4-bit model's time to first token on the H100 is set by the device (see
bench/RESULTS.md). This builds mlx-lm's model of a benchmark shape with random
weights (bench/make_model.py's configs), then times with MLX alone:
- one whole prompt pass (fresh cache, eval, wait), as mlx-lm's prefill runs it;
- one decoder layer, and each op of it, at M prompt rows: N independent calls
  in one graph, so a figure is the device's time per call wherever the device
  is slower than the host's encoding of the call.

    python bench/prompt_ops.py --shape llama-3.2-1b [--bits 4] [--m 128]
"""
import argparse
import statistics
import time

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import _get_classes

from make_model import SHAPES


def per_call(fn, inputs, n, reps):
    """Median seconds per call of n independent calls in one graph."""
    mx.eval(fn(inputs[0]))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        mx.eval([fn(inputs[i % len(inputs)]) for i in range(n)])
        ts.append((time.perf_counter() - t) / n)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--bits", type=int, default=4, help="0: bf16 weights")
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    config = dict(SHAPES[a.shape])
    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(config))
    model.set_dtype(mx.bfloat16)
    if a.bits:
        nn.quantize(model, group_size=64, bits=a.bits)
    mx.eval(model.parameters())
    print(f"mlx {mx.__version__} {mx.default_device()} {a.shape} {'bf16' if not a.bits else f'{a.bits}-bit'} M={a.m}")

    ids = mx.random.randint(0, config["vocab_size"], (1, a.m))
    ts = []
    for _ in range(a.reps + 1):
        cache = make_prompt_cache(model)
        mx.synchronize()
        t = time.perf_counter()
        mx.eval(model(ids, cache=cache)[:, -1, :])
        ts.append(time.perf_counter() - t)
    print(f"whole prompt pass (all logits' last row): {statistics.median(ts[1:]) * 1e3:.2f} ms")

    layers = model.layers if hasattr(model, "layers") else model.model.layers
    L = len(layers)
    layer = layers[0]
    d = config["hidden_size"]
    hs = [mx.random.normal((1, a.m, d)).astype(mx.bfloat16) for _ in range(4)]
    mx.eval(hs)
    rows = []
    rows.append(("decoder layer", per_call(lambda h: layer(h, mask="causal", cache=None), hs, a.n, a.reps), 1))
    att, mlp = layer.self_attn, layer.mlp
    rows.append(("  input norm", per_call(lambda h: layer.input_layernorm(h), hs, a.n, a.reps), 1))
    rows.append(("  attention block", per_call(lambda h: att(h, mask="causal", cache=None), hs, a.n, a.reps), 1))
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        proj = getattr(att, name)
        if name == "o_proj":
            hin = [mx.random.normal((1, a.m, proj.weight.shape[-1] * (32 // a.bits if a.bits else 1))).astype(mx.bfloat16)]
        else:
            hin = hs
        mx.eval(hin)
        rows.append((f"    {name}", per_call(proj, hin, a.n, a.reps), 1))
    nh, nkv = att.n_heads, att.n_kv_heads
    hd = config.get("head_dim") or d // config["num_attention_heads"]
    q = [mx.random.normal((1, nh, a.m, hd)).astype(mx.bfloat16) for _ in range(2)]
    k = mx.random.normal((1, nkv, a.m, hd)).astype(mx.bfloat16)
    mx.eval(q, k)
    rows.append(("    rope (q)", per_call(lambda x: att.rope(x), q, a.n, a.reps), 1))
    rows.append(("    sdpa causal", per_call(lambda x: mx.fast.scaled_dot_product_attention(x, k, k, scale=hd ** -0.5, mask="causal"), q, a.n, a.reps), 1))
    rows.append(("  mlp block", per_call(mlp, hs, a.n, a.reps), 1))
    for name in ("gate_proj", "up_proj", "down_proj"):
        proj = getattr(mlp, name)
        if name == "down_proj":
            hin = [mx.random.normal((1, a.m, config["intermediate_size"])).astype(mx.bfloat16)]
            mx.eval(hin)
        else:
            hin = hs
        rows.append((f"    {name}", per_call(proj, hin, a.n, a.reps), 1))
    g = [mx.random.normal((1, a.m, config["intermediate_size"])).astype(mx.bfloat16) for _ in range(2)]
    mx.eval(g)
    rows.append(("    silu(g) * u", per_call(lambda x: nn.silu(x) * g[1], g, a.n, a.reps), 1))
    rows.append(("  residual add", per_call(lambda h: h + hs[1], hs, a.n, a.reps), 1))
    for name, t, _ in rows:
        print(f"{name:22} {t * 1e6:8.1f} us   x{L} layers = {t * L * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
