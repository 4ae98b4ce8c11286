"""On-policy rounds (``--onpolicy.round_steps K``): every K optimizer steps the policy being trained answers
the prompts of the next K steps' rows, and its answers replace those rows' rejected responses; the chosen
side (the teacher's response) stays. The reference and the teachers score the new pairs online, as they
score every batch.

A round starting at step ``s`` is generated before step ``s`` from the weights after step ``s - 1``:
``--onpolicy.backend hf``: in every process, with transformers' ``generate`` on the policy itself (each
process answers its own rows; under ZeRO-3 they generate together); ``vllm``: by one vLLM engine in the
first process, started at the first round from the policy's initial folder, the policy's current weights
pushed to it before every round (no restart: :mod:`openrlhf.generation.vllm_weights`), every process's rows
answered there and the answers sent to each process. Each process's answers of a round are written to
``<checkpoint_dir>/onpolicy/round<s>_rank<r>.jsonl`` (prompt, answer, token ids) before the round's first
step: a run resumed inside a round reads them back instead of answering again from other weights, so it
trains on exactly what the uninterrupted run trained on. Sampled answers (``--onpolicy.temperature`` > 0)
draw from a stream seeded by ``--train.seed``, the round and the process, apart from the training's own
(vllm: a seed per row and round).

An answer longer than the room its prompt leaves in ``--data.max_len`` is cut to fit (an unfinished answer,
without the end-of-turn tokens): every model scores the same text.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence

import torch

from openrlhf.config.schema import OnPolicyConfig
from openrlhf.datasets.preference_data import Regenerated
from openrlhf.datasets.tokenizer import pad_token_id
from openrlhf.generation.hf_backend import HFGenerator
from openrlhf.generation.outputs import trim_response
from openrlhf.generation.sampling import Sampling, row_seed
from openrlhf.generation.vllm_backend import VLLMSettings, _Engine, make_items
from openrlhf.utils.errors import DataError
from openrlhf.utils.jsonl import read_jsonl, write_jsonl_atomic


def round_file(checkpoint_dir: str, start: int, rank: int) -> str:
    """Where process ``rank`` keeps its answers of the round that starts at step ``start``."""
    return os.path.join(checkpoint_dir, "onpolicy", f"round{start:06d}_rank{rank}.jsonl")


class OnPolicyRounds:
    """Replaces the rejected responses of ``dataset`` round by round (see the module doc); the training loop
    calls :meth:`before_step` before it reads the rows of each optimizer step."""

    def __init__(
        self,
        cfg: OnPolicyConfig,
        dataset: Regenerated,
        *,
        strategy,
        engine,
        tokenizer,
        renderer,
        stop_ids: Sequence[int],
        seed: int,
        max_len: int,
        checkpoint_dir: str,
        vllm: Optional[VLLMSettings] = None,
    ):
        self.cfg = cfg
        self.vllm = vllm  # the engine's settings (--onpolicy.backend vllm)
        self._engine: Optional[_Engine] = None
        self._started = False
        self.dataset = dataset
        self.strategy = strategy
        self.engine = engine
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.stop_ids = list(stop_ids)
        self.seed = seed
        self.max_len = max_len
        self.checkpoint_dir = checkpoint_dir
        self.current: Optional[int] = None  # the step the answers in ``dataset`` were made for

    # ---- the loop's hook -----------------------------------------------------------------------
    def before_step(self, trainer, step: int) -> Dict[str, float]:
        """Make (at a round's first step) or read back (a run resumed inside a round) the answers of the
        round holding ``step``; returns the metrics of this step's generation (``gen_seconds`` always)."""
        k = self.cfg.round_steps
        start = step - step % k
        if start == self.current:
            return {"gen_seconds": 0.0}
        end = min(start + k, trainer.total_steps)
        positions = list(dict.fromkeys(p for s in range(start, end) for p in trainer.step_positions(s)))
        if step == start:
            starting = self.vllm is not None and not self._started
            if starting:  # the engine's start is not generation: said apart, once
                t0 = time.perf_counter()
                self._start_engine()
                started = self.strategy.all_reduce(time.perf_counter() - t0, op="max")
            t0 = time.perf_counter()
            rows = self._answer(trainer, positions, start, end)
            seconds = time.perf_counter() - t0
            write_jsonl_atomic(round_file(self.checkpoint_dir, start, self.strategy.rank), rows)
            metrics = self.strategy.all_reduce(
                {
                    "gen_response_tokens": sum(r["response_tokens"] for r in rows) / len(rows),
                    "gen_unfinished": sum(r["rejected_unfinished"] for r in rows) / len(rows),
                }
            )
            metrics["gen_seconds"] = self.strategy.all_reduce(seconds, op="max")
            if starting:
                metrics["gen_engine_start_seconds"] = started
        else:
            rows = self._read(start, positions)
            metrics = {"gen_seconds": 0.0}
            self.strategy.print(f"on-policy: read the answers of the round from step {start} back (resumed inside it)")
        self.dataset.replace({r["position"]: self._answer_fields(r, start) for r in rows})
        self.current = start
        return metrics

    # ---- answers -------------------------------------------------------------------------------
    @staticmethod
    def _answer_fields(row: dict, start: int) -> dict:
        """The rejected side of an item from a round file's row."""
        return dict(
            rejected=row["rejected"],
            rejected_ids=list(row["rejected_ids"]),
            rejected_unfinished=bool(row["rejected_unfinished"]),
            rejected_truncated=False,
            round=start,
        )

    def _policy_model(self):
        """The HF model inside the DeepSpeed engine and the Actor wrapper."""
        actor = getattr(self.engine, "module", self.engine)
        return getattr(actor, "model", actor)

    def _answer(self, trainer, positions: List[int], start: int, end: int) -> List[dict]:
        """The policy's answers to the prompts of ``positions`` (rows of the round file)."""
        items = [self.dataset.base[p] for p in positions]
        if self.vllm is not None:
            answered = self._vllm_generate(trainer, start, end)
            generated = [answered[p] for p in positions]
        else:
            generated = [(ids, None) for ids in self._hf_generate(items, start)]
        return [
            self._row(p, it, ids, finish, start)
            for p, it, (ids, finish) in zip(positions, items, generated, strict=True)
        ]

    def _hf_generate(self, items: List[dict], start: int) -> List[List[int]]:
        """transformers' generate on the policy, this process's rows."""
        model = self._policy_model()
        zero3 = self.strategy.ds.zero_stage == 3 and self.strategy.world_size > 1
        rank = self.strategy.rank
        generator = HFGenerator.of_model(
            model,
            self.cfg,
            seed=row_seed(self.seed, f"onpolicy/rank{rank}", start),
            pad_id=pad_token_id(self.tokenizer),
            stop_ids=self.stop_ids,
            synced_gpus=zero3,
        )
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices):  # the training's random stream is left as it was
                generated = {
                    pos: ids for batch in generator.run([it["prompt_ids"] for it in items]) for pos, ids, _ in batch
                }
        finally:
            model.train(was_training)
        return [generated[i] for i in range(len(items))]

    def _vllm_generate(self, trainer, start: int, end: int) -> Dict[int, tuple]:
        """Every process's rows of the round answered by the first process's vLLM engine with the policy's
        current weights: ``{position: (token ids, finish reason)}`` on every process (collective)."""
        world = self.strategy.world_size
        steps = range(start, end)
        everyone = list(dict.fromkeys(p for r in range(world) for s in steps for p in trainer.step_positions(s, r)))
        weights = self.strategy.gathered_state_dict(self.engine)  # the full weights on the first process
        answered = None
        if self.strategy.rank == 0:
            self._engine.push_weights(weights.items())
            items = [self.dataset.base[p] for p in everyone]
            sampled = self.cfg.temperature > 0
            sampling = [
                Sampling(
                    self.cfg.temperature,
                    self.cfg.max_new_tokens,
                    row_seed(self.seed, it["index"], start) if sampled else None,
                )
                for it in items
            ]
            answered = {}
            for batch in self._engine.run(make_items([it["prompt_ids"] for it in items], sampling)):
                answered.update({everyone[k]: (ids, finish) for k, ids, finish in batch})
        del weights
        return self.strategy.broadcast_object(answered)

    def _start_engine(self) -> None:
        """The vLLM engine, in the first process (the others wait at the next collective)."""
        if self.strategy.rank == 0:
            self._engine = _Engine(self.vllm)
        self._started = True  # on every process (the check above must agree on all of them)

    def close(self) -> None:
        """Stop the vLLM engine (if one was started)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def _row(self, position: int, item: dict, generated: List[int], finish: Optional[str], start: int) -> dict:
        """One answer as a round file's row: decoded, re-tokenised as the dataset tokenises a response (cut to
        the room the prompt leaves in --data.max_len, then unfinished)."""
        content, n_tokens, finish = trim_response(generated, self.stop_ids, finish)
        unfinished = finish == "length"
        room = self.max_len - len(item["prompt_ids"])
        while True:
            text = self.tokenizer.decode(content, skip_special_tokens=True)
            ((p_ids, r_ids),) = self.renderer.tokenize_many(
                [(item["prompt"], text)], [f"row {item['index']}"], [unfinished]
            )
            if len(r_ids) <= room or not content:
                break
            content, unfinished = content[: max(0, len(content) - (len(r_ids) - room))], True
        if p_ids != item["prompt_ids"]:  # pragma: no cover - the same prompt text gives the same ids
            raise DataError(f"on-policy: row {item['index']}: the prompt tokenises differently with the new answer")
        return dict(
            step=start,
            position=position,
            index=item["index"],
            prompt=item["prompt"],
            rejected=text,
            rejected_ids=r_ids[:room],
            rejected_unfinished=unfinished,
            response_tokens=n_tokens,
        )

    def _read(self, start: int, positions: List[int]) -> List[dict]:
        """A round's answers written before the interruption; refused when they are for other rows."""
        path = round_file(self.checkpoint_dir, start, self.strategy.rank)
        rows = [r for _, r in read_jsonl(path, "on-policy round (resumed inside it)")]
        if [r.get("position") for r in rows] != positions:
            raise DataError(
                f"on-policy round {path}: its answers are for other rows than this run's round from step {start} "
                "(another dataset, seed, batch size or process count?); resume with the run's own settings"
            )
        return rows
