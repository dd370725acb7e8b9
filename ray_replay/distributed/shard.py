"""One shard of a distributed replay: a local ReplayBuffer that answers every call with a Snapshot.

``ReplayShardImpl`` is the plain class (testable without Ray); ``ReplayShard`` is the Ray actor over it,
with one thread for writes and one for samples and priority updates (see ReplayShard). A sample's
masses m_i are read under the buffer's lock with the draw itself; the Snapshot sent with it is taken
just after (a write on the other thread may have landed in between: the next reply reports it).

Durability: with ``checkpoint_path`` the shard checkpoints itself (see checkpoint.Checkpointer) and,
when Ray restarts it (``max_restarts``), starts from its latest checkpoint. Each process running the
shard has a fresh ``incarnation`` id, so a coordinator sees a restart even between its own calls. While
a replica is being copied to or from, the shard is *fenced*: writes raise ShardFencedError, which
callers treat like an unavailable shard (they write elsewhere).
"""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray

from ray_replay.buffer import BufferType, ReplayBuffer
from ray_replay.distributed.allocator import fix_mmap_threshold
from ray_replay.distributed.checkpoint import Checkpointer
from ray_replay.distributed.direct import DirectServer
from ray_replay.distributed.sampling import LOCAL_ID_BITS, Snapshot, WireSnapshot, encode_ids, finish_prioritized, local_ids, smallest_positive
from ray_replay.errors import ShardFencedError, StalePlanError
from ray_replay.monitoring import ShardMetrics

__all__ = ["ReplayShard", "ReplayShardImpl", "ShardFencedError", "StalePlanError"]

# (counts, beta, updates (global ids, priorities) or None, sequence (seq_len, min_len, period) or None)
DrawRequest = tuple[Sequence[int], float | None, tuple[np.ndarray, np.ndarray] | None, tuple[int, int | None, int | None] | None]
# (batch_size, beta, updates, (total mass, smallest positive mass) of the other shards[, batches]): see draw_batch
BatchRequest = tuple[Any, ...]

APPLIED_BATCHES_KEPT = 65_536  # ids of recent batches, so a batch retried on the same shard applies once


class ReplayShardImpl:
    """A local buffer plus the shard's index, which it puts in the top bits of the ids it issues.

    Args:
        shard_index: position of this shard in the coordinator's shard list (0-based).
        capacity, buffer_type, buffer_kwargs: as for ReplayBuffer (schema, seed, alpha, beta, eps,
            sampling, on_full, collect_stats, next_state, frame_stack_axis).
        checkpoint_path, checkpoint_every_s, checkpoint_every_adds: see checkpoint.Checkpointer; the
            shard starts from the file at checkpoint_path when there is one.
    """

    def __init__(self, shard_index: int, capacity: int, buffer_type: BufferType = "uniform", *, checkpoint_path: str | None = None,
                 checkpoint_every_s: float | None = None, checkpoint_every_adds: int | None = None, **buffer_kwargs: Any) -> None:
        self.shard_index = int(shard_index)
        self._checkpoints = Checkpointer(checkpoint_path, checkpoint_every_s, checkpoint_every_adds) if checkpoint_path else None
        restored = self._checkpoints.restore() if self._checkpoints is not None else None
        self.buffer = restored if restored is not None else ReplayBuffer(capacity, buffer_type, **buffer_kwargs)
        self.restored_rows = len(restored) if restored is not None else 0
        self.incarnation = uuid.uuid4().hex
        self._replaced = restored is not None  # contents not all from adds to this process
        self.updates_for_lost_rows = 0
        self._fenced = False
        self._applied: OrderedDict[str, None] = OrderedDict()
        self._bookkeeping = threading.Lock()  # checkpoint bookkeeping, shared by the actor's two threads
        self._reads = threading.Lock()  # draws and updates, one at a time: the reads thread and direct channels'
        self._direct: DirectServer | None = None
        self._prioritized = buffer_type == "prioritized"

    def snapshot(self) -> Snapshot:
        """Size, mass, smallest positive mass and lifetime row counters, from one stats() call."""
        s = self.buffer.stats()
        self._observe(s)
        if self._prioritized:
            return Snapshot(s["size"], s["total_priority"], s["min_priority"], s["adds"], s["samples"])
        return Snapshot(s["size"], float(s["size"]), 0.0, s["adds"], s["samples"])

    def add(self, *fields: Any, **named: Any) -> Snapshot:
        self._check_not_fenced()
        self.buffer.add(*fields, **named)
        self._changed(1)
        return self.snapshot()

    def add_batch(self, *columns: Any, batch_id: str | None = None, stored: Mapping[str, Any] | None = None, **named: Any) -> Snapshot:
        """``batch_id``: a writer's id for this batch; a batch this shard already applied is not applied
        again (a writer that could not tell whether its write landed retries it here). ``stored``: the
        codec fields compressed by the writer ({field: {"lengths", "data"}}, see
        writes.compress_codec_fields), kept as they come after a check that every row decodes."""
        self._check_not_fenced()
        if batch_id is not None and batch_id in self._applied:
            return self.snapshot()
        if stored is not None:
            if columns:
                raise ValueError("rows with stored compressed fields come as named columns only")
            priorities, streams = named.pop("priorities", None), named.pop("streams", None)
            self.buffer._add_stored_batch(named, stored, priorities=priorities, streams=streams)
        else:
            self.buffer.add_batch(*columns, **named)
        if batch_id is not None:
            self._applied[batch_id] = None
            if len(self._applied) > APPLIED_BATCHES_KEPT:
                self._applied.popitem(last=False)
        first = columns[0] if columns else next((v for k, v in named.items() if k not in ("priorities", "streams")), None)
        if first is None:  # every field came stored
            first = next(iter(stored.values()))["lengths"] if stored else ()
        self._changed(len(first))  # validated by add_batch: every column has this many rows
        return self.snapshot()

    def add_run(self, run: tuple[Sequence[Any], Mapping[str, Any]]) -> WireSnapshot:
        """add_batch(*columns, **named) for ``run = (columns, named)``: the writers' call (writes.Write.run).
        One argument instead of one per column and option: Ray serializes each argument of a call on its
        own. Measured here (a no-op actor method, 1,000 rows of 5 columns plus a batch id, 8 calls in
        flight, 2 cores): CPU per call in the caller 580-620 -> 430-460 us, in the actor 533 -> 410-420
        us; 1,550-1,620 -> 2,010-2,120 calls/s. The snapshot comes back as a plain tuple (see WireSnapshot)."""
        columns, named = run
        return self.add_batch(*columns, **named).wire()

    def _check_not_fenced(self) -> None:
        if self._fenced:
            raise ShardFencedError(f"shard {self.shard_index} is being synchronized with its replica; write to another shard")

    def _changed(self, rows_added: int) -> None:
        if self._checkpoints is not None:
            with self._bookkeeping:  # the reads and writes threads of the actor both get here
                self._checkpoints.changed(self.buffer, rows_added)

    def sample(self, batch_size: int, beta: float | None = None, partial: bool = False,
               updates: tuple[np.ndarray, np.ndarray] | None = None,
               sequence: tuple[int, int | None, int | None] | None = None) -> tuple[dict[str, np.ndarray] | None, Snapshot]:
        """(rows or None, snapshot); batch_size 0 only reports the snapshot.

        ``sequence``: (seq_len, min_len, period) of ReplayBuffer.sample: sequences of this shard's rows
        (a stream's rows stay in one shard, see writes.Router.plan_streams), with "mask" and global "ids".

        ``updates``: (global ids, priorities) of earlier samples, applied first (as update_priorities),
        so a learner's update rides with its next sample request: one round trip per step.
        Prioritized rows carry global "ids" and their masses m_i (instead of local weights and
        probabilities, which the caller recomputes over all shards).
        """
        with self._reads:
            if updates is not None:
                self._apply_updates(*updates)  # the snapshot below covers them
            if batch_size == 0:
                return None, self.snapshot()
            if self.buffer.buffer_type == "fifo" and partial and len(self.buffer) == 0:
                return None, self.snapshot()
            batch = self._draw(batch_size, beta, partial, sequence)
            return batch, self.snapshot()

    def sample_rounds(self, counts: Sequence[int], beta: float | None = None, updates: tuple[np.ndarray, np.ndarray] | None = None,
                      sequence: tuple[int, int | None, int | None] | None = None) -> tuple[list[dict[str, np.ndarray] | None], Snapshot]:
        """Several prefetched rounds in one call (not fifo): the rows of each count (None for a count of
        0), then one snapshot; ``updates`` and ``sequence`` as for sample. Saves a round trip per extra round."""
        with self._reads:
            if updates is not None:
                self._apply_updates(*updates)
            parts = [self._draw(int(n), beta, False, sequence) if n else None for n in counts]
            return parts, self.snapshot()

    def draw(self, request: DrawRequest) -> tuple[list[dict[str, np.ndarray] | None], WireSnapshot]:
        """sample_rounds(counts, beta, updates, sequence) for ``request`` = those four: the client's sample
        call, in one argument for the reason add_run gives (measured here with a 256-id update riding
        along, 2 calls in flight: CPU per call in the caller 474-485 -> 421-424 us, in the actor 463 ->
        400-403 us); the snapshot as a plain tuple (see WireSnapshot)."""
        parts, snapshot = self.sample_rounds(*request)
        return parts, snapshot.wire()

    def serve_draw(self, counts: list[int], updates: tuple[np.ndarray, np.ndarray] | None) -> tuple[list[dict[str, np.ndarray] | None], WireSnapshot]:
        """draw((counts, None, updates, None)): what a direct channel asks (see direct.py)."""
        return self.draw((counts, None, updates, None))

    def direct_address(self, host: str) -> tuple[str, int, str]:
        """(host, port, token) of this shard's direct sample server (started on the first call), for
        ReplayClient(sample_transport="direct"): see direct.py."""
        if self._direct is None:
            self._direct = DirectServer(self.serve_draw, host)
        return self._direct.address

    def close_direct(self) -> None:
        """Stops the direct sample server, if one runs (its clients then sample through Ray)."""
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    def draw_batch(self, request: BatchRequest) -> tuple[Any, ...]:
        """Whole one_shard batches, finished here: ReplayClient.sample_ref hands the batches (the first
        returns of this call: ``num_returns`` = batches + 1 on the actor) to its caller as they are, so
        the rows take one hop, from this shard to whoever calls ``ray.get``; the client keeps the
        snapshot (the last return).

        ``request`` = (batch_size, beta, updates, others[, batches]): ``updates`` as for sample;
        ``others`` = the total mass and the smallest positive mass of the other shards, as the caller
        last saw them; ``batches`` (default 1) independent draws of batch_size rows. Prioritized rows get
        what ShardTable.merge would give them: probabilities m_i / S with S = this shard's mass now +
        ``others``' total, and weights (m_i / m_min)^-beta with m_min over this shard and ``others``.
        Uniform rows need nothing (the shard was picked by size). A batch_size of 0 is a probe: the
        updates applied, an empty batch and the snapshot."""
        batch_size, beta, updates, (others_mass, others_min) = request[:4]
        count = int(request[4]) if len(request) > 4 else 1
        with self._reads:
            if updates is not None:
                self._apply_updates(*updates)  # the snapshot below covers them
            if batch_size == 0:  # a probe: the snapshot (and the updates applied)
                return {}, self.snapshot().wire()
            batches = [self._draw(batch_size, beta, False, None) for _ in range(count)]
            snapshot = self.snapshot()
        if self._prioritized:
            min_mass = smallest_positive((snapshot.min_mass, others_min))
            for batch in batches:
                finish_prioritized(batch, batch.pop("masses"), snapshot.mass + others_mass, min_mass, beta)
        return (*batches, snapshot.wire())

    def _draw(self, batch_size: int, beta: float | None, partial: bool,
              sequence: tuple[int, int | None, int | None] | None) -> dict[str, np.ndarray]:
        if len(self.buffer) == 0:
            raise StalePlanError(f"shard {self.shard_index} holds no rows (it restarted); plan the sample again")
        # With replacement: any batch_size. Masses come from the draw itself (under the buffer's lock), so
        # they stay exact while the writes thread adds rows between the draw and the snapshot.
        seq_len, min_len, period = sequence if sequence is not None else (None, None, None)
        batch = self.buffer.sample(batch_size, beta=beta, partial=partial, masses=self._prioritized, seq_len=seq_len, min_len=min_len,
                                   period=period)
        self._changed(0)
        if self._prioritized:
            del batch["weights"], batch["probabilities"]
        if "ids" in batch:  # prioritized, and the sequences of any buffer type
            batch["ids"] = encode_ids(self.shard_index, batch["ids"])
        return batch

    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> Snapshot:
        """Takes global ids of this shard; stale ones are ignored and counted by the local buffer."""
        with self._reads:
            self._apply_updates(ids, priorities)
            return self.snapshot()

    def _apply_updates(self, ids: np.ndarray, priorities: np.ndarray) -> None:
        ids = np.asarray(ids)
        if ids.dtype.kind in "iu" and ids.ndim == 1 and ids.size:
            shards = ids.astype(np.int64, copy=False) >> LOCAL_ID_BITS
            wrong = shards != self.shard_index
            if wrong.any():
                j = int(np.argmax(wrong))
                raise ValueError(f"ids[{j}] = {int(ids[j])} belongs to shard {int(shards[j])}, not to shard {self.shard_index}")
            ids = local_ids(ids.astype(np.int64, copy=False))
            # After a restart or a copy from a replica, ids sampled from the previous contents may lie
            # beyond what this buffer issued (rows lost, or not yet copied back): stale, not invalid.
            if self._replaced:
                issued = ids < self.buffer.stats()["adds"]
                priorities = np.asarray(priorities)
                if not issued.all() and priorities.shape == ids.shape:
                    self.updates_for_lost_rows += int((~issued).sum())
                    ids, priorities = ids[issued], priorities[issued]
        self.buffer.update_priorities(ids, priorities)
        self._changed(0)

    def schema(self) -> dict[str, tuple[tuple[int, ...], Any]] | None:
        """The buffer's schema once known (given, or inferred from the first add), else None."""
        return self.buffer.schema or None

    def _observe(self, stats: Mapping[str, Any]) -> None:
        """Called with the buffer's stats on every reply; the actor exports them as metrics."""

    def stats(self) -> dict[str, Any]:
        checkpoints = self._checkpoints.stats() if self._checkpoints is not None else {}
        return {"shard": self.shard_index, **self.buffer.stats(), **checkpoints, "restored_rows": self.restored_rows,
                "updates_for_lost_rows": self.updates_for_lost_rows}

    def get_state(self) -> Mapping[str, Any]:
        return self.buffer.get_state()

    # -- replicas and restarts -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Who is answering: this process's incarnation id and pid, and the shard's size."""
        return {"incarnation": self.incarnation, "pid": os.getpid(), "size": len(self.buffer)}

    def fence(self, fenced: bool = True) -> None:
        """Refuses (or again accepts) writes; a caller copying replicas fences both ends first."""
        self._fenced = bool(fenced)

    def replica_state(self) -> dict[str, Any]:
        """What a replica needs to become this one: the buffer's state and the ids of recent batches."""
        # Compressed fields travel as stored: no decompression here, no recompression in the replica.
        return {"buffer": self.buffer._get_state(stored=True), "applied": list(self._applied)}

    def set_replica_state(self, state: Mapping[str, Any]) -> Snapshot:
        """Becomes a copy of the replica whose ``replica_state()`` this is (and checkpoints, when enabled)."""
        self.buffer = type(self.buffer).from_state(state["buffer"])
        self._applied = OrderedDict.fromkeys(state["applied"])
        self._replaced = True
        if self._checkpoints is not None:
            self._checkpoints.checkpoint_now(self.buffer, full=True)
        return self.snapshot()

    def close(self) -> None:
        """Waits for a checkpoint write in progress, then stops the checkpoint writer (before shutdown),
        and the direct sample server."""
        self.close_direct()
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None

    def checkpoint(self) -> None:
        """Writes a checkpoint now and waits for it (needs checkpoint_path)."""
        if self._checkpoints is None:
            raise ValueError("this shard has no checkpoint_path")
        self._checkpoints.checkpoint_now(self.buffer)


@ray.remote(concurrency_groups={"writes": 1, "reads": 1})  # type: ignore[call-overload]  # Ray's overloads omit this actor option
class ReplayShard(ReplayShardImpl):
    """The Ray actor hosting one shard; created by ReplayCoordinator (with ``shard_options``).

    Two threads: writes (add, add_batch, add_run, replica copies, checkpoints) run on one, samples and priority
    updates on the other, so a learner's sample never queues behind the writers' calls; the native
    buffer takes its own lock and releases the GIL for the copies, so the two overlap. A client that
    samples with ``sample_transport="direct"`` gets a thread of its own for its connection (direct.py),
    whose draws take turns with the reads thread's (one lock). Control calls
    (stats, health, fence, ...) run on Ray's default group.

    With ``metrics_name`` set, it exports its stats as Ray metrics tagged with that name (see
    ray_replay.monitoring), at most once a second.
    """

    def __init__(self, shard_index: int, capacity: int, buffer_type: BufferType = "uniform", *, metrics_name: str | None = None,
                 **buffer_kwargs: Any) -> None:
        self.mmap_threshold_fixed = fix_mmap_threshold()  # before the buffer exists: see allocator.py
        super().__init__(shard_index, capacity, buffer_type, **buffer_kwargs)
        with warnings.catch_warnings():  # Ray 2.60's property calls one of its own deprecated APIs
            warnings.simplefilter("ignore", DeprecationWarning)
            self._restarts = int(ray.get_runtime_context().was_current_actor_reconstructed)
        self._replaced = self._replaced or self._restarts > 0
        self._metrics = ShardMetrics(metrics_name, shard_index) if metrics_name else None

    def _observe(self, stats: Mapping[str, Any]) -> None:
        if self._metrics is not None and self._metrics.due():
            self._metrics.publish(stats, self._restarts)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "restarts": self._restarts, "pid": os.getpid(), "incarnation": self.incarnation,
                "node_id": self.node_id()}

    @ray.method(concurrency_group="writes")
    def add(self, *fields: Any, **named: Any) -> Snapshot:
        return super().add(*fields, **named)

    @ray.method(concurrency_group="writes")
    def add_batch(self, *columns: Any, batch_id: str | None = None, **named: Any) -> Snapshot:
        return super().add_batch(*columns, batch_id=batch_id, **named)

    @ray.method(concurrency_group="writes")
    def add_run(self, run: tuple[Sequence[Any], Mapping[str, Any]]) -> WireSnapshot:  # type: ignore[override]
        return super().add_run(run)

    # (mypy types a @ray.method as a remote-method object, not a method: hence the override ignores.)
    # Fencing and replica copies run on the writes thread, so a write in progress finishes before the
    # fence (or the copy) and none slips between the copy and the fence.
    @ray.method(concurrency_group="writes")
    def fence(self, fenced: bool = True) -> None:  # type: ignore[override]
        super().fence(fenced)

    @ray.method(concurrency_group="writes")
    def replica_state(self) -> dict[str, Any]:  # type: ignore[override]
        return super().replica_state()

    @ray.method(concurrency_group="writes")
    def set_replica_state(self, state: Mapping[str, Any]) -> Snapshot:  # type: ignore[override]
        return super().set_replica_state(state)

    @ray.method(concurrency_group="writes")
    def checkpoint(self) -> None:  # type: ignore[override]
        super().checkpoint()

    @ray.method(concurrency_group="writes")
    def close(self) -> None:  # type: ignore[override]
        super().close()

    @ray.method(concurrency_group="reads")
    def sample(self, batch_size: int, beta: float | None = None, partial: bool = False,
               updates: tuple[np.ndarray, np.ndarray] | None = None,
               sequence: tuple[int, int | None, int | None] | None = None) -> tuple[dict[str, np.ndarray] | None, Snapshot]:
        return super().sample(batch_size, beta, partial, updates, sequence)

    @ray.method(concurrency_group="reads")
    def sample_rounds(self, counts: Sequence[int], beta: float | None = None, updates: tuple[np.ndarray, np.ndarray] | None = None,
                      sequence: tuple[int, int | None, int | None] | None = None) -> tuple[list[dict[str, np.ndarray] | None], Snapshot]:
        return super().sample_rounds(counts, beta, updates, sequence)

    @ray.method(concurrency_group="reads")
    def draw(self, request: DrawRequest) -> tuple[list[dict[str, np.ndarray] | None], WireSnapshot]:  # type: ignore[override]
        return super().draw(request)

    @ray.method(concurrency_group="reads", num_returns=2)
    def draw_batch(self, request: BatchRequest) -> tuple[Any, ...]:  # type: ignore[override]
        return super().draw_batch(request)

    @ray.method(concurrency_group="reads")
    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> Snapshot:  # type: ignore[override]
        return super().update_priorities(ids, priorities)

    def direct_address(self) -> tuple[str, int, str]:  # type: ignore[override]
        """The direct sample server's (host, port, token), on this node's address (see direct.py)."""
        return super().direct_address(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]  # untyped in Ray

    def node_id(self) -> str:
        """The Ray node this shard lives on (to check placement)."""
        return ray.get_runtime_context().get_node_id()
