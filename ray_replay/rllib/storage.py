"""Where the episode buffer's rows live: the seam between the RLlib adapter and ray_replay's backends.

``LocalStorage`` keeps them in one native prioritized buffer in the Algorithm's process. A sharded
backend (rows spread over Ray shards behind a ``ReplayCoordinator``, with global prioritized sampling;
a stream's rows stay on one shard) implements the same methods; ``make_storage`` picks one from the
``backend`` option. Rows are sampled as sequences of their stream (``seq_len``): the episode buffer
gathers n-step transitions and RLlib sequences from them.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ray_replay.buffer import ReplayBuffer

__all__ = ["LocalStorage", "ShardedStorage", "Storage", "make_storage"]


class Storage(Protocol):
    """Rows in (each in its episode's stream), prioritized sequences of rows (plus ``mask``, and one
    ``weights`` and ``ids`` per sequence) out; priorities per sequence, or per step with a mask."""

    capacity: int

    def add_batch(self, columns: dict[str, np.ndarray], priorities: np.ndarray | None, streams: np.ndarray | None) -> None: ...
    def sample(self, size: int, beta: float | None = None, seq_len: int | None = None) -> dict[str, np.ndarray]: ...
    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray, mask: np.ndarray | None = None) -> None: ...
    def __len__(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...
    def get_state(self) -> dict[str, Any]: ...
    def set_state(self, state: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def share(self, key: str, value: Any) -> Any: ...
    def shared(self, key: str) -> Any: ...


class LocalStorage:
    """One native ``ReplayBuffer`` in this process: prioritized (alpha, beta, eps), or uniform."""

    def __init__(self, capacity: int, *, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-6, seed: int | None,
                 buffer_type: str = "prioritized") -> None:
        options = {"alpha": alpha, "beta": beta, "eps": eps} if buffer_type == "prioritized" else {}
        self._buffer = ReplayBuffer(capacity, buffer_type, seed=seed, **options)  # type: ignore[arg-type]  # "prioritized" or "uniform"
        self.capacity = capacity
        self._shared: dict[str, Any] = {}

    def add_batch(self, columns: dict[str, np.ndarray], priorities: np.ndarray | None, streams: np.ndarray | None) -> None:
        self._buffer.add_batch(**columns, priorities=priorities, streams=streams)

    def sample(self, size: int, beta: float | None = None, seq_len: int | None = None) -> dict[str, np.ndarray]:
        return self._buffer.sample(size, beta=beta, seq_len=seq_len)

    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray, mask: np.ndarray | None = None) -> None:
        self._buffer.update_priorities(ids, priorities, mask=mask)

    def __len__(self) -> int:
        return len(self._buffer)

    def stats(self) -> dict[str, Any]:
        return self._buffer.stats()

    def get_state(self) -> dict[str, Any]:
        return self._buffer.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._buffer = ReplayBuffer.from_state(state)

    def flush(self) -> None:
        """Rows are stored as they are added: nothing to wait for."""

    def share(self, key: str, value: Any) -> Any:
        """Keeps ``value`` under ``key`` unless one is there; returns the one kept (as ShardedStorage)."""
        return self._shared.setdefault(key, value)

    def shared(self, key: str) -> Any:
        return self._shared.get(key)


class ShardedStorage:
    """Rows spread over the Ray shards of a running ``ReplayCoordinator`` (global prioritized sampling).

    Writes go through a ``ReplayClient`` (staged, sent in batches; ``sample`` sends what is staged
    first so every added row can be drawn). No prefetching, so each sample sees the last priority
    update. The coordinator's capacity, alpha and beta apply; its buffer type must be ``buffer_type``.
    """

    def __init__(self, coordinator: Any, *, seed: int | None, buffer_type: str = "prioritized") -> None:
        import ray

        from ray_replay.distributed import ReplayClient

        if isinstance(coordinator, str):
            coordinator = ray.get_actor(coordinator)
        self._ray = ray
        self._coordinator = coordinator
        self._client = ReplayClient(coordinator, prefetch=0, seed=seed)
        stats = self.stats()
        if stats["buffer_type"] != buffer_type:
            raise ValueError(f"the ReplayCoordinator must be {buffer_type!r}, it is {stats['buffer_type']!r}")
        self.capacity = int(stats["capacity"])

    def add_batch(self, columns: dict[str, np.ndarray], priorities: np.ndarray | None, streams: np.ndarray | None) -> None:
        named: dict[str, Any] = columns  # (as Any: mypy would match **columns against add_batch's wait: bool)
        self._client.add_batch(**named, priorities=priorities, streams=streams)

    def sample(self, size: int, beta: float | None = None, seq_len: int | None = None) -> dict[str, np.ndarray]:
        self._client.flush()
        return self._client.sample(size, beta=beta, seq_len=seq_len)

    def update_priorities(self, ids: np.ndarray, priorities: np.ndarray, mask: np.ndarray | None = None) -> None:
        self._client.update_priorities(ids, priorities, mask=mask)

    def flush(self) -> None:
        """Returns once every row added so far is stored in its shard."""
        self._client.flush()

    def __len__(self) -> int:
        self._client.flush()
        return int(self._ray.get(self._coordinator.size.remote()))

    def share(self, key: str, value: Any) -> Any:
        """What every writer of this replay must agree on (e.g. the rows' layout): kept by the
        coordinator, first value wins; returns the value kept. One coordinator call."""
        return self._ray.get(self._coordinator.set_metadata.remote(key, value))

    def shared(self, key: str) -> Any:
        """The value some writer shared under ``key`` (None if none has yet). One coordinator call."""
        return self._ray.get(self._coordinator.metadata.remote(key))

    def stats(self) -> dict[str, Any]:
        """The coordinator's counters summed over the shards."""
        return dict(self._ray.get(self._coordinator.stats.remote())["total"])

    def get_state(self) -> dict[str, Any]:
        raise NotImplementedError("checkpoint a sharded replay through its ReplayCoordinator, not the RLlib buffer")

    def set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError("checkpoint a sharded replay through its ReplayCoordinator, not the RLlib buffer")


def make_storage(backend: Any, capacity: int, *, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-6, seed: int | None,
                 buffer_type: str = "prioritized") -> Storage:
    """``"local"``, or a running ``ReplayCoordinator`` (actor handle or actor name) for the sharded backend
    (whose buffer type must be ``buffer_type``; its own capacity and priority settings apply)."""
    if isinstance(backend, str) and backend == "local":
        return LocalStorage(capacity, alpha=alpha, beta=beta, eps=eps, seed=seed, buffer_type=buffer_type)
    return ShardedStorage(backend, seed=seed, buffer_type=buffer_type)
