"""save/load: exact round trips for every buffer type, atomic writes, and files that must be refused."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
from helpers import SCHEMA, transitions

from ray_replay import BUFFER_TYPES, ReplayBuffer
from ray_replay.persistence import MAGIC, CorruptFileError


def filled(buffer_type: str, capacity: int = 64) -> ReplayBuffer:
    buf = ReplayBuffer(capacity, buffer_type, schema=SCHEMA, seed=4)
    buf.add_batch(**transitions(50 if buffer_type == "fifo" else 100))
    buf.sample(8)
    if buffer_type == "prioritized":
        batch = buf.sample(8)
        buf.update_priorities(batch["ids"], np.linspace(0.0, 2.0, 8))
    return buf


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_round_trip_is_exact_including_sampling_after_load(buffer_type, tmp_path):
    buf = filled(buffer_type)
    path = tmp_path / "buffer.rrb"
    buf.save(path)
    loaded = ReplayBuffer.load(path)
    assert loaded.buffer_type == buffer_type and loaded.capacity == buf.capacity and loaded.schema == buf.schema
    assert {k: v for k, v in loaded.stats().items() if "_ns" not in k} == {k: v for k, v in buf.stats().items() if "_ns" not in k}
    original, restored = buf.get_state(), loaded.get_state()
    for name in SCHEMA:
        np.testing.assert_array_equal(restored["columns"][name], original["columns"][name])
    np.testing.assert_array_equal(restored["masses"], original["masses"])
    np.testing.assert_array_equal(restored["random"], original["random"])
    for _ in range(3):
        a, b = buf.sample(8), loaded.sample(8)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_an_empty_buffer_round_trips(tmp_path):
    ReplayBuffer(10, "prioritized", alpha=0.3).save(tmp_path / "empty.rrb")
    loaded = ReplayBuffer.load(tmp_path / "empty.rrb")
    assert len(loaded) == 0 and loaded.schema == {}
    loaded.add(1.0, 2)
    assert len(loaded) == 1


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_a_buffer_with_a_schema_and_no_rows_round_trips(buffer_type, tmp_path):
    # Found by the model-based test: empty columns broke the writer.
    ReplayBuffer(5, buffer_type, schema=SCHEMA).save(tmp_path / "b.rrb")
    loaded = ReplayBuffer.load(tmp_path / "b.rrb")
    assert len(loaded) == 0 and loaded.schema == ReplayBuffer(5, schema=SCHEMA).schema


def test_save_replaces_the_file_atomically(tmp_path, monkeypatch):
    path = tmp_path / "buffer.rrb"
    filled("uniform").save(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk died")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk died"):
        filled("prioritized").save(path)
    assert path.read_bytes() == before  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["buffer.rrb"]  # no temporary left behind


def valid_file(tmp_path) -> bytes:
    path = tmp_path / "valid.rrb"
    filled("prioritized").save(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda data: b"", "too short"),
        (lambda data: data[:10], "too short"),
        (lambda data: b"PK\x03\x04" + data[4:], "bad magic"),
        (lambda data: data[:8] + (99).to_bytes(4, "little") + data[12:], "version 99"),
        (lambda data: data[:12] + (2**31).to_bytes(4, "little") + data[16:], "header length"),
        (lambda data: data[:30] + bytes([data[30] ^ 1]) + data[31:], "header checksum"),
        (lambda data: data[: len(data) // 2], "truncated|outside the file"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), "checksum mismatch in section"),
    ],
)
def test_damaged_files_are_refused(tmp_path, mangle, message):
    path = tmp_path / "bad.rrb"
    path.write_bytes(mangle(valid_file(tmp_path)))
    with pytest.raises(CorruptFileError, match=message):
        ReplayBuffer.load(path)


def test_fuzzed_files_never_crash(tmp_path):
    """Random mutations of a valid file: each loads cleanly or raises CorruptFileError, nothing else."""
    data = bytearray(valid_file(tmp_path))
    rng = np.random.default_rng(0)
    path = tmp_path / "fuzz.rrb"
    outcomes = {"refused": 0, "loaded": 0}
    for trial in range(300):
        mutated = bytearray(data)
        kind = trial % 4
        if kind == 0:  # flip bits anywhere
            for position in rng.integers(0, len(mutated), size=rng.integers(1, 8)):
                mutated[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # truncate
            mutated = mutated[: int(rng.integers(0, len(mutated)))]
        elif kind == 2:  # random garbage with a valid magic
            mutated = bytearray(MAGIC + rng.bytes(int(rng.integers(0, 4096))))
        else:  # rewrite a header number (JSON stays well formed, values are hostile)
            text = bytes(mutated[20:200])
            digits = [i for i, c in enumerate(text) if chr(c).isdigit()]
            position = 20 + digits[int(rng.integers(0, len(digits)))]
            mutated[position] = ord("9")
        path.write_bytes(bytes(mutated))
        try:
            ReplayBuffer.load(path)
            outcomes["loaded"] += 1
        except CorruptFileError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 250


def test_a_hostile_but_consistent_header_cannot_force_an_allocation(tmp_path):
    import json
    import struct
    import zlib

    header = {"capacity": 2**60, "buffer_type": "uniform", "seed": 0, "alpha": 0.6, "beta": 0.4, "eps": 1e-6,
              "sampling": "stratified", "on_full": "error", "collect_stats": True, "schema": [["x", [2**30], "<f8"]],
              "sections": []}
    encoded = json.dumps(header).encode()
    path = tmp_path / "hostile.rrb"
    path.write_bytes(struct.pack("<8sIII", MAGIC, 1, len(encoded), zlib.crc32(encoded)) + encoded)
    with pytest.raises(CorruptFileError, match="capacity"):
        ReplayBuffer.load(path)


def test_sections_start_where_the_header_says_whatever_its_length(tmp_path):
    """Regression: section offsets were fixed after two passes over the header, and offsets with more
    digits could push the final header past a 64-byte boundary, so every section landed 64 bytes after
    where the header put it (found by the checkpoint chain test once the header gained a key)."""
    from ray_replay.persistence import read_state, write_state

    buf = ReplayBuffer(400, "fifo", schema=SCHEMA, on_full="evict", seed=0)
    buf.add_batch(**transitions(400))
    for rows, id_length in [(r, n) for r in (1, 9, 10, 99, 100, 399) for n in range(1, 65)]:  # header lengths over 64 bytes
        state = {**buf._get_state(newest_rows=rows), "checkpoint_id": "a" * id_length}
        path = tmp_path / f"increment-{rows}-{id_length}.rrb"
        write_state(state, path)
        loaded = read_state(path)  # checks every section's checksum at its recorded offset
        np.testing.assert_array_equal(loaded["columns"]["state"], state["columns"]["state"])


@pytest.mark.parametrize("buffer_type", ["fifo", "uniform", "prioritized", "lockfree"])
def test_the_one_configuration_definition_covers_every_option_a_state_carries(buffer_type):
    """config.py lists the options once: every one is in a state, and a buffer built from them (as
    loading, unpickling and checkpoints do) has the same configuration, non-default values included."""
    from ray_replay.config import CONFIG_KEYS, OPTIONAL_CONFIG, config_of, constructor_options

    options = {"seed": 7, "alpha": 0.7, "beta": 0.5, "eps": 1e-3, "sampling": "proportional", "on_full": "evict",
               "collect_stats": False, "prefault": True, "compress": {"obs": "zstd"}, "sequence_priority_eta": 0.25}
    if buffer_type != "prioritized":
        options = {k: v for k, v in options.items() if k not in ("alpha", "sampling", "eps")}
    if buffer_type != "fifo":
        options.pop("on_full")
    buf = ReplayBuffer(64, buffer_type, schema={"obs": ((64,), np.uint8), "reward": ((), np.float32)}, **options)
    state = buf.get_state()
    assert set(CONFIG_KEYS) | set(OPTIONAL_CONFIG) <= set(state)
    # and the converse: every constructor option (but the schema and storage_dir, which travel beside
    # the configuration) is rebuilt from it, so an option added to ReplayBuffer and not to config.py fails here
    parameters = set(inspect.signature(ReplayBuffer.__init__).parameters) - {"self", "capacity", "buffer_type", "schema", "storage_dir"}
    assert set(constructor_options(state)) == parameters
    again = ReplayBuffer(state["capacity"], state["buffer_type"], schema={"obs": ((64,), np.uint8), "reward": ((), np.float32)},
                         **constructor_options(state))
    assert config_of(again.get_state()) == config_of(state)
    assert config_of(state)["codecs"] == {"obs": "zstd:3"} and config_of(state)["sequence_priority_eta"] == 0.25  # the level recorded
    # an old state without the later options gets their defaults
    old = {k: v for k, v in state.items() if k not in OPTIONAL_CONFIG}
    assert {k: config_of(old)[k] for k in OPTIONAL_CONFIG} == dict(OPTIONAL_CONFIG)
