"""ReplayCoordinatorImpl without Ray: its shards are ReplayShardImpl objects behind fake handles
(``handle.method.remote(...)`` returns an awaitable), so the routing, sampling, failure and resync logic
of the coordinator and its ShardSet run in one process, in milliseconds. The same code runs in the
Ray actor (tests/test_distributed.py, test_durability.py, test_sharding.py test it there)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import numpy as np
import pytest
from helpers import SCHEMA, assert_rows_consistent, transitions
from ray.exceptions import RayActorError
from scipy import stats

from ray_replay.distributed.coordinator import ReplayCoordinatorImpl
from ray_replay.distributed.shard import ReplayShardImpl


class FakeShard:
    """A shard "process": ``dead`` makes every call fail as Ray's would; ``restart()`` replaces it by a
    fresh, empty process (a new incarnation), as Ray's max_restarts does."""

    def __init__(self, *args: Any, metrics_name: str | None = None, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self.impl = ReplayShardImpl(*args, **kwargs)
        self.dead = False
        self.calls: Counter[str] = Counter()

    def restart(self) -> None:
        self.impl = ReplayShardImpl(*self._args, **self._kwargs)
        self.dead = False

    def __getattr__(self, method: str) -> Any:
        shard = self

        class Method:
            def remote(self, *args: Any, **kwargs: Any) -> Any:
                async def call() -> Any:
                    shard.calls[method] += 1
                    await asyncio.sleep(0)  # other calls interleave here, as they do on the actor's loop
                    if shard.dead:
                        raise RayActorError()
                    result = getattr(shard.impl, method)(*args, **kwargs)
                    return {**result, "node_id": "fake"} if method == "stats" else result

                return call()

        return Method()


class Coordinator(ReplayCoordinatorImpl):
    """The coordinator with its three Ray-specific hooks replaced."""

    def _identity(self) -> tuple[str | None, str | None]:
        return None, None

    def _place(self, *args: Any) -> list[Any]:
        return []

    def _spawn(self, role: str, k: int, options: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return FakeShard(*args, **kwargs)


def coordinator(capacity: int, num_shards: int, buffer_type: str = "prioritized", **kwargs: Any) -> Coordinator:
    return Coordinator(capacity, num_shards, buffer_type, schema=SCHEMA, seed=5, metrics=False, **kwargs)


def shard(c: Coordinator, k: int, role: str = "shard") -> FakeShard:
    return c._set.replicas[role][k]  # type: ignore[no-any-return]


def held(c: Coordinator, role: str = "shard") -> list[np.ndarray]:
    return [np.sort(shard(c, k, role).impl.get_state()["columns"]["action"]) if len(shard(c, k, role).impl.buffer) else np.empty(0, np.int64)
            for k in range(len(c._set))]


@pytest.mark.parametrize("buffer_type", ["uniform", "prioritized"])
def test_writes_fill_every_shard_before_any_evicts_and_samples_cover_every_row(buffer_type):
    async def run() -> None:
        c = coordinator(3000, 3, buffer_type)
        for start in range(0, 3000, 100):
            await c.add_batch(**transitions(100, start))
        assert sorted(np.concatenate(held(c)).tolist()) == list(range(3000))
        assert [len(h) for h in held(c)] == [1000, 1000, 1000]
        total = (await c.stats())["total"]
        assert total["size"] == 3000 and total["evictions"] == 0 and total["rows_relayed_by_coordinator"] == 3000
        draws = []
        for _ in range(30):
            batch = await c.sample(1000)
            assert_rows_consistent(batch)
            draws.append(batch["action"])
        counts = np.bincount(np.concatenate(draws) // 30, minlength=100)  # 100 cells of 30 rows
        assert stats.chisquare(counts).pvalue > 0.001

    asyncio.run(run())


def test_a_dead_shard_is_routed_around_and_its_lost_rows_are_counted_when_it_restarts_empty():
    async def run() -> None:
        c = coordinator(2000, 2, health_check_interval_s=0.05, shard_timeout_s=1.0)
        await c.add_batch(**transitions(1000))
        before = [len(h) for h in held(c)]
        assert before == [500, 500]
        shard(c, 0).dead = True
        await c.add_batch(**transitions(100, 1000))  # fails on shard 0 (marked down), lands on shard 1
        assert len(held(c)[1]) == 600
        batch = await c.sample(64)  # from the live shard only
        assert (batch["action"] >= 0).all() and (await c.stats())["total"]["live_shards"] == 1
        shard(c, 0).restart()  # back, empty: its 500 rows are gone, and counted
        await c._set.check_all()
        total = (await c.stats())["total"]
        assert total["live_shards"] == 2 and total["rows_lost"] == 500 and total["restarts"] == 1

    asyncio.run(run())


def test_a_backup_that_missed_writes_is_refilled_from_its_primary_before_it_rejoins():
    async def run() -> None:
        c = coordinator(2000, 2, replication_factor=2, health_check_interval_s=0.05, shard_timeout_s=1.0)
        await c.add_batch(**transitions(400))
        assert [h.tolist() for h in held(c)] == [h.tolist() for h in held(c, "backup")]
        k = int(np.argmin([len(h) for h in held(c)]))  # the emptier shard: the next small batches go there
        shard(c, k, "backup").dead = True
        for start in range(400, 800, 100):  # acknowledged by the primary alone meanwhile
            await c.add_batch(**transitions(100, start))
        assert not c._set.health["backup"].alive(k) and len(held(c)[k]) > len(held(c, "backup")[k])
        shard(c, k, "backup").dead = False  # reachable again, same process: it missed writes
        await c._set.check_all()
        assert c._set.health["backup"].alive(k)
        assert [h.tolist() for h in held(c)] == [h.tolist() for h in held(c, "backup")]
        assert sorted(np.concatenate(held(c)).tolist()) == list(range(800))

    asyncio.run(run())


def test_priority_updates_for_a_down_shard_are_counted_as_dropped():
    async def run() -> None:
        c = coordinator(1000, 2, shard_timeout_s=1.0)
        for start in (0, 200):  # one small batch to each shard
            await c.add_batch(**transitions(200, start))
        assert [len(h) for h in held(c)] == [200, 200]
        batch = await c.sample(200)
        shard(c, 0).dead = True
        await c.update_priorities(batch["ids"], np.full(200, 2.0))
        on_shard_0 = int(((batch["ids"] >> 48) == 0).sum())  # LOCAL_ID_BITS: the shard is in the high bits
        assert 0 < on_shard_0 < 200
        assert (await c.stats())["total"]["dropped_priority_updates"] == on_shard_0

    asyncio.run(run())


def test_single_adds_go_out_in_batches_of_batch_rows_and_staging_rows_still_names_it():
    async def run(**options: Any) -> list[int]:
        c = coordinator(1000, 2, "uniform", flush_interval_s=60.0, **options)
        rows = transitions(100)
        for i in range(100):
            await c.add(**{k: v[i] for k, v in rows.items()})
        return [len(h) for h in held(c)]  # what reached the shards before any flush interval passed

    assert sum(asyncio.run(run(batch_rows=25))) == 100
    assert sum(asyncio.run(run(batch_rows=30))) == 90  # 10 rows still staged
    assert asyncio.run(run(staging_rows=30)) == asyncio.run(run(batch_rows=30))
    with pytest.raises(ValueError, match="disagree"):
        coordinator(1000, 2, batch_rows=10, staging_rows=20)
    with pytest.raises(ValueError, match="batch_rows must be >= 1"):
        coordinator(1000, 2, batch_rows=0)
