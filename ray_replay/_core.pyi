"""Type stubs of the private compiled module (see ray_replay.buffer for the documented facade)."""

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class BufferFullError(RuntimeError): ...

class NativeReplayBuffer:
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
        sequence_priority_eta: float = 0.9,
    ) -> None: ...
    def add(self, *fields: Any, priority: float | None = None, stream: int | None = 0, **named_fields: Any) -> None: ...
    def add_batch(
        self,
        *columns: npt.ArrayLike,
        priorities: npt.ArrayLike | None = None,
        streams: int | npt.ArrayLike | None = None,
        **named_columns: npt.ArrayLike,
    ) -> None: ...
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
    ) -> dict[str, np.ndarray]: ...
    def update_priorities(self, ids: npt.ArrayLike, priorities: npt.ArrayLike, *, mask: npt.ArrayLike | None = None) -> None: ...
    def __len__(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def buffer_type(self) -> str: ...
    @property
    def schema(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]: ...
    collect_stats: bool
    def stats(self) -> dict[str, Any]: ...
    @property
    def storage_dir(self) -> str | None: ...
    def _get_state(self, with_rows: bool = True, newest_rows: int | None = None) -> dict[str, Any]: ...
    def _sync_storage(self) -> None: ...
    def _set_state(self, state: dict[str, Any], /) -> None: ...  # py::dict, positional (pybind11's arg0)
