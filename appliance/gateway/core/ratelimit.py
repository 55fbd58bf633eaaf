"""Per-caller rate limits: a token bucket per principal (or per client address before authentication).

In memory, per gateway process: a limit protects the tenant's services from one caller's flood, it does not
need to survive a restart. With N gateway workers a caller gets at most N times the rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int, burst_s: float = 10.0, max_callers: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        # The bucket holds `burst_s` seconds' worth of requests, so short bursts (a page load) pass.
        self.capacity = max(10.0, self.rate * burst_s)
        self.max_callers = max_callers
        self._buckets: dict[str, _Bucket] = {}

    def check(self, caller: str) -> float | None:
        """Take one request from `caller`'s bucket: None when allowed, else the seconds to wait."""
        now = time.monotonic()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= self.max_callers:
                self._prune(now)
            bucket = self._buckets[caller] = _Bucket(self.capacity, now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        # Buckets that have refilled are indistinguishable from new ones; forget them.
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.capacity]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_callers:
            self._buckets.clear()


def retry_after_header(wait_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait_s)))}
