"""ZeRO 0-2 offload of a frozen model (reference / teacher): its weights kept in CPU memory and streamed to
the device block by block for each forward; and the check, before such a model loads, that one copy per
process fits the node's memory. torch only."""

from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

GIB = 1 << 30


def read_meminfo(path: str = "/proc/meminfo") -> Tuple[int, int]:
    """(MemTotal, MemAvailable) of this machine in bytes, from ``path`` (Linux's /proc/meminfo, in kB)."""
    values: Dict[str, int] = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                values[key] = int(rest.split()[0]) * 1024
    return values["MemTotal"], values["MemAvailable"]


def host_copies_problem(
    flag: str, model_bytes: int, local_processes: int, mem_available: int, mem_total: int, node: str = "this node"
) -> Optional[str]:
    """Why ``local_processes`` full copies of a frozen model of ``model_bytes`` (``flag`` at ZeRO 0-2: every
    process keeps its own copy in CPU memory, pinned on a GPU machine) do not fit ``node``'s
    ``mem_available`` bytes (``mem_total`` is quoted); None when they fit."""
    need = model_bytes * local_processes
    if need <= mem_available:
        return None
    return (
        f"{flag} at --ds.zero_stage 0-2 keeps a full copy of the model in CPU memory (pinned on a GPU machine) "
        f"in each process: {model_bytes / GIB:.1f} GiB x {local_processes} processes on {node} = "
        f"{need / GIB:.1f} GiB, more than its {mem_available / GIB:.1f} GiB available (MemAvailable; MemTotal "
        f"{mem_total / GIB:.1f} GiB); use --ds.zero_stage 3 with {flag} (the processes then hold one copy "
        f"between them, each its shard), or leave {flag} off (each GPU then holds the model)"
    )


def nodes_problem(flag: str, model_bytes: int, readings: Sequence[Tuple[str, int, int]]) -> Optional[str]:
    """:func:`host_copies_problem` of the first node (in rank order) that cannot hold its processes' copies.
    ``readings``: (host name, MemTotal, MemAvailable) of every process, read before any of them loads the
    model; a node's processes are those with its host name, its memory the smallest reading among them."""
    nodes: Dict[str, List[Tuple[int, int]]] = {}
    for host, total, available in readings:
        nodes.setdefault(host, []).append((total, available))
    for host, seen in nodes.items():
        problem = host_copies_problem(
            flag, model_bytes, len(seen), min(a for _, a in seen), min(t for t, _ in seen), node=host
        )
        if problem:
            return problem
    return None


def offload_host_memory_problem(flag: str, model_bytes: int) -> Optional[str]:
    """COLLECTIVE (every process of the group calls it, with the same arguments): :func:`nodes_problem` of
    every process's host name and memory, gathered once all of them have read /proc/meminfo, so that no
    process has started to load the model while another reads, and every process returns the same answer."""
    total, available = read_meminfo()
    mine = (socket.gethostname(), total, available)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        readings: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(readings, mine)
    else:
        readings = [mine]
    return nodes_problem(flag, model_bytes, readings)


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
