"""ReplayCoordinator: the Ray actor that owns the shards, routes adds and samples globally over them.

A plain class, ReplayCoordinatorImpl (tested without Ray in tests/test_coordinator_impl.py, its shards
behind fake handles), and its actor, ReplayCoordinator, as for the shards. The rooms it uses:
placement.py (where shards run), shard_set.py (the replicas' health, snapshots, monitor and refill),
shard_writes.py (its writes: runs over the shards, retry, staging; the rules are writes.py's, shared
with ReplayClient), shard_reads.py (its samples, fifo pops and priority updates; the maths is
sampling.py's, shared too), totals.py (the replay-wide stats). This class wires them together and
holds the Ray-specific part (naming, placement, spawning; a test without Ray overrides those).

It is an *async* actor: every call is I/O-bound (route, then await shard replies), so one event loop
interleaves adds, samples and priority updates without threads, without locks around the cached
shard snapshots and without GIL contention between handler threads. Ray runs up to 1000 calls of an
async actor at once, so a sample waiting for its shards never holds up an add.

Single-row ``add`` calls are validated at once by a small local staging buffer of the same schema
(the very code the shards run, so the caller gets the same ValueError/TypeError) and then sent to the
shards in batches: a Ray call per row to a shard would double the per-row cost. Staged rows reach the
shards within ``flush_interval_s``, and before any sample, size or stats call of this coordinator.

Failures: a shard call that fails because the shard is gone marks it down (see health.py). Writes go
to the next live shard (each write tries every shard at most once, waiting up to ``shard_timeout_s``
for one to come back before ShardUnavailableError); samples come from the live shards only (a sample
then represents the live shards' rows, and weights are normalized over them); priority updates for a
down shard are dropped and counted. A monitor probes every shard each ``health_check_interval_s``:
a shard that answers again rejoins, after being copied from its replica when it restarted.

Replication (``replication_factor=2``): every shard has a backup actor on another node (a
STRICT_SPREAD placement group per pair, when the cluster has two nodes or more). Writes go to both and
are acknowledged once one of them holds the rows; priority updates go to both; samples come from the
primary only, so the sampling distribution is that of one copy. A restarted replica is refilled from
the other one (both fenced while the state is copied), so no acknowledged row is lost when one node
dies. A named coordinator's shards are named, detached actors: a coordinator started again under the
same name (after it died, or restarted by Ray) finds and keeps them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray

from ray_replay.buffer import BUFFER_TYPES, BufferType, ReplayBuffer
from ray_replay.distributed.health import ShardUnavailableError
from ray_replay.distributed.placement import PLACEMENTS, ROLES, bundle_options, make_placement, remove_placement, shard_actor_name
from ray_replay.distributed.sampling import RateLimiter, sequence_options, split_capacity
from ray_replay.distributed.shard import ReplayShard
from ray_replay.distributed.shard_reads import ShardReads
from ray_replay.distributed.shard_set import ShardSet
from ray_replay.distributed.shard_writes import ShardWrites
from ray_replay.distributed.totals import Totals
from ray_replay.distributed.writes import (
    check_batch_size,
    check_beta,
    check_count,
    check_priority,
    check_seconds,
    require_prioritized,
)
from ray_replay.monitoring import SampleLatencyHistogram
from ray_replay.nested import flat_buffer_kwargs

__all__ = ["ReplayCoordinator", "ReplayCoordinatorImpl", "check_batch_size", "check_beta"]


class ReplayCoordinatorImpl:
    """A replay of ``capacity`` rows in ``num_shards`` ReplayShard actors spread over the cluster.

    Args:
        capacity: total rows; each shard holds capacity // num_shards (the remainder goes to the first).
        num_shards: number of ReplayShard actors.
        buffer_type: "uniform", "fifo", "prioritized" or "lockfree", with the local buffer's semantics.
        alpha, beta, seed, buffer_kwargs: as for ReplayBuffer (schema, eps, sampling, on_full,
            collect_stats); shard k is seeded from ``seed`` and k.
        min_size_to_sample, samples_per_insert, error_buffer, sample_timeout_s: the RateLimiter.
        batch_rows: single-row adds are sent to shards in batches of this many rows (the name of
            ReplayClient's same option; ``staging_rows``, its former name here, is still accepted).
        flush_interval_s: staged rows are sent at the latest this long after they arrive.
        shard_options: extra ``ReplayShard.options(...)`` (num_cpus, resources, scheduling_strategy...).
        placement: "spread" (a SPREAD placement group of one bundle per shard, {"CPU": num_cpus of
            shard_options, default 0.01}: shards on different nodes where possible) or "pack" (Ray's
            default scheduling). A scheduling_strategy in shard_options overrides either.
        metrics: export live metrics through Ray's metrics system (Prometheus, dashboard), tagged
            with this coordinator's actor name (or "replay" when it has none); see ray_replay.monitoring.
        replication_factor: 1, or 2 for a backup of every shard on another node (see the module doc).
        checkpoint_dir: every shard (and backup) checkpoints to ``<dir>/<name>-<role>-<k>.rrb`` (name:
            the coordinator's actor name, or "replay"), every ``checkpoint_every_s`` seconds or
            ``checkpoint_every_adds`` rows, and starts from that file when Ray restarts it. A shared
            file system path lets a shard restart on another node.
        shard_timeout_s: a shard call unanswered this long counts as a failure; also how long a write
            waits for some shard to come back when none is live.
        health_check_interval_s: how often the monitor probes the shards.

    Shards restart when their process dies (``max_restarts=-1`` unless shard_options says otherwise).
    """

    def __init__(
        self,
        capacity: int,
        num_shards: int = 2,
        buffer_type: BufferType = "uniform",
        *,
        alpha: float = 0.6,
        beta: float = 0.4,
        seed: int | None = None,
        min_size_to_sample: int = 0,
        samples_per_insert: float | None = None,
        error_buffer: float = 0.0,
        sample_timeout_s: float = 60.0,
        batch_rows: int = 256,
        flush_interval_s: float = 0.05,
        shard_options: Mapping[str, Any] | None = None,
        placement: str = "spread",
        metrics: bool = True,
        replication_factor: int = 1,
        checkpoint_dir: str | None = None,
        checkpoint_every_s: float | None = None,
        checkpoint_every_adds: int | None = None,
        shard_timeout_s: float = 5.0,
        health_check_interval_s: float = 0.5,
        staging_rows: int | None = None,
        **buffer_kwargs: Any,
    ) -> None:
        if staging_rows is not None:  # the former name of batch_rows
            if batch_rows != 256 and batch_rows != staging_rows:
                raise ValueError(f"batch_rows={batch_rows!r} and staging_rows={staging_rows!r} (its former name) disagree")
            batch_rows = staging_rows
        capacities = split_capacity(capacity, num_shards)
        if buffer_type not in BUFFER_TYPES:
            raise ValueError(f"buffer_type must be one of {', '.join(map(repr, BUFFER_TYPES))}; got {buffer_type!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        batch_rows = check_count("batch_rows", batch_rows, 1)
        flush_interval_s, shard_timeout_s, health_check_interval_s = (check_seconds(name, value) for name, value in (
            ("flush_interval_s", flush_interval_s), ("shard_timeout_s", shard_timeout_s), ("health_check_interval_s", health_check_interval_s)))
        if replication_factor not in (1, 2) or isinstance(replication_factor, bool):
            raise ValueError(f"replication_factor must be 1 or 2, got {replication_factor!r}")
        if checkpoint_dir is not None and checkpoint_every_s is None and checkpoint_every_adds is None:
            raise ValueError("checkpoint_dir needs checkpoint_every_s or checkpoint_every_adds")
        limiter = RateLimiter(min_size_to_sample, samples_per_insert, error_buffer, sample_timeout_s)
        # Fails here, with the local buffer's message, for any bad buffer argument.
        ReplayBuffer(1, buffer_type, alpha=alpha, beta=beta, seed=seed, **buffer_kwargs)
        # Nested fields: shards hold the flat leaf columns; this coordinator and every ReplayClient
        # (through client_config) flatten writes and rebuild samples with the layout.
        buffer_kwargs, self._layout = flat_buffer_kwargs(buffer_kwargs)
        # With a schema given, every shard's buffer has it from the start: clients may then send the
        # codec fields compressed, as the shards store them (ReplayClient, writes.compress_codec_fields).
        self._codecs = ReplayBuffer(1, buffer_type, **buffer_kwargs).codecs if buffer_kwargs.get("schema") is not None else {}
        self._capacity = int(capacity)
        self._buffer_type = buffer_type
        self._beta = float(beta)
        seeds = np.random.SeedSequence(seed)
        shard_seeds = [int(s.generate_state(1, np.uint64)[0]) for s in seeds.spawn(num_shards)]
        self._name, self._namespace = self._identity()
        roles = ROLES[:replication_factor]
        self._replication = replication_factor
        self._timeout_s = float(shard_timeout_s)
        options = dict(shard_options or {})
        options.setdefault("max_restarts", -1)
        self._placement_groups = self._place(placement, options, num_shards, replication_factor)
        metrics_name = (self._name or "replay") if metrics else None
        self._sample_latency = SampleLatencyHistogram(metrics_name) if metrics_name else None
        self._totals = Totals()
        self._metadata: dict[str, Any] = {}  # set_metadata: first value per key wins
        durability: dict[str, Any] = {}
        if checkpoint_dir is not None:
            durability = {"checkpoint_every_s": checkpoint_every_s, "checkpoint_every_adds": checkpoint_every_adds}
        replicas: dict[str, list[Any]] = {}
        for role in roles:
            replicas[role] = []
            for k, (cap, s) in enumerate(zip(capacities, shard_seeds)):
                if checkpoint_dir is not None:
                    durability["checkpoint_path"] = str(Path(checkpoint_dir) / f"{self._name or 'replay'}-{role}-{k}.rrb")
                replicas[role].append(self._spawn(role, k, options, (k, cap, buffer_type), {
                    "alpha": alpha, "beta": beta, "seed": s, "metrics_name": metrics_name if role == "shard" else None,
                    **durability, **buffer_kwargs}))
        self._set = ShardSet(replicas, buffer_type, restartable=options["max_restarts"] != 0, timeout_s=self._timeout_s,
                             health_interval_s=float(health_check_interval_s))
        self._writes = ShardWrites(self._set, capacities, buffer_kwargs.get("schema"), batch_rows=batch_rows,
                                   flush_interval_s=flush_interval_s, timeout_s=self._timeout_s)
        self._reads = ShardReads(self._set, buffer_type, limiter, np.random.default_rng(seeds.spawn(1)[0]), timeout_s=self._timeout_s,
                                 beta=self._beta, sequence_eta=float(buffer_kwargs.get("sequence_priority_eta", 0.9)), flush=self._writes.flush)

    # -- where the shards run (the Ray-specific part; a test without Ray overrides these three) --------

    def _identity(self) -> tuple[str | None, str | None]:
        """This actor's name (None when unnamed) and namespace."""
        context = ray.get_runtime_context()
        return context.get_actor_name(), context.namespace

    def _place(self, placement: str, options: dict[str, Any], num_shards: int, replication: int) -> list[Any]:
        return make_placement(self._name, placement, options, num_shards, replication)

    def _spawn(self, role: str, k: int, options: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Starts replica (role, k) (or, named, finds the one a previous coordinator of this name left)."""
        actor_options = {**options, **bundle_options(self._placement_groups, k, role, self._replication)}
        if self._name:  # outlives this coordinator; a successor with this name finds it
            actor_options.update(name=shard_actor_name(self._name, role, k), namespace=self._namespace, lifetime="detached",
                                 get_if_exists=True)
        return ReplayShard.options(**actor_options).remote(*args, **kwargs)  # type: ignore[attr-defined]  # @ray.remote's ActorClass

    # -- writing (shard_writes.ShardWrites: runs over the shards, retry, staging) ---------------------

    async def add(self, *fields: Any, priority: Any = None, stream: Any = None, **named: Any) -> None:
        """One transition: validated now (same errors as a local buffer), written within flush_interval_s.
        ``stream``: the writer's stream, for observation dedup (see ReplayBuffer)."""
        await self._set.ensure_started()
        if self._layout is not None:
            fields, named = (), self._layout.flatten_call(fields, named)
        value = None
        if priority is not None:
            require_prioritized(self._buffer_type, "priority")
            value = check_priority(priority)
        await self._writes.stage(fields, named, value, stream)

    async def add_batch(self, *columns: Any, priorities: Any = None, **named: Any) -> int:
        """Rows along the leading axis, spread over the shards by routing.Router (validated whole, by the
        shard when the batch lands on one, here when it is cut); returns the shard of its first rows."""
        await self._set.ensure_started()
        if self._layout is not None:
            columns, named = (), self._layout.flatten_call(columns, named)
        kwargs = named if priorities is None else {**named, "priorities": priorities}
        return await self._writes.write(columns, kwargs)

    # -- sampling (shard_reads.ShardReads: the rounds, fifo pops and priority updates) ---------------

    async def sample(self, batch_size: int, beta: float | None = None, partial: bool = False, seq_len: int | None = None,
                     min_len: int | None = None, period: int | None = None) -> dict[str, np.ndarray]:
        """One batch over all shards; prioritized adds global "weights", "ids" and "probabilities".

        ``seq_len`` (with ``min_len``, ``period``): sequences as ReplayBuffer.sample makes them, each
        from one shard (shards are drawn by mass, as for transitions: the starts have the distribution
        of one buffer), with "mask" and global "ids".

        Prioritized, uniform and lockfree: rows per shard ~ Multinomial(batch_size, mass or size share).
        fifo: pops the oldest rows of each shard, in proportion to the shard sizes (see fifo_counts);
        ``partial`` as for the local fifo buffer.
        """
        await self._set.ensure_started()
        start = time.perf_counter()
        batch = await self._reads.sample(batch_size, beta, partial, sequence_options(seq_len, min_len, period, self._buffer_type))
        elapsed = time.perf_counter() - start
        self._totals.observe_sample(elapsed)
        if self._sample_latency is not None:
            self._sample_latency.observe(elapsed)
        return batch if self._layout is None else self._layout.unflatten(batch)

    async def update_priorities(self, ids: Any, priorities: Any, mask: Any = None) -> None:
        """Sends each id to the shard it came from; stale ids are ignored and counted there. (n, seq_len)
        per-step priorities of a sequence sample are mixed first (needs ``mask``, see mix_sequence_priorities)."""
        await self._set.ensure_started()
        await self._reads.update_priorities(ids, priorities, mask)

    # -- inspection and lifetime -------------------------------------------------------------------

    async def size(self) -> int:
        await self._set.ensure_started()
        await self._writes.flush()
        await self._set.refresh()
        return self._set.table.size

    async def stats(self) -> dict[str, Any]:
        """{"shards": [per-shard stats with "state" ("alive", "restarting", "dead"), "node_id", "pid",
        "size", "restarts" and, replicated, "backup": the backup's], "total": summed counters of the
        shards that answered, global masses, inserts/s and samples/s since the previous stats() call,
        the p50/p99 of the latest 1,000 sample() calls as callers saw them (``sample_latency_p50_ms``,
        ``_p99_ms``), "live_shards", "dropped_priority_updates", "rows_lost",
        "rows_relayed_by_coordinator", "checkpoint_failures" (over every replica)} (see totals.Totals)."""
        await self._set.ensure_started()
        await self._writes.flush()
        shard_stats = await self._set.all_stats()
        total = self._totals(shard_stats, self._buffer_type, replication_factor=len(self._set.roles),
                             dropped_priority_updates=self._reads.dropped_updates, rows_lost=self._set.rows_lost,
                             rows_relayed_by_coordinator=self._writes.rows_relayed)
        return {"shards": shard_stats, "total": total}

    def shard_handles(self) -> list[Any]:
        return list(self._set.primaries)

    def set_metadata(self, key: str, value: Any) -> Any:
        """Stores ``value`` under ``key`` unless a value is there already; returns the value stored (the
        first one set). What writers of one replay agree on without a payload passing through here,
        e.g. the row layout that RLlib env runners writing directly publish for the learner's reader."""
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        return self._metadata.setdefault(key, value)

    def metadata(self, key: str) -> Any:
        """The value set_metadata stored under ``key``, or None."""
        return self._metadata.get(key)

    def backup_handles(self) -> list[Any]:
        """The backups (replication_factor=2), shard k's at index k; empty otherwise."""
        return list(self._set.replicas.get("backup", []))

    async def client_config(self) -> dict[str, Any]:
        """What a ReplayClient needs to work without this coordinator: shard map, type, limits, schema."""
        await self._set.ensure_started()
        await self._writes.flush()
        await self._set.refresh()
        return {
            "shards": list(self._set.primaries),
            "backups": list(self._set.replicas.get("backup", [])),
            "timeout_s": self._timeout_s,
            "buffer_type": self._buffer_type,
            "capacity": self._capacity,
            "capacities": list(self._writes.router.capacities.tolist()),
            "beta": self._beta,
            "limiter": self._reads.limiter,
            "snapshots": list(self._set.table.snapshots),
            "schema": self._writes.schema,
            "codecs": self._codecs,
            "nested": None if self._layout is None else self._layout.to_json(),
            "sequence_priority_eta": self._reads.sequence_eta,
        }

    async def shutdown(self, grace_period_s: float = 5.0) -> None:
        """Flushes staged rows, closes every replica's checkpoint writer (waiting up to
        ``grace_period_s`` for a write in progress), then kills the shards and backups (their rows
        are gone; checkpoint files stay) and removes their placement groups; the coordinator stays up."""
        self._writes.stop()
        self._set.stop()
        try:
            await self._writes.flush()
        except ShardUnavailableError:
            pass  # nothing left to flush to
        replicas = [shard for role in self._set.roles for shard in self._set.replicas[role]]
        if replicas and grace_period_s > 0:
            await asyncio.wait([asyncio.ensure_future(shard.close.remote()) for shard in replicas], timeout=grace_period_s)
        for shard in replicas:
            ray.kill(shard)
        for role in self._set.roles:
            self._set.replicas[role].clear()  # (primaries is the "shard" list: emptied too)
        remove_placement(self._placement_groups)
        self._placement_groups = []


@ray.remote
class ReplayCoordinator(ReplayCoordinatorImpl):
    """ReplayCoordinatorImpl as a Ray actor: the constructor arguments and methods are
    ReplayCoordinatorImpl's. An *async* actor (every method that awaits shards is a coroutine), so one
    event loop interleaves adds, samples and priority updates without threads."""
