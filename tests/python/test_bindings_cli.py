"""`python -m cider`: the Rust CLI's generate / tokenize / chat-template commands with the same
flags, checked against mlx-lm and, where it has been built, against the `cider` binary.

Needs the `cider` wheel installed in this interpreter: scripts/test_python.sh builds and
installs it, then runs these files.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cider_path, run_cider

if importlib.util.find_spec("cider") is None:
    pytest.skip("the cider wheel is not installed here (scripts/test_python.sh installs it)", allow_module_level=True)


def py_cider(*args: str, input: str = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cider", *args], capture_output=True, text=True, timeout=300, input=input
    )


@pytest.fixture(scope="module")
def llama_dir(model_factory) -> Path:
    return model_factory.get("llama", "bfloat16", None, 0)


def _rust_cli():
    p = cider_path()
    return p if p.exists() else None


@pytest.mark.parametrize("chat", [True, False])
def test_generate_json_matches_mlx_lm(llama_dir, mlx_ref, chat):
    args = ["generate", "--model", str(llama_dir), "--prompt", "Tell me a story", "--max-tokens", "10"]
    args += ["--ignore-eos", "--format", "json"] + ([] if chat else ["--no-chat-template"])
    proc = py_cider(*args)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ref = mlx_ref.generate(llama_dir, "Tell me a story", 10, chat=chat)
    assert out["prompt_tokens"] == ref.prompt_ids
    assert out["tokens"] == ref.tokens
    assert out["text"] == ref.text and out["finish_reason"] == "length"
    assert set(out["stats"]) == {
        "prompt_tokens",
        "prompt_tps",
        "generation_tokens",
        "generation_tps",
        "ttft_s",
        "peak_memory_bytes",
        "load_s",
        "resident_bytes",
    }
    rust = _rust_cli()
    if rust is not None:
        r = run_cider(rust, *args)
        assert r.returncode == 0, r.stderr
        want = json.loads(r.stdout)
        assert {k: want[k] for k in ("text", "tokens", "prompt_tokens", "finish_reason")} == {
            k: out[k] for k in ("text", "tokens", "prompt_tokens", "finish_reason")
        }
        assert set(want["stats"]) == set(out["stats"])


def test_generate_text_mode_and_flags(llama_dir):
    args = [
        "generate", "--model", str(llama_dir), "--prompt", "Hi\\nthere", "--system", "Be brief.",
        "--max-tokens", "6", "--temp", "0.8", "--top-p", "0.9", "--top-k", "20", "--min-p", "0.01",
        "--repetition-penalty", "1.1", "--repetition-context-size", "8", "--seed", "5",
        "--stop", "zzz", "--stop", "yyy", "--ignore-eos",
    ]  # fmt: skip
    proc = py_cider(*args)
    assert proc.returncode == 0, proc.stderr
    for line in ("==========", "Prompt: ", "Generation: 6 tokens", "Time to first token", "Finish: length"):
        assert line in proc.stderr
    rust = _rust_cli()
    if rust is not None:
        r = run_cider(rust, *args)
        assert r.returncode == 0 and r.stdout == proc.stdout


def test_prompt_from_stdin(llama_dir):
    base = ["generate", "--model", str(llama_dir), "--max-tokens", "5", "--ignore-eos", "--format", "json"]
    a = json.loads(py_cider(*base, "--prompt", "-", input="Hello from stdin").stdout)
    b = json.loads(py_cider(*base, "--prompt", "Hello from stdin").stdout)
    assert a["tokens"] == b["tokens"] and a["prompt_tokens"] == b["prompt_tokens"]


def test_tokenize_and_chat_template(llama_dir, mlx_ref, tmp_path):
    proc = py_cider("tokenize", "--model", str(llama_dir), "--text", "Hello world")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == mlx_ref.prompt_ids(llama_dir, "Hello world", chat=False)
    proc = py_cider("tokenize", "--model", str(llama_dir), "--text", "Hello world", "--chat")
    assert json.loads(proc.stdout) == mlx_ref.prompt_ids(llama_dir, "Hello world", chat=True)

    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    f = tmp_path / "m.json"
    f.write_text(json.dumps(msgs))
    _, tok = mlx_ref.load(llama_dir)
    for flag, agp in (([], True), (["--no-generation-prompt"], False)):
        proc = py_cider("chat-template", "--model", str(llama_dir), "--messages", str(f), *flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
    rust = _rust_cli()
    if rust is not None:
        for args in (
            ["tokenize", "--model", str(llama_dir), "--text", "Hello world"],
            ["chat-template", "--model", str(llama_dir), "--messages", str(f)],
        ):
            assert run_cider(rust, *args).stdout == py_cider(*args).stdout


def test_errors_exit_1_with_one_line(tmp_path, llama_dir):
    proc = py_cider("generate", "--model", str(tmp_path / "missing"), "--prompt", "x")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "missing" in proc.stderr and "Traceback" not in proc.stderr
    proc = py_cider("generate", "--model", str(llama_dir), "--prompt", "x", "--temp", "-1")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    proc = py_cider("generate", "--model", str(llama_dir))
    assert proc.returncode == 2  # usage error, as clap's
