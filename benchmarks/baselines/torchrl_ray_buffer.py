"""TorchRL's RayReplayBuffer as a DIST-1 peer (benchmarks/distributed.py), driven as its documentation
shows: ``RayReplayBuffer(storage=partial(LazyTensorStorage, capacity), sampler=partial(PrioritizedSampler,
capacity, alpha, beta, eps))`` (components passed as constructors) hosts one prioritized ReplayBuffer in
one Ray actor; each writer and the learner gets ``buffer.client()`` (picklable, without shutdown
rights) and calls ``extend(TensorDict)``, ``sample(n, return_info=True)`` and
``update_priority(index, priority)``. (PrioritizedReplayBuffer itself cannot be hosted so: it reads
its storage's size before the storage is built.)
TorchRL's client waits for the reply of every call; that is its API, not a choice of this adapter.

The actor's process must load TorchRL's compiled sum tree the way :mod:`torchrl_buffer` does (lazy
symbol binding, see there) before it imports TorchRL, and Ray imports TorchRL while it unpickles the
actor's class, before any code of ours runs there. So :data:`WORKER_SETUP_HOOK`, the job's
``worker_process_setup_hook``, puts a finder on ``sys.meta_path`` that loads the extension when TorchRL
is first imported (workers that never import TorchRL pay nothing).

Import lazily: :func:`available` says whether TorchRL and its prioritized replay are usable.
"""

from __future__ import annotations

import importlib.abc
import sys
from functools import partial
from typing import Any

import numpy as np

from baselines import torchrl_buffer

NAME = "torchrl RayReplayBuffer"
WORKER_SETUP_HOOK = f"{__name__}.load_extension_before_torchrl"


class _LoadExtensionFirst(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "torchrl":
            sys.meta_path.remove(self)
            torchrl_buffer.load_extension()  # the extension only: TorchRL's own import goes on as usual
        return None


def load_extension_before_torchrl() -> None:
    sys.meta_path.insert(0, _LoadExtensionFirst())


def available() -> tuple[bool, str]:
    ok, detail = torchrl_buffer.available()
    if ok and not torchrl_buffer.per_available():
        return False, detail
    return ok, detail


def create(capacity: int, alpha: float, beta: float, eps: float) -> Any:
    """The buffer's owner (close() kills its actor)."""
    import logging

    from torchrl.data import LazyTensorStorage, PrioritizedSampler, RayReplayBuffer

    logging.getLogger("torchrl").setLevel(logging.WARNING)  # it logs every actor start and kill at INFO

    return RayReplayBuffer(
        storage=partial(LazyTensorStorage, capacity),
        sampler=partial(PrioritizedSampler, capacity, alpha, beta, eps),
        remote_config={"num_cpus": 0},  # like every actor of the benchmark
    )


def tensordict(columns: dict[str, np.ndarray]) -> Any:
    """A batched TensorDict over the numpy columns (torch.from_numpy: no copy)."""
    import torch
    from tensordict import TensorDict

    n = len(next(iter(columns.values())))
    return TensorDict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in columns.items()}, batch_size=[n])


def update_priorities(client: Any, index: Any, priorities: np.ndarray) -> None:
    import torch

    # The sum tree holds float32 (PrioritizedReplayBuffer's default) and takes float32 only.
    client.update_priority(index, torch.as_tensor(priorities, dtype=torch.float32))
