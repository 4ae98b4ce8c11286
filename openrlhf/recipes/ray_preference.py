"""train_dpo_ray / train_dadpo_ray: DPO and daDPO with the policy, the reference and each teacher as
groups of Ray actors (python -m openrlhf.cli.train_dadpo_ray).

The driver (this process; under ``ray job submit``, the job's entrypoint) places the groups and
feeds them:

- the policy group (``--actor.num_nodes`` x ``--actor.num_gpus_per_node`` actors, one DeepSpeed
  world, the --ds.* ZeRO stage) runs :func:`~openrlhf.recipes.dpo.train_dpo` /
  :func:`~openrlhf.recipes.dadpo.train_dadpo` with a ``remote`` provider: their own loop, checkpoints,
  metrics.jsonl and HF output, with the reference / teacher log-probs read from the frozen groups
  instead of computed in place;
- a reference group (``--ref.*``) and one group per teacher (``--teacher.*``; each teacher in its
  own tokenizer and chat template) load their model frozen, sharded by ZeRO-3 across their own
  group when --ds.zero_stage is 3, and score the pairs in the order the policy will use them, one
  global batch at a time: with groups of their own (not ``--train.colocate_all``) they run ahead
  of the policy, so the policy trains on batch k while they score batch k+1. With
  ``--train.colocate_all`` (the frozen groups on the policy's GPUs) they never compute beside the
  policy: they score every row the run needs first, free their memory and end, and only then does
  the policy load and train. Each row is scored once, whatever the number of epochs. The scores go
  to the policy through Ray's object store.

The per-step losses equal train_dadpo's under ``deepspeed --num_gpus N`` for the same data order
(the same sampler, seed and processes; tested to 1e-5 in fp32 on CPU). Resuming
(``--ckpt.load_enable``) reads the last checkpoint's step to order the scoring, then the policy
resumes exactly as train_dadpo does. A dead actor (killed, out of memory, lost node) stops the job
with an error naming its group and rank; ``<ckpt.output_dir>/ray_actors.json`` lists every
actor's group, rank, node and process id, ``ray_timeline.json`` when each one computed (the policy's
whole run and each of its optimizer steps, the frozen groups' scoring calls: a Chrome trace, for
chrome://tracing or Perfetto).
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from openrlhf.config.schema import DADPORayConfig, DPORayConfig
from openrlhf.datasets.loading import load_sources
from openrlhf.datasets.tokenizer import data_tokenizer, teacher_renderers
from openrlhf.logps.frozen import FrozenModel, teacher_models
from openrlhf.logps.remote import ChunkedLogps
from openrlhf.logps.score import frozen_dataset, score_pairs
from openrlhf.recipes.common import check_lora_targets, check_training_output_dir, make_strategy, prepare_frozen
from openrlhf.recipes.dadpo import dadpo_models, train_dadpo
from openrlhf.recipes.dpo import train_dpo
from openrlhf.recipes.preference import preference_data, reference
from openrlhf.trainer.base import steps_per_epoch
from openrlhf.utils import timeline
from openrlhf.utils.deepspeed import ckpt_io
from openrlhf.utils.deepspeed.sampler import ResumableDistributedSampler
from openrlhf.utils.distributed import destroy_process_group
from openrlhf.utils.errors import UserError
from openrlhf.utils.ray_group import (
    ActorGroup,
    DistWorker,
    cluster_has_gpus,
    connect,
    free_bundles,
    make_bundles,
    wait_groups,
)

GROUP_NAMES = {"ref": "reference"}  # kind -> group name (teachers keep theirs: teacher, teacher_2, ...)


def group_name(kind: str) -> str:
    return GROUP_NAMES.get(kind, kind)


# ---- actors ---------------------------------------------------------------------------------------------


class FrozenGroup(NamedTuple):
    """A frozen model (the reference or one teacher, ``name``) as a group of ``size`` Ray actors. Its
    renderer stays behind: each actor builds the teacher's tokenizer and chat template itself."""

    name: str
    model_path: str
    flag: str
    offload: bool
    size: int


class PolicyWorker(DistWorker):
    """One process of the policy group: the whole train_dpo / train_dadpo run (``recipe``) with remote
    log-probs."""

    def fit(self, recipe: Callable, cfg, chunks) -> Dict[str, Any]:
        provider = ChunkedLogps(chunks)
        t = time.perf_counter()
        with timeline.recording() as tl, timeline.span("policy run"):  # loading, training, saving
            last = recipe(cfg, remote=provider)
        seconds = time.perf_counter() - t
        destroy_process_group()
        return {"metrics": last, "wait_seconds": provider.wait_seconds, "seconds": seconds, "spans": tl.spans}


class FrozenWorker(DistWorker):
    """One process of a frozen group (the reference, or one teacher): loads the model once, then scores
    the pairs it is given (a global batch at a time, shared out between the group's processes)."""

    def setup(self, cfg, group: FrozenGroup) -> int:
        d = cfg.data
        rows = load_sources(
            d.dataset, split=d.dataset_split, max_samples=d.max_samples, probs=d.dataset_probs, seed=cfg.train.seed
        )
        tokenizer = data_tokenizer(cfg.model.model_name_or_path, d)
        if group.name == "ref":
            model = reference(cfg)
        else:
            model = next(
                t for t in teacher_models(cfg.teacher, teacher_renderers(cfg.teacher, d)) if t.name == group.name
            )
        self.ds = frozen_dataset(model, rows, tokenizer, d, cfg.model.model_name_or_path, d.dataset)
        self.position = {item_index: pos for pos, item_index in enumerate(self.ds.rows_kept_indices)}
        self.strategy = make_strategy(cfg, training=False)
        self.model = prepare_frozen(self.strategy, cfg, group.model_path, group.offload, what=group.flag)
        self.micro = cfg.train.micro_batch_size
        self.timeline = timeline.Timeline()
        return len(self.ds)

    def score(self, indices: List[int]) -> Dict[int, Tuple[float, float]]:
        with self.timeline.span("score"):
            return score_pairs(self.strategy, self.model, self.ds, [self.position[i] for i in indices], self.micro)

    def report(self) -> Dict[str, Any]:
        """The time this actor spent scoring (``busy_seconds``) and when (``spans``)."""
        return {"busy_seconds": sum(end - start for _, start, end in self.timeline.spans), "spans": self.timeline.spans}

    def release(self) -> None:
        """Drop the model and give its memory back (the policy is about to load on these GPUs)."""
        self.model = self.strategy = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---- the driver -----------------------------------------------------------------------------------------


class _NoLogpsProvider:
    """Stands in for the provider while the driver builds the data only to learn its order."""

    def get(self, kind, index):  # pragma: no cover - never called
        raise AssertionError("the driver does not read log-probs")


def _schedule(view, cfg, world: int, start: Optional[dict]) -> List[List[int]]:
    """Row indices in the order the policy will first need them, one list per global step (rows already
    listed at an earlier step are left out): the sampler's order from the resume point on."""
    bs = cfg.train.batch_size
    n_steps = steps_per_epoch(len(view), bs)
    _, epoch0, consumed0 = ckpt_io.resume_position(start, bs, n_steps) if start else (0, 0, 0)
    seen, steps = set(), []
    for epoch in range(epoch0, cfg.train.max_epochs):
        order = ResumableDistributedSampler(
            len(view), world, 0, shuffle=True, seed=cfg.train.seed, epoch=epoch
        ).global_order()
        for k in range((consumed0 if epoch == epoch0 else 0) // bs, n_steps):
            rows = [view.row_index(p) for p in order[k * bs : (k + 1) * bs]]
            new = [i for i in rows if i not in seen]
            seen.update(new)
            if new:
                steps.append(new)
    return steps


def _frozen_groups(cfg, models: Sequence[FrozenModel], names: Sequence[str]) -> List[FrozenGroup]:
    """The groups to start: one per model of ``names`` (the models the remote provider scores), each of
    --ref.* / --teacher.* num_nodes x num_gpus_per_node actors."""
    groups = []
    for m in models:
        if m.name in names:
            section = cfg.teacher if m.is_teacher else cfg.ref
            groups.append(
                FrozenGroup(m.name, m.model_path, m.flag, m.offload, section.num_nodes * section.num_gpus_per_node)
            )
    return groups


def _frozen_reports(frozen_groups: Dict[str, ActorGroup]) -> Dict[str, List[Dict[str, Any]]]:
    """Each frozen group's :meth:`FrozenWorker.report`, one per rank, by kind."""
    return {kind: wait_groups([(g, g.call("report"))])[0] for kind, g in frozen_groups.items()}


def _driver_owned(chunks: List[tuple], scored: List[List[Any]]) -> List[tuple]:
    """``chunks`` with their scores (``scored``: the results of their scoring calls, in the order they were
    queued) put in the object store by the driver, so they outlive the frozen actors that computed them."""
    import ray

    it = iter(scored)
    return [(rows, {kind: [ray.put(part) for part in next(it)] for kind in refs}) for rows, refs in chunks]


def train_dpo_ray(cfg: DPORayConfig) -> Dict[str, Any]:
    """train_dpo with the policy and the reference as Ray actor groups."""
    tokenizer = data_tokenizer(cfg.model.model_name_or_path, cfg.data)
    return _train_on_ray(cfg, train_dpo, tokenizer, [reference(cfg)])


def train_dadpo_ray(cfg: DADPORayConfig) -> Dict[str, Any]:
    """train_dadpo with the policy, the reference and each teacher as Ray actor groups."""
    tokenizer = data_tokenizer(cfg.model.model_name_or_path, cfg.data)
    return _train_on_ray(cfg, train_dadpo, tokenizer, dadpo_models(cfg))


def _train_on_ray(cfg, recipe: Callable, tokenizer, models: Sequence[FrozenModel]) -> Dict[str, Any]:
    """Place the groups, score ahead, train (the policy group runs ``recipe``: train_dpo / train_dadpo);
    returns the policy's last metrics plus the timing of the overlap (``ray_policy_seconds``,
    ``ray_wait_seconds``: policy time blocked on scores, ``ray_<group>_busy_seconds``)."""
    # The policy group: one DeepSpeed world of this many actors (--train.batch_size splits evenly over them:
    # checked when the flags were parsed).
    world = cfg.actor.num_nodes * cfg.actor.num_gpus_per_node
    # Cheap checks first (tokenizers, data, caches), exactly as every policy process will build them.
    data = preference_data(cfg, tokenizer, models, remote=_NoLogpsProvider())
    for line in data.reports:
        print(line, flush=True)
    check_lora_targets(cfg)
    check_training_output_dir(
        cfg
    )  # a previous run there: refused before any group is placed (rank 0 of the policy locks it)
    start = ckpt_io.read_latest_meta(cfg.checkpoint_dir) if cfg.ckpt.load_enable else None
    steps = _schedule(data.train, cfg, world, start) if data.remote else []

    connect(cfg.ray.address)
    gpus = cluster_has_gpus()
    frozen = _frozen_groups(cfg, models, data.remote)
    cpus, timeout = cfg.ray.num_cpus_per_actor, cfg.ray.placement_timeout
    bundles, groups = [], []
    try:
        if cfg.train.colocate_all:
            too_big = [group_name(g.name) for g in frozen if g.size > world]
            if too_big:
                raise UserError(
                    f"--train.colocate_all: the {', '.join(too_big)} group(s) have more actors than the "
                    f"policy's {world} bundles; make them at most as large"
                )
            shared = make_bundles("the colocated groups", world, cpus, 1 if gpus else 0, timeout)
            bundles.append(shared)
            sharing = [1 + sum(1 for g in frozen if g.size > b) for b in range(world)]
            share = 1.0 / max(sharing)  # every actor on a bundle gets the same share of it
            policy = ActorGroup("policy", PolicyWorker, world, shared, range(world), cpus * share, share if gpus else 0)
            groups.append(policy)
            for g in frozen:
                groups.append(
                    ActorGroup(
                        group_name(g.name),
                        FrozenWorker,
                        g.size,
                        shared,
                        range(g.size),
                        cpus * share,
                        share if gpus else 0,
                    )
                )
        else:
            own = make_bundles("the policy group", world, cpus, 1 if gpus else 0, timeout)
            bundles.append(own)
            policy = ActorGroup("policy", PolicyWorker, world, own, range(world), cpus, 1 if gpus else 0)
            groups.append(policy)
            for g in frozen:
                b = make_bundles(f"the {group_name(g.name)} group", g.size, cpus, 1 if gpus else 0, timeout)
                bundles.append(b)
                groups.append(
                    ActorGroup(group_name(g.name), FrozenWorker, g.size, b, range(g.size), cpus, 1 if gpus else 0)
                )
        frozen_groups = dict(zip([g.name for g in frozen], groups[1:], strict=True))
        os.makedirs(cfg.ckpt.output_dir, exist_ok=True)
        with open(os.path.join(cfg.ckpt.output_dir, "ray_actors.json"), "w") as f:
            json.dump([row for g in groups for row in g.describe()], f, indent=1)

        wait_groups([(frozen_groups[g.name], frozen_groups[g.name].call("setup", cfg, g)) for g in frozen])
        # Every scoring call is queued now, in the policy's order: each group works through them as fast
        # as it can.
        chunks, score_calls = [], []
        for rows in steps:
            refs = {kind: g.call("score", rows) for kind, g in frozen_groups.items()}
            chunks.append((rows, refs))
            score_calls += [(frozen_groups[kind], r) for kind, r in refs.items()]
        t = time.perf_counter()
        if cfg.train.colocate_all:
            # On the policy's GPUs: all the scoring first, the frozen models' memory freed and their actors
            # ended, then the policy loads and trains; no frozen forward runs beside a policy step.
            chunks = _driver_owned(chunks, wait_groups(score_calls))
            reports = _frozen_reports(frozen_groups)
            wait_groups([(g, g.call("release")) for g in frozen_groups.values()])
            for g in frozen_groups.values():
                g.kill()
            results = wait_groups([(policy, policy.call("fit", recipe, cfg, chunks))])[0]
        else:  # the policy trains while the frozen groups score ahead of it
            results = wait_groups([(policy, policy.call("fit", recipe, cfg, chunks))] + score_calls)[0]
            reports = _frozen_reports(frozen_groups)
        seconds = time.perf_counter() - t
    finally:
        for g in groups:
            g.kill()
        free_bundles(*bundles)
    out = dict(results[0]["metrics"] or {})
    busy = {kind: max(r["busy_seconds"] for r in per_rank) for kind, per_rank in reports.items()}
    timing = {
        "ray_seconds": round(seconds, 3),
        "ray_policy_seconds": round(max(r["seconds"] for r in results), 3),
        "ray_wait_seconds": round(max(r["wait_seconds"] for r in results), 3),
        **{f"ray_{group_name(k)}_busy_seconds": round(v, 3) for k, v in busy.items()},
    }
    with open(os.path.join(cfg.ckpt.output_dir, "ray_timing.json"), "w") as f:
        json.dump(timing, f, indent=1)
    spans = [("policy", rank, r["spans"]) for rank, r in enumerate(results)]
    spans += [
        (group_name(kind), rank, r["spans"]) for kind, per_rank in reports.items() for rank, r in enumerate(per_rank)
    ]
    with open(os.path.join(cfg.ckpt.output_dir, "ray_timeline.json"), "w") as f:
        json.dump(timeline.chrome_trace(spans), f)
    print(
        f"ray: policy {timing['ray_policy_seconds']} s, of which {timing['ray_wait_seconds']} s waiting for "
        f"log-probs; frozen groups busy " + ", ".join(f"{group_name(k)} {v:.1f} s" for k, v in busy.items()),
        flush=True,
    )
    out.update(timing)
    return out
