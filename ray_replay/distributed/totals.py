"""The replay-wide totals of a coordinator's stats(): per-shard counters summed, global masses, rates
between two stats() calls and the latency of recent samples. Ray-free and pure (tested without Ray)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SUMMED", "Totals"]

# Per-shard counters that add up over shards (every shard's stats() has them).
SUMMED = ("size", "capacity", "adds", "samples", "sample_calls", "evictions", "rejected", "bytes_held", "bytes_reserved")
PRIORITIZED_SUMMED = ("priority_updates", "stale_priority_updates")


class Totals:
    """Keeps what totals need between calls: the previous (time, adds, samples) for the rates and the
    latencies of the latest ``window`` samples as callers saw them."""

    def __init__(self, window: int = 1000) -> None:
        self.recent_sample_s: deque[float] = deque(maxlen=window)
        self._previous: tuple[float, int, int] | None = None

    def observe_sample(self, seconds: float) -> None:
        self.recent_sample_s.append(seconds)

    def __call__(self, shard_stats: Sequence[Mapping[str, Any]], buffer_type: str, **extra: Any) -> dict[str, Any]:
        """The "total" of stats(): ``extra`` (the coordinator's own counters) first, then the sums over the
        shards that answered (a shard that did not answer has no "adds"), "live_shards", "restarts" (of
        primaries and backups), prioritized masses, inserts/s and samples/s since the previous call, and
        ``sample_latency_p50_ms`` / ``_p99_ms`` once a sample was observed."""
        answered = [s for s in shard_stats if "adds" in s]
        total: dict[str, Any] = {"buffer_type": buffer_type, "num_shards": len(shard_stats),
                                 "live_shards": sum(s["state"] == "alive" for s in shard_stats), **extra}
        for key in SUMMED:
            total[key] = sum(s[key] for s in answered)
        if buffer_type == "prioritized":
            for key in PRIORITIZED_SUMMED:
                total[key] = sum(s[key] for s in answered)
            total["total_priority"] = math.fsum(s["total_priority"] for s in answered)
            positive = [s["min_priority"] for s in answered if s["min_priority"] > 0]
            total["min_priority"] = min(positive) if positive else 0.0
            total["max_priority"] = max((s["max_priority"] for s in answered), default=0.0)
        total["restarts"] = sum(s["restarts"] + (s["backup"]["restarts"] if "backup" in s else 0) for s in shard_stats)
        # Checkpoint writes that failed (disk full, read-only, ...) on any replica that answered: the
        # replica kept serving; its previous checkpoint still restores. Each replica's last error is in its stats.
        total["checkpoint_failures"] = sum(s.get("checkpoint_failures", 0) + (s["backup"].get("checkpoint_failures", 0) if "backup" in s else 0)
                                           for s in shard_stats)
        now = time.monotonic()
        if self._previous is not None and now > self._previous[0]:
            then, adds, samples = self._previous
            total["inserts_per_second"] = (total["adds"] - adds) / (now - then)
            total["samples_per_second"] = (total["samples"] - samples) / (now - then)
        self._previous = (now, total["adds"], total["samples"])
        if self.recent_sample_s:
            p50, p99 = np.percentile(np.fromiter(self.recent_sample_s, float), [50, 99]) * 1e3
            total["sample_latency_p50_ms"], total["sample_latency_p99_ms"] = float(p50), float(p99)
        return total
