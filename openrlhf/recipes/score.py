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

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from tqdm import tqdm

from openrlhf.config.schema import ScoreLogpsConfig
from openrlhf.datasets.loading import load_rows
from openrlhf.datasets.preference_dataset import rendered_pairs
from openrlhf.datasets.tokenizer import check_reference_tokenizer, data_tokenizer, teacher_renderers
from openrlhf.logps import cache as lc
from openrlhf.logps.frozen import FrozenModel, reference_model, teacher_models
from openrlhf.logps.score import frozen_dataset, score_pairs
from openrlhf.logps.served import ServedModel, check_lengths, check_probe, pair_ids, remember_probe
from openrlhf.recipes.common import claim_on_rank_0, make_strategy, prepare_frozen
from openrlhf.utils.errors import DataError, Interrupted
from openrlhf.utils.jsonl import append_jsonl, repair_torn_tail, write_jsonl_atomic
from openrlhf.utils.run_folder import take_lock

PARTIAL_DIR = ".score_partial"


@dataclass
class ScoreJob:
    """One frozen model to score: its pairs tokenised as it reads them, and the setting's fingerprint;
    ``served``: the server that scores them (None: the model is loaded here)."""

    model: FrozenModel
    dataset: Any
    setting_fp: str
    served: Optional[ServedModel] = None

    @property
    def kind(self) -> str:
        return self.model.name


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


def _jobs(cfg: ScoreLogpsConfig, rows: List[dict], tokenizer, source: str, digests) -> List[ScoreJob]:
    models = teacher_models(cfg.teacher, teacher_renderers(cfg.teacher, cfg.data))
    if cfg.ref.model_name_or_path:
        models.append(reference_model(cfg.ref, cfg.ref.model_name_or_path, cfg.data.max_len))
    jobs = []
    for model in models:
        ds = frozen_dataset(model, rows, tokenizer, cfg.data, cfg.model.model_name_or_path, source)
        if not model.is_teacher:
            check_reference_tokenizer(ds.renderer, rendered_pairs(ds), model.model_path, cfg.model.model_name_or_path)
        served = ServedModel(model.served) if model.served is not None else None
        if served is not None:  # the server must answer, serve this model and take every pair, before any work
            pairs = {it["index"]: pair_ids(it) for it in (ds[k] for k in range(len(ds)))}
            check_lengths(served, pairs, f"--data.dataset {source}")
            model_fp = served.fingerprint()
        else:
            model_fp = lc.model_fingerprint(model.model_path, model.flag, digests)
        fp = lc.setting_fingerprint(model_fp, lc.tokenization_fingerprint(ds.renderer, model.max_len))
        jobs.append(ScoreJob(model, ds, fp, served))
    return jobs


def _score_served(strategy, job: ScoreJob, todo: List[int], out_dir: str, partial_dir: str, resumed: bool) -> None:
    """Rank 0 asks the server for the pairs at ``todo`` and appends each to its partial file as it arrives."""
    served, ds = job.served, job.dataset
    if not strategy.is_rank_0():
        return
    if resumed:  # the partial scores came from the model that answers now (not another behind the same name)
        check_probe(out_dir, served, f"--ckpt.output_dir {out_dir} ({PARTIAL_DIR})")
    remember_probe(out_dir, served, replace=not resumed)
    out_path = _partial_path(partial_dir, job.kind, strategy.rank)

    def write(index: int, pair: Tuple[float, float]) -> None:
        append_jsonl(out_path, [{"fp": job.setting_fp, "index": index, "chosen": pair[0], "rejected": pair[1]}])

    served.score({it["index"]: pair_ids(it) for it in (ds[i] for i in todo)}, f"score {job.kind}", on_pair=write)


def _score_job(strategy, cfg: ScoreLogpsConfig, job: ScoreJob, partial_dir: str) -> Dict[int, Tuple[float, float]]:
    ds = job.dataset
    strategy.barrier()
    done = _read_partials(partial_dir, job.kind, job.setting_fp)
    todo = [i for i in range(len(ds)) if ds[i]["index"] not in done]
    strategy.print(f"{job.kind}: {len(ds)} pairs, {len(done)} already scored, {len(todo)} to score")
    if not todo:
        return done
    os.makedirs(partial_dir, exist_ok=True)
    out_path = _partial_path(partial_dir, job.kind, strategy.rank)
    if repair_torn_tail(out_path) == "dropped":
        print(
            f"{job.kind}: rank {strategy.rank}: dropped the torn last line of {out_path} (a killed run's "
            "unfinished write); that row is scored again",
            flush=True,
        )
    if job.served is not None:
        _score_served(strategy, job, todo, cfg.ckpt.output_dir, partial_dir, resumed=bool(done))
        strategy.barrier()
        return _read_partials(partial_dir, job.kind, job.setting_fp)
    model = prepare_frozen(strategy, cfg, job.model.model_path, job.model.offload, what=job.model.flag)
    bar = tqdm(total=len(todo), desc=f"score {job.kind}", disable=not strategy.is_rank_0(), dynamic_ncols=True)

    def write(scores: Dict[int, Tuple[float, float]]) -> None:
        append_jsonl(
            out_path, [{"fp": job.setting_fp, "index": i, "chosen": c, "rejected": r} for i, (c, r) in scores.items()]
        )
        bar.update(min(len(scores) * strategy.world_size, bar.total - bar.n))

    start = time.perf_counter()
    try:
        score_pairs(strategy, model, ds, todo, cfg.train.micro_batch_size, on_batch=write)
    finally:
        bar.close()  # a Ctrl-C message then starts a line of its own
    strategy.barrier()
    seconds = time.perf_counter() - start
    tokens = sum(len(p) * 2 + len(c) + len(r) for p, c, r in (pair_ids(ds[i]) for i in todo))
    strategy.print(
        f"{job.kind}: {len(todo)} pairs in {seconds:.1f} s on {strategy.world_size} process(es): "
        f"{tokens / max(seconds, 1e-9):.0f} tokens/s"
    )
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
    # The folder resumes by design (its partial scores); only a second score_logps into it is refused.
    lock = claim_on_rank_0(
        strategy,
        lambda: take_lock(out_dir, what="--ckpt.output_dir", log=strategy.print),
        f"--ckpt.output_dir {out_dir}",
    )
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
    if lock is not None:
        lock.release()  # (a run that raised keeps it until it exits: a stale lock the next run takes over)
    return out_file
