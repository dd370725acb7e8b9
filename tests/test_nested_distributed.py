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
    replay.add_batch(**rows(20, start))
    replay.flush()
    return replay.sample(16)


def test_sharded_nested_replay_round_trips(ray_local):
    replay = DistributedReplay(400, num_shards=2, buffer_type="prioritized", schema=SCHEMA, seed=0, metrics=False)
    try:
        data = rows(250)
        replay.add_batch(**data)
        replay.flush()
        assert all(s["size"] > 0 for s in replay.stats()["shards"])  # 250 rows cannot fit one shard of 200
        remote_sample = ray.get(write_and_sample.remote(replay, 250))  # another process, through the pickled facade
        data = {k: _concat(data[k], rows(20, 250)[k]) for k in data}
        assert_sample_matches(remote_sample, data)
        replay.add(**row(rows(1, 270), 0))
        replay.add_batch(**rows(9, 271))
        for more in (rows(1, 270), rows(9, 271)):
            data = {k: _concat(data[k], more[k]) for k in data}
        replay.flush()
        assert replay.size() == 280 and replay.stats()["total"]["evictions"] == 0
        sample = replay.sample(64)
        assert_sample_matches(sample, data)
        replay.update_priorities(sample["ids"], np.ones(64))
        relayed = ray.get(replay.actor.sample.remote(8))  # the coordinator's own path rebuilds the structure too
        assert_sample_matches(relayed, data)
        bad = rows(2, 300)
        bad["obs"].pop("image")
        with pytest.raises(ValueError, match="'obs.image': missing"):
            replay.add_batch(**bad)
        replay.flush()
        assert replay.size() == 280
    finally:
        replay.shutdown()


def test_nested_values_without_a_schema_are_refused_clearly(ray_local):
    replay = DistributedReplay(100, num_shards=2, metrics=False)
    try:
        with pytest.raises(TypeError, match="'obs': nested .* need the nested schema up front"):
            replay.add_batch(obs={"a": np.zeros((2, 3))}, action=np.zeros(2))
        replay.add_batch(obs=np.zeros((2, 3)), action=np.zeros(2))  # flat values still infer the schema
        replay.flush()
        assert replay.size() == 2
    finally:
        replay.shutdown()

