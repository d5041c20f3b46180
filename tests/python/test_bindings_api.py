"""The Python bindings' surface beyond generation: model info, the tokenizer against
mlx-lm's (HF) tokenizer, chat templates, and every exception class for bad folders and bad
arguments.

Needs the `cider` wheel installed in this interpreter: scripts/test_python.sh builds and
installs it, then runs these files.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

if importlib.util.find_spec("cider") is None:
    pytest.skip("the cider wheel is not installed here (scripts/test_python.sh installs it)", allow_module_level=True)

import cider  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colors."},
    {"role": "assistant", "content": "Red, green, blue."},
    {"role": "user", "content": "And three more?"},
]
TEXTS = [
    "Hello, world!",
    "  leading spaces and\ttabs\nand newlines",
    "Unicode: héllo wörld 日本語 🍎",
    "<s> starts with the BOS string",
]


@pytest.fixture(scope="module")
def llama_dir(model_factory) -> Path:
    return model_factory.get("llama", "bfloat16", None, 0)


@pytest.fixture(scope="module")
def llama(llama_dir):
    return cider.load(llama_dir)


@pytest.fixture(scope="module")
def qwen3_q4_dir(model_factory) -> Path:
    return model_factory.get("qwen3", "bfloat16", "q4g64", 0)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ model info


def test_info(llama, llama_dir, qwen3_q4_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    info = llama.info
    assert info.model_type == "llama"
    assert info.bits is None and info.group_size is None
    assert info.vocab_size == cfg["vocab_size"]
    assert info.context_length == cfg["max_position_embeddings"]
    assert info.num_layers == cfg["num_hidden_layers"] and info.hidden_size == cfg["hidden_size"]
    assert info.parameters > 0 and info.weight_bytes > 0 and info.load_seconds > 0
    assert info.dtype == "bfloat16"
    assert "llama" in repr(info) and "llama" in repr(llama)
    assert Path(llama.path) == llama_dir

    q = cider.load(qwen3_q4_dir).info
    assert q.model_type == "qwen3" and q.bits == 4 and q.group_size == 64


def test_load_accepts_pathlike_and_reports_progress(llama_dir):
    seen = []
    m = cider.load(Path(llama_dir), progress=seen.append)
    assert isinstance(m, cider.Model)
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)


def test_model_cannot_be_constructed_directly():
    with pytest.raises(TypeError):
        cider.Model()  # type: ignore[call-arg]


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_matches_mlx_lm(llama, llama_dir, mlx_ref):
    _, ref = mlx_ref.load(llama_dir)
    tok = llama.tokenizer
    assert tok.vocab_size == len(ref._tokenizer)
    assert tok.bos_token == ref.bos_token and tok.eos_token == ref.eos_token
    assert set(ref.eos_token_ids) <= set(tok.eos_token_ids)
    for text in TEXTS:
        for special in (True, False):
            ids = tok.encode(text, add_special_tokens=special)
            assert ids == list(ref.encode(text, add_special_tokens=special)), (text, special)
            assert tok.decode(ids) == ref.decode(ids), text
            assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
        assert tok.encode_prompt(text) == mlx_ref.prompt_ids(llama_dir, text, chat=False)
    for text in TEXTS[:3]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)).strip() == text.strip()
    assert tok.id_to_token(tok.token_to_id("<s>")) == "<s>"
    assert tok.token_to_id("\x00 no such token") is None


def test_load_tokenizer_alone(llama_dir, llama):
    tok = cider.load_tokenizer(llama_dir)
    assert tok.encode("Hello there") == llama.tokenizer.encode("Hello there")
    assert tok.has_chat_template


def test_chat_template_matches_mlx_lm(llama, llama_dir, mlx_ref):
    _, ref = mlx_ref.load(llama_dir)
    for agp in (True, False):
        want = ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=agp)
        assert llama.apply_chat_template(MESSAGES, add_generation_prompt=agp) == want
        assert llama.tokenizer.apply_chat_template(MESSAGES, agp) == want
        ids = llama.apply_chat_template(MESSAGES, add_generation_prompt=agp, tokenize=True)
        assert ids == list(ref.encode(want, add_special_tokens=False))
    # Any sequence of mappings will do.
    assert llama.apply_chat_template(tuple(MESSAGES)) == llama.apply_chat_template(MESSAGES)


# ------------------------------------------------------------------ errors: folders


def test_hierarchy():
    for cls in (
        cider.InvalidArgumentError,
        cider.ModelLoadError,
        cider.TokenizerError,
        cider.GenerationError,
        cider.CancelledError,
        cider.OutOfMemoryError,
    ):
        assert issubclass(cls, cider.CiderError)
    assert issubclass(cider.CiderError, Exception)
    assert issubclass(cider.InvalidArgumentError, ValueError)
    for cls in (cider.ModelNotFoundError, cider.InvalidModelError, cider.UnsupportedModelError):
        assert issubclass(cls, cider.ModelLoadError)
    assert issubclass(cider.ModelNotFoundError, FileNotFoundError)
    assert issubclass(cider.OutOfMemoryError, MemoryError)
    assert cider.CiderError.__module__ == "cider"


def test_missing_folder(tmp_path):
    with pytest.raises(cider.ModelNotFoundError) as e:
        cider.load(tmp_path / "nope")
    assert "nope" in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, cider.CiderError)


def test_malformed_config(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path / "m")
    (d / "config.json").write_text("{ not json")
    with pytest.raises(cider.InvalidModelError, match="config.json"):
        cider.load(d)


def test_missing_weights(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path / "m")
    for f in d.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(cider.ModelLoadError):
        cider.load(d)


def test_unsupported_architecture(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "no-such-arch"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(cider.UnsupportedModelError, match="no-such-arch"):
        cider.load(d)


def test_no_chat_template_is_a_tokenizer_error(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path / "m")
    (d / "chat_template.jinja").unlink(missing_ok=True)
    (d / "chat_template.json").unlink(missing_ok=True)
    tc = d / "tokenizer_config.json"
    cfg = json.loads(tc.read_text())
    cfg.pop("chat_template", None)
    tc.write_text(json.dumps(cfg))
    m = cider.load(d)
    assert not m.tokenizer.has_chat_template
    with pytest.raises(cider.TokenizerError, match="chat template"):
        m.apply_chat_template([{"role": "user", "content": "hi"}])


def test_progress_false_cancels(llama_dir):
    with pytest.raises(cider.CancelledError):
        cider.load(llama_dir, progress=lambda f: f < 0.5)


def test_progress_exception_propagates(llama_dir):
    class Boom(Exception):
        pass

    def progress(f: float) -> None:
        if f > 0.2:
            raise Boom("from the callback")

    with pytest.raises(Boom):
        cider.load(llama_dir, progress=progress)


# ------------------------------------------------------------------ errors: arguments


@pytest.mark.parametrize(
    "prompt,kw",
    [
        ("hi", dict(temperature=-1.0)),
        ("hi", dict(temperature=float("nan"))),
        ("hi", dict(top_p=1.5)),
        ("hi", dict(min_p=-0.1)),
        ("hi", dict(top_k=10**9)),
        ("hi", dict(top_k=-1)),
        ("hi", dict(max_tokens=-1)),
        ("hi", dict(seed=-1)),
        ("hi", dict(repetition_penalty=-2.0)),
        ("hi", dict(prefill_step_size=0)),
        ([], {}),
        ([10**7], {}),
        ([-1], {}),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_values_raise_value_error(llama, prompt, kw):
    for call in (llama.generate, llama.generate_result, llama.stream):
        with pytest.raises(cider.InvalidArgumentError) as e:
            r = call(prompt, **kw)
            list(r) if isinstance(r, cider.TokenStream) else None
        assert isinstance(e.value, ValueError) and str(e.value)
    with pytest.raises(ValueError):
        cider.generate(llama, prompt, **kw)


@pytest.mark.parametrize(
    "prompt,kw",
    [
        (3.5, {}),
        (None, {}),
        (b"bytes", {}),
        ([1.5], {}),
        (["a"], {}),
        ([True], {}),
        ("hi", dict(max_tokens="10")),
        ("hi", dict(max_tokens=1.5)),
        ("hi", dict(temperature="hot")),
        ("hi", dict(stop=5)),
        ("hi", dict(stop=[1])),
        ("hi", dict(ignore_eos="yes")),
        ("hi", dict(seed="s")),
        ("hi", dict(no_such_option=1)),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_types_raise_type_error(llama, prompt, kw):
    for call in (llama.generate, llama.generate_result, llama.stream):
        with pytest.raises(TypeError):
            call(prompt, **kw)
    with pytest.raises(TypeError):
        cider.stream_generate(llama, prompt, **kw)


def test_bad_arguments_elsewhere(llama, llama_dir):
    with pytest.raises(TypeError):
        cider.load(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cider.load(llama_dir, progress=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cider.generate("not a model", "hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cider.stream_generate(None, "hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llama.generate("hi", 5)  # keywords only
    tok = llama.tokenizer
    with pytest.raises(TypeError):
        tok.encode(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tok.decode("abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tok.decode([-5])
    with pytest.raises(TypeError):
        llama.apply_chat_template("hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        llama.apply_chat_template([("user", "hi")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        llama.apply_chat_template([{"role": "user", "content": 5}])  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="content"):
        llama.apply_chat_template([{"role": "user"}])
    with pytest.raises(cider.InvalidArgumentError):
        llama.apply_chat_template([])


def test_compute_dtype_float32(llama_dir, qwen3_q4_dir):
    # Converting to float32 at load changes the dtype reported and still generates;
    # the default keeps the checkpoint's dtype (bit-parity with mlx-lm).
    for d in (llama_dir, qwen3_q4_dir):
        m = cider.load(d, compute_dtype="float32")
        assert m.info.dtype == "float32"
        assert len(m.generate_result([1, 2, 3], max_tokens=3, ignore_eos=True).tokens) == 3
    assert cider.load(llama_dir).info.dtype == "bfloat16"
    with pytest.raises(ValueError):
        cider.load(llama_dir, compute_dtype="int8")


def test_cpu_threads(llama_dir, qwen3_q4_dir):
    # Projections split over CPU streams give the one-stream tokens (the core's
    # cpu_split test checks the logits bit for bit); a bad count is refused.
    for d in (llama_dir, qwen3_q4_dir):
        one = cider.load(d, cpu_threads=1).generate_result([1, 2, 3], max_tokens=6, ignore_eos=True).tokens
        two = cider.load(d, cpu_threads=2).generate_result([1, 2, 3], max_tokens=6, ignore_eos=True).tokens
        assert one == two
    with pytest.raises(cider.InvalidArgumentError, match="CPU threads"):
        cider.load(llama_dir, cpu_threads=0)
    with pytest.raises((OverflowError, TypeError)):
        cider.load(llama_dir, cpu_threads=-1)
