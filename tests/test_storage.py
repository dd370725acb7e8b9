"""Where rows live: file-backed columns (storage_dir), prefaulting, and the memory of sample() results."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import assert_same_contents

from ray_replay import BUFFER_TYPES, ReplayBuffer

OBSERVATION = (16,)


def feed(buffer: ReplayBuffer, start: int, count: int) -> None:
    index = np.arange(start, start + count)
    state = (index[:, None] + np.arange(16) / 16).astype(np.float32)
    buffer.add_batch(state, index, (index / 2).astype(np.float32), state + 1, index % 5 == 0)


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_a_storage_dir_buffer_survives_its_process_and_matches_a_ram_buffer(tmp_path, buffer_type):
    folder = tmp_path / "replay"
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
        from test_storage import feed
        from ray_replay import ReplayBuffer
        buffer = ReplayBuffer(64, {buffer_type!r}, seed=5, on_full="evict", storage_dir={str(folder)!r})
        feed(buffer, 0, 150)
        if buffer.buffer_type == "fifo":
            buffer.sample(20)
        elif buffer.buffer_type == "prioritized":
            batch = buffer.sample(16)
            buffer.update_priorities(batch["ids"], batch["action"] % 7 + 0.5)
        buffer.flush()
    """)
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=60, cwd=tmp_path)
    reference = ReplayBuffer(64, buffer_type, seed=5, on_full="evict")
    feed(reference, 0, 150)
    if buffer_type == "fifo":
        reference.sample(20)
    elif buffer_type == "prioritized":
        batch = reference.sample(16)
        reference.update_priorities(batch["ids"], batch["action"] % 7 + 0.5)

    with ReplayBuffer.open(folder) as reopened:
        assert reopened.storage_dir == str(folder.resolve())
        assert_same_contents(reopened, reference)
        expected, actual = reference.sample(10), reopened.sample(10)  # the random state came back too
        for name in expected:
            np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
        feed(reopened, 150, 30)
        feed(reference, 150, 30)
    assert_same_contents(ReplayBuffer.open(folder), reference)  # the with block flushed


def test_columns_are_files_of_the_full_capacity_filled_lazily(tmp_path):
    buffer = ReplayBuffer(100_000, storage_dir=tmp_path)
    feed(buffer, 0, 10)
    files = sorted(tmp_path.glob("column-*.bin"))
    assert len(files) == 5
    assert files[0].stat().st_size == 100_000 * 16 * 4
    assert files[0].stat().st_blocks * 512 < 1 << 20  # sparse: only written pages take disk


def test_storage_dir_misuse_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no flushed ray_replay buffer"):
        ReplayBuffer.open(tmp_path)
    buffer = ReplayBuffer(8, storage_dir=tmp_path)
    feed(buffer, 0, 3)
    buffer.flush()
    with pytest.raises(FileExistsError, match="already holds a buffer"):
        ReplayBuffer(8, storage_dir=tmp_path)
    with pytest.raises(ValueError, match="storage_dir does not combine with next_state='dedup'"):
        ReplayBuffer(8, storage_dir=tmp_path / "other", next_state="dedup")
    with pytest.raises(ValueError, match="flush\\(\\) is for buffers with storage_dir"):
        ReplayBuffer(8).flush()
    assert len(ReplayBuffer.open(tmp_path)) == 3


RESIDENT_GROWTH = """
import sys
import numpy as np
from ray_replay import ReplayBuffer

def resident_bytes():
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * 4096

before = resident_bytes()
buffer = ReplayBuffer(16_384, sys.argv[1], schema={"state": ((1024,), np.float32), "action": ((), np.int64)}, prefault=sys.argv[2] == "1")
print(resident_bytes() - before, len(buffer))
"""


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_prefault_maps_the_storage_up_front(tmp_path, buffer_type):
    def growth(prefault: bool) -> int:  # in a fresh process: no recycled, already resident memory
        done = subprocess.run([sys.executable, "-c", RESIDENT_GROWTH, buffer_type, "1" if prefault else "0"],
                              capture_output=True, text=True, check=True, timeout=60, cwd=tmp_path)
        grown, size = map(int, done.stdout.split())
        assert size == 0
        return grown

    assert growth(prefault=False) < 8 << 20
    assert growth(prefault=True) > 60 << 20  # the 64 MiB state column (4 KiB rows) is resident before any add


def test_large_sample_arrays_are_independent_writeable_and_outlive_the_buffer():
    buffer = ReplayBuffer(50, seed=0)
    rows = np.random.default_rng(0).integers(0, 255, (50, 84, 84, 4), dtype=np.uint8)
    buffer.add_batch(rows, np.arange(50), np.zeros(50, np.float32), rows, np.zeros(50, bool))
    first = buffer.sample(8)
    kept = first["state"].copy()
    for _ in range(6):  # recycled blocks never back two live arrays
        buffer.sample(8)
    np.testing.assert_array_equal(first["state"], kept)
    np.testing.assert_array_equal(first["state"], rows[first["action"]])
    first["state"][:] = 0  # the caller owns it
    del buffer
    second_owner = first["next_state"]
    del first
    np.testing.assert_array_equal(second_owner.shape, (8, 84, 84, 4))
