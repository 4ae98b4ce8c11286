"""Actor: an HF causal LM that returns log-probs of response tokens.

``loss_mask`` is aligned with ``input_ids`` (True where the token is a response token);
the log-prob of token t is read from the logits at position t-1.
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from openrlhf.utils.errors import UserError, has_package, require_package


class _SelectedLogps(torch.autograd.Function):
    """log softmax(logits)[label] for rows of ``logits`` [N, V], in fp32, a chunk of rows at a time.

    Neither direction holds an fp32 copy of the whole [N, V] logits (the backward recomputes the
    softmax chunk by chunk into the gradient), which is the memory peak of a step for large
    vocabularies (Qwen: 152k) and long rows."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, logits.shape[0], chunk):
            lg = logits[s : s + chunk].float()
            out[s : s + chunk] = lg.gather(-1, labels[s : s + chunk, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1)
        ctx.save_for_backward(logits, labels)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, labels = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk):
            g_out = grad_out[s : s + ctx.chunk, None].float()
            g = torch.softmax(logits[s : s + ctx.chunk].float(), dim=-1).mul_(-g_out)
            g.scatter_add_(-1, labels[s : s + ctx.chunk, None], g_out)
            grad[s : s + ctx.chunk] = g.to(grad.dtype)
        return grad, None, None


# fp32 elements of one chunk's temporaries (64 MB): 110 rows of a 152k vocabulary, 341 of a 49k one.
CHUNK_ELEMENTS = 1 << 24


def selected_logps(logits: torch.Tensor, labels: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """log p(label) per row of ``logits`` [N, V] (fp32 [N]); see :class:`_SelectedLogps`. ``chunk``
    rows at a time (default: as many as fit in :data:`CHUNK_ELEMENTS`)."""
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    return _SelectedLogps.apply(logits, labels, chunk)


def token_logps_from_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t] | < t) for t >= 1 from full logits [B, T, V], shape [B, T-1], fp32."""
    b, t, v = logits.shape
    flat = selected_logps(logits[:, :-1].reshape(-1, v), input_ids[:, 1:].reshape(-1))
    return flat.view(b, t - 1)


def sequence_sums(
    token_logps: torch.Tensor, seq_index: Optional[torch.Tensor] = None, n_seqs: Optional[int] = None
) -> torch.Tensor:
    """Per-sequence sums of token log-probs [B, T-1]: the row sums of a padded batch, or, for a
    packed batch (one row, ``seq_index`` [1, T]), the sums of each of its ``n_seqs`` sequences.

    Accumulated in float64, so both layouts round the same sum the same way (in fp32 a sum of a
    few hundred log-probs of magnitude ~300 would differ by its last bit, ~3e-5, between them)."""
    values = token_logps.double()
    if seq_index is None:
        return values.sum(-1).to(token_logps.dtype)
    out = torch.zeros(n_seqs, dtype=torch.float64, device=token_logps.device)
    return out.index_add(0, seq_index[:, 1:].reshape(-1), values.reshape(-1)).to(token_logps.dtype)


def _varlen_attention(model: nn.Module) -> bool:
    """Whether the model's attention runs packed sequences in one call (flash-attention's varlen kernel)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", "") or "").startswith("flash_attention")


def _checkpointing(model: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on: its recomputation does not mix with several
    forwards of the same weights in one step under ZeRO-3 (each would reduce the gradients anew)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        value = getattr(model, name, None)
        if value is not None:
            return bool(value)
    return False


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """The flash-attention varlen arguments of a packed row (``position_ids`` [1, T] restarting at 0 per
    sequence): ``cu_seq_lens_q/k`` (int32 sequence boundaries, [n + 1]) and ``max_length_q/k`` (the
    longest sequence, a Python int). Passed to the model's forward, they reach every attention layer, so
    transformers does not derive them again from ``position_ids`` in each layer, and the length is an int
    (transformers' own is a tensor that flash-attn reads back to the host in every layer: one host sync
    per layer and forward; here one per batch)."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    longest = int(cu.diff().max())
    return dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)


def _zero3_partitioned(model: nn.Module) -> bool:
    """Whether the weights are ZeRO-3 partitioned: every forward then gathers each layer's weights
    collectively, so every rank must run the same forwards. A packed row runs as one forward then
    (ranks' packed rows hold different numbers of sequences with dynamic batches: one forward per
    sequence left the ranks' collectives unmatched, a hang)."""
    first = next(model.parameters(), None)
    return first is not None and hasattr(first, "ds_id")


class _Outputs:
    """The parts of a model output that :func:`masked_token_logps` uses."""

    def __init__(self, logits: torch.Tensor, aux_loss: Optional[torch.Tensor]):
        self.logits, self.aux_loss = logits, aux_loss


@contextmanager
def kept_rows_only(model: nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """While active, the model's output head sees only the hidden states at the ``keep`` positions
    (``keep`` [B, T] bool): a forward returns logits ``[1, N, V]`` for the N kept positions in
    row-major order instead of ``[B, T, V]``.

    Done with a forward pre-hook on the output embeddings rather than with ``logits_to_keep``, which
    transformers accepts as a tensor only from 5.21 on, and which forwards that replace the model's
    own (Liger's) slice with an expression a boolean mask breaks. Whatever runs after the head in the
    model's forward (logit soft-capping, scaling, the MoE router loss) runs unchanged."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None): "
            "not a causal LM with an output head"
        )

    def select(module: nn.Module, args: tuple):
        hidden = args[0]
        if tuple(hidden.shape[:2]) != tuple(keep.shape):
            raise RuntimeError(
                f"the output head of {type(model).__name__} got hidden states of shape "
                f"{tuple(hidden.shape)}, expected [B, T, H] with [B, T] = {tuple(keep.shape)}"
            )
        return (hidden[keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def _per_sequence(
    model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor
) -> _Outputs:
    """A packed row (``position_ids`` restarting at 0 per sequence) run one sequence at a time: no padding
    and no [L x L] block-diagonal mask (sdpa / eager would compute it whole, a cost quadratic in the
    packed length), so each sequence costs what it would alone. Returns the kept logits of every
    sequence in order, ``[N, V]``, and the token-weighted mean of the MoE router losses, if any."""
    starts = (position_ids[0] == 0).nonzero().flatten().tolist() + [position_ids.shape[1]]
    parts, aux, weights = [], [], []
    for s, e in zip(starts[:-1], starts[1:]):
        with kept_rows_only(model, keep[:, s:e]):
            out = model(input_ids=input_ids[:, s:e], use_cache=False)
        parts.append(out.logits.reshape(-1, out.logits.shape[-1]))
        if getattr(out, "aux_loss", None) is not None:
            aux.append(out.aux_loss)
            weights.append(e - s)
    aux_loss = sum(a * w for a, w in zip(aux, weights)) / sum(weights) if aux else None
    return _Outputs(torch.cat(parts), aux_loss)


PACKED_FORWARDS = ("auto", "one_call", "per_sequence")


def masked_token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    loss_mask: torch.Tensor,
    response_logits: Optional[slice] = None,
    position_ids: Optional[torch.Tensor] = None,
    keep_output: bool = False,
    packed_forward: str = "auto",
):
    """(token_logps [B, T-1] zeroed outside the response, response mask [B, T-1]).

    Only the logits that predict response tokens are computed (:func:`kept_rows_only`), and their
    log-probs are taken a chunk at a time (:func:`selected_logps`). A packed batch
    (``attention_mask`` None, ``position_ids`` restarting per sequence) runs in one call with
    flash-attention (varlen, its sequence boundaries computed once: :func:`varlen_kwargs`), on a GPU,
    with activation checkpointing on or with ZeRO-3 partitioned weights (a block-diagonal mask from the
    position ids for sdpa / eager), else, on a CPU, one sequence at a time (:func:`_per_sequence`,
    faster there); both without padding. ``packed_forward`` ("one_call" / "per_sequence") forces the
    sdpa / eager layout where nothing above requires one call (benchmarks/packed_forward.py).
    ``response_logits`` (a slice of rows of a padded batch, e.g. ``slice(0, B)``): also return the
    logits that predict the response tokens of those rows, ``[N, V]`` in row-major order (for a
    token-level KL), as a third item."""
    mask = loss_mask[:, 1:].bool()
    keep = torch.zeros_like(loss_mask, dtype=torch.bool)
    keep[:, :-1] = mask
    if packed_forward not in PACKED_FORWARDS:
        raise ValueError(f"packed_forward must be one of {PACKED_FORWARDS}, got {packed_forward!r}")
    # auto: one sequence at a time on a CPU (sdpa / eager: 1.17x the padded layout's real tokens/s, the one
    # call 1.08x), one call on an accelerator (where one small forward per sequence was 0.24x padded and
    # the one call on par with it); docs/performance.md, benchmarks/packed_forward.py.
    on_cpu = input_ids.device.type == "cpu"
    one_call = (
        packed_forward == "one_call"
        or (packed_forward == "auto" and not on_cpu)
        or _varlen_attention(model)
        or _checkpointing(model)
        or _zero3_partitioned(model)
    )
    if position_ids is not None and attention_mask is None and not one_call:
        out = _per_sequence(model, input_ids, position_ids, keep)
        logits = out.logits
    else:
        packed = position_ids is not None and attention_mask is None and _varlen_attention(model)
        extra = varlen_kwargs(position_ids) if packed else {}
        with kept_rows_only(model, keep):
            out = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **extra
            )
        logits = out.logits.reshape(-1, out.logits.shape[-1])
    picked = selected_logps(logits, input_ids[:, 1:][mask])
    token_logps = picked.new_zeros(mask.shape).masked_scatter(mask, picked)
    result = (token_logps, mask)
    if response_logits is not None:
        counts = torch.cat([mask.new_zeros(1, dtype=torch.long), mask.sum(-1).cumsum(0)]).tolist()
        rows = range(mask.shape[0])[response_logits]
        start, stop = (counts[rows.start], counts[rows.stop]) if len(rows) else (0, 0)
        result += (logits[start:stop],)
    return result + (out,) if keep_output else result


def apply_lora(model: nn.Module, lora, gradient_checkpointing: bool = False) -> nn.Module:
    """LoRA adapters (peft) on ``lora.target_modules`` of a causal LM (``all-linear``: every linear
    layer but the output head); only the adapters train."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = list(lora.target_modules)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        bias="none",
    )
    if gradient_checkpointing:  # the checkpointed blocks need an input that requires grad
        model.enable_input_require_grads()
    return get_peft_model(model, config)


_MISSING = object()


@contextmanager
def patches_kept_to(model: nn.Module, prefixes=("transformers.", "torch.nn")) -> Iterator[None]:
    """While active, a monkey-patch may rebind the top-level names of the imported modules whose names start
    with one of ``prefixes`` (a class, a function) and the attributes of the classes defined in transformers'
    modeling modules (a class's ``forward``); on exit every one of them gets back the object it had on entry,
    so models built afterwards are untouched. A function a class got inside the block is first bound to each
    of ``model``'s modules of that class that has none of its own, so ``model`` keeps it. Names added to a
    module inside the block (a submodule imported, a lazy attribute resolved) and modules first imported
    inside it are left as they are."""
    modules = {n: m for n, m in list(sys.modules.items()) if m is not None and n.startswith(prefixes)}
    names = {n: dict(vars(m)) for n, m in modules.items()}
    classes = {
        c: dict(vars(c))
        for n, m in modules.items()
        if n.startswith("transformers.models.")
        for c in list(vars(m).values())
        if isinstance(c, type) and c.__module__ == n
    }
    try:
        yield
    finally:
        for n, before in names.items():
            namespace = vars(sys.modules[n])
            for key, value in before.items():
                if namespace.get(key, _MISSING) is not value:
                    namespace[key] = value
        for c, before in classes.items():
            for key, value in list(vars(c).items()):
                if before.get(key, _MISSING) is value:
                    continue
                if isinstance(value, types.FunctionType):
                    for m in model.modules():
                        if isinstance(m, c) and key not in vars(m):
                            vars(m)[key] = types.MethodType(value, m)
                if key in before:
                    setattr(c, key, before[key])
                else:
                    delattr(c, key)


def apply_liger_kernels(model: nn.Module) -> None:
    """Liger's kernels (RMSNorm, SwiGLU MLP, its forward) on this model instance, and on nothing else.

    liger-kernel's patch of an instance also rebinds names in transformers' modeling module of the model's
    family (its RMSNorm and MLP classes, its rotary function; for some families a class's forward, torch's
    cross_entropy or LayerNorm), so every model of that family built afterwards (a reference or a teacher)
    would run Liger's kernels too, and its log-probs would differ from the same model's computed by
    score_logps or by a Ray worker, which never patch. All of that is put back once the instance is patched
    (:func:`patches_kept_to`): the instance keeps Liger's RMSNorm and MLP forwards and its forward (bound to
    its modules), frozen models stay transformers' own. The rotary embedding, a module-level function looked
    up at every call, cannot be patched for one instance and stays transformers' (as does torch's
    cross_entropy, which the log-probs never call). A model type liger-kernel has no patch for is a
    UserError."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise UserError(
            f"--ds.use_liger_kernel: liger-kernel has no kernels for model type {model_type!r} "
            f"({len(MODEL_TYPE_TO_APPLY_LIGER_FN)} types in its MODEL_TYPE_TO_APPLY_LIGER_FN); leave the flag off"
        )
    with patches_kept_to(model):
        _apply_liger_kernel_to_instance(model=model, rope=False, cross_entropy=False)


def resolve_attn_implementation(name: str, dtype: Optional[torch.dtype] = None) -> str:
    """``auto``: flash_attention_2 for a bf16 / fp16 model (``dtype``) on a CUDA machine where flash-attn is
    installed, else sdpa (flash-attn refuses fp32 at the first forward; a CPU runs sdpa). Any other name
    is checked for its package and returned (validation refuses flash with fp32 before this)."""
    if name == "auto":
        half = dtype in (torch.bfloat16, torch.float16)
        return "flash_attention_2" if half and torch.cuda.is_available() and has_package("flash_attn") else "sdpa"
    if name == "flash_attention_2":
        require_package("flash_attn", "--ds.attn_implementation flash_attention_2 (use sdpa without it)")
    if name == "flash_attention_3":
        require_package("flash_attn_interface", "--ds.attn_implementation flash_attention_3")
    return name


class Actor(nn.Module):
    """Wraps an HF causal LM (``self.model``; a peft model with LoRA adapters when asked).

    ``aux_loss_coef`` > 0 (MoE models): the router balancing loss of the last forward is kept in
    ``last_aux_loss`` for the trainer to add."""

    def __init__(self, model: nn.Module, aux_loss_coef: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.aux_loss_coef = aux_loss_coef
        self.last_aux_loss: Optional[torch.Tensor] = None

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "sdpa",
        experts_implementation: str = "",
        gradient_checkpointing: bool = False,
        gradient_checkpointing_reentrant: bool = False,
        aux_loss_coef: float = 0.0,
        lora=None,
        load_in_4bit: bool = False,
        use_liger_kernel: bool = False,
        what: str = "--model.model_name_or_path",
    ) -> "Actor":
        """``lora``: a --ds.lora.* section (rank > 0: LoRA adapters through peft, the base frozen)."""
        kwargs = dict(dtype=dtype, attn_implementation=resolve_attn_implementation(attn_implementation, dtype))
        if experts_implementation:  # a MoE model's expert kernels (empty: transformers' default)
            kwargs["experts_implementation"] = experts_implementation
        if load_in_4bit:
            if not torch.cuda.is_available():
                raise UserError("--ds.load_in_4bit: 4-bit weights (bitsandbytes) need a CUDA GPU")
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{what}: cannot load a model from {path!r}: {first}") from None
        if aux_loss_coef > 0:
            if not hasattr(model.config, "output_router_logits"):
                raise UserError(
                    f"--model.aux_loss_coef: {path} is not a mixture-of-experts model with a router "
                    "balancing loss; leave it at 0"
                )
            model.config.output_router_logits = True
        if use_liger_kernel:
            if not torch.cuda.is_available():
                raise UserError("--ds.use_liger_kernel: Liger kernels (Triton) need a CUDA GPU")
            apply_liger_kernels(model)
        if gradient_checkpointing:
            kwargs = {"use_reentrant": gradient_checkpointing_reentrant}
            if hasattr(model, "activation_checkpointing_enable"):  # its name since transformers 5.x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            model.config.use_cache = False
        if lora is not None and lora.rank > 0:
            model = apply_lora(model, lora, gradient_checkpointing)
        return cls(model, aux_loss_coef)

    def take_aux_loss(self) -> Optional[torch.Tensor]:
        """``aux_loss_coef`` x the router balancing loss of the last forward with gradients (then
        forgotten), or None."""
        aux, self.last_aux_loss = self.last_aux_loss, None
        return None if aux is None else self.aux_loss_coef * aux

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        loss_mask: torch.Tensor,
        response_logits: Optional[slice] = None,
        position_ids: Optional[torch.Tensor] = None,
    ):
        """(masked token log-probs [B, T-1], response mask [B, T-1][, response logits [N, V]]);
        see :func:`masked_token_logps`."""
        if self.aux_loss_coef > 0 and torch.is_grad_enabled():
            out = masked_token_logps(
                self.model, input_ids, attention_mask, loss_mask, response_logits, position_ids, keep_output=True
            )
            self.last_aux_loss = out[-1].aux_loss
            return out[:-1]
        return masked_token_logps(self.model, input_ids, attention_mask, loss_mask, response_logits, position_ids)

    # HF-style helpers used when saving
    @property
    def config(self):
        return self.model.config

    def gradient_checkpointing_enable(self, **kw) -> None:
        self.model.gradient_checkpointing_enable(**kw)
