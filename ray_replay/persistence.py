"""The ray_replay buffer file: a versioned binary format that loading can trust without running code.

Layout (all integers little-endian)::

    offset 0   8 bytes   magic b"RRBUF\\x00\\r\\n" (the CR/LF catch text-mode mangling)
    offset 8   uint32    format version (2; 3 for a checkpoint increment; 4 for a buffer whose
                         compressed fields are stored as they are; 5 for a checkpoint increment
                         whose compressed fields are stored as they are; version 1 files, without
                         dedup, are read too)
    offset 12  uint32    header length H (at most 1 MiB)
    offset 16  uint32    CRC-32 of the header
    offset 20  H bytes   header: UTF-8 JSON (configuration, schema, counters, random state and,
                         per section, its offset, length and CRC-32)
    then       sections  raw C-order rows of each column (oldest row first), then the priority
                         masses (float64) of a prioritized buffer, then (next_state="dedup" only)
                         each row's stream id (int64); each section starts 64-byte aligned.
                         Dedup buffers store whole observations here and deduplicate again on load.
                         Fields with a codec ("codecs" in the header: field -> "lz4" or
                         "zstd:<level>"): in version 4 ("stored_fields" in the header), each such
                         field's column is two sections instead, "__lengths__:<field>" (uint32 per
                         row: the stored size, the row's size meaning stored raw) and
                         "__stored__:<field>" (the stored rows back to back), carried as they are
                         (no recompression on load; every row is checked to decode to its size,
                         a corrupt one raises CorruptFileError). A version 2 file with codecs
                         holds them decompressed (checkpoint files do) and compresses on load.
                         The metadata file of a storage_dir buffer ("columns_external": true in the
                         header) has no column sections: its rows stay in the folder's column files.

A checkpoint increment (version 3, or 5 with "stored_fields"; "increment": {"size": S} in the header) holds only the newest
"rows" rows of a buffer that held S rows (and their streams), with the counters, the random state and
the priority masses of all S rows: applied to the buffer's previous checkpoint it gives the buffer's
state (see ray_replay.distributed.checkpoint). "checkpoint_id" (optional) names a checkpoint chain.
"nested" (optional) gives a buffer with nested fields one path per column, e.g. ["obs", "image"]
(see ray_replay.nested); readers that do not know it still read the flat columns.

No pickle: a file is data only. Every length, offset, dtype and shape is checked against the file
and the schema before anything is allocated or copied, so a truncated, corrupted or hostile file
raises CorruptFileError (a ValueError) and never crashes or allocates what the file cannot hold.
Writes are atomic: a temporary file in the same folder, fsync, then rename over the target.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ray_replay.config import config_of

__all__ = ["FORMAT_VERSION", "INCREMENT_VERSION", "MAGIC", "CorruptFileError", "read_state", "write_state"]

MAGIC = b"RRBUF\x00\r\n"
FORMAT_VERSION = 2
INCREMENT_VERSION = 3
STORED_VERSION = 4  # compressed fields stored as they are
STORED_INCREMENT_VERSION = 5  # a checkpoint increment whose compressed fields are stored as they are
_READABLE_VERSIONS = (1, 2, 3, 4, 5)
_PREAMBLE = struct.Struct("<8sIII")
_MAX_HEADER_BYTES = 1 << 20
_ALIGNMENT = 64
_MAX_RESERVED_BYTES = 1 << 42
_ALLOWED_KINDS = {"b", "i", "u", "f"}
_COUNTERS = ("total_adds", "samples", "sample_calls", "evictions", "rejected", "priority_updates", "stale_priority_updates")


class CorruptFileError(ValueError):
    """The file is not a valid ray_replay buffer file (truncated, corrupted or not one at all)."""


def _align(offset: int) -> int:
    return -(-offset // _ALIGNMENT) * _ALIGNMENT


def write_state(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Writes a buffer state (``ReplayBuffer.get_state()``, or an increment of one) to ``path`` atomically."""
    path = Path(path)
    arrays: list[tuple[str, np.ndarray]] = []
    external = "columns" not in state and "rows" in state  # a storage_dir buffer's metadata
    if "columns" in state or external:
        if not external:
            stored = state.get("stored", {})
            for name, _, _ in state["schema"]:
                if name in stored:
                    arrays.append((f"__lengths__:{name}", np.ascontiguousarray(stored[name]["lengths"], dtype="<u4")))
                    arrays.append((f"__stored__:{name}", np.ascontiguousarray(stored[name]["data"], dtype=np.uint8)))
                else:
                    arrays.append((name, np.ascontiguousarray(state["columns"][name])))
        arrays.append(("__masses__", np.ascontiguousarray(state["masses"], dtype="<f8")))
        if "streams" in state:  # dedup, and the sequences of uniform/prioritized buffers
            arrays.append(("__streams__", np.ascontiguousarray(state["streams"], dtype="<i8")))
    header: dict[str, Any] = config_of(state)  # config.py: the options, defined once
    header["schema"] = [[name, list(shape), np.dtype(dtype).newbyteorder("<").str] for name, shape, dtype in state["schema"]]
    if arrays:
        header.update({key: int(state[key]) for key in _COUNTERS})
        header["max_priority"] = float(state["max_priority"])
        header["random"] = [int(word) for word in state["random"]]
        header["rows"] = int(state["rows"]) if external else int(len(arrays[0][1]))
        if state.get("stored"):
            header["stored_fields"] = [name for name, _, _ in state["schema"] if name in state["stored"]]
        if "newest_rows" in state:
            header["increment"] = {"size": int(state["size"])}
        if "streams" in state:
            header["streams"] = True
        if external:
            header["columns_external"] = True
            header["first_slot"] = int(state["first_slot"])
    if "checkpoint_id" in state:
        header["checkpoint_id"] = str(state["checkpoint_id"])
    if state.get("nested"):
        header["nested"] = state["nested"]  # the structure of nested fields: one path per column
    # Section offsets depend on the header's length, which depends on the offsets: passes until the
    # first section starts where the final header ends (two passes were not always enough: offsets
    # with more digits could push the header past a 64-byte boundary, misplacing every section).
    crcs = [zlib.crc32(array.data) if array.nbytes else 0 for _, array in arrays]
    sections: list[dict[str, Any]] = []
    header["sections"] = sections
    start = _align(_PREAMBLE.size + len(json.dumps(header).encode()))
    while True:
        offset = start
        sections.clear()
        for (name, array), crc in zip(arrays, crcs):
            sections.append({"name": name, "offset": offset, "nbytes": array.nbytes, "crc32": crc})
            offset = _align(offset + array.nbytes)
        needed = _align(_PREAMBLE.size + len(json.dumps(header).encode()))
        if needed <= start:
            break
        start = needed
    encoded = json.dumps(header).encode()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            increment, stored = "increment" in header, "stored_fields" in header
            version = (STORED_INCREMENT_VERSION if increment and stored else INCREMENT_VERSION if increment
                       else STORED_VERSION if stored else FORMAT_VERSION)
            file.write(_PREAMBLE.pack(MAGIC, version, len(encoded), zlib.crc32(encoded)))
            file.write(encoded)
            for section, (_, array) in zip(sections, arrays):
                file.write(b"\0" * (section["offset"] - file.tell()))
                if array.nbytes:  # memoryview cannot cast an empty array
                    file.write(array.data.cast("B"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CorruptFileError(message)


def _require_layout(paths: Any, names: list[str], path: str) -> None:
    from ray_replay.nested import Layout

    try:
        layout = Layout.from_json(paths)
    except (ValueError, TypeError) as error:
        raise CorruptFileError(f"{path}: {error}") from None
    _require(list(layout.columns) == names, f"{path}: the nested layout does not match the schema's columns")


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and verifies a buffer file; returns a state for ``ReplayBuffer.from_state``.

    Column arrays are read-only views of a memory map of the file; the buffer copies them in.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        _require(size >= _PREAMBLE.size, f"{path}: too short to be a ray_replay buffer file ({size} bytes)")
        view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    magic, version, header_length, header_crc = _PREAMBLE.unpack_from(view, 0)
    _require(magic == MAGIC, f"{path}: not a ray_replay buffer file (bad magic)")
    _require(version in _READABLE_VERSIONS, f"{path}: format version {version} is not supported (this ray_replay reads {_READABLE_VERSIONS})")
    _require(header_length <= _MAX_HEADER_BYTES, f"{path}: header length {header_length} exceeds {_MAX_HEADER_BYTES}")
    _require(_PREAMBLE.size + header_length <= size, f"{path}: truncated inside the header")
    encoded = view[_PREAMBLE.size : _PREAMBLE.size + header_length]
    _require(zlib.crc32(encoded) == header_crc, f"{path}: header checksum mismatch")
    try:
        header = json.loads(encoded)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(f"{path}: header is not valid JSON ({error})") from None
    try:
        increments, stored = (INCREMENT_VERSION, STORED_INCREMENT_VERSION), (STORED_VERSION, STORED_INCREMENT_VERSION)
        _require((version in increments) == ("increment" in header), f"{path}: increment header and version {version} disagree")
        _require((version in stored) == ("stored_fields" in header), f"{path}: stored_fields and version {version} disagree")
        return _state_from(header, view, size, str(path))
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        if isinstance(error, CorruptFileError):
            raise
        raise CorruptFileError(f"{path}: malformed header ({type(error).__name__}: {error})") from None


def _state_from(header: dict[str, Any], view: mmap.mmap, size: int, path: str) -> dict[str, Any]:
    _require(isinstance(header, dict), f"{path}: header is not an object")
    state: dict[str, Any] = config_of(header)
    _require(isinstance(state["prefault"], bool), f"{path}: prefault {state['prefault']!r}")
    codecs = state["codecs"]
    valid_codecs = isinstance(codecs, dict) and all(isinstance(k, str) and isinstance(v, str) and len(v) <= 16 for k, v in codecs.items())
    _require(codecs is None or valid_codecs, f"{path}: codecs {codecs!r}")
    _require(state["next_state"] in ("store", "dedup"), f"{path}: next_state {state['next_state']!r}")
    axis = state["frame_stack_axis"]
    _require(axis is None or (isinstance(axis, int) and not isinstance(axis, bool) and -64 < axis < 64), f"{path}: frame_stack_axis {axis!r}")
    capacity = state["capacity"]
    _require(isinstance(capacity, int) and 0 < capacity < 1 << 48, f"{path}: capacity {capacity!r} is out of range")
    if "checkpoint_id" in header:
        checkpoint_id = header["checkpoint_id"]
        _require(isinstance(checkpoint_id, str) and 0 < len(checkpoint_id) <= 64 and checkpoint_id.isalnum(),
                 f"{path}: checkpoint_id {checkpoint_id!r}")
        state["checkpoint_id"] = checkpoint_id
    schema = []
    row_bytes = []
    for name, shape, dtype_text in header["schema"]:
        dtype = np.dtype(str(dtype_text))
        _require(dtype.kind in _ALLOWED_KINDS and dtype.str.startswith(("<", "|")), f"{path}: field {name!r} has dtype {dtype_text!r}")
        _require(all(isinstance(n, int) and 0 < n < 1 << 31 for n in shape), f"{path}: field {name!r} has shape {shape!r}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        _require(0 < nbytes < 1 << 31, f"{path}: field {name!r} rows of {nbytes} bytes")
        schema.append((str(name), tuple(shape), dtype.newbyteorder("=")))
        row_bytes.append(nbytes)
    state["schema"] = schema
    if "nested" in header:
        _require_layout(header["nested"], [name for name, _, _ in schema], path)
        state["nested"] = header["nested"]
    _require(capacity * sum(row_bytes) <= _MAX_RESERVED_BYTES, f"{path}: capacity {capacity} x {sum(row_bytes)} bytes per row exceeds 4 TiB")
    if "rows" not in header:
        _require(not header.get("sections"), f"{path}: sections without rows")
        return state
    rows = header["rows"]
    _require(isinstance(rows, int) and 0 <= rows <= capacity, f"{path}: {rows!r} rows for capacity {capacity}")
    sections = header["sections"]
    external = header.get("columns_external", False) is True
    stored_fields = header.get("stored_fields", [])
    _require(isinstance(stored_fields, list) and not external and len(set(stored_fields)) == len(stored_fields)
             and all(isinstance(name, str) and name in (codecs or {}) for name in stored_fields)
             if stored_fields else True, f"{path}: stored_fields {stored_fields!r}")
    layout: list[tuple[str, int]] = []  # (section name, bytes per row; 0: stored rows, checked against the lengths)
    for (name, _, _), field_bytes in zip([] if external else schema, row_bytes):
        layout += [(f"__lengths__:{name}", 4), (f"__stored__:{name}", 0)] if name in stored_fields else [(name, field_bytes)]
    expected_names = [name for name, _ in layout] + ["__masses__"]
    if state["next_state"] == "dedup" or header.get("streams") is True:
        expected_names.append("__streams__")
    _require(len(sections) == len(expected_names), f"{path}: expected {len(expected_names)} sections, found {len(sections)}")
    held = rows
    if "increment" in header:
        held = header["increment"]["size"]
        _require(isinstance(held, int) and rows <= held <= capacity and not external, f"{path}: increment of {rows!r} rows for size {held!r}")
        state["newest_rows"], state["size"] = rows, held
    masses_rows = held if state["buffer_type"] == "prioritized" else 0
    columns: dict[str, np.ndarray] = {}
    stored: dict[str, dict[str, np.ndarray]] = {}
    lengths_total = 0
    for section, name, field_bytes in zip(sections, expected_names, [b for _, b in layout] + [8, 8]):
        _require(section["name"] == name, f"{path}: section {section['name']!r} where {name!r} was expected")
        expected_nbytes = lengths_total if name.startswith("__stored__:") else (masses_rows if name == "__masses__" else rows) * field_bytes
        offset, nbytes = section["offset"], section["nbytes"]
        _require(nbytes == expected_nbytes, f"{path}: section {name!r} holds {nbytes} bytes, expected {expected_nbytes}")
        _require(isinstance(offset, int) and offset % _ALIGNMENT == 0 and 0 <= offset and offset + nbytes <= size,
                 f"{path}: section {name!r} lies outside the file (truncated?)")
        data = memoryview(view)[offset : offset + nbytes]
        _require(zlib.crc32(data) == section["crc32"], f"{path}: checksum mismatch in section {name!r}")
        if name.startswith("__lengths__:"):
            field = name.split(":", 1)[1]
            lengths = np.frombuffer(data, dtype="<u4")
            field_bytes = row_bytes[[n for n, _, _ in schema].index(field)]
            _require(bool(np.all((lengths >= 1) & (lengths <= field_bytes))), f"{path}: field {field!r} has stored lengths out of range")
            lengths_total = int(lengths.sum(dtype=np.int64))
            stored[field] = {"lengths": lengths}
        elif name.startswith("__stored__:"):
            stored[name.split(":", 1)[1]]["data"] = np.frombuffer(data, dtype=np.uint8)
        elif name == "__masses__":
            state["masses"] = np.frombuffer(data, dtype="<f8")
        elif name == "__streams__":
            state["streams"] = np.frombuffer(data, dtype="<i8")
        else:
            _, shape, dtype = next(field for field in schema if field[0] == name)
            columns[name] = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape((rows, *shape))
    if external:
        first_slot = header["first_slot"]
        _require(isinstance(first_slot, int) and 0 <= first_slot < capacity, f"{path}: first_slot {first_slot!r}")
        state["rows"], state["first_slot"] = rows, first_slot
    else:
        state["columns"] = columns
        if stored:
            state["stored"] = stored
    for key in _COUNTERS:
        value = header[key]
        _require(isinstance(value, int) and 0 <= value < 1 << 64, f"{path}: counter {key} = {value!r}")
        state[key] = value
    state["max_priority"] = float(header["max_priority"])
    random = header["random"]
    _require(len(random) == 4 and all(isinstance(w, int) and 0 <= w < 1 << 64 for w in random), f"{path}: bad random state")
    state["random"] = np.array(random, dtype=np.uint64)
    return state

