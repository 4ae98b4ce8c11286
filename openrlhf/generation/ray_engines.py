"""Generation engines as Ray actors (``generate --generate.ray``): ``--vllm.num_engines`` actors on the
cluster, each running one backend (vLLM with ``--vllm.tensor_parallel_size`` GPUs, or transformers'
generate on one GPU or on CPUs), the prompts dealt out in chunks of ``--generate.batch_size``
(chunk j to engine j mod N). Each finished chunk comes back as it is done, so the caller writes the
resumable output file as it goes, exactly as with the in-process backends. A dead engine stops the run
with an error naming it. The engines are started once per run and answer prompts of every setting
(:mod:`openrlhf.generation.sampling`) and turn: vLLM chunks mix settings (one ``SamplingParams`` per
prompt); the hf backend's chunks hold one setting each (a chunk is one seeded ``run`` of it).
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

from openrlhf.generation.hf_backend import HFGenerator
from openrlhf.generation.sampling import Sampling, setting_groups
from openrlhf.generation.vllm_backend import Item, VLLMSettings, _Engine, make_items
from openrlhf.utils.ray_group import (
    ActorGroup,
    DistWorker,
    cluster_has_gpus,
    connect,
    free_bundles,
    get_named,
    make_bundles,
)

Result = Tuple[int, List[int], Optional[str]]


def engine_gpus(backend: str, tensor_parallel_size: int, cluster_has_gpus: bool) -> int:
    """GPUs of each engine's bundle (and actor): all ``tensor_parallel_size`` GPUs of a vLLM engine in one
    bundle, so they are on one node and the actor sees them all; vLLM then runs its ``tp`` workers as
    processes of the actor (``distributed_executor_backend="mp"``, see ``vllm_backend.llm_kwargs``), not
    as Ray actors of their own (its Ray executor refuses a bundle of more than one GPU)."""
    if not cluster_has_gpus:
        return 0
    return tensor_parallel_size if backend == "vllm" else 1


class EngineWorker(DistWorker):
    """One engine: ``load`` builds the backend, ``generate`` answers a chunk of (position, prompt ids)."""

    def load(self, cfg, stop_ids: Sequence[int], pad_id: int) -> None:
        g = cfg.generate
        if g.backend == "hf":
            self.engine = HFGenerator.from_config(cfg, pad_id=pad_id, stop_ids=stop_ids)
            self.positional = True
        else:
            self.engine = _Engine(VLLMSettings.from_config(cfg, stop_ids))
            self.positional = False

    def generate(self, items: List[Item]) -> List[Result]:
        out: List[Result] = []
        if self.positional:  # the hf generator numbers the prompts it is given from 0
            sampling = None if any(sm is None for _, _, sm in items) else [sm for _, _, sm in items]
            for results in self.engine.run([ids for _, ids, _ in items], sampling):
                out += [(items[k][0], ids, finish) for k, ids, finish in results]
        else:
            for results in self.engine.run(items):
                out += results
        return out

    def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.close()


class RayGenerator:
    """The engines of one run, started on the cluster at ``cfg.ray.address`` (or $RAY_ADDRESS)."""

    def __init__(self, cfg, stop_ids: Sequence[int], pad_id: int, log=print):
        connect(cfg.ray.address)
        v, g = cfg.vllm, cfg.generate
        self.batch_size = g.batch_size
        self.backend = g.backend
        gpus = engine_gpus(g.backend, v.tensor_parallel_size, cluster_has_gpus())
        self.bundles = make_bundles(
            "the generation engines", v.num_engines, cfg.ray.num_cpus_per_actor, gpus, cfg.ray.placement_timeout
        )
        self.group = ActorGroup(
            "generation engine",
            EngineWorker,
            v.num_engines,
            self.bundles,
            range(v.num_engines),
            cfg.ray.num_cpus_per_actor,
            gpus,
            rendezvous=False,
        )
        log(
            f"generate: {v.num_engines} {g.backend} engine(s) as Ray actors on "
            + ", ".join(sorted({n["ip"] for n in self.group.nodes}))
        )
        self.group.get(self.group.call("load", cfg, list(stop_ids), pad_id))

    def chunks(self, items: List[Item]) -> List[List[Item]]:
        """The chunks of ``batch_size`` prompts dealt to the engines: vLLM's in prompt order, whatever their
        settings; the hf backend's within each setting (in order of first appearance)."""
        parts = [items]
        if self.backend == "hf" and all(sm is not None for _, _, sm in items):
            parts = [[items[k] for k in ks] for _, ks in setting_groups([sm for _, _, sm in items])]
        return [part[s : s + self.batch_size] for part in parts for s in range(0, len(part), self.batch_size)]

    def run(
        self, prompt_ids: Sequence[Sequence[int]], sampling: Optional[Sequence[Sampling]] = None
    ) -> Iterator[List[Result]]:
        """Yield finished chunks ``[(position, token ids, finish reason)]`` as they arrive. ``sampling``: each
        prompt's own settings (default: the run's)."""
        import ray

        chunks = self.chunks(make_items(prompt_ids, sampling))
        n = len(self.group)
        where = {}
        for j, chunk in enumerate(chunks):
            where[self.group.actors[j % n].generate.remote(chunk)] = j % n
        pending = list(where)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield get_named(done[0], f"generation engine {where[done[0]]}")

    def close(self) -> None:
        try:
            self.group.get(self.group.call("close"))
        finally:
            self.group.kill()
            free_bundles(self.bundles)
