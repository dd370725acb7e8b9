"""The coordinator's reads over its shards: global samples (one round trip per sample), fifo pops ordered
over the shards, and priority updates routed back to the shards the ids came from.

No Ray here: the shards are a ShardSet (handles given, any object whose ``method.remote(...)`` is
awaitable), so this runs in tests with fake shards (tests/test_coordinator_impl.py drives it through
ReplayCoordinatorImpl). The sampling maths is sampling.py's (ShardTable.plan and merge), the same as
ReplayClient's rounds.py; the admission loop is RateLimiter.waits, the same for both. One asyncio event
loop drives it (the coordinator's): nothing here is thread-safe, and nothing needs to be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ray_replay.buffer import BufferType
from ray_replay.distributed.health import RETRY_PAUSE_S, SHARD_FAILURES, ShardUnavailableError, pause_before_retry
from ray_replay.distributed.sampling import RateLimiter, mix_sequence_priorities, split_ids
from ray_replay.distributed.shard_set import ShardSet
from ray_replay.distributed.writes import check_batch_size, check_beta

__all__ = ["ShardReads"]

Sequence_ = tuple[int, int | None, int | None]  # (seq_len, min_len, period) of a sequence sample


class ShardReads:
    """Reads of one coordinator's ShardSet.

    Args:
        shards: the coordinator's ShardSet (its table of snapshots plans every round).
        limiter: the RateLimiter every sample is admitted by.
        rng: draws the rows per shard of each round.
        timeout_s: how long a sample waits for some shard to be alive before ShardUnavailableError.
        beta: the importance-sampling exponent of a sample that names none.
        sequence_eta: R2D2's eta, mixing the per-step priorities of a sequence sample.
        flush: sends the coordinator's staged single-row adds; awaited before a sample plans (its rows
            are visible to it) and while admission waits (they may be what unblocks it).

    Cost: a sample is one call per live shard, all at once (each answers rows or just its snapshot, so
    the cached masses plan the next round); fifo or an empty cache add one refresh round first.
    """

    def __init__(self, shards: ShardSet, buffer_type: BufferType, limiter: RateLimiter, rng: np.random.Generator, *,
                 timeout_s: float, beta: float, sequence_eta: float, flush: Callable[[], Awaitable[None]]) -> None:
        self._set = shards
        self._buffer_type = buffer_type
        self.limiter = limiter
        self._rng = rng
        self._timeout_s = timeout_s
        self._beta = beta
        self.sequence_eta = sequence_eta
        self._flush = flush
        self.dropped_updates = 0  # priority updates for a shard that was down (counted in stats())

    async def sample(self, batch_size: int, beta: float | None, partial: bool,
                     sequence: Sequence_ | None = None) -> dict[str, np.ndarray]:
        """One batch over the live shards (see ReplayCoordinator.sample); raises as a local buffer does
        for a bad batch_size or beta, before any shard is asked."""
        batch_size = check_batch_size(batch_size)
        beta = check_beta(beta, self._beta)
        await self._flush()
        await self._await_live()
        # One round trip per sample: every shard answers each round (rows or just its snapshot), so
        # the cached masses plan the next round. Only fifo (exact sizes matter) or a cache that says
        # "empty" (rows may have come straight from clients) costs a refresh first.
        if self._buffer_type == "fifo" or self._set.table.total_mass == 0:
            await self._set.refresh()
        for pause in self.limiter.waits(self._set.table, batch_size, RETRY_PAUSE_S):
            await asyncio.sleep(pause)
            await self._flush()
            await self._set.refresh()
        if self._buffer_type == "fifo":
            return await self._pop(batch_size, partial)
        for _ in range(len(self._set)):  # a round that loses a shard is planned again without it
            counts = self._set.table.plan(self._rng, batch_size)
            live = self._set.live()
            replies = await asyncio.gather(*[self._set.call("shard", k, "sample", int(counts[k]), None, False, None, sequence) for k in live],
                                           return_exceptions=True)
            failed = [r for r in replies if isinstance(r, BaseException)]
            for r in failed:
                if not isinstance(r, SHARD_FAILURES):
                    raise r
            if not failed:
                break
        else:
            raise ShardUnavailableError(f"sample({batch_size}) lost a shard in each of {len(self._set)} rounds")
        parts: list[dict[str, np.ndarray] | None] = [None] * len(self._set)
        for k, reply in zip(live, replies):
            if not isinstance(reply, BaseException):
                parts[k] = reply[0]
                self._set.table.update(k, reply[1])
        return self._set.table.merge(parts, beta)

    async def _await_live(self) -> None:
        """Waits up to timeout_s for a live shard (the monitor brings restarted ones back)."""
        deadline = time.monotonic() + self._timeout_s
        while not self._set.live():
            await asyncio.sleep(pause_before_retry(deadline, f"no shard has answered for {self._timeout_s} s (all restarting or dead)"))

    async def _pop(self, batch_size: int, partial: bool) -> dict[str, np.ndarray]:
        """fifo: the oldest rows of each shard, in proportion to the shard sizes (see fifo_counts); the
        backup pops the same rows."""
        held = self._set.table.size
        if held == 0:
            raise ValueError("cannot sample from an empty buffer")
        if held < batch_size and not partial:
            raise ValueError(f"batch_size {batch_size} exceeds the {held} rows in the fifo buffer (pass partial=True to take them all)")
        parts: list[dict[str, np.ndarray] | None] = []
        wanted = batch_size
        for _ in range(2):  # a second round only when other consumers popped rows meanwhile
            counts = self._set.table.plan(self._rng, wanted)
            live = [k for k in self._set.live() if k not in self._set.resyncing]
            replies = await asyncio.gather(*[self._set.call("shard", k, "sample", int(counts[k]), None, True) for k in live],
                                           return_exceptions=True)
            mirrors = []
            for k, reply in zip(live, replies):
                if isinstance(reply, BaseException):
                    if not isinstance(reply, SHARD_FAILURES):
                        raise reply
                    continue
                part, snapshot = reply
                self._set.table.update(k, snapshot)
                if part is not None:
                    parts.append(part)
                    taken = len(next(iter(part.values())))
                    wanted -= taken
                    if "backup" in self._set.roles and self._set.health["backup"].alive(k):  # the backup pops the same rows
                        mirrors.append(self._set.call("backup", k, "sample", taken, None, True))
            await asyncio.gather(*mirrors, return_exceptions=True)
            if wanted == 0 or self._set.table.size == 0:
                break
        return self._set.table.merge(parts, 0.0)

    async def update_priorities(self, ids: Any, priorities: Any, mask: Any = None) -> None:
        """Sends each id to the shard it came from (and its backup, best effort); stale ids are ignored
        and counted there; ids of a shard that is down are counted in ``dropped_updates``. (n, seq_len)
        per-step priorities of a sequence sample are mixed first (needs ``mask``, see mix_sequence_priorities)."""
        if mask is not None or np.ndim(priorities) == 2:
            priorities = mix_sequence_priorities(priorities, mask, self.sequence_eta)
        groups = split_ids(ids, priorities, len(self._set))
        calls, targets = [], []
        for k, shard_ids, values in groups:
            for role in self._set.roles:
                if self._set.health[role].alive(k):
                    calls.append(self._set.call(role, k, "update_priorities", shard_ids, values))
                    targets.append((role, k, len(shard_ids)))
                elif role == "shard":
                    self.dropped_updates += len(shard_ids)  # its shard is down: counted in stats()
        results = await asyncio.gather(*calls, return_exceptions=True)
        for (role, k, rows), result in zip(targets, results):
            if role != "shard":
                continue  # the backup's priorities are best effort (it may lag while it is being refilled)
            if not isinstance(result, BaseException):
                self._set.table.update(k, result)
            elif isinstance(result, SHARD_FAILURES):
                self.dropped_updates += rows
            else:
                raise result
