"""DeepSpeed strategy: distributed setup, ZeRO 0-3 engines, checkpoints and HF export.

Typical use (a trainer's ``main``)::

    strategy = DeepspeedStrategy(cfg.ds, cfg.train, cfg.max_norm, cfg.adam)
    strategy.setup_distributed()
    with strategy.model_init_context(for_training=True):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=strategy.torch_dtype)
    with strategy.model_init_context(for_training=False, offload=cfg.ref.offload):
        ref = AutoModelForCausalLM.from_pretrained(ref_path, dtype=strategy.torch_dtype)
    optim = strategy.create_optimizer(model)
    sched = strategy.create_scheduler(optim, cfg.lr_scheduler, cfg.lr_warmup_ratio, total_steps)
    engine = strategy.prepare_train(model, optim, sched)
    ref = strategy.prepare_eval(ref, offload=cfg.ref.offload)
    state = strategy.load_ckpt(engine, cfg.checkpoint_dir) if cfg.ckpt.load_enable else None
    ...  loss = ...; strategy.backward(loss, engine); strategy.optimizer_step(engine)
    strategy.save_ckpt(engine, cfg.checkpoint_dir, step, {"consumed_samples": n}, cfg.ckpt.max_num)
    strategy.save_hf_model(engine, tokenizer, cfg.ckpt.output_dir)
    strategy.finish()
    # CLI entry points only, as their very last statement:
    exit_cleanly()

Every method that touches parameters or files of a checkpoint is COLLECTIVE: all ranks
call it (``save_ckpt``, ``load_ckpt``, ``save_hf_model``, ``prepare_*``, the
``from_pretrained`` inside ``model_init_context`` under ZeRO-3).
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import random
import shutil
import time
from typing import Any, Dict, Optional

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
from transformers import enable_full_determinism, get_scheduler
from transformers.integrations import deepspeed as hf_ds

from openrlhf.utils.deepspeed import ckpt_io
from openrlhf.utils.deepspeed.ds_config import batch_problems, eval_ds_config, scheduler_problems, train_ds_config
from openrlhf.utils.deepspeed.sampler import ResumableDistributedSampler
from openrlhf.utils.distributed import destroy_process_group, exit_cleanly, find_free_port, release_shm_allreduce_buffer
from openrlhf.utils.dtypes import torch_dtype
from openrlhf.utils.errors import UserError
from openrlhf.utils.lora import merge_lora_state_dict

__all__ = ["DeepspeedStrategy", "exit_cleanly", "unwrap_model"]

_CLIENT_KEY = "openrlhf_client_state"


def unwrap_model(model: Any) -> nn.Module:
    """The HF module inside a DeepSpeed engine and/or an :class:`~openrlhf.models.actor.Actor`."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    # An Actor keeps its HF model under ``.model``.
    if not hasattr(model, "save_pretrained") and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model
    return model


def _wraps_hf_model(module: nn.Module) -> bool:
    """An :class:`~openrlhf.models.actor.Actor`-like wrapper: no ``save_pretrained`` of its own, the HF
    model under ``.model``."""
    return not hasattr(module, "save_pretrained") and isinstance(getattr(module, "model", None), nn.Module)


def _hf_names_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook of a wrapper: its keys as the HF model's own (``model.`` of the wrapper
    dropped), the names OpenRLHF's checkpoints hold (its DeepSpeed engine wraps the HF model)."""
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _load_module_either_naming(src: dict, dst: nn.Module) -> None:
    """DeepSpeed ``custom_load_fn``: a checkpoint's module weights under the HF model's names (ours and
    OpenRLHF's) or under the wrapper's (``model.``-prefixed, checkpoints of earlier versions), strictly."""
    if _wraps_hf_model(dst) and set(src) == set(dst.model.state_dict(keep_vars=True)):
        dst.model.load_state_dict(src, strict=True)
    else:
        dst.load_state_dict(src, strict=True)


def _is_zero3_param(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


class _HfZero3Init:
    """Context manager: while active, transformers' ``from_pretrained`` builds models with
    ``deepspeed.zero.Init`` (weights partitioned across ranks as they load). The previous
    transformers DeepSpeed config (if any) is restored on exit, so nothing global outlives
    the ``with`` block."""

    def __init__(self, config: Dict[str, Any]):
        self.config = config
        self._obj = None
        self._previous = None

    def __enter__(self):
        self._previous = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
        # HfDeepSpeedConfig registers a weakref to itself; we hold the strong reference.
        self._obj = hf_ds.HfDeepSpeedConfig(self.config)
        return self

    def __exit__(self, *exc):
        if hasattr(hf_ds, "_hf_deepspeed_config_weak_ref"):
            hf_ds._hf_deepspeed_config_weak_ref = self._previous
        else:  # pragma: no cover - older/newer transformers without the private global
            hf_ds.unset_hf_deepspeed_config()
        self._obj = None
        return False


class DeepspeedStrategy:
    """Owns everything distributed: process group, DeepSpeed engines, checkpoints, export.

    Settings come only from the constructor arguments (no hidden globals)."""

    def __init__(self, ds, train, max_norm: float = 1.0, adam=None, training: bool = True):
        """``ds``: the --ds.* section; ``train``: the --train.* section (micro_batch_size and
        seed; batch_size too when training); ``max_norm`` and ``adam`` (--adam.*) are used
        when training. ``training=False`` (scoring, generation): no optimizer, so the global
        batch size is not checked against the process count."""
        problems = ds.problems(training=training)
        if problems:
            raise UserError("invalid DeepSpeed settings:\n  " + "\n  ".join(problems))
        self.ds = ds
        self.train = train
        self.max_norm = float(max_norm)
        self.adam = adam
        self.training = training
        self.accumulated_gradient: Optional[int] = None
        self._world_size = 1
        self._rank = 0
        self._local_rank = 0
        self._device = torch.device("cpu")
        self._env_we_set: Dict[str, str] = {}

    # ----- distributed setup -------------------------------------------------------------

    def setup_distributed(self) -> None:
        """Join (or create) the process group, pick the device, seed, derive grad accumulation.

        - Under ``deepspeed`` / ``torchrun``: uses their RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*.
        - As a plain process: creates a 1-process group on 127.0.0.1 and a free port (it
          sets the missing env vars, which DeepSpeed engines need; ``finish()`` removes them).
        - Already initialised (a second strategy in the same process): reuses the group.
        Backend: nccl when CUDA is available, gloo otherwise.
        """
        if not (dist.is_available() and dist.is_initialized()):
            if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
                defaults = {
                    "RANK": "0",
                    "WORLD_SIZE": "1",
                    "LOCAL_RANK": "0",
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(find_free_port()),
                }
                for k, v in defaults.items():
                    if k not in os.environ:
                        os.environ[k] = v
                        self._env_we_set[k] = v
            if "LOCAL_RANK" not in os.environ:  # e.g. processes started by Ray
                os.environ["LOCAL_RANK"] = self._env_we_set["LOCAL_RANK"] = "0"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            self._device = torch.device("cuda", local_rank)
        else:
            self._device = torch.device("cpu")
        if os.environ.get("WORLD_SIZE") == "1" and not dist.is_initialized():
            # A plain single process: an in-memory store, so no TCP port can be taken
            # by another process between choosing it and binding it.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        _warn_stale_op_build_locks()
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)

        self._world_size = dist.get_world_size()
        self._rank = dist.get_rank()
        if not torch.cuda.is_available():
            dist.barrier()  # every rank has mapped its peers' shared-memory segments
            release_shm_allreduce_buffer(self._rank)
        self._local_rank = local_rank
        self._seed(self.train.seed)
        if getattr(self.train, "full_determinism_enable", False):
            enable_full_determinism(self.train.seed)

        if not self.training:
            self.accumulated_gradient = 1
            return
        problems = batch_problems(self.train, self._world_size, "processes")
        if problems:
            raise UserError("; ".join(problems))
        if getattr(self.train, "dynamic_batch_enable", False):
            # Micro-batches are cut by tokens; the trainer marks the last one of each step.
            self.accumulated_gradient = 1
        else:
            self.accumulated_gradient = self.train.batch_size // (self.train.micro_batch_size * self._world_size)

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds every CUDA device

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def local_rank(self) -> int:
        return self._local_rank

    @property
    def device(self) -> torch.device:
        return self._device

    def is_rank_0(self) -> bool:
        return self._rank == 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.ds.param_dtype)

    def _require_setup(self) -> int:
        if self.accumulated_gradient is None:
            raise RuntimeError("call strategy.setup_distributed() first")
        return self.accumulated_gradient

    # ----- DeepSpeed configs -------------------------------------------------------------

    def train_ds_config(self) -> Dict[str, Any]:
        return train_ds_config(
            self.ds,
            max_norm=self.max_norm,
            micro_batch_size=self.train.micro_batch_size,
            accumulated_gradient=self._require_setup(),
            world_size=self._world_size,
        )

    def eval_ds_config(self, offload: bool = False) -> Dict[str, Any]:
        return eval_ds_config(
            self.ds,
            offload=offload,
            micro_batch_size=self.train.micro_batch_size,
            accumulated_gradient=self._require_setup(),
            world_size=self._world_size,
        )

    # ----- models ------------------------------------------------------------------------

    def model_init_context(self, for_training: bool, offload: bool = False):
        """Wrap ``from_pretrained`` in this. Under ZeRO-3 the weights are partitioned across
        ranks while loading (the whole model never materialises on one rank); ``offload``
        (frozen models only) keeps the shards in CPU memory. For stages 0-2 it does nothing.

            with strategy.model_init_context(for_training=False, offload=True):
                teacher = AutoModelForCausalLM.from_pretrained(path, dtype=strategy.torch_dtype)

        All ranks must enter it and load the same model (loading is collective under ZeRO-3).
        """
        if self.ds.zero_stage != 3:
            return contextlib.nullcontext()
        cfg = self.train_ds_config() if for_training else self.eval_ds_config(offload=offload)
        return _HfZero3Init(cfg)

    def create_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW over trainable params; weight decay only on matrices (not biases / norms).

        ``ds.adam_offload`` -> DeepSpeedCPUAdam; else on GPU FusedAdam (torch AdamW when it
        cannot be built); on CPU torch AdamW."""
        decay, no_decay = [], []
        for p in unwrap_model(model).parameters():
            if not p.requires_grad:
                continue
            ndim = len(getattr(p, "ds_shape", p.shape))
            (decay if ndim >= 2 else no_decay).append(p)
        groups = [g for g in (
            {"params": decay, "weight_decay": self.adam.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ) if g["params"]]
        if not groups:
            raise ValueError("the model has no trainable parameters")
        kw = dict(lr=self.adam.lr, betas=tuple(self.adam.betas), eps=getattr(self.adam, "eps", 1e-8))
        if self.ds.adam_offload:
            return DeepSpeedCPUAdam(groups, adamw_mode=True, **kw)
        if torch.cuda.is_available():
            try:
                return FusedAdam(groups, adam_w_mode=True, **kw)
            except Exception:  # op cannot be built here (no nvcc, ...)
                return torch.optim.AdamW(groups, **kw)
        return torch.optim.AdamW(groups, **kw)

    def create_scheduler(self, optimizer, name: str, warmup_ratio: float, total_steps: int,
                         min_lr_ratio: float = 0.1):
        """An LR scheduler stepped once per optimizer step (DeepSpeed steps it).

        Any name of transformers' ``get_scheduler`` that steps without a metric. Warmup steps =
        ceil(warmup_ratio * total_steps). cosine_with_min_lr and cosine_warmup_with_min_lr decay to
        min_lr_ratio x lr (OpenRLHF's special case); warmup_stable_decay decays to min_lr_ratio x lr over
        the last ceil(10%) of the steps (transformers needs a decay length; OpenRLHF gives none);
        cosine and linear decay to 0."""
        problems = scheduler_problems(name, warmup_ratio, min_lr_ratio)
        if problems:
            raise UserError("; ".join(problems))
        if total_steps < 1:
            raise ValueError(f"total optimizer steps must be >= 1 (got {total_steps}); is the dataset empty?")
        warmup = math.ceil(warmup_ratio * total_steps)
        kwargs = None
        if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
            kwargs = {"min_lr_rate": min_lr_ratio}
        elif name == "warmup_stable_decay":
            decay = max(1, min(math.ceil(0.1 * total_steps), total_steps - warmup))
            kwargs = {"num_decay_steps": decay, "min_lr_ratio": min_lr_ratio}
        if name == "constant":
            return get_scheduler(name, optimizer)
        return get_scheduler(
            name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
            scheduler_specific_kwargs=kwargs,
        )

    def prepare_train(self, model: nn.Module, optimizer, scheduler):
        """Wrap the trained model in a DeepSpeed engine (ZeRO stage, dtype, clipping, grad
        accumulation from the config). Returns the engine; DeepSpeed steps ``scheduler``."""
        if _wraps_hf_model(model) and not getattr(model, "_hf_names_hooked", False):
            model.register_state_dict_post_hook(_hf_names_hook)  # once: a second pass would strip HF's own "model."
            model._hf_names_hooked = True
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=self.train_ds_config(),
            dist_init_required=False,
        )
        return engine

    def prepare_eval(self, model: nn.Module, offload: bool = False):
        """A frozen model (reference / teacher): requires_grad False, eval mode.

        ZeRO-3: a DeepSpeed inference engine that shards the params (``offload``: shards
        in CPU memory, gathered per layer on use). Stages 0-2: the plain module cast to the
        training dtype; on the device, or, with ``offload`` on a GPU machine, kept in pinned CPU
        memory and streamed to the GPU block by block for each forward call, the next block's copy
        overlapping the current block's compute (:class:`FrozenOffload`). On CPU ``offload`` changes
        nothing. Call it like the module (``model(input_ids, ...)``);
        use ``unwrap_model`` for ``generate``."""
        for p in model.parameters():
            p.requires_grad_(False)
        if self.ds.zero_stage == 3:
            engine, _, _, _ = deepspeed.initialize(
                model=model, config=self.eval_ds_config(offload=offload), dist_init_required=False
            )
            engine.eval()
            return engine
        model = model.to(dtype=self.torch_dtype)
        if offload and self._device.type != "cpu":
            model.to("cpu")
            _attach_offload_hooks(model, self._device)
        else:
            model.to(self._device)
        model.eval()
        return model

    # ----- training step -----------------------------------------------------------------

    def backward(self, loss: torch.Tensor, engine, boundary: Optional[bool] = None) -> None:
        """Backward through the engine (it scales by 1 / gradient accumulation steps).

        ``boundary`` (dynamic batches: a variable number of micro-batches per step, the loss
        weighted by the caller): whether this is the step's last micro-batch; DeepSpeed then
        neither scales the loss nor counts micro-steps, and ``optimizer_step`` is called once."""
        if boundary is None:
            engine.backward(loss)
            return
        engine.set_gradient_accumulation_boundary(boundary)
        engine.backward(loss, scale_wrt_gas=False)

    def optimizer_step(self, engine) -> None:
        """Optimizer + scheduler step at accumulation boundaries (a no-op in between).

        At ZeRO stage 0 DeepSpeed keeps no gradient norm (``get_global_grad_norm()`` is None),
        so the norm of the full, already averaged gradients is measured here before the step
        (the same pre-clipping quantity the ZeRO optimizers report); see :meth:`grad_norm`."""
        if self.ds.zero_stage == 0 and engine.is_gradient_accumulation_boundary():
            grads = [p.grad.detach().float() for p in engine.module.parameters() if p.grad is not None]
            self._stage0_grad_norm = float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
        engine.step()

    def grad_norm(self, engine) -> Optional[float]:
        """The gradient norm of the last optimizer step (before clipping), at every ZeRO stage."""
        norm = engine.get_global_grad_norm()
        if norm is None and self.ds.zero_stage == 0:
            return getattr(self, "_stage0_grad_norm", None)
        return None if norm is None else float(norm)

    # ----- collectives -------------------------------------------------------------------

    def all_reduce(self, x, op: str = "mean"):
        """Reduce a float, a tensor or a (nested) dict of those over ranks.
        op: mean | sum | max | min. Floats come back as floats, tensors as tensors."""
        if op not in ("mean", "sum", "max", "min"):
            raise ValueError(f"op must be mean, sum, max or min (got {op!r})")
        if isinstance(x, dict):
            return {k: self.all_reduce(v, op) for k, v in x.items()}
        if not (dist.is_available() and dist.is_initialized()) or self._world_size == 1:
            return x
        is_tensor = isinstance(x, torch.Tensor)
        t = x.detach().clone() if is_tensor else torch.tensor(float(x), dtype=torch.float64)
        orig_device, orig_dtype = t.device, t.dtype
        comm_device = self._device if dist.get_backend() == "nccl" else torch.device("cpu")
        if not t.is_floating_point():
            t = t.to(torch.float64)
        t = t.to(comm_device)
        reduce_op = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM,
                     "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        dist.all_reduce(t, op=reduce_op)
        if op == "mean":
            t = t / self._world_size
        if is_tensor:
            # Integer tensors keep their dtype except for a mean (which is fractional).
            keep = orig_dtype.is_floating_point or op != "mean"
            return t.to(device=orig_device, dtype=orig_dtype if keep else t.dtype)
        return float(t.item())

    def barrier(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def print(self, *args, **kwargs) -> None:
        if self.is_rank_0():
            print(*args, **kwargs, flush=True)

    # ----- data --------------------------------------------------------------------------

    def get_sampler(self, dataset, seed: int, consumed_samples: int = 0, epoch: int = 0, shuffle: bool = True):
        """This rank's slice of a deterministic, resumable epoch order (see ``sampler.py``).
        ``consumed_samples``: global samples of this epoch already trained on."""
        return ResumableDistributedSampler(
            dataset, num_replicas=self._world_size, rank=self._rank, shuffle=shuffle,
            seed=seed, epoch=epoch, consumed_samples=consumed_samples,
        )

    # ----- resumable checkpoints ---------------------------------------------------------

    def save_ckpt(self, engine, ckpt_dir: str, step: int, client_state: Optional[dict] = None, max_num: int = 3,
                  max_gb: Optional[float] = None) -> str:
        """Write a resumable checkpoint ``<ckpt_dir>/global_step<step>`` (collective).

        Model, optimizer and LR-scheduler state (DeepSpeed), ``client_state`` (your dict,
        e.g. consumed samples) and every rank's python/numpy/torch RNG states. Written to
        ``.tmp_global_step<step>``, renamed into place by rank 0 after all ranks finished,
        then ``latest`` is replaced atomically; finally the oldest checkpoints beyond
        ``max_num`` (at least 1 kept, never the new one) are deleted. Returns the folder.
        ``ckpt_dir`` must be one filesystem shared by all ranks (rank 0 renames)."""
        tag = ckpt_io.tag_for(step)
        tmp_name = ckpt_io.TMP_PREFIX + tag
        tmp_path = os.path.join(ckpt_dir, tmp_name)
        if self.is_rank_0():
            os.makedirs(ckpt_dir, exist_ok=True)
            ckpt_io.remove_leftovers(ckpt_dir)
        self.barrier()
        # Our dict goes under one key (DeepSpeed returns everything it does not know on load) and, for
        # OpenRLHF, whose resume reads its keys (consumed_samples) from the top level, once more there.
        ours = dict(client_state or {})
        engine.save_checkpoint(ckpt_dir, tag=tmp_name, client_state={**ours, _CLIENT_KEY: ours}, save_latest=False)
        ckpt_io.save_rng_state(tmp_path, self._rank)
        if self.is_rank_0():
            ckpt_io.write_meta(tmp_path, {**(client_state or {}), "step": int(step), "world_size": self._world_size})
        self.barrier()
        if self.is_rank_0():
            ckpt_io.commit(ckpt_dir, tmp_name, tag)
            ckpt_io.prune(ckpt_dir, max_num, keep_tag=tag, max_gb=max_gb)
        self.barrier()
        return os.path.join(ckpt_dir, tag)

    def load_ckpt(self, engine, ckpt_dir: str) -> Optional[dict]:
        """Resume from the newest complete checkpoint in ``ckpt_dir`` (collective).

        Restores model, optimizer, LR scheduler and this rank's RNG states; returns the
        ``client_state`` given to ``save_ckpt`` (plus ``"step"``), or None when there is no
        checkpoint. Leftover temp folders of a crashed save are ignored."""
        tag = ckpt_io.find_latest_tag(ckpt_dir) if os.path.isdir(ckpt_dir) else None
        # Every rank must pick the same tag (shared filesystem assumed).
        if dist.is_available() and dist.is_initialized() and self._world_size > 1:
            picked = [None] * self._world_size
            dist.all_gather_object(picked, tag)
            if len(set(picked)) != 1:
                raise RuntimeError(f"ranks disagree on the checkpoint to load from {ckpt_dir}: {picked}")
        if tag is None:
            return None
        load_path, client_state = engine.load_checkpoint(
            ckpt_dir, tag=tag, load_module_strict=True, load_optimizer_states=True, load_lr_scheduler_states=True,
            custom_load_fn=_load_module_either_naming,
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {os.path.join(ckpt_dir, tag)}")
        ckpt_io.load_rng_state(os.path.join(ckpt_dir, tag), self._rank)
        client_state = client_state or {}
        if _CLIENT_KEY in client_state:
            state = dict(client_state[_CLIENT_KEY])
        else:  # written by OpenRLHF: its client state is {"consumed_samples": global_step x batch size}
            state = {k: client_state[k] for k in ckpt_io.UPSTREAM_CLIENT_KEYS if k in client_state}
        state.setdefault("step", ckpt_io.step_of(tag))
        return state

    # ----- HF export ---------------------------------------------------------------------

    def gathered_state_dict(self, model) -> Dict[str, torch.Tensor]:
        """The full state dict on rank 0 (CPU tensors, training dtype); {} on other ranks.
        Collective under ZeRO-3 (each parameter is gathered in turn)."""
        module = unwrap_model(model)
        out: Dict[str, torch.Tensor] = {}
        seen: Dict[int, torch.Tensor] = {}
        for name, t in module.state_dict(keep_vars=True).items():
            if id(t) in seen:
                if self.is_rank_0():
                    out[name] = seen[id(t)]
                continue
            if _is_zero3_param(t):
                with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
                    value = t.data.detach().cpu().clone() if self.is_rank_0() else None
            else:
                value = t.detach().cpu().clone() if self.is_rank_0() else None
            if self.is_rank_0():
                out[name] = value
                seen[id(t)] = value
        return out

    def save_hf_model(self, model, tokenizer, output_dir: str) -> None:
        """Write a normal HF folder (config, safetensors weights in the training dtype,
        generation config, tokenizer with its chat template) to ``output_dir`` (collective).

        Rank 0 writes into a sibling temp folder, then installs it: one atomic rename when
        ``output_dir`` does not exist yet, else file by file with ``os.replace`` (other
        content such as metrics.jsonl or checkpoints/ stays)."""
        sd = self.gathered_state_dict(model)
        if self.is_rank_0():
            self._write_hf_folder(unwrap_model(model), sd, tokenizer, output_dir)
        self.barrier()

    @staticmethod
    def _write_hf_folder(module, sd: Dict[str, torch.Tensor], tokenizer, output_dir: str) -> None:
        """Rank 0: ``module``'s config with the weights ``sd`` (and the tokenizer) into ``output_dir``,
        through a sibling temp folder (see :func:`ckpt_io.install_folder`)."""
        output_dir = os.path.normpath(output_dir)
        parent = os.path.dirname(output_dir) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f"{ckpt_io.TMP_PREFIX}hf_{os.path.basename(output_dir)}")
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        try:
            # save_pretrained pops tensors out of the dict it gets: hand it a copy.
            module.save_pretrained(tmp, state_dict=dict(sd))
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            ckpt_io.install_folder(tmp, output_dir)
        finally:  # an interrupted or failed export leaves no temp folder behind
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)

    def save_lora_model(self, model, tokenizer, output_dir: str, scaling: float) -> None:
        """A LoRA run's outputs (collective): the adapters (peft's adapter_config.json +
        adapter_model.safetensors) in ``<output_dir>/adapter`` and the merged weights as a normal
        HF folder in ``output_dir``."""
        sd = self.gathered_state_dict(model)
        if self.is_rank_0():
            from peft import get_peft_model_state_dict

            peft_model = unwrap_model(model)
            adapter_tmp = os.path.join(os.path.dirname(os.path.normpath(output_dir)) or ".",
                                       f"{ckpt_io.TMP_PREFIX}adapter_{os.path.basename(os.path.normpath(output_dir))}")
            try:
                peft_model.save_pretrained(adapter_tmp, state_dict=get_peft_model_state_dict(peft_model, state_dict=sd))
                os.makedirs(output_dir, exist_ok=True)
                ckpt_io.install_folder(adapter_tmp, os.path.join(output_dir, "adapter"))
            finally:
                if os.path.exists(adapter_tmp):
                    shutil.rmtree(adapter_tmp, ignore_errors=True)
            merged = merge_lora_state_dict(sd, scaling)  # 4-bit (QLoRA) base weights come back dequantized
            base = peft_model.get_base_model()
            with _saved_unquantized(base):
                self._write_hf_folder(base, merged, tokenizer, output_dir)
        self.barrier()

    # ----- teardown ----------------------------------------------------------------------

    def finish(self) -> None:
        """Destroy the process group and undo env vars set by ``setup_distributed``.
        Does not exit: CLI entry points call ``exit_cleanly()`` as their last statement."""
        self.barrier()  # no rank tears down while another still communicates
        destroy_process_group()
        for k, v in self._env_we_set.items():
            if os.environ.get(k) == v:
                del os.environ[k]
        self._env_we_set = {}


def _warn_stale_op_build_locks(max_age_s: float = 600.0) -> None:
    """DeepSpeed JIT-compiles small ops (on CPU: its shared-memory comm op) under
    ``TORCH_EXTENSIONS_DIR`` behind a lock file; a build killed half way leaves the lock, and
    every later run then waits on it forever. Say so before that wait can start."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")
    now = time.time()
    for lock in glob.glob(os.path.join(root, "*", "*", "lock")):
        try:
            age = now - os.path.getmtime(lock)
        except OSError:
            continue
        if age > max_age_s:
            print(f"warning: {lock} is {age / 60:.0f} minutes old: a DeepSpeed op build was interrupted. If no "
                  "other process is building DeepSpeed ops now, delete that file, or this run waits for it forever.",
                  flush=True)


@contextlib.contextmanager
def _saved_unquantized(module: nn.Module):
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


class FrozenOffload:
    """A frozen model kept in CPU memory and streamed to ``device`` block by block for each forward.

    Every parameter and buffer gets one CPU master copy, page-locked (pinned) on a CUDA device so that
    host-to-device copies run asynchronously at full bus speed. The blocks are the entries of the model's
    largest ``nn.ModuleList`` (its decoder layers); the rest (embeddings, final norm, output head) is
    copied when the forward starts. While block i computes, block i+1 is copied on a side stream;
    after block i its device copy is dropped (the tensors point at the CPU masters again, the caching
    allocator reuses the memory). The weights are frozen, so nothing is ever copied back, and the device
    holds the rest plus two blocks at a time instead of the whole model. On a CPU ``device`` (tests) the
    copies are plain synchronous ones (still copies, so tests see what is resident when)."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        blocks = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()), default=None)
        self.blocks = list(blocks) if blocks is not None and len(blocks) > 1 else []
        seen: Dict[int, None] = {}

        def tensors(module: nn.Module):
            out = []
            for t in list(module.parameters()) + list(module.buffers()):
                if id(t) not in seen:
                    seen[id(t)] = None
                    out.append(t)
            return out

        self.units = [tensors(b) for b in self.blocks]
        self.rest = tensors(model)
        self.masters: Dict[int, torch.Tensor] = {}
        for t in self.rest + [t for unit in self.units for t in unit]:
            t.data = t.data.cpu()
            if self.cuda:
                t.data = t.data.pin_memory()
            self.masters[id(t)] = t.data
        self.pending: Dict[int, Any] = {}  # block -> (device copies, ready event)
        self.loaded: Dict[int, bool] = {}
        self.copies = 0  # tensors copied to the device (tests count them)
        model.register_forward_pre_hook(self._start)
        model.register_forward_hook(self._end)
        for i, block in enumerate(self.blocks):
            block.register_forward_pre_hook(lambda m, a, i=i: self._enter(i))
            block.register_forward_hook(lambda m, a, o, i=i: self._leave(i))

    def _copy(self, tensors) -> list:
        self.copies += len(tensors)
        return [self.masters[id(t)].to(self.device, non_blocking=self.cuda, copy=True) for t in tensors]

    def _prefetch(self, i: int) -> None:
        if i >= len(self.units) or i in self.pending or self.loaded.get(i):
            return
        if self.cuda:  # the copy reads pinned masters that never change: it waits for nothing
            with torch.cuda.stream(self.stream):
                copies = self._copy(self.units[i])
                ready = torch.cuda.Event()
                ready.record(self.stream)
        else:
            copies, ready = self._copy(self.units[i]), None
        self.pending[i] = (copies, ready)

    def _start(self, module, args) -> None:
        for t, c in zip(self.rest, self._copy(self.rest), strict=True):
            t.data = c
        self._prefetch(0)

    def _enter(self, i: int) -> None:
        self._prefetch(i)
        copies, ready = self.pending.pop(i)
        if self.cuda:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for c in copies:  # the memory is not reused while this stream may still read it
                c.record_stream(current)
        for t, c in zip(self.units[i], copies, strict=True):
            t.data = c
        self.loaded[i] = True
        self._prefetch(i + 1)

    def _release(self, tensors) -> None:
        for t in tensors:
            t.data = self.masters[id(t)]

    def _leave(self, i: int) -> None:
        self._release(self.units[i])
        self.loaded[i] = False

    def _end(self, module, args, output):
        for i in [i for i, on in self.loaded.items() if on]:
            self._leave(i)
        self.pending.clear()  # a prefetch the forward did not use (it stopped early)
        self._release(self.rest)
        return output


def _attach_offload_hooks(model: nn.Module, device: torch.device) -> FrozenOffload:
    """Keep the frozen ``model`` in (pinned) CPU memory; stream it to ``device`` for each call
    (:class:`FrozenOffload`)."""
    return FrozenOffload(model, device)
