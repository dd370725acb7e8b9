"""Nested fields over Ray shards: shards hold the flat leaf columns, the coordinator and every process's
ReplayClient flatten writes and rebuild samples (the layout travels in client_config)."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from test_nested import SCHEMA, _concat, assert_sample_matches, row, rows

from ray_replay import DistributedReplay


@ray.remote(num_cpus=0)
def write_and_sample(replay: DistributedReplay, start: int) -> dict:
    replay.add_batch(**rows(30, start))
    replay.flush()
    return replay.sample(16)


def test_sharded_nested_replay_round_trips(ray_local):
    replay = DistributedReplay(200, num_shards=2, buffer_type="prioritized", schema=SCHEMA, seed=0, metrics=False)
    try:
        first, second = rows(30), rows(30, 30)
        data = {k: _concat(first[k], second[k]) for k in first}
        replay.add_batch(**first)
        remote_sample = ray.get(write_and_sample.remote(replay, 30))  # another process, through the pickled facade
        assert_sample_matches(remote_sample, data)
        replay.add(**row(rows(1, 60), 0))
        data = {k: _concat(data[k], rows(1, 60)[k]) for k in data}
        replay.flush()
        assert replay.size() == 61
        shards = replay.stats()["shards"]
        assert all(s["size"] > 0 for s in shards)  # spread over both shards
        sample = replay.sample(64)
        assert_sample_matches(sample, data)
        replay.update_priorities(sample["ids"], np.ones(64))
        relayed = ray.get(replay.actor.sample.remote(8))  # the coordinator's own path rebuilds the structure too
        assert_sample_matches(relayed, data)
        bad = rows(2, 70)
        bad["obs"].pop("image")
        with pytest.raises(ValueError, match="'obs.image': missing"):
            replay.add_batch(**bad)
        replay.flush()
        assert replay.size() == 61
    finally:
        replay.shutdown()

