"""cider against mlx-lm on the same model, prompt token ids and lengths.

For each model folder this runs rounds of: `cider bench` (a subprocess) and
mlx-lm's `stream_generate` (this script again, as a `--worker` subprocess),
alternating which goes first (ABBA), so machine noise hits both. Each round
is one fresh process per engine: load, warm-up, then --repeat measured runs.
It prints, per figure, both medians, their spread (min-max over every run)
and the ratio cider/mlx-lm.

Both engines are timed the same way, from the prompt ids in hand:
  ttft       time to the first generated token on the host (prefill of the
             prompt and the first decode step)
  prompt     prompt tokens / ttft
  decode     (tokens - 1) / (time of the last token - time of the first)
  peak       MLX peak memory during a generation (reset at its start;
             weights included), and the process's peak RSS
  load       loading the model folder until the weights are evaluated
Greedy sampling, EOS ignored, so both make exactly --gen-tokens tokens; the
generated ids of the two engines are compared and reported.

The prompt is `(i * 7919 + 1) mod vocab` for i < N, the same formula as
`cider bench`.

Usage:
    python bench/compare.py MODEL_DIR [MODEL_DIR ...] [--prompt-tokens 128]
        [--gen-tokens 128] [--rounds 3] [--repeat 1] [--device gpu|cpu]
        [--cider target/release/cider] [--cider-preload LIB] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]


def synthetic_prompt(n: int, vocab: int) -> List[int]:
    return [(i * 7919 + 1) % vocab for i in range(n)]


def vm_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def spread(v: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def gpu_available() -> bool:
    p = subprocess.run([sys.executable, "-c", "import mlx.core as mx; print(mx.is_available(mx.gpu))"],
                       capture_output=True, text=True)
    return p.stdout.strip() == "True"


def worker(a) -> int:
    """mlx-lm in this process: load, warm up, measure; print one JSON line."""
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    if a.device == "gpu":
        mx.set_default_device(mx.gpu)
    elif a.device == "cpu":
        mx.set_default_device(mx.cpu)
    t = time.perf_counter()
    model, tok = load(a.model)
    load_s = time.perf_counter() - t
    tok.eos_token_ids = set()  # ignore EOS: every run makes exactly gen_tokens
    cfg = json.loads((Path(a.model) / "config.json").read_text())
    vocab = cfg["vocab_size"]
    prompt = synthetic_prompt(a.prompt_tokens, vocab)

    def one(gen_tokens: int) -> Dict[str, Any]:
        mx.reset_peak_memory()
        toks: List[int] = []
        t0 = time.perf_counter()
        t_first = t_last = t0
        for n, r in enumerate(stream_generate(model, tok, prompt, max_tokens=gen_tokens)):
            now = time.perf_counter()
            if n == 0:
                t_first = now
            t_last = now
            toks.append(int(r.token))
        ttft = t_first - t0
        return {
            "ttft_s": ttft,
            "prompt_tps": len(prompt) / ttft,
            "gen_tps": (len(toks) - 1) / (t_last - t_first),
            "peak_bytes": mx.get_peak_memory(),
            "tokens": toks,
        }

    for _ in range(a.warmup):
        one(a.warmup_tokens or a.gen_tokens)
    runs = [one(a.gen_tokens) for _ in range(a.repeat)]
    out = {
        "engine": "mlx-lm",
        "device": "gpu" if mx.default_device() == mx.gpu else "cpu",
        "load_s": load_s,
        "runs": [{k: v for k, v in r.items() if k != "tokens"} for r in runs],
        "max_rss_bytes": vm_hwm(),
        "tokens": runs[-1]["tokens"],
    }
    print(json.dumps(out))
    return 0


def run_engine(engine: str, model: str, a, spec: Tuple[Dict[str, str], List[str]], prime: bool = False) -> Dict[str, Any]:
    env_extra, extra_args = spec
    common = [
        "--model", model,
        "--prompt-tokens", str(a.prompt_tokens),
        "--gen-tokens", str(a.warmup_tokens or a.gen_tokens) if prime else str(a.gen_tokens),
        "--repeat", "1" if prime else str(a.repeat),
        "--warmup", str(a.warmup),
    ]
    if a.warmup_tokens:
        common += ["--warmup-tokens", str(a.warmup_tokens)]
    common += ["--device", a.device]
    if engine.startswith("cider"):
        cmd = [a.cider, "bench", *common, *extra_args, "--format", "json"]
    else:
        cmd = [sys.executable, __file__, "--worker", *common]
    env = dict(os.environ)
    env.update(env_extra)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{engine} failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def compare_model(model: str, a, engines: Dict[str, Tuple[Dict[str, str], List[str]]]) -> Dict[str, Any]:
    names = list(engines)
    res: Dict[str, List[Dict[str, Any]]] = {n: [] for n in names}
    if a.prime:
        # One unmeasured process per engine first. MLX's CUDA backend compiles
        # kernels at first use (NVRTC, gigabytes of host memory) and caches
        # them on disk, and the OS caches the model files: without this, the
        # first measured process, whichever engine it is, pays for both (seen
        # as 2.6-4.0 GB max RSS in one of two processes).
        for n in names:
            run_engine(n, model, a, engines[n], prime=True)
    for r in range(a.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            res[n].append(run_engine(n, model, a, engines[n]))
            print(f"  round {r + 1} {n}: decode {statistics.median(x['gen_tps'] for x in res[n][-1]['runs']):.2f} tok/s,"
                  f" ttft {1e3 * statistics.median(x['ttft_s'] for x in res[n][-1]['runs']):.1f} ms", file=sys.stderr)
    summary: Dict[str, Any] = {}
    for n in names:
        runs = [x for proc in res[n] for x in proc["runs"]]
        summary[n] = {
            "load_s": spread([p["load_s"] for p in res[n]]),
            "ttft_ms": spread([1e3 * x["ttft_s"] for x in runs]),
            "prompt_tps": spread([x["prompt_tps"] for x in runs]),
            "gen_tps": spread([x["gen_tps"] for x in runs]),
            "ms_per_token": spread([1e3 / x["gen_tps"] for x in runs]),
            "peak_gb": spread([x["peak_bytes"] / 1e9 for x in runs]),
            "rss_gb": spread([(p["max_rss_bytes"] or 0) / 1e9 for p in res[n]]),
            "tokens": res[n][-1]["tokens"],
            # Did every process of this engine generate the same ids?
            "self_consistent": all(proc["tokens"] == res[n][0]["tokens"] for proc in res[n]),
        }
        if "build_ms" in runs[0]:
            for k in ("build_ms", "submit_ms", "wait_ms", "first_submit_ms"):
                summary[n][k] = spread([x[k] for x in runs if k in x])
    first = res[names[0]][0]
    return {"model": model, "dtype": first.get("dtype"), "bits": first.get("bits"),
            "weight_bytes": first.get("weight_bytes"), "device": first.get("device"), "engines": summary}


ROWS = [
    # key, label, digits, higher is better
    ("load_s", "load (s)", 3, False),
    ("ttft_ms", "ttft (ms)", 1, False),
    ("prompt_tps", "prompt (tok/s)", 1, True),
    ("gen_tps", "decode (tok/s)", 2, True),
    ("ms_per_token", "decode (ms/tok)", 3, False),
    ("peak_gb", "MLX peak (GB)", 3, False),
    ("rss_gb", "max RSS (GB)", 3, False),
]


def print_table(m: Dict[str, Any]) -> None:
    eng = m["engines"]
    names = list(eng)
    ref = "mlx-lm"
    print(f"\n## {m['model']}  ({m['dtype']}{', %d-bit' % m['bits'] if m['bits'] else ''},"
          f" {(m['weight_bytes'] or 0) / 1e6:.0f} MB weights, {m['device']})")
    head = f"| {'figure':<16} |" + "".join(f" {n + ' median [min-max]':<32} |" for n in names)
    head += "".join(f" {n + '/' + ref:>14} |" for n in names if n != ref)
    print(head)
    print("|" + "---|" * (1 + len(names) + len(names) - 1))
    for key, label, d, _ in ROWS:
        line = f"| {label:<16} |"
        for n in names:
            s = eng[n][key]
            line += f" {s['median']:.{d}f} [{s['min']:.{d}f}-{s['max']:.{d}f}]".ljust(33) + " |"
        for n in names:
            if n == ref:
                continue
            r = eng[n][key]["median"] / eng[ref][key]["median"] if eng[ref][key]["median"] else float("nan")
            line += f" {r:>14.3f} |"
        print(line)
    for n in names:
        if n == ref:
            continue
        a, b = eng[n]["tokens"], eng[ref]["tokens"]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if "build_ms" in eng[n]:
            print(f"{n} per decode step: host graph build {eng[n]['build_ms']['median']:.3f} ms, "
                  f"async eval (encode + submit) {eng[n]['submit_ms']['median']:.3f} ms, "
                  f"wait for token {eng[n]['wait_ms']['median']:.3f} ms")
        if "first_submit_ms" in eng[n]:
            t = eng[n]["ttft_ms"]["median"]
            f = eng[n]["first_submit_ms"]["median"]
            print(f"{n} first token: until its pass was submitted {f:.2f} ms (host work and the waits inside the pass), "
                  f"then waiting {t - f:.2f} ms (medians)")
        print(f"greedy tokens {n} vs {ref}: " + ("identical" if same is None and len(a) == len(b) else f"differ from token {same}"))
    inconsistent = [n for n in names if not eng[n]["self_consistent"]]
    if inconsistent:
        print("engines whose own processes generated different ids (device nondeterminism): " + ", ".join(inconsistent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*")
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="processes per engine, alternated")
    p.add_argument("--repeat", type=int, default=1, help="measured runs per process")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs per process")
    p.add_argument("--warmup-tokens", type=int, default=None, help="tokens per warm-up run (default: --gen-tokens)")
    p.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    p.add_argument("--cider", default=str(REPO / "target/release/cider"))
    p.add_argument("--cider-preload", default=None,
                   help="also run cider with LD_PRELOAD=this (e.g. an optimised BLAS) as engine cider+preload")
    p.add_argument("--mlx-preload", default=None, help="also run mlx-lm with LD_PRELOAD=this as engine mlx-lm+preload")
    p.add_argument("--cider-env", action="append", default=[], metavar="K=V", help="extra environment for cider")
    p.add_argument("--prime", default="auto", choices=["auto", "yes", "no"],
                   help="one unmeasured process per engine before the rounds (auto: on the GPU)")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--cider-f32", default="auto", choices=["auto", "yes", "no"],
                   help="also run cider with --compute-dtype float32 (engine cider-f32; not "
                        "bit-identical to mlx-lm; auto: on the CPU)")
    a = p.parse_args(argv)
    if a.worker:
        if a.device == "auto":
            import mlx.core as mx
            a.device = "gpu" if mx.is_available(mx.gpu) else "cpu"
        return worker(a)
    if not a.models:
        p.error("give at least one model folder")
    on_gpu = a.device != "cpu" and gpu_available()
    a.prime = a.prime == "yes" or (a.prime == "auto" and on_gpu)
    a.cider_f32 = a.cider_f32 == "yes" or (a.cider_f32 == "auto" and not on_gpu)
    cenv = dict(kv.split("=", 1) for kv in a.cider_env)
    engines: Dict[str, Tuple[Dict[str, str], List[str]]] = {"cider": (cenv, []), "mlx-lm": ({}, [])}
    if a.cider_f32:
        # Opt-in: weights converted to float32 at load (not bit-identical to mlx-lm).
        engines["cider-f32"] = (cenv, ["--compute-dtype", "float32"])
    if a.cider_preload:
        engines["cider+preload"] = ({**cenv, "LD_PRELOAD": a.cider_preload}, [])
        if a.cider_f32:
            engines["cider-f32+preload"] = ({**cenv, "LD_PRELOAD": a.cider_preload}, ["--compute-dtype", "float32"])
    if a.mlx_preload:
        engines["mlx-lm+preload"] = ({"LD_PRELOAD": a.mlx_preload}, [])
    all_res = []
    for m in a.models:
        print(f"{m}: prompt {a.prompt_tokens}, generate {a.gen_tokens}, {a.rounds} rounds x {a.repeat} runs", file=sys.stderr)
        res = compare_model(m, a, engines)
        print_table(res)
        sys.stdout.flush()
        all_res.append(res)
        if a.json:
            Path(a.json).write_text(json.dumps({"args": vars(a), "results": all_res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
