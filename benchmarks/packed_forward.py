"""Packed micro-batches on this device: padded rows against the two ways to run a packed row.

    OMP_NUM_THREADS=2 python benchmarks/packed_forward.py --pairs 16 --micro 2 --repeats 5

The same DPO micro-batches (``--micro`` ShareGPT pairs = 2 x micro sequences, chosen and rejected, as
the trainer builds them) through the policy's response log-probs, forward + backward, in three
layouts:

    padded        right-padded rows with an attention mask (``--ds.packing_samples false``)
    per_sequence  the packed row run one sequence at a time (no padding, no mask)
    one_call      the packed row in one forward; sdpa / eager get a block-diagonal causal mask that
                  transformers builds from the restarting ``position_ids`` (flash-attention: varlen)

Each repeat runs every layout once over all micro-batches, in rotated order (A B C, B C A, ...), in one
process (the weights and the batches are the same objects), because these machines drift by ~30% in
speed over minutes. Prints per layout the median [min, max] of seconds per micro-batch and of real
tokens per second, the ratios with bootstrap 95% intervals ("no measurable difference" when the interval
holds 1), and the largest difference of the per-sequence log-prob sums between layouts (same math:
should be ~1e-5 in fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from interleave import describe_ratio, run_interleaved, spread  # noqa: E402  (beside this file)

LAYOUTS = ("padded", "per_sequence", "one_call")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="HF folder of the policy (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--micro", type=int, default=2, help="pairs per micro-batch")
    ap.add_argument("--max_len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--param_dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--attn_implementation", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument(
        "--data",
        default="",
        help="a JSONL file of prompt / chosen / rejected rows instead of ShareGPT "
        "pairs (e.g. the benchmark cache's pairs_*.jsonl, on a machine without the data package)",
    )
    ap.add_argument(
        "--random_init",
        action="store_true",
        help="the model of --model's config.json with random weights (timing only, where the weights "
        "are not at hand; the log-probs still agree between layouts)",
    )
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "openrlhf", "bench"))
    a = ap.parse_args()

    import torch
    from dpo_throughput import default_model, resolve_model, sharegpt_pairs
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from openrlhf.datasets.preference_dataset import pair_batch
    from openrlhf.datasets.templates import PromptRenderer
    from openrlhf.models.actor import masked_token_logps, sequence_sums

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    os.makedirs(a.cache, exist_ok=True)
    model_path = resolve_model(a.model) if a.model else default_model(a.cache)
    tok = AutoTokenizer.from_pretrained(model_path)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.param_dtype]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.random_init:
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(model_path), dtype=dtype, attn_implementation=a.attn_implementation
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=a.attn_implementation)
    model.to(device).train()
    renderer = PromptRenderer(tok, apply_chat_template=True, model_path=model_path)
    if a.data:
        with open(a.data) as f:
            rows = [json.loads(line) for line in f if line.strip()][: a.pairs]
    else:
        rows = sharegpt_pairs(model_path, a.pairs, a.max_len)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    padded = []
    for i in range(0, len(rows) - a.micro + 1, a.micro):
        part = rows[i : i + a.micro]
        padded.append(
            pair_batch(
                renderer, [r["prompt"] for r in part], [r["chosen"] for r in part], [r["rejected"] for r in part], pad
            )
        )
    packed = [b.packed().to(device) for b in padded]
    padded = [b.to(device) for b in padded]
    real = sum(b.real_and_padded()[0] for b in padded)
    computed = sum(b.real_and_padded()[1] for b in padded)
    print(
        f"model {model_path}, {len(padded)} micro-batches of {a.micro} pairs ({2 * a.micro} sequences), "
        f"{real} real tokens, {computed} padded ({100 * (1 - real / computed):.1f}% padding), {a.threads} threads, "
        f"{a.param_dtype}, {a.attn_implementation}, {device}, {a.repeats} repeats in alternation",
        flush=True,
    )

    sums = {}

    def step(layout: str, b_pad, b_pack):
        if layout == "padded":
            lp, _ = masked_token_logps(model, b_pad.input_ids, b_pad.attention_mask, b_pad.loss_mask)
            s = sequence_sums(lp)
        else:
            lp, _ = masked_token_logps(
                model,
                b_pack.input_ids,
                None,
                b_pack.loss_mask,
                position_ids=b_pack.position_ids,
                packed_forward=layout,
            )
            s = sequence_sums(lp, b_pack.seq_index, b_pack.n_seqs)
        s.sum().backward()
        return s.detach()

    def run_one(layout: str, repeat: int):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = [step(layout, bp, bk) for bp, bk in zip(padded, packed, strict=True)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        sums.setdefault(layout, torch.cat(out).float().cpu())
        print(f"  repeat {repeat} {layout:13s} {seconds / len(padded):7.3f} s per micro-batch", flush=True)
        return {"s_per_micro": seconds / len(padded), "real_tok_s": real / seconds}

    run_one("padded", -1)  # warm-up (allocator, kernels), not counted
    runs = run_interleaved(LAYOUTS, a.repeats, run_one, log=lambda line: None)
    print(f"\n{'layout':14s} {'s / micro-batch, median [min, max]':>36s} {'real tok/s, median [min, max]':>32s}")
    for name in LAYOUTS:
        st, tk = spread([r["s_per_micro"] for r in runs[name]]), spread([r["real_tok_s"] for r in runs[name]])
        print(
            f"{name:14s} {st['median']:14.3f} [{st['min']:.3f}, {st['max']:.3f}]{'':8s}"
            f"{tk['median']:12.1f} [{tk['min']:.1f}, {tk['max']:.1f}]"
        )
    print()
    for x, y in (("one_call", "padded"), ("per_sequence", "padded"), ("one_call", "per_sequence")):
        print(
            describe_ratio(
                f"real tok/s, {x} / {y}", [r["real_tok_s"] for r in runs[x]], [r["real_tok_s"] for r in runs[y]]
            )
        )
    diff = max(float((sums[x] - sums["padded"]).abs().max()) for x in ("per_sequence", "one_call"))
    print(f"largest |sequence log-prob sum difference| against padded: {diff:.2e}")
    peaks = [r["peak_gflops"] for rs in runs.values() for r in rs]
    print(f"{device} matmul peak between repeats, GFLOP/s: {spread(peaks)}")


if __name__ == "__main__":
    main()
