"""One shard of a distributed replay: a local ReplayBuffer that answers every call with a Snapshot.

``ReplayShardImpl`` is the plain class (testable without Ray); ``ReplayShard`` is the Ray actor over it.
The actor runs one call at a time (Ray's default), so the Snapshot sent back is consistent with the
rows of the same reply: the masses of a sample and the shard's total mass S_k come from one state.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray

from ray_replay.buffer import ReplayBuffer
from ray_replay.monitoring import ShardMetrics
from ray_replay.distributed.sampling import LOCAL_ID_BITS, Snapshot, encode_ids, local_ids

__all__ = ["ReplayShard", "ReplayShardImpl"]


class ReplayShardImpl:
    """A local buffer plus the shard's index, which it puts in the top bits of the ids it issues.

    Args:
        shard_index: position of this shard in the coordinator's shard list (0-based).
        capacity, buffer_type, buffer_kwargs: as for ReplayBuffer (schema, seed, alpha, beta, eps,
            sampling, on_full, collect_stats).
    """

    def __init__(self, shard_index: int, capacity: int, buffer_type: str = "uniform", **buffer_kwargs: Any) -> None:
        self.shard_index = int(shard_index)
        self.buffer = ReplayBuffer(capacity, buffer_type, **buffer_kwargs)
        self._prioritized = buffer_type == "prioritized"

    def snapshot(self) -> Snapshot:
        """Size, mass, smallest positive mass and lifetime row counters, from one stats() call."""
        s = self.buffer.stats()
        self._observe(s)
        if self._prioritized:
            return Snapshot(s["size"], s["total_priority"], s["min_priority"], s["adds"], s["samples"])
        return Snapshot(s["size"], float(s["size"]), 0.0, s["adds"], s["samples"])

    def add(self, *fields: Any, **named: Any) -> Snapshot:
        self.buffer.add(*fields, **named)
        return self.snapshot()

    def add_batch(self, *columns: Any, **named: Any) -> Snapshot:
        self.buffer.add_batch(*columns, **named)
        return self.snapshot()

    def sample(self, batch_size: int, beta: float | None = None, partial: bool = False) -> tuple[dict[str, np.ndarray] | None, Snapshot]:
        """(rows or None, snapshot); batch_size 0 only reports the snapshot.

        Prioritized rows carry global "ids" and their masses m_i (instead of local weights and
        probabilities, which the caller recomputes over all shards).
        """
        if batch_size == 0:
            return None, self.snapshot()
        if self.buffer.buffer_type == "fifo" and partial and len(self.buffer) == 0:
            return None, self.snapshot()
        capacity = self.buffer.capacity
        if batch_size <= capacity:
            batch = self.buffer.sample(batch_size, beta=beta, partial=partial)
        else:  # a shard holding most of the mass may be asked for more rows than it can hold at once
            chunks = [self.buffer.sample(min(capacity, batch_size - start), beta=beta) for start in range(0, batch_size, capacity)]
            batch = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
        snapshot = self.snapshot()
        if self._prioritized:
            batch.pop("weights")
            batch["masses"] = batch.pop("probabilities") * snapshot.mass
            batch["ids"] = encode_ids(self.shard_index, batch["ids"])
        return batch, snapshot

    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray) -> Snapshot:
        """Takes global ids of this shard; stale ones are ignored and counted by the local buffer."""
        ids = np.asarray(ids)
        if ids.dtype.kind in "iu" and ids.ndim == 1 and ids.size:
            shards = ids.astype(np.int64, copy=False) >> LOCAL_ID_BITS
            wrong = shards != self.shard_index
            if wrong.any():
                j = int(np.argmax(wrong))
                raise ValueError(f"ids[{j}] = {int(ids[j])} belongs to shard {int(shards[j])}, not to shard {self.shard_index}")
            ids = local_ids(ids.astype(np.int64, copy=False))
        self.buffer.update_priorities(ids, priorities)
        return self.snapshot()

    def schema(self) -> dict[str, tuple[tuple[int, ...], Any]] | None:
        """The buffer's schema once known (given, or inferred from the first add), else None."""
        return self.buffer.schema or None

    def _observe(self, stats: Mapping[str, Any]) -> None:
        """Called with the buffer's stats on every reply; the actor exports them as metrics."""

    def stats(self) -> dict[str, Any]:
        return {"shard": self.shard_index, **self.buffer.stats()}

    def get_state(self) -> Mapping[str, Any]:
        return self.buffer.get_state()


@ray.remote
class ReplayShard(ReplayShardImpl):
    """The Ray actor hosting one shard; created by ReplayCoordinator (with ``shard_options``).

    With ``metrics_name`` set, it exports its stats as Ray metrics tagged with that name (see
    ray_replay.monitoring), at most once a second.
    """

    def __init__(self, shard_index: int, capacity: int, buffer_type: str = "uniform", *, metrics_name: str | None = None,
                 **buffer_kwargs: Any) -> None:
        super().__init__(shard_index, capacity, buffer_type, **buffer_kwargs)
        with warnings.catch_warnings():  # Ray 2.60's property calls one of its own deprecated APIs
            warnings.simplefilter("ignore", DeprecationWarning)
            self._restarts = int(ray.get_runtime_context().was_current_actor_reconstructed)
        self._metrics = ShardMetrics(metrics_name, shard_index) if metrics_name else None

    def _observe(self, stats: Mapping[str, Any]) -> None:
        if self._metrics is not None and self._metrics.due():
            self._metrics.publish(stats, self._restarts)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "restarts": self._restarts, "pid": os.getpid()}

    def node_id(self) -> str:
        """The Ray node this shard lives on (to check placement)."""
        return ray.get_runtime_context().get_node_id()
