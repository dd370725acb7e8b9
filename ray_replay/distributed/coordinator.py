"""ReplayCoordinator: the Ray actor that owns the shards, routes adds and samples globally over them.

It is an *async* actor: every call is I/O-bound (route, then await shard replies), so one event loop
interleaves adds, samples and priority updates without threads, without locks around the cached
shard snapshots and without GIL contention between handler threads. Ray runs up to 1000 calls of an
async actor at once, so a sample waiting for its shards never holds up an add.

Single-row ``add`` calls are validated at once by a small local staging buffer of the same schema
(the very code the shards run, so the caller gets the same ValueError/TypeError) and then sent to the
shards in batches: a Ray call per row to a shard would double the per-row cost. Staged rows reach the
shards within ``flush_interval_s``, and before any sample, size or stats call of this coordinator.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ray_replay.buffer import BUFFER_TYPES, ReplayBuffer
from ray_replay.distributed.sampling import RateLimiter, ShardTable, split_capacity, split_ids
from ray_replay.distributed.shard import ReplayShard
from ray_replay.monitoring import SampleLatencyHistogram

__all__ = ["ReplayCoordinator", "check_batch_size", "check_beta"]

PLACEMENTS = ("spread", "pack")


def check_batch_size(batch_size: Any, capacity: int) -> int:
    """The local buffer's batch_size rules, checked before any shard is asked."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if batch_size > capacity:
        raise ValueError(f"batch_size {batch_size} exceeds the capacity {capacity}")
    return int(batch_size)


def check_beta(beta: Any, default: float) -> float:
    if beta is None:
        return default
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)):
        raise TypeError(f"beta must be a number, got {type(beta).__name__}")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return float(beta)


@ray.remote
class ReplayCoordinator:
    """A replay of ``capacity`` rows in ``num_shards`` ReplayShard actors spread over the cluster.

    Args:
        capacity: total rows; each shard holds capacity // num_shards (the remainder goes to the first).
        num_shards: number of ReplayShard actors.
        buffer_type: "uniform", "fifo", "prioritized" or "lockfree", with the local buffer's semantics.
        alpha, beta, seed, buffer_kwargs: as for ReplayBuffer (schema, eps, sampling, on_full,
            collect_stats); shard k is seeded from ``seed`` and k.
        min_size_to_sample, samples_per_insert, error_buffer, sample_timeout_s: the RateLimiter.
        staging_rows: single-row adds are sent to shards in batches of this many rows.
        flush_interval_s: staged rows are sent at the latest this long after they arrive.
        shard_options: extra ``ReplayShard.options(...)`` (num_cpus, resources, scheduling_strategy...).
        placement: "spread" (a SPREAD placement group of one bundle per shard, {"CPU": num_cpus of
            shard_options, default 0.01}: shards on different nodes where possible) or "pack" (Ray's
            default scheduling). A scheduling_strategy in shard_options overrides either.
        metrics: export live metrics through Ray's metrics system (Prometheus, dashboard), tagged
            with this coordinator's actor name (or "replay" when it has none); see ray_replay.monitoring.
    """

    def __init__(
        self,
        capacity: int,
        num_shards: int = 2,
        buffer_type: str = "uniform",
        *,
        alpha: float = 0.6,
        beta: float = 0.4,
        seed: int | None = None,
        min_size_to_sample: int = 0,
        samples_per_insert: float | None = None,
        error_buffer: float = 0.0,
        sample_timeout_s: float = 60.0,
        staging_rows: int = 256,
        flush_interval_s: float = 0.05,
        shard_options: Mapping[str, Any] | None = None,
        placement: str = "spread",
        metrics: bool = True,
        **buffer_kwargs: Any,
    ) -> None:
        capacities = split_capacity(capacity, num_shards)
        if buffer_type not in BUFFER_TYPES:
            raise ValueError(f"buffer_type must be one of {', '.join(map(repr, BUFFER_TYPES))}; got {buffer_type!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if not (isinstance(staging_rows, int) and staging_rows > 0):
            raise ValueError(f"staging_rows must be an int > 0, got {staging_rows!r}")
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s!r}")
        self._limiter = RateLimiter(min_size_to_sample, samples_per_insert, error_buffer, sample_timeout_s)
        # Fails here, with the local buffer's message, for any bad buffer argument.
        ReplayBuffer(1, buffer_type, alpha=alpha, beta=beta, seed=seed, **buffer_kwargs)
        self._capacity = int(capacity)
        self._buffer_type = buffer_type
        self._beta = float(beta)
        self._schema = buffer_kwargs.get("schema")
        seeds = np.random.SeedSequence(seed)
        shard_seeds = [int(s.generate_state(1, np.uint64)[0]) for s in seeds.spawn(num_shards)]
        self._rng = np.random.default_rng(seeds.spawn(1)[0])
        self._placement_group = None
        options = dict(shard_options or {})
        if placement == "spread" and "scheduling_strategy" not in options:
            # A SPREAD placement group: the GCS places all bundles with a whole-cluster view, which
            # spreads shards over nodes reliably (SPREAD scheduling of single actors does not).
            options.setdefault("num_cpus", 0.01)  # a bundle must hold something; shards mostly wait on I/O
            bundle = {"CPU": options["num_cpus"], **options.get("resources", {})}
            self._placement_group = placement_group([bundle] * num_shards, strategy="SPREAD")
        metrics_name = (ray.get_runtime_context().get_actor_name() or "replay") if metrics else None
        self._sample_latency = SampleLatencyHistogram(metrics_name) if metrics_name else None
        self._recent_sample_s: deque[float] = deque(maxlen=1000)  # for the p50/p99 of stats()
        self._previous_totals: tuple[float, int, int] | None = None  # (time, adds, samples) at the last stats()
        self._shards = [
            ReplayShard.options(**options, **self._bundle(k)).remote(
                k, cap, buffer_type, alpha=alpha, beta=beta, seed=s, metrics_name=metrics_name, **buffer_kwargs
            )
            for k, (cap, s) in enumerate(zip(capacities, shard_seeds))
        ]
        self._table = ShardTable(num_shards, buffer_type)
        self._next_shard = 0
        self._staging: ReplayBuffer | None = None
        self._staged_priorities: list[float] = []
        self._staging_rows = staging_rows
        self._flush_interval_s = flush_interval_s
        self._flusher: asyncio.Task[None] | None = None
        self._flush_error: BaseException | None = None

    def _bundle(self, k: int) -> dict[str, Any]:
        if self._placement_group is None:
            return {}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self._placement_group, placement_group_bundle_index=k)}

    # -- routing -----------------------------------------------------------------------------------

    def _route(self) -> int:
        """Round robin, skipping to the emptiest shard when one is far behind (e.g. after a restart)."""
        k = self._next_shard
        self._next_shard = (k + 1) % len(self._shards)
        sizes = [s.size for s in self._table.snapshots]
        emptiest = int(np.argmin(sizes))
        return emptiest if sizes[k] - sizes[emptiest] > self._staging_rows * 16 else k

    async def add(self, *fields: Any, priority: Any = None, **named: Any) -> None:
        """One transition: validated now (same errors as a local buffer), written within flush_interval_s."""
        if priority is not None and self._buffer_type != "prioritized":
            raise ValueError(f"priority is only supported by buffer_type='prioritized' (this buffer is '{self._buffer_type}')")
        if priority is not None:
            value = _check_priority(priority)
        if self._flush_error is not None:
            error, self._flush_error = self._flush_error, None
            raise error
        if self._staging is None:
            await self._create_staging()
        # Staged rows go out in runs that all have, or all lack, explicit priorities (a loop: other
        # adds may stage rows while a flush awaits its shard).
        while len(self._staging) and (priority is None) != (not self._staged_priorities):
            await self._flush()
        self._staging.add(*fields, **named)
        if priority is not None:
            self._staged_priorities.append(value)
        if len(self._staging) >= self._staging_rows:
            await self._flush()
        elif self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def add_batch(self, *columns: Any, priorities: Any = None, **named: Any) -> int:
        """Rows along the leading axis, all to one shard (which validates them whole); returns the shard."""
        k = self._route()
        kwargs = named if priorities is None else {**named, "priorities": priorities}
        snapshot = await self._shards[k].add_batch.remote(*columns, **kwargs)
        self._table.update(k, snapshot)
        return k

    async def _create_staging(self) -> None:
        if self._schema is None:
            for schema in await asyncio.gather(*[shard.schema.remote() for shard in self._shards]):
                if schema:
                    self._schema = schema
                    break
        if self._staging is None:  # another add may have created it while the schemas were fetched
            self._staging = ReplayBuffer(self._staging_rows, "fifo", schema=self._schema, collect_stats=False)

    async def _flush(self) -> None:
        if self._staging is None or not len(self._staging):
            return
        columns = self._staging.sample(len(self._staging))
        if self._schema is None:
            self._schema = self._staging.schema
        if self._staged_priorities:
            columns["priorities"] = np.asarray(self._staged_priorities)
            self._staged_priorities = []
        k = self._route()
        self._table.update(k, await self._shards[k].add_batch.remote(**columns))

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self._flush()
            except Exception as error:  # surfaces at the next add
                self._flush_error = error

    # -- sampling ----------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        replies = await asyncio.gather(*[shard.sample.remote(0) for shard in self._shards])
        for k, (_, snapshot) in enumerate(replies):
            self._table.update(k, snapshot)

    async def _admit(self, batch_size: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._limiter.timeout_s
        delay = 0.001
        while (reason := self._limiter.blocked(self._table, batch_size)) is not None:
            if loop.time() >= deadline:
                raise TimeoutError(f"sample({batch_size}) not allowed after {self._limiter.timeout_s} s: {reason}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            await self._flush()
            await self._refresh()

    async def sample(self, batch_size: int, beta: float | None = None, partial: bool = False) -> dict[str, np.ndarray]:
        """One batch over all shards; prioritized adds global "weights", "ids" and "probabilities".

        Prioritized, uniform and lockfree: rows per shard ~ Multinomial(batch_size, mass or size share).
        fifo: pops the oldest rows of each shard, in proportion to the shard sizes (see fifo_counts);
        ``partial`` as for the local fifo buffer.
        """
        start = time.perf_counter()
        batch = await self._sample(batch_size, beta, partial)
        elapsed = time.perf_counter() - start
        self._recent_sample_s.append(elapsed)
        if self._sample_latency is not None:
            self._sample_latency.observe(elapsed)
        return batch

    async def _sample(self, batch_size: int, beta: float | None, partial: bool) -> dict[str, np.ndarray]:
        batch_size = check_batch_size(batch_size, self._capacity)
        beta = check_beta(beta, self._beta)
        await self._flush()
        # One round trip per sample: every shard answers each round (rows or just its snapshot), so
        # the cached masses plan the next round. Only fifo (exact sizes matter) or a cache that says
        # "empty" (rows may have come straight from clients) costs a refresh first.
        if self._buffer_type == "fifo" or self._table.total_mass == 0:
            await self._refresh()
        await self._admit(batch_size)
        if self._buffer_type == "fifo":
            return await self._pop(batch_size, partial)
        counts = self._table.plan(self._rng, batch_size)
        replies = await asyncio.gather(*[shard.sample.remote(int(c)) for shard, c in zip(self._shards, counts)])
        for k, (_, snapshot) in enumerate(replies):
            self._table.update(k, snapshot)
        return self._table.merge([part for part, _ in replies], beta)

    async def _pop(self, batch_size: int, partial: bool) -> dict[str, np.ndarray]:
        held = self._table.size
        if held == 0:
            raise ValueError("cannot sample from an empty buffer")
        if held < batch_size and not partial:
            raise ValueError(f"batch_size {batch_size} exceeds the {held} rows in the fifo buffer (pass partial=True to take them all)")
        parts: list[dict[str, np.ndarray] | None] = []
        wanted = batch_size
        for _ in range(2):  # a second round only when other consumers popped rows meanwhile
            counts = self._table.plan(self._rng, wanted)
            replies = await asyncio.gather(*[shard.sample.remote(int(c), None, True) for shard, c in zip(self._shards, counts)])
            for k, (part, snapshot) in enumerate(replies):
                self._table.update(k, snapshot)
                if part is not None:
                    parts.append(part)
                    wanted -= len(next(iter(part.values())))
            if wanted == 0 or self._table.size == 0:
                break
        return self._table.merge(parts, 0.0)

    async def update_priorities(self, ids: Any, priorities: Any) -> None:
        """Sends each id to the shard it came from; stale ids are ignored and counted there."""
        groups = split_ids(ids, priorities, len(self._shards))
        snapshots = await asyncio.gather(*[self._shards[k].update_priorities.remote(i, p) for k, i, p in groups])
        for (k, _, _), snapshot in zip(groups, snapshots):
            self._table.update(k, snapshot)

    # -- inspection and lifetime -------------------------------------------------------------------

    async def size(self) -> int:
        await self._flush()
        await self._refresh()
        return self._table.size

    async def stats(self) -> dict[str, Any]:
        """{"shards": [per-shard stats with "node_id", "pid", "restarts"], "total": summed counters,
        global masses, inserts/s and samples/s since the previous stats() call, and the p50/p99 of
        the latest 1,000 sample() calls as callers saw them (``sample_latency_p50_ms``, ``_p99_ms``)}."""
        await self._flush()
        shard_stats, nodes = await asyncio.gather(
            asyncio.gather(*[shard.stats.remote() for shard in self._shards]),
            asyncio.gather(*[shard.node_id.remote() for shard in self._shards]),
        )
        for s, node in zip(shard_stats, nodes):
            s["node_id"] = node
        total: dict[str, Any] = {"buffer_type": self._buffer_type, "num_shards": len(self._shards)}
        for key in ("size", "capacity", "adds", "samples", "sample_calls", "evictions", "rejected", "bytes_held", "bytes_reserved"):
            total[key] = sum(s[key] for s in shard_stats)
        if self._buffer_type == "prioritized":
            for key in ("priority_updates", "stale_priority_updates"):
                total[key] = sum(s[key] for s in shard_stats)
            total["total_priority"] = math.fsum(s["total_priority"] for s in shard_stats)
            positive = [s["min_priority"] for s in shard_stats if s["min_priority"] > 0]
            total["min_priority"] = min(positive) if positive else 0.0
            total["max_priority"] = max(s["max_priority"] for s in shard_stats)
        total["restarts"] = sum(s["restarts"] for s in shard_stats)
        now = time.monotonic()
        if self._previous_totals is not None and now > self._previous_totals[0]:
            then, adds, samples = self._previous_totals
            total["inserts_per_second"] = (total["adds"] - adds) / (now - then)
            total["samples_per_second"] = (total["samples"] - samples) / (now - then)
        self._previous_totals = (now, total["adds"], total["samples"])
        if self._recent_sample_s:
            p50, p99 = np.percentile(np.fromiter(self._recent_sample_s, float), [50, 99]) * 1e3
            total["sample_latency_p50_ms"], total["sample_latency_p99_ms"] = float(p50), float(p99)
        return {"shards": shard_stats, "total": total}

    def shard_handles(self) -> list[Any]:
        return list(self._shards)

    async def client_config(self) -> dict[str, Any]:
        """What a ReplayClient needs to work without this coordinator: shard map, type, limits, schema."""
        await self._flush()
        await self._refresh()
        return {
            "shards": list(self._shards),
            "buffer_type": self._buffer_type,
            "capacity": self._capacity,
            "beta": self._beta,
            "limiter": self._limiter,
            "snapshots": list(self._table.snapshots),
            "schema": self._schema,
        }

    async def shutdown(self) -> None:
        """Flushes staged rows, then kills the shards (their rows are gone); the coordinator stays up."""
        if self._flusher is not None:
            self._flusher.cancel()
        await self._flush()
        for shard in self._shards:
            ray.kill(shard)
        self._shards = []
        if self._placement_group is not None:
            remove_placement_group(self._placement_group)
            self._placement_group = None


def _check_priority(priority: Any) -> float:
    try:
        value = float(priority)
    except (TypeError, ValueError):
        raise TypeError(f"priority must be a number, got {type(priority).__name__}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"priority[0] = {value}: priorities must be finite and >= 0")
    return value

