"""Multi-process strategy check, launched by tests/test_strategy.py with
``deepspeed --num_gpus 2 ...`` or ``torchrun --nproc_per_node 2 ...``.

Trains a tiny model a few steps next to a frozen eval copy (the reference), then writes
to --out: a resumable checkpoint, an HF folder (hf/), the engine's gathered weights
(gathered.pt) and result.json with the checks done in here.
"""

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from openrlhf.config.schema import AdamConfig, DSConfig, TrainConfig  # noqa: E402
from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy  # noqa: E402
from openrlhf.utils.deepspeed.wrapping import unwrap_model  # noqa: E402
from openrlhf.utils.distributed import exit_cleanly  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stage", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--offload_ref", action="store_true")
    ap.add_argument("--local_rank", type=int, default=-1)  # passed by the deepspeed launcher
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    strategy = DeepspeedStrategy(
        DSConfig(zero_stage=args.stage, param_dtype="fp32"),
        TrainConfig(micro_batch_size=1, batch_size=2, seed=7),
        max_norm=1.0,
        adam=AdamConfig(lr=1e-2, weight_decay=0.0),
    )
    strategy.setup_distributed()
    result = {"world_size": strategy.world_size, "accumulated_gradient": strategy.accumulated_gradient}

    with strategy.model_init_context(for_training=True):
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=strategy.torch_dtype)
    with strategy.model_init_context(for_training=False, offload=args.offload_ref):
        ref = AutoModelForCausalLM.from_pretrained(args.model, dtype=strategy.torch_dtype)
    big = [p for p in model.parameters() if p.dim() >= 2 or hasattr(p, "ds_numel")]
    result["partitioned_at_load"] = all(hasattr(p, "ds_id") for p in big) and all(p.numel() == 0 for p in big)
    result["ref_partitioned_at_load"] = all(hasattr(p, "ds_id") for p in ref.parameters())

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    optim = strategy.create_optimizer(model)
    sched = strategy.create_scheduler(optim, "constant", 0.0, 10)
    engine = strategy.prepare_train(model, optim, sched)
    ref = strategy.prepare_eval(ref, offload=args.offload_ref)
    result["ref_requires_grad"] = any(p.requires_grad for p in unwrap_model(ref).parameters())
    result["ref_training_mode"] = unwrap_model(ref).training

    # Data: 8 fixed sequences; each rank reads its slice of the shuffled epoch.
    g = torch.Generator().manual_seed(0)
    data = torch.randint(3, 300, (8, 12), generator=g)
    sampler = strategy.get_sampler(list(range(len(data))), seed=3, consumed_samples=0, epoch=0)
    mine = list(sampler)
    everyone = [None] * strategy.world_size
    dist.all_gather_object(everyone, mine)
    flat = [i for part in everyone for i in part]
    result["sampler_disjoint_complete"] = sorted(flat) == list(range(8)) and len(set(flat)) == 8

    it = iter(mine)
    for step in range(args.steps):
        ids = data[next(it)].unsqueeze(0).to(strategy.device)
        out = engine(input_ids=ids, labels=ids)
        with torch.no_grad():
            ref_logits = ref(input_ids=ids).logits
        kl_ish = ((out.logits.log_softmax(-1) - ref_logits.log_softmax(-1)) ** 2).mean()
        loss = out.loss + 0.1 * kl_ish
        strategy.backward(loss, engine)
        strategy.optimizer_step(engine)
        strategy.print(f"step {step} loss {loss.item():.4f}")
    result["loss_mean"] = strategy.all_reduce(float(loss.item()), "mean")
    result["all_reduce_rank_mean"] = strategy.all_reduce({"r": float(strategy.rank)}, "mean")["r"]
    result["all_reduce_rank_max"] = strategy.all_reduce(torch.tensor(strategy.rank), "max").item()

    ckpt_dir = os.path.join(args.out, "ckpt")
    strategy.save_ckpt(engine, ckpt_dir, step=args.steps, client_state={"consumed_samples": 2 * args.steps}, max_num=2)
    strategy.save_hf_model(engine, tokenizer, os.path.join(args.out, "hf"))
    gathered = strategy.gathered_state_dict(engine)
    ref_gathered = strategy.gathered_state_dict(ref)
    if strategy.is_rank_0():
        torch.save(gathered, os.path.join(args.out, "gathered.pt"))
        init = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).state_dict()
        result["ref_unchanged"] = all(torch.equal(ref_gathered[k], init[k]) for k in init)

    # One more step moves the weights; loading the checkpoint must bring them back.
    ids = data[next(it)].unsqueeze(0).to(strategy.device)
    strategy.backward(engine(input_ids=ids, labels=ids).loss, engine)
    strategy.optimizer_step(engine)
    moved = strategy.gathered_state_dict(engine)
    state = strategy.load_ckpt(engine, ckpt_dir)
    back = strategy.gathered_state_dict(engine)
    if strategy.is_rank_0():
        result["moved_after_extra_step"] = any(not torch.equal(moved[k], gathered[k]) for k in gathered)
        result["resume_equal"] = all(torch.equal(back[k], gathered[k]) for k in gathered)
        result["client_state"] = state
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
    strategy.finish()


if __name__ == "__main__":
    main()
    exit_cleanly()
