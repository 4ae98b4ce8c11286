"""Resumable checkpoints: writing and loading them through a DeepSpeed engine (:func:`save_ckpt`,
:func:`load_ckpt`, collective) and their filesystem side: folder names, the ``latest`` pointer, pruning,
RNG states and atomic replacement. No deepspeed import (the engine is handed in); the filesystem
helpers are unit-testable on their own.

Layout of a checkpoint folder ``ckpt_dir``::

    ckpt_dir/
      latest                  # text: "global_step<N>" (DeepSpeed's own format)
      global_step<N>/         # complete checkpoints only (renamed into place)
        mp_rank_00_model_states.pt / zero_pp_rank_*  (DeepSpeed)
        rng_state_rank<r>.pt  # python / numpy / torch (/ cuda) RNG of rank r
        openrlhf_ckpt.json    # {"step": N, "world_size": W, + the trainer's state}
      .tmp_global_step<N>/    # being written; ignored by readers, removed by the next save
      .old_global_step<N>/    # a replaced copy of the same step being deleted
      global_step<N>_hf/      # optional HF export of that step (pruned together with it)
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import zipfile
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from openrlhf.utils.atomic import atomic_write, is_temp_file_of, plain_permissions
from openrlhf.utils.deepspeed.comm import barrier
from openrlhf.utils.deepspeed.wrapping import load_module_either_naming
from openrlhf.utils.disk import disk_full_is_one_line
from openrlhf.utils.errors import UserError

TAG_PREFIX = "global_step"
TMP_PREFIX = ".tmp_"
OLD_PREFIX = ".old_"
LATEST = "latest"
HF_SUFFIX = "_hf"  # <ckpt_dir>/global_step<N>_hf: an optional HF export of that checkpoint
META_FILE = "openrlhf_ckpt.json"
_TAG_RE = re.compile(r"^global_step(\d+)$")
# What OpenRLHF (0.11) keeps in a checkpoint's DeepSpeed client state: rows consumed since the start of
# training, i.e. global_step x train.batch_size over all epochs.
UPSTREAM_CLIENT_KEYS = ("consumed_samples",)
# The key of the DeepSpeed client state under which save_ckpt keeps the trainer's dict.
CLIENT_KEY = "openrlhf_client_state"


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{int(step)}"


def step_of(tag: str) -> Optional[int]:
    m = _TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def complete_tags(ckpt_dir: str) -> List[str]:
    """``global_step<N>`` folders (complete by construction), oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    tags = [
        name
        for name in os.listdir(ckpt_dir)
        if step_of(name) is not None and os.path.isdir(os.path.join(ckpt_dir, name))
    ]
    return sorted(tags, key=step_of)


def write_latest(ckpt_dir: str, tag: str) -> None:
    """Point ``latest`` at ``tag`` atomically (write a temp file, fsync, os.replace)."""
    with atomic_write(os.path.join(ckpt_dir, LATEST)) as f:
        f.write(tag)


def find_latest_tag(ckpt_dir: str) -> Optional[str]:
    """The tag to resume from: ``latest`` when it names an existing complete folder, else
    the highest-step complete folder, else None. Temp folders are never considered."""
    pointer = os.path.join(ckpt_dir, LATEST)
    if os.path.isfile(pointer):
        with open(pointer) as f:
            tag = f.read().strip()
        if step_of(tag) is not None and os.path.isdir(os.path.join(ckpt_dir, tag)):
            return tag
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def remove_leftovers(ckpt_dir: str) -> None:
    """Delete temp / old folders (and temp files of ``latest``) that a crashed save may have left behind."""
    if not os.path.isdir(ckpt_dir):
        return
    for name in os.listdir(ckpt_dir):
        path = os.path.join(ckpt_dir, name)
        if name.startswith((TMP_PREFIX, OLD_PREFIX)) or is_temp_file_of(name, LATEST):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass


def commit(ckpt_dir: str, tmp_name: str, tag: str) -> None:
    """Move a fully written ``ckpt_dir/tmp_name`` to ``ckpt_dir/tag`` and point ``latest`` at it.

    An existing folder of the same tag is first renamed aside, so at every instant either
    the old or the new complete folder exists (``find_latest_tag`` falls back to the newest
    complete folder in the instant between the two renames)."""
    final = os.path.join(ckpt_dir, tag)
    old = None
    if os.path.exists(final):
        old = os.path.join(ckpt_dir, f"{OLD_PREFIX}{tag}")
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(os.path.join(ckpt_dir, tmp_name), final)
    write_latest(ckpt_dir, tag)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _folder_bytes(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass
    return total


def prune(ckpt_dir: str, max_num: int, keep_tag: str, max_gb: Optional[float] = None) -> List[str]:
    """Delete the oldest complete checkpoints so that at most ``max(max_num, 1)`` remain and, with
    ``max_gb`` (--ckpt.max_mem), while the checkpoints take more than that many GB.
    ``keep_tag`` (the one just written) is never deleted. An HF export of a deleted
    checkpoint next to it (``global_step<N>_hf``) goes with it. Returns the deleted tags."""
    keep = max(int(max_num), 1)
    tags = [t for t in complete_tags(ckpt_dir) if t != keep_tag]
    deleted = []

    def too_big() -> bool:
        if max_gb is None:
            return False
        used = sum(
            _folder_bytes(os.path.join(ckpt_dir, t)) + _folder_bytes(os.path.join(ckpt_dir, t + HF_SUFFIX))
            for t in tags + [keep_tag]
        )
        return used > max_gb * 1024**3

    while tags and (len(tags) + 1 > keep or too_big()):
        victim = tags.pop(0)
        shutil.rmtree(os.path.join(ckpt_dir, victim), ignore_errors=True)
        shutil.rmtree(os.path.join(ckpt_dir, victim + HF_SUFFIX), ignore_errors=True)
        deleted.append(victim)
    return deleted


def trainer_state(step: int, batch_size: int, steps_per_epoch: int) -> Dict[str, int]:
    """The trainer's client state at the end of optimizer step ``step``: ``consumed_samples`` with
    OpenRLHF's meaning (rows since the start of training, so its trainers resume from our checkpoints)
    and ours (the epoch to run next and the rows of it already done)."""
    epoch, done = divmod(int(step), int(steps_per_epoch))
    return {
        "consumed_samples": int(step) * int(batch_size),
        "global_step": int(step),
        "epoch": epoch,
        "epoch_consumed_samples": done * int(batch_size),
    }


def resume_position(state: Dict[str, Any], batch_size: int, steps_per_epoch: int):
    """(global step, epoch, rows of that epoch done) to resume from a checkpoint's client state: ours
    (``global_step``), OpenRLHF's (``consumed_samples`` only: global_step x batch size) or, with
    neither, the step of its ``global_step<N>`` folder (``step``)."""
    if "global_step" in state:
        step = int(state["global_step"])
    elif "consumed_samples" in state:
        step = int(state["consumed_samples"]) // int(batch_size)
    else:
        step = int(state["step"])
    epoch, done = divmod(step, int(steps_per_epoch))
    return step, epoch, done * int(batch_size)


def write_meta(folder: str, meta: Dict[str, Any]) -> None:
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump(meta, f)


def read_latest_meta(ckpt_dir: str) -> Optional[Dict[str, Any]]:
    """What the newest complete checkpoint of ``ckpt_dir`` says of itself (step, world size and the
    trainer's state, see :func:`trainer_state`), without loading it; None without one."""
    tag = find_latest_tag(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    path = os.path.join(ckpt_dir, tag, META_FILE) if tag else None
    if path is None:
        return None
    if not os.path.exists(path):  # written by OpenRLHF (no meta file): the step of the folder's name
        return {"step": step_of(tag)}
    with open(path) as f:
        return json.load(f)


# ----- checks before a resume -------------------------------------------------------------


def _state_shapes(path: str) -> Dict[str, tuple]:
    """Parameter name -> shape recorded in a DeepSpeed model-states file, read memory-mapped (the tensors
    themselves are not read): ``param_shapes`` (ZeRO) or the ``module`` state dict."""
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    out: Dict[str, tuple] = {}
    for group in state.get("param_shapes") or []:
        out.update({k: tuple(v) for k, v in group.items()})
    for k, v in (state.get("module") or {}).items():
        if isinstance(v, torch.Tensor) and v.numel() > 0:
            out.setdefault(k, tuple(v.shape))
    return out


def resume_problems(
    ckpt_dir: str,
    world_size: int,
    *,
    optimizer_files: bool,
    shapes: Optional[Dict[str, tuple]] = None,
    universal: bool = False,
) -> List[str]:
    """What keeps the newest complete checkpoint of ``ckpt_dir`` from being resumed, found before any model
    loads: files cut short (a checkpoint copied or synced part way: every ``.pt`` is a zip archive whose
    directory is at its end), a missing model-states file, missing optimizer states (``optimizer_files``:
    one per saved process, for ZeRO >= 1 and bf16), another process count than the one that wrote it (unless
    ``universal``), and weights of other shapes than the model's (``shapes``: name -> shape, HF names).
    [] when there is no checkpoint or nothing is wrong."""
    tag = find_latest_tag(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    if tag is None:
        return []
    folder = os.path.join(ckpt_dir, tag)
    names = sorted(os.listdir(folder))
    problems = [
        f"{os.path.join(folder, n)} is cut short or not a torch file ({os.path.getsize(os.path.join(folder, n))} bytes)"
        for n in names
        if n.endswith(".pt") and not zipfile.is_zipfile(os.path.join(folder, n))
    ]
    models = [n for n in names if n.endswith("_model_states.pt")]
    if not models:
        problems.append(f"{folder} holds no model states (*_model_states.pt)")
    saved = read_latest_meta(ckpt_dir).get("world_size")  # None for a checkpoint written by OpenRLHF
    if saved is not None and saved != world_size and not universal:
        problems.append(
            f"{folder} was written by {saved} processes and this run has {world_size}: resume with {saved}, or "
            "convert it to a universal checkpoint and pass --ds.use_universal_ckpt"
        )
    if optimizer_files:
        for r in range(saved or world_size):
            if not any(n.endswith(f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt") for n in names):
                problems.append(
                    f"{folder} lacks the optimizer states of process {r} (*zero_pp_rank_{r}_*optim_states.pt)"
                )
    if shapes and models and not problems:
        saved_shapes = _state_shapes(os.path.join(folder, models[0]))
        wrong = []
        for name, shape in saved_shapes.items():
            hf = name[len("model.") :] if name not in shapes and name.startswith("model.") else name
            if hf in shapes and tuple(shapes[hf]) != shape:
                wrong.append(f"{hf} {list(shape)} (the model's: {list(shapes[hf])})")
        if wrong:
            problems.append(
                f"{folder} belongs to another model: {len(wrong)} weights have other shapes, e.g. {'; '.join(wrong[:3])}"
            )
    return problems


# ----- RNG states -----------------------------------------------------------------------


def rng_file(folder: str, rank: int) -> str:
    return os.path.join(folder, f"rng_state_rank{rank}.pt")


def get_rng_state() -> Dict[str, Any]:
    """This process's RNG states. On CUDA only the current device's generator is saved (with its index):
    a run may resume with other devices visible (a Ray actor sees one GPU where the launcher's rank saw
    eight), and this process only ever draws from its own device."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
        state["cuda_device"] = torch.cuda.current_device()
    return state


def _saved_cuda_state(state: Dict[str, Any]):
    """The CUDA generator state of this process's device in a saved ``state``. Checkpoints written
    before states were saved per device hold a list with one entry per device visible then; the entry
    of the device that is current now is used when the list has one (the launcher's rank ``r`` drew on
    device ``r``), else the first."""
    saved = state["cuda"]
    if isinstance(saved, (list, tuple)):
        if not saved:
            return None
        index = torch.cuda.current_device()
        return saved[index] if index < len(saved) else saved[0]
    return saved


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_state = _saved_cuda_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state)  # the current device


def save_rng_state(folder: str, rank: int) -> None:
    torch.save(get_rng_state(), rng_file(folder, rank))


def load_rng_state(folder: str, rank: int) -> bool:
    """Restore this rank's RNG states from ``folder``; False when the file is missing."""
    path = rng_file(folder, rank)
    if not os.path.isfile(path):
        return False
    # Our own file (python tuples, numpy arrays): not loadable with weights_only=True.
    set_rng_state(torch.load(path, map_location="cpu", weights_only=False))
    return True


# ----- atomic HF folder writes ----------------------------------------------------------

_WEIGHT_RE = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")


def install_folder(tmp_dir: str, output_dir: str) -> None:
    """Put the fully written ``tmp_dir`` in place of ``output_dir``.

    ``output_dir`` missing: one ``os.rename`` (atomic). ``output_dir`` present (it may also
    hold metrics.jsonl, checkpoints/, ...): every file of ``tmp_dir`` replaces its namesake
    with ``os.replace`` (each file is whole at every instant; weights go in first, config
    last), then weight files of an earlier save that the new one does not have (other shard
    counts) are removed. Other content of ``output_dir`` is left alone. Files get the permissions of a
    plain ``open`` (safetensors writes its weights 0600)."""
    plain_permissions(tmp_dir)
    if not os.path.exists(output_dir):
        os.rename(tmp_dir, output_dir)
        return
    names = sorted(os.listdir(tmp_dir), key=lambda n: (0 if _WEIGHT_RE.match(n) else 1, n == "config.json", n))
    for name in names:
        src, dst = os.path.join(tmp_dir, name), os.path.join(output_dir, name)
        if os.path.isdir(src):
            if os.path.isdir(dst):
                shutil.rmtree(dst)
            os.rename(src, dst)
        else:
            os.replace(src, dst)
    new = set(names)
    for name in os.listdir(output_dir):
        if _WEIGHT_RE.match(name) and name not in new:
            os.remove(os.path.join(output_dir, name))
    shutil.rmtree(tmp_dir, ignore_errors=True)


# ----- saving and loading through a DeepSpeed engine ---------------------------------------


def save_ckpt(
    engine,
    ckpt_dir: str,
    step: int,
    rank: int,
    world_size: int,
    client_state: Optional[dict] = None,
    max_num: int = 3,
    max_gb: Optional[float] = None,
) -> str:
    """Write a resumable checkpoint ``<ckpt_dir>/global_step<step>`` (collective; ``rank`` of
    ``world_size`` is this process).

    Model, optimizer and LR-scheduler state (DeepSpeed), ``client_state`` (your dict,
    e.g. consumed samples) and every rank's python/numpy/torch RNG states. Written to
    ``.tmp_global_step<step>``, renamed into place by rank 0 after all ranks finished,
    then ``latest`` is replaced atomically; finally the oldest checkpoints beyond
    ``max_num`` (at least 1 kept, never the new one) are deleted. Returns the folder.
    ``ckpt_dir`` must be one filesystem shared by all ranks (rank 0 renames)."""
    tag = tag_for(step)
    tmp_name = TMP_PREFIX + tag
    tmp_path = os.path.join(ckpt_dir, tmp_name)
    if rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        remove_leftovers(ckpt_dir)
    barrier()
    # Our dict goes under one key (DeepSpeed returns everything it does not know on load) and, for
    # OpenRLHF, whose resume reads its keys (consumed_samples) from the top level, once more there.
    ours = dict(client_state or {})
    previous = find_latest_tag(ckpt_dir)
    kept = (
        f"the checkpoint being written was removed and the last complete one, {os.path.join(ckpt_dir, previous)}, "
        "is kept: free space (or lower --ckpt.max_num) and resume with --ckpt.load_enable"
        if previous
        else "the checkpoint being written was removed (there is no earlier one): free space and run again"
    )
    try:
        with disk_full_is_one_line(
            f"the checkpoint of step {step}",
            ckpt_dir,
            lambda: _folder_bytes(os.path.join(ckpt_dir, previous)) if previous else _folder_bytes(tmp_path),
            kept,
        ):
            engine.save_checkpoint(ckpt_dir, tag=tmp_name, client_state={**ours, CLIENT_KEY: ours}, save_latest=False)
            save_rng_state(tmp_path, rank)
            if rank == 0:
                write_meta(tmp_path, {**(client_state or {}), "step": int(step), "world_size": world_size})
    except UserError:
        if rank == 0:
            shutil.rmtree(tmp_path, ignore_errors=True)
        raise
    barrier()
    if rank == 0:
        commit(ckpt_dir, tmp_name, tag)
        prune(ckpt_dir, max_num, keep_tag=tag, max_gb=max_gb)
    barrier()
    return os.path.join(ckpt_dir, tag)


def load_ckpt(engine, ckpt_dir: str, rank: int, world_size: int) -> Optional[dict]:
    """Resume from the newest complete checkpoint in ``ckpt_dir`` (collective; ``rank`` of
    ``world_size`` is this process).

    Restores model, optimizer, LR scheduler and this rank's RNG states; returns the
    ``client_state`` given to ``save_ckpt`` (plus ``"step"``), or None when there is no
    checkpoint. Leftover temp folders of a crashed save are ignored."""
    tag = find_latest_tag(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    # Every rank must pick the same tag (shared filesystem assumed).
    if dist.is_available() and dist.is_initialized() and world_size > 1:
        picked = [None] * world_size
        dist.all_gather_object(picked, tag)
        if len(set(picked)) != 1:
            raise RuntimeError(f"ranks disagree on the checkpoint to load from {ckpt_dir}: {picked}")
    if tag is None:
        return None
    load_path, client_state = engine.load_checkpoint(
        ckpt_dir,
        tag=tag,
        load_module_strict=True,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
        custom_load_fn=load_module_either_naming,
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {os.path.join(ckpt_dir, tag)}")
    load_rng_state(os.path.join(ckpt_dir, tag), rank)
    client_state = client_state or {}
    if CLIENT_KEY in client_state:
        state = dict(client_state[CLIENT_KEY])
    else:  # written by OpenRLHF: its client state is {"consumed_samples": global_step x batch size}
        state = {k: client_state[k] for k in UPSTREAM_CLIENT_KEYS if k in client_state}
    state.setdefault("step", step_of(tag))
    return state
