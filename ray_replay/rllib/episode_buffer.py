"""``NativeEpisodeReplayBuffer``: RLlib's prioritized episode replay buffer, stored in ray_replay.

RLlib (new API stack, 2.60) talks to its replay buffer through ``PrioritizedEpisodeReplayBuffer``'s
interface: ``add(episode chunks)``, ``sample(...) -> 1-step episodes``, ``update_priorities(td_errors)``
(no indices: the buffer remembers its last sample) and ``get_metrics()``. This class keeps that
interface and replaces the pure-Python segment tree and episode list with timestep rows in a native
buffer: each timestep stored once, in its episode's stream, and n-step transitions or sequences
gathered at sample time (see ``ray_replay.rllib.nstep`` for the row layout). It subclasses the
built-in class only because RLlib routes priority updates by an ``isinstance`` check on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
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

from ray_replay.nested import map_structure
from ray_replay.rllib.compact import restore
from ray_replay.rllib.episodes import EpisodeFactory
from ray_replay.rllib.nstep import complete, draw_n_steps, max_n_step, n_step_batch
from ray_replay.rllib.options import BufferOptions
from ray_replay.rllib.rows import RowWriter
from ray_replay.rllib.sequences import OFFSET, build_sequences, draw_sequences
from ray_replay.rllib.storage import LocalStorage, make_storage

__all__ = ["NativeEpisodeReplayBuffer"]

# The native stats passed on through get_metrics() under "ray_replay".
_NATIVE_STATS = ("priority_updates", "stale_priority_updates", "add_p50_ns", "sample_p50_ns", "sample_p99_ns")
# Draws of a start that cannot serve (the newest steps of an unfinished episode) are drawn again, at
# most this many rounds (each round draws only the items still missing).
_MAX_ROUNDS = 256
_STATE_VERSION = 3  # compact rows of one timestep each (2: t and Discrete actions int64; 1: rows held n_step future steps)


class NativeEpisodeReplayBuffer(PrioritizedEpisodeReplayBuffer):
    """Prioritized episode replay for RLlib's DQN and SAC, with n-step returns and sequences, in ray_replay's storage.

    Use it with ``config.training(replay_buffer_config={"type": "ray_replay.rllib.NativeEpisodeReplayBuffer",
    "capacity": ..., ...})`` (a dotted string: RLlib 2.60 crashes on a class object). For SAC use
    ``ray_replay.rllib.SACConfig``, whose validation accepts this type. The options are those of
    :class:`ray_replay.rllib.options.BufferOptions` (capacity, alpha, beta, eps, n_step, backend, seed,
    batch_size_B, batch_length_T, metrics_num_episodes_for_smoothing, env_runners_write); unlike
    RLlib's buffer, eviction is per timestep, oldest first.

    Each timestep is stored once (one row per env step in its episode's stream, plus one row per
    finished episode for its final observation), so ``sample(n_step=...)`` serves any n or range the
    algorithm passes, with no ``n_step`` key in the config, at the same memory per timestep.
    ``len(self)`` counts stored timesteps (a sharded backend counts rows: one more per finished
    episode). Observations, actions and extra model outputs may be nested (Dict and Tuple spaces):
    they are stored as flat leaf columns (``obs.image``, ``actions[0]``, see ray_replay.nested) and
    sampled episodes get them back in RLlib's structure. Non-empty ``infos`` are kept in this process
    beside the storage. Extra model outputs are stored as the first episodes have them; keys that
    are missing later read as zeros.

    Checkpointing: RLlib 2.60's new API stack never calls a buffer's ``get_state``/``set_state``.
    Save ``algo.local_replay_buffer.get_state()`` (a picklable dict) next to ``algo.save_to_path()``
    and, after restoring the algorithm, call ``algo.local_replay_buffer.set_state(state)``.
    The old API stack is broken in RLlib 2.60 for every buffer type; this class is for the new stack.
    """

    def __init__(self, capacity: int = 10000, **options: Any) -> None:
        # The parent's __init__ is not called: it would allocate segment trees this class never uses.
        parsed = BufferOptions.parse(type(self).__name__, capacity, options, multi_agent=False)
        self.options = parsed
        self.capacity = int(parsed.capacity)
        self.batch_size_B = parsed.batch_size_B
        self.batch_length_T = parsed.batch_length_T
        self._n_step = parsed.n_step  # the default of sample(n_step=None)
        self._beta = float(parsed.beta)
        self._eps = float(parsed.eps)
        self._backend = parsed.backend
        self._storage = make_storage(parsed.backend, self.capacity, alpha=parsed.alpha, beta=parsed.beta, eps=parsed.eps, seed=parsed.seed)
        self._local = isinstance(self._storage, LocalStorage)
        self._awaiting_rows = bool(parsed.env_runners_write)  # env runners write: the first sample waits for rows
        self.capacity = self._storage.capacity  # a sharded backend has its coordinator's
        self._writer = RowWriter(self._storage, self.capacity)
        self._rng = np.random.default_rng(parsed.seed)
        self._factory = EpisodeFactory()
        self._last_ids: np.ndarray | None = None
        self._last_lengths: np.ndarray | None = None  # steps of each sequence of the last sample
        self._last_offsets: np.ndarray | None = None  # and the lookback steps before each (rows before its start)
        self._counts = {"steps_sampled": 0}
        self._reported = {"steps_added": 0, "episodes_added": 0, "steps_sampled": 0}
        self._last_mean_n = 0.0
        self.metrics = MetricsLogger(root=False)
        self._window = parsed.metrics_num_episodes_for_smoothing

    @property
    def payload_steps_received(self) -> int:
        """Timesteps handed to add() in this process (0 with env_runners_write)."""
        return self._writer.payload_steps_received

    def __len__(self) -> int:
        held = len(self._storage)
        return held - self._writer.final_rows_held() if self._local else held

    def get_num_timesteps(self, module_id: ModuleID | None = None) -> int:
        """Stored timesteps."""
        return len(self)

    def get_added_timesteps(self, module_id: ModuleID | None = None) -> int:
        return self._writer.counts["steps_added"]

    def get_sampled_timesteps(self, module_id: ModuleID | None = None) -> int:
        return self._counts["steps_sampled"]

    def add(self, episodes: Any, weight: float | None = None) -> None:  # type: ignore[override]  # RLlib's own signature
        """Stores the chunks' timesteps; ``weight`` is their initial priority (default: the largest so far)."""
        self._writer.add(episodes, weight)

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
        min_batch_length_T: int = 0,
        **kwargs: Any,
    ) -> list[Any]:
        """n-step transitions (``batch_length_T`` None, 0 or 1) or sequences (``batch_length_T >= 2``).

        Transitions: 1-step ``SingleAgentEpisode``s ``(o_t, a_t, R, o_t+n)`` as RLlib's prioritized
        buffer returns them, each with ``"weights"`` (importance weights, max 1) and ``"n_step"`` (the
        n used: drawn per item from a ``(low, high)`` range, both ends included, and cut short at an
        episode's end) in ``extra_model_outputs``; ``terminated``/``truncated`` are set only when
        o_t+n is the episode's last observation. Starts among the newest steps of an unfinished episode,
        whose o_t+n is not stored yet, are drawn again (as RLlib's prioritized buffer does).

        Sequences: as RLlib's ``EpisodeReplayBuffer.sample(batch_length_T=T, sample_episodes=True,
        lookback=L)``, the L steps before each start in the episodes' lookback buffers (see
        ray_replay.rllib.sequences: with L > 0 a sequence's priority is that of its first lookback
        row). ``sample_episodes`` is accepted and ignored: episodes are always returned, as by RLlib's
        prioritized buffer.
        """
        if num_items is not None and batch_size_B is not None:
            raise ValueError("pass num_items or batch_size_B, not both")
        size = num_items or batch_size_B or self.batch_size_B
        length = self.batch_length_T if batch_length_T is None else batch_length_T
        beta = self._beta if beta is None else float(beta)
        if self._awaiting_rows:
            self._await_rows()
            self._writer.adopt_shared_layout()  # env runners write: the structure of their rows
        if length and length > 1:
            if n_step not in (None, 1):
                raise ValueError(f"sample(batch_length_T={length}): n_step must be 1 when sampling sequences (as in RLlib), got {n_step!r}")
            if isinstance(lookback, bool) or not isinstance(lookback, (int, np.integer)) or lookback < 0:
                raise ValueError(f"sample(): lookback must be an int >= 0, got {lookback!r}")
            return self._sample_sequences(size, int(length), int(min_batch_length_T), int(lookback), beta, to_numpy)
        return self._sample_n_step(size, self._n_step if n_step is None else n_step, beta, gamma, include_infos,
                                   include_extra_model_outputs, to_numpy)

    def _draw(self, count: int, seq_len: int, beta: float, accept: Callable[[dict[str, Any], np.ndarray], np.ndarray],
              tries: int = 1) -> dict[str, Any]:
        """``count`` sequences of ``seq_len`` rows whose item i passes ``accept(rows, items)`` (which may
        add per-sequence arrays to ``rows``), the items that fail drawn again (so accepted starts follow
        the sampler's distribution restricted to the starts that can serve). With ``tries > 1`` (items
        alike: ``accept`` ignores ``items``) each round draws ``tries`` candidates per missing item and
        the items take accepted candidates in random order: the native draws of one call are
        stratified (the k-th from the k-th slice of the priority mass), so a candidate's place in the
        batch must not decide whether it is used. Raises ValueError, having changed nothing, after
        _MAX_ROUNDS rounds."""
        items = np.arange(count)
        parts: list[tuple[np.ndarray, dict[str, Any]]] = []
        for _ in range(_MAX_ROUNDS):
            rows = self._storage.sample(len(items) * tries, beta, seq_len)
            ok = accept(rows, np.repeat(items, tries))
            if tries > 1:
                pick = self._rng.permutation(np.flatnonzero(ok))[:len(items)]
                parts.append((items[:len(pick)], {k: v[pick] for k, v in rows.items()}))
                items = items[len(pick):]
            else:
                parts.append((items[ok], {k: v[ok] for k, v in rows.items()}))
                items = items[~ok]
            if len(items) == 0:
                break
        else:
            raise ValueError(f"sample(): {len(items)} of {count} draws found no start with its future steps stored after "
                             f"{_MAX_ROUNDS} rounds (the buffer holds little besides the newest steps of unfinished episodes)")
        if len(parts) == 1:
            return restore(parts[0][1])
        order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
        return restore({k: np.concatenate([p[1][k] for p in parts])[order] for k in parts[0][1]})

    def _sample_n_step(self, size: int, n_step: int | tuple[int, int], beta: float, gamma: float, include_infos: bool,
                       include_extra_model_outputs: bool, to_numpy: bool) -> list[Any]:
        n = draw_n_steps(n_step, size, self._rng)
        writer = self._writer

        def accept(rows: dict[str, Any], items: np.ndarray) -> np.ndarray:
            steps, final, _ = writer.available_steps(rows)
            return complete(steps, final, n[items])

        rows = self._draw(size, max_n_step(n_step) + 1, beta, accept)
        if writer.layout is not None:
            rows = writer.layout.unflatten(rows)
        steps, final, held = writer.available_steps(rows)
        batch = n_step_batch(rows, n, gamma, steps, final)
        keys = rows["episode"][:, 0].tolist()
        for i in np.flatnonzero(held & (batch.n_steps == steps)).tolist():  # o_t+n is an unfinished episode's newest
            newest = writer.open_observation(int(rows["episode"][i, 0]))

            def put(leaf: np.ndarray, value: np.ndarray, row: int = i) -> None:
                leaf[row] = value

            map_structure(put, batch.next_obs, newest)
        self._last_ids, self._last_lengths, self._last_offsets = rows["ids"], None, None
        self._counts["steps_sampled"] += size
        self._last_mean_n = float(batch.n_steps.mean())
        extras: dict[str, Any] = {"weights": rows["weights"].tolist(), "n_step": batch.n_steps.tolist()}
        if include_extra_model_outputs:
            extras.update(batch.extras)
        infos = None
        if include_infos:
            ts = batch.t.tolist()
            infos = [(writer.info(k, t), writer.info(k, t + u)) for k, t, u in zip(keys, ts, batch.n_steps.tolist())]
        no_tag = (None, None, None, None)
        tags = [writer.tags.get(key, no_tag)[1:] for key in keys]
        episodes = self._factory.build(
            *writer.spaces, obs=batch.obs, next_obs=batch.next_obs, actions=batch.actions, rewards=batch.rewards,
            terminated=batch.terminated, truncated=batch.truncated, t=batch.t, extras=extras, infos=infos,
            tags=tags if any(tag != (None, None, None) for tag in tags) else None,
        )
        if to_numpy:
            for episode in episodes:
                episode.to_numpy()
        return episodes

    def _sample_sequences(self, size: int, length: int, min_length: int, lookback: int, beta: float, to_numpy: bool) -> list[Any]:
        def draw(count: int, seq_len: int, accept: Any, tries: int) -> dict[str, Any]:
            return self._draw(count, seq_len, beta, accept, tries)

        rows, lengths = draw_sequences(draw, self._writer, size, length, min_length, lookback, self._rng)
        if self._writer.layout is not None:
            rows = self._writer.layout.unflatten(rows)
        self._last_ids, self._last_lengths, self._last_offsets = rows["ids"], lengths, rows[OFFSET]
        self._counts["steps_sampled"] += size
        self._last_mean_n = 1.0
        return build_sequences(rows, lengths, self._writer, to_numpy, lookback)

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
        """Sets the priorities (|TD errors|) of the last ``sample()``: one per transition or sequence,
        or, after a sequence sample, one per step (the sequences' steps in order, lookback steps not
        included), mixed per sequence as ``eta * max + (1 - eta) * mean`` (the storage's
        ``sequence_priority_eta``). A sequence's priority is its first row's (with lookback, its first
        lookback row's: the row it was drawn by)."""
        if self._last_ids is None:
            raise RuntimeError("update_priorities() must follow a sample()")
        values = np.maximum(np.abs(np.asarray(priorities, dtype=np.float64).reshape(-1)), self._eps)
        ids, lengths = self._last_ids, self._last_lengths
        if lengths is not None and len(values) == int(lengths.sum()) and len(values) != len(ids):
            offsets = self._last_offsets if self._last_offsets is not None else np.zeros_like(lengths)
            positions = np.arange(int((offsets + lengths).max()))[None, :]  # window rows: lookback, then the steps
            mask = (positions >= offsets[:, None]) & (positions < (offsets + lengths)[:, None])
            errors = np.zeros(mask.shape)
            errors[mask] = values
            self._storage.update_priorities(ids, errors, mask)
        elif len(values) != len(ids):
            expected = f"{len(ids)}" if lengths is None else f"{len(ids)} (one per sequence) or {int(lengths.sum())} (one per step)"
            raise ValueError(f"got {len(values)} priorities for a sample of {expected}")
        else:
            self._storage.update_priorities(ids, values)
        self._last_ids = self._last_lengths = self._last_offsets = None

    def get_metrics(self) -> ResultDict[str, Any]:
        """Adds, samples and storage size since the last report, plus the native buffer's counters.

        RLlib calls this after every sample and aggregates the replies per training iteration, so
        every call reports (a throttled call would leave fast iterations without values); the
        lifetime counts are deltas since the previous report.
        """
        counts = {**self._writer.counts, **self._counts}
        reported = self._reported
        log = self.metrics.log_value
        # Gauges are logged as "item" (the latest value): a windowed mean would cost a numpy reduction
        # per gauge per call, and RLlib calls this after every sample.
        log(NUM_ENV_STEPS_STORED, len(self), reduce="item")
        log(NUM_ENV_STEPS_ADDED_LIFETIME, counts["steps_added"] - reported["steps_added"], reduce="lifetime_sum")
        log(NUM_ENV_STEPS_SAMPLED_LIFETIME, counts["steps_sampled"] - reported["steps_sampled"], reduce="lifetime_sum")
        log(NUM_EPISODES_ADDED_LIFETIME, counts["episodes_added"] - reported["episodes_added"], reduce="lifetime_sum")
        log(ACTUAL_N_STEP, self._last_mean_n, reduce="mean", window=self._window)
        stats = self._storage.stats()
        for name in _NATIVE_STATS:
            if name in stats:  # a sharded backend reports counters, not latencies
                log(("ray_replay", name), stats[name], reduce="item")
        log(("ray_replay", "open_episodes"), len(self._writer.open), reduce="item")
        log(("ray_replay", "payload_steps_received"), self.payload_steps_received, reduce="item")
        self._reported = counts
        return self.metrics.reduce()

    def get_state(self) -> dict[str, Any]:
        """A picklable snapshot: stored rows, unfinished episodes' last observations, counters, random state."""
        return {"version": _STATE_VERSION, "capacity": self.capacity, "storage": self._storage.get_state(),
                "writer": self._writer.get_state(), "counts": dict(self._counts), "rng": self._rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_state`'s snapshot (raises ValueError, changing nothing, for a state of an
        earlier version: rows of n_step future steps each, or int64 ``t`` and Discrete actions)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"state of version {state.get('version', 1)}: this buffer restores version {_STATE_VERSION} "
                             "(compact rows of one timestep each); refill it instead")
        self._storage.set_state(state["storage"])
        self.capacity = state["capacity"]
        self._writer = RowWriter(self._storage, self.capacity)
        self._writer.set_state(state["writer"])
        self._counts = dict(state["counts"])
        self._reported = {**self._writer.counts, **self._counts}
        self._rng.bit_generator.state = state["rng"]
        self._last_ids = self._last_lengths = self._last_offsets = None
