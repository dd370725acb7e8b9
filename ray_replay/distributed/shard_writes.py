"""The coordinator's writes to its shards: batches cut into runs over the shards (routing.Router), each
run to its shard and backup with the bounded retry of writes.Write, and single-row adds staged into
batches (writes.Stager) that go out at ``batch_rows`` rows or within ``flush_interval_s``.

No Ray here: the shards are a ShardSet (handles given, any object whose ``method.remote(...)`` is
awaitable), so this runs in tests with fake shards (tests/test_coordinator_impl.py drives it through
ReplayCoordinatorImpl). The rules (validation, planning, retry outcomes) are writes.py's, the same
that ReplayClient drives synchronously. One asyncio event loop drives it (the coordinator's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from ray_replay.distributed.health import ACKED, RETRY_PAUSE_S, RETRY_SAME, SHARD_FAILURES
from ray_replay.distributed.routing import Router
from ray_replay.distributed.shard_set import ShardSet
from ray_replay.distributed.writes import Stager, Write, plan_batch, rows_of, slice_rows

__all__ = ["ShardWrites"]


class ShardWrites:
    """Writes to one coordinator's ShardSet.

    Args:
        shards: the coordinator's ShardSet (its snapshots' sizes and health route every run).
        capacities: each shard's capacity (the Router's water-filling targets).
        schema: the replay's schema, or None until the first write fixes it (then read from a shard).
        batch_rows, flush_interval_s: staged single-row adds go out at this many rows, or this long
            after the first of them arrived.
        timeout_s: how long a run waits for some shard to take it before ShardUnavailableError.

    Cost: a batch is one call per replica of each shard it is cut over, all at once; a single-row add
    is a local stage (the native validation of a one-row buffer) until its batch goes out.
    """

    def __init__(self, shards: ShardSet, capacities: Sequence[int], schema: Any, *, batch_rows: int, flush_interval_s: float,
                 timeout_s: float) -> None:
        self._set = shards
        self.router = Router(capacities)
        self.schema = schema
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._timeout_s = timeout_s
        self._stager: Stager | None = None  # single-row adds, made once the schema is known
        self._flusher: asyncio.Task[None] | None = None
        self._flush_error: BaseException | None = None
        self.rows_relayed = 0  # rows whose payload passed through the coordinator (add/add_batch on its handle)

    async def stage(self, fields: tuple[Any, ...], named: dict[str, Any], priority: float | None, stream: Any) -> None:
        """One row, validated now (raises as a local buffer does, staging nothing); an error of an
        earlier periodic flush is raised here first."""
        if self._flush_error is not None:
            error, self._flush_error = self._flush_error, None
            raise error
        if self._stager is None:
            await self._create_stager()
        assert self._stager is not None
        # A loop: other adds may stage rows while a flush awaits its shard.
        while self._stager.must_send_before(1, priority is not None):
            await self.flush()
        self._stager.stage(fields, named, priority, stream)
        if len(self._stager) >= self._batch_rows:
            await self.flush()
        elif self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    def stop(self) -> None:
        """Stops the periodic flush (a last ``flush()`` sends what is staged)."""
        if self._flusher is not None:
            self._flusher.cancel()

    async def write(self, columns: tuple[Any, ...], named: dict[str, Any]) -> int:
        """Writes a batch as runs over the shards (routing.Router), each to its shard and backup, all at
        once; returns the shard that took the batch's first rows. A batch cut over shards is validated
        here whole first, so a bad row leaves no run written."""
        rows = rows_of(columns, named)
        self.rows_relayed += rows
        columns, named, planned = plan_batch(self.router, columns, named, rows, self._set.writable(), self._set.sizes(), self.schema)
        plan: Sequence[tuple[int | None, int, int]] = planned or [(None, 0, rows)]
        runs = [Write.new(*((columns, named) if len(plan) == 1 else slice_rows(columns, named, start, stop, rows)), stop - start,
                          self._timeout_s) for _, start, stop in plan]
        results = await asyncio.gather(*[self._write_run(run, k) for run, (k, _, _) in zip(runs, plan)], return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return int(cast(int, results[0]))  # not an exception: those were raised above

    async def _write_run(self, write: Write, k: int | None) -> int:
        """One run to one shard (and its backup), with the bounded retry of writes.Write; returns the shard."""
        while True:
            while k is None:
                await asyncio.sleep(write.pause())
                write.tried.clear()
                k = self.router.pick(self._set.writable(), write.tried, self._set.sizes())
            write.shard = k
            self.router.sending(k, write.rows)
            # A write that may already be on shard k goes to every replica of k again, down or not: the
            # batch id keeps it from applying twice, and it must not end up on another shard as well.
            roles = [role for role in self._set.roles if write.uncertain or self._set.health[role].alive(k)]
            results = await asyncio.gather(*[self._set.call(role, k, "add_run", write.run) for role in roles],
                                           return_exceptions=True)
            self.router.acknowledged(k, write.rows)
            if roles and roles[0] == "shard" and not isinstance(results[0], BaseException):
                self._set.table.update(k, results[0])
            outcome = write.settle(results)  # raises the shard's ValueError/TypeError for a bad batch
            if outcome == ACKED:
                return k
            if outcome == RETRY_SAME:
                await asyncio.sleep(RETRY_PAUSE_S)
            else:
                k = self.router.pick(self._set.writable(), write.tried, self._set.sizes())

    async def _create_stager(self) -> None:
        if self.schema is None:
            for k in self._set.live():
                try:
                    schema = await self._set.call("shard", k, "schema")
                except SHARD_FAILURES:
                    continue
                if schema:
                    self.schema = schema
                    break
        if self._stager is None:  # another add may have created it while the schemas were fetched
            self._stager = Stager(self._batch_rows, self.schema)

    async def flush(self) -> None:
        """Sends the staged rows now (and waits until they are stored)."""
        if self._stager is None or not len(self._stager):
            return
        columns = self._stager.take()
        if self.schema is None:
            self.schema = self._stager.schema
        await self.write((), columns)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self.flush()
            except Exception as error:  # surfaces at the next add
                self._flush_error = error
