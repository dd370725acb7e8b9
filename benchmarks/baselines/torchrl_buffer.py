"""TorchRL (https://pypi.org/project/torchrl/) replay buffers, driven the way its documentation shows:
``ReplayBuffer(storage=LazyTensorStorage(capacity), sampler=RandomSampler())`` and
``PrioritizedReplayBuffer(alpha, beta, eps, storage=LazyTensorStorage(capacity))``, fed with
``extend`` of a batched TensorDict (numpy columns wrapped with ``torch.from_numpy``, no copy) or
``add`` of a TensorDict of one transition, sampled with ``sample(n)`` (``return_info=True`` for the
prioritized one, whose ``info["index"]`` goes back to ``update_priority(index, priorities)``).
Samples stay TensorDicts of torch tensors, what a torch learner consumes: nothing is converted to numpy.

The ``layout="tuple"`` variants store a tuple of tensors instead (LazyTensorStorage's documented
PyTree support), which skips the TensorDict bookkeeping. TensorDictPrioritizedReplayBuffer (the
"index" and weight keys written into every sampled TensorDict) is not measured: it only adds work to
PrioritizedReplayBuffer's path.

torch runs with one intra-op thread (``torch.set_num_threads(1)``): every other implementation is
single-threaded, the harness's CPU-time column counts the calling thread only, and at these sizes
(256 or 1000 rows) torch's kernels stay on one thread anyway.

The prioritized sampler's sum and min trees live in TorchRL's compiled extension ``torchrl._torchrl``,
built against one torch release. The cp311 wheels checked (0.11.1, 0.12.0, 0.13.3, 0.14.0, 0.14.1)
reference autograd symbols that torch 2.13 no longer exports, so a plain import fails with "undefined
symbol" and TorchRL turns prioritized replay off. The segment trees never call those symbols, so
:func:`available` loads the extension with lazy symbol binding (``RTLD_LAZY``, for that one library
only) before TorchRL is imported, and says so in its detail string.

Import lazily: :func:`available` says whether torchrl is installed and importable."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

NAME = "torchrl"
PER_NAME = "torchrl PER"
TUPLE = " (tuple pytree)"
FIELDS = ("state", "action", "reward", "next_state", "done")

_loaded: tuple[bool, str] | None = None


def load_extension() -> str:
    """Loads ``torchrl._torchrl`` before torchrl itself; lazily bound if an eager load fails."""
    spec = importlib.util.find_spec("torchrl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'torchrl'")
    import torch  # noqa: F401  (libtorch's libraries first)

    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_torchrl*.so"))
    if not found:
        return "no compiled extension: prioritized replay unavailable"
    flags = sys.getdlopenflags()
    lazy = (flags & ~os.RTLD_NOW) | os.RTLD_LAZY
    for how, dlflags in (("", flags), (", extension loaded with lazy symbol binding", lazy)):
        ext_spec = importlib.util.spec_from_file_location("torchrl._torchrl", found[0])
        sys.setdlopenflags(dlflags)
        try:
            module = importlib.util.module_from_spec(ext_spec)
        except ImportError as error:
            if "undefined symbol" not in str(error):
                raise
            continue
        finally:
            sys.setdlopenflags(flags)
        ext_spec.loader.exec_module(module)
        sys.modules["torchrl._torchrl"] = module
        return how
    return ", compiled extension does not load: prioritized replay unavailable"


def available() -> tuple[bool, str]:
    """(importable, "version[, how the extension loaded]")."""
    global _loaded
    if _loaded is not None:
        return _loaded
    try:
        how = "" if "torchrl" in sys.modules else load_extension()
        import tensordict  # noqa: F401
        import torchrl  # noqa: F401
        from torchrl.data import LazyTensorStorage, PrioritizedReplayBuffer, RandomSampler, ReplayBuffer  # noqa: F401
    except Exception as error:  # missing, or a broken build
        _loaded = (False, f"{type(error).__name__}: {error}")
        return _loaded
    from importlib.metadata import version

    _loaded = (True, f"{version('torchrl')} (tensordict {version('tensordict')}, torch {version('torch')}){how}")
    return _loaded


def per_available() -> bool:
    """Whether TorchRL's compiled segment trees loaded (PrioritizedSampler needs them)."""
    from torchrl.data.replay_buffers import samplers

    return samplers.SumSegmentTreeFp32 is not None


def _setup(seed: int):
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("torchrl").setLevel(logging.WARNING)  # storage initialization is logged at INFO
    return torch, torch.Generator().manual_seed(seed)


class _Base:
    layout = "tensordict"

    def _batch(self, states, actions, rewards, next_states, dones):
        f = self._torch.from_numpy
        cols = (f(states), f(actions), f(rewards), f(next_states), f(dones))
        if self.layout == "tuple":
            return cols
        return self._TensorDict(dict(zip(FIELDS, cols)), batch_size=[len(states)])

    def __len__(self) -> int:
        return len(self.rb)

    def add_batch(self, states, actions, rewards, next_states, dones):
        return self.rb.extend(self._batch(states, actions, rewards, next_states, dones))

    def add(self, state, action, reward, next_state, done) -> None:
        t = self._torch
        row = (t.from_numpy(state), t.tensor(action), t.tensor(reward), t.from_numpy(next_state), t.tensor(done))
        if self.layout == "tuple":
            self.rb.add(row)
        else:
            self.rb.add(self._TensorDict(dict(zip(FIELDS, row)), batch_size=[]))


class TorchRLBuffer(_Base):
    def __init__(self, capacity: int, schema: dict, seed: int = 0, layout: str = "tensordict") -> None:
        from tensordict import TensorDict
        from torchrl.data import LazyTensorStorage, RandomSampler, ReplayBuffer

        self._torch, generator = _setup(seed)
        self._TensorDict = TensorDict
        self.layout = layout
        self.capacity = capacity
        self.rb = ReplayBuffer(storage=LazyTensorStorage(capacity), sampler=RandomSampler(), generator=generator)

    prefill = _Base.add_batch

    def sample(self, n: int):
        return self.rb.sample(n)


class TorchRLPER(_Base):
    def __init__(self, capacity: int, schema: dict, alpha: float, beta: float, eps: float, seed: int = 0,
                 layout: str = "tensordict") -> None:
        from tensordict import TensorDict
        from torchrl.data import LazyTensorStorage, PrioritizedReplayBuffer

        self._torch, generator = _setup(seed)
        self._TensorDict = TensorDict
        self.layout = layout
        self.capacity = capacity
        self.rb = PrioritizedReplayBuffer(alpha=alpha, beta=beta, eps=eps, storage=LazyTensorStorage(capacity))
        self.rb.set_rng(generator)

    def add_batch(self, states, actions, rewards, next_states, dones, priorities=None) -> None:
        index = super().add_batch(states, actions, rewards, next_states, dones)
        if priorities is not None:  # extend gives new rows the highest priority seen; then set the given ones
            self.update_priorities(index, priorities)

    prefill = add_batch

    def sample(self, n: int) -> dict[str, Any]:
        """TorchRL's info dict (``index``, ``priority_weight``) with the sampled data under ``data``."""
        data, info = self.rb.sample(n, return_info=True)
        info["data"] = data
        return info

    def ids_of(self, batch: dict[str, Any]):
        return batch["index"]

    def update_priorities(self, ids, priorities) -> None:
        # The sum tree holds float32 (PrioritizedReplayBuffer's default dtype) and takes float32 only.
        self.rb.update_priority(ids, self._torch.as_tensor(np.asarray(priorities), dtype=self._torch.float32))
