"""Structured pruning of Llama-family causal LMs, guided by calibration prompts.

Three things can be removed, all with smaller ``nn.Linear`` modules (no masks), so
the result is a normal, smaller HF model folder:

- MLP channels (``--prune.mlp_ratio``): in every layer the same number of channels
  (``intermediate_size`` becomes ``floor((1 - ratio) * intermediate_size)``); the rows
  of ``gate_proj`` / ``up_proj`` and the columns of ``down_proj`` of the dropped
  channels go away. Importance of channel j:

  - ``activation``: mean |x_j| of ``down_proj``'s input over the calibration tokens
    times the L2 norm of ``down_proj``'s column j (what the channel adds to the
    residual stream, on average);
  - ``weight``: ||gate_proj row j|| * ||up_proj row j|| * ||down_proj column j||
    (no data; for comparison: it ruins SmolLM2 at 20%).

- attention heads (``--prune.head_ratio``): whole key/value groups with their query
  heads, the same number in every layer; ``head_dim`` is written into the config
  explicitly. Importance of a group: sum over its query heads of mean |x| of
  ``o_proj``'s input slice of the head times the Frobenius norm of ``o_proj``'s
  column block of the head (``weight``: that norm times the norm of ``q_proj``'s
  row block).

- whole layers (``--prune.num_layers``): the layers whose output hidden state is
  most similar (cosine, averaged over calibration tokens) to their input, i.e. that
  change the residual stream least. Always measured on the calibration data.

All importances are measured on the original model in one calibration pass. The
calibration loss (mean token NLL of the calibration texts: the rendered prompt, or
prompt + response when the rows carry a response) is reported before and after,
the "after" one on the saved folder reloaded from disk.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from openrlhf.config.schema import PRUNE_METHODS
from openrlhf.config.validate import prune_problems
from openrlhf.datasets.common import pad_batch
from openrlhf.datasets.loading import DataError, load_rows
from openrlhf.datasets.templates import PromptRenderer
from openrlhf.datasets.tokenizer import data_tokenizer, pad_token_id
from openrlhf.models.actor import token_logps_from_logits
from openrlhf.tools.common import check_output_dir, count_params, make_temp_dir, move_into_place
from openrlhf.utils.devices import pick_device
from openrlhf.utils.errors import UserError


class PruneError(UserError):
    """A model or setting pruning cannot handle; the message names the flag or module (a user error: one
    ``error:`` line and exit code 2 from the CLI)."""


# --------------------------------------------------------------------------- model structure


def kept_count(n: int, ratio: float) -> int:
    """How many of ``n`` units stay when ``ratio`` of them are removed: floor((1 - ratio) * n), >= 1."""
    return max(1, int(math.floor((1.0 - ratio) * n + 1e-9)))


def decoder_layers(model) -> nn.ModuleList:
    """``model.model.layers`` of a Llama-like causal LM, checked; PruneError otherwise."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise PruneError(
            f"{type(model).__name__} is not a Llama-family causal LM: expected decoder layers at model.model.layers"
        )
    for i, layer in enumerate(layers):
        for part, names in (
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
            ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
        ):
            mod = getattr(layer, part, None)
            for n in names:
                if not isinstance(getattr(mod, n, None), nn.Linear):
                    raise PruneError(
                        f"{type(model).__name__}: layer {i} has no nn.Linear {part}.{n}; only Llama-family "
                        "models (mlp.{gate,up,down}_proj, self_attn.{q,k,v,o}_proj) can be pruned"
                    )
    return layers


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def attention_shape(model) -> Dict[str, int]:
    """num_heads, num_kv_heads, head_dim, group size (query heads per kv head)."""
    cfg = _text_config(model)
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if heads % kv:
        raise PruneError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    return {"heads": heads, "kv_heads": kv, "head_dim": head_dim, "group": heads // kv}


def _new_linear(old: nn.Linear, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.weight.requires_grad_(old.weight.requires_grad)
    return lin


def slice_linear(
    lin: nn.Linear, out_idx: Optional[torch.Tensor] = None, in_idx: Optional[torch.Tensor] = None
) -> nn.Linear:
    """A new nn.Linear keeping output rows ``out_idx`` and input columns ``in_idx``."""
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
        if b is not None:
            b = b.index_select(0, out_idx.to(b.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    return _new_linear(lin, w.contiguous(), None if b is None else b.contiguous())


# --------------------------------------------------------------------------- calibration data


@dataclass
class CalibrationSet:
    """Token ids of the calibration texts; ``response_masks`` marks response tokens (rows with one)."""

    sequences: List[List[int]]
    response_masks: List[List[bool]]
    with_response: int

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def build_calibration(
    rows: Sequence[dict], tokenizer, data_cfg, *, source: str = "", response_keys: Sequence[str] = ("response",)
) -> CalibrationSet:
    """Render and tokenize calibration rows (prompt, or prompt + response when a row has one).

    The prompt is ``row[data_cfg.prompt_key]`` (a string or chat messages) rendered as
    training renders it (chat template or input template); the response, if any, is
    the first of ``response_keys`` the row has. Texts are cut to ``data_cfg.max_len``.
    """
    renderer = PromptRenderer.from_data_config(tokenizer, data_cfg)
    seqs: List[List[int]] = []
    masks: List[List[bool]] = []
    n_resp = 0
    for i, row in enumerate(rows):
        where = f"{source or data_cfg.dataset}: row {i + 1}"
        if data_cfg.prompt_key not in row:
            raise DataError(f"{where}: missing key {data_cfg.prompt_key!r} (--data.prompt_key); keys: {sorted(row)}")
        prompt = row[data_cfg.prompt_key]
        response = next((row[k] for k in response_keys if row.get(k) not in (None, "")), None)
        if response is None:
            ids = renderer.prompt_text_ids([renderer.render_prompt(prompt, where)])[0]
            mask = [False] * len(ids)
        else:
            p_ids, r_ids = renderer.tokenize(prompt, response, where)
            ids = list(p_ids) + list(r_ids)
            mask = [False] * len(p_ids) + [True] * len(r_ids)
            n_resp += 1
        ids, mask = ids[: data_cfg.max_len], mask[: data_cfg.max_len]
        if len(ids) < 2:
            raise DataError(f"{where}: the rendered text has fewer than 2 tokens; nothing to measure")
        seqs.append(ids)
        masks.append(mask)
    return CalibrationSet(seqs, masks, n_resp)


def _batches(calib: CalibrationSet, batch_size: int, pad_id: int, device):
    """Length-sorted right-padded batches: (input_ids, attention_mask, response_mask)."""
    order = sorted(range(len(calib.sequences)), key=lambda i: -len(calib.sequences[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, attn, resp = pad_batch([calib.sequences[i] for i in idx], pad_id, [calib.response_masks[i] for i in idx])
        yield ids.to(device), attn.to(device), resp.to(device)


# --------------------------------------------------------------------------- measuring


class _Recorder:
    """Forward hooks that sum |activations| / cosine similarities over the real (unpadded) tokens."""

    def __init__(self, model, mlp: bool, heads: bool, layers: bool):
        self.layers = decoder_layers(model)
        self.mask: Optional[torch.Tensor] = None  # [B, T] float, set per batch
        self.tokens = 0.0
        self.mlp_sum: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self.head_sum: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self.cos_sum = [0.0] * len(self.layers)
        self._inputs: Dict[int, torch.Tensor] = {}
        self.head_dim = attention_shape(model)["head_dim"]
        self.handles = []
        for i, layer in enumerate(self.layers):
            if mlp:
                self.handles.append(layer.mlp.down_proj.register_forward_pre_hook(self._mlp_hook(i)))
            if heads:
                self.handles.append(layer.self_attn.o_proj.register_forward_pre_hook(self._head_hook(i)))
            if layers:
                self.handles.append(layer.register_forward_pre_hook(self._layer_in(i), with_kwargs=True))
                self.handles.append(layer.register_forward_hook(self._layer_out(i), with_kwargs=True))

    def _masked_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over batch and time of x [B, T, ...] where the mask is set (float64)."""
        m = self.mask.to(x.dtype).reshape(*self.mask.shape, *([1] * (x.dim() - 2)))
        return (x * m).sum(dim=(0, 1)).double()

    @staticmethod
    def _add(store: list, i: int, value: torch.Tensor) -> None:
        store[i] = value if store[i] is None else store[i] + value

    def _mlp_hook(self, i: int):
        def hook(module, args):
            self._add(self.mlp_sum, i, self._masked_sum(args[0].detach().float().abs()))

        return hook

    def _head_hook(self, i: int):
        def hook(module, args):
            x = args[0].detach().float()
            per_head = x.reshape(*x.shape[:-1], -1, self.head_dim).abs().mean(-1)  # [B, T, H]
            self._add(self.head_sum, i, self._masked_sum(per_head))

        return hook

    def _layer_in(self, i: int):
        def hook(module, args, kwargs):
            self._inputs[i] = (args[0] if args else kwargs["hidden_states"]).detach()

        return hook

    def _layer_out(self, i: int):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            cos = F.cosine_similarity(self._inputs.pop(i).float(), out.detach().float(), dim=-1)  # [B, T]
            self.cos_sum[i] += float((cos * self.mask.to(cos.dtype)).sum())

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@torch.no_grad()
def calibration_pass(
    model,
    calib: CalibrationSet,
    *,
    pad_id: int,
    batch_size: int = 4,
    mlp: bool = False,
    heads: bool = False,
    layers: bool = False,
    progress: bool = True,
    desc: str = "calibration",
) -> dict:
    """One pass over the calibration texts: losses, and the statistics asked for.

    Returns ``loss`` (mean NLL over every predicted token), ``response_loss`` (over
    response tokens; None without responses), ``tokens``, and as asked:
    ``mlp_act`` (per layer: mean |down_proj input| per channel), ``head_act`` (per
    layer: mean |o_proj input| per query head), ``layer_cos`` (per layer: mean cosine
    similarity of the layer's input and output hidden states).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rec = _Recorder(model, mlp, heads, layers) if (mlp or heads or layers) else None
    nll_sum = resp_sum = 0.0
    n_tok = n_resp = 0
    n_batches = math.ceil(len(calib.sequences) / batch_size)
    try:
        for ids, attn, resp in tqdm(
            _batches(calib, batch_size, pad_id, device), total=n_batches, desc=desc, disable=not progress, leave=False
        ):
            if rec is not None:
                rec.mask = attn.bool()
                rec.tokens += float(attn.sum())
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            logps = token_logps_from_logits(logits, ids)  # [B, T-1]
            valid = attn[:, 1:].bool()
            nll_sum -= float(logps[valid].sum())
            n_tok += int(valid.sum())
            rmask = resp[:, 1:] & valid
            resp_sum -= float(logps[rmask].sum())
            n_resp += int(rmask.sum())
    finally:
        if rec is not None:
            rec.remove()
        model.train(was_training)
    out = {
        "loss": nll_sum / max(n_tok, 1),
        "response_loss": resp_sum / n_resp if n_resp else None,
        "tokens": n_tok,
    }
    if rec is not None:
        t = max(rec.tokens, 1.0)
        if mlp:
            out["mlp_act"] = [s.float().cpu() / t for s in rec.mlp_sum]
        if heads:
            out["head_act"] = [s.float().cpu() / t for s in rec.head_sum]
        if layers:
            out["layer_cos"] = [c / t for c in rec.cos_sum]
    return out


# --------------------------------------------------------------------------- scores


def mlp_channel_scores(model, method: str, mlp_act: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
    """Importance of every MLP channel of every layer (higher: more important)."""
    scores = []
    for i, layer in enumerate(decoder_layers(model)):
        mlp = layer.mlp
        down_norm = mlp.down_proj.weight.detach().float().norm(dim=0).cpu()
        if method == "activation":
            if mlp_act is None:
                raise ValueError("the activation method needs calibration statistics (mlp_act)")
            scores.append(mlp_act[i].float() * down_norm)
        elif method == "weight":
            gate = mlp.gate_proj.weight.detach().float().norm(dim=1).cpu()
            up = mlp.up_proj.weight.detach().float().norm(dim=1).cpu()
            scores.append(gate * up * down_norm)
        else:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(PRUNE_METHODS)}")
    return scores


def head_group_scores(model, method: str, head_act: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
    """Importance of every key/value group (its query heads together) of every layer."""
    shape = attention_shape(model)
    heads, kv, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    scores = []
    for i, layer in enumerate(decoder_layers(model)):
        att = layer.self_attn
        o_norm = att.o_proj.weight.detach().float().reshape(-1, heads, d).norm(dim=(0, 2)).cpu()  # [H]
        if method == "activation":
            if head_act is None:
                raise ValueError("the activation method needs calibration statistics (head_act)")
            per_head = head_act[i].float() * o_norm
        elif method == "weight":
            q_norm = att.q_proj.weight.detach().float().reshape(heads, d, -1).norm(dim=(1, 2)).cpu()
            per_head = o_norm * q_norm
        else:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(PRUNE_METHODS)}")
        scores.append(per_head.reshape(kv, heads // kv).sum(-1))
    return scores


def top_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in increasing index order (ties: lower index wins)."""
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)


# --------------------------------------------------------------------------- surgery


def prune_mlp_channels(model, keep: Sequence[torch.Tensor]) -> None:
    """Keep channels ``keep[i]`` of layer i's MLP (same count in every layer); updates the config."""
    layers = decoder_layers(model)
    sizes = {len(k) for k in keep}
    if len(keep) != len(layers) or len(sizes) != 1:
        raise ValueError("keep one index set per layer, all of the same size")
    for layer, idx in zip(layers, keep, strict=True):
        mlp = layer.mlp
        mlp.gate_proj = slice_linear(mlp.gate_proj, out_idx=idx)
        mlp.up_proj = slice_linear(mlp.up_proj, out_idx=idx)
        mlp.down_proj = slice_linear(mlp.down_proj, in_idx=idx)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(idx)
    _text_config(model).intermediate_size = sizes.pop()


def prune_kv_groups(model, keep: Sequence[torch.Tensor]) -> None:
    """Keep key/value groups ``keep[i]`` (with their query heads) in layer i; updates the config."""
    shape = attention_shape(model)
    group, d = shape["group"], shape["head_dim"]
    layers = decoder_layers(model)
    sizes = {len(k) for k in keep}
    if len(keep) != len(layers) or len(sizes) != 1:
        raise ValueError("keep one group set per layer, all of the same size")
    for layer, groups in zip(layers, keep, strict=True):
        att = layer.self_attn
        q_heads = torch.tensor([g * group + h for g in groups.tolist() for h in range(group)], dtype=torch.long)
        q_rows = (q_heads[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
        kv_rows = (groups[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
        att.q_proj = slice_linear(att.q_proj, out_idx=q_rows)
        att.k_proj = slice_linear(att.k_proj, out_idx=kv_rows)
        att.v_proj = slice_linear(att.v_proj, out_idx=kv_rows)
        att.o_proj = slice_linear(att.o_proj, in_idx=q_rows)
        att.head_dim = d
        for name, value in (
            ("num_heads", len(q_heads)),
            ("num_key_value_heads", len(groups)),
            ("num_attention_heads", len(q_heads)),
        ):
            if hasattr(att, name):
                setattr(att, name, value)
    cfg = _text_config(model)
    n_kv = sizes.pop()
    cfg.head_dim = d  # explicit: hidden_size // num_attention_heads is no longer the head size
    cfg.num_key_value_heads = n_kv
    cfg.num_attention_heads = n_kv * group


def drop_layers(model, drop: Sequence[int]) -> None:
    """Remove decoder layers ``drop``; renumbers the rest and updates the config (layer_types too)."""
    layers = decoder_layers(model)
    drop = set(int(i) for i in drop)
    kept = [i for i in range(len(layers)) if i not in drop]
    if not kept:
        raise ValueError("cannot remove every layer")
    new = nn.ModuleList([layers[i] for i in kept])
    for new_idx, layer in enumerate(new):
        for mod in (layer, getattr(layer, "self_attn", None)):
            if mod is not None and hasattr(mod, "layer_idx"):
                mod.layer_idx = new_idx
    model.model.layers = new
    cfg = _text_config(model)
    cfg.num_hidden_layers = len(kept)
    for name in ("layer_types", "sliding_window_pattern_list"):
        value = getattr(cfg, name, None)
        if isinstance(value, (list, tuple)) and len(value) == len(layers):
            setattr(cfg, name, [value[i] for i in kept])


# --------------------------------------------------------------------------- the whole job


def prune_model(
    model,
    calib: Optional[CalibrationSet],
    *,
    mlp_ratio: float = 0.0,
    head_ratio: float = 0.0,
    num_layers: int = 0,
    method: str = "activation",
    pad_id: int = 0,
    batch_size: int = 4,
    progress: bool = True,
) -> dict:
    """Prune ``model`` in place; returns what was done and the calibration loss before.

    ``calib`` may be None only for ``method="weight"`` with ``num_layers=0``.
    """
    problems = prune_problems(method, mlp_ratio, head_ratio)
    if problems:
        raise PruneError("; ".join(problems))
    layers = decoder_layers(model)
    n_layers = len(layers)
    if not 0 <= num_layers < n_layers:
        raise PruneError(
            f"--prune.num_layers: must be in [0, {n_layers - 1}] (the model has {n_layers} layers), got {num_layers}"
        )
    shape = attention_shape(model)
    intermediate = layers[0].mlp.down_proj.in_features
    if any(layer.mlp.down_proj.in_features != intermediate for layer in layers):
        raise PruneError("the layers have MLPs of different sizes; only uniform models can be pruned")
    need_data = num_layers > 0 or (method == "activation" and (mlp_ratio > 0 or head_ratio > 0))
    if need_data and calib is None:
        raise ValueError("calibration data is needed for the activation method and for layer removal")

    report: dict = {"method": method, "mlp_ratio": mlp_ratio, "head_ratio": head_ratio, "num_layers": num_layers}
    if calib is not None:
        stats = calibration_pass(
            model,
            calib,
            pad_id=pad_id,
            batch_size=batch_size,
            progress=progress,
            mlp=method == "activation" and mlp_ratio > 0,
            heads=method == "activation" and head_ratio > 0,
            layers=num_layers > 0,
            desc="calibration (original)",
        )
        report["loss_before"] = stats["loss"]
        report["response_loss_before"] = stats["response_loss"]
        report["calibration_tokens"] = stats["tokens"]
    else:
        stats = {}

    # Scores on the original model (before any surgery).
    mlp_keep = head_keep = None
    if mlp_ratio > 0:
        n_keep = kept_count(intermediate, mlp_ratio)
        scores = mlp_channel_scores(model, method, stats.get("mlp_act"))
        mlp_keep = [top_indices(s, n_keep) for s in scores]
        report["intermediate_size"] = [intermediate, n_keep]
    if head_ratio > 0:
        n_keep = kept_count(shape["kv_heads"], head_ratio)
        scores = head_group_scores(model, method, stats.get("head_act"))
        head_keep = [top_indices(s, n_keep) for s in scores]
        report["num_key_value_heads"] = [shape["kv_heads"], n_keep]
        report["num_attention_heads"] = [shape["heads"], n_keep * shape["group"]]
    dropped: List[int] = []
    if num_layers > 0:
        cos = stats["layer_cos"]
        dropped = sorted(sorted(range(n_layers), key=lambda i: (-cos[i], i))[:num_layers])
        report["layer_cosine"] = [round(c, 6) for c in cos]
        report["dropped_layers"] = dropped

    if head_keep is not None:
        prune_kv_groups(model, head_keep)
        report["kept_kv_groups"] = [k.tolist() for k in head_keep]
    if mlp_keep is not None:
        prune_mlp_channels(model, mlp_keep)
    if dropped:
        drop_layers(model, dropped)
    return report


def response_keys_for(data_cfg) -> List[str]:
    """Row keys read as the calibration response: --data.output_key, then 'response' (generate's key)."""
    return list(dict.fromkeys([data_cfg.output_key, "response"]))


def prune(cfg, *, progress: bool = True, batch_size: Optional[int] = None) -> dict:
    """Load ``--model.model_name_or_path``, prune it as ``--prune.*`` says, save to ``--prune.output_dir``.

    Writes a normal HF folder (safetensors, config, generation config, tokenizer with
    chat template) and ``prune_report.json`` (parameters and calibration loss before
    and after, what was removed); returns the report. Calibration rows are the first
    ``--prune.calibration_samples`` rows of ``--data.dataset``; the forward passes use
    ``--train.micro_batch_size`` rows at a time unless ``batch_size`` is given.
    """
    pc, data = cfg.prune, cfg.data
    model_path = cfg.model.model_name_or_path
    start = time.time()
    # Cheap checks first: output folder, tokenizer, data; then the model.
    check_output_dir(pc.output_dir, "--prune.output_dir")
    tokenizer = data_tokenizer(model_path, data)
    max_rows = pc.calibration_samples if data.max_samples < 0 else min(pc.calibration_samples, data.max_samples)
    rows = load_rows(data.dataset, data.dataset_split, max_rows)
    calib = build_calibration(rows, tokenizer, data, response_keys=response_keys_for(data))

    device = pick_device()
    try:
        # Measure in fp32; save in the dtype the model was stored in.
        save_dtype = getattr(AutoConfig.from_pretrained(model_path), "dtype", None) or torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    except OSError as e:
        raise UserError(f"--model.model_name_or_path: cannot load a model from {model_path!r}: {e}") from e
    if isinstance(save_dtype, str):
        save_dtype = getattr(torch, save_dtype, torch.float32)
    model.to(device)
    params_before = count_params(model)
    bs = batch_size or max(1, cfg.train.micro_batch_size)
    pad_id = pad_token_id(tokenizer)

    try:
        decoder_layers(model)
        attention_shape(model)
    except PruneError as e:
        raise PruneError(f"--model.model_name_or_path {model_path}: {e}") from None
    report = prune_model(
        model,
        calib,
        mlp_ratio=pc.mlp_ratio,
        head_ratio=pc.head_ratio,
        num_layers=pc.num_layers,
        method=pc.method,
        pad_id=pad_id,
        batch_size=bs,
        progress=progress,
    )
    params_after = count_params(model)

    tmp = make_temp_dir(pc.output_dir)
    try:
        model.to(save_dtype)
        model.config.dtype = save_dtype
        model.save_pretrained(tmp)
        # The model's own tokenizer files (not the calibration-time template override / pad choice).
        AutoTokenizer.from_pretrained(model_path).save_pretrained(tmp)
        del model
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(device)
        if count_params(reloaded) != params_after:
            raise RuntimeError(f"the saved model has {count_params(reloaded)} parameters, expected {params_after}")
        after = calibration_pass(
            reloaded, calib, pad_id=pad_id, batch_size=bs, progress=progress, desc="calibration (pruned)"
        )
        del reloaded
        report.update(
            {
                "model": model_path,
                "output_dir": os.path.abspath(pc.output_dir),
                "calibration_dataset": data.dataset,
                "calibration_rows": len(calib.sequences),
                "calibration_rows_with_response": calib.with_response,
                "params_before": params_before,
                "params_after": params_after,
                "params_ratio": params_after / params_before,
                "loss_after": after["loss"],
                "response_loss_after": after["response_loss"],
                "seconds": round(time.time() - start, 1),
            }
        )
        with open(os.path.join(tmp, "prune_report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        move_into_place(tmp, pc.output_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return report
