"""The local, in-process replay buffer: a typed facade over the native core (``ray_replay._core``).

The hot methods (``add``, ``add_batch``, ``sample``, ``update_priorities``) are the native ones,
inherited without a Python frame in between; this module adds construction, pickling and docs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ray_replay import _core, nested, nested_buffer
from ray_replay.config import constructor_options
from ray_replay.persistence import CorruptFileError, read_state, write_state

__all__ = ["BUFFER_TYPES", "BufferType", "ReplayBuffer"]

BufferType = Literal["fifo", "uniform", "prioritized", "lockfree"]
BUFFER_TYPES: tuple[BufferType, ...] = ("fifo", "uniform", "prioritized", "lockfree")
_METADATA = "buffer.meta"  # a storage_dir buffer's state, written by flush()
_REOPENING: ContextVar[bool] = ContextVar("_REOPENING", default=False)


class ReplayBuffer(_core.NativeReplayBuffer):
    """A replay buffer of fixed capacity over columnar, 64-byte-aligned native storage.

    Args:
        capacity: maximum number of transitions held (> 0). Storage for all of them is reserved
            when the schema is known; the OS maps pages as they are first written.
        buffer_type: ``"uniform"`` (ring, uniform sampling with replacement), ``"fifo"`` (a queue:
            ``sample(n)`` pops the n oldest), ``"prioritized"`` (proportional PER with a sum tree) or
            ``"lockfree"`` (uniform, many threads add and sample at once without a global lock).
        schema: optional mapping ``name -> (shape, dtype)`` or ``name -> (shape, dtype, codec)``,
            where a spec may also be a dict or a tuple of specs (nested fields, stored as flat columns
            ``"obs.image"``, ``"pair[0]"``; see ray_replay.nested). Without it, field names, shapes
            and dtypes come from the first ``add``/``add_batch`` (Python floats become float32, ints
            int64; numpy values keep their dtype; dict values nest).
        seed: makes sampling reproducible.
        alpha, beta, eps: prioritized only. P(i) = p_i^alpha / sum_k p_k^alpha with
            p_i = max(priority_i, eps) for priority_i > 0; a priority of exactly 0 masks the row
            (never sampled). ``beta`` is the default importance-sampling exponent of ``sample``.
        sampling: prioritized only: ``"stratified"`` (PER's equal mass segments, the default) or
            ``"proportional"`` (independent draws).
        on_full: fifo only: ``"error"`` (add raises BufferFullError and writes nothing) or
            ``"evict"`` (the oldest unread rows are dropped and counted in ``stats()["evictions"]``).
        collect_stats: record add/sample latency percentiles in the native core (about 40 ns a call).
        next_state: ``"store"`` (every field stored as given) or ``"dedup"``: each observation is
            stored once and ``next_state`` is rebuilt at sample time from the next step of the same
            stream (``add(..., stream=k)``, ``add_batch(..., streams=...)``; one stream per writer or
            environment). Every reuse is checked byte for byte, so samples equal those of a plain
            buffer fed the same data, at episode ends and resets too. Needs fields ``state`` and
            ``next_state`` of one shape and dtype.
        frame_stack_axis: with ``next_state="dedup"``, the axis along which observations stack
            frames (e.g. ``-1`` for (84, 84, 4)): each frame is then stored once and stacks are rebuilt
            at sample time. A stack that starts an episode is stored as given (repeated reset frames,
            as gymnasium's FrameStackObservation makes them, or zeros), repeated frames once.
        storage_dir: keep the columns in memory-mapped files in this folder (created if missing)
            instead of RAM: capacity beyond RAM, same API. ``flush()`` (or leaving a ``with`` block)
            writes the buffer's state beside them; ``ReplayBuffer.open(storage_dir)`` reopens it, in
            this process or another, as of the last flush. Not with ``next_state="dedup"``.
        prefault: map all storage when the schema is known instead of page by page as rows
            arrive: steady add latency from the start, at the cost of resident memory up front.
        compress: optional mapping ``name -> codec`` (the same as a schema's third element):
            ``"lz4"`` (fast), ``"zstd"`` (dense, level 3), ``"zstd:<level>"`` or ``("zstd", level)``
            with level 1..22. Rows of those fields are compressed in the native add (in parallel
            over a large batch, GIL released) and decompressed straight into sample's arrays; a row
            that does not shrink is stored raw. Fields of at least 32 bytes per row; not with
            ``storage_dir``. With ``next_state="dedup"``, a codec on ``state`` and ``next_state``
            (the same on both) compresses each stored frame. See docs/compression.md.
        sequence_priority_eta: prioritized only: how ``update_priorities(ids, errors)`` mixes the
            (n, seq_len) per-step errors of a ``sample(n, seq_len=...)`` into one priority per
            sequence: ``eta * max|e| + (1 - eta) * mean|e|`` over the valid steps (R2D2's 0.9).

    Sequences (``uniform`` and ``prioritized``, either ``next_state``; see docs/sequences.md):
    ``sample(n, seq_len=L, min_len=None, period=None)`` returns every field shaped (n, L, ...),
    ``mask`` (n, L) bool, and one ``ids`` (and ``weights``) per sequence. A sequence starts at a
    sampled row (uniformly, or by its priority) and follows the same stream's next rows
    (``add(..., stream=k)`` / ``add_batch(..., streams=...)``) until the episode ends (a nonzero
    ``done``/``terminated``/``truncated``-like scalar field); the rest is zero padding.
    """

    def __init__(
        self,
        capacity: int,
        buffer_type: BufferType = "uniform",
        *,
        schema: Mapping[str, Any] | None = None,
        seed: int | None = None,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
        sampling: Literal["stratified", "proportional"] = "stratified",
        on_full: Literal["error", "evict"] = "error",
        collect_stats: bool = True,
        next_state: Literal["store", "dedup"] = "store",
        frame_stack_axis: int | None = None,
        storage_dir: str | os.PathLike[str] | None = None,
        prefault: bool = False,
        compress: Mapping[str, Any] | None = None,
        sequence_priority_eta: float = 0.9,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
            raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
        if not isinstance(buffer_type, str):
            raise TypeError(f"buffer_type must be a str, got {type(buffer_type).__name__}")
        if storage_dir is not None:
            folder = Path(storage_dir)
            if (folder / _METADATA).exists() and not _REOPENING.get():
                raise FileExistsError(f"storage_dir {str(folder)!r} already holds a buffer: reopen it with ReplayBuffer.open()")
            folder.mkdir(parents=True, exist_ok=True)
            storage_dir = str(folder.resolve())
        layout = None
        if isinstance(schema, Mapping) and nested.is_nested_schema(schema):
            schema, layout = nested.flatten_schema(schema)
        super().__init__(
            int(capacity),
            buffer_type,
            schema=schema,
            seed=seed,
            alpha=alpha,
            beta=beta,
            eps=eps,
            sampling=sampling,
            on_full=on_full,
            collect_stats=collect_stats,
            next_state=next_state,
            frame_stack_axis=frame_stack_axis,
            storage_dir=storage_dir,
            prefault=prefault,
            compress=compress,
            sequence_priority_eta=sequence_priority_eta,
        )
        if layout is not None:
            nested_buffer.attach(self, layout)
        elif schema is None:
            nested_buffer.infer_on_first_add(self)

    def __repr__(self) -> str:
        return f"ReplayBuffer(capacity={self.capacity}, buffer_type={self.buffer_type!r}, size={len(self)})"

    # Pickling carries the contents, counters and random state, so a buffer can be handed to a Ray
    # actor and go on exactly where it was. (The lock-free buffer must not be added to meanwhile.)
    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (nested_buffer.public_type(self), self._get_state(stored=True)))  # compressed fields travel as stored

    def get_state(self) -> dict[str, Any]:
        """Everything needed to rebuild this buffer: configuration, rows (oldest first), counters, RNG."""
        return self._get_state()

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ReplayBuffer:
        """Rebuilds a buffer from :meth:`get_state`."""
        return _restore(cls, dict(state))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the buffer to ``path`` atomically (see ray_replay.persistence for the format).

        The lock-free buffer must not be added to while it is saved.
        """
        write_state(self._get_state(stored=True), path)  # compressed fields as they are stored (format version 4)

    def flush(self) -> None:
        """storage_dir buffers: waits until every row is in the column files, then writes the buffer's
        state (counters, priorities, random state) atomically beside them. Adds must not run meanwhile."""
        if self.storage_dir is None:
            raise ValueError("flush() is for buffers with storage_dir; save(path) writes any buffer to a file")
        self._sync_storage()
        write_state(self._get_state(with_rows=False), Path(self.storage_dir) / _METADATA)

    @classmethod
    def open(cls, storage_dir: str | os.PathLike[str]) -> ReplayBuffer:
        """Reopens a storage_dir buffer as of its last :meth:`flush`; its rows are not copied."""
        path = Path(storage_dir) / _METADATA
        if not path.exists():
            raise FileNotFoundError(f"{str(storage_dir)!r} holds no flushed ray_replay buffer ({_METADATA} is missing)")
        state = read_state(path)
        token = _REOPENING.set(True)
        try:
            return _restore(cls, state, storage_dir=storage_dir)
        except (ValueError, TypeError) as error:
            raise CorruptFileError(f"{path}: inconsistent buffer state ({error})") from None
        finally:
            _REOPENING.reset(token)

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.storage_dir is not None:
            self.flush()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReplayBuffer:
        """Reads a buffer written by :meth:`save`: contents, priorities, counters and random state.

        Raises CorruptFileError (a ValueError) for anything but an intact buffer file.
        """
        state = read_state(path)
        try:
            return _restore(cls, state)
        except (ValueError, TypeError) as error:
            raise CorruptFileError(f"{path}: inconsistent buffer file ({error})") from None


def _restore(cls: type[ReplayBuffer], state: dict[str, Any], storage_dir: str | os.PathLike[str] | None = None) -> ReplayBuffer:
    if "newest_rows" in state:
        raise ValueError("this state is a checkpoint increment (the newest rows only): apply it to its checkpoint first")
    schema = {name: (tuple(shape), dtype) for name, shape, dtype in state["schema"]} or None
    buffer = cls(state["capacity"], state["buffer_type"], schema=schema, storage_dir=storage_dir, **constructor_options(state))
    if state.get("nested"):
        layout = nested.Layout.from_json(state["nested"])
        if list(layout.columns) != [name for name, _, _ in state["schema"]]:
            raise ValueError("the state's nested layout does not match its schema's columns")
        nested_buffer.attach(buffer, layout)
    buffer._set_state(state)
    return buffer
