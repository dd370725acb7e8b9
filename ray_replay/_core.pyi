"""Type stubs of the private compiled module (see ray_replay.buffer for the documented facade)."""

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str
CODECS: tuple[str, ...]

def compress_rows(rows: Any, codec: Any) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """Each row along the leading axis compressed on its own, as a buffer with ``codec`` stores it: (uint32
    lengths, a row's size meaning stored raw; the bytes back to back). GIL released."""

class BufferFullError(RuntimeError):
    """A fifo buffer with ``on_full="error"`` is full: the add wrote nothing (counted in ``stats()["rejected"]``)."""

class NativeReplayBuffer:
    """The native buffer; use its subclass ``ray_replay.ReplayBuffer`` (every argument documented there)."""

    def __init__(
        self,
        capacity: int,
        buffer_type: str = "uniform",
        *,
        schema: Mapping[str, tuple[Any, Any]] | None = None,
        seed: int | None = None,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
        sampling: str = "stratified",
        on_full: str = "error",
        collect_stats: bool = True,
        next_state: str = "store",
        frame_stack_axis: int | None = None,
        storage_dir: str | None = None,
        prefault: bool = False,
        compress: Mapping[str, Any] | None = None,
        sequence_priority_eta: float = 0.9,
    ) -> None: ...
    def add(self, *fields: Any, priority: float | None = None, stream: int | None = 0, **named_fields: Any) -> None:
        """Appends one transition: values in schema order (``state, action, reward, next_state, done``
        when the schema is inferred) or by field name. The first add fixes the schema if none was given.

        Args:
            priority: prioritized only: the row's priority (finite, >= 0; 0 masks it); default: the
                largest priority seen so far (1.0 at first).
            stream: the writer or environment the row comes from (``next_state="dedup"`` links a row to
                the previous one of its stream); None for none.

        Raises:
            ValueError, TypeError: a missing, extra or mis-shaped field, or a value that does not convert
                under numpy's ``same_kind`` rule; nothing is written.
            BufferFullError: a full fifo buffer with ``on_full="error"``; nothing is written.
        """
    def add_batch(
        self,
        *columns: npt.ArrayLike,
        priorities: npt.ArrayLike | None = None,
        streams: int | npt.ArrayLike | None = None,
        **named_columns: npt.ArrayLike,
    ) -> None:
        """Appends rows along the leading axis of every column (positional in schema order, or by name);
        the batch is validated whole before any row is written. The GIL is released while rows are copied.

        Args:
            priorities: prioritized only: one priority per row (default: the largest seen so far).
            streams: one stream id for all rows, or one per row (see ``add``).

        Raises:
            ValueError, TypeError: columns of different lengths, a mis-shaped or unconvertible column, or
                bad priorities; nothing is written.
            BufferFullError: a fifo buffer without room for the whole batch (``on_full="error"``).
        """
    def sample(
        self,
        batch_size: int,
        *,
        beta: float | None = None,
        out: dict[str, np.ndarray] | None = None,
        partial: bool = False,
        masses: bool = False,
        seq_len: int | None = None,
        min_len: int | None = None,
        period: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Samples ``batch_size`` rows: uniformly or by priority with replacement (any ``batch_size >= 1``),
        or, for fifo, pops the oldest rows in insertion order; with ``seq_len``, sequences (see below).

        Args:
            batch_size: rows (or sequences) to return (>= 1).
            beta: prioritized only: the importance-sampling exponent for ``weights`` (default: the buffer's).
            out: a dict of preallocated arrays (one per field and extra key, leading axis ``batch_size``)
                to fill instead of allocating (not with ``seq_len``).
            partial: fifo only: return what is there when fewer than ``batch_size`` rows are held.
            masses: prioritized only: also return ``masses`` (float64, each sampled row's p_i^alpha as
                read under the same lock as the draw), for callers that renormalize over shards.
            seq_len: uniform and prioritized: sequences of this many steps of one stream's episode, every
                field shaped (batch_size, seq_len, ...) with a (batch_size, seq_len) bool ``mask``, zeros as
                padding, one ``ids`` (and ``weights``) per sequence (docs/sequences.md).
            min_len: with ``seq_len``: only starts with at least this many valid steps.
            period: with ``seq_len``: only starts every ``period`` steps of an episode.

        Returns:
            One array per field, plus for prioritized buffers ``weights`` (float32, the largest possible
                weight is 1), ``ids`` (int64, for ``update_priorities``) and ``probabilities`` (float64).

        Raises:
            ValueError: an empty buffer, ``batch_size < 1``, or a fifo holding fewer rows without
                ``partial``; nothing is removed.
        """
    def update_priorities(self, ids: npt.ArrayLike, priorities: npt.ArrayLike, *, mask: npt.ArrayLike | None = None) -> None:
        """Prioritized only: sets the priorities of sampled rows (vectorized). An id whose row was
        overwritten since it was sampled is ignored and counted in ``stats()["stale_priority_updates"]``.
        For a sequence sample, ``priorities`` may be (n, seq_len) per-step errors, mixed into one
        priority per sequence (``sequence_priority_eta``) over the steps of ``mask`` (default: the steps
        the sequence has now).

        Raises:
            ValueError, TypeError: lengths differ, a priority is negative or not finite, or an id was not
                issued by this buffer; nothing changes.
        """
    def __len__(self) -> int:
        """Rows held."""
    @property
    def capacity(self) -> int:
        """The most rows the buffer holds."""
    @property
    def buffer_type(self) -> str:
        """``"fifo"``, ``"uniform"``, ``"prioritized"`` or ``"lockfree"``."""
    @property
    def schema(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        """``name -> (shape, dtype)`` of each field; empty until the first add when none was given."""
    @property
    def codecs(self) -> dict[str, str]:
        """``name -> codec`` (``"lz4"``, ``"zstd:<level>"``) of each compressed field; empty when none is."""
    collect_stats: bool
    """Whether the native core records add/sample latency percentiles (settable)."""
    def stats(self) -> dict[str, Any]:
        """Counters and gauges: ``size, capacity, adds, samples, sample_calls, evictions, rejected,
        bytes_held, bytes_reserved``, latency percentiles ``add_p50_ns, add_p99_ns, sample_p50_ns,
        sample_p99_ns``, for prioritized buffers ``priority_updates, stale_priority_updates,
        total_priority, min_priority, max_priority``, with dedup ``frames_held, frame_bytes``."""
    @property
    def storage_dir(self) -> str | None:
        """The folder of a file-backed buffer's columns, or None for RAM."""
    def _get_state(self, with_rows: bool = True, newest_rows: int | None = None, stored: bool = False) -> dict[str, Any]: ...
    def _sync_storage(self) -> None: ...
    def _set_state(self, state: dict[str, Any], /) -> None: ...  # py::dict, positional (pybind11's arg0)
    def _add_stored_batch(self, columns: dict[str, Any], stored: Any, priorities: Any = None, streams: Any = None) -> None:
        """add_batch of named columns whose codec fields come compressed in ``stored`` ({field: {"lengths", "data"}},
        compress_rows' form): checked to decode and kept as they are; a ValueError naming the field changes nothing."""
