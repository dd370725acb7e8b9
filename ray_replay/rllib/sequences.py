"""``sample(batch_length_T=T)``: sequences as RLlib's ``EpisodeReplayBuffer`` returns them (stateful RLModules).

RLlib's ``EpisodeReplayBuffer.sample(batch_length_T=T, n_step=1, sample_episodes=True)`` draws a
timestep ``ts`` of a stored episode and returns ``episode.slice(ts, min(ts + T, len(episode)))``: a
``SingleAgentEpisode`` of up to T steps (T + 1 observations, the last the observation after its last
step), the episode's own id and ``t_started``, terminated / truncated only when the slice reaches the
episode's end, and ``extra_model_outputs`` with every stored extra plus ``n_step`` (ones) and
``weights``. It keeps drawing until the slices' steps, plus one per slice, reach ``batch_size_B``
(RLlib's count), and skips starts with ``min_batch_length_T`` or fewer steps left.

Here a start is drawn by the native sampler (by priority: ``weights`` are the start's importance
weight on every step, where RLlib's uniform buffer has ones) and its rows are the native sequence of
``max(T, min_batch_length_T) + 2`` rows of its stream; a sequence that reaches the newest step of an
unfinished episode ends with the observation still held in this process, as RLlib's does. Not yet:
``lookback > 0`` (rows before the start).
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

__all__ = ["build_sequences", "draw_sequences"]

Draw = Callable[[int, int, Callable[[dict[str, Any], np.ndarray], np.ndarray]], dict[str, Any]]


def draw_sequences(draw: Draw, writer: RowWriter, size: int, length: int, min_length: int) -> tuple[dict[str, Any], np.ndarray]:
    """Sequences (flat rows) and their step counts until the steps plus one per sequence reach ``size``."""
    seq_len = max(length, min_length) + 2  # one row more than needed tells "more steps left" from "the end"

    def accept(rows: dict[str, Any], items: np.ndarray) -> np.ndarray:
        steps, _, _ = writer.available_steps(rows)
        return (steps >= 1) & (steps > min_length)

    parts: list[dict[str, Any]] = []
    lengths: list[np.ndarray] = []
    filled = 0
    while filled < size:
        rows = draw(-(-(size - filled) // (length + 1)), seq_len, accept)
        taken = np.minimum(writer.available_steps(rows)[0], length)
        totals = filled + np.cumsum(taken + 1)
        keep = int(np.searchsorted(totals, size) + 1)  # sequences up to the first that reaches size
        parts.append({k: v[:keep] for k, v in rows.items()})
        lengths.append(taken[:keep])
        filled = int(totals[min(keep, len(totals)) - 1])
    merged = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return merged, np.concatenate(lengths)


def build_sequences(rows: dict[str, Any], lengths: np.ndarray, writer: RowWriter, to_numpy: bool) -> list[SingleAgentEpisode]:
    """RLlib's sliced episodes from sampled rows (nested again) and their lengths."""
    steps, _, held = writer.available_steps(rows)
    span = np.arange(len(lengths))
    end = rows["end"][span, np.minimum(steps, rows["end"].shape[1] - 1)]
    observation_space, action_space = writer.spaces
    episodes = []
    for i, n in enumerate(lengths.tolist()):
        key, t0 = int(rows["episode"][i, 0]), int(rows["t"][i, 0])

        def cut(leaf: np.ndarray, row: int = i, stop: int = n) -> np.ndarray:
            return leaf[row, :stop]

        def cut_obs(leaf: np.ndarray, row: int = i, stop: int = n + 1) -> np.ndarray:
            return leaf[row, :stop]

        observations = unbatch(map_structure(cut_obs, rows["obs"]), n + 1)
        if held[i] and n == steps[i]:  # the next observation is the unfinished episode's, held here
            observations[n] = writer.open_observation(key)
        at_end = n == steps[i] and not held[i]
        tag = writer.tags.get(key, (None, None, None, None))
        episode = SingleAgentEpisode(
            id_=tag[0],
            agent_id=tag[1],
            module_id=tag[2],
            multi_agent_episode_id=tag[3],
            observations=observations,
            observation_space=observation_space,
            infos=[writer.info(key, t) for t in range(t0, t0 + n + 1)],
            actions=unbatch(map_structure(cut, rows["actions"]), n),
            action_space=action_space,
            rewards=rows["rewards"][i, :n].tolist(),
            extra_model_outputs={name[len(EXTRA_PREFIX) :]: unbatch(map_structure(cut, v), n)
                                 for name, v in rows.items() if name.startswith(EXTRA_PREFIX)},
            terminated=bool(at_end and end[i] == END_TERMINATED),
            truncated=bool(at_end and end[i] == END_TRUNCATED),
            t_started=t0,
            len_lookback_buffer=0,
        )
        episode.extra_model_outputs["n_step"] = InfiniteLookbackBuffer(np.full((n,), 1), lookback=0)
        episode.extra_model_outputs["weights"] = InfiniteLookbackBuffer(np.full((n,), float(rows["weights"][i])), lookback=0)
        if to_numpy:
            episode.to_numpy()
        episodes.append(episode)
    return episodes
