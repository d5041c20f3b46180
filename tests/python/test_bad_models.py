"""Broken model folders: `cider generate` must fail with one clear line.

Each test copies a good tiny model, breaks one thing, and checks that cider
exits non-zero, prints exactly one line on stderr that names the problem
(file, key, tensor, shape), and does not panic.

Run: .venv/bin/python -m pytest tests/python/test_bad_models.py -q
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from conftest import run_cider

PANIC_MARKERS = ("panicked", "RUST_BACKTRACE", "stack backtrace")
GOOD_ARCH = "llama"  # 32000-token vocab: the smallest real tokenizer


@pytest.fixture
def good_dir(model_factory, tmp_path) -> Path:
    src = model_factory.get(GOOD_ARCH)
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def good_quant_dir(model_factory, tmp_path) -> Path:
    src = model_factory.get(GOOD_ARCH, quant="q4g64")
    dst = tmp_path / "model-q4"
    shutil.copytree(src, dst)
    return dst


def _fail_line(cider_bin, model_dir) -> str:
    """Run generate on a broken folder, check the failure shape, return the line."""
    proc = run_cider(
        cider_bin,
        "generate", "--model", str(model_dir), "--prompt", "hello",
        "--max-tokens", "4", "--temp", "0", "--ignore-eos",
    )
    err = proc.stderr
    assert proc.returncode != 0, f"cider accepted a broken model; stdout={proc.stdout[:500]!r} stderr={err!r}"
    assert proc.returncode != 101, f"exit code 101 is a Rust panic:\n{err}"
    for marker in PANIC_MARKERS:
        assert marker not in err, f"{marker!r} on stderr:\n{err}"
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


def _read_safetensors(path: Path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return raw, n, header


def _write_safetensors(path: Path, header: dict, tensors: dict):
    """tensors: name -> bytes, written in header order with fresh offsets."""
    meta = header.get("__metadata__")
    out_header = {}
    if meta is not None:
        out_header["__metadata__"] = meta
    data = b""
    for name, info in header.items():
        if name == "__metadata__" or name not in tensors:
            continue
        blob = tensors[name]
        out_header[name] = dict(info, data_offsets=[len(data), len(data) + len(blob)])
        data += blob
    h = json.dumps(out_header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _tensor_blobs(raw: bytes, n: int, header: dict) -> dict:
    base = 8 + n
    return {
        k: raw[base + v["data_offsets"][0] : base + v["data_offsets"][1]]
        for k, v in header.items()
        if k != "__metadata__"
    }


def _drop_from_index(model_dir: Path, name: str):
    idx = model_dir / "model.safetensors.index.json"
    if idx.exists():
        data = json.loads(idx.read_text())
        data["weight_map"].pop(name, None)
        idx.write_text(json.dumps(data, indent=4))


# ------------------------------------------------------------------ tests


def test_good_model_runs(cider_bin, good_dir):
    """The starting point must work, or every test below proves nothing."""
    proc = run_cider(
        cider_bin, "generate", "--model", str(good_dir), "--prompt", "hello",
        "--max-tokens", "4", "--temp", "0", "--ignore-eos",
    )
    assert proc.returncode == 0, proc.stderr


def test_missing_folder(cider_bin, tmp_path):
    missing = tmp_path / "no-such-model"
    line = _fail_line(cider_bin, missing)
    assert "no-such-model" in line, line


def test_missing_config(cider_bin, good_dir):
    (good_dir / "config.json").unlink()
    line = _fail_line(cider_bin, good_dir)
    assert "config.json" in line, line


def test_bad_json_config(cider_bin, good_dir):
    text = (good_dir / "config.json").read_text()
    # A missing comma after "hidden_size": the error is on the next line.
    lines = text.splitlines()
    i = next(i for i, l in enumerate(lines) if '"hidden_size"' in l)
    assert lines[i].rstrip().endswith(","), lines[i]
    lines[i] = lines[i].rstrip()[:-1]
    (good_dir / "config.json").write_text("\n".join(lines) + "\n")
    line = _fail_line(cider_bin, good_dir)
    assert "config.json" in line, line
    assert re.search(r"line\D{0,3}\d+", line, re.I), f"no line number: {line}"
    assert re.search(r"col(umn)?\D{0,3}\d+", line, re.I), f"no column number: {line}"


def test_unknown_model_type(cider_bin, good_dir):
    cfg = json.loads((good_dir / "config.json").read_text())
    cfg["model_type"] = "frobnicator9000"
    (good_dir / "config.json").write_text(json.dumps(cfg, indent=4))
    line = _fail_line(cider_bin, good_dir)
    assert "frobnicator9000" in line, line
    for supported in ("llama", "mistral", "qwen2", "qwen3", "phi3"):
        assert supported in line, f"supported type {supported!r} not listed: {line}"


def test_missing_safetensors(cider_bin, good_dir):
    for p in good_dir.glob("*.safetensors"):
        p.unlink()
    (good_dir / "model.safetensors.index.json").unlink(missing_ok=True)
    line = _fail_line(cider_bin, good_dir)
    assert "safetensors" in line, line


def test_truncated_safetensors_data(cider_bin, good_dir):
    f = good_dir / "model.safetensors"
    raw, n, _ = _read_safetensors(f)
    data_len = len(raw) - 8 - n
    f.write_bytes(raw[: 8 + n + data_len // 2])
    line = _fail_line(cider_bin, good_dir)
    assert "model.safetensors" in line, line


def test_truncated_safetensors_header(cider_bin, good_dir):
    f = good_dir / "model.safetensors"
    raw, n, _ = _read_safetensors(f)
    f.write_bytes(raw[: 8 + n // 2])
    line = _fail_line(cider_bin, good_dir)
    assert "model.safetensors" in line, line


def test_missing_tensor(cider_bin, good_dir):
    name = "model.layers.0.mlp.down_proj.weight"
    f = good_dir / "model.safetensors"
    raw, n, header = _read_safetensors(f)
    blobs = _tensor_blobs(raw, n, header)
    assert name in blobs
    del blobs[name]
    _write_safetensors(f, header, blobs)
    _drop_from_index(good_dir, name)
    line = _fail_line(cider_bin, good_dir)
    assert name in line, line


def test_wrong_shape(cider_bin, good_dir):
    name = "model.layers.0.mlp.down_proj.weight"
    f = good_dir / "model.safetensors"
    raw, n, header = _read_safetensors(f)
    blobs = _tensor_blobs(raw, n, header)
    rows, cols = header[name]["shape"]
    assert (rows, cols) == (64, 128), header[name]
    # Keep a consistent file (data matches the header), just the wrong shape.
    itemsize = len(blobs[name]) // (rows * cols)
    header[name] = dict(header[name], shape=[rows, 96])
    blobs[name] = blobs[name][: rows * 96 * itemsize]
    _write_safetensors(f, header, blobs)
    line = _fail_line(cider_bin, good_dir)
    assert name in line, line
    assert "96" in line and "128" in line, f"want expected (64, 128) and actual (64, 96) shapes: {line}"


def test_unsupported_quant_mode(cider_bin, good_quant_dir):
    cfg = json.loads((good_quant_dir / "config.json").read_text())
    for key in ("quantization", "quantization_config"):
        cfg[key]["mode"] = "nf4"
    (good_quant_dir / "config.json").write_text(json.dumps(cfg, indent=4))
    line = _fail_line(cider_bin, good_quant_dir)
    assert "nf4" in line, line


def test_bad_tokenizer_json(cider_bin, good_dir):
    tj = good_dir / "tokenizer.json"
    tj.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    line = _fail_line(cider_bin, good_dir)
    assert "tokenizer.json" in line, line
