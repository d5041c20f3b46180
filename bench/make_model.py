"""Benchmark-sized random-weight models with the real shapes of public models.

Speed does not depend on weight values, and real weights cannot be downloaded
here, so this builds each architecture from mlx-lm's own model classes at the
real sizes, casts or quantizes it with mlx-lm (`quantize_model`) and saves it
with mlx-lm (`save_model`, `save_config`): the folder is what `mlx_lm.convert`
would write for that model, minus meaningful weights.

The tokenizer is synthetic unless --tokenizer names a folder: a byte-level BPE
whose vocabulary covers every id of the model (256 byte symbols, then one
word-like piece per id, the last id an `<|endoftext|>` special token). Both
runtimes then detokenize every generated id the way they would for Qwen or
Llama 3 (byte-level BPE streaming), and no id falls outside the vocabulary.

Usage:
    python bench/make_model.py OUT_DIR --shape qwen2.5-0.5b --dtype bfloat16 [--bits 4]
    python bench/make_model.py --list
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict

import mlx.core as mx
from mlx.utils import tree_map

from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

# config.json content of each public model (the keys mlx-lm reads), from the
# models' published configs.
SHAPES: Dict[str, Dict[str, Any]] = {
    "smollm-135m": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=576,
        num_hidden_layers=30,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        hidden_size=896,
        num_hidden_layers=24,
        intermediate_size=4864,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        use_sliding_window=False,
        tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=2048,
        num_hidden_layers=16,
        intermediate_size=8192,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),
    "qwen3-1.7b": dict(
        model_type="qwen3",
        architectures=["Qwen3ForCausalLM"],
        hidden_size=2048,
        num_hidden_layers=28,
        intermediate_size=6144,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
    ),
    "phi-3-mini": dict(
        model_type="phi3",
        architectures=["Phi3ForCausalLM"],
        hidden_size=3072,
        num_hidden_layers=32,
        intermediate_size=8192,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
    "llama-3.1-8b": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=4096,
        num_hidden_layers=32,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        max_position_embeddings=131072,
        tie_word_embeddings=False,
    ),
}

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}

# Byte-level BPE's printable stand-ins for the 256 bytes (GPT-2's table).
def _byte_symbols():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_synthetic_tokenizer(out: Path, vocab_size: int) -> None:
    syms = _byte_symbols()
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab: Dict[str, int] = {}
    for i, s in enumerate(syms):
        vocab[s] = i
    for i in range(256, vocab_size - 1):
        # " " + a short word, written in byte-level symbols (space is "Ġ").
        k, w = i, ""
        while True:
            w += letters[k % 26]
            k //= 26
            if k == 0:
                break
        vocab["Ġ" + w] = i
    eos = "<|endoftext|>"
    eos_id = vocab_size - 1
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": eos_id, "content": eos, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": eos,
        "pad_token": eos,
        "unk_token": None,
        "model_max_length": 131072,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def make(out: Path, shape: str, dtype: str, bits: int | None, group_size: int, seed: int, tokenizer: str | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    config: Dict[str, Any] = dict(SHAPES[shape])
    config["torch_dtype"] = dtype
    if tokenizer:
        for f in Path(tokenizer).iterdir():
            if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "added_tokens.json"):
                shutil.copyfile(f, out / f.name)
    else:
        write_synthetic_tokenizer(out, config["vocab_size"])
        config["eos_token_id"] = config["vocab_size"] - 1
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    target = DTYPES[dtype]
    # Default init, cast to the checkpoint dtype; evaluate layer by layer to
    # keep the float32 peak small for large shapes.
    params = model.parameters()
    model.update(tree_map(lambda v: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v, params))
    for layer in getattr(model, "layers", []):
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    if bits is not None:
        model, config = quantize_model(model, config, group_size, bits)
        mx.eval(model.parameters())
    save_model(out, model)
    save_config(dict(config), out / "config.json")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", nargs="?")
    p.add_argument("--shape", choices=sorted(SHAPES))
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    p.add_argument("--bits", type=int, default=None, help="quantize (affine) to this many bits")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="copy tokenizer files from this folder instead")
    p.add_argument("--list", action="store_true", help="list the shapes")
    a = p.parse_args(argv)
    if a.list:
        for k, v in SHAPES.items():
            print(f"{k:14} {v['model_type']:6} hidden {v['hidden_size']}, {v['num_hidden_layers']} layers, vocab {v['vocab_size']}")
        return 0
    if not a.out_dir or not a.shape:
        p.error("OUT_DIR and --shape are required")
    t = time.perf_counter()
    out = make(Path(a.out_dir), a.shape, a.dtype, a.bits, a.group_size, a.seed, a.tokenizer)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"{out}: {a.shape} {a.dtype}{f' {a.bits}-bit' if a.bits else ''}, {size / 1e6:.0f} MB, {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
