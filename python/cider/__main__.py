"""`python -m cider` (and the `cider` console script): the Rust CLI's `generate`, `tokenize`
and `chat-template` commands with the same flags and the same output, over the Python
package. (`cider bench` is only in the Rust CLI.)"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence

from . import CiderError, Model, load, load_tokenizer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cider", description="Run LLMs from MLX / Hugging Face model folders")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="Generate text from a prompt.")
    g.add_argument("--model", required=True)
    g.add_argument(
        "--prompt",
        required=True,
        help='The prompt; "-" reads standard input. "\\n" and "\\t" are unescaped as mlx_lm.generate does.',
    )
    g.add_argument("--system")
    g.add_argument("--no-chat-template", action="store_true")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temp", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--repetition-context-size", type=int, default=20)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[], help="Stop before this string (repeatable).")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--format", choices=["text", "json"], default="text")

    t = sub.add_parser("tokenize", help="Print the token ids of a text as JSON.")
    t.add_argument("--model", required=True)
    t.add_argument("--text", required=True)
    t.add_argument("--chat", action="store_true", help="Wrap the text as a user message in the chat template first.")

    c = sub.add_parser(
        "chat-template",
        help='Render the chat template for messages given as a JSON file ([{"role":..,"content":..}]).',
    )
    c.add_argument("--model", required=True)
    c.add_argument("--messages", required=True)
    c.add_argument("--no-generation-prompt", action="store_true")
    return p


def _prompt(model: Model, a: argparse.Namespace) -> "str | List[int]":
    prompt: str = a.prompt.replace("\\n", "\n").replace("\\t", "\t")
    if prompt == "-":
        prompt = sys.stdin.read()
    if not a.no_chat_template and model.tokenizer.has_chat_template:
        messages = []
        if a.system is not None:
            messages.append({"role": "system", "content": a.system})
        messages.append({"role": "user", "content": prompt})
        return model.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return prompt


def _generate(a: argparse.Namespace) -> None:
    model = load(a.model)
    text_mode = a.format == "text"
    out = sys.stdout
    with model.stream(
        _prompt(model, a),
        max_tokens=a.max_tokens,
        temperature=a.temp,
        top_p=a.top_p,
        top_k=a.top_k,
        min_p=a.min_p,
        repetition_penalty=a.repetition_penalty,
        repetition_context_size=a.repetition_context_size,
        seed=a.seed,
        stop=a.stop,
        ignore_eos=a.ignore_eos,
    ) as stream:
        for r in stream:
            if text_mode and r.text:
                out.write(r.text)
                out.flush()
        result = stream.result
    assert result is not None  # the stream ended normally
    s = result.stats
    info = model.info
    if text_mode:
        print()
        err = sys.stderr
        print("==========", file=err)
        print(f"Prompt: {s.prompt_tokens} tokens, {s.prompt_tps:.3f} tokens-per-sec", file=err)
        print(f"Generation: {s.generation_tokens} tokens, {s.generation_tps:.3f} tokens-per-sec", file=err)
        print(f"Time to first token: {s.ttft_s:.3f} s", file=err)
        print(f"Peak memory: {s.peak_memory_bytes / 1e9:.3f} GB", file=err)
        print(f"Load: {info.load_seconds:.3f} s, {info.resident_bytes / 1e9:.3f} GB resident", file=err)
        print(f"Finish: {result.finish_reason}", file=err)
    else:
        doc = {
            "text": result.text,
            "tokens": result.tokens,
            "prompt_tokens": result.prompt_ids,
            "finish_reason": result.finish_reason,
            "stats": {
                "prompt_tokens": s.prompt_tokens,
                "prompt_tps": s.prompt_tps,
                "generation_tokens": s.generation_tokens,
                "generation_tps": s.generation_tps,
                "ttft_s": s.ttft_s,
                "peak_memory_bytes": s.peak_memory_bytes,
                "load_s": info.load_seconds,
                "resident_bytes": info.resident_bytes,
            },
        }
        print(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))


def _tokenize(a: argparse.Namespace) -> None:
    tok = load_tokenizer(a.model)
    if a.chat:
        ids = tok.apply_chat_template([{"role": "user", "content": a.text}], add_generation_prompt=True, tokenize=True)
    else:
        ids = tok.encode_prompt(a.text)
    print(json.dumps(ids, separators=(",", ":")))


def _chat_template(a: argparse.Namespace) -> None:
    tok = load_tokenizer(a.model)
    try:
        with open(a.messages, encoding="utf-8") as f:
            messages = json.load(f)
    except (OSError, ValueError) as e:
        raise CiderError(f"{a.messages}: {e}") from None
    sys.stdout.write(tok.apply_chat_template(messages, add_generation_prompt=not a.no_generation_prompt))
    sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> None:
    a = _parser().parse_args(argv)
    try:
        {"generate": _generate, "tokenize": _tokenize, "chat-template": _chat_template}[a.cmd](a)
    except (CiderError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
