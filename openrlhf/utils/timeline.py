"""Spans of work (name, start, end in wall-clock seconds) recorded in this process while a :class:`Timeline`
records, for a picture of who computed when (the Ray trainers write every actor's spans to
``ray_timeline.json``). Outside a recording, :func:`span` costs nothing and records nothing.

    with timeline.recording() as tl:     # e.g. in a Ray actor
        ...                              # code that runs `with timeline.span("score"): ...`, or
                                         # `s = timeline.begin("policy step"); ...; timeline.end(s)`
    tl.spans                             # [(name, start, end), ...]
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, List, Optional, Tuple

Span = Tuple[str, float, float]


class Timeline:
    def __init__(self) -> None:
        self.spans: List[Span] = []

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.spans.append((name, start, time.time()))


_current: Optional[Timeline] = None


@contextlib.contextmanager
def recording() -> Iterator[Timeline]:
    """Record the spans of this process (:func:`span`) into a new :class:`Timeline` until the block ends."""
    global _current
    previous, _current = _current, Timeline()
    try:
        yield _current
    finally:
        _current = previous


def span(name: str):
    """A span of the timeline being recorded in this process (a no-op context when none is)."""
    return _current.span(name) if _current is not None else contextlib.nullcontext()


def begin(name: str) -> Optional[Tuple[Timeline, str, float]]:
    """The start of a span that :func:`end` closes (for a loop body, where a ``with`` block would not fit);
    None when nothing records."""
    return (_current, name, time.time()) if _current is not None else None


def end(started: Optional[Tuple[Timeline, str, float]]) -> None:
    """Close a span :func:`begin` opened (nothing when it returned None)."""
    if started is not None:
        tl, name, start = started
        tl.spans.append((name, start, time.time()))


def chrome_trace(spans_by_actor: List[Tuple[str, int, List[Span]]]) -> dict:
    """Spans of several actors, ``(group, rank, spans)``, as a Chrome trace (chrome://tracing, Perfetto): one
    row per actor, times in microseconds from the first span."""
    t0 = min((s[1] for _, _, spans in spans_by_actor for s in spans), default=0.0)
    events = [
        {
            "name": name,
            "ph": "X",
            "pid": group,
            "tid": rank,
            "ts": round((start - t0) * 1e6, 1),
            "dur": round((end - start) * 1e6, 1),
        }
        for group, rank, spans in spans_by_actor
        for name, start, end in spans
    ]
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"t0_unix_seconds": t0}}
