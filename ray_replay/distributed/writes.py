"""The Ray layer's write path, written once and free of Ray: validation, staging, routing, retry.

``ReplayClient`` (synchronous, in a writer's process) and ``ReplayCoordinator`` (an asyncio actor)
both drive these pieces; each only adds its own way of waiting for shard replies.

Routing rule: see ``routing.Router`` (water-fill into the emptiest shards, streams kept on a home shard).

that many rows of full.

Retry rule (``Write.settle``, over ``health.write_outcome``): a run whose shard may have taken it
goes to the same shard again (its batch id makes the shard apply it once), one that no replica took
goes to another writable shard; after ``shard_timeout_s`` without an acknowledgement,
ShardUnavailableError.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_replay import _core
from ray_replay.buffer import ReplayBuffer
from ray_replay.distributed.health import ACKED, REROUTE, RETRY_PAUSE_S, RETRY_SAME, ShardUnavailableError, pause_before_retry, write_outcome
from ray_replay.distributed.routing import DEFAULT_MIN_RUN_ROWS, MAX_STREAM_HOMES, Router, water_fill

__all__ = ["DEFAULT_MIN_RUN_ROWS", "MAX_STREAM_HOMES", "RETRY_PAUSE_S", "water_fill",
           "Router", "Stager", "Write", "check_batch_size", "plan_batch", "check_beta", "check_priorities", "check_priority",
           "require_prioritized", "rows_of", "slice_rows"]



# -- validation (the local buffer's rules, checked before any shard is asked) -----------------------

def check_count(name: str, value: Any, low: int) -> int:
    """An int option of at least ``low``: TypeError naming it for anything not an int (bool included),
    ValueError below ``low``. Shared by the coordinator's and ReplayClient's options."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_seconds(name: str, value: Any) -> float:
    """A duration option: a finite number of seconds > 0, or ValueError naming it."""
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_batch_size(batch_size: Any) -> int:
    """Any batch size >= 1: uniform and prioritized sampling are with replacement."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return int(batch_size)


def check_beta(beta: Any, default: float) -> float:
    if beta is None:
        return default
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)):
        raise TypeError(f"beta must be a number, got {type(beta).__name__}")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return float(beta)


def check_priority(priority: Any) -> float:
    try:
        value = float(priority)
    except (TypeError, ValueError):
        raise TypeError(f"priority must be a number, got {type(priority).__name__}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"priority[0] = {value}: priorities must be finite and >= 0")
    return value


def check_priorities(priorities: Any, rows: int) -> np.ndarray:
    try:
        values = np.asarray(priorities, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("priorities must be an array of numbers") from None
    if values.shape != (rows,):
        raise ValueError(f"priorities: expected {rows} values, got shape {values.shape}")
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"priorities[{j}] = {values[j]}: priorities must be finite and >= 0")
    return values


def require_prioritized(buffer_type: str, what: str) -> None:
    if buffer_type != "prioritized":
        raise ValueError(f"{what} is only supported by buffer_type='prioritized' (this buffer is '{buffer_type}')")


# -- rows of a batch ---------------------------------------------------------------------------------

def rows_of(columns: Sequence[Any], named: Mapping[str, Any]) -> int:
    """The leading length of a batch's first field (0 when it has none or it is not sized)."""
    first: Any = columns[0] if columns else next((v for k, v in named.items() if k not in ("priorities", "streams")), None)
    return len(first) if hasattr(first, "__len__") else 0


def slice_rows(columns: Sequence[Any], named: Mapping[str, Any], start: int, stop: int, rows: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Rows [start, stop) of a batch of ``rows`` rows: views of arrays; a scalar (``streams=3``) is kept."""
    def cut(value: Any) -> Any:
        return value[start:stop] if hasattr(value, "__len__") and len(value) == rows else value
    return tuple(cut(c) for c in columns), {k: cut(v) for k, v in named.items()}


def _without_codecs(schema: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The schema's (shape, dtype) of every field, without the codec a third element may give."""
    if not schema:
        return schema
    return {name: tuple(spec)[:2] if isinstance(spec, (tuple, list)) and len(spec) == 3 else spec for name, spec in schema.items()}


class Stager:
    """Rows validated and waiting to be sent: a fifo buffer of the replay's schema (which raises the
    shard's own ValueError/TypeError for a bad row, before anything is sent) plus each row's priority
    and stream. Staged rows go out in runs that all have, or all lack, explicit priorities."""

    def __init__(self, rows: int, schema: Mapping[str, Any] | None) -> None:
        self.capacity = int(rows)
        schema = _without_codecs(schema)  # staged rows are sent on soon: the shards compress them, not the stager
        self._buffer = ReplayBuffer(self.capacity, "fifo", schema=schema, collect_stats=False) if schema else None
        self._schema = schema
        self._priorities = np.empty(self.capacity, dtype=np.float64)
        self._streams = np.zeros(self.capacity, dtype=np.int64)
        self.has_priorities = False
        self.has_streams = False  # some staged row came with an explicit stream (stream-aware routing)
        self.since = 0.0  # time.monotonic() when the oldest staged row arrived

    def __len__(self) -> int:
        return len(self._buffer) if self._buffer is not None else 0

    @property
    def schema(self) -> Mapping[str, Any] | None:
        return self._buffer.schema if self._buffer is not None and self._buffer.schema else self._schema

    def must_send_before(self, rows: int, with_priorities: bool) -> bool:
        """Whether the staged rows must go out before ``rows`` more (with or without priorities) fit."""
        staged = len(self)
        return bool(staged) and (staged + rows > self.capacity or with_priorities != self.has_priorities)

    def _begin(self, with_priorities: bool) -> ReplayBuffer:
        if self._buffer is None:
            self._buffer = ReplayBuffer(self.capacity, "fifo", schema=self._schema, collect_stats=False)
        if not len(self._buffer):
            self.has_priorities = with_priorities
            self.has_streams = False
            self.since = time.monotonic()
        return self._buffer

    def stage(self, fields: Sequence[Any], named: Mapping[str, Any], priority: float | None, stream: Any) -> None:
        """One row (call ``must_send_before(1, ...)`` first)."""
        buffer = self._begin(priority is not None)
        buffer.add(*fields, stream=stream, **named)  # validates stream too
        at = len(buffer) - 1
        if priority is not None:
            self._priorities[at] = priority
        self._streams[at] = 0 if stream is None else int(stream)
        self.has_streams |= stream is not None

    def stage_batch(self, columns: Sequence[Any], named: Mapping[str, Any], priorities: np.ndarray | None, streams: Any,
                    rows: int) -> None:
        """``rows`` rows with priorities checked by check_priorities (call ``must_send_before`` first)."""
        buffer = self._begin(priorities is not None)
        start = len(buffer)
        buffer.add_batch(*columns, streams=streams, **named)  # validates the rows and the streams
        if priorities is not None:
            self._priorities[start : start + rows] = priorities
        self._streams[start : start + rows] = 0 if streams is None else np.broadcast_to(np.asarray(streams, dtype=np.int64), (rows,))
        self.has_streams |= streams is not None

    def take(self) -> dict[str, Any]:
        """Every staged row as named columns (with "streams", and "priorities" when they have them;
        "streams" only when some row came with an explicit stream)."""
        rows = len(self)
        assert self._buffer is not None
        columns: dict[str, Any] = self._buffer.sample(rows)
        if self.has_priorities:
            columns["priorities"] = self._priorities[:rows].copy()
        if self.has_streams:  # else every row is stream 0, what a buffer assumes without streams
            columns["streams"] = self._streams[:rows].copy()
        return columns


def compress_codec_fields(columns: tuple[Any, ...], named: dict[str, Any], rows: int, codecs: Mapping[str, str],
                          schema: Mapping[str, Any] | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A run with its codec fields compressed as a shard stores them (``named["stored"]``: per field the
    rows' lengths and bytes, from the native compress_rows, GIL released), so the shard keeps them as
    they come instead of compressing them on its one writes thread, and fewer bytes travel. The run is
    returned unchanged where that cannot be exact: no codecs or schema (``schema``: the buffer schema,
    name -> (shape, dtype)), or a codec field that is not an array of the schema's dtype and shape (the
    shard then converts and compresses it, or refuses it with its own error).

    Measured on a loaded 2-core VM: 1,000 rows of 84x84x3 uint8 (21 MB, a flat scene) compress in
    6 ms (lz4, median of 5; up to 80 ms under load) or 7 ms (zstd), to 0.11 / 0.14 MB sent.
    """
    if not codecs or schema is None or rows == 0 or "stored" in named:
        return columns, named
    original = columns, named
    if columns:
        if len(columns) != len(schema):
            return original
        named = {**dict(zip(schema, columns)), **named}
    stored: dict[str, dict[str, Any]] = {}
    for name, codec in codecs.items():
        value = named.get(name)
        if name not in schema or not isinstance(value, np.ndarray):
            return original
        shape, dtype = schema[name][0], schema[name][1]
        if value.dtype != np.dtype(dtype) or value.shape != (rows, *tuple(shape)):
            return original
        lengths, data = _core.compress_rows(value, codec)
        stored[name] = {"lengths": lengths, "data": data}
    return (), {**{key: value for key, value in named.items() if key not in stored}, "stored": stored}


def validated(columns: Sequence[Any], named: Mapping[str, Any], schema: Mapping[str, Any] | None, rows: int) -> dict[str, Any]:
    """A batch checked whole, as named contiguous columns: before a batch is cut over several shards
    (each would validate only its run, and a bad row in a later run would leave earlier runs written)."""
    named = dict(named)
    priorities = named.pop("priorities", None)
    streams = named.pop("streams", None)
    stager = Stager(rows, schema)
    stager.stage_batch(columns, named, None if priorities is None else check_priorities(priorities, rows), streams, rows)
    return stager.take()


# -- routing (routing.Router) ------------------------------------------------------------------------

def plan_batch(router: Router, columns: tuple[Any, ...], named: dict[str, Any], rows: int, writable: Sequence[bool], sizes: Sequence[int],
               schema: Mapping[str, Any] | None) -> tuple[tuple[Any, ...], dict[str, Any], list[tuple[int, int, int]]]:
    """The runs of a batch (Router.plan, or Router.plan_streams when it has "streams") and the batch as
    the runs cut it: validated whole here when cut (or reordered), so a bad row leaves no run written."""
    streams = named.get("streams")
    if streams is not None and router.num_shards > 1:
        try:
            stream_array = np.broadcast_to(np.asarray(streams, dtype=np.int64), (rows,))
        except (TypeError, ValueError, OverflowError):
            validated(columns, named, schema, rows)  # raises the buffer's own error for the streams
            raise
        order, plan = router.plan_streams(stream_array, writable, sizes)
        if order is not None or len(plan) > 1:
            columns, named = (), validated(columns, named, schema, rows)
        if order is not None:
            named = {key: value[order] if isinstance(value, np.ndarray) and len(value) == rows else value for key, value in named.items()}
        return columns, named, plan
    plan = router.plan(rows, writable, sizes)
    if len(plan) > 1:
        columns, named = (), validated(columns, named, schema, rows)
    return columns, named, plan


# -- one run in flight --------------------------------------------------------------------------------

@dataclass(eq=False)  # compared by identity: payloads hold arrays
class Write:
    """One run of rows bound for one shard until acknowledged (the payload is kept for a retry)."""

    columns: tuple[Any, ...]
    named: dict[str, Any]
    rows: int
    deadline: float
    shard: int = -1
    tried: set[int] = field(default_factory=set)
    uncertain: bool = False  # an attempt may have stored the rows on ``shard``: never sent elsewhere (see settle)

    @classmethod
    def new(cls, columns: tuple[Any, ...], named: Mapping[str, Any], rows: int, timeout_s: float) -> Write:
        return cls(columns, {**named, "batch_id": uuid.uuid4().hex}, rows, time.monotonic() + timeout_s)

    def settle(self, results: list[object]) -> str:
        """ACKED, RETRY_SAME (send to ``shard`` again after RETRY_PAUSE_S) or REROUTE (to a shard not in
        ``tried``); raises a refusal of the rows themselves (ValueError, TypeError, BufferFullError).

        Once an attempt may have stored the rows on ``shard`` (a replica timed out, or took them while
        another refused), the write is ``uncertain``: it is only ever sent to that shard again, and past
        the deadline raises ShardUnavailableError instead of going elsewhere, so no row is stored on two
        shards (a partitioned shard applies the writes queued for it once the partition heals).
        """
        outcome = write_outcome(results)
        if outcome == ACKED:
            return ACKED
        if outcome == RETRY_SAME:
            self.uncertain = True
        if self.uncertain:
            if time.monotonic() < self.deadline:
                return RETRY_SAME
            raise ShardUnavailableError(f"shard {self.shard} did not acknowledge a write of {self.rows} rows in time; the rows may "
                                        "be stored there (it may apply the write later) and were not written elsewhere, so that "
                                        "they are never stored twice")
        self.tried.add(self.shard)
        return REROUTE

    @property
    def run(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The argument of the shard's ``add_run``: the columns and the named ones (batch id included)."""
        return self.columns, self.named

    def pause(self) -> float:
        """The pause before looking for a shard to take this run again (health.pause_before_retry);
        raises ShardUnavailableError once the run's deadline has passed."""
        return pause_before_retry(self.deadline, f"no shard accepted a write of {self.rows} rows before its deadline")
