"""Retrying HTTP requests to a server: which failures are worth another try, and how long to wait."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Callable

# HTTP statuses worth another try besides 5xx: request timeout, conflict, rate limit.
RETRY_STATUS = (408, 409, 429)
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 300.0


def retry_wait(attempt: int, headers=None, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt + 1``: the server's ``retry-after-ms`` /
    ``Retry-After`` (seconds or an HTTP date; at most 5 minutes) when it sends one, else 2**attempt
    seconds (at most 30); either one stretched by a random factor 1.0-1.5 (jitter)."""
    asked = None
    if headers is not None:
        ms, after = headers.get("retry-after-ms"), headers.get("retry-after")
        try:
            if ms is not None:
                asked = float(ms) / 1000.0
            elif after is not None:
                try:
                    asked = float(after)
                except ValueError:
                    when = email.utils.parsedate_to_datetime(after)
                    asked = when.timestamp() - time.time()
        except (TypeError, ValueError):
            asked = None
    base = min(max(asked, 0.0), MAX_RETRY_AFTER_S) if asked is not None else min(2.0**attempt, MAX_BACKOFF_S)
    return base * (1.0 + 0.5 * rng())
