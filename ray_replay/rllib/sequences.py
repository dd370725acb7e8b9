"""``sample(batch_length_T=T, lookback=L)``: sequences as RLlib's ``EpisodeReplayBuffer`` returns them (stateful RLModules).

RLlib's ``EpisodeReplayBuffer.sample(batch_length_T=T, n_step=1, sample_episodes=True, lookback=L)``
draws a timestep ``ts`` of a stored episode uniformly and returns ``episode.slice(ts, min(ts + T,
len(episode)), len_lookback_buffer=L)``: a ``SingleAgentEpisode`` of up to T steps (T + 1
observations, the last the observation after its last step) whose lookback buffers hold the
``min(L, ts)`` steps before ``ts`` (fewer at the episode's start, no padding: observations, infos,
actions, rewards and every extra model output), the episode's own id and ``t_started = ts``,
terminated / truncated only when the slice reaches the episode's end, and ``extra_model_outputs``
with every stored extra plus ``n_step`` (ones) and ``weights``, these two of ``len + L`` values with
a lookback of L (RLlib's own shape, even where the other buffers have fewer). It keeps drawing until
the slices' steps, plus one per slice, reach ``batch_size_B`` (RLlib's count), and skips starts with
``min_batch_length_T`` or fewer steps left.

Here a sequence is a native sequence of its stream's rows drawn by priority, ``L + max(T,
min_batch_length_T) + 2`` rows from its first row: with ``L = 0`` the start itself. With lookback the
drawn row is the sequence's first lookback row: a row that is not its episode's first stored row
begins the sequence that starts L rows later (lookback L); an episode's first stored row begins the
sequences of each of its first L + 1 steps (lookback 0 .. L). So that every start is as likely as
its first row's draw, a draw picks an offset j in 0 .. L uniformly and is kept only if it begins
that sequence (j = L, or any j for an episode's first row), and is drawn again otherwise: about L + 1
draws per sequence, exact (uniform starts with alpha 0, as RLlib's; prioritized: the priority of a
sequence is its first row's, which ``ids`` and ``weights`` are, and ``update_priorities`` sets).
Lookback never crosses into another episode (a stream is one episode) nor into evicted rows: after
the oldest rows of an episode are evicted, its steps with fewer than L stored steps before them
start no sequence. A sequence that reaches the newest step of an unfinished episode ends with the
observation still held in this process, as RLlib's does. (RLlib's stored episode may also hold the
lookback buffer of the first chunk it received, if that chunk came with one: here only the steps
added are stored.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer

from ray_replay.nested import map_structure, unbatch
from ray_replay.rllib.nstep import END_TERMINATED, END_TRUNCATED, EXTRA_PREFIX
from ray_replay.rllib.rows import RowWriter

__all__ = ["OFFSET", "build_sequences", "draw_sequences"]

Draw = Callable[[int, int, Callable[[dict[str, Any], np.ndarray], np.ndarray], int], dict[str, Any]]
OFFSET = "lookback_steps"  # per sequence: the lookback steps before its start (rows before it in its window)


def draw_sequences(draw: Draw, writer: RowWriter, size: int, length: int, min_length: int, lookback: int,
                   rng: np.random.Generator) -> tuple[dict[str, Any], np.ndarray]:
    """Sequences (flat rows, with ``OFFSET``) and their step counts until the steps plus one per
    sequence reach ``size``. ``draw(count, seq_len, accept, tries)`` (see NativeEpisodeReplayBuffer._draw)."""
    seq_len = lookback + max(length, min_length) + 2  # one row more than needed tells "more steps left" from "the end"
    need = max(1, min_length + 1)  # steps a start must have left

    def accept(rows: dict[str, Any], items: np.ndarray) -> np.ndarray:
        steps, _, _ = writer.available_steps(rows)
        if lookback == 0:
            offsets = np.zeros(len(steps), dtype=np.int64)
            ok = steps >= need
        else:  # see the module docstring: a draw begins the sequence at offset j if it is its first row
            offsets = rng.integers(0, lookback + 1, size=len(steps))
            first = writer.first_rows(rows["episode"][:, 0], rows["t"][:, 0])
            ok = (steps - offsets >= need) & (first | (offsets == lookback))
        rows[OFFSET] = offsets
        return ok

    parts: list[dict[str, Any]] = []
    lengths: list[np.ndarray] = []
    filled = 0
    while filled < size:
        rows = draw(-(-(size - filled) // (length + 1)), seq_len, accept, lookback + 1)
        taken = np.minimum(writer.available_steps(rows)[0] - rows[OFFSET], length)
        totals = filled + np.cumsum(taken + 1)
        keep = int(np.searchsorted(totals, size) + 1)  # sequences up to the first that reaches size
        parts.append({k: v[:keep] for k, v in rows.items()})
        lengths.append(taken[:keep])
        filled = int(totals[min(keep, len(totals)) - 1])
    merged = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return merged, np.concatenate(lengths)


def build_sequences(rows: dict[str, Any], lengths: np.ndarray, writer: RowWriter, to_numpy: bool, lookback: int) -> list[SingleAgentEpisode]:
    """RLlib's sliced episodes from sampled rows (nested again, with ``OFFSET``), their lengths and the
    requested lookback (the length of the ``n_step`` and ``weights`` lookback, as RLlib's)."""
    steps, _, held = writer.available_steps(rows)  # from each window's first row
    span = np.arange(len(lengths))
    end = rows["end"][span, np.minimum(steps, rows["end"].shape[1] - 1)]
    offsets = rows[OFFSET].tolist()
    observation_space, action_space = writer.spaces
    episodes = []
    for i, n in enumerate(lengths.tolist()):
        j = offsets[i]  # lookback steps: the window's rows before the start
        left = int(steps[i]) - j  # steps from the start
        key, t0 = int(rows["episode"][i, j]), int(rows["t"][i, j])

        def cut(leaf: np.ndarray, row: int = i, stop: int = j + n) -> np.ndarray:
            return leaf[row, :stop]

        def cut_obs(leaf: np.ndarray, row: int = i, stop: int = j + n + 1) -> np.ndarray:
            return leaf[row, :stop]

        observations = unbatch(map_structure(cut_obs, rows["obs"]), j + n + 1)
        if held[i] and n == left:  # the next observation is the unfinished episode's, held here
            observations[j + n] = writer.open_observation(key)
        at_end = n == left and not held[i]
        tag = writer.tags.get(key, (None, None, None, None))
        episode = SingleAgentEpisode(
            id_=tag[0],
            agent_id=tag[1],
            module_id=tag[2],
            multi_agent_episode_id=tag[3],
            observations=observations,
            observation_space=observation_space,
            infos=[writer.info(key, t) for t in range(t0 - j, t0 + n + 1)],
            actions=unbatch(map_structure(cut, rows["actions"]), j + n),
            action_space=action_space,
            rewards=rows["rewards"][i, :j + n].tolist(),
            extra_model_outputs={name[len(EXTRA_PREFIX) :]: unbatch(map_structure(cut, v), j + n)
                                 for name, v in rows.items() if name.startswith(EXTRA_PREFIX)},
            terminated=bool(at_end and end[i] == END_TERMINATED),
            truncated=bool(at_end and end[i] == END_TRUNCATED),
            t_started=t0,
            len_lookback_buffer=j,
        )
        episode.extra_model_outputs["n_step"] = InfiniteLookbackBuffer(np.full((n + lookback,), 1), lookback=lookback)
        weight = float(rows["weights"][i])
        episode.extra_model_outputs["weights"] = InfiniteLookbackBuffer(np.full((n + lookback,), weight), lookback=lookback)
        if to_numpy:
            episode.to_numpy()
        episodes.append(episode)
    return episodes
