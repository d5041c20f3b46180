"""Shared fixtures for cider's Python-side tests (parity with mlx-lm, bad model folders).

The cider binary is $CIDER_BIN, else <repo>/target/release/cider. Tests that
need it are skipped, with a reason, while it has not been built.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402

REPO_ROOT = HERE.parents[1]


def cider_path() -> Path:
    return Path(os.environ.get("CIDER_BIN", REPO_ROOT / "target" / "release" / "cider"))


@pytest.fixture(scope="session")
def cider_bin() -> Path:
    p = cider_path()
    if not p.exists():
        pytest.skip(f"cider binary not built: {p} (set CIDER_BIN or cargo build --release)")
    return p


def run_cider(binary: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # A panic must be visible as such in the tests, not hidden by settings.
    env.pop("RUST_BACKTRACE", None)
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# ---------------------------------------------------------------- models


class ModelFactory:
    """Makes each (arch, dtype, quant, seed, overrides) folder once per session."""

    def __init__(self, root: Path):
        self.root = root
        self._made: Dict[Tuple, Path] = {}

    def get(self, arch: str, dtype: str = "bfloat16", quant: Optional[str] = None, seed: int = 0, **overrides) -> Path:
        key = (arch, dtype, quant, seed, json.dumps(overrides, sort_keys=True))
        if key not in self._made:
            name = f"{arch}-{dtype}-{quant or 'noq'}-s{seed}"
            if overrides:
                name += f"-{len(self._made)}"
            self._made[key] = models.make_model(self.root / name, arch, dtype, quant, seed, **overrides)
        return self._made[key]


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory) -> ModelFactory:
    return ModelFactory(tmp_path_factory.mktemp("models"))


# ------------------------------------------------------------- reference


@dataclass
class Reference:
    prompt_ids: List[int]
    tokens: List[int]
    text: str  # tokenizer.decode(tokens)
    streamed_text: str  # what mlx_lm.generate would print (streaming detokenizer)
    margins_ulp: List[float] = field(default_factory=list)  # top1-top2 gap per step, in ulps of the runner-up


def _ulps(gap: float, value: float, dtype_bits: int) -> float:
    """gap measured in units in the last place of `value` for a float with
    `dtype_bits` explicit mantissa bits (bf16: 7, f16: 10, f32: 23)."""
    if value == 0:
        return math.inf if gap > 0 else 0.0
    return gap / 2.0 ** (math.floor(math.log2(abs(value))) - dtype_bits)


_MANTISSA = {"bfloat16": 7, "float16": 10, "float32": 23}


class MlxReference:
    """mlx-lm, in process, used the way `mlx_lm.generate` uses it."""

    def __init__(self):
        self._loaded: Dict[Path, tuple] = {}

    def load(self, model_dir: Path):
        if model_dir not in self._loaded:
            from mlx_lm import load

            self._loaded[model_dir] = load(str(model_dir))
        return self._loaded[model_dir]

    def prompt_ids(self, model_dir: Path, prompt: str, chat: bool = True, system: Optional[str] = None) -> List[int]:
        _, tok = self.load(model_dir)
        if chat and tok.has_chat_template:
            messages = [{"role": "system", "content": system}] if system is not None else []
            messages.append({"role": "user", "content": prompt})
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(tok.encode(text, add_special_tokens=False))
        add_special = tok.bos_token is None or not prompt.startswith(tok.bos_token)
        return list(tok.encode(prompt, add_special_tokens=add_special))

    def generate(
        self,
        model_dir: Path,
        prompt: str,
        max_tokens: int,
        chat: bool = True,
        system: Optional[str] = None,
    ) -> Reference:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler

        model, tok = self.load(model_dir)
        ids = self.prompt_ids(model_dir, prompt, chat, system)
        cfg = json.loads((model_dir / "config.json").read_text())
        bits = _MANTISSA.get(cfg.get("torch_dtype"), 7)
        sampler = make_sampler(temp=0.0)
        tokens: List[int] = []
        margins: List[float] = []
        # generate_step never stops at EOS, which is what --ignore-eos asks of cider.
        for token, logprobs in generate_step(mx.array(ids), model, max_tokens=max_tokens, sampler=sampler):
            tokens.append(int(token))
            top2 = mx.sort(logprobs.astype(mx.float32))[-2:].tolist()
            margins.append(_ulps(top2[1] - top2[0], top2[0], bits))
        detok = tok.detokenizer
        detok.reset()
        for t in tokens:
            detok.add_token(t)
        detok.finalize()
        return Reference(ids, tokens, tok.decode(tokens), detok.text, margins)


@pytest.fixture(scope="session")
def mlx_ref() -> MlxReference:
    return MlxReference()
