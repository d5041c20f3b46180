"""cider: run LLMs from MLX / Hugging Face model folders, with an mlx-lm-like API.

    import cider
    model = cider.load("path/to/model")
    text = cider.generate(model, "Hello", max_tokens=64)
    for r in cider.stream_generate(model, "Hello", max_tokens=64, temperature=0.7, seed=1):
        print(r.text, end="", flush=True)

Everything runs in cider's Rust core (`cider._native`); loading and generation release the
GIL, and any number of threads may generate from one `Model` at once.
"""

from __future__ import annotations

import sys
from typing import Iterable, List, Optional, Sequence, Union

from ._native import (
    CancelledError,
    CiderError,
    GenerationError,
    GenerationResponse,
    GenerationResult,
    InvalidArgumentError,
    InvalidModelError,
    Manager,
    Model,
    ModelInfo,
    ModelLoadError,
    ModelNotFoundError,
    OutOfMemoryError,
    Stats,
    TokenizerError,
    Tokenizer,
    TokenStream,
    UnsupportedModelError,
    __version__,
    load,
    load_tokenizer,
)

__all__ = [
    "CancelledError",
    "CiderError",
    "GenerationError",
    "GenerationResponse",
    "GenerationResult",
    "InvalidArgumentError",
    "InvalidModelError",
    "Manager",
    "Model",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "Stats",
    "TokenStream",
    "Tokenizer",
    "TokenizerError",
    "UnsupportedModelError",
    "__version__",
    "generate",
    "load",
    "load_tokenizer",
    "stream_generate",
]

Prompt = Union[str, Sequence[int]]


def _model(model: object) -> Model:
    if not isinstance(model, Model):
        raise TypeError(f"model must be a cider.Model (from cider.load), not {type(model).__name__}")
    return model


def stream_generate(
    model: Model,
    prompt: Prompt,
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    repetition_penalty: Optional[float] = None,
    repetition_context_size: int = 20,
    seed: Optional[int] = None,
    stop: Union[str, Iterable[str], None] = None,
    ignore_eos: bool = False,
    prefill_step_size: int = 2048,
) -> TokenStream:
    """Iterates over `GenerationResponse`s (text, token, finish_reason, prompt_tps,
    generation_tps, peak_memory, ...), one per generated token, as mlx-lm's
    `stream_generate` does. A str prompt is encoded as mlx-lm encodes a plain prompt (no chat
    template: use `model.apply_chat_template` first); a list of ints is used as is."""
    return _model(model).stream(
        prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        repetition_context_size=repetition_context_size,
        seed=seed,
        stop=stop,
        ignore_eos=ignore_eos,
        prefill_step_size=prefill_step_size,
    )


def generate(
    model: Model,
    prompt: Prompt,
    *,
    verbose: bool = False,
    max_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    repetition_penalty: Optional[float] = None,
    repetition_context_size: int = 20,
    seed: Optional[int] = None,
    stop: Union[str, Iterable[str], None] = None,
    ignore_eos: bool = False,
    prefill_step_size: int = 2048,
) -> str:
    """Generates and returns the text, as mlx-lm's `generate` does; `verbose=True` also
    prints it while it is generated, then the speeds."""
    kwargs = dict(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        repetition_context_size=repetition_context_size,
        seed=seed,
        stop=stop,
        ignore_eos=ignore_eos,
        prefill_step_size=prefill_step_size,
    )
    model = _model(model)
    if not verbose:
        return model.generate(prompt, **kwargs)  # type: ignore[arg-type]
    print("=" * 10)
    pieces: List[str] = []
    last: Optional[GenerationResponse] = None
    with model.stream(prompt, **kwargs) as stream:  # type: ignore[arg-type]
        for r in stream:
            print(r.text, end="", flush=True)
            pieces.append(r.text)
            last = r
    print()
    print("=" * 10)
    if last is not None:
        print(f"Prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.3f} tokens-per-sec")
        print(f"Generation: {last.generation_tokens} tokens, {last.generation_tps:.3f} tokens-per-sec")
        print(f"Peak memory: {last.peak_memory:.3f} GB")
    sys.stdout.flush()
    return "".join(pieces)
