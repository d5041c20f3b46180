"""cider.Manager from Python: models of known sizes under a budget, eviction by
priority then LRU, pinning, deferred unloads of models in use, select, errors.

Needs the `cider` wheel installed (scripts/test_python.sh installs it).
"""

from __future__ import annotations

import gc
import importlib.util
import json

import pytest

if importlib.util.find_spec("cider") is None:
    pytest.skip("the cider wheel is not installed here (scripts/test_python.sh installs it)", allow_module_level=True)

import cider  # noqa: E402


@pytest.fixture(scope="module")
def dirs(model_factory):
    # Three sizes: hidden 32 / 64 / 128 (f32, so sizes are large enough to tell apart).
    small = model_factory.get("llama", "float32", None, 1, hidden_size=32, intermediate_size=64)
    mid = model_factory.get("llama", "float32", None, 2)
    big = model_factory.get("llama", "float32", None, 3, hidden_size=128, intermediate_size=256)
    return {"small": small, "mid": mid, "big": big}


def _manager(dirs, budget, tmp_path):
    m = cider.Manager(budget=budget, stats=str(tmp_path / "stats.json"), context_length=64)
    m.register("small", dirs["small"], priority=5, tasks=["chat"], scores={"quality": 0.2})
    m.register("mid", dirs["mid"], priority=1, tasks=["chat"], scores={"quality": 0.6}, aliases=["m"])
    m.register("big", dirs["big"], priority=0, tasks=["chat"], scores={"quality": 0.9})
    return m


def _loaded(m):
    return sorted(x["name"] for x in m.loaded())


def test_eviction_pinning_and_select(dirs, tmp_path):
    probe = _manager(dirs, 10**12, tmp_path)
    est = {n: probe.info(n)["estimate_bytes"] for n in dirs}
    assert est["small"] < est["mid"] < est["big"], est
    # Room for big + mid, not all three.
    budget = est["big"] + est["mid"] + est["small"] // 2
    m = _manager(dirs, budget, tmp_path)

    a = m.acquire("small")
    b = m.acquire("m")  # alias
    assert _loaded(m) == ["mid", "small"]
    del a, b
    m.acquire("big")
    # small has the lowest priority (largest number): it goes first.
    assert _loaded(m) == ["big", "mid"]
    assert m.memory()["accounted_bytes"] <= budget

    m.pin("mid")
    m.acquire("small")
    assert "mid" in _loaded(m) and "small" in _loaded(m) and "big" not in _loaded(m)

    # Generations on an acquired model count in its usage statistics.
    before = m.stats("small").get("generations", 0)
    m.acquire("small").generate_result([1, 2, 3], max_tokens=2, ignore_eos=True)
    assert m.stats("small")["generations"] == before + 1

    sel = m.select("chat", max_memory=est["mid"])
    assert sel["chosen"] == "mid", json.dumps(sel)
    reasons = {c["name"]: c for c in sel["candidates"]}
    assert not reasons["big"]["eligible"]


def test_in_use_models_are_deferred_and_too_big_is_refused(dirs, tmp_path):
    probe = _manager(dirs, 10**12, tmp_path)
    est = {n: probe.info(n)["estimate_bytes"] for n in dirs}
    m = _manager(dirs, est["big"] + est["small"], tmp_path)
    held = m.acquire("small")
    assert m.unload("small") == "deferred"
    assert len(held.generate_result([1, 2, 3], max_tokens=2, ignore_eos=True).tokens) == 2  # still usable
    del held
    gc.collect()
    m.expire_idle()  # the manager notices released models on its next call
    assert "small" not in _loaded(m)

    tiny = _manager(dirs, est["small"] // 2, tmp_path)
    with pytest.raises(cider.OutOfMemoryError) as e:
        tiny.acquire("big")
    assert "big" in str(e.value)
    with pytest.raises(cider.CiderError):
        tiny.acquire("no-such-model")
    with pytest.raises((TypeError, ValueError)):
        cider.Manager(budget="lots")
