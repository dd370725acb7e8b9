"""A ReplayClient's writes and priority updates in flight to the shards: the sync write path.

Each write is a run of rows for one shard (writes.Write, planned by routing.Router through
writes.plan_batch), sent to the shard's replicas at once and kept until it is acknowledged, so that a
run whose shard is gone can be sent again (Write.settle: to the same shard when it may have landed
there, else to the next live one, within the coordinator's ``shard_timeout_s``). The coordinator drives
the same pieces asynchronously (shard_writes.ShardWrites); what differs is only the waiting: here
``ray.wait`` on the oldest calls, there ``asyncio.gather``.

Thread role: one caller (the client's thread). Cost: a call past ``max_in_flight`` outstanding waits
for the oldest; collecting finished calls is one ``ray.wait(timeout=0)`` over those in flight.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from ray_replay.distributed.health import ACKED, PROCESS_FAILURES, RETRY_PAUSE_S, RETRY_SAME, SHARD_FAILURES, ShardHealth, ShardUnavailableError
from ray_replay.distributed.routing import Router
from ray_replay.distributed.sampling import EMPTY_SNAPSHOT, ShardTable, Snapshot, WireSnapshot
from ray_replay.distributed.writes import Write, compress_codec_fields, plan_batch, slice_rows

__all__ = ["InFlight"]


@dataclass(eq=False)  # compared by identity: payloads hold arrays
class _Pending:
    """A write (a run of rows, kept for a retry) or a priority update in flight to shard k's replicas."""

    shard: int
    refs: list[Any]
    write: Write | None = None  # None: a priority update
    ids: Any = None  # a priority update's ids
    backup: bool = False  # a backup's copy of an update (best effort: its verdict is not counted)
    sent_at: float = field(default_factory=time.monotonic)


class InFlight:
    """Writes and priority updates outstanding to the shards of one client, with the client's counts
    (rows ``handed``, ``acknowledged``, ``failed``, ``last_error``; ``dropped_updates``).

    Args:
        shards, backups: the shard actor handles (and their backups, or an empty list).
        health, table: the client's view of the shards (updated by every reply).
        router: where runs go.
        timeout_s: the coordinator's ``shard_timeout_s``.
        max_in_flight: bound on outstanding calls.
    """

    def __init__(self, shards: list[Any], backups: list[Any], health: ShardHealth, table: ShardTable, router: Router, timeout_s: float,
                 max_in_flight: int, codecs: Mapping[str, str] | None = None, codec_schema: Mapping[str, Any] | None = None) -> None:
        self._codecs = dict(codecs or {})  # fields sent compressed, as the shards store them (writes.compress_codec_fields)
        self._codec_schema = codec_schema
        self._shards = shards
        self._backups = backups
        self._health = health
        self._table = table
        self._router = router
        self._timeout_s = timeout_s
        self._max_in_flight = max_in_flight
        self._pending: list[_Pending] = []
        self.handed = self.acknowledged = self.failed = 0  # write rows (see ReplayClient.stats())
        self.last_error: BaseException | None = None
        self.dropped_updates = 0  # priority updates for a shard that was down

    def __bool__(self) -> bool:
        return bool(self._pending)

    def writes(self) -> int:
        """Runs of rows in flight."""
        return sum(entry.write is not None for entry in self._pending)

    def send_update(self, k: int, ids: Any, values: Any, backup: bool = False) -> None:
        """Priority updates for shard k (or, with ``backup``, its backup's copy: best effort)."""
        replica = self._backups[k] if backup else self._shards[k]
        self._pending.append(_Pending(k, [replica.update_priorities.remote(ids, values)], ids=ids, backup=backup))

    def _replicas(self, k: int) -> list[Any]:
        return [self._shards[k], self._backups[k]] if self._backups else [self._shards[k]]

    def _sizes(self) -> list[int]:
        return [snapshot.size for snapshot in self._table.snapshots]

    def _writable(self) -> list[bool]:
        return [self._health.worth_trying(k) for k in range(len(self._shards))]

    def send(self, columns: tuple[Any, ...], named: dict[str, Any], rows: int, schema: Mapping[str, Any] | None, handed: bool = False) -> None:
        """Sends a batch as runs over the shards (see writes.Router); one cut over shards is validated
        here first, so a bad row leaves no run written. ``handed``: the rows were counted when staged
        (else they are counted here). Blocks while more than max_in_flight calls are outstanding."""
        columns, named, runs = plan_batch(self._router, columns, named, rows, self._writable(), self._sizes(), schema)
        plan: Sequence[tuple[int | None, int, int]] = runs or [(None, 0, rows)]
        if not handed:
            self.handed += rows
        for k, start, stop in plan:
            part = (columns, named) if len(plan) == 1 else slice_rows(columns, named, start, stop, rows)
            part = compress_codec_fields(*part, stop - start, self._codecs, self._codec_schema)  # once: retries resend it
            self._submit(Write.new(*part, stop - start, self._timeout_s), k)
        self.reap()

    def _submit(self, write: Write, k: int | None) -> None:
        """Sends a run to shard k's replicas; with no shard to send to, waits for one within its deadline."""
        while k is None:
            try:
                time.sleep(write.pause())
            except ShardUnavailableError as error:
                self._fail(write.rows, error)
            write.tried.clear()
            k = self._router.pick(self._writable(), write.tried, self._sizes())
        write.shard = k
        self._router.sending(k, write.rows)
        refs = [replica.add_run.remote(write.run) for replica in self._replicas(k)]
        self._pending.append(_Pending(k, refs, write))

    def _fail(self, rows: int, error: BaseException) -> None:
        self.failed += rows
        self.last_error = error
        raise error

    def reap(self, wait_all: bool = False) -> None:
        """Collects finished writes/updates (their snapshots refresh the plan), retries writes whose shard
        failed, and raises the first error. Blocks while more than max_in_flight are outstanding (the
        oldest are waited for), or until all are done with wait_all."""
        error: BaseException | None = None
        while self._pending:
            keep = 0 if wait_all else self._max_in_flight
            must = max(len(self._pending) - keep, 0)
            waited = [ref for entry in self._pending[:must] for ref in entry.refs]
            if waited:  # a replica that does not answer (partitioned, hung) is given up on after shard_timeout_s
                oldest = min(entry.sent_at for entry in self._pending[:must])
                ray.wait(waited, num_returns=len(waited), timeout=max(oldest + self._timeout_s - time.monotonic(), 0.0))
            everything = [ref for entry in self._pending for ref in entry.refs]
            ready = set(ray.wait(everything, num_returns=len(everything), timeout=0)[0])
            now = time.monotonic()
            finished = [entry for entry in self._pending if all(ref in ready for ref in entry.refs) or now - entry.sent_at >= self._timeout_s]
            if not finished:
                break
            self._pending = [entry for entry in self._pending if entry not in finished]
            for entry in finished:
                try:
                    self._settle(entry, ready)
                except Exception as e:  # keep collecting, then raise the first
                    error = error or e
            if not wait_all and len(self._pending) <= self._max_in_flight:
                break
        if error is not None:
            raise error

    def _observe(self, k: int, snapshot: Snapshot | WireSnapshot) -> None:
        self._health.mark_alive(k)
        self._table.update(k, snapshot)

    def _settle(self, entry: _Pending, ready: set[Any]) -> None:
        """Classifies a finished entry; a replica whose reply is not in ``ready`` (unanswered for
        shard_timeout_s) counts as timed out (the call may still apply: see health.write_outcome)."""
        results: list[Any] = []
        for ref in entry.refs:
            if ref not in ready:
                results.append(TimeoutError(f"shard {entry.shard}'s replica did not answer within {self._timeout_s} s"))
                continue
            try:
                results.append(ray.get(ref))
            except Exception as e:  # noqa: BLE001 - classified below
                results.append(e)
        k = entry.shard
        if entry.backup:
            return  # a backup's copy of an update: best effort (it may lag while it is refilled)
        if isinstance(results[0], PROCESS_FAILURES):
            self._health.mark_down(k)
            self._table.update(k, EMPTY_SNAPSHOT)
        elif not isinstance(results[0], BaseException):
            self._observe(k, results[0])
        write = entry.write
        if write is None:  # a priority update: the primary's verdict counts; the backup's is best effort
            if isinstance(results[0], SHARD_FAILURES):
                self.dropped_updates += len(entry.ids)
            elif isinstance(results[0], BaseException):
                raise results[0]
            return
        self._router.acknowledged(k, write.rows)
        try:
            outcome = write.settle(results)
        except Exception as error:  # the shard refused the rows themselves
            self._fail(write.rows, error)
        if outcome == ACKED:
            self.acknowledged += write.rows
        elif outcome == RETRY_SAME:
            time.sleep(RETRY_PAUSE_S)
            self._submit(write, k)
        else:
            self._submit(write, self._router.pick(self._writable(), write.tried, self._sizes()))
