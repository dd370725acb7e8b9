"""ReplayClient: the fast path for writers and learners, talking to the shards directly.

The coordinator is asked once, for the shard map; after that no payload passes through it:

* writes are staged in a local buffer of the replay's schema (so a bad row raises at once, with the
  local buffer's error), and sent as one ``add_batch`` to one shard (round robin) when ``batch_rows``
  rows are staged or the oldest staged row is ``flush_interval_s`` old (checked on every call);
* samples are planned here, from the snapshots every shard reply carries (one round trip: shards with
  no rows in the plan report their snapshot in the same round), and ``prefetch`` rounds are kept in
  flight, so a learner usually finds its next batch already there;
* priority updates are fire and forget.

At most ``max_in_flight`` writes and updates are outstanding; errors of any of them are raised by the
client's next call (as the shard's ValueError/TypeError), never dropped.

Failures (see health.py and the coordinator's doc): a write whose shard is gone is sent again, to the
same shard when it may have landed there (its batch id keeps it from applying twice) or else to the
next live shard, for at most the coordinator's ``shard_timeout_s``; then ShardUnavailableError. With
replication every write goes to the shard and its backup. A sample round that loses a shard is planned
again over the live ones; a down shard is probed again after a second and rejoins when it answers.
Priority updates for a shard that is down are dropped and counted in ``dropped_priority_updates``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from ray_replay.distributed.health import ShardHealth
from ray_replay.distributed.in_flight import InFlight
from ray_replay.distributed.rounds import SampleRounds
from ray_replay.distributed.sampling import ShardTable, Snapshot, mix_sequence_priorities, sequence_options, split_capacity, split_ids
from ray_replay.distributed.writes import (
    Router,
    Stager,
    check_batch_size,
    check_beta,
    check_count,
    check_priorities,
    check_priority,
    check_seconds,
    require_prioritized,
    rows_of,
)
from ray_replay.nested import Layout, refuse_unknown_nesting

__all__ = ["ReplayClient"]

UPDATE_ROWS_HELD = 65_536  # priority updates held for the next sample requests beyond this go on their own


class ReplayClient:
    """A writer's or learner's handle on a ReplayCoordinator's shards (one per process; not shareable).

    Args:
        coordinator: the ReplayCoordinator actor handle.
        batch_rows: rows staged before they are sent to a shard in one call (larger: fewer calls,
            higher throughput; smaller: rows visible sooner).
        flush_interval_s: staged rows are sent once the oldest is this old (checked on each call;
            call ``flush()`` when a writer goes idle).
        max_in_flight: bound on outstanding writes and priority updates; a call past it waits for one.
        prefetch: sample rounds kept in flight after each ``sample`` (0: none). Prefetched batches do
            not see priority updates made after they were requested, as in Ape-X.
        rounds_per_call: prefetched rounds asked of each shard in one call (at most ``prefetch``):
            fewer calls per sampled row; the rounds in flight then range from
            ``prefetch - rounds_per_call + 1`` to ``prefetch`` (e.g. prefetch=4, rounds_per_call=2).
        batch_from: ``"all_shards"`` (default): each sample is one global draw, its rows spread over the
            shards by a multinomial on their masses (independent rows, as from one buffer; every shard
            is asked in each round). ``"one_shard"``: each sample is drawn whole from one shard, picked
            with probability (its mass / the replay's), as Ape-X's replay shards served a learner: each
            row's probability and importance weight are the same as with "all_shards", but the rows of
            one batch share a shard; one shard call per round however many shards (the other shards
            are asked for their snapshot every 20 ms). Not for fifo.
        sample_transport: ``"ray"`` (default): sample rounds are Ray actor calls to the shards.
            ``"direct"``: over a socket to each shard (ray_replay.distributed.direct: raw column bytes,
            no pickling, no Ray task per round), opened at the first sample through the shard actor;
            a draw whose channel fails is sent again through Ray (which decides, as for any call,
            whether the shard is lost), and the shard is sampled through Ray until its channel
            reopens. Sequences go through Ray either way. Not for fifo.
        seed: seeds the client's multinomial draws.
    """

    def __init__(
        self,
        coordinator: Any,
        *,
        batch_rows: int = 4096,
        flush_interval_s: float = 0.05,
        max_in_flight: int = 4,
        prefetch: int = 2,
        rounds_per_call: int = 1,
        batch_from: str = "all_shards",
        sample_transport: str = "ray",
        seed: int | None = None,
    ) -> None:
        batch_rows, max_in_flight, prefetch, rounds_per_call = (check_count(name, value, low) for name, value, low in (
            ("batch_rows", batch_rows, 1), ("max_in_flight", max_in_flight, 1), ("prefetch", prefetch, 0), ("rounds_per_call", rounds_per_call, 1)))
        flush_interval_s = check_seconds("flush_interval_s", flush_interval_s)
        if rounds_per_call > max(prefetch, 1):
            raise ValueError(f"rounds_per_call must be <= prefetch ({prefetch}): the rounds of a call are prefetched, got {rounds_per_call}")
        if batch_from not in ("all_shards", "one_shard"):
            raise ValueError(f"batch_from must be 'all_shards' or 'one_shard', got {batch_from!r}")
        if sample_transport not in ("ray", "direct"):
            raise ValueError(f"sample_transport must be 'ray' or 'direct', got {sample_transport!r}")
        config = ray.get(coordinator.client_config.remote())
        if batch_from == "one_shard" and config["buffer_type"] == "fifo":
            raise ValueError("batch_from='one_shard' does not apply to a fifo replay (a read pops the oldest rows of every shard)")
        if sample_transport == "direct" and config["buffer_type"] == "fifo":
            raise ValueError("sample_transport='direct' does not apply to a fifo replay (its reads go through Ray)")
        self._coordinator = coordinator
        self._shards: list[Any] = config["shards"]
        self._backups: list[Any] = config["backups"]
        self._timeout_s: float = config["timeout_s"]
        self._health = ShardHealth(len(self._shards), restartable=True)
        self._buffer_type: str = config["buffer_type"]
        self._capacity: int = config["capacity"]
        self._beta: float = config["beta"]
        self._sequence_eta: float = config.get("sequence_priority_eta", 0.9)
        self._limiter = config["limiter"]
        self._schema = config["schema"]
        nested = config.get("nested")
        self._layout = None if nested is None else Layout.from_json(nested)  # nested fields: flattened here
        self._table = ShardTable(len(self._shards), self._buffer_type, config["snapshots"])
        self._batch_rows = batch_rows
        self._flush_interval_s = flush_interval_s
        self._rng = np.random.default_rng(seed)
        self._stager = Stager(batch_rows, self._schema)
        router = Router(config.get("capacities") or split_capacity(self._capacity, len(self._shards)),
                        tie_order=self._rng.permutation(len(self._shards)).tolist())
        self._rounds = SampleRounds(self._shards, self._health, self._table, self._limiter, self._rng, self._timeout_s,
                                    prefetch if self._buffer_type != "fifo" else 0, rounds_per_call, one_shard=batch_from == "one_shard",
                                    direct=sample_transport == "direct")
        self._writes = InFlight(self._shards, self._backups, self._health, self._table, router, self._timeout_s, max_in_flight,
                                codecs=config.get("codecs"), codec_schema=self._stager.schema)
        self._closed = False

    # -- writing -----------------------------------------------------------------------------------

    def add(self, *fields: Any, priority: Any = None, stream: Any = None, **named: Any) -> None:
        """One transition, as ReplayBuffer.add (``stream``: for observation dedup and sequences, routes the
        writer's rows to one shard; None is stream 0, routed for balance); sent with the next batch."""
        self._check_open()
        if self._layout is not None:
            fields, named = (), self._layout.flatten_call(fields, named)
        elif self._schema is None:
            refuse_unknown_nesting(fields, named)
        value = None
        if priority is not None:
            require_prioritized(self._buffer_type, "priority")
            value = check_priority(priority)
        if self._stager.must_send_before(1, value is not None):
            self._send_staged()
        self._stager.stage(fields, named, value, stream)
        self._writes.handed += 1
        self._after_stage()

    def add_batch(self, *columns: Any, priorities: Any = None, streams: Any = None, wait: bool = False, **named: Any) -> None:
        """Rows along the leading axis, as ReplayBuffer.add_batch. A batch of batch_rows rows or more goes
        out at once (without a copy when it lands on one shard: its errors then surface at the next
        call), smaller ones are staged. ``wait=True`` returns once these rows (and every row handed
        before them) are stored: acknowledged by their shards, replicas included."""
        self._check_open()
        if self._layout is not None:
            columns, named = (), self._layout.flatten_call(columns, named)
        elif self._schema is None:
            refuse_unknown_nesting(columns, named)
        rows = rows_of(columns, named)
        if priorities is not None:
            require_prioritized(self._buffer_type, "priorities")
        if rows >= self._batch_rows:
            self._send_staged()
            kwargs = named if priorities is None else {**named, "priorities": priorities}
            self._writes.send(columns, kwargs if streams is None else {**kwargs, "streams": streams}, rows, self._schema)
        else:
            values = None if priorities is None else check_priorities(priorities, rows)
            if self._stager.must_send_before(rows, values is not None):
                self._send_staged()
            self._stager.stage_batch(columns, named, values, streams, rows)
            self._writes.handed += rows
            self._after_stage()
        if wait:
            self.flush()

    def flush(self) -> None:
        """Sends staged rows and held priority updates, and waits until every write and update sent so far
        is in its shard."""
        self._check_open()
        self._send_staged()
        self._send_held_updates()
        self._writes.reap(wait_all=True)

    def stats(self) -> dict[str, Any]:
        """This client's writes, counted in rows, at no cost (no Ray call): ``rows_handed`` (accepted by
        add/add_batch), ``rows_acknowledged`` (stored: acknowledged by their shard, and by its backup
        where replicated), ``rows_staged`` (not yet sent), ``rows_in_flight`` (handed, neither
        acknowledged nor failed, staged included), ``rows_failed`` (refused by a shard or given up on:
        the error was raised by a call of this client) with ``last_error``; and
        ``dropped_priority_updates``, ``writes_in_flight``, ``sample_rounds_in_flight``."""
        writes = self._writes
        return {"rows_handed": writes.handed, "rows_acknowledged": writes.acknowledged, "rows_staged": len(self._stager),
                "rows_in_flight": writes.handed - writes.acknowledged - writes.failed, "rows_failed": writes.failed,
                "last_error": None if writes.last_error is None else repr(writes.last_error),
                "dropped_priority_updates": self.dropped_priority_updates,
                "writes_in_flight": writes.writes(), "sample_rounds_in_flight": len(self._rounds)}

    @property
    def dropped_priority_updates(self) -> int:
        """Priority updates for a shard that was down when they were sent (or rode with a request that
        failed): counted, not applied."""
        return self._writes.dropped_updates + self._rounds.dropped

    def _after_stage(self) -> None:
        if len(self._stager) >= self._batch_rows or time.monotonic() - self._stager.since >= self._flush_interval_s:
            self._send_staged()
        elif self._writes:
            self._writes.reap()

    def _send_staged(self) -> None:
        if not len(self._stager):
            return
        rows = len(self._stager)
        columns = self._stager.take()
        if self._schema is None:
            self._schema = self._stager.schema
        self._writes.send((), columns, rows, self._schema, handed=True)


    # -- sampling ----------------------------------------------------------------------------------

    def sample(self, batch_size: int, beta: float | None = None, partial: bool = False, seq_len: int | None = None,
               min_len: int | None = None, period: int | None = None) -> dict[str, Any]:
        """One batch over all shards, with the coordinator's semantics (global probabilities and weights;
        see rounds.SampleRounds; ``seq_len``, ``min_len``, ``period``: sequences, as ReplayCoordinator.sample).

        fifo reads go through the coordinator, which orders pops over shards; ``partial`` is for fifo.
        Nested fields come back nested (rebuilt here from the shards' flat columns).
        """
        batch = self._sample(batch_size, beta, partial, seq_len, min_len, period)
        return batch if self._layout is None or self._buffer_type == "fifo" else self._layout.unflatten(batch)

    def _sample(self, batch_size: int, beta: float | None, partial: bool, seq_len: int | None, min_len: int | None,
                period: int | None) -> dict[str, np.ndarray]:
        self._check_open()
        if self._writes:
            self._writes.reap()
        if self._buffer_type == "fifo":
            self._send_staged()
            self._writes.reap(wait_all=True)
            popped: dict[str, np.ndarray] = ray.get(self._coordinator.sample.remote(batch_size, beta, partial, seq_len, min_len, period))
            return popped
        batch_size, beta = check_batch_size(batch_size), check_beta(beta, self._beta)
        sequence = sequence_options(seq_len, min_len, period, self._buffer_type)
        # This client's own rows are visible to its samples: staged ones are sent now, and while no
        # shard is known to hold anything, the writes in flight are waited for (costs nothing once
        # the replay holds rows).
        self._send_staged()
        if self._table.total_mass == 0 and self._writes:
            self._writes.reap(wait_all=True)
        return self._rounds.sample(batch_size, beta, sequence)

    def sample_ref(self, batch_size: int, beta: float | None = None) -> Any:
        """``sample(batch_size, beta)`` without waiting: the ObjectRef of the batch, drawn whole from one
        shard and finished there (global probabilities and weights, as ``sample`` gives them), so its
        rows go from the shard straight to whoever calls ``ray.get`` on it; keep several in flight to
        prefetch (this client's ``prefetch`` does not apply; with ``rounds_per_call`` G, one call in G
        asks for G batches, see SampleRounds.sample_ref). For ``batch_from="one_shard"`` clients
        of a replay with flat fields (else ValueError). ``DistributedReplay``'s ``sample.remote(n)``
        uses it when its clients draw from one shard. A shard that fails makes ``ray.get`` raise, as a
        call on an actor handle does; the next call plans without that shard."""
        self._check_open()
        if not self._rounds.one_shard:
            raise ValueError("sample_ref needs batch_from='one_shard' (with 'all_shards' a batch is merged from every shard here: use sample)")
        if self._layout is not None:
            raise ValueError("sample_ref returns the shards' flat columns; a replay with nested fields rebuilds them in sample: use sample")
        if self._writes:
            self._writes.reap()
        batch_size, beta = check_batch_size(batch_size), check_beta(beta, self._beta)
        self._send_staged()
        if self._table.total_mass == 0 and self._writes:
            self._writes.reap(wait_all=True)
        return self._rounds.sample_ref(batch_size, beta)

    @property
    def samples_by_ref(self) -> bool:
        """Whether ``sample_ref`` applies: batch_from="one_shard" and flat fields."""
        return self._rounds.one_shard and self._layout is None

    def update_priorities(self, ids: Any, priorities: Any, mask: Any = None) -> None:
        """New priorities for sampled ids, without waiting: each shard's share rides with the next sample
        request to that shard (a learner step costs one round trip), or goes on its own at ``flush()``,
        ``close()`` or past UPDATE_ROWS_HELD rows. A backup gets its copy at once (best effort).
        Errors surface at a later call; updates for a shard that is down are counted as dropped."""
        self._check_open()
        require_prioritized(self._buffer_type, "update_priorities")
        if mask is not None or np.ndim(priorities) == 2:  # per-step errors of a sequence sample (see mix_sequence_priorities)
            priorities = mix_sequence_priorities(priorities, mask, self._sequence_eta)
        for k, shard_ids, values in split_ids(ids, priorities, len(self._shards)):
            if not self._health.worth_trying(k):
                self._writes.dropped_updates += len(shard_ids)
                continue
            self._rounds.hold(k, shard_ids, values)
            if self._backups:
                self._writes.send_update(k, shard_ids, values, backup=True)
        if self._rounds.held_rows() > UPDATE_ROWS_HELD:
            self._send_held_updates()
        self._writes.reap()

    def _send_held_updates(self) -> None:
        for k in range(len(self._shards)):
            updates = self._rounds.take_updates(k)
            if updates is not None:
                self._writes.send_update(k, *updates)

    # -- state and lifetime ------------------------------------------------------------------------

    @property
    def snapshots(self) -> list[Snapshot]:
        """The last snapshot of each shard this client has seen."""
        return list(self._table.snapshots)

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def close(self) -> None:
        """Flushes everything, drops prefetched batches; raises any error still pending. Idempotent."""
        if self._closed:
            return
        try:
            self._rounds.discard_all()
            self.flush()
        finally:
            self._rounds.close()
            self._closed = True

    def __enter__(self) -> ReplayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this ReplayClient is closed")
