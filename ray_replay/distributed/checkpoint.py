"""Periodic, incremental checkpoints of one buffer, written off the caller's thread (no Ray here).

A checkpoint chain is a full checkpoint (the ray_replay file at ``path``, tagged with a random
``checkpoint_id``) followed by increments ``<path>.<checkpoint_id>.<n>``, n = 1, 2, ...: each holds the
rows added since the previous checkpoint, with the buffer's counters, random state and every row's
priority mass. Every buffer keeps its rows as a suffix of the insertion order (rings evict the oldest,
FIFO reads consume the oldest), so the previous state's newest rows followed by the increment's rows
are the buffer's rows: restoring applies the increments in order.

So the caller's thread, the only one that holds up adds and samples, copies only the rows added since
the previous checkpoint (plus 8 bytes of priority per row held). The writer thread does the rest:
writes each file atomically (temporary file, fsync, rename), and every ``compact_every`` increments
folds the chain into a new full checkpoint from the files alone, then deletes the increments. A crash
at any moment leaves a chain that restores to the last checkpoint written. The first checkpoint, one
after a failed write, and one where the rows added outnumber the rows held are full copies. At most
one write runs at a time: a checkpoint that falls due meanwhile is taken at the next call after it.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ray_replay.buffer import ReplayBuffer
from ray_replay.persistence import CorruptFileError, read_state, write_state

__all__ = ["Checkpointer", "apply_increments"]

_CONFIGURATION = ("capacity", "buffer_type", "schema", "next_state", "frame_stack_axis")


def apply_increments(state: dict[str, Any], increments: list[dict[str, Any]]) -> dict[str, Any]:
    """The buffer state that ``increments`` (each of the rows added since the one before, the first
    since ``state``; see the module doc) bring ``state`` to. One copy of the rows, however many increments.

    Raises CorruptFileError when an increment does not follow the state before it.
    """
    if not increments:
        return state
    held, adds = _rows(state), state["total_adds"]
    for increment in increments:
        if any(state[key] != increment[key] for key in _CONFIGURATION):
            raise CorruptFileError("a checkpoint increment of another buffer configuration")
        added, size, new_rows = increment["total_adds"] - adds, increment["size"], increment["newest_rows"]
        if added < 0 or new_rows != min(added, size) or size - new_rows > held:
            raise CorruptFileError(f"a checkpoint increment of {new_rows} rows does not follow a checkpoint of {held} rows "
                                   f"({adds} -> {increment['total_adds']} adds, {size} rows held)")
        held, adds = size, increment["total_adds"]

    def newest(key: str, name: str | None = None) -> np.ndarray:
        """The ``held`` newest rows of a column (or of the streams) across the state and its increments."""
        parts = [part[key] if name is None else part[key][name] for part in (state, *increments)]
        joined = np.concatenate(parts)
        return joined[len(joined) - held :]

    last = increments[-1]
    merged = {key: value for key, value in last.items() if key not in ("newest_rows", "size", "columns", "streams", "stored")}
    stored_fields = _stored_fields(state)
    for part in increments:
        if _stored_fields(part) != stored_fields:
            raise CorruptFileError(f"a checkpoint chain mixes compressed fields stored as they are ({sorted(_stored_fields(part))}) "
                                   f"with decompressed ones ({sorted(stored_fields)})")
    merged["columns"] = {name: newest("columns", name) for name in last["columns"]}
    if stored_fields:
        parts = (state, *increments)
        for part in parts:
            rows = part["newest_rows"] if "newest_rows" in part else _rows(part)
            if any(len(part["stored"][name]["lengths"]) != rows for name in stored_fields):
                raise CorruptFileError(f"a checkpoint part of {rows} rows holds stored fields of other lengths")
        merged["stored"] = {name: _newest_stored(name, [part["stored"][name] for part in parts], held) for name in stored_fields}
    if "streams" in last:
        merged["streams"] = newest("streams")
    return merged


def _stored_fields(state: dict[str, Any]) -> set[str]:
    return set(state.get("stored") or ())


def _newest_stored(name: str, parts: list[dict[str, np.ndarray]], held: int) -> dict[str, np.ndarray]:
    """The ``held`` newest rows of a compressed field carried as stored (per-row lengths, the rows' bytes
    back to back) across a state and its increments: no decompression, one copy of the bytes kept."""
    for part in parts:
        if int(np.sum(part["lengths"], dtype=np.int64)) != len(part["data"]):
            raise CorruptFileError(f"checkpoint field {name!r}: stored bytes do not add up to the rows' lengths")
    lengths = np.concatenate([np.asarray(part["lengths"], dtype=np.uint32) for part in parts])
    skip = len(lengths) - held
    start = int(np.sum(lengths[:skip], dtype=np.int64))
    # Only the parts that hold kept bytes are joined (the oldest parts are mostly evicted ones).
    data, offset = [], 0
    for part in parts:
        size = len(part["data"])
        if offset + size > start:
            data.append(np.asarray(part["data"], dtype=np.uint8)[max(start - offset, 0) :])
        offset += size
    return {"lengths": lengths[skip:], "data": np.concatenate(data) if data else np.empty(0, np.uint8)}


def _rows(state: dict[str, Any]) -> int:
    if state.get("columns"):
        return len(next(iter(state["columns"].values())))
    if state.get("stored"):  # every field compressed: the rows are counted by the stored lengths
        return len(next(iter(state["stored"].values()))["lengths"])
    return 0


class Checkpointer:
    """Checkpoints a buffer to ``path`` every ``every_s`` seconds or ``every_adds`` rows, whichever first.

    Thread roles: the owner's thread calls every method; one writer thread of its own writes files.

    Args:
        path: the full checkpoint's file (its folder is created; increments go beside it); a shared
            file system path for multi-node.
        every_s: seconds between checkpoints of a changed buffer (None: no time trigger).
        every_adds: rows added between checkpoints (None: no count trigger). At least one trigger is needed.
        compact_every: increments after which the writer folds the chain into a new full checkpoint.
    """

    def __init__(self, path: str | os.PathLike[str], every_s: float | None = None, every_adds: int | None = None,
                 compact_every: int = 8) -> None:
        if every_s is None and every_adds is None:
            raise ValueError("checkpoints need checkpoint_every_s or checkpoint_every_adds")
        if every_s is not None and not (isinstance(every_s, (int, float)) and math.isfinite(every_s) and every_s > 0):
            raise ValueError(f"checkpoint_every_s must be a number > 0, got {every_s!r}")
        if every_adds is not None and (isinstance(every_adds, bool) or not isinstance(every_adds, int) or every_adds < 1):
            raise ValueError(f"checkpoint_every_adds must be an int >= 1, got {every_adds!r}")
        if isinstance(compact_every, bool) or not isinstance(compact_every, int) or compact_every < 1:
            raise ValueError(f"compact_every must be an int >= 1, got {compact_every!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._every_s, self._every_adds, self._compact_every = every_s, every_adds, compact_every
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray_replay-checkpoint")
        self._pending: Future[None] | None = None
        self._adds_since = 0
        self._last = time.monotonic()
        self._checkpointed_adds: int | None = None  # the buffer's add count at the last checkpoint; None: next one is full
        # The chain on disk: written by the writer thread, read by the owner only while no write runs.
        self._chain_id: str | None = None
        self._chain_length = 0
        self._write_failed = False
        self._lock = threading.Lock()  # guards the counters below against the writer thread
        self.written = 0
        self.full_written = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_written_at: float | None = None  # time.time() of the last completed write
        self.last_rows_copied = 0

    def restore(self) -> ReplayBuffer | None:
        """The buffer as of the latest checkpoint, or None when there is none yet; later checkpoints
        continue its chain."""
        if not self.path.exists():
            return None
        state, chain_id, length = self._read_chain()
        try:
            buffer = ReplayBuffer.from_state(state)  # compressed fields stored: each row checked to decode, none recompressed
        except (ValueError, TypeError) as error:
            if isinstance(error, CorruptFileError):
                raise
            raise CorruptFileError(f"{self.path}: inconsistent checkpoint chain ({error})") from None
        self._chain_id, self._chain_length = chain_id, length
        self._checkpointed_adds = state.get("total_adds") if chain_id is not None else None
        if _stored_fields(state) != _stored_fields(buffer._get_state(newest_rows=0, stored=True)):
            self._checkpointed_adds = None  # a chain of decompressed rows (an older ray_replay): continue with a new one
        self._adds_since = 0
        return buffer

    def changed(self, buffer: ReplayBuffer, rows_added: int = 0) -> None:
        """Called after every change of ``buffer``; starts a checkpoint when one is due."""
        self._adds_since += rows_added
        due_by_count = self._every_adds is not None and self._adds_since >= self._every_adds
        due_by_time = self._every_s is not None and time.monotonic() - self._last >= self._every_s
        if (due_by_count or due_by_time) and (self._pending is None or self._pending.done()):
            self._start(buffer)

    def _start(self, buffer: ReplayBuffer, full: bool = False) -> None:
        # The copy: the only part that holds up the caller.
        full = full or self._write_failed or self._checkpointed_adds is None
        if not full:
            new_rows = buffer.stats()["adds"] - self._checkpointed_adds
            full = not 0 <= new_rows < len(buffer)
        # Compressed fields are copied as stored (no decompression here, none to recompress on restore).
        state = buffer._get_state(stored=True) if full else buffer._get_state(newest_rows=new_rows, stored=True)
        if not full and state["total_adds"] - self._checkpointed_adds != new_rows:
            state, full = buffer._get_state(stored=True), True  # another thread added rows meanwhile: copy them all
        self._checkpointed_adds = state.get("total_adds")  # None before the first add: the next one is full too
        self._adds_since = 0
        self._write_failed = False
        self._last = time.monotonic()
        self._pending = self._writer.submit(self._write, state, full)

    def _increment_path(self, chain_id: str, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{chain_id}.{n}")

    def _write(self, state: dict[str, Any], full: bool) -> None:
        """Writer thread: the file of one checkpoint, then compaction when the chain is long."""
        try:
            if full:
                self._write_full(state)
            else:
                chain_id = self._chain_id
                assert chain_id is not None  # an increment is only started after a full checkpoint began the chain
                self._chain_length += 1
                write_state({**state, "checkpoint_id": chain_id}, self._increment_path(chain_id, self._chain_length))
                if self._chain_length >= self._compact_every:
                    self._compact()
        except Exception as error:  # reported in stats; the chain on disk still restores to the last checkpoint
            self._write_failed = True
            with self._lock:
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {error}"
            return
        rows = state["newest_rows"] if "newest_rows" in state else _rows(state)
        with self._lock:
            self.written += 1
            self.full_written += full
            self.last_rows_copied = rows
            self.last_written_at = time.time()

    def _write_full(self, state: dict[str, Any]) -> None:
        chain_id = secrets.token_hex(8)
        write_state({**state, "checkpoint_id": chain_id}, self.path)
        self._chain_id, self._chain_length = chain_id, 0
        for stale in self.path.parent.glob(f"{self.path.name}.*.*"):  # increments of earlier chains
            if not stale.name.startswith(f"{self.path.name}.{chain_id}."):
                stale.unlink(missing_ok=True)

    def _read_chain(self) -> tuple[dict[str, Any], str | None, int]:
        """(the state the files on disk restore to, the chain's id, its number of increments)."""
        base = read_state(self.path)
        chain_id: str | None = base.get("checkpoint_id")
        increments: list[dict[str, Any]] = []
        while chain_id is not None and (path := self._increment_path(chain_id, len(increments) + 1)).exists():
            increments.append(read_state(path))
        return apply_increments(base, increments), chain_id, len(increments)

    def _compact(self) -> None:
        """Folds the chain into a new full checkpoint, from the files alone."""
        self._write_full(self._read_chain()[0])

    def wait(self) -> None:
        """Returns once the write in progress, if any, has finished."""
        if self._pending is not None:
            self._pending.result()

    def checkpoint_now(self, buffer: ReplayBuffer, full: bool = False) -> None:
        """Writes a checkpoint of ``buffer`` and waits for it (and for any write in progress); ``full``
        for a buffer that replaced the one checkpointed so far."""
        self.wait()
        self._start(buffer, full)
        self.wait()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"checkpoints_written": self.written, "full_checkpoints_written": self.full_written,
                    "checkpoint_rows_copied": self.last_rows_copied, "checkpoint_failures": self.failures,
                    "last_checkpoint_error": self.last_error, "last_checkpoint_at": self.last_written_at}

    def close(self) -> None:
        """Waits for a write in progress, then stops the writer thread."""
        self._writer.shutdown(wait=True)
