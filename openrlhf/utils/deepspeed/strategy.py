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

The strategy holds the run's settings and this process's place in it, builds and steps the engines, and
hands everything else to the modules next to it, which take those as plain arguments:
``process_group.py`` (joining / leaving the group, seeding), ``comm.py`` (collectives), ``optim.py``
(optimizer and LR scheduler), ``offload.py`` (ZeRO 0-2 frozen-model offload), ``ckpt_io.py`` (resumable
checkpoints), ``export.py`` (HF / LoRA export), ``wrapping.py`` (unwrapping engines and Actors).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Optional

import deepspeed
import torch
import torch.distributed as dist
import torch.nn as nn
from deepspeed.runtime.keep_in_fp32 import keep_buffers_in_fp32, keep_in_fp32_pattern
from transformers.integrations import deepspeed as hf_ds

from openrlhf.utils.deepspeed import ckpt_io, comm, export, optim, process_group
from openrlhf.utils.deepspeed.ds_config import batch_problems, eval_ds_config, train_ds_config
from openrlhf.utils.deepspeed.offload import FrozenOffload
from openrlhf.utils.deepspeed.sampler import ResumableDistributedSampler
from openrlhf.utils.deepspeed.wrapping import hf_names_hook, wraps_hf_model
from openrlhf.utils.dtypes import torch_dtype
from openrlhf.utils.errors import UserError

__all__ = ["DeepspeedStrategy"]


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


def cast_params_like_deepspeed(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``model`` to ``dtype`` the way a DeepSpeed engine casts the trained model at ZeRO 0-2 (in place):
    floating parameters only; buffers keep the dtype they were loaded in, and those the model names to keep
    in fp32 are made fp32. ``Module.to(dtype)`` would also round buffers such as the rotary ``inv_freq``
    (created in fp32 by transformers), so in bf16 a frozen reference would compute other rotary phases than
    the policy it must equal at step 0."""
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    pattern = keep_in_fp32_pattern(model, None, dtype)
    if pattern is not None:
        keep_buffers_in_fp32(model, pattern)
    return model


def _hook_hf_names(model: nn.Module) -> None:
    """Save a wrapped HF model's state dict under HF's names (once: a second pass would strip HF's own
    "model.")."""
    if wraps_hf_model(model) and not getattr(model, "_hf_names_hooked", False):
        model.register_state_dict_post_hook(hf_names_hook)
        model._hf_names_hooked = True


class DeepspeedStrategy:
    """Owns everything distributed: process group, DeepSpeed engines, checkpoints, export.

    Settings come only from the constructor arguments (no hidden globals)."""

    def __init__(self, ds, train, max_norm: float = 1.0, adam=None, training: bool = True, muon=None):
        """``ds``: the --ds.* section; ``train``: the --train.* section (micro_batch_size and
        seed; batch_size too when training); ``max_norm``, ``adam`` (--adam.*) and ``muon`` (--muon.*, given
        with --optim muon) are used when training. ``training=False`` (scoring, generation): no optimizer, so
        the global batch size is not checked against the process count."""
        problems = ds.problems(training=training)
        if problems:
            raise UserError("invalid DeepSpeed settings:\n  " + "\n  ".join(problems))
        self.ds = ds
        self.train = train
        self.max_norm = float(max_norm)
        self.adam = adam
        self.muon = muon
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
        Backend: nccl when CUDA is available, gloo otherwise
        (:func:`process_group.join_process_group`, :func:`process_group.seed_process`).
        """
        self._device, self._local_rank = process_group.join_process_group(self._env_we_set)
        self._world_size = dist.get_world_size()
        self._rank = dist.get_rank()
        if self.ds.param_dtype == "fp16" and self._device.type == "cpu" and (self.training or self.ds.zero_stage == 3):
            raise UserError(
                "--ds.param_dtype fp16 needs a GPU: DeepSpeed's CPU accelerator runs bf16 and fp32 only "
                "(use --ds.param_dtype bf16 or fp32 on CPU)"
            )
        process_group.seed_process(self.train.seed, getattr(self.train, "full_determinism_enable", False))

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
        """AdamW over trainable params with --adam.*; DeepSpeedCPUAdam with --ds.adam_offload
        (:func:`optim.create_optimizer`)."""
        return optim.create_optimizer(model, self.adam, cpu_offload=self.ds.adam_offload)

    def create_scheduler(self, optimizer, name: str, warmup_ratio: float, total_steps: int, min_lr_ratio: float = 0.1):
        """An LR scheduler stepped once per optimizer step (:func:`optim.create_scheduler`)."""
        return optim.create_scheduler(optimizer, name, warmup_ratio, total_steps, min_lr_ratio)

    def prepare_train(self, model: nn.Module, optimizer, scheduler):
        """Wrap the trained model in a DeepSpeed engine (ZeRO stage, dtype, clipping, grad
        accumulation from the config). Returns the engine; DeepSpeed steps ``scheduler``."""
        _hook_hf_names(model)
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=self.train_ds_config(),
            dist_init_required=False,
        )
        return engine

    def prepare_trained(self, model: nn.Module, make_scheduler: Callable[[Any], Any]):
        """The trained model as a DeepSpeed engine with its optimizer (--optim) and the LR scheduler
        ``make_scheduler(optimizer)``: AdamW (:meth:`create_optimizer`), or with --optim muon DeepSpeed's Muon,
        which ``deepspeed.initialize`` builds from the config (it tags the matrices Muon updates)."""
        if self.muon is None:
            optimizer = self.create_optimizer(model)
            return self.prepare_train(model, optimizer, make_scheduler(optimizer))
        if self.max_norm > 0:
            self.print(
                f"note: --optim muon with --max_norm {self.max_norm}: DeepSpeed clips the gradient before Muon "
                "orthogonalises its update, as upstream OpenRLHF does (upstream suggests --max_norm 0 with Muon)"
            )
        _hook_hf_names(model)
        config = {**self.train_ds_config(), "optimizer": optim.muon_optimizer_config(self.adam, self.muon)}
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=optim.param_groups(model, self.adam.weight_decay),
            lr_scheduler=make_scheduler,
            config=config,
            dist_init_required=False,
        )
        return engine

    def prepare_eval(self, model: nn.Module, offload: bool = False):
        """A frozen model (reference / teacher): requires_grad False, eval mode.

        ZeRO-3: a DeepSpeed inference engine that shards the params (``offload``: shards
        in CPU memory, gathered per layer on use). Stages 0-2: the plain module cast to the
        training dtype as DeepSpeed casts the policy (parameters only, buffers such as rotary ``inv_freq``
        kept as loaded: :func:`cast_params_like_deepspeed`); on the device, or, with ``offload`` on a GPU machine, kept in pinned CPU
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
        cast_params_like_deepspeed(model, self.torch_dtype)
        if offload and self._device.type != "cpu":
            model.to("cpu")
            FrozenOffload(model, self._device)  # its hooks on the model keep it alive
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
            self._stage0_grad_norm = (
                float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
                if grads
                else 0.0
            )
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
        op: mean | sum | max | min. Floats come back as floats, tensors as tensors (:func:`comm.all_reduce`)."""
        return comm.all_reduce(x, op, self._world_size, self._device)

    def barrier(self) -> None:
        comm.barrier()

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of rank ``src`` on every rank (collective)."""
        return comm.broadcast_object(obj, src)

    def print(self, *args, **kwargs) -> None:
        if self.is_rank_0():
            print(*args, **kwargs, flush=True)

    # ----- data --------------------------------------------------------------------------

    def get_sampler(self, dataset, seed: int, consumed_samples: int = 0, epoch: int = 0, shuffle: bool = True):
        """This rank's slice of a deterministic, resumable epoch order (see ``sampler.py``).
        ``consumed_samples``: global samples of this epoch already trained on."""
        return ResumableDistributedSampler(
            dataset,
            num_replicas=self._world_size,
            rank=self._rank,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            consumed_samples=consumed_samples,
        )

    # ----- resumable checkpoints ---------------------------------------------------------

    def save_ckpt(
        self,
        engine,
        ckpt_dir: str,
        step: int,
        client_state: Optional[dict] = None,
        max_num: int = 3,
        max_gb: Optional[float] = None,
    ) -> str:
        """Write a resumable checkpoint ``<ckpt_dir>/global_step<step>`` (collective): model, optimizer,
        LR scheduler, ``client_state`` and every rank's RNG states, written atomically; the oldest beyond
        ``max_num`` / ``max_gb`` are pruned. Returns the folder (:func:`ckpt_io.save_ckpt`)."""
        return ckpt_io.save_ckpt(engine, ckpt_dir, step, self._rank, self._world_size, client_state, max_num, max_gb)

    def load_ckpt(self, engine, ckpt_dir: str) -> Optional[dict]:
        """Resume from the newest complete checkpoint in ``ckpt_dir`` (collective); returns the
        ``client_state`` given to ``save_ckpt`` (plus ``"step"``), or None (:func:`ckpt_io.load_ckpt`)."""
        return ckpt_io.load_ckpt(engine, ckpt_dir, self._rank, self._world_size)

    # ----- HF export ---------------------------------------------------------------------

    def gathered_state_dict(self, model) -> Dict[str, torch.Tensor]:
        """The full state dict on rank 0 (CPU tensors, training dtype); {} on other ranks.
        Collective under ZeRO-3 (:func:`export.gathered_state_dict`)."""
        return export.gathered_state_dict(model, self._rank)

    def save_hf_model(self, model, tokenizer, output_dir: str) -> None:
        """Write a normal HF folder (weights in the training dtype, tokenizer with its chat template) to
        ``output_dir``, atomically (collective; :func:`export.save_hf_model`)."""
        export.save_hf_model(model, tokenizer, output_dir, self._rank)

    def save_lora_model(self, model, tokenizer, output_dir: str, scaling: float) -> None:
        """A LoRA run's outputs (collective): the adapters in ``<output_dir>/adapter``, the merged
        weights as a normal HF folder in ``output_dir`` (:func:`export.save_lora_model`)."""
        export.save_lora_model(model, tokenizer, output_dir, scaling, self._rank)

    # ----- teardown ----------------------------------------------------------------------

    def finish(self) -> None:
        """Destroy the process group and undo env vars set by ``setup_distributed``.
        Does not exit: CLI entry points call ``exit_cleanly()`` as their last statement."""
        process_group.leave_process_group(self._env_we_set)
        self._env_we_set = {}
