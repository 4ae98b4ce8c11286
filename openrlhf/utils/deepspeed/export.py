"""HF export: a model's full weights gathered on rank 0 (every ZeRO stage) and written as a normal HF
folder (safetensors + config + tokenizer), or, for a LoRA run, as peft adapters plus the merged model.

Every function taking ``rank`` is COLLECTIVE: all ranks call it, rank 0 writes."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Dict

import deepspeed
import torch
import torch.nn as nn

from openrlhf.utils.deepspeed import ckpt_io
from openrlhf.utils.deepspeed.comm import barrier
from openrlhf.utils.deepspeed.wrapping import unwrap_model
from openrlhf.utils.disk import disk_full_is_one_line
from openrlhf.utils.lora import merge_lora_state_dict


def is_zero3_param(p: torch.Tensor) -> bool:
    """A parameter partitioned by ZeRO-3 (this rank holds a shard)."""
    return hasattr(p, "ds_id")


def gathered_state_dict(model, rank: int) -> Dict[str, torch.Tensor]:
    """The full state dict on rank 0 (CPU tensors, training dtype); {} on other ranks.
    Collective under ZeRO-3 (each parameter is gathered in turn)."""
    module = unwrap_model(model)
    rank0 = rank == 0
    out: Dict[str, torch.Tensor] = {}
    seen: Dict[int, torch.Tensor] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) in seen:
            if rank0:
                out[name] = seen[id(t)]
            continue
        if is_zero3_param(t):
            with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
                value = t.data.detach().cpu().clone() if rank0 else None
        else:
            value = t.detach().cpu().clone() if rank0 else None
        if rank0:
            out[name] = value
            seen[id(t)] = value
    return out


def save_hf_model(model, tokenizer, output_dir: str, rank: int) -> None:
    """Write a normal HF folder (config, safetensors weights in the training dtype,
    generation config, tokenizer with its chat template) to ``output_dir`` (collective).

    Rank 0 writes into a sibling temp folder, then installs it: one atomic rename when
    ``output_dir`` does not exist yet, else file by file with ``os.replace`` (other
    content such as metrics.jsonl or checkpoints/ stays)."""
    sd = gathered_state_dict(model, rank)
    if rank == 0:
        write_hf_folder(unwrap_model(model), sd, tokenizer, output_dir)
    barrier()


def write_hf_folder(module, sd: Dict[str, torch.Tensor], tokenizer, output_dir: str) -> None:
    """Rank 0: ``module``'s config with the weights ``sd`` (and the tokenizer) into ``output_dir``,
    through a sibling temp folder (see :func:`ckpt_io.install_folder`)."""
    output_dir = os.path.normpath(output_dir)
    parent = os.path.dirname(output_dir) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f"{ckpt_io.TMP_PREFIX}hf_{os.path.basename(output_dir)}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    need = lambda: sum(t.numel() * t.element_size() for t in sd.values())  # noqa: E731
    kept = f"nothing in {output_dir} was replaced (the partial copy was removed): free space and run again"
    try:
        with disk_full_is_one_line("the model's weights", parent, need, kept):
            # save_pretrained pops tensors out of the dict it gets: hand it a copy.
            module.save_pretrained(tmp, state_dict=dict(sd))
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            ckpt_io.install_folder(tmp, output_dir)
    finally:  # an interrupted or failed export leaves no temp folder behind
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def save_lora_model(model, tokenizer, output_dir: str, scaling: float, rank: int) -> None:
    """A LoRA run's outputs (collective): the adapters (peft's adapter_config.json +
    adapter_model.safetensors) in ``<output_dir>/adapter`` and the merged weights as a normal
    HF folder in ``output_dir``."""
    sd = gathered_state_dict(model, rank)
    if rank == 0:
        from peft import get_peft_model_state_dict

        peft_model = unwrap_model(model)
        adapter_tmp = os.path.join(
            os.path.dirname(os.path.normpath(output_dir)) or ".",
            f"{ckpt_io.TMP_PREFIX}adapter_{os.path.basename(os.path.normpath(output_dir))}",
        )
        try:
            peft_model.save_pretrained(adapter_tmp, state_dict=get_peft_model_state_dict(peft_model, state_dict=sd))
            os.makedirs(output_dir, exist_ok=True)
            ckpt_io.install_folder(adapter_tmp, os.path.join(output_dir, "adapter"))
        finally:
            if os.path.exists(adapter_tmp):
                shutil.rmtree(adapter_tmp, ignore_errors=True)
        merged = merge_lora_state_dict(sd, scaling)  # 4-bit (QLoRA) base weights come back dequantized
        base = peft_model.get_base_model()
        with saved_unquantized(base):
            write_hf_folder(base, merged, tokenizer, output_dir)
    barrier()


@contextlib.contextmanager
def saved_unquantized(module: nn.Module):
    """Save ``module`` (a 4-bit QLoRA base) as the plain model its merged weights are: transformers'
    ``save_pretrained`` would write the quantizer's own state dict instead of the one handed to it and a
    ``quantization_config`` into config.json. Both are put back afterwards."""
    quantizer = getattr(module, "hf_quantizer", None)
    config = getattr(module, "config", None)
    qconfig = getattr(config, "quantization_config", None)
    if quantizer is None and qconfig is None:
        yield
        return
    module.hf_quantizer = None
    if qconfig is not None:
        del config.quantization_config
    try:
        yield
    finally:
        module.hf_quantizer = quantizer
        if qconfig is not None:
            config.quantization_config = qconfig
