"""Statistics over prompts for the evaluation reports (numpy only).

- :func:`bootstrap_ci`: the mean of per-prompt values and its percentile bootstrap 95% interval
  (prompts resampled with replacement); with ``weights``, the weighted mean (a per-prompt fraction
  weighted by its count is the pooled ratio, e.g. IFEval's instruction-level accuracy).
- :func:`paired_comparison`: two models on the same prompts: wins / ties / losses of the first
  (by the metric's direction), the mean difference with its paired bootstrap interval, the
  two-sided exact sign test over the non-tied prompts and a two-sided sign-flip permutation test of
  the mean difference.

Every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np


def _clean(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return x[np.isfinite(x)]


def _weights(values: Sequence[float], weights: Sequence[float]) -> np.ndarray:
    """The weights of the values :func:`_clean` keeps."""
    if len(weights) != len(values):
        raise ValueError(f"{len(weights)} weights for {len(values)} values")
    keep = [w for v, w in zip(values, weights, strict=True) if v is not None and math.isfinite(v)]
    w = np.asarray(keep, dtype=np.float64)
    if (w <= 0).any():
        raise ValueError("weights must be > 0")
    return w


def bootstrap_ci(
    values: Sequence[float],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    weights: Optional[Sequence[float]] = None,
) -> Dict[str, float]:
    """{"mean", "lo", "hi", "n"}: the mean of ``values`` (None / non-finite left out) and its percentile
    bootstrap interval at ``level``; with ``weights`` (one per value, > 0) the weighted mean
    sum(w x) / sum(w), each resample weighted the same way."""
    x = _clean(values)
    if len(x) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    if weights is None:
        mean, means = x.mean(), x[idx].mean(axis=1)
    else:
        w = _weights(values, weights)
        mean, means = (w * x).sum() / w.sum(), (w[idx] * x[idx]).sum(axis=1) / w[idx].sum(axis=1)
    a = (1 - level) / 2
    return {
        "mean": float(mean),
        "lo": float(np.quantile(means, a)),
        "hi": float(np.quantile(means, 1 - a)),
        "n": int(len(x)),
    }


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact binomial (p = 1/2) test of wins vs losses (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(
    a: Sequence[float],
    b: Sequence[float],
    higher_is_better: bool = True,
    tie_tol: float = 1e-9,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
    weights: Optional[Sequence[float]] = None,
) -> Dict[str, float]:
    """Model A against model B on the same prompts (``a[i]``, ``b[i]``: the metric on prompt i; a pair with
    a None / non-finite side is left out). ``wins``: prompts where A is better by more than ``tie_tol``.
    ``diff``: mean of A - B with its paired bootstrap interval (``diff_lo``, ``diff_hi``). ``p_sign``: exact
    sign test; ``p_perm``: sign-flip permutation test of the mean difference. ``weights`` (one per prompt,
    > 0): ``diff`` and both tests use the weighted mean of A - B (see :func:`bootstrap_ci`)."""
    if weights is not None and len(weights) != len(a):
        raise ValueError(f"{len(weights)} weights for {len(a)} prompts")
    kept = [
        (x, y, 1.0 if weights is None else weights[i])
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    d = np.asarray([x - y for x, y, _ in kept], dtype=np.float64)
    w = np.asarray([v for _, _, v in kept], dtype=np.float64)
    if len(d) == 0:
        return {
            "n": 0,
            "wins": 0,
            "ties": 0,
            "losses": 0,
            "diff": float("nan"),
            "diff_lo": float("nan"),
            "diff_hi": float("nan"),
            "p_sign": 1.0,
            "p_perm": 1.0,
        }
    better = d if higher_is_better else -d
    wins, losses = int((better > tie_tol).sum()), int((better < -tie_tol).sum())
    ci = bootstrap_ci(d, n_boot=n_boot, seed=seed, weights=None if weights is None else w)
    rng = np.random.default_rng(seed + 1)
    flips = rng.choice([-1.0, 1.0], size=(n_perm, len(d)))
    if weights is None:
        observed, flipped = abs(d.mean()), np.abs((flips * d).mean(axis=1))
    else:
        observed, flipped = abs((w * d).sum() / w.sum()), np.abs((flips * w * d).sum(axis=1) / w.sum())
    p_perm = float(((flipped >= observed - 1e-15).sum() + 1) / (n_perm + 1))
    return {
        "n": int(len(d)),
        "wins": wins,
        "ties": int(len(d)) - wins - losses,
        "losses": losses,
        "diff": ci["mean"],
        "diff_lo": ci["lo"],
        "diff_hi": ci["hi"],
        "p_sign": sign_test_p(wins, losses),
        "p_perm": p_perm,
    }
