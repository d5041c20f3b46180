"""Type stub of cider's native module; checked against the built module by mypy.stubtest."""

import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Literal, Mapping, Optional, Sequence, Union, final, overload

__all__ = [
    "Manager",
    "CiderError",
    "InvalidArgumentError",
    "ModelLoadError",
    "ModelNotFoundError",
    "InvalidModelError",
    "UnsupportedModelError",
    "TokenizerError",
    "GenerationError",
    "CancelledError",
    "OutOfMemoryError",
    "Model",
    "Tokenizer",
    "ModelInfo",
    "TokenStream",
    "GenerationResponse",
    "GenerationResult",
    "Stats",
    "load",
    "load_tokenizer",
    "__version__",
]

__version__: str

_Prompt = Union[str, Sequence[int]]
_Stop = Union[str, Iterable[str], None]
_FinishReason = Literal["stop", "length", "cancelled"]

class CiderError(Exception): ...
class InvalidArgumentError(CiderError, ValueError): ...
class ModelLoadError(CiderError): ...
class ModelNotFoundError(ModelLoadError, FileNotFoundError): ...
class InvalidModelError(ModelLoadError): ...
class UnsupportedModelError(ModelLoadError): ...
class TokenizerError(CiderError): ...
class GenerationError(CiderError): ...
class CancelledError(CiderError): ...
class OutOfMemoryError(CiderError, MemoryError): ...

@final
class Stats:
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def prompt_tps(self) -> float: ...
    @property
    def generation_tokens(self) -> int: ...
    @property
    def generation_tps(self) -> float: ...
    @property
    def ttft_s(self) -> float: ...
    @property
    def total_s(self) -> float: ...
    @property
    def peak_memory_bytes(self) -> int: ...

@final
class GenerationResult:
    @property
    def text(self) -> str: ...
    @property
    def tokens(self) -> List[int]: ...
    @property
    def prompt_ids(self) -> List[int]: ...
    @property
    def finish_reason(self) -> _FinishReason: ...
    @property
    def stats(self) -> Stats: ...

@final
class GenerationResponse:
    @property
    def text(self) -> str: ...
    @property
    def token(self) -> Optional[int]: ...
    @property
    def finish_reason(self) -> Optional[_FinishReason]: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def prompt_tps(self) -> float: ...
    @property
    def generation_tokens(self) -> int: ...
    @property
    def generation_tps(self) -> float: ...
    @property
    def peak_memory(self) -> float: ...

@final
class TokenStream:
    def __iter__(self) -> Iterator[GenerationResponse]: ...
    def __next__(self) -> GenerationResponse: ...
    def close(self) -> Optional[GenerationResult]: ...
    @property
    def result(self) -> Optional[GenerationResult]: ...
    def __enter__(self) -> "TokenStream": ...
    def __exit__(self, *_exc: object) -> None: ...

@final
class ModelInfo:
    @property
    def model_type(self) -> str: ...
    @property
    def parameters(self) -> int: ...
    @property
    def bits(self) -> Optional[int]: ...
    @property
    def group_size(self) -> Optional[int]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def weight_bytes(self) -> int: ...
    @property
    def load_seconds(self) -> float: ...
    @property
    def resident_bytes(self) -> int: ...

_Messages = Sequence[Mapping[str, str]]

@final
class Tokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]: ...
    def encode_prompt(self, text: str) -> List[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...
    @overload
    def apply_chat_template(
        self, messages: _Messages, add_generation_prompt: bool = True, tokenize: Literal[False] = False
    ) -> str: ...
    @overload
    def apply_chat_template(self, messages: _Messages, add_generation_prompt: bool, tokenize: Literal[True]) -> List[int]: ...
    @overload
    def apply_chat_template(
        self, messages: _Messages, add_generation_prompt: bool = True, *, tokenize: Literal[True]
    ) -> List[int]: ...
    def token_to_id(self, token: str) -> Optional[int]: ...
    def id_to_token(self, id: int) -> Optional[str]: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_token(self) -> Optional[str]: ...
    @property
    def eos_token(self) -> Optional[str]: ...
    @property
    def eos_token_ids(self) -> List[int]: ...
    @property
    def has_chat_template(self) -> bool: ...

@final
class Model:
    @property
    def info(self) -> ModelInfo: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def path(self) -> str: ...
    @property
    def eos_token_ids(self) -> List[int]: ...
    @overload
    def apply_chat_template(
        self, messages: _Messages, add_generation_prompt: bool = True, tokenize: Literal[False] = False
    ) -> str: ...
    @overload
    def apply_chat_template(self, messages: _Messages, add_generation_prompt: bool, tokenize: Literal[True]) -> List[int]: ...
    @overload
    def apply_chat_template(
        self, messages: _Messages, add_generation_prompt: bool = True, *, tokenize: Literal[True]
    ) -> List[int]: ...
    def generate(
        self,
        prompt: _Prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: Optional[float] = None,
        repetition_context_size: int = 20,
        seed: Optional[int] = None,
        stop: _Stop = None,
        ignore_eos: bool = False,
        prefill_step_size: int = 2048,
    ) -> str: ...
    def generate_result(
        self,
        prompt: _Prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: Optional[float] = None,
        repetition_context_size: int = 20,
        seed: Optional[int] = None,
        stop: _Stop = None,
        ignore_eos: bool = False,
        prefill_step_size: int = 2048,
    ) -> GenerationResult: ...
    def stream(
        self,
        prompt: _Prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: Optional[float] = None,
        repetition_context_size: int = 20,
        seed: Optional[int] = None,
        stop: _Stop = None,
        ignore_eos: bool = False,
        prefill_step_size: int = 2048,
    ) -> TokenStream: ...

def load(
    path: Union[str, "os.PathLike[str]"],
    *,
    progress: Optional[Callable[[float], Optional[bool]]] = None,
    compute_dtype: Optional[Literal["float32", "float16", "bfloat16"]] = None,
    cpu_threads: Optional[int] = None,
) -> Model: ...
def load_tokenizer(path: Union[str, "os.PathLike[str]"]) -> Tokenizer: ...

_Bytes = Union[int, str]

@final
class Manager:
    """Many models under one memory budget (docs/registry.md)."""

    def __new__(
        cls,
        registry: Union[str, "os.PathLike[str]", None] = None,
        *,
        budget: Optional[_Bytes] = None,
        stats: Union[str, "os.PathLike[str]", None] = None,
        context_length: Optional[int] = None,
        scan: Optional[Sequence[Union[str, "os.PathLike[str]"]]] = None,
        hf_cache: bool = False,
    ) -> "Manager": ...
    def register(
        self,
        name: str,
        path: Union[str, "os.PathLike[str]"],
        *,
        aliases: Optional[Sequence[str]] = None,
        priority: int = 10,
        tasks: Optional[Sequence[str]] = None,
        scores: Optional[Mapping[str, float]] = None,
        pinned: bool = False,
        keep_alive: Optional[float] = None,
    ) -> Dict[str, Any]: ...
    def acquire(
        self,
        name: str,
        *,
        allow_fallback: bool = False,
        task: Optional[str] = None,
        wait: Optional[float] = None,
        context_length: Optional[int] = None,
    ) -> Model: ...
    def preload(self, names: Sequence[str]) -> List[Dict[str, Any]]: ...
    def pin(self, name: str) -> None: ...
    def unpin(self, name: str) -> None: ...
    def unload(self, name: str) -> Literal["unloaded", "deferred", "not_loaded"]: ...
    def expire_idle(self) -> List[str]: ...
    def select(
        self,
        task: Optional[str] = None,
        *,
        max_memory: Optional[_Bytes] = None,
        min_score: Optional[float] = None,
        score_key: str = "quality",
        context_length: int = 0,
    ) -> Dict[str, Any]: ...
    def models(self) -> List[Dict[str, Any]]: ...
    def info(self, name: str) -> Dict[str, Any]: ...
    def loaded(self) -> List[Dict[str, Any]]: ...
    def memory(self) -> Dict[str, Any]: ...
    def stats(self, name: Optional[str] = None) -> Dict[str, Any]: ...
    def save_stats(self) -> None: ...
    @property
    def budget(self) -> int: ...
    @budget.setter
    def budget(self, bytes: int) -> None: ...
