"""Peak memory of the response log-probs of one step: log softmax over the vocabulary at once (what
the trainers did before, and what most trainers do) against this project's chunked
``selected_logps`` (forward and backward never hold an fp32 [tokens x vocab] copy).

    python benchmarks/logps_memory.py --tokens 4096 --vocab 152064 --dtype bf16

Each variant runs in its own process (so each has its own peak): it makes logits [tokens, vocab]
that require grad, computes the log-prob of one label per row, sums them and runs the backward.
Printed: peak resident memory of the process, the same above the logits themselves, and the
time. The two variants' log-probs and gradients agree (checked on a small slice here first).

    python benchmarks/logps_memory.py --model_forward --tokens 2048 --vocab 152064 --dtype fp32

runs a small random Llama (hidden 256, 2 layers, the given vocabulary; half of the tokens are response
tokens) forward and backward through ``masked_token_logps`` three ways, each in its own process:
``head_hook`` (ours: the output head sees only the response rows), ``logits_to_keep`` (the boolean
tensor transformers accepts from 5.21 on, what this project passed before) and ``full_logits`` (all
[T, V] logits, then the response rows); peak memory above the model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def logps(name: str, logits, labels):
    import torch

    from openrlhf.models.actor import selected_logps

    if name == "full":
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    return selected_logps(logits, labels)


def child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, DTYPES[a.dtype])
    logits = torch.randn(a.tokens, a.vocab, dtype=dtype).requires_grad_()
    labels = torch.randint(0, a.vocab, (a.tokens,))
    base = _rss_gb()
    t = time.perf_counter()
    logps(a.variant, logits, labels).sum().backward()
    seconds = time.perf_counter() - t
    peak = _rss_gb()
    print(json.dumps({"variant": a.variant, "peak_gb": peak, "above_logits_gb": peak - base, "seconds": seconds}))


def model_child(a) -> None:
    """One forward + backward of a random Llama through the response log-probs, one of three ways."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from openrlhf.models.actor import masked_token_logps, selected_logps

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, DTYPES[a.dtype])
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=a.vocab,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    ).to(dtype)
    ids = torch.randint(0, a.vocab, (1, a.tokens))
    loss_mask = torch.zeros(1, a.tokens, dtype=torch.long)
    loss_mask[:, a.tokens // 2 :] = 1
    base = _rss_gb()
    t = time.perf_counter()
    if a.variant == "head_hook":
        lp, _ = masked_token_logps(model, ids, None, loss_mask)
    else:
        mask = loss_mask[:, 1:].bool()
        keep = torch.zeros_like(loss_mask, dtype=torch.bool)
        keep[:, :-1] = mask
        if a.variant == "logits_to_keep":
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits.reshape(-1, a.vocab)
        else:
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1][mask]
        lp = selected_logps(logits, ids[:, 1:][mask])
    lp.sum().backward()
    seconds = time.perf_counter() - t
    peak = _rss_gb()
    print(json.dumps({"variant": a.variant, "peak_gb": peak, "above_logits_gb": peak - base, "seconds": seconds}))


def check_agreement() -> float:
    """Largest difference of log-probs and gradients between the two variants on a small case."""
    import torch

    torch.manual_seed(1)
    x = torch.randn(300, 5000, dtype=torch.float32)
    labels = torch.randint(0, 5000, (300,))
    out = []
    for name in ("full", "chunked"):
        lg = x.clone().requires_grad_()
        v = logps(name, lg, labels)
        (v * torch.linspace(0.5, 1.5, 300)).sum().backward()
        out.append((v.detach(), lg.grad))
    return max(float((out[0][0] - out[1][0]).abs().max()), float((out[0][1] - out[1][1]).abs().max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096, help="response tokens of a micro-batch")
    ap.add_argument("--vocab", type=int, default=152064, help="vocabulary size (Qwen2.5: 152064)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="dtype of the logits")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--model_forward",
        action="store_true",
        help="a random Llama's forward + backward through the response log-probs, three ways",
    )
    ap.add_argument("--variant", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        (model_child if a.model_forward else child)(a)
        return
    if a.model_forward:
        print(
            f"random Llama (hidden 256, 2 layers, vocab {a.vocab}), {a.tokens} tokens, half of them response, "
            f"{a.dtype}; peak above the model"
        )
        print(f"{'variant':<15} {'peak GiB':>9} {'above model':>12} {'seconds':>8}")
        for variant in ("head_hook", "logits_to_keep", "full_logits"):
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--model_forward",
                "--variant",
                variant,
                "--tokens",
                str(a.tokens),
                "--vocab",
                str(a.vocab),
                "--dtype",
                a.dtype,
                "--threads",
                str(a.threads),
            ]
            res = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)}
            )
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{variant:<15} failed: {last[:150]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{variant:<15} {r['peak_gb']:>9.2f} {r['above_logits_gb']:>12.2f} {r['seconds']:>8.2f}")
        return
    print(f"the two variants agree to {check_agreement():.2e} (log-probs and gradients, fp32)")
    logits_gb = a.tokens * a.vocab * {"fp32": 4, "bf16": 2, "fp16": 2}[a.dtype] / 1024**3
    print(f"logits [{a.tokens} x {a.vocab}] {a.dtype}: {logits_gb:.2f} GiB")
    print(f"{'variant':<10} {'peak GiB':>9} {'above logits':>13} {'seconds':>8}")
    for variant in ("full", "chunked"):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--variant",
            variant,
            "--tokens",
            str(a.tokens),
            "--vocab",
            str(a.vocab),
            "--dtype",
            a.dtype,
            "--threads",
            str(a.threads),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
        if res.returncode != 0:
            print(f"{variant}: failed\n{res.stderr[-2000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{variant:<10} {r['peak_gb']:>9.2f} {r['above_logits_gb']:>13.2f} {r['seconds']:>8.2f}")


if __name__ == "__main__":
    main()
