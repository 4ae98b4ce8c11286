"""Batched transformers ``generate`` (CPU or one GPU).

Prompts are sorted by length (longest first, ties by position: a fixed order) and
left-padded into batches of ``--generate.batch_size``. Decoding is greedy when the
temperature is 0, else sampling with temperature / top_p / top_k. Prompts of several
settings (per-prompt temperature / max_new_tokens, :mod:`openrlhf.generation.sampling`) are
answered one setting at a time by the one loaded model, the random stream seeded with
``--train.seed`` at the start of each setting (as a run of that setting alone). Every setting
that shapes decoding (do_sample, temperature, top_p, top_k, repetition penalty, min
new tokens, beams, eos/pad ids) is passed explicitly, so defaults in the model's
``generation_config.json`` never change the decoding asked for.

dtype: on a GPU ``--ds.param_dtype``; on a CPU always fp32 (bf16 matmuls are several
times slower on CPUs without bf16 units) and the run says so.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from openrlhf.generation.sampling import Sampling, setting_groups
from openrlhf.models.actor import resolve_attn_implementation
from openrlhf.utils.dtypes import torch_dtype

# (position in the prompt list, generated token ids, backend's finish reason or None)
Result = Tuple[int, List[int], Optional[str]]


class HFGenerator:
    def __init__(
        self,
        model_path: str,
        gen_cfg,
        *,
        param_dtype: str = "bf16",
        attn_implementation: str = "sdpa",
        seed: int = 42,
        pad_id: int = 0,
        stop_ids: Sequence[int] = (),
        log=print,
        experts_implementation: str = "",
    ):
        self.torch = torch
        self.cfg = gen_cfg
        self.pad_id = int(pad_id)
        self.stop_ids = list(stop_ids)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            dtype = torch.float32
            if param_dtype != "fp32":
                log(f"generate: running in fp32 on CPU (--ds.param_dtype {param_dtype} applies on GPU only)")
            if attn_implementation.startswith("flash_attention"):
                raise ValueError(
                    f"--ds.attn_implementation {attn_implementation} needs a CUDA GPU; use auto, sdpa or eager on CPU"
                )
        else:
            dtype = torch_dtype(param_dtype)

        kwargs = {"experts_implementation": experts_implementation} if experts_implementation else {}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_path,
                dtype=dtype,
                attn_implementation=resolve_attn_implementation(attn_implementation, dtype),
                **kwargs,
            )
        except (OSError, ValueError) as e:
            raise ValueError(f"--model.model_name_or_path: cannot load a causal LM from {model_path!r}: {e}") from e
        self.model = model.to(self.device).eval()
        self.seed = seed
        self.synced_gpus = False

    @classmethod
    def from_config(cls, cfg, *, pad_id: int, stop_ids: Sequence[int], log=print) -> "HFGenerator":
        """The generator of a generate run: --model, --generate.*, --ds.param_dtype / attn / experts
        implementation, --train.seed."""
        return cls(
            cfg.model.model_name_or_path,
            cfg.generate,
            param_dtype=cfg.ds.param_dtype,
            attn_implementation=cfg.ds.attn_implementation,
            experts_implementation=cfg.ds.experts_implementation,
            seed=cfg.train.seed,
            pad_id=pad_id,
            stop_ids=stop_ids,
            log=log,
        )

    @classmethod
    def of_model(
        cls, model, gen_cfg, *, seed: int, pad_id: int, stop_ids: Sequence[int], synced_gpus: bool = False
    ) -> "HFGenerator":
        """A generator on a model that is already loaded, in its own dtype and device (the policy being
        trained: on-policy rounds). ``synced_gpus``: every process of a ZeRO-3 group generates together (its
        forwards gather the parameters collectively), each until all are done."""
        self = cls.__new__(cls)
        self.torch = torch
        self.cfg = gen_cfg
        self.pad_id = int(pad_id)
        self.stop_ids = list(stop_ids)
        self.device = next(model.parameters()).device
        self.model = model
        self.seed = seed
        self.synced_gpus = synced_gpus
        return self

    def decoding(self, temperature: float, max_new_tokens: int) -> GenerationConfig:
        """transformers' settings for one (temperature, max_new_tokens); top_p / top_k from the run's config."""
        gen_cfg = self.cfg
        sampling = temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            do_sample=sampling,
            num_beams=1,
            temperature=temperature if sampling else 1.0,
            top_p=gen_cfg.top_p if sampling else 1.0,
            top_k=(gen_cfg.top_k if gen_cfg.top_k > 0 else 0) if sampling else 50,  # 50: transformers' neutral default
            repetition_penalty=1.0,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            bos_token_id=None,
            use_cache=True,  # also for a trained model whose config turned the cache off (gradient checkpointing)
        )

    @staticmethod
    def order(prompt_ids: Sequence[Sequence[int]], positions: Optional[Sequence[int]] = None) -> List[int]:
        """Batching order of ``positions`` (default: all): longest prompt first, ties by position."""
        if positions is None:
            positions = range(len(prompt_ids))
        return sorted(positions, key=lambda i: (-len(prompt_ids[i]), i))

    def _left_pad(self, batch: Sequence[Sequence[int]]):
        torch = self.torch
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, s in enumerate(batch):
            if len(s):
                ids[r, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
                mask[r, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def run(
        self, prompt_ids: Sequence[Sequence[int]], sampling: Optional[Sequence[Sampling]] = None
    ) -> Iterator[List[Result]]:
        """Yield the results of one batch at a time (positions index ``prompt_ids``). ``sampling``: each
        prompt's own temperature / max_new_tokens (default: the run's config); one setting at a time."""
        torch = self.torch
        if sampling is None:
            groups = [((self.cfg.temperature, self.cfg.max_new_tokens), list(range(len(prompt_ids))))]
        else:
            if len(sampling) != len(prompt_ids):
                raise ValueError(f"{len(sampling)} sampling settings for {len(prompt_ids)} prompts")
            groups = setting_groups(sampling)
        bs = self.cfg.batch_size
        for (temperature, max_new_tokens), positions in groups:
            config = self.decoding(temperature, max_new_tokens)
            if temperature > 0:
                torch.manual_seed(self.seed)
            order = self.order(prompt_ids, positions)
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                ids, mask = self._left_pad([prompt_ids[i] for i in idx])
                with torch.no_grad():
                    out = self.model.generate(
                        input_ids=ids, attention_mask=mask, generation_config=config, synced_gpus=self.synced_gpus
                    )
                gen = out[:, ids.shape[1] :].tolist()
                yield [(i, g, None) for i, g in zip(idx, gen, strict=True)]

    def close(self) -> None:
        """Free the model (and its GPU memory)."""
        self.model = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
