"""The shards of one coordinator as it sees them: the replica handles of each role, their health, the
cached snapshots that plan writes and samples, what was lost, and the monitor that brings failed
replicas back (refilling a stale replica from its peer first).

No Ray scheduling here: the handles are given (any object whose ``method.remote(...)`` returns an
awaitable), so this is tested with fake shards, without Ray (tests/test_shard_set.py). One asyncio
event loop drives it (the coordinator's); nothing here is thread-safe, and nothing needs to be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ray_replay.buffer import BufferType
from ray_replay.distributed.health import ALIVE, DEAD, PROCESS_FAILURES, RESTARTING, SHARD_FAILURES, ShardHealth
from ray_replay.distributed.sampling import EMPTY_SNAPSHOT, ShardTable
from ray_replay.errors import StalePlanError

__all__ = ["ShardSet"]


class ShardSet:
    """``replicas``: role -> the handles of shards 0..n-1 in that role ("shard" first, then "backup").

    Args:
        restartable: whether Ray restarts a replica whose process dies (max_restarts != 0).
        timeout_s: a replica call unanswered this long is a failure (the replica is marked down).
        health_interval_s: how often the monitor probes every replica; a down replica is also offered
            to callers again (probed) this long after it failed.
    """

    def __init__(self, replicas: dict[str, list[Any]], buffer_type: BufferType, *, restartable: bool, timeout_s: float,
                 health_interval_s: float) -> None:
        self.replicas = replicas
        self.roles = tuple(replicas)
        self.primaries = replicas["shard"]
        n = len(self.primaries)
        self.health = {role: ShardHealth(n, restartable, retry_after_s=health_interval_s) for role in self.roles}
        self.table = ShardTable(n, buffer_type)
        self.timeout_s = timeout_s
        self.rows_lost = 0  # rows of unreplicated shards that restarted empty or died for good
        self.resyncing: set[int] = set()  # shards whose replicas are being copied (fenced)
        self._health_interval_s = health_interval_s
        self._held_at_failure = [0] * n  # each primary's last known size when it failed
        self._last_nodes: dict[tuple[str, int], str | None] = {}  # where each replica last answered from
        self._monitor: asyncio.Task[None] | None = None
        self._started: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.primaries)

    @property
    def replicated(self) -> bool:
        return len(self.roles) > 1

    # -- calls and failures (cost: one Ray call each; never blocks the loop) -------------------------

    async def call(self, role: str, k: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """A replica method's result. A failure of its process (or no answer within timeout_s) marks it
        down; a sample planned from a stale snapshot clears the snapshot; both are re-raised."""
        try:
            return await asyncio.wait_for(getattr(self.replicas[role][k], method).remote(*args, **kwargs), self.timeout_s)
        except PROCESS_FAILURES:
            self.mark_down(role, k)
            raise
        except StalePlanError:
            self.forget(k)
            raise

    def mark_down(self, role: str, k: int) -> None:
        was_alive = self.health[role].alive(k)
        self.health[role].mark_down(k)
        if role == "shard":
            self.forget(k)  # plans give it no rows until it is back
            if was_alive and self.health[role].states[k] == DEAD and not self.replicated:
                self._count_lost(k, 0)  # it will not come back: its rows are gone

    def forget(self, k: int) -> None:
        """Clears shard k's cached snapshot, keeping the size it had for counting lost rows."""
        if not self._held_at_failure[k]:
            self._held_at_failure[k] = self.table.snapshots[k].size
        self.table.update(k, EMPTY_SNAPSHOT)

    def _count_lost(self, k: int, size_now: int) -> None:
        """Without a replica, a shard that restarted (or died for good) lost the rows it held beyond what
        its checkpoint restored: counted in rows_lost."""
        before = max(self._held_at_failure[k], self.table.snapshots[k].size)
        self.rows_lost += max(before - size_now, 0)
        self._held_at_failure[k] = 0

    # -- what callers may use now (no Ray calls) ------------------------------------------------------

    def writable(self) -> list[bool]:
        """Per shard: takes writes (its primary answers and no replica copy is under way)."""
        return [self.health["shard"].alive(k) and k not in self.resyncing for k in range(len(self))]

    def sizes(self) -> list[int]:
        return [snapshot.size for snapshot in self.table.snapshots]

    def live(self) -> list[int]:
        """The shards whose primary answers."""
        return self.health["shard"].live()

    def live_roles(self, k: int) -> list[str]:
        return [role for role in self.roles if self.health[role].alive(k)]

    async def refresh(self, shards: Sequence[int] | None = None) -> None:
        """New snapshots from the live primaries (one ``sample(0)`` each, all at once)."""
        live = self.live() if shards is None else list(shards)
        replies = await asyncio.gather(*[self.call("shard", k, "sample", 0) for k in live], return_exceptions=True)
        for k, reply in zip(live, replies):
            if not isinstance(reply, BaseException):
                self.table.update(k, reply[1])

    # -- the monitor --------------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Once: waits for every replica's first answer (a new worker process can take seconds, which
        must not count as a failure), then starts the monitor. Cheap after that."""
        if self._monitor is not None and not self._monitor.done():
            return
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._first_contact())
        await asyncio.shield(self._started)
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()

    async def _first_contact(self) -> None:
        for role in self.roles:
            replies = await asyncio.gather(*[shard.health.remote() for shard in self.replicas[role]], return_exceptions=True)
            for k, info in enumerate(replies):
                if isinstance(info, BaseException):
                    self.mark_down(role, k)
                else:
                    self.health[role].observe(k, info["incarnation"], info["pid"])

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - a monitor round must never end the monitor
                pass

    async def check_all(self) -> None:
        """Probes every shard at once, so one that hangs until timeout_s delays no other's check."""
        await asyncio.gather(*[self.check(k) for k in range(len(self))], return_exceptions=True)

    async def check(self, k: int) -> None:
        """Probes shard k's replicas. One that answers again rejoins; with replication, one that
        restarted or missed writes while it was down is first refilled from its peer."""
        restarted, missed = [], []  # replicas that lost their rows / may have missed writes
        for role in self.roles:
            try:
                info = await self.call(role, k, "health")
            except SHARD_FAILURES:
                continue
            if self.health[role].observe(k, info["incarnation"], info["pid"]):
                restarted.append(role)
                if not self.replicated:
                    self._count_lost(k, info["size"])
            else:
                if role == "shard":
                    self._held_at_failure[k] = 0  # the same process: it kept its rows
                if not self.health[role].alive(k):
                    missed.append(role)
            if not self.replicated or role not in restarted + missed:
                self.health[role].mark_alive(k)
        stale = restarted + missed
        if self.replicated and stale:
            for role in stale:
                self.mark_down(role, k)  # no writes or samples until it is refilled
            if await self._resync(k, restarted, missed):
                for role in stale:
                    self.health[role].mark_alive(k)
        if self.health["shard"].alive(k) and k not in self.resyncing:
            try:
                self.table.update(k, (await self.call("shard", k, "sample", 0))[1])
            except SHARD_FAILURES:
                pass

    async def _resync(self, k: int, restarted: list[str], missed: list[str]) -> bool:
        """Copies shard k to its stale replica from the best other one (running all along, else one that
        kept its process but was unreachable for a while), both fenced meanwhile. True when the stale
        replicas may rejoin: copied, or nothing to copy from because every replica restarted (each from
        its own checkpoint) or the others are dead for good. A restarted replica whose peer is only
        unreachable waits for it: rejoining empty would later overwrite the peer's rows."""
        healthy = [role for role in self.roles if role not in restarted + missed and self.health[role].alive(k)]
        sources = healthy or missed
        if not sources:
            return all(role in restarted or self.health[role].states[k] == DEAD for role in self.roles)
        if not restarted and not healthy:  # all merely unreachable: each kept its rows
            return True
        source = sources[0]
        target = next(role for role in self.roles if role != source)
        self.resyncing.add(k)
        try:
            await asyncio.gather(*[self.call(role, k, "fence", True) for role in (source, target)])
            state = await self.call(source, k, "replica_state")
            await self.call(target, k, "set_replica_state", state)
            return True
        except SHARD_FAILURES:
            return False  # the next monitor round tries again
        finally:
            for role in self.roles:
                try:
                    await self.call(role, k, "fence", False)
                except SHARD_FAILURES:
                    pass
            self.resyncing.discard(k)

    # -- inspection ---------------------------------------------------------------------------------

    async def replica_stats(self, role: str, k: int) -> dict[str, Any]:
        """A replica's stats with its "state", "restarts" and "failures"; for one that does not answer,
        what is known of it (pid, node, size 0)."""
        health = self.health[role]
        s: dict[str, Any]
        try:
            s = await self.call(role, k, "stats")
        except SHARD_FAILURES:
            s = {"shard": k, "pid": health.pids[k], "node_id": self._last_nodes.get((role, k)), "size": 0}
        else:  # (restarts are the monitor's to see: it refills a restarted replica before it rejoins)
            self._last_nodes[(role, k)] = s["node_id"]
        s["state"] = health.states[k]
        if s.get("incarnation") not in (None, health.incarnations[k]):
            # A new process that the monitor has not seen yet (it restarted since the last probe, and is
            # not refilled): not "alive" until the monitor has counted the restart and refilled it.
            s["state"] = RESTARTING
        s["restarts"] = health.restarts[k]
        s["failures"] = health.failures[k]
        return s

    async def all_stats(self) -> list[dict[str, Any]]:
        """Every primary's replica_stats, each with its backup's under "backup" when replicated."""
        everything = await asyncio.gather(*[self.replica_stats(role, k) for role in self.roles for k in range(len(self))])
        primaries = everything[: len(self)]
        for k, backup in enumerate(everything[len(self):]):
            primaries[k]["backup"] = backup
        return primaries

    def live_count(self) -> int:
        return sum(state == ALIVE for state in self.health["shard"].states)
