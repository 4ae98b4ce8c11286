"""ZeRO 0-2 offload of a frozen model (reference / teacher): its weights kept in CPU memory and streamed to
the device block by block for each forward. torch only."""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn


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
