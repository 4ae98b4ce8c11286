"""What every benchmark here shares: configurations run in alternation (A B C A B C ...) so that a machine
whose speed drifts over minutes (these CPUs: ~30%) slows every configuration alike; medians with their
spread; ratios with a bootstrap interval over the repeats; the machine's matmul peak between repeats.

A ratio whose interval holds 1 is reported as "no measurable difference"."""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple


def schedule(configs: Sequence[str], repeats: int) -> List[Tuple[int, str]]:
    """(repeat, configuration) in the order they run: every repeat runs every configuration once, the
    order rotated by one each repeat (so no configuration always runs first, after a cold start)."""
    out = []
    for r in range(repeats):
        k = r % len(configs)
        out += [(r, c) for c in list(configs[k:]) + list(configs[:k])]
    return out


def spread(values: Sequence[float]) -> Dict[str, float]:
    """Median, min, max and count."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio_interval(
    a: Sequence[float], b: Sequence[float], *, n: int = 4000, level: float = 0.95, seed: int = 0
) -> Tuple[float, float, float]:
    """median(a) / median(b) and its bootstrap interval (each sample resampled with replacement)."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b))) for _ in range(n)
    )
    lo = ratios[int((1 - level) / 2 * n)]
    hi = ratios[min(n - 1, int((1 + level) / 2 * n))]
    return statistics.median(a) / statistics.median(b), lo, hi


def describe_ratio(label: str, a: Sequence[float], b: Sequence[float]) -> str:
    """One line: the ratio, its 95% interval, and "no measurable difference" when the interval holds 1."""
    r, lo, hi = ratio_interval(a, b)
    verdict = "no measurable difference" if lo <= 1 <= hi else ("higher" if lo > 1 else "lower")
    return f"{label}: {r:.2f}x [95% interval {lo:.2f}, {hi:.2f}] over {len(a)} x {len(b)} repeats: {verdict}"


def matmul_peak_flops(dtype: str = "fp32", size: int = 2048, reps: int = 8) -> float:
    """FLOP/s of a square matmul in ``dtype`` on this process's device and threads (best of ``reps``;
    8192 x 8192 on a GPU)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        size = 8192
    t = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a, b = torch.randn(size, size, device=dev, dtype=t), torch.randn(size, size, device=dev, dtype=t)
    a @ b
    best = float("inf")
    for _ in range(reps):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def run_interleaved(
    configs: Sequence[str],
    repeats: int,
    run_one: Callable[[str, int], Dict],
    log=print,
    peak: Callable[[], float] = lambda: matmul_peak_flops(size=1024, reps=4),
) -> Dict[str, List[Dict]]:
    """Run ``run_one(config, repeat)`` in :func:`schedule` order; each result gets the matmul peak
    (``peak()``, FLOP/s) measured just before it, as ``peak_gflops``. Returns the results per configuration."""
    results: Dict[str, List[Dict]] = {c: [] for c in configs}
    for r, c in schedule(configs, repeats):
        gflops = peak() / 1e9
        res = dict(run_one(c, r))
        res["peak_gflops"] = round(gflops, 1)
        results[c].append(res)
        log(
            f"[repeat {r + 1}/{repeats}] {c}: "
            + ", ".join(f"{k} {v}" for k, v in res.items() if isinstance(v, (int, float)))
        )
    return results
