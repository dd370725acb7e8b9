"""The codecs follow the build: ``ray_replay.CODECS`` says which there are, and a build without them
(``-DREPLAY_BUFFER_WITH_COMPRESSION=OFF``, run by ``make test-nocodec``, which sets
RAY_REPLAY_EXPECT_CODECS=0) refuses every codec with a clear error and works otherwise."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ray_replay
from ray_replay import ReplayBuffer

EXPECT_CODECS = os.environ.get("RAY_REPLAY_EXPECT_CODECS", "1") == "1"
SCHEMA = {"obs": ((8, 8), np.uint8), "action": ((), np.int64)}


def rows(n: int) -> dict[str, np.ndarray]:
    obs = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 64, axis=1).reshape(n, 8, 8)
    return {"obs": obs, "action": np.arange(n)}


def test_the_build_has_the_codecs_it_was_built_with() -> None:
    assert ray_replay.CODECS == (("lz4", "zstd") if EXPECT_CODECS else ())


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_a_codec_works_or_is_refused_naming_the_build(codec: str) -> None:
    if ray_replay.CODECS:
        buffer = ReplayBuffer(100, schema=SCHEMA, compress={"obs": codec}, seed=0)
        buffer.add_batch(**rows(50))
        batch = buffer.sample(20)
        np.testing.assert_array_equal(batch["obs"][:, 0, 0], batch["action"].astype(np.uint8))
        assert buffer.stats()["compression"]["obs"]["codec"].startswith(codec)
        return
    stacks = np.zeros((3, 4, 8, 8), np.uint8)
    dedup = ReplayBuffer(100, next_state="dedup", frame_stack_axis=0, compress={"state": codec, "next_state": codec})
    for make in (
        lambda: ReplayBuffer(100, schema=SCHEMA, compress={"obs": codec}),
        lambda: ReplayBuffer(100, schema={"obs": ((8, 8), np.uint8, codec), "action": ((), np.int64)}),
        lambda: dedup.add_batch(state=stacks, action=np.arange(3), next_state=stacks),  # the schema comes with the first add
    ):
        with pytest.raises(ValueError, match="REPLAY_BUFFER_WITH_COMPRESSION=OFF"):
            make()
    assert len(dedup) == 0


def test_a_buffer_without_codecs_works_in_every_build() -> None:
    buffer = ReplayBuffer(100, schema=SCHEMA, buffer_type="prioritized", seed=0)
    buffer.add_batch(**rows(50))
    batch = buffer.sample(20)
    np.testing.assert_array_equal(batch["obs"][:, 0, 0], batch["action"].astype(np.uint8))
    assert "compression" not in buffer.stats()
