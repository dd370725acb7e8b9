"""DistributedReplay: the picklable facade whose every payload goes straight to or from a shard.

Through the coordinator's own handle, every row of ``replay.add_batch.remote(...)`` passes through the
coordinator actor (two hops, and the coordinator's CPU); through the facade the coordinator relays
none, whichever style of call is used and from whichever process.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from helpers import SCHEMA, assert_rows_consistent, transitions

from ray_replay import DistributedReplay


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
