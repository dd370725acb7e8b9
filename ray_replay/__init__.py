"""ray_replay: fast, correct replay buffers for reinforcement learning, from one process to a Ray cluster.

Local buffers (no Ray needed)::

    from ray_replay import ReplayBuffer
    buf = ReplayBuffer(capacity=1_000_000, buffer_type="prioritized")

Distributed buffers (Ray actors) are imported lazily, so ``import ray_replay`` does not import Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray_replay._core import CODECS
from ray_replay._core import __version__ as _core_version
from ray_replay.buffer import BUFFER_TYPES, ReplayBuffer
from ray_replay.errors import BufferFullError, CorruptFileError, ShardFencedError, ShardUnavailableError, StalePlanError

if TYPE_CHECKING:  # pragma: no cover
    from ray_replay.distributed import DistributedReplay, ReplayClient, ReplayCoordinator, ReplayShard, init_ray

__all__ = [
    "BUFFER_TYPES",
    "CODECS",
    "BufferFullError",
    "CorruptFileError",
    "DistributedReplay",
    "ReplayBuffer",
    "ReplayClient",
    "ReplayCoordinator",
    "ReplayShard",
    "ShardFencedError",
    "ShardUnavailableError",
    "StalePlanError",
    "init_ray",
]

__version__: str = _core_version  # written once, in cpp/include/replay_buffer/version.hpp (see tests/test_version.py)

_DISTRIBUTED = {"DistributedReplay", "ReplayClient", "ReplayCoordinator", "ReplayShard", "init_ray"}


def __getattr__(name: str) -> Any:
    if name in _DISTRIBUTED:
        from ray_replay import distributed

        return getattr(distributed, name)
    raise AttributeError(f"module 'ray_replay' has no attribute {name!r}")
