"""Merge a LoRA adapter into its base model and write a normal HF folder (what OpenRLHF's LoRA scripts
end with: ``python -m openrlhf.cli.lora_combiner``)."""

from __future__ import annotations

import json
import os
import shutil

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from openrlhf.config.schema import PARAM_DTYPES
from openrlhf.tools.common import make_temp_dir
from openrlhf.utils.deepspeed.ckpt_io import install_folder
from openrlhf.utils.errors import UserError, require_package
from openrlhf.utils.paths import output_dir_problem


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_output(model_path: str, lora_path: str, output_path: str) -> None:
    """Before anything loads: the output is not the base model's or the adapter's folder (nor inside them),
    and it is (or can become) a writable folder."""
    for flag, folder in (("--model_path", model_path), ("--lora_path", lora_path)):
        if os.path.isdir(folder) and (_inside(output_path, folder) or _inside(folder, output_path)):
            raise UserError(
                f"--output_path {output_path}: it is {flag} {folder}, inside it or around it; the merged model "
                "would replace those weights: give another folder"
            )
    problem = output_dir_problem(output_path)
    if problem:
        raise UserError(f"--output_path: {problem}")


def _adapter_base(lora_path: str) -> str:
    """The base model the adapter was trained on (its adapter_config.json), '' when it does not say."""
    try:
        with open(os.path.join(lora_path, "adapter_config.json")) as f:
            value = json.load(f).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def _same_model(a: str, b: str) -> bool:
    """Whether two model names / folders name the same model (folders by their real path)."""
    if os.path.isdir(a) and os.path.isdir(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a.rstrip("/") == b.rstrip("/")


def combine_lora(
    model_path: str, lora_path: str, output_path: str, param_dtype: str = "bf16", is_rm: bool = False
) -> dict:
    """``PeftModel(base, adapter)`` merged into the base weights, saved with the base's tokenizer (and
    chat template) to ``output_path``. ``is_rm``: the base is a sequence-classification model (a reward
    model's head), else a causal LM. The folder is written beside ``output_path`` and moved into place;
    other files already in ``output_path`` stay."""
    require_package("peft", "python -m openrlhf.cli.lora_combiner")
    from peft import PeftModel

    if param_dtype not in PARAM_DTYPES:
        raise UserError(f"--ds.param_dtype: unknown dtype {param_dtype!r}; expected one of {', '.join(PARAM_DTYPES)}")
    if not os.path.isfile(os.path.join(lora_path, "adapter_config.json")):
        raise UserError(
            f"--lora_path: {lora_path} has no adapter_config.json (a peft adapter folder; this "
            "fork's LoRA runs write it to <ckpt.output_dir>/adapter)"
        )
    _check_output(model_path, lora_path, output_path)
    base_of_adapter = _adapter_base(lora_path)
    dtype = getattr(torch, PARAM_DTYPES[param_dtype])
    auto = AutoModelForSequenceClassification if is_rm else AutoModelForCausalLM
    print(f"loading the base model {model_path}", flush=True)
    try:
        base = auto.from_pretrained(model_path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--model_path: cannot load a model from {model_path!r}: {first}") from None
    print(f"applying the adapter {lora_path}", flush=True)
    try:
        peft_model = PeftModel.from_pretrained(base, lora_path, torch_dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--lora_path: cannot apply the adapter in {lora_path} to {model_path}: {first}") from None
    if base_of_adapter and not _same_model(base_of_adapter, model_path):
        print(
            f"note: the adapter {lora_path} was trained on {base_of_adapter} (its adapter_config.json), merged here "
            f"into {model_path}: their shapes agree, so check that this is the base you mean",
            flush=True,
        )
    merged = peft_model.merge_and_unload()
    tmp = make_temp_dir(output_path)
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        install_folder(tmp, os.path.abspath(output_path))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk or an interrupt leaves no half-written folder
        raise
    print(f"saved the merged model to {output_path}", flush=True)
    return {"output_path": output_path, "params": sum(p.numel() for p in merged.parameters())}
