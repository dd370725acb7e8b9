"""Live metrics of distributed replay, exported through Ray's metrics system (so they reach
Prometheus and the Ray dashboard).

Every ReplayShard publishes its buffer's stats() at most once per ``interval_s`` (the check is one
clock read per call). Exported names (Ray adds its ``ray_`` prefix), each tagged ``replay`` (the
coordinator's name) and ``shard``:

- gauges ``ray_replay_size``, ``ray_replay_capacity``, ``ray_replay_bytes_held``,
  ``ray_replay_total_priority``, ``ray_replay_inserts_per_second``, ``ray_replay_samples_per_second``,
  ``ray_replay_add_latency_p50_ns`` / ``_p99_ns``, ``ray_replay_sample_latency_p50_ns`` / ``_p99_ns``,
  ``ray_replay_restarts``;
- counters ``ray_replay_adds_total``, ``ray_replay_samples_total``, ``ray_replay_evictions_total``,
  ``ray_replay_stale_priority_updates_total``;
- the coordinator's histogram ``ray_replay_sample_seconds`` of sample latency as callers see it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = ["SampleLatencyHistogram", "ShardMetrics"]

_GAUGES = {
    "size": "rows held",
    "capacity": "rows the shard can hold",
    "bytes_held": "payload bytes of the rows held",
    "total_priority": "sum of p_i^alpha (prioritized)",
    "add_p50_ns": "median add latency in the native core (ns)",
    "add_p99_ns": "99th percentile add latency in the native core (ns)",
    "sample_p50_ns": "median sample latency in the native core (ns)",
    "sample_p99_ns": "99th percentile sample latency in the native core (ns)",
}
_COUNTERS = {
    "adds": "rows added",
    "samples": "rows sampled",
    "evictions": "rows evicted or dropped",
    "stale_priority_updates": "priority updates ignored because their row was overwritten",
}
_EXPORTED_NAME = {
    "add_p50_ns": "replay_add_latency_p50_ns",
    "add_p99_ns": "replay_add_latency_p99_ns",
    "sample_p50_ns": "replay_sample_latency_p50_ns",
    "sample_p99_ns": "replay_sample_latency_p99_ns",
}
_TAGS = ("replay", "shard")


class ShardMetrics:
    """Publishes one shard's stats as Ray metrics, rate-limited to one export per ``interval_s``."""

    def __init__(self, replay: str, shard: int, interval_s: float = 1.0) -> None:
        from ray.util import metrics

        self._tags = {"replay": replay, "shard": str(shard)}
        self._interval_s = interval_s
        self._gauges = {
            key: metrics.Gauge(_EXPORTED_NAME.get(key, f"replay_{key}"), description=text, tag_keys=_TAGS)
            for key, text in _GAUGES.items()
        }
        for key, text in (("inserts_per_second", "rows added per second"), ("samples_per_second", "rows sampled per second"),
                          ("restarts", "times this shard's actor was restarted")):
            self._gauges[key] = metrics.Gauge(f"replay_{key}", description=text, tag_keys=_TAGS)
        self._counters = {key: metrics.Counter(f"replay_{key}_total", description=text, tag_keys=_TAGS) for key, text in _COUNTERS.items()}
        self._last: dict[str, float] = {}
        self._last_time = 0.0

    def due(self) -> bool:
        return time.monotonic() - self._last_time >= self._interval_s

    def publish(self, stats: Mapping[str, Any], restarts: int = 0) -> None:
        now = time.monotonic()
        elapsed = now - self._last_time if self._last_time else 0.0
        for key, gauge in self._gauges.items():
            if key in stats:
                gauge.set(float(stats[key]), tags=self._tags)
        for key, counter in self._counters.items():
            if key in stats:
                delta = float(stats[key]) - self._last.get(key, 0.0)
                if delta > 0:
                    counter.inc(delta, tags=self._tags)
        if elapsed > 0:
            self._gauges["inserts_per_second"].set((stats["adds"] - self._last.get("adds", 0.0)) / elapsed, tags=self._tags)
            self._gauges["samples_per_second"].set((stats["samples"] - self._last.get("samples", 0.0)) / elapsed, tags=self._tags)
        self._gauges["restarts"].set(float(restarts), tags=self._tags)
        self._last = {key: float(stats[key]) for key in _COUNTERS if key in stats}
        self._last_time = now


class SampleLatencyHistogram:
    """Sample latency as the coordinator's callers see it, in seconds."""

    BOUNDARIES = [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]

    def __init__(self, replay: str) -> None:
        from ray.util import metrics

        self._tags = {"replay": replay}
        self._histogram = metrics.Histogram(
            "replay_sample_seconds", description="sample latency seen by callers (s)", boundaries=self.BOUNDARIES, tag_keys=("replay",)
        )

    def observe(self, seconds: float) -> None:
        self._histogram.observe(seconds, tags=self._tags)
