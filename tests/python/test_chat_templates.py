"""Chat template parity: cider's rendering vs transformers' for every real template in the fixtures.

cider renders through `cider chat-template --model DIR --messages FILE [--no-generation-prompt]`.
The reference is transformers itself: `AutoTokenizer.from_pretrained(DIR).apply_chat_template(
messages, tokenize=False, add_generation_prompt=...)` on the very same folder, so special-token
resolution (tokenizer_config.json vs special_tokens_map.json) and template file precedence are
compared too. Where transformers raises (e.g. "System role not supported"), cider must exit
non-zero with the message on stderr.

Run: .venv/bin/python -m pytest tests/python/test_chat_templates.py
Needs ../shared/fixtures (skips without it) and a release build of the CLI (CIDER_BIN overrides).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures"
CIDER_BIN = Path(os.environ.get("CIDER_BIN", REPO / "target" / "release" / "cider"))

if not FIXTURES.is_dir():
    pytest.skip(f"skipped: fixtures not found at {FIXTURES}", allow_module_level=True)
if not CIDER_BIN.is_file():
    pytest.skip(
        f"skipped: cider binary not found at {CIDER_BIN} (cargo build --release, or set CIDER_BIN)",
        allow_module_level=True,
    )

warnings.filterwarnings("ignore")
transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402

# The inputs of ollama's template tests (template/template_test.go), plus one that exercises
# whitespace stripping, quotes and multi-byte text.
USER = {"role": "user", "content": "Hello, how are you?"}
ASSISTANT = {"role": "assistant", "content": "I'm doing great. How can I help you today?"}
USER2 = {"role": "user", "content": "I'd like to show off how chat templating works!"}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TRICKY = {"role": "user", "content": "  \"Quoted\" <tag> & 'single' — 日本語 😀\n\nsecond line  "}
MESSAGE_SETS = {
    "user": [USER],
    "user-assistant-user": [USER, ASSISTANT, USER2],
    "system-user-assistant-user": [SYSTEM, USER, ASSISTANT, USER2],
    "tricky": [SYSTEM, TRICKY],
}

# Any real tokenizer.json will do for folders that have none: only the template and the
# special-token strings matter for rendering.
FALLBACK_TOKENIZER = FIXTURES / "tinyllama/resaved-transformers-4.56.0-TinyLlama-1.1B-Chat-v1.0/tokenizer.json"
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")

# Special tokens for standalone templates, by family (matched against the file name).
FAMILY_TOKENS = [
    ("llama-3", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("llama3", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("qwen", {"bos_token": None, "eos_token": "<|im_end|>"}),
    ("qwq", {"bos_token": None, "eos_token": "<|im_end|>"}),
    ("smollm", {"bos_token": None, "eos_token": "<|im_end|>"}),
    ("chatml", {"bos_token": None, "eos_token": "<|im_end|>"}),
    ("gemma", {"bos_token": "<bos>", "eos_token": "<eos>"}),
    ("phi", {"bos_token": "<s>", "eos_token": "<|endoftext|>"}),
    ("command-r", {"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>"}),
]
DEFAULT_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


def _tokens_for(name: str) -> dict:
    lower = name.lower()
    for key, toks in FAMILY_TOKENS:
        if key in lower:
            return toks
    return DEFAULT_TOKENS


def _collect_cases() -> dict[str, dict]:
    """id -> {"dir": fixture folder} or {"template": text, "name": str}."""
    cases: dict[str, dict] = {}
    # Folders with a template in tokenizer_config.json, chat_template.jinja or chat_template.json.
    for cfg in sorted(FIXTURES.rglob("*")):
        if cfg.name not in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
            continue
        d = cfg.parent
        key = str(d.relative_to(FIXTURES))
        if key in cases:
            continue
        has = (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file()
        if not has and (d / "tokenizer_config.json").is_file():
            has = json.loads((d / "tokenizer_config.json").read_text()).get("chat_template") is not None
        if has:
            cases[key] = {"dir": d}
    # Standalone .jinja files (llama.cpp's copies of HF templates, mistral-common's).
    seen_texts = set()
    for f in sorted(FIXTURES.rglob("*.jinja")):
        if f.name == "chat_template.jinja":
            continue
        text = f.read_text(encoding="utf-8")
        seen_texts.add(text)
        cases[str(f.relative_to(FIXTURES))] = {"template": text, "name": f.stem}
    # ollama's collections of real HF templates (deduplicated).
    index = FIXTURES / "vectors/ollama/template/index.json"
    jsonl = FIXTURES / "vectors/ollama/template/testdata/templates.jsonl"
    entries = []
    if index.is_file():
        entries += [(e["name"], e["template"]) for e in json.loads(index.read_text())]
    if jsonl.is_file():
        for line in jsonl.read_text().splitlines():
            if line.strip():
                entries += list(json.loads(line).items())
    for i, (name, text) in enumerate(entries):
        if text in seen_texts:
            continue
        seen_texts.add(text)
        cases[f"ollama/{i:02d}-{name}"] = {"template": text, "name": name}
    return cases


CASES = _collect_cases()
_TMP = Path(tempfile.mkdtemp(prefix="cider-chat-templates-"))


def teardown_module(module):  # noqa: ARG001
    shutil.rmtree(_TMP, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def model_dir(case_id: str) -> Path:
    """A folder holding the case's tokenizer files, readable by both cider and transformers."""
    case = CASES[case_id]
    out = _TMP / case_id.replace("/", "__")
    out.mkdir(parents=True, exist_ok=True)
    if "dir" in case:
        src = case["dir"]
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy(src / name, out / name)
        own_tokenizer = (src / "tokenizer.json").is_file()
        shutil.copy(src / "tokenizer.json" if own_tokenizer else FALLBACK_TOKENIZER, out / "tokenizer.json")
        cfg_path = out / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        if not own_tokenizer:
            # Ids in added_tokens_decoder belong to the missing vocabulary.
            cfg.pop("added_tokens_decoder", None)
    else:
        shutil.copy(FALLBACK_TOKENIZER, out / "tokenizer.json")
        (out / "chat_template.jinja").write_text(case["template"], encoding="utf-8")
        cfg = {k: v for k, v in _tokens_for(case["name"]).items()}
    # The generic fast backend: transformers must not rebuild the tokenizer or run remote code.
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("auto_map", None)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    return out


@functools.lru_cache(maxsize=None)
def reference_tokenizer(case_id: str):
    return AutoTokenizer.from_pretrained(str(model_dir(case_id)))


def reference(case_id: str, messages: list[dict], add_generation_prompt: bool):
    """(text, None) or (None, error message) from transformers."""
    tok = reference_tokenizer(case_id)
    kwargs = {}
    legacy = model_dir(case_id) / "chat_template.json"
    if tok.chat_template is None and legacy.is_file():
        # chat_template.json is the processor's file (AutoProcessor reads it, AutoTokenizer does
        # not); cider falls back to it, so render that template.
        kwargs["chat_template"] = json.loads(legacy.read_text(encoding="utf-8"))["chat_template"]
    try:
        text = tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
        return text, None
    except Exception as e:  # noqa: BLE001 - any template failure is a case to compare
        return None, str(e)


def cider(case_id: str, messages: list[dict], add_generation_prompt: bool) -> subprocess.CompletedProcess:
    d = model_dir(case_id)
    msg_file = d / "messages.json"
    msg_file.write_text(json.dumps(messages, ensure_ascii=False), encoding="utf-8")
    cmd = [str(CIDER_BIN), "chat-template", "--model", str(d), "--messages", str(msg_file)]
    if not add_generation_prompt:
        cmd.append("--no-generation-prompt")
    return subprocess.run(cmd, capture_output=True, timeout=60)


@pytest.mark.parametrize("messages_name", list(MESSAGE_SETS))
@pytest.mark.parametrize("case_id", list(CASES))
def test_template_parity(case_id: str, messages_name: str):
    messages = MESSAGE_SETS[messages_name]
    for gen in (True, False):
        want, err = reference(case_id, messages, gen)
        got = cider(case_id, messages, gen)
        stderr = got.stderr.decode("utf-8", "replace")
        where = f"{case_id} / {messages_name} / add_generation_prompt={gen}"
        if err is not None:
            assert got.returncode != 0, f"{where}: transformers raised {err!r}, cider printed {got.stdout!r}"
            assert err in stderr, f"{where}: transformers raised {err!r}; cider stderr: {stderr!r}"
        else:
            assert got.returncode == 0, f"{where}: cider failed: {stderr}"
            assert got.stdout == want.encode("utf-8"), (
                f"{where}:\n--- transformers\n{want!r}\n--- cider\n{got.stdout.decode('utf-8', 'replace')!r}"
            )


def test_cases_found():
    # Guards against the collection silently finding nothing (e.g. a moved fixtures layout).
    assert len(CASES) >= 40, sorted(CASES)
