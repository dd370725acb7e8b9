"""``NativeEpisodeReplayBuffer``: RLlib's prioritized episode replay buffer, stored in ray_replay.

RLlib (new API stack, 2.60) talks to its replay buffer through ``PrioritizedEpisodeReplayBuffer``'s
interface: ``add(episode chunks)``, ``sample(...) -> 1-step episodes``, ``update_priorities(td_errors)``
(no indices: the buffer remembers its last sample) and ``get_metrics()``. This class keeps that
interface and replaces the pure-Python segment tree and episode list with timestep rows in a native
buffer (see ``ray_replay.rllib.nstep`` for the row layout). It subclasses the built-in class only
because RLlib routes priority updates by an ``isinstance`` check on it.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Any

import numpy as np
from ray.rllib.utils import force_list
from ray.rllib.utils.metrics import (
    ACTUAL_N_STEP,
    NUM_ENV_STEPS_ADDED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_STORED,
    NUM_EPISODES_ADDED_LIFETIME,
)
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger
from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import PrioritizedEpisodeReplayBuffer
from ray.rllib.utils.typing import ModuleID, ResultDict

from ray_replay.nested import Layout, infer_layout, map_structure, stack_structures
from ray_replay.rllib.episodes import EpisodeFactory
from ray_replay.rllib.nstep import END_NONE, END_TERMINATED, END_TRUNCATED, EXTRA_PREFIX, Segment, assemble, draw_n_steps, max_n_step
from ray_replay.rllib.storage import Storage, make_storage

__all__ = ["NativeEpisodeReplayBuffer"]

# Unfinished episodes whose next chunk never comes (e.g. an EnvRunner was restarted) would otherwise
# keep their held-back tail forever; past this many open episodes the least recently extended goes.
_MAX_OPEN_EPISODES = 10_000

# The native stats passed on through get_metrics() under "ray_replay".
_NATIVE_STATS = ("priority_updates", "stale_priority_updates", "add_p50_ns", "sample_p50_ns", "sample_p99_ns")

_OPTIONS = (
    "capacity", "alpha", "beta", "eps", "n_step", "backend", "seed", "batch_size_B", "batch_length_T",
    "metrics_num_episodes_for_smoothing", "env_runners_write",
)


class NativeEpisodeReplayBuffer(PrioritizedEpisodeReplayBuffer):
    """Prioritized episode replay for RLlib's DQN and SAC, with n-step returns, in ray_replay's storage.

    Use it with ``config.training(replay_buffer_config={"type": "ray_replay.rllib.NativeEpisodeReplayBuffer",
    "capacity": ..., ...})`` (a dotted string: RLlib 2.60 crashes on a class object). For SAC use
    ``ray_replay.rllib.SACConfig``, whose validation accepts this type.

    Options (keys of ``replay_buffer_config``):
        capacity: timesteps held (> 0). Unlike RLlib's buffer, eviction is per timestep, oldest first.
        alpha: prioritization exponent (0 = uniform).
        beta: importance-sampling exponent used when the algorithm passes none.
        eps: floor of a priority (a TD error of 0 would otherwise never be sampled again).
        n_step: the algorithm's ``n_step`` (an int, or a closed ``(low, high)`` range): every row
            stores this many future observations and rewards, so sampling with a larger n fails.
            Costs (n_step + 1) observations of memory per timestep.
        backend: ``"local"`` (a native buffer in the Algorithm's process) or a running
            prioritized ``ReplayCoordinator`` (handle or actor name): rows spread over its Ray
            shards with global prioritized sampling; its capacity/alpha/beta then apply and
            get_state/set_state are the coordinator's business.
        env_runners_write: with a sharded backend and ``ray_replay.rllib.DirectWriteEnvRunner``,
            env runners write their rows straight to the shards and this buffer only samples
            (see ray_replay.rllib.direct).
        seed: makes sampling (and n-step draws) reproducible.
        batch_size_B: sample size when ``sample()`` gets none.
        batch_length_T: only 1 (RLlib's prioritized buffer has no sequence sampling either).
        metrics_num_episodes_for_smoothing: window of the smoothed metrics (set by the Algorithm).

    Rows of an unfinished episode are held back until their n future steps arrive, so ``len(self)``
    counts stored (sampleable) timesteps. Observations, actions and extra model outputs may be nested
    (Dict and Tuple spaces): they are stored as flat leaf columns (``obs.image``, ``actions[0]``, see
    ray_replay.nested) and sampled episodes get them back in RLlib's structure. Non-empty ``infos``
    are kept in this process beside the storage. Extra model outputs are stored as the first
    episodes have them; keys that are missing later read as zeros.

    Checkpointing: RLlib 2.60's new API stack never calls a buffer's ``get_state``/``set_state``.
    Save ``algo.local_replay_buffer.get_state()`` (a picklable dict) next to ``algo.save_to_path()``
    and, after restoring the algorithm, call ``algo.local_replay_buffer.set_state(state)``.
    The old API stack is broken in RLlib 2.60 for every buffer type; this class is for the new stack.
    """

    def __init__(
        self,
        capacity: int = 10000,
        *,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
        n_step: int | tuple[int, int] = 1,
        backend: Any = "local",
        seed: int | None = None,
        batch_size_B: int = 16,
        batch_length_T: int = 1,
        metrics_num_episodes_for_smoothing: int = 100,
        env_runners_write: bool = False,
        **unknown: Any,
    ) -> None:
        # The parent's __init__ is not called: it would allocate segment trees this class never uses.
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown replay_buffer_config option(s) {sorted(unknown)}; "
                f"valid options: type, {', '.join(_OPTIONS)}"
            )
        if env_runners_write and isinstance(backend, str) and backend == "local":
            raise ValueError(f"{type(self).__name__}: env_runners_write needs a sharded backend (a ReplayCoordinator), not 'local'")
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity <= 0:
            raise ValueError(f"{type(self).__name__}: capacity must be an int > 0, got {capacity!r}")
        if alpha < 0 or beta < 0 or eps <= 0:
            raise ValueError(f"{type(self).__name__}: need alpha >= 0, beta >= 0, eps > 0; got {alpha}, {beta}, {eps}")
        if batch_length_T not in (0, 1):
            raise ValueError(f"{type(self).__name__}: only batch_length_T=1 is supported, got {batch_length_T}")
        self._k = max_n_step(n_step)
        self.capacity = int(capacity)
        self.batch_size_B = batch_size_B
        self.batch_length_T = 1
        self._beta = float(beta)
        self._eps = float(eps)
        self._backend = backend
        self._storage: Storage = make_storage(backend, self.capacity, alpha=alpha, beta=beta, eps=eps, seed=seed)
        self._awaiting_rows = bool(env_runners_write)  # env runners write: the first sample waits for rows
        self.capacity = self._storage.capacity  # a sharded backend has its coordinator's
        self._rng = np.random.default_rng(seed)
        self._factory = EpisodeFactory()
        self._open: OrderedDict[str, Segment] = OrderedDict()  # episode id -> held-back tail
        self._next_key = 0
        self._rows_added = 0
        # Non-empty infos only: row number -> [info_t .. info_t+k]; evicted with their rows.
        self._infos: dict[int, list[Any]] = {}
        self._info_rows: deque[int] = deque()
        self._spaces: tuple[Any, Any] = (None, None)
        self._extra_schema: dict[str, Any] | None = None  # extra name -> its first rows cut to 0 (shapes, dtypes)
        self._layout: Layout | None = None  # nested rows (Dict/Tuple spaces) <-> flat storage columns
        self._layout_known = False  # fixed by the first rows stored
        # Multi-agent: segment key -> (agent_id, module_id, multi_agent_episode_id) of its episode, so
        # sampled episodes carry them as RLlib's multi-agent buffer's do (bounded: see _tag).
        self._tags: OrderedDict[int, tuple[Any, Any, Any]] = OrderedDict()
        self._last_ids: np.ndarray | None = None
        self._counts = {"steps_added": 0, "episodes_added": 0, "steps_sampled": 0}
        self.payload_steps_received = 0  # timesteps handed to add() in this process (0 with env_runners_write)
        self._reported = dict(self._counts)
        self._last_mean_n = 0.0
        self.metrics = MetricsLogger(root=False)
        self._window = metrics_num_episodes_for_smoothing

    def __len__(self) -> int:
        return len(self._storage)

    def get_num_timesteps(self, module_id: ModuleID | None = None) -> int:
        """Stored (sampleable) timesteps."""
        return len(self._storage)

    def get_added_timesteps(self, module_id: ModuleID | None = None) -> int:
        return self._counts["steps_added"]

    def get_sampled_timesteps(self, module_id: ModuleID | None = None) -> int:
        return self._counts["steps_sampled"]

    def add(self, episodes: Any, weight: float | None = None) -> None:  # type: ignore[override]  # RLlib's own signature
        """Stores the chunks' timesteps; ``weight`` is their initial priority (default: the largest so far)."""
        batches: list[dict[str, np.ndarray]] = []
        infos: list[list[Any] | None] = []
        for episode in force_list(episodes):
            num = len(episode)
            self._counts["steps_added"] += num
            self.payload_steps_received += num
            end = END_TERMINATED if episode.is_terminated else END_TRUNCATED if episode.is_truncated else END_NONE
            segment = self._segment_of(episode)
            if segment is None:
                continue
            rows, row_infos = segment.take_rows(self._k, end)
            if end == END_NONE:
                self._open[episode.id_] = segment
                if len(self._open) > _MAX_OPEN_EPISODES:
                    self._open.popitem(last=False)
            if rows:
                batches.append(self._conform(rows))
                infos.append(row_infos)
        if not batches:
            return
        columns = batches[0] if len(batches) == 1 else {k: map_structure(_concatenate, *[b[k] for b in batches]) for k in batches[0]}
        count = len(columns["t"])
        columns["row"] = np.arange(self._rows_added, self._rows_added + count, dtype=np.int64)
        columns = self._flat(columns)
        self._keep_infos(infos, [len(b["t"]) for b in batches])
        self._rows_added += count
        priorities = None if weight is None else np.full(count, float(weight))
        self._storage.add_batch(columns, priorities)

    def _flat(self, columns: dict[str, Any]) -> dict[str, Any]:
        """Nested columns (Dict/Tuple spaces) -> flat storage columns, by the layout of the first rows."""
        if not self._layout_known:
            self._layout = infer_layout(list(columns), list(columns.values()), batched=True, every_tuple=True)
            self._layout_known = True
        return columns if self._layout is None else self._layout.flatten(columns)

    def _conform(self, rows: dict[str, Any]) -> dict[str, Any]:
        """Fixes the stored extra model outputs to those of the first rows: later missing ones are
        zero-filled, new ones dropped (the native schema is fixed once written)."""
        if self._extra_schema is None:
            self._extra_schema = {k: map_structure(_empty_like, v) for k, v in rows.items() if k.startswith(EXTRA_PREFIX)}
        extras = {k for k in rows if k.startswith(EXTRA_PREFIX)}
        if extras == self._extra_schema.keys():
            return rows
        count = len(rows["t"])
        conformed = {k: v for k, v in rows.items() if not k.startswith(EXTRA_PREFIX) or k in self._extra_schema}
        for name, empty in self._extra_schema.items():
            if name not in conformed:
                conformed[name] = map_structure(lambda leaf: np.zeros((count, *leaf.shape[1:]), dtype=leaf.dtype), empty)
        return conformed

    def _segment_of(self, episode: Any) -> Segment | None:
        """The episode's unstored steps: its held-back tail (if contiguous) followed by this chunk."""
        num = len(episode)
        previous = self._open.pop(episode.id_, None)
        if num == 0:
            return previous
        if self._spaces[0] is None:
            self._spaces = (episode.observation_space, episode.action_space)
        obs = _as_batch(episode.get_observations(slice(0, num + 1)))
        actions = _as_batch(episode.get_actions(slice(0, num)))
        raw_infos = episode.get_infos(slice(0, num + 1))
        chunk = Segment(
            key=-1,
            base=int(episode.t_started),
            obs=obs,
            actions=actions,
            rewards=np.asarray(episode.get_rewards(slice(0, num)), dtype=np.float64),
            extras={k: _as_batch(episode.get_extra_model_outputs(k, slice(0, num))) for k in episode.extra_model_outputs},
            infos=list(raw_infos) if any(raw_infos) else None,
        )
        if previous is not None and previous.base + len(previous) == chunk.base:
            previous.extend(chunk)
            return previous
        chunk.key = self._next_key
        self._next_key += 1
        if episode.agent_id is not None or episode.multi_agent_episode_id is not None:
            self._tag(chunk.key, (episode.agent_id, episode.module_id, episode.multi_agent_episode_id))
        self._counts["episodes_added"] += 1
        return chunk

    def _tag(self, key: int, tag: tuple[Any, Any, Any]) -> None:
        # Each stored episode holds at least one row, so at most capacity + open episodes have rows.
        self._tags[key] = tag
        while len(self._tags) > self.capacity + _MAX_OPEN_EPISODES:
            self._tags.popitem(last=False)

    def _keep_infos(self, infos: list[list[Any] | None], sizes: list[int]) -> None:
        start = self._rows_added
        for row_infos, size in zip(infos, sizes):
            if row_infos is not None:
                for offset, value in enumerate(row_infos):
                    self._infos[start + offset] = value
                    self._info_rows.append(start + offset)
            start += size
        # Rows older than `capacity` have been overwritten in the storage.
        while self._info_rows and self._info_rows[0] < start - self.capacity:
            self._infos.pop(self._info_rows.popleft(), None)

    def sample(  # type: ignore[override]  # returns episodes, as RLlib's does, whose annotation says a batch
        self,
        num_items: int | None = None,
        *,
        batch_size_B: int | None = None,
        batch_length_T: int | None = None,
        n_step: int | tuple[int, int] | None = None,
        beta: float | None = None,
        gamma: float = 0.99,
        include_infos: bool = False,
        include_extra_model_outputs: bool = False,
        to_numpy: bool = False,
        lookback: int = 0,
        **kwargs: Any,
    ) -> list[Any]:
        """Prioritized n-step transitions as 1-step ``SingleAgentEpisode``s ``(o_t, a_t, R, o_t+n)``.

        Each carries ``"weights"`` (importance weights, max 1) and ``"n_step"`` (the n used, cut short
        at an episode's end) in ``extra_model_outputs``; ``terminated``/``truncated`` are set only when
        o_t+n is the episode's last observation. The remaining keyword arguments RLlib passes
        (``sample_episodes``, ``min_batch_length_T``) do not change the result.
        """
        if num_items is not None and batch_size_B is not None:
            raise ValueError("pass num_items or batch_size_B, not both")
        if (batch_length_T or 1) != 1 or lookback:
            raise NotImplementedError("sequence sampling (stateful RLModules) is not supported")
        n_step = 1 if n_step is None else n_step
        if max_n_step(n_step) > self._k:
            raise ValueError(
                f"sample(n_step={n_step!r}) needs more future steps than stored; set "
                f"replay_buffer_config['n_step'] = {n_step!r} (currently {self._k})"
            )
        size = num_items or batch_size_B or self.batch_size_B
        if self._awaiting_rows:
            self._await_rows()
        rows = self._storage.sample(size, self._beta if beta is None else float(beta))
        if self._layout is not None:
            rows = self._layout.unflatten(rows)
        batch = assemble(rows, draw_n_steps(n_step, size, self._rng), gamma)
        self._last_ids = rows["ids"]
        self._counts["steps_sampled"] += size
        self._last_mean_n = float(batch.n_steps.mean())
        extras: dict[str, Any] = {"weights": rows["weights"].tolist(), "n_step": batch.n_steps.tolist()}
        if include_extra_model_outputs:
            extras.update(batch.extras)
        infos = None
        if include_infos:
            kept = [self._infos.get(int(r)) for r in rows["row"]]
            infos = [(r[0], r[n]) if r is not None else ({}, {}) for r, n in zip(kept, batch.n_steps.tolist())]
        episodes = self._factory.build(
            *self._spaces,
            obs=batch.obs,
            next_obs=batch.next_obs,
            actions=batch.actions,
            rewards=batch.rewards,
            terminated=batch.terminated,
            truncated=batch.truncated,
            t=batch.t,
            extras=extras,
            infos=infos,
            tags=[self._tags.get(key, (None, None, None)) for key in rows["episode"].tolist()] if self._tags else None,
        )
        if to_numpy:
            for episode in episodes:
                episode.to_numpy()
        return episodes

    def _await_rows(self, timeout_s: float = 60.0) -> None:
        """With env_runners_write, the env runners' first rows may still be on their way to the shards."""
        deadline = time.monotonic() + timeout_s
        while len(self._storage) == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no rows reached the sharded replay within {timeout_s} s: do the env runners use DirectWriteEnvRunner?")
            time.sleep(0.01)
        self._awaiting_rows = False  # rows never leave a prioritized replay that has them (eviction keeps it full)

    def flush(self) -> None:
        """Returns once every row added so far is stored (a sharded backend sends its staged rows)."""
        self._storage.flush()

    def update_priorities(self, priorities: Any, module_id: ModuleID | None = None) -> None:
        """Sets the priorities (|TD errors|) of the rows of the last ``sample()``."""
        if self._last_ids is None:
            raise RuntimeError("update_priorities() must follow a sample()")
        values = np.abs(np.asarray(priorities, dtype=np.float64).reshape(-1))
        if len(values) != len(self._last_ids):
            raise ValueError(f"got {len(values)} priorities for a sample of {len(self._last_ids)}")
        self._storage.update_priorities(self._last_ids, np.maximum(values, self._eps))
        self._last_ids = None

    def get_metrics(self) -> ResultDict[str, Any]:
        """Adds, samples and storage size since the last report, plus the native buffer's counters.

        RLlib calls this after every sample and aggregates the replies per training iteration, so
        every call reports (a throttled call would leave fast iterations without values); the
        lifetime counts are deltas since the previous report.
        """
        counts, reported = self._counts, self._reported
        log = self.metrics.log_value
        # Gauges are logged as "item" (the latest value): a windowed mean would cost a numpy reduction
        # per gauge per call, and RLlib calls this after every sample.
        log(NUM_ENV_STEPS_STORED, len(self._storage), reduce="item")
        log(NUM_ENV_STEPS_ADDED_LIFETIME, counts["steps_added"] - reported["steps_added"], reduce="lifetime_sum")
        log(NUM_ENV_STEPS_SAMPLED_LIFETIME, counts["steps_sampled"] - reported["steps_sampled"], reduce="lifetime_sum")
        log(NUM_EPISODES_ADDED_LIFETIME, counts["episodes_added"] - reported["episodes_added"], reduce="lifetime_sum")
        log(ACTUAL_N_STEP, self._last_mean_n, reduce="mean", window=self._window)
        stats = self._storage.stats()
        for name in _NATIVE_STATS:
            if name in stats:  # a sharded backend reports counters, not latencies
                log(("ray_replay", name), stats[name], reduce="item")
        log(("ray_replay", "open_episodes"), len(self._open), reduce="item")
        log(("ray_replay", "payload_steps_received"), self.payload_steps_received, reduce="item")
        self._reported = dict(counts)
        return self.metrics.reduce()

    def get_state(self) -> dict[str, Any]:
        """A picklable snapshot: stored rows, held-back episode tails, counters, random state."""
        return {
            "n_step": self._k,
            "capacity": self.capacity,
            "storage": self._storage.get_state(),
            "open": [(episode_id, vars(segment)) for episode_id, segment in self._open.items()],
            "next_key": self._next_key,
            "rows_added": self._rows_added,
            "infos": list(self._infos.items()),
            "spaces": self._spaces,
            "extra_schema": self._extra_schema,
            "layout": None if self._layout is None else self._layout.to_json(),
            "layout_known": self._layout_known,
            "tags": list(self._tags.items()),
            "counts": dict(self._counts),
            "rng": self._rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_state`'s snapshot into a buffer built with the same ``n_step``."""
        if state["n_step"] != self._k:
            raise ValueError(f"state was saved with n_step={state['n_step']}, this buffer has {self._k}")
        self._storage.set_state(state["storage"])
        self.capacity = state["capacity"]
        self._open = OrderedDict((episode_id, Segment(**fields)) for episode_id, fields in state["open"])
        self._next_key = state["next_key"]
        self._rows_added = state["rows_added"]
        self._infos = dict(state["infos"])
        self._info_rows = deque(sorted(self._infos))
        self._spaces = state["spaces"]
        self._extra_schema = state["extra_schema"]
        if self._extra_schema is not None:  # states of earlier versions hold (shape, dtype) per extra
            self._extra_schema = {k: np.empty((0, *v[0]), v[1]) if isinstance(v, tuple) and isinstance(v[1], np.dtype) else v
                                  for k, v in self._extra_schema.items()}
        self._layout = None if state.get("layout") is None else Layout.from_json(state["layout"])
        self._layout_known = state.get("layout_known", self._layout is not None)
        self._tags = OrderedDict(state.get("tags", []))
        self._counts = dict(state["counts"])
        self._reported = dict(self._counts)
        self._rng.bit_generator.state = state["rng"]
        self._last_ids = None


def _empty_like(leaf: np.ndarray) -> np.ndarray:
    return np.empty((0, *leaf.shape[1:]), leaf.dtype)


def _concatenate(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


def _as_batch(values: Any) -> Any:
    """What an episode's getters return (an array, a list of per-step values, or a nested structure of
    either: Dict/Tuple spaces) -> arrays, or a structure of arrays, with the steps as leading axis."""
    if isinstance(values, list):
        return stack_structures(values) if values else np.asarray(values)
    return map_structure(np.asarray, values)
