"""Per-field compression (LZ4, Zstandard): exact round trips under every codec and buffer type, rows
stored raw where compression does not pay, wrap-around and eviction, stats, state, save/load and
checkpoints, and the errors of bad codec specs. No Ray is started."""

from __future__ import annotations

import json
import pickle
import struct
import threading
import zlib
from typing import Any

import numpy as np
import pytest

from ray_replay import BUFFER_TYPES, ReplayBuffer
from ray_replay.distributed.checkpoint import Checkpointer
from ray_replay.persistence import MAGIC, CorruptFileError

CODECS: list[Any] = ["lz4", "zstd", "zstd:9", ("zstd", 1)]
CODEC_NAMES = {"lz4": "lz4", "zstd": "zstd:3", "zstd:9": "zstd:9", ("zstd", 1): "zstd:1"}
COMPRESSED = ("image", "noise", "zeros", "vector")


def schema(codec: Any) -> dict[str, tuple[Any, ...]]:
    return {
        "image": ((16, 16, 3), np.uint8, codec),   # smooth: compresses
        "noise": ((96,), np.uint8, codec),         # random bytes: stored raw
        "zeros": ((512,), np.uint8, codec),        # all zeros: compresses a lot
        "vector": ((24,), np.float32, codec),      # float noise: usually raw
        "id": ((), np.int64),                      # uncompressed: names the row
        "reward": ((), np.float32),
    }


def rows(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic contents of the rows with these ids."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    gradient = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8)
    image = np.empty((n, 16, 16, 3), np.uint8)
    noise = np.empty((n, 96), np.uint8)
    vector = np.empty((n, 24), np.float32)
    for i, row in enumerate(ids):
        image[i] = (gradient[:, :, None] + np.array([row % 251, 3, 7], np.uint8)).astype(np.uint8)
        image[i, int(row) % 16] = 255
        generator = np.random.default_rng(int(row))
        noise[i] = generator.integers(0, 256, 96, dtype=np.uint8)
        vector[i] = generator.standard_normal(24).astype(np.float32)
    return {"image": image, "noise": noise, "zeros": np.zeros((n, 512), np.uint8), "vector": vector, "id": ids,
            "reward": ids.astype(np.float32) / 7}


def assert_rows_exact(batch: dict[str, np.ndarray]) -> None:
    for name, values in rows(batch["id"]).items():
        np.testing.assert_array_equal(batch[name], values, err_msg=name)


def make(buffer_type: str, codec: Any = "lz4", capacity: int = 40, **kwargs: Any) -> ReplayBuffer:
    if buffer_type == "fifo":
        kwargs.setdefault("on_full", "evict")
    return ReplayBuffer(capacity, buffer_type, schema=schema(codec), seed=7, **kwargs)


@pytest.mark.parametrize("codec", CODECS, ids=str)
@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_every_field_round_trips_exactly_through_wrap_around_and_eviction(buffer_type, codec):
    buf = make(buffer_type, codec)
    start = 0
    for size in (7, 30, 1, 25, 90):  # wraps the 40-row ring several times; the last batch is longer than it
        buf.add_batch(**rows(np.arange(start, start + size)))
        start += size
    for i in range(3):
        buf.add(**{name: value[0] for name, value in rows(np.array([start + i])).items()})
    start += 3
    assert len(buf) == 40
    stats = buf.stats()
    assert stats["evictions"] == start - 40
    if buffer_type == "fifo":
        batch = buf.sample(40)
        np.testing.assert_array_equal(batch["id"], np.arange(start - 40, start))  # the newest 40, oldest first
    else:
        batch = buf.sample(200)
        assert set(batch["id"]) <= set(range(start - 40, start))
    assert_rows_exact(batch)
    assert buf.codecs == dict.fromkeys(COMPRESSED, CODEC_NAMES[codec])


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_samples_equal_those_of_an_uncompressed_buffer_fed_the_same(buffer_type):
    plain = ReplayBuffer(50, buffer_type, schema={k: v[:2] for k, v in schema("lz4").items()}, seed=3,
                         **({"on_full": "evict"} if buffer_type == "fifo" else {}))
    packed = ReplayBuffer(50, buffer_type, schema=schema("zstd"), seed=3, **({"on_full": "evict"} if buffer_type == "fifo" else {}))
    for start in range(0, 130, 13):
        data = rows(np.arange(start, start + 13))
        priorities = np.linspace(0.1, 2.0, 13) if buffer_type == "prioritized" else None
        plain.add_batch(**data, priorities=priorities)
        packed.add_batch(**data, priorities=priorities)
    for _ in range(3):
        a, b = plain.sample(10), packed.sample(10)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert len(plain) == len(packed)


def test_incompressible_rows_are_stored_raw_and_zeros_shrink():
    buf = make("uniform", "lz4", capacity=100)
    buf.add_batch(**rows(np.arange(100)))
    stats = buf.stats()
    fields = stats["compression"]
    assert set(fields) == set(COMPRESSED)
    assert fields["noise"]["rows_stored_raw"] == 100 and fields["noise"]["bytes_held"] == 100 * 96
    assert fields["noise"]["ratio"] == 1.0
    assert fields["zeros"]["rows_stored_raw"] == 0 and fields["zeros"]["ratio"] > 10
    assert fields["image"]["ratio"] > 2
    row_bytes = 16 * 16 * 3 + 96 + 512 + 24 * 4 + 8 + 4
    assert stats["bytes_raw"] == 100 * row_bytes
    assert stats["bytes_held"] < stats["bytes_raw"]
    held = sum(entry["bytes_held"] for entry in fields.values())
    assert stats["bytes_held"] == held + 100 * (8 + 4 + 8)  # id, reward and the row's sequence number stay plain
    for entry in fields.values():
        assert entry["bytes_raw"] == 100 * {"image": 768, "noise": 96, "zeros": 512, "vector": 96}[[k for k, v in fields.items() if v is entry][0]]


def test_memory_follows_the_rows_held_as_they_come_and_go():
    """The blob log recycles chunks as rows leave: churning far more rows than the capacity keeps the
    reservation bounded, for rows of very different sizes."""
    buf = ReplayBuffer(2000, "fifo", schema={"x": ((4096,), np.uint8, "lz4")}, on_full="evict")
    generator = np.random.default_rng(0)
    reserved = []
    for step in range(60):
        batch = np.zeros((500, 4096), np.uint8)
        noisy = generator.random(500) < (0.9 if step % 2 else 0.1)  # alternate mostly raw and mostly tiny rows
        batch[noisy] = generator.integers(0, 256, (int(noisy.sum()), 4096), dtype=np.uint8)
        buf.add_batch(x=batch)
        if step % 3 == 2:
            buf.sample(300)
        reserved.append(buf.stats()["bytes_reserved"])
    # At most every row raw plus a few spare chunks: never growing with the rows that passed through.
    assert max(reserved[30:]) <= max(reserved[:30]) * 1.05
    assert buf.stats()["bytes_reserved"] < 2500 * 4096 + 16 * (1 << 20)


def test_a_large_batch_is_compressed_in_parallel_and_round_trips():
    buf = ReplayBuffer(3000, schema={"frame": ((64, 64, 3), np.uint8, "lz4"), "id": ((), np.int64)}, seed=0)
    frames = np.zeros((2500, 64, 64, 3), np.uint8)  # 30 MB: well above the parallel threshold
    frames[:, :8] = (np.arange(2500) % 256).astype(np.uint8)[:, None, None, None]
    frames[::7] = np.random.default_rng(1).integers(0, 256, (len(frames[::7]), 64, 64, 3), dtype=np.uint8)
    buf.add_batch(frame=frames, id=np.arange(2500))
    batch = buf.sample(500)
    np.testing.assert_array_equal(batch["frame"], frames[batch["id"]])
    assert buf.stats()["compression"]["frame"]["rows_stored_raw"] == len(frames[::7])


def test_the_lockfree_buffer_with_codecs_takes_threads_adding_and_sampling():
    buf = make("lockfree", "lz4", capacity=64)
    buf.add_batch(**rows(np.arange(64)))
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for start in range(offset, offset + 400, 20):
                buf.add_batch(**rows(np.arange(start, start + 20)))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def reader() -> None:
        try:
            for _ in range(50):
                assert_rows_exact(buf.sample(16))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(1000 * k,)) for k in (1, 2)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert buf.stats()["adds"] == 64 + 800


def test_dedup_combines_with_a_codec_on_other_fields():
    def data(start: int, n: int) -> dict[str, np.ndarray]:
        observations = np.arange(start, start + n + 1, dtype=np.float32)[:, None] * np.ones(8, np.float32)
        extra = rows(np.arange(start, start + n))["image"]
        return {"state": observations[:-1], "next_state": observations[1:], "action": np.arange(start, start + n), "image": extra}

    fields = {"state": ((8,), np.float32), "next_state": ((8,), np.float32), "action": ((), np.int64)}
    plain = ReplayBuffer(30, schema={**fields, "image": ((16, 16, 3), np.uint8)}, next_state="dedup", seed=1)
    packed = ReplayBuffer(30, schema={**fields, "image": ((16, 16, 3), np.uint8, "zstd")}, next_state="dedup", seed=1)
    for start in range(0, 80, 10):
        plain.add_batch(**data(start, 10), streams=0)
        packed.add_batch(**data(start, 10), streams=0)
    a, b = plain.sample(25), packed.sample(25)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert packed.stats()["frames_held"] == plain.stats()["frames_held"]  # the chain of observations still deduplicates
    restored = ReplayBuffer.from_state(packed.get_state())
    np.testing.assert_array_equal(restored.sample(5)["image"], ReplayBuffer.from_state(plain.get_state()).sample(5)["image"])


def test_compress_keyword_applies_to_an_inferred_schema():
    buf = ReplayBuffer(10, compress={"state": "lz4"})
    state = np.zeros(64, np.float32)
    buf.add(state, 1, 0.5, state + 1, False)
    assert buf.codecs == {"state": "lz4"}
    np.testing.assert_array_equal(buf.sample(1)["state"][0], state)
    assert buf.stats()["compression"]["state"]["ratio"] > 1


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
def test_state_pickle_and_save_load_round_trip(buffer_type, tmp_path):
    buf = make(buffer_type, "zstd:5")
    buf.add_batch(**rows(np.arange(55)))
    if buffer_type == "prioritized":
        batch = buf.sample(8)
        buf.update_priorities(batch["ids"], np.linspace(0.0, 3.0, 8))
    path = tmp_path / "compressed.rrb"
    buf.save(path)
    version, header_length = struct.unpack_from("<II", path.read_bytes(), 8)
    header = json.loads(path.read_bytes()[20 : 20 + header_length])
    assert header["codecs"] == dict.fromkeys(COMPRESSED, "zstd:5")
    assert version == 4 and header["stored_fields"] == list(COMPRESSED)  # carried as stored, not decompressed
    stored = {s["name"]: s["nbytes"] for s in header["sections"] if s["name"].startswith("__stored__:")}
    assert stored["__stored__:zeros"] < len(buf) * 512 / 10 and stored["__stored__:noise"] == len(buf) * 96
    for other in (ReplayBuffer.load(path), pickle.loads(pickle.dumps(buf)), ReplayBuffer.from_state(buf.get_state())):
        assert other.codecs == buf.codecs and len(other) == len(buf)
        keep = ("size", "adds", "evictions", "bytes_held", "bytes_raw", "compression")
        assert {k: other.stats()[k] for k in keep} == {k: buf.stats()[k] for k in keep}
        a, b = other.get_state(), buf.get_state()
        for name in a["columns"]:
            np.testing.assert_array_equal(a["columns"][name], b["columns"][name])
        np.testing.assert_array_equal(a["masses"], b["masses"])
    loaded = ReplayBuffer.load(path)
    for _ in range(2):
        x, y = loaded.sample(6), buf.sample(6)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_a_file_without_codecs_loads_as_before(tmp_path):
    plain = ReplayBuffer(20, schema={k: v[:2] for k, v in schema("lz4").items()}, seed=0)
    plain.add_batch(**rows(np.arange(12)))
    path = tmp_path / "plain.rrb"
    plain.save(path)
    raw = bytearray(path.read_bytes())
    header_length = struct.unpack_from("<I", raw, 12)[0]
    header = json.loads(raw[20 : 20 + header_length])
    del header["codecs"]  # a file written before codecs existed
    rewrite_header(path, raw, header)
    loaded = ReplayBuffer.load(path)
    assert loaded.codecs == {} and len(loaded) == 12
    assert_rows_exact(loaded.sample(12))


def rewrite_header(path: Any, raw: bytearray, header: dict[str, Any]) -> None:
    """Writes `header` into the file with a valid checksum, keeping the sections where they are (the
    reader reads exactly the header's length; the gap up to the first section is padding)."""
    _, version, _, _ = struct.unpack_from("<8sIII", raw, 0)
    encoded = json.dumps(header).encode()
    first_section = min([section["offset"] for section in header.get("sections", [])] or [len(raw)])
    assert 20 + len(encoded) <= first_section, "the new header does not fit before the sections"
    new = struct.pack("<8sIII", MAGIC, version, len(encoded), zlib.crc32(encoded)) + encoded
    path.write_bytes(new + bytes(raw[len(new) :]))


@pytest.mark.parametrize("codecs, message", [
    ({"image": "brotli"}, "unknown codec"),
    ({"ghost": "lz4"}, "compress names field 'ghost'"),
    ({"image": "zstd:99"}, "out of range"),
    ({"id": "lz4"}, "cannot be compressed"),
    (["lz4"], "codecs"),
])
def test_hostile_codec_headers_raise_corrupt_file_error(tmp_path, codecs, message):
    buf = make("uniform", "lz4")
    buf.add_batch(**rows(np.arange(5)))
    path = tmp_path / "hostile.rrb"
    buf.save(path)
    raw = bytearray(path.read_bytes())
    header_length = struct.unpack_from("<I", raw, 12)[0]
    header = json.loads(raw[20 : 20 + header_length])
    header["codecs"] = {**header["codecs"], **codecs} if isinstance(codecs, dict) else codecs
    rewrite_header(path, raw, header)
    with pytest.raises(CorruptFileError) as error:
        ReplayBuffer.load(path)
    assert message in str(error.value)


def test_a_checkpoint_chain_restores_a_compressed_buffer(tmp_path):
    checkpoints = Checkpointer(tmp_path / "shard.rrb", every_adds=20, compact_every=3)
    buf = make("prioritized", "lz4", capacity=60)
    for start in range(0, 150, 10):
        buf.add_batch(**rows(np.arange(start, start + 10)))
        checkpoints.changed(buf, 10)
        checkpoints.wait()
    checkpoints.checkpoint_now(buf)
    checkpoints.wait()
    checkpoints.close()
    restored = Checkpointer(tmp_path / "shard.rrb", every_adds=20).restore()
    assert restored is not None and restored.codecs == buf.codecs and len(restored) == 60
    a, b = restored.get_state(), buf.get_state()
    for name in a["columns"]:
        np.testing.assert_array_equal(a["columns"][name], b["columns"][name])
    assert_rows_exact(restored.sample(60))


def file_header(path: Any) -> tuple[int, dict[str, Any]]:
    raw = path.read_bytes()
    version, header_length = struct.unpack_from("<II", raw, 8)
    return version, json.loads(raw[20 : 20 + header_length])


def checkpoint_chain(path: Any, buffer_type: str, compact_every: int, codec: Any = "zstd") -> ReplayBuffer:
    """Random adds (some longer than the buffer: a full checkpoint), FIFO reads, priority updates and a
    checkpoint after each step, into a chain at ``path``; returns the buffer checkpointed."""
    checkpoints = Checkpointer(path, every_adds=10**9, compact_every=compact_every)
    buf = make(buffer_type, codec, capacity=40)
    rng = np.random.default_rng(3)
    added = 0
    for step in range(14):
        n = int(rng.choice([3, 9, 25, 55]))
        buf.add_batch(**rows(np.arange(added, added + n)))
        added += n
        if buffer_type == "prioritized":
            batch = buf.sample(6)
            buf.update_priorities(batch["ids"], rng.uniform(0.1, 3.0, 6))
        if buffer_type == "fifo" and step % 3 == 1:
            buf.sample(min(5, len(buf)))  # consumes the oldest rows
        checkpoints.changed(buf, n)
        checkpoints.checkpoint_now(buf)
    checkpoints.close()
    stats = checkpoints.stats()
    assert stats["checkpoint_failures"] == 0 and stats["full_checkpoints_written"] < stats["checkpoints_written"]
    return buf


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
@pytest.mark.parametrize("compact_every", [3, 100])
def test_a_checkpoint_chain_carries_compressed_rows_as_stored_and_restores_them_exactly(tmp_path, buffer_type, compact_every):
    path = tmp_path / "shard.rrb"
    buf = checkpoint_chain(path, buffer_type, compact_every)
    increments = sorted(path.parent.glob("shard.rrb.*.*"))
    assert increments or compact_every == 3
    for file in [path, *increments]:
        version, header = file_header(file)
        assert version == (5 if "increment" in header else 4) and header["stored_fields"] == list(COMPRESSED)
        zeros = section(header, "__stored__:zeros")["nbytes"]
        assert zeros < header["rows"] * 512 / 10  # the compressed bytes, not the rows decompressed
    chain = Checkpointer(path, every_adds=1)._read_chain()[0]
    expected = buf._get_state(stored=True)
    for name in COMPRESSED:  # byte for byte what the buffer stores: nothing decompressed or recompressed
        np.testing.assert_array_equal(chain["stored"][name]["lengths"], expected["stored"][name]["lengths"], err_msg=name)
        np.testing.assert_array_equal(chain["stored"][name]["data"], expected["stored"][name]["data"], err_msg=name)
    restored = Checkpointer(path, every_adds=1).restore()
    assert restored is not None and restored.codecs == buf.codecs
    keep = ("size", "adds", "evictions", "samples", "bytes_held", "bytes_raw", "compression")
    assert {k: restored.stats()[k] for k in keep} == {k: buf.stats()[k] for k in keep}
    a, b = restored.get_state(), buf.get_state()
    for name in b["columns"]:
        np.testing.assert_array_equal(a["columns"][name], b["columns"][name], err_msg=name)
    np.testing.assert_array_equal(a["masses"], b["masses"])
    np.testing.assert_array_equal(a["random"], b["random"])
    if buffer_type != "fifo":
        x, y = restored.sample(8), buf.sample(8)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_checkpoint_files_of_compressible_rows_are_much_smaller_than_the_rows(tmp_path):
    """Measured: 140 rows of 1,484 bytes (zeros and a smooth image compress, noise does not), a full
    checkpoint and 6 increments: the lz4 chain's files take 77 KB, the same rows decompressed 219 KB
    (what checkpoints of this buffer took before they carried compressed rows as stored)."""
    sizes = {}
    for name, codec in (("compressed", "lz4"), ("plain", None)):
        folder = tmp_path / name
        folder.mkdir()
        spec = {field: value[:2] if codec is None else value for field, value in schema(codec).items()}
        checkpoints = Checkpointer(folder / "shard.rrb", every_adds=10**9, compact_every=100)
        buf = ReplayBuffer(200, "uniform", schema=spec, seed=0)
        for start in range(0, 140, 20):
            buf.add_batch(**rows(np.arange(start, start + 20)))
            checkpoints.checkpoint_now(buf)
        checkpoints.close()
        sizes[name] = sum(file.stat().st_size for file in folder.iterdir())
    assert sizes["compressed"] < sizes["plain"] / 2, sizes


def write_stored_increment(tmp_path: Any) -> tuple[Any, Any]:
    """A compressed buffer's chain of a full checkpoint and one stored increment."""
    path = tmp_path / "shard.rrb"
    checkpoints = Checkpointer(path, every_adds=1)
    buf = make("uniform", "lz4", capacity=40)
    for start in (0, 10):
        buf.add_batch(**rows(np.arange(start, start + 10)))
        checkpoints.checkpoint_now(buf)
    checkpoints.close()
    return path, next(path.parent.glob("shard.rrb.*.1"))


def test_a_corrupt_stored_row_in_an_increment_fails_the_restore_cleanly(tmp_path):
    path, increment = write_stored_increment(tmp_path)
    raw = bytearray(increment.read_bytes())
    _, header = file_header(increment)
    image = section(header, "__stored__:image")
    for offset in range(image["offset"], image["offset"] + 40):
        raw[offset] ^= 0x5A
    write_with_checksums(increment, raw, header)
    with pytest.raises(CorruptFileError, match="does not decode"):
        Checkpointer(path, every_adds=1).restore()


def test_a_chain_that_mixes_stored_and_decompressed_increments_is_refused(tmp_path):
    from ray_replay.persistence import write_state

    path, increment = write_stored_increment(tmp_path)
    chain_id = file_header(path)[1]["checkpoint_id"]
    buf = Checkpointer(path, every_adds=1).restore()
    buf.add_batch(**rows(np.arange(20, 25)))
    write_state({**buf._get_state(newest_rows=5), "checkpoint_id": chain_id}, path.with_name(f"shard.rrb.{chain_id}.2"))
    with pytest.raises(CorruptFileError, match="mixes compressed fields stored"):
        Checkpointer(path, every_adds=1).restore()


def test_a_chain_of_decompressed_rows_restores_and_continues_as_a_new_stored_chain(tmp_path):
    """A chain written before checkpoints carried compressed rows as stored (versions 2 and 3)."""
    from ray_replay.persistence import write_state

    path = tmp_path / "shard.rrb"
    buf = make("prioritized", "lz4", capacity=40)
    buf.add_batch(**rows(np.arange(30)))
    write_state({**buf.get_state(), "checkpoint_id": "old"}, path)
    buf.add_batch(**rows(np.arange(30, 45)))
    write_state({**buf._get_state(newest_rows=15), "checkpoint_id": "old"}, path.with_name("shard.rrb.old.1"))
    assert file_header(path)[0] == 2 and file_header(path.with_name("shard.rrb.old.1"))[0] == 3
    checkpoints = Checkpointer(path, every_adds=1)
    restored = checkpoints.restore()
    assert restored is not None and restored.stats()["bytes_held"] == buf.stats()["bytes_held"]
    np.testing.assert_array_equal(restored.get_state()["columns"]["image"], buf.get_state()["columns"]["image"])
    restored.add_batch(**rows(np.arange(45, 50)))
    checkpoints.checkpoint_now(restored)  # a full checkpoint: a new chain, stored
    checkpoints.close()
    assert checkpoints.stats()["full_checkpoints_written"] == 1
    assert file_header(path)[0] == 4 and list(path.parent.glob("shard.rrb.old.*")) == []
    assert_rows_exact(Checkpointer(path, every_adds=1).restore().sample(40))


def test_a_replica_copy_of_a_compressed_shard_carries_its_rows_as_stored_and_equals_it():
    from ray_replay.distributed.shard import ReplayShardImpl

    source = ReplayShardImpl(0, 40, "prioritized", schema=schema("zstd"), seed=1)
    source.buffer.add_batch(**rows(np.arange(70)))  # wrapped around
    state = pickle.loads(pickle.dumps(source.replica_state()))  # what Ray ships to the backup
    assert set(state["buffer"]["stored"]) == set(COMPRESSED) and set(state["buffer"]["columns"]) == {"id", "reward"}
    replica = ReplayShardImpl(1, 40, "prioritized", schema=schema("zstd"), seed=2)
    replica.set_replica_state(state)
    keep = ("size", "adds", "evictions", "bytes_held", "compression")
    assert {k: replica.buffer.stats()[k] for k in keep} == {k: source.buffer.stats()[k] for k in keep}
    a, b = replica.buffer.get_state(), source.buffer.get_state()
    for name in b["columns"]:
        np.testing.assert_array_equal(a["columns"][name], b["columns"][name], err_msg=name)
    np.testing.assert_array_equal(a["masses"], b["masses"])
    state["buffer"]["stored"]["image"]["data"] = state["buffer"]["stored"]["image"]["data"][:-1]  # a row cut short
    with pytest.raises(ValueError, match="stored field 'image' row 39: stored length .* is out of range"):
        replica.set_replica_state(state)
    assert replica.buffer.stats()["bytes_held"] == source.buffer.stats()["bytes_held"]  # the copy it held is kept
    np.testing.assert_array_equal(replica.buffer.get_state()["columns"]["image"], b["columns"]["image"])


@pytest.mark.parametrize("spec, message", [
    ("brotli", r"field 'image': unknown codec 'brotli' \(known codecs: 'lz4', 'zstd'"),
    ("zstd:0", "out of range"),
    ("zstd:23", "out of range"),
    (("zstd", 40), "out of range"),
    (("lz4", 3), "only zstd takes a level"),
    (("zstd", "3"), "unknown codec"),
    (3, "unknown codec"),
    ("zstd:", "unknown codec"),
])
def test_bad_codec_specs_name_the_field_and_the_codecs_known(spec, message):
    with pytest.raises(ValueError, match=message):
        ReplayBuffer(10, schema={"image": ((16, 16, 3), np.uint8, spec)})
    with pytest.raises(ValueError, match=message):
        ReplayBuffer(10, schema={"image": ((16, 16, 3), np.uint8)}, compress={"image": spec})


def test_fields_and_combinations_that_cannot_be_compressed_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"field 'reward': rows of 4 bytes cannot be compressed"):
        ReplayBuffer(10, schema={"reward": ((), np.float32, "lz4")})
    with pytest.raises(ValueError, match="compress names field 'ghost'.*its fields are: image"):
        ReplayBuffer(10, schema={"image": ((64,), np.uint8)}, compress={"ghost": "lz4"})
    with pytest.raises(ValueError, match="schema gives codec 'lz4' and compress= gives 'zstd:3'"):
        ReplayBuffer(10, schema={"image": ((64,), np.uint8, "lz4")}, compress={"image": "zstd"})
    with pytest.raises(ValueError, match="field 'state': next_state='dedup' shares frames .* expected 'none' like 'next_state', got 'lz4'"):
        ReplayBuffer(10, schema={"state": ((64,), np.uint8, "lz4"), "next_state": ((64,), np.uint8)}, next_state="dedup")
    with pytest.raises(ValueError, match="do not combine with storage_dir"):
        ReplayBuffer(10, schema={"image": ((64,), np.uint8, "lz4")}, storage_dir=tmp_path / "columns")
    with pytest.raises(TypeError, match="compress must be a mapping"):
        ReplayBuffer(10, compress="lz4")  # type: ignore[arg-type]


def test_a_bad_compress_keyword_on_an_inferred_schema_fails_the_first_add_and_changes_nothing():
    buf = ReplayBuffer(10, compress={"ghost": "lz4"})
    with pytest.raises(ValueError, match="compress names field 'ghost'"):
        buf.add(np.zeros(64, np.float32), 1, 0.5, np.zeros(64, np.float32), False)
    assert len(buf) == 0 and buf.schema == {}


def test_bad_rows_change_nothing_in_a_compressed_buffer():
    buf = make("fifo", "lz4", capacity=10, on_full="error")
    buf.add_batch(**rows(np.arange(8)))
    before = buf.stats()
    from ray_replay import BufferFullError

    with pytest.raises(BufferFullError):
        buf.add_batch(**rows(np.arange(100, 105)))  # refused whole by the full queue: blobs released again
    bad = rows(np.arange(3))
    bad["image"] = bad["image"][:, :8]
    with pytest.raises(ValueError, match="field 'image': expected shape"):
        buf.add_batch(**bad)
    after = buf.stats()
    for key in ("size", "bytes_held", "compression", "adds"):
        assert after[key] == before[key], key
    assert_rows_exact(buf.sample(8))


def stored_file(tmp_path: Any) -> tuple[Any, bytearray, dict[str, Any]]:
    buf = make("uniform", "lz4", capacity=30)
    buf.add_batch(**rows(np.arange(20)))
    path = tmp_path / "stored.rrb"
    buf.save(path)
    raw = bytearray(path.read_bytes())
    header_length = struct.unpack_from("<I", raw, 12)[0]
    return path, raw, json.loads(raw[20 : 20 + header_length])


def section(header: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in header["sections"] if s["name"] == name)


def write_with_checksums(path: Any, raw: bytearray, header: dict[str, Any]) -> None:
    """The file with every section's CRC recomputed: only the loader's own checks stand in the way."""
    for entry in header["sections"]:
        entry["crc32"] = zlib.crc32(bytes(raw[entry["offset"] : entry["offset"] + entry["nbytes"]]))
    rewrite_header(path, raw, header)


def test_a_corrupt_compressed_row_with_valid_checksums_raises_corrupt_file_error(tmp_path):
    path, raw, header = stored_file(tmp_path)
    image = section(header, "__stored__:image")
    for offset in range(image["offset"], image["offset"] + 40):
        raw[offset] ^= 0x5A
    write_with_checksums(path, raw, header)
    with pytest.raises(CorruptFileError, match="does not decode"):
        ReplayBuffer.load(path)


def test_stored_lengths_that_do_not_add_up_raise_corrupt_file_error(tmp_path):
    path, raw, header = stored_file(tmp_path)
    lengths = section(header, "__lengths__:zeros")
    struct.pack_into("<I", raw, lengths["offset"], 513)  # longer than a row
    write_with_checksums(path, raw, header)
    with pytest.raises(CorruptFileError, match="stored lengths out of range"):
        ReplayBuffer.load(path)
    path, raw, header = stored_file(tmp_path)
    lengths = section(header, "__lengths__:zeros")
    first, second = struct.unpack_from("<II", raw, lengths["offset"])
    struct.pack_into("<II", raw, lengths["offset"], first + 1, second - 1)  # same total, shifted rows
    write_with_checksums(path, raw, header)
    with pytest.raises(CorruptFileError, match="does not decode|inconsistent"):
        ReplayBuffer.load(path)


def test_mutated_stored_rows_never_crash(tmp_path):
    """Random byte flips in the stored rows and their lengths, checksums made valid: every load either
    refuses the file or gives a buffer whose rows can be sampled (never a crash or an over-read: ASan
    runs this in make test-asan)."""
    path, raw, header = stored_file(tmp_path)
    generator = np.random.default_rng(5)
    targets = [s for s in header["sections"] if s["name"].startswith(("__stored__:", "__lengths__:"))]
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(300):
        mutated = bytearray(raw)
        target = targets[int(generator.integers(len(targets)))]
        for _ in range(int(generator.integers(1, 4))):
            mutated[target["offset"] + int(generator.integers(target["nbytes"]))] ^= int(generator.integers(1, 256))
        write_with_checksums(path, mutated, json.loads(json.dumps(header)))
        try:
            loaded = ReplayBuffer.load(path)
        except CorruptFileError:
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        loaded.sample(8)
    assert outcomes["refused"] > 100


def test_a_stored_state_round_trips_through_pickle_without_the_decompressed_columns():
    buf = make("prioritized", "zstd", capacity=30)
    buf.add_batch(**rows(np.arange(25)))
    state = buf._get_state(stored=True)
    assert set(state["columns"]) == {"id", "reward"} and set(state["stored"]) == set(COMPRESSED)
    assert sum(len(entry["data"]) for entry in state["stored"].values()) < 25 * (768 + 96 + 512 + 96) / 1.5
    restored = pickle.loads(pickle.dumps(buf))
    assert restored.stats()["compression"] == buf.stats()["compression"]
    a, b = restored.get_state(), buf.get_state()
    for name in a["columns"]:
        np.testing.assert_array_equal(a["columns"][name], b["columns"][name])


def test_a_shard_and_the_write_stager_work_with_a_compressed_schema():
    """What ReplayCoordinator / ReplayClient build from schema= (without starting Ray): the shard's
    buffer compresses, the client's staging buffer keeps rows plain (they are sent on at once)."""
    from ray_replay.distributed.shard import ReplayShardImpl
    from ray_replay.distributed.writes import Stager

    compressed = schema("lz4")
    shard = ReplayShardImpl(0, 50, "prioritized", schema=compressed, seed=0)
    stager = Stager(64, compressed)
    stager.stage_batch((), rows(np.arange(30)), None, None, 30)
    assert stager._buffer is not None and stager._buffer.codecs == {}
    staged = stager.take()
    shard.buffer.add_batch(**{name: staged[name] for name in compressed})
    assert shard.buffer.codecs == dict.fromkeys(COMPRESSED, "lz4") and len(shard.buffer) == 30
    assert_rows_exact(shard.buffer.sample(30))


def test_compress_given_before_the_schema_survives_save_and_pickle(tmp_path):
    buf = ReplayBuffer(10, compress={"state": "zstd"})
    assert buf.codecs == {"state": "zstd:3"}
    buf.save(tmp_path / "empty.rrb")
    for other in (ReplayBuffer.load(tmp_path / "empty.rrb"), pickle.loads(pickle.dumps(buf))):
        other.add(np.zeros(64, np.float32), 1, 0.5, np.zeros(64, np.float32), False)
        assert other.codecs == {"state": "zstd:3"} and other.stats()["compression"]["state"]["rows_stored_raw"] == 0


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
@pytest.mark.parametrize("buffer_type", ["uniform", "prioritized"])
def test_sequences_over_compressed_fields_equal_those_of_an_uncompressed_buffer(buffer_type, codec):
    """seq_len sampling reads compressed rows by id (CompressedBuffer.gather_ids): the same draws as an
    uncompressed buffer with the same seed give the same sequences, masks and padding (zeros), across
    wrap-around, episode ends and two interleaved streams; per-step priority updates apply alike."""
    rng = np.random.default_rng(7)
    plain = {"obs": ((8, 8), np.uint8), "action": ((), np.int64), "done": ((), np.bool_)}
    compressed = {**plain, "obs": ((8, 8), np.uint8, codec)}
    bufs = [ReplayBuffer(60, buffer_type, schema=schema, seed=3) for schema in (plain, compressed)]
    for start in range(0, 150, 25):  # 150 rows into 60: wraps twice; episodes end every 7 steps of a stream
        n = 25
        obs = np.repeat(np.arange(start, start + n, dtype=np.uint8)[:, None, None], 64, axis=1).reshape(n, 8, 8)
        obs[:, 0, :] = rng.integers(0, 255, (n, 8), dtype=np.uint8)  # some noise per row: not all rows alike
        action = np.arange(start, start + n)
        done = (action % 7) == 6
        streams = action % 2
        for buf in bufs:
            buf.add_batch(obs=obs, action=action, done=done, streams=streams)
    for _ in range(3):
        a, b = (buf.sample(16, seq_len=5) for buf in bufs)
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert (~a["mask"]).any() and (b["obs"][~b["mask"]] == 0).all()  # padding present, and zeros
        if buffer_type == "prioritized":
            errors = np.linspace(0.1, 2.0, 16 * 5).reshape(16, 5)
            for buf, batch in zip(bufs, (a, b)):
                buf.update_priorities(batch["ids"], errors, mask=batch["mask"])
    assert bufs[1].stats()["compression"]["obs"]["bytes_held"] < bufs[0].stats()["bytes_held"]


def test_a_compressed_buffer_keeps_its_sequences_through_save_load_and_pickle(tmp_path):
    """Regression (hypothesis model, ASan run): a compressed buffer's stored state restored its rows but
    not their stream links, so the next save wrote no streams and the file read back as corrupt."""
    schema = {"obs": ((8, 8), np.uint8, "lz4"), "action": ((), np.int64), "done": ((), np.bool_)}
    buf = ReplayBuffer(50, "prioritized", schema=schema, seed=1)
    n = 30
    buf.add_batch(obs=np.arange(n * 64, dtype=np.uint8).reshape(n, 8, 8), action=np.arange(n), done=np.arange(n) % 6 == 5,
                  streams=np.arange(n) % 2)
    for step in range(2):  # twice: the second save is of a loaded buffer
        path = tmp_path / f"buffer{step}.rrb"
        buf.save(path)
        buf = ReplayBuffer.load(path)
    copy = pickle.loads(pickle.dumps(buf))
    for other in (buf, copy):
        assert len(other) == n and other.codecs["obs"].startswith("lz4")
        batch = other.sample(8, seq_len=4)
        for i in range(8):  # every valid step follows its stream and never crosses an episode end
            steps = batch["action"][i][batch["mask"][i]]
            assert (np.diff(steps) == 2).all() and not batch["done"][i][batch["mask"][i]][:-1].any()
            np.testing.assert_array_equal(batch["obs"][i][batch["mask"][i]],
                                          np.arange(n * 64, dtype=np.uint8).reshape(n, 8, 8)[steps])
        assert (batch["mask"].sum(axis=1) >= 1).all() and (batch["mask"].sum(axis=1) > 1).any()


# -- rows that come compressed (ReplayClient -> shard) --------------------------------------------------


def stored_batch(ids: np.ndarray, codec: Any = "lz4") -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """The rows with these ids as a writer sends them: the plain columns, and the codec fields compressed."""
    from ray_replay import _core

    batch = rows(ids)
    stored = {}
    for name in COMPRESSED:
        lengths, data = _core.compress_rows(batch[name], codec)
        stored[name] = {"lengths": lengths, "data": data}
    return {name: value for name, value in batch.items() if name not in COMPRESSED}, stored


@pytest.mark.parametrize("buffer_type", BUFFER_TYPES)
@pytest.mark.parametrize("codec", ["lz4", "zstd:5"])
def test_rows_added_as_stored_equal_rows_added_plain(buffer_type, codec):
    """compress_rows gives exactly the bytes a buffer stores; a buffer fed them as stored (through
    wrap-around and a batch longer than the capacity) holds and samples what one fed plain rows does."""
    plain, fed = make(buffer_type, codec), make(buffer_type, codec)
    for start, n in ((0, 25), (25, 30), (55, 90)):
        ids = np.arange(start, start + n)
        plain.add_batch(**rows(ids))
        columns, stored = stored_batch(ids, codec)
        fed._add_stored_batch(columns, stored)
    expected = plain._get_state(stored=True)["stored"]
    for name in COMPRESSED:
        np.testing.assert_array_equal(fed._get_state(stored=True)["stored"][name]["data"], expected[name]["data"], err_msg=name)
    keep = ("size", "adds", "evictions", "bytes_held", "compression")
    assert {k: fed.stats()[k] for k in keep} == {k: plain.stats()[k] for k in keep}
    x, y = fed.sample(min(8, len(fed))), plain.sample(min(8, len(plain)))
    for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert_rows_exact(x)


def test_stored_rows_with_priorities_and_streams_keep_their_sequences():
    buf = make("prioritized", "lz4")
    columns, stored = stored_batch(np.arange(12))
    buf._add_stored_batch(columns, stored, priorities=np.linspace(1, 2, 12), streams=np.arange(12) % 2)
    np.testing.assert_array_equal(buf.get_state()["masses"][:2] > 0, [True, True])
    batch = buf.sample(4, seq_len=3)
    assert batch["image"].shape == (4, 3, 16, 16, 3)
    assert_rows_exact({name: batch[name][:, 0] for name in rows(np.arange(1))})


def corrupt(stored: dict[str, dict[str, np.ndarray]], name: str) -> dict[str, dict[str, np.ndarray]]:
    data = stored[name]["data"].copy()
    data[: min(40, len(data))] ^= 0x5A
    return {**stored, name: {"lengths": stored[name]["lengths"], "data": data}}


@pytest.mark.parametrize("damage, message", [
    (lambda c, s: (c, corrupt(s, "zeros")), "stored field 'zeros' row 0: the compressed row does not decode"),
    (lambda c, s: (c, {**s, "image": {**s["image"], "data": s["image"]["data"][:-1]}}), "stored field 'image'"),
    (lambda c, s: (c, {**s, "noise": {**s["noise"], "lengths": s["noise"]["lengths"][:-1]}}), "'noise': 9 rows where the other columns hold 10"),
    (lambda c, s: (c, {k: v for k, v in s.items() if k != "vector"}), "field 'vector': missing"),
    (lambda c, s: ({**c, "image": rows(np.arange(10))["image"]}, s), "names a field it should not"),
    (lambda c, s: ({k: v for k, v in c.items() if k != "reward"}, s), "no column 'reward'"),
    (lambda c, s: (c, {**s, "noise": {"lengths": s["noise"]["lengths"]}}), "expected a dict with 'lengths' and 'data'"),
])
def test_bad_stored_rows_raise_a_value_error_naming_the_field_and_add_nothing(damage, message):
    buf = make("prioritized", "lz4")
    buf.add_batch(**rows(np.arange(30)))
    before = buf.stats()
    columns, stored = stored_batch(np.arange(30, 40))
    with pytest.raises(ValueError, match=message):
        buf._add_stored_batch(*damage(columns, stored))
    after = buf.stats()
    for key in ("size", "adds", "bytes_held", "compression"):
        assert after[key] == before[key], key
    buf._add_stored_batch(columns, stored)  # the intact batch still goes in
    assert len(buf) == 40
    assert_rows_exact(buf.sample(40))


def test_stored_rows_need_a_compressed_buffer_and_compress_rows_checks_its_input():
    from ray_replay import _core

    columns, stored = stored_batch(np.arange(5))
    plain = ReplayBuffer(10, schema={k: v[:2] for k, v in schema("lz4").items()})
    with pytest.raises(ValueError, match="codecs on its fields"):
        plain._add_stored_batch(columns, stored)
    assert len(plain) == 0
    with pytest.raises(ValueError, match="unknown codec"):
        _core.compress_rows(np.zeros((3, 64), np.uint8), "brotli")
    with pytest.raises(ValueError, match="leading batch axis"):
        _core.compress_rows(np.zeros((), np.uint8), "lz4")
    lengths, data = _core.compress_rows(np.zeros((3, 64), np.uint8), "lz4")
    assert len(lengths) == 3 and lengths.sum() == len(data) < 3 * 64


def test_a_shard_keeps_a_writers_compressed_run_and_refuses_a_corrupt_one_whole():
    from ray_replay.distributed.shard import ReplayShardImpl
    from ray_replay.distributed.writes import compress_codec_fields

    shard = ReplayShardImpl(0, 40, "prioritized", schema=schema("lz4"), seed=0)
    buffer_schema = make("prioritized").schema
    _, named = compress_codec_fields((), rows(np.arange(20)), 20, dict.fromkeys(COMPRESSED, "lz4"), buffer_schema)
    assert set(named["stored"]) == set(COMPRESSED) and not set(COMPRESSED) & set(named)
    shard.add_run(((), {**named, "batch_id": "a"}))
    assert len(shard.buffer) == 20
    assert_rows_exact(shard.buffer.sample(20))
    _, named = compress_codec_fields((), rows(np.arange(20, 30)), 10, dict.fromkeys(COMPRESSED, "lz4"), buffer_schema)
    before = shard.buffer.stats()
    with pytest.raises(ValueError, match="stored field 'image'"):
        shard.add_run(((), {**named, "stored": corrupt(named["stored"], "image"), "batch_id": "b"}))
    assert shard.buffer.stats()["bytes_held"] == before["bytes_held"] and len(shard.buffer) == 20
    shard.add_run(((), {**named, "batch_id": "b"}))  # not recorded as applied: the retry goes in
    assert len(shard.buffer) == 30
    # A field not of the schema's dtype is sent as given: the shard converts and compresses it.
    columns, named = compress_codec_fields((), {**rows(np.arange(3)), "vector": np.zeros((3, 24))}, 3, {"vector": "lz4"}, buffer_schema)
    assert "stored" not in named and named["vector"].dtype == np.float64
