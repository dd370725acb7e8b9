"""DistributedReplay: the object users pass around; every payload takes one hop, to or from a shard.

In the spirit of Ray's ``util/queue.py``: a public, picklable facade over a private actor (the
``ReplayCoordinator``, which keeps only control: the shard map, health, rate limits, stats). Data
methods run in the calling process through a ``ReplayClient`` made on first use in each process (and
thread), so rows go from the writer straight to their shards and samples come straight back; the
coordinator never sees a payload.

::

    replay = DistributedReplay(4_000_000, num_shards=4, buffer_type="prioritized")
    writer = Writer.remote(replay)               # pickles as the coordinator handle + options

    # in any process: plain calls ...
    replay.add_batch(states, actions, rewards, next_states, dones)
    batch = replay.sample(512); replay.update_priorities(batch["ids"], new_priorities)
    # ... or Ray-style calls, as on the coordinator handle (they return ObjectRefs)
    replay.add.remote(state, action, reward, next_state, done)
    batch = ray.get(replay.sample.remote(512))

    replay.size(), replay.stats(), replay.flush()
    replay.shutdown()                            # flushes, closes checkpoint writers, removes shards

With ``client_options={"batch_from": "one_shard"}``, ``sample.remote(n)`` (``n`` and ``beta`` only; flat
fields) waits for nothing: it returns the ObjectRef of the shard's own reply (ReplayClient.sample_ref),
so a learner keeps several samples in flight as on any actor handle. Otherwise ``.remote`` runs the call
here (a sample usually comes from the client's prefetch) and puts its result in the object store.

Read-your-writes within a process: ``size``, ``stats`` and every other control call first flush this
process's staged rows and wait for their acknowledgement. Between processes, rows become visible as
their writers send them (``flush_interval_s``, or ``flush()``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import ray

from ray_replay.buffer import BufferType
from ray_replay.distributed.client import ReplayClient
from ray_replay.distributed.coordinator import ReplayCoordinator

__all__ = ["DistributedReplay"]

_DATA = ("add", "add_batch", "sample", "update_priorities")
_NONE: dict[str, Any] = {}  # one ObjectRef of None per Ray job (the result of every write), not a put per call


def _none_ref(actor: Any) -> Any:
    """An ObjectRef of None, made once per process and job by a call on ``actor``: a small actor return
    lives in this process's own memory store, so ``ray.get`` of it costs 14-21 us here, against
    74-89 us for an object that ``ray.put`` placed in the object store (a writer gets one per call)."""
    job = ray.get_runtime_context().get_job_id()
    if job not in _NONE:
        _NONE.clear()
        ref = actor.__ray_call__.remote(_return_none)
        try:
            ray.get(ref)
        except ray.exceptions.RayError:  # the coordinator is down: a put does as well (the write itself went to a shard)
            ref = ray.put(None)
        _NONE[job] = ref
    return _NONE[job]


def _return_none(_actor: Any) -> None:
    return None


class _Method:
    """``replay.m(...)`` runs m; ``replay.m.remote(...)`` runs it too (writes are staged or sent, a sample
    is usually prefetched) and returns an ObjectRef of the result, as a call on an actor handle does."""

    def __init__(self, call: Callable[..., Any], remote: Callable[..., Any]) -> None:
        self._call, self._remote = call, remote

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._remote(*args, **kwargs)


class DistributedReplay:
    """A sharded replay on Ray (see ReplayCoordinator for every argument), used from any process.

    Args:
        capacity, num_shards, buffer_type, **coordinator_options: as for ReplayCoordinator.
        actor_options: passed to ``ReplayCoordinator.options(...)`` (name, namespace, max_restarts,
            num_cpus, resources, ...).
        client_options: passed to each process's ReplayClient (batch_rows, flush_interval_s,
            max_in_flight, prefetch, rounds_per_call, batch_from, sample_transport, seed).
    """

    def __init__(self, capacity: int, num_shards: int = 2, buffer_type: BufferType = "uniform", *, actor_options: Mapping[str, Any] | None = None,
                 client_options: Mapping[str, Any] | None = None, **coordinator_options: Any) -> None:
        actor = ReplayCoordinator.options(**dict(actor_options or {})).remote(  # type: ignore[attr-defined]  # @ray.remote's ActorClass
            capacity, num_shards, buffer_type, **coordinator_options)
        self._bind(actor, dict(client_options or {}))
        try:
            ray.get(actor.client_config.remote())
        except ray.exceptions.ActorDiedError as error:  # a bad argument: raise the coordinator's own error
            if not error.actor_init_failed:
                raise
            last = str(error).strip().splitlines()[-1]
            kind, _, message = last.partition(": ")
            raise (TypeError if kind.endswith("TypeError") else ValueError)(message or last) from None

    @classmethod
    def from_actor(cls, actor: Any, client_options: Mapping[str, Any] | None = None) -> DistributedReplay:
        """The facade over a running ReplayCoordinator (a handle, or the name of a named one)."""
        self = cls.__new__(cls)
        self._bind(ray.get_actor(actor) if isinstance(actor, str) else actor, dict(client_options or {}))
        return self

    def _bind(self, actor: Any, client_options: dict[str, Any]) -> None:
        self.actor = actor  # the ReplayCoordinator actor handle: control only
        self._client_options = client_options
        self._local = threading.local()
        for name in _DATA:
            setattr(self, name, _Method(self._data(name), self._data_remote(name)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (DistributedReplay.from_actor, (self.actor, self._client_options))

    # -- data: through this process's client, one hop -------------------------------------------------

    @property
    def client(self) -> ReplayClient:
        """This process's (and thread's) ReplayClient, made on first use."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = ReplayClient(self.actor, **self._client_options)
        return client

    def _data(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(self.client, name)(*args, **kwargs)
        call.__name__ = name
        call.__doc__ = getattr(ReplayClient, name).__doc__
        return call

    def _data_remote(self, name: str) -> Callable[..., Any]:
        def remote(*args: Any, **kwargs: Any) -> Any:
            client = self.client
            if name == "sample" and client.samples_by_ref and len(args) + len(kwargs) <= 2 and set(kwargs) <= {"batch_size", "beta"}:
                # one_shard clients: the ObjectRef of the shard's own reply, nothing waited for or put here
                return client.sample_ref(*args, **kwargs)
            result = getattr(client, name)(*args, **kwargs)
            return _none_ref(self.actor) if result is None else ray.put(result)
        return remote

    def flush(self) -> None:
        """Sends this process's staged rows and waits until everything it sent is stored."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.flush()

    def client_stats(self) -> dict[str, Any]:
        """This process's write counts (ReplayClient.stats()): rows handed, acknowledged, in flight, failed."""
        return self.client.stats()

    # -- control: the coordinator ----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.size())

    def __getattr__(self, name: str) -> Any:
        """Every coordinator method (``size``, ``stats``, ``shard_handles``, ``client_config``, ...):
        ``replay.size()`` returns the result, ``replay.size.remote()`` an ObjectRef, as on the handle;
        both flush this process's writes first (read-your-writes)."""
        if name.startswith("_") or name == "actor":
            raise AttributeError(name)
        method = getattr(self.actor, name)

        def remote(*args: Any, **kwargs: Any) -> Any:
            self.flush()
            return method.remote(*args, **kwargs)
        return _Method(lambda *args, **kwargs: ray.get(remote(*args, **kwargs)), remote)

    def shutdown(self, force: bool = False, grace_period_s: float = 5.0) -> None:
        """Flushes this process's writes (unless ``force``), then the coordinator closes every shard's
        checkpoint writer (waiting up to ``grace_period_s`` for writes in progress), removes the
        shards, and the coordinator actor itself is killed. Idempotent."""
        client = getattr(self._local, "client", None)
        if client is not None:
            if not force:
                client.close()
            self._local.client = None
        try:
            ray.get(self.actor.shutdown.remote(grace_period_s=0.0 if force else grace_period_s))
        except ray.exceptions.RayActorError:
            pass  # already gone
        ray.kill(self.actor)

    def __enter__(self) -> DistributedReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"DistributedReplay({self.actor!r})"
