"""python -m openrlhf.cli.score_logps: cache teacher and/or reference log-probs once.

    python -m openrlhf.cli.score_logps --model.model_name_or_path STUDENT \
        --teacher.model_name_or_path TEACHER [--ref.model_name_or_path REF] \
        --data.dataset pref.jsonl --data.apply_chat_template --ckpt.output_dir scored/

writes ``scored/<split>.jsonl``: every input row with ``teacher_chosen_logp``,
``teacher_rejected_logp``, ``teacher_logp_fingerprint`` (and the ``ref_*`` columns when a
reference is given). ``train_dadpo`` / ``train_dpo`` on that file use the numbers and do not
load those models. The student path gives the tokenizer of the reference side.

Runs under DeepSpeed (``deepspeed --num_gpus N --module openrlhf.cli.score_logps ...``);
each process scores its share and appends it to ``scored/.score_partial/`` as it goes, so a
killed run, started again with the same flags, only scores what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

from openrlhf.config.schema import Config

PARTIAL_DIR = ".score_partial"


def _read_partials(folder: str, kind: str, setting_fp: str) -> Dict[int, Tuple[float, float]]:
    done: Dict[int, Tuple[float, float]] = {}
    if not os.path.isdir(folder):
        return done
    for name in sorted(os.listdir(folder)):
        if not name.startswith(f"{kind}.rank"):
            continue
        with open(os.path.join(folder, name)) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill
                    continue
                if rec.get("fp") == setting_fp:
                    done[int(rec["index"])] = (float(rec["chosen"]), float(rec["rejected"]))
    return done


def _jobs(cfg: Config, rows: List[dict], tokenizer, source: str):
    """(kind, dataset of the model's own tokens, setting fingerprint, model path, offload, flag) per model."""
    from openrlhf.cli.preference import teacher_renderer
    from openrlhf.datasets import PreferenceDataset
    from openrlhf.datasets import logp_cache as lc

    jobs = []
    if cfg.teacher.model_name_or_path:
        renderer = teacher_renderer(cfg)
        # The teacher scores whole responses: no length cap on its side.
        uncapped = dataclasses.replace(cfg.data, max_len=1 << 30)
        ds = PreferenceDataset(rows, renderer.tokenizer, uncapped, source, renderer=renderer)
        fp = lc.setting_fingerprint(lc.model_fingerprint(cfg.teacher.model_name_or_path),
                                    lc.tokenization_fingerprint(renderer, None))
        jobs.append(("teacher", ds, fp, cfg.teacher.model_name_or_path, cfg.teacher.offload, "--teacher.model_name_or_path"))
    if cfg.ref.model_name_or_path:
        ds = PreferenceDataset(rows, tokenizer, cfg.data, source, model_path=cfg.model.model_name_or_path)
        fp = lc.setting_fingerprint(lc.model_fingerprint(cfg.ref.model_name_or_path, "--ref.model_name_or_path"),
                                    lc.tokenization_fingerprint(ds.renderer, cfg.data.max_len))
        jobs.append(("ref", ds, fp, cfg.ref.model_name_or_path, cfg.ref.offload, "--ref.model_name_or_path"))
    return jobs


def _score_job(strategy, cfg: Config, job, partial_dir: str) -> Dict[int, Tuple[float, float]]:
    import torch
    from tqdm import tqdm

    from openrlhf.cli.common import prepare_frozen
    from openrlhf.datasets import preference_collate

    kind, ds, fp, path, offload, flag = job
    strategy.barrier()
    done = _read_partials(partial_dir, kind, fp)
    todo = [i for i in range(len(ds)) if ds[i]["index"] not in done]
    strategy.print(f"{kind}: {len(ds)} pairs, {len(done)} already scored, {len(todo)} to score")
    if not todo:
        return done
    world, mb = strategy.world_size, cfg.train.micro_batch_size
    # Every process runs the same number of forwards (ZeRO-3 gathers weights collectively):
    # pad the work list with repeats that are computed but not written.
    per_round = world * mb
    n = -(-len(todo) // per_round) * per_round
    padded = todo + [todo[-1]] * (n - len(todo))
    mine = [(padded[k], k < len(todo)) for k in range(strategy.rank, n, world)]
    model = prepare_frozen(strategy, cfg, path, offload, what=flag)
    tok = ds.renderer.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    os.makedirs(partial_dir, exist_ok=True)
    out_path = os.path.join(partial_dir, f"{kind}.rank{strategy.rank}.jsonl")
    bar = tqdm(total=len(todo), desc=f"score {kind}", disable=not strategy.is_rank_0(), dynamic_ncols=True)
    with open(out_path, "a") as out, torch.no_grad():
        for start in range(0, len(mine), mb):
            chunk = mine[start : start + mb]
            items = [ds[i] for i, _ in chunk]
            batch = preference_collate(items, pad_id)
            dev = strategy.device
            seq = model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev), batch["loss_mask"].to(dev))[0].sum(-1)
            b = len(items)
            for j, ((_, real), item) in enumerate(zip(chunk, items)):
                if real:
                    rec = {"fp": fp, "index": item["index"], "chosen": seq[j].item(), "rejected": seq[b + j].item()}
                    out.write(json.dumps(rec) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.n = min(len(todo), (start + mb) * world)
            bar.refresh()
    bar.close()
    del model
    strategy.barrier()
    return _read_partials(partial_dir, kind, fp)


def score_logps(cfg: Config) -> str:
    """Score and write ``<ckpt.output_dir>/<split>.jsonl``; returns its path."""
    import shutil

    from openrlhf.cli.common import load_tokenizer, make_strategy
    from openrlhf.datasets import load_rows
    from openrlhf.datasets import logp_cache as lc
    from openrlhf.generation.outputs import write_jsonl_atomic

    source, split = cfg.data.dataset, cfg.data.dataset_split
    rows = load_rows(source, split=split, max_samples=cfg.data.max_samples, what="--data.dataset")
    tokenizer = load_tokenizer(cfg.model.model_name_or_path, cfg.data.tokenizer_chat_template)
    jobs = _jobs(cfg, rows, tokenizer, source)
    out_dir = cfg.ckpt.output_dir
    partial_dir = os.path.join(out_dir, PARTIAL_DIR)
    out_file = os.path.join(out_dir, f"{split or 'train'}.jsonl")

    strategy = make_strategy(cfg, training=False)
    for job in jobs:
        strategy.print(f"{job[0]}: {job[1].report()}")
    results = {job[0]: (job[2], _score_job(strategy, cfg, job, partial_dir)) for job in jobs}
    if strategy.is_rank_0():
        keys = (cfg.data.prompt_key, cfg.data.chosen_key, cfg.data.rejected_key)
        missing = {kind: 0 for kind in results}
        merged = []
        for i, row in enumerate(rows):
            new = dict(row)
            for kind, (fp, values) in results.items():
                c, r, fpc = lc.columns(kind)
                if i in values:
                    new[c], new[r] = values[i]
                    new[fpc] = lc.row_fingerprint(fp, row, keys)
                else:  # a row the dataset left out (see its report)
                    new[c] = new[r] = new[fpc] = None
                    missing[kind] += 1
            merged.append(new)
        write_jsonl_atomic(out_file, merged)
        shutil.rmtree(partial_dir, ignore_errors=True)
        for kind, n in missing.items():
            print(f"{kind}: scored {len(rows) - n} of {len(rows)} rows ({n} left out by the dataset policy)")
        print(f"wrote {out_file}")
    strategy.barrier()
    return out_file


def main(argv: Optional[list] = None) -> None:
    from openrlhf.cli.common import run_cli

    run_cli(score_logps, "score_logps", argv)


if __name__ == "__main__":
    main()
