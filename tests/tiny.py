"""Tiny random HF models and tokenizers (with chat templates) for tests. No hub access."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterable

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A second family: another vocabulary, other special tokens, another template.
GEMMA_LIKE_TEMPLATE = (
    "{{ '<bos>' }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you!",
    "Distillation transfers knowledge from a teacher model to a student model.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. The sea is wide and blue and deep.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "user assistant system model question answer reply response",
]


def make_tokenizer(folder: str, style: str = "chatml", vocab_size: int = 400):
    """Train a byte-level BPE tokenizer on a tiny corpus and save it with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "chatml":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        template = CHATML_TEMPLATE
        kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None)
    elif style == "gemma":
        specials = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
        template = GEMMA_LIKE_TEMPLATE
        kw = dict(eos_token="<end_of_turn>", pad_token="<pad>", bos_token="<bos>")
    elif style == "none":
        specials = ["<|endoftext|>"]
        template = None
        kw = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token=None)
    else:
        raise ValueError(style)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 5, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    if template is not None:
        fast.chat_template = template
    os.makedirs(folder, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def make_model(
    folder: str,
    tokenizer,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
    rope_theta: float = 10000.0,
):
    """A random LlamaForCausalLM sized to the tokenizer, saved with it as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    if rope_theta != 10000.0:
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny(folder: str, style: str = "chatml", vocab_size: int = 400, seed: int = 0, **kw) -> str:
    tok = make_tokenizer(folder, style=style, vocab_size=vocab_size)
    return make_model(folder, tok, seed=seed, **kw)


PREF_ROWS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I do not know."),
    ("Write a short poem about the sea.", "The sea is wide and blue and deep.", "Sea sea sea."),
    ("Hello, how are you today?", "I am fine, thank you!", "No."),
    ("Count to five.", "1 2 3 4 5.", "5 4 3."),
    ("Say something about a fox.", "The quick brown fox jumps over the lazy dog.", "Fox."),
    ("What is distillation?", "Distillation transfers knowledge from a teacher to a student.", "A drink."),
    ("Give me a number.", "100", "The number is not a number."),
    ("Reply politely.", "Thank you, I am happy to help.", "Go away."),
]


# A prompt of ~1,100 tokens of the tiny tokenizers: responses sit at positions past 1024, where a rotary
# ``inv_freq`` rounded to bf16 turns the phase by radians (the long-position models below).
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 62


def long_pref_rows(n: int = 2):
    """Preference rows whose responses start past position 1024."""
    return [
        {"prompt": LONG_PROMPT + f"Question {i}?", "chosen": "The capital of France is Paris. " * 4, "rejected": "No."}
        for i in range(n)
    ]


def ids_of(tokenizer, text: str) -> list:
    """``text``'s token ids, no special tokens added (how OpenRLHF and our renderer tokenize rendered text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path: str, rows: Iterable[dict]) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def pref_rows(n: int = 8):
    out = []
    for i in range(n):
        p, c, r = PREF_ROWS[i % len(PREF_ROWS)]
        out.append({"prompt": p, "chosen": c, "rejected": r})
    return out


def sft_rows(n: int = 8):
    return [{"input": r["prompt"], "output": r["chosen"]} for r in pref_rows(n)]


TOPICS = [
    "the sea",
    "a fox",
    "Paris",
    "numbers",
    "distillation",
    "tea",
    "music",
    "rain",
    "books",
    "trees",
    "the moon",
    "bread",
    "snow",
    "clocks",
    "rivers",
    "birds",
]


def make_talking_teacher(
    folder: str, answer: str = "It is nice.", steps: int = 150, seed: int = 0, hidden: int = 48
) -> str:
    """A tiny ChatML model fitted (plain torch, a few seconds) to answer "Tell me about X." with
    ``answer`` and then end its turn, so greedy generation stops by itself. ``hidden`` / 4 is the head
    size (vLLM's GPU attention wants 32 or more: ``hidden=256``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    make_tiny(folder, style="chatml", vocab_size=400, seed=seed, hidden=hidden)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    seqs, masks = [], []
    for topic in TOPICS:
        msgs = [{"role": "user", "content": f"Tell me about {topic}."}]
        p = tok(
            tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False
        ).input_ids
        full = tok(
            tok.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False),
            add_special_tokens=False,
        ).input_ids
        seqs.append(full)
        masks.append([0] * len(p) + [1] * (len(full) - len(p)))
    T = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (T - len(s)) for s in seqs])
    mask = torch.tensor([m + [0] * (T - len(m)) for m in masks], dtype=torch.float)
    att = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).view(ids.shape[0], -1)
        loss = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(folder)
    return folder


# ---- running the CLIs the way a user does ------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The deepspeed launcher of the running interpreter's environment (no PATH lookup).
DEEPSPEED = [__import__("sys").executable, "-m", "deepspeed.launcher.runner"]


def read_metrics(output_dir: str) -> list:
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_losses(output_dir: str) -> list:
    return [r["loss"] for r in read_metrics(output_dir) if "loss" in r]


# The prompt / response columns of pref_rows and sft_rows (the trainers' defaults are OpenRLHF's: no
# prompt column for preference pairs, no output column for SFT).
DATA_KEYS = ("--data.prompt_key", "prompt", "--data.output_key", "output")


def as_flags(settings: dict) -> list:
    """``{"train.batch_size": "2", "ckpt.load_enable": None}`` -> ``["--train.batch_size", "2", "--ckpt.load_enable"]``
    (None: a flag without a value), in the order given."""
    out = []
    for name, value in settings.items():
        out += ["--" + name] if value is None else ["--" + name, value]
    return out


def base_flags(model: str, data: str, out: str, *extra: str) -> list:
    """The flags of a tiny CPU training run (chat template, the columns of :func:`pref_rows` /
    :func:`sft_rows`, one row per micro-batch, ZeRO-2, fp32, a large learning rate)."""
    return [
        "--model.model_name_or_path",
        model,
        "--data.dataset",
        data,
        *DATA_KEYS,
        *as_flags(
            {
                "data.apply_chat_template": None,
                "train.micro_batch_size": "1",
                "ds.zero_stage": "2",
                "ds.param_dtype": "fp32",
                "adam.lr": "2e-3",
                "lr_warmup_ratio": "0",
                "ckpt.output_dir": out,
            }
        ),
        *extra,
    ]


def score_flags(model: str, data: str, out: str, *extra: str) -> list:
    """The flags of a tiny score_logps run (the flags of :func:`base_flags` that it takes)."""
    return [
        "--model.model_name_or_path",
        model,
        "--data.dataset",
        data,
        *DATA_KEYS,
        *as_flags(
            {
                "data.apply_chat_template": None,
                "train.micro_batch_size": "1",
                "ds.zero_stage": "2",
                "ds.param_dtype": "fp32",
                "ckpt.output_dir": out,
            }
        ),
        *extra,
    ]


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch_env(**extra: str) -> dict:
    """A fresh shell's environment: no process-group variables left by in-process runs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def sigint_default() -> None:
    """``preexec_fn`` of a child the test interrupts with SIGINT: a shell starts background jobs with SIGINT
    ignored and children inherit that (Python then never raises KeyboardInterrupt), so a test suite run
    in the background (``pytest ... &``) would see the child ignore the Ctrl-C under test."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def deepspeed_cmd(module: str, flags: list, nprocs: int = 2) -> list:
    return [
        *DEEPSPEED,
        *as_flags({"num_gpus": str(nprocs), "master_addr": "127.0.0.1", "master_port": free_port(), "module": module}),
        *flags,
    ]


def run_deepspeed(module: str, flags: list, timeout: int = 600, check: bool = True, env: dict = None):
    """``deepspeed --num_gpus 2 --module <module> <flags>`` on CPU (gloo); asserts it succeeded unless
    ``check=False``."""
    import subprocess

    cmd = deepspeed_cmd(module, flags)
    res = subprocess.run(cmd, env=env or launch_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert_no_shm_segments_left(cmd[cmd.index("--master_port") + 1])
    return res


def assert_no_shm_segments_left(port: str) -> None:
    """DeepSpeed's CPU all-reduce segments (67 MB of RAM per process) must not outlive the run."""
    import glob

    left = glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*")
    assert not left, f"shared-memory segments left behind: {left}"


def run_module(module: str, flags: list, timeout: int = 300, env: dict = None):
    """``python -m <module> <flags>`` in a fresh environment; the completed process."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", module, *flags],
        env=env or launch_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def direct_logps(path: str, rows: list) -> tuple:
    """Sequence log-probs of chosen and rejected, straight from transformers, each model with its own
    tokenizer and chat template (an independent rendering, not our dataset code)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = {"chosen": [], "rejected": []}
    for row in rows:
        msgs = [{"role": "user", "content": row["prompt"]}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        for key in ("chosen", "rejected"):
            full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": row[key]}], tokenize=False)
            ids = tok(full, add_special_tokens=False).input_ids
            assert ids[: len(p_ids)] == p_ids
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].float()
            logp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            out[key].append(logp[len(p_ids) - 1 :].sum().item())
    return torch.tensor(out["chosen"], dtype=torch.float64), torch.tensor(out["rejected"], dtype=torch.float64)


def run_in_process(task: str, flags: list):
    """The function of ``task`` on the parsed ``flags``, in this process (what the CLI runs)."""
    from openrlhf.config import load_config
    from openrlhf.pipeline.tasks import runner_of

    return runner_of(task)(load_config(flags, task=task))


@contextlib.contextmanager
def killed_at_micro_batch(monkeypatch, n: int):
    """Inside the block the ``n``-th optimizer-step call (1-based; one per micro-batch) raises
    KeyboardInterrupt, as a kill at that point would stop the run; restored afterwards."""
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    original = DeepspeedStrategy.optimizer_step
    calls = {"n": 0}

    def crashing(self, engine):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return original(self, engine)

    monkeypatch.setattr(DeepspeedStrategy, "optimizer_step", crashing)
    try:
        yield
    finally:
        monkeypatch.setattr(DeepspeedStrategy, "optimizer_step", original)


@contextlib.contextmanager
def background_server(cmd: list, env: dict, ready_url: str, log_path: str, what: str, timeout: float):
    """Start ``cmd`` in a session of its own (output to ``log_path``), wait until ``ready_url`` answers (a
    RuntimeError with the log's tail when it exits first or ``timeout`` s pass), yield the process; at the end
    end its whole process group (SIGTERM, then SIGKILL after 30 s): the server and every process it started."""
    import signal
    import subprocess
    import time
    import urllib.request

    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2).read()
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    raise RuntimeError(f"{what} did not start:\n" + open(log_path).read()[-3000:]) from None
                time.sleep(1)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def dadpo_flags(model: str, teacher: str, data: str, out: str, *extra: str) -> list:
    """train_dadpo flags on ``data`` with a teacher, beta1 0 and beta2 0.5 (a teacher-margin-only loss), batches of
    4 in micro-batches of 2."""
    return base_flags(
        model,
        data,
        out,
        *as_flags(
            {
                "teacher.model_name_or_path": teacher,
                "model.beta": "0",
                "teacher.beta": "0.5",
                "train.batch_size": "4",
                "train.micro_batch_size": "2",
            }
        ),
        *extra,
    )


def replace_flags(flags: list, **values: str) -> list:
    """``flags`` with the value after each ``--<name>`` replaced (``ds__zero_stage="3"``)."""
    out = list(flags)
    for name, value in values.items():
        flag = "--" + name.replace("__", ".")
        out[out.index(flag) + 1] = value
    return out


def config_problems(argv: list, task: str, **kw) -> list:
    """The problems the config of ``task`` reports for ``argv`` (it must report some)."""
    import pytest

    from openrlhf.config import ConfigError, load_config

    with pytest.raises(ConfigError) as info:
        load_config(argv, task, check_packages=False, **kw)
    return info.value.problems


def judge_files(tmp_path) -> tuple:
    """A teacher's and a candidate's response files of 3 prompts each."""

    def rows(name, answers):
        return write_jsonl(
            str(tmp_path / f"{name}.jsonl"),
            [
                {"id": i, "prompt": f"Tell me a story {i}.", "response": a, "finish_reason": "stop"}
                for i, a in enumerate(answers)
            ],
        )

    return rows("teacher", ["medium answer"] * 3), rows("cand", ["a much longer answer"] * 3)


def small_distill_yaml(tmp_path, teacher: str, student: str, prune: dict = None, **extra) -> str:
    """A distill config of 8 training and 4 held-out prompts (14 ShareGPT conversations written beside it)."""
    import yaml

    prompts = str(tmp_path / "sharegpt.json")
    conversations = [
        {
            "id": f"c{i}",
            "conversations": [
                {"from": "human", "value": f"Tell me about item {i}."},
                {"from": "gpt", "value": "Sure."},
            ],
        }
        for i in range(14)
    ]
    with open(prompts, "w") as f:
        json.dump(conversations, f)
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "teacher": teacher,
        "student": {"model_name_or_path": student, **({"prune": prune} if prune else {})},
        "prompts": {"source": prompts, "train_size": 8, "eval_size": 4, "min_chars": 5},
        "common": {
            "data.apply_chat_template": True,
            "ds.param_dtype": "fp32",
            "ds.zero_stage": 0,
            "train.micro_batch_size": 2,
        },
        "sft": {"train.batch_size": 4},
        "dadpo": {"train.batch_size": 4},
        **extra,
    }
    path = str(tmp_path / "distill.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path
