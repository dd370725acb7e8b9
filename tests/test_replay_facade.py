"""DistributedReplay: the picklable facade whose every payload goes straight to or from a shard.

Through the coordinator's own handle, every row of ``replay.add_batch.remote(...)`` passes through the
coordinator actor (two hops, and the coordinator's CPU); through the facade the coordinator relays
none, whichever style of call is used and from whichever process.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
from helpers import SCHEMA, assert_rows_consistent, transitions

from ray_replay import DistributedReplay
from ray_replay.distributed.sampling import LOCAL_ID_BITS


@pytest.fixture
def make(ray_local):
    made = []

    def create(*args, **kwargs):
        kwargs.setdefault("schema", SCHEMA)
        kwargs.setdefault("metrics", False)
        replay = DistributedReplay(*args, **kwargs)
        made.append(replay)
        return replay

    yield create
    for replay in made:
        replay.shutdown()


@ray.remote(num_cpus=0)
class Writer:
    def __init__(self, replay: DistributedReplay) -> None:
        self.replay = replay

    def write(self, start: int, rows: int) -> dict:
        for i in range(start, start + rows // 2):  # single rows, Ray style
            row = {k: v[0] for k, v in transitions(1, i).items()}
            ray.get(self.replay.add.remote(**row))
        self.replay.add_batch(**transitions(rows - rows // 2, start + rows // 2), wait=True)
        return self.replay.client_stats()

    def sample(self, n: int) -> dict:
        return self.replay.sample(n)


def test_writes_and_samples_take_one_hop_from_any_process(make):
    # Room for every row wherever the two concurrent writers put theirs (they route independently).
    replay = make(6000, 3, "prioritized", client_options={"batch_rows": 256})
    writers = [Writer.remote(replay) for _ in range(2)]
    counts = ray.get([w.write.remote(1000 * i, 1000) for i, w in enumerate(writers)])
    assert [c["rows_acknowledged"] for c in counts] == [1000, 1000] and all(c["rows_failed"] == 0 for c in counts)
    ray.get(replay.add_batch.remote(**transitions(1000, 2000)))
    assert replay.size() == 3000  # read-your-writes: the facade flushes this process's rows first
    stats = replay.stats()
    assert sum(s["size"] for s in stats["shards"]) == 3000 and stats["total"]["evictions"] == 0
    assert min(s["size"] for s in stats["shards"]) >= 500  # spread, within about a batch per writer
    assert stats["total"]["rows_relayed_by_coordinator"] == 0
    batch = ray.get(writers[0].sample.remote(1000))  # with replacement, from a writer's process
    assert batch["weights"].shape == (1000,)
    assert_rows_consistent(batch)
    remote_style = ray.get(replay.sample.remote(64))
    replay.update_priorities(remote_style["ids"], np.full(64, 3.0))
    replay.flush()
    assert replay.stats()["total"]["priority_updates"] == 64
    for w in writers:
        ray.kill(w)


@pytest.mark.parametrize("buffer_type", ["uniform", "prioritized"])
def test_with_one_shard_sample_remote_returns_the_shards_own_reply(make, buffer_type, monkeypatch):
    """client_options={"batch_from": "one_shard"}: ``sample.remote(n)`` waits for nothing and puts
    nothing in the object store (the ref is the shard's reply); the rows are whole and from one shard,
    with the probabilities and weights of one buffer holding every row; a priority update rides with
    the next request to its shard."""
    replay = make(2000, 2, buffer_type, alpha=1.0, client_options={"batch_from": "one_shard", "seed": 0})
    priorities = np.where(np.arange(1000) % 2 == 0, 1.0, 3.0)  # mass of action a (alpha 1): 1 if even, 3 if odd
    replay.add_batch(**transitions(1000), priorities=priorities if buffer_type == "prioritized" else None)
    replay.flush()
    with monkeypatch.context() as patch:
        patch.setattr(ray, "put", lambda *a, **k: pytest.fail("sample.remote put its result in the object store"))
        refs = [replay.sample.remote(64, beta=0.5) for _ in range(8)]  # 8 in flight, none waited for
    assert replay.client_stats()["sample_rounds_in_flight"] == 0  # not the client's prefetch
    for batch in ray.get(refs):
        assert_rows_consistent(batch)
        assert len(batch["action"]) == 64
        if buffer_type == "prioritized":
            assert len(np.unique(batch["ids"] >> LOCAL_ID_BITS)) == 1
            mass = priorities[batch["action"]]
            np.testing.assert_allclose(batch["probabilities"], mass / priorities.sum(), rtol=1e-9)
            np.testing.assert_allclose(batch["weights"], mass ** -0.5, rtol=1e-5)
    if buffer_type == "prioritized":
        shards = ray.get(replay.shard_handles.remote())
        before = sum(ray.get(s.stats.remote())["priority_updates"] for s in shards)
        replay.update_priorities(batch["ids"], np.full(64, 5.0))
        for _ in range(4):  # the shard is picked, or asked for its snapshot once that is 20 ms old
            time.sleep(0.03)
            ray.get(replay.sample.remote(8))
        assert sum(ray.get(s.stats.remote())["priority_updates"] for s in shards) == before + 64


def test_sample_ref_needs_one_shard_batches(make):
    replay = make(100, 2, "uniform")
    replay.add_batch(**transitions(10))
    with pytest.raises(ValueError, match="batch_from='one_shard'"):
        replay.client.sample_ref(4)
    assert len(ray.get(replay.sample.remote(4))["action"]) == 4  # sample.remote: the client's sample, put


def test_the_coordinator_handle_still_works_and_is_counted_as_relayed(make):
    replay = make(1000, 2, "uniform")
    ray.get(replay.actor.add_batch.remote(**transitions(100)))
    assert replay.stats()["total"]["rows_relayed_by_coordinator"] == 100
    assert ray.get(replay.size.remote()) == 100  # control calls, Ray style too
    assert len(replay) == 100


@pytest.mark.parametrize("buffer_type", ["uniform", "prioritized"])
def test_a_process_samples_the_rows_it_just_wrote(make, buffer_type):
    replay = make(1000, 2, buffer_type)
    replay.add_batch(**transitions(10))  # fewer than batch_rows: staged, not yet sent
    batch = replay.sample(64)
    assert set(batch["action"].tolist()) <= set(range(10)) and len(batch["action"]) == 64
    replay.add(**{k: v[0] for k, v in transitions(1, 10).items()})
    assert replay.client_stats()["rows_staged"] == 1
    replay.sample(1)  # sends the staged row first
    assert replay.client_stats()["rows_staged"] == 0


def test_bad_input_raises_at_the_call_and_writes_nothing(make):
    replay = make(100, 2, "prioritized")
    with pytest.raises(ValueError, match="state"):
        replay.add_batch(**{**transitions(3), "state": np.zeros((3, 7), np.float32)})
    with pytest.raises(ValueError, match="batch_size"):
        replay.sample(0)
    with pytest.raises(ValueError, match="priorit"):
        replay.add(**{k: v[0] for k, v in transitions(1).items()}, priority=-1.0)
    assert replay.size() == 0


def test_a_bad_coordinator_argument_fails_at_construction(ray_local):
    with pytest.raises(ValueError, match="buffer_type"):
        DistributedReplay(100, 2, "stack")


def test_from_a_named_actor_and_shutdown(ray_local):
    replay = DistributedReplay(100, 2, "uniform", schema=SCHEMA, metrics=False, actor_options={"name": "facade-test"})
    again = DistributedReplay.from_actor("facade-test")
    again.add_batch(**transitions(10), wait=True)
    assert replay.size() == 10
    replay.shutdown()
    replay.shutdown()  # idempotent
    with pytest.raises(ValueError):
        ray.get_actor("facade-test")
