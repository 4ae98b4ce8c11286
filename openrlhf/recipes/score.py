"""Cache teacher and/or reference log-probs once (python -m openrlhf.cli.score_logps).

Writes ``<ckpt.output_dir>/<split>.jsonl``: every input row with ``teacher_chosen_logp``,
``teacher_rejected_logp``, ``teacher_logp_fingerprint`` (and the ``ref_*`` columns when a
reference is given). ``train_dadpo`` / ``train_dpo`` on that file use the numbers and do
not load those models. ``--model.model_name_or_path`` gives the tokenizer of the reference
side.

Runs under DeepSpeed (``deepspeed --num_gpus N --module openrlhf.cli.score_logps ...``):
each process scores its share and appends it to ``<output_dir>/.score_partial/`` as it
goes (flushed and fsynced per micro-batch), so a killed run, started again with the same
flags, only scores what is missing. A last line torn by the kill is repaired before
anything is appended after it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
from tqdm import tqdm

from openrlhf.config.schema import ScoreLogpsConfig
from openrlhf.datasets import logp_cache as lc
from openrlhf.datasets.loading import load_rows
from openrlhf.datasets.preference_dataset import PreferenceDataset, preference_collate, rendered_pairs
from openrlhf.datasets.tokenizer import check_reference_tokenizer, data_tokenizer, pad_token_id, teacher_renderers
from openrlhf.models.actor import sequence_sums
from openrlhf.models.loss import teacher_name
from openrlhf.recipes.common import make_strategy, prepare_frozen
from openrlhf.utils.errors import DataError, Interrupted
from openrlhf.utils.jsonl import append_jsonl, repair_torn_tail, write_jsonl_atomic

PARTIAL_DIR = ".score_partial"


@dataclass
class ScoreJob:
    """One model to score: its pairs tokenised in its own vocabulary."""

    kind: str  # "ref" | "teacher" | "teacher_2" | ...
    dataset: Any
    setting_fp: str
    model_path: str
    offload: bool
    flag: str


def _partial_path(folder: str, kind: str, rank: int) -> str:
    return os.path.join(folder, f"{kind}.rank{rank}.jsonl")


def _read_partials(folder: str, kind: str, setting_fp: str) -> Dict[int, Tuple[float, float]]:
    done: Dict[int, Tuple[float, float]] = {}
    if not os.path.isdir(folder):
        return done
    for name in sorted(os.listdir(folder)):
        if not name.startswith(f"{kind}.rank"):
            continue
        path = os.path.join(folder, name)
        with open(path) as f:
            lines = f.read().split("\n")
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines) - 1:  # the last line, torn by a kill: repaired before the next append
                    continue
                raise DataError(
                    f"{path}: line {n + 1} is not valid JSON (only a torn last line is repaired); "
                    f"remove {folder} to score everything again"
                ) from None
            if rec.get("fp") == setting_fp:
                done[int(rec["index"])] = (float(rec["chosen"]), float(rec["rejected"]))
    return done


def side_dataset(cfg, kind: str, rows: List[dict], tokenizer, source: str, renderer=None):
    """The pairs of ``rows`` as the frozen model of side ``kind`` scores them: the reference in the
    policy's tokenisation (``tokenizer``, cut to --data.max_len, as the policy is trained), a teacher in
    its own (``renderer``: its tokenizer and chat template) over whole responses."""
    if kind == "ref":
        return PreferenceDataset(rows, tokenizer, cfg.data, source, model_path=cfg.model.model_name_or_path)
    # The teachers score whole responses: no length cap on their side.
    uncapped = dataclasses.replace(cfg.data, max_len=1 << 30)
    return PreferenceDataset(rows, renderer.tokenizer, uncapped, source, renderer=renderer)


def _jobs(cfg: ScoreLogpsConfig, rows: List[dict], tokenizer, source: str, digests) -> List[ScoreJob]:
    jobs = []
    for k, (path, renderer) in enumerate(
        zip(cfg.teacher.model_name_or_path, teacher_renderers(cfg.teacher, cfg.data), strict=True)
    ):
        ds = side_dataset(cfg, teacher_name(k), rows, tokenizer, source, renderer)
        fp = lc.setting_fingerprint(
            lc.model_fingerprint(path, digests=digests), lc.tokenization_fingerprint(renderer, None)
        )
        jobs.append(ScoreJob(teacher_name(k), ds, fp, path, cfg.teacher.offload, "--teacher.model_name_or_path"))
    if cfg.ref.model_name_or_path:
        ds = side_dataset(cfg, "ref", rows, tokenizer, source)
        check_reference_tokenizer(
            ds.renderer, rendered_pairs(ds), cfg.ref.model_name_or_path, cfg.model.model_name_or_path
        )
        fp = lc.setting_fingerprint(
            lc.model_fingerprint(cfg.ref.model_name_or_path, "--ref.model_name_or_path", digests),
            lc.tokenization_fingerprint(ds.renderer, cfg.data.max_len),
        )
        jobs.append(ScoreJob("ref", ds, fp, cfg.ref.model_name_or_path, cfg.ref.offload, "--ref.model_name_or_path"))
    return jobs


def score_pairs(
    strategy, model, ds, positions: List[int], micro_batch_size: int, on_batch=None
) -> Dict[int, Tuple[float, float]]:
    """Sequence log-probs (summed over the response tokens) of the pairs at ``positions`` of the preference
    dataset ``ds`` under the frozen engine ``model``, the positions shared out between the processes
    (collective: every process takes part). Returns this process's share as {row index: (chosen,
    rejected)}; ``on_batch(scores)`` is called with each micro-batch's share as it is done."""
    out: Dict[int, Tuple[float, float]] = {}
    if not positions:
        return out
    world, mb = strategy.world_size, micro_batch_size
    # Every process runs the same number of forwards (ZeRO-3 gathers weights collectively):
    # pad the work list with repeats that are computed but not returned.
    per_round = world * mb
    n = -(-len(positions) // per_round) * per_round
    padded = list(positions) + [positions[-1]] * (n - len(positions))
    mine = [(padded[k], k < len(positions)) for k in range(strategy.rank, n, world)]
    pad_id = pad_token_id(ds.renderer.tokenizer)
    dev = strategy.device
    with torch.no_grad():
        for start in range(0, len(mine), mb):
            chunk = mine[start : start + mb]
            items = [ds[i] for i, _ in chunk]
            batch = preference_collate(items, pad_id)
            # Summed as the trainer sums its online log-probs (float64 accumulation, one rounding).
            seq = sequence_sums(
                model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev), batch["loss_mask"].to(dev))[0]
            )
            b = len(items)
            scores = {
                item["index"]: (seq[j].item(), seq[b + j].item())
                for j, ((_, real), item) in enumerate(zip(chunk, items, strict=True))
                if real
            }
            out.update(scores)
            if on_batch is not None:
                on_batch(scores)
    return out


def _score_job(strategy, cfg: ScoreLogpsConfig, job: ScoreJob, partial_dir: str) -> Dict[int, Tuple[float, float]]:
    ds = job.dataset
    strategy.barrier()
    done = _read_partials(partial_dir, job.kind, job.setting_fp)
    todo = [i for i in range(len(ds)) if ds[i]["index"] not in done]
    strategy.print(f"{job.kind}: {len(ds)} pairs, {len(done)} already scored, {len(todo)} to score")
    if not todo:
        return done
    model = prepare_frozen(strategy, cfg, job.model_path, job.offload, what=job.flag)
    os.makedirs(partial_dir, exist_ok=True)
    out_path = _partial_path(partial_dir, job.kind, strategy.rank)
    if repair_torn_tail(out_path) == "dropped":
        print(
            f"{job.kind}: rank {strategy.rank}: dropped the torn last line of {out_path} (a killed run's "
            "unfinished write); that row is scored again",
            flush=True,
        )
    bar = tqdm(total=len(todo), desc=f"score {job.kind}", disable=not strategy.is_rank_0(), dynamic_ncols=True)

    def write(scores: Dict[int, Tuple[float, float]]) -> None:
        append_jsonl(
            out_path, [{"fp": job.setting_fp, "index": i, "chosen": c, "rejected": r} for i, (c, r) in scores.items()]
        )
        bar.update(min(len(scores) * strategy.world_size, bar.total - bar.n))

    try:
        score_pairs(strategy, model, ds, todo, cfg.train.micro_batch_size, on_batch=write)
    finally:
        bar.close()  # a Ctrl-C message then starts a line of its own
    del model
    strategy.barrier()
    return _read_partials(partial_dir, job.kind, job.setting_fp)


def score_logps(cfg: ScoreLogpsConfig) -> str:
    """Score and write ``<ckpt.output_dir>/<split>.jsonl``; returns its path."""
    source, split = cfg.data.dataset, cfg.data.dataset_split
    rows = load_rows(source, split=split, max_samples=cfg.data.max_samples, what="--data.dataset")
    tokenizer = data_tokenizer(cfg.model.model_name_or_path, cfg.data)
    out_dir = cfg.ckpt.output_dir
    digests = lc.DigestCache(os.path.join(out_dir, lc.DIGESTS_FILE))
    jobs = _jobs(cfg, rows, tokenizer, source, digests)
    partial_dir = os.path.join(out_dir, PARTIAL_DIR)
    out_file = os.path.join(out_dir, f"{split or 'train'}.jsonl")

    strategy = make_strategy(cfg, training=False)
    for job in jobs:
        strategy.print(f"{job.kind}: {job.dataset.report()}")
    try:
        results = {job.kind: (job.setting_fp, _score_job(strategy, cfg, job, partial_dir)) for job in jobs}
    except KeyboardInterrupt:
        raise Interrupted(
            f"the pairs scored so far are kept in {partial_dir}; rerun the same command to resume "
            "(only what is missing is scored)"
        ) from None
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
                    new[fpc] = lc.row_fingerprint(fp, row, keys, values[i])
                else:  # a row the dataset left out (see its report)
                    new[c] = new[r] = new[fpc] = None
                    missing[kind] += 1
            merged.append(new)
        write_jsonl_atomic(out_file, merged)
        digests.save()
        shutil.rmtree(partial_dir, ignore_errors=True)
        for kind, n in missing.items():
            print(f"{kind}: scored {len(rows) - n} of {len(rows)} rows ({n} left out by the dataset policy)")
        print(f"wrote {out_file}")
    strategy.barrier()
    return out_file
