"""Every exception ray_replay raises of its own, in one place (no Ray import): also importable from
ray_replay. BufferFullError comes from the native core, CorruptFileError from the file format."""

from __future__ import annotations

from ray_replay._core import BufferFullError
from ray_replay.persistence import CorruptFileError

__all__ = ["BufferFullError", "CorruptFileError", "ShardFencedError", "ShardUnavailableError", "StalePlanError"]


class ShardFencedError(RuntimeError):
    """The shard refuses writes for a moment (a replica is being copied); write to another shard."""


class StalePlanError(RuntimeError):
    """Rows were asked of an empty shard (it restarted since the caller's snapshot); plan again."""


class ShardUnavailableError(RuntimeError):
    """No live shard could take a write within the retry bound (every shard is down)."""
