"""Episode chunks -> timestep rows in the storage, one row per env step, each in its episode's stream.

``RowWriter`` keeps what the rows need beyond themselves: each unfinished episode's last observation
(the first of its next chunk, stored with that chunk), the episodes' ids and multi-agent tags, the
non-empty infos, the rows' nested layout and which held rows are episodes' final observations. When
an episode ends, one row more holds its final observation (``end`` = terminated / truncated, zero
action and reward, priority 0: never drawn as a start, only reached by a sequence). Memory per
timestep is one observation, action, reward (float64) and extras, plus 13 bytes (``end`` int8,
``episode`` int64: a writer-unique key, ``t`` int32), whatever n-step or sequence length is sampled
later. Discrete actions are stored in the smallest integer dtype that holds the space's values (1
byte for Discrete(2)) and given back as RLlib handed them over (ray_replay.rllib.compact).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from typing import Any

import numpy as np
from ray.rllib.utils import force_list

from ray_replay.nested import Layout, infer_layout, map_structure, stack_structures
from ray_replay.rllib.compact import T_DTYPE, ActionColumns, check_steps
from ray_replay.rllib.nstep import END_NONE, END_TERMINATED, END_TRUNCATED, EXTRA_PREFIX, Segment
from ray_replay.rllib.storage import Storage

__all__ = ["LAYOUT_KEY", "MAX_OPEN_EPISODES", "RowWriter"]

# Unfinished episodes whose next chunk never comes (e.g. an EnvRunner was restarted) would otherwise
# keep their last observation forever; past this many open episodes the least recently extended goes
# (its stored rows stay sampleable wherever their n-step future is stored).
MAX_OPEN_EPISODES = 10_000
LAYOUT_KEY = "ray_replay.rllib.layout"  # the rows' nested layout, shared by a replay's writers (Storage.share)

Tag = tuple[Any, Any, Any, Any]  # (episode id, agent_id, module_id, multi_agent_episode_id)


class RowWriter:
    """Adds episode chunks to a storage as rows (see the module docstring). ``rows_added`` numbers the
    rows (a local storage's ids are exactly these numbers); ``counts`` are RLlib's added counters."""

    def __init__(self, storage: Storage, capacity: int) -> None:
        self.storage = storage
        self.capacity = capacity
        self.open: OrderedDict[str, Segment] = OrderedDict()  # episode id -> its unstored last observation
        # Episode keys are the rows' stream ids: writers sharing a sharded replay (env runners writing
        # directly) must not share them, so each writer numbers from its own random 2^32-aligned base.
        self.next_key = secrets.randbits(30) << 32
        self.rows_added = 0
        self.infos: dict[tuple[int, int], Any] = {}  # (episode key, t) -> non-empty info; evicted with its row
        self._info_rows: deque[tuple[int, tuple[int, int]]] = deque()
        self.finals: deque[int] = deque()  # row numbers of the final-observation rows (for len())
        self.tags: OrderedDict[int, Tag] = OrderedDict()  # episode key -> its ids (bounded: see _tag)
        self.starts: OrderedDict[int, int] = OrderedDict()  # episode key -> t of its first stored row (as tags)
        self.spaces: tuple[Any, Any] = (None, None)
        self.extra_schema: dict[str, Any] | None = None  # extra name -> its first rows cut to 0 (shapes, dtypes)
        self.template: dict[str, Any] | None = None  # every column cut to 0 rows: the zeros of final rows
        self.layout: Layout | None = None  # nested rows (Dict/Tuple spaces) <-> flat storage columns
        self.layout_known = False  # fixed by the first rows stored
        self.actions: ActionColumns | None = None  # the narrowed (Discrete) action columns, fixed by the first actions
        self.counts = {"steps_added": 0, "episodes_added": 0}
        self.payload_steps_received = 0

    def add(self, episodes: Any, weight: float | None) -> None:
        """Stores every step of the chunks (and the final observation of those that end an episode)."""
        steps: list[tuple[dict[str, Any], list[Any] | None]] = []
        finals: list[tuple[dict[str, Any], list[Any] | None]] = []
        episodes = force_list(episodes)
        for episode in episodes:
            check_steps(episode)
        # Narrowed before anything changes: a bad action (or step index) fails the call, storing nothing.
        actions = [self._actions_of(episode) for episode in episodes]
        for episode, chunk_actions in zip(episodes, actions):
            num = len(episode)
            self.counts["steps_added"] += num
            self.payload_steps_received += num
            end = END_TERMINATED if episode.is_terminated else END_TRUNCATED if episode.is_truncated else END_NONE
            segment = self._segment_of(episode, chunk_actions)
            if segment is None:
                continue
            rows, infos = segment.take_steps()
            if rows:
                steps.append((self._conform(rows), infos))
            if end == END_NONE:
                self.open[episode.id_] = segment
                if len(self.open) > MAX_OPEN_EPISODES:
                    self.open.popitem(last=False)
            elif self.template is not None:
                finals.append((self._final_row(segment, end), segment.infos))
        # Steps first, then the final rows (priority 0): a stream's final row still follows its steps.
        self._store(steps, None if weight is None else float(weight))
        self._store(finals, 0.0)

    def _store(self, pieces: list[tuple[dict[str, Any], list[Any] | None]], priority: float | None) -> None:
        if not pieces:
            return
        columns = pieces[0][0] if len(pieces) == 1 else {k: map_structure(_concatenate, *[p[0][k] for p in pieces]) for k in pieces[0][0]}
        count = len(columns["t"])
        if not self.layout_known:
            layout = infer_layout(list(columns), list(columns.values()), batched=True, every_tuple=True)
            mine = None if layout is None else layout.to_json()
            # Every writer of a replay must lay rows out alike, and a reader that writes nothing (the
            # learner's buffer with env_runners_write) learns the layout from the first writer.
            kept = self.storage.share(LAYOUT_KEY, {"layout": mine})["layout"]
            if kept != mine:
                raise ValueError(f"these rows' nested layout {mine} differs from {kept}, which another writer of this replay stored first "
                                 "(observation, action and extra model output spaces must be the same for every writer)")
            self.layout, self.layout_known = layout, True
        streams = columns["episode"]
        flat = columns if self.layout is None else self.layout.flatten(columns)
        if self.actions is not None:
            flat = self.actions.stored_names(flat)
        self.storage.add_batch(flat, None if priority is None else np.full(count, priority), streams)
        first = self.rows_added
        self.rows_added += count
        if priority == 0.0:
            self.finals.extend(range(first, self.rows_added))
        row = first
        for rows, infos in pieces:
            if infos is not None:
                key = int(rows["episode"][0])
                for t, info in zip(rows["t"].tolist(), infos):
                    if info:
                        self.infos[(key, t)] = info
                        self._info_rows.append((row, (key, t)))
            row += len(rows["t"])
        self._forget_evicted()

    def _forget_evicted(self) -> None:
        """Rows older than ``capacity`` rows have been overwritten (exact for a local storage)."""
        oldest = self.rows_added - self.capacity
        while self._info_rows and self._info_rows[0][0] < oldest:
            self.infos.pop(self._info_rows.popleft()[1], None)
        while self.finals and self.finals[0] < oldest:
            self.finals.popleft()

    def _final_row(self, segment: Segment, end: int) -> dict[str, Any]:
        """The row of an episode's final observation: zeros but for ``obs``, ``end``, ``episode``, ``t``."""
        assert self.template is not None
        row = {k: map_structure(lambda leaf: np.zeros((1, *leaf.shape[1:]), leaf.dtype), v) for k, v in self.template.items()}
        row["obs"] = map_structure(lambda leaf: leaf[:1], segment.obs)
        row["end"] = np.array([end], dtype=np.int8)
        row["episode"] = np.array([segment.key], dtype=np.int64)
        row["t"] = np.array([segment.base], dtype=T_DTYPE)
        return row

    def adopt_shared_layout(self) -> None:
        """A reader that has stored nothing takes the layout the replay's first writer shared (if any)."""
        if not self.layout_known:
            kept = self.storage.shared(LAYOUT_KEY)
            if kept is not None:
                self.layout = None if kept["layout"] is None else Layout.from_json(kept["layout"])
                self.layout_known = True

    def _conform(self, rows: dict[str, Any]) -> dict[str, Any]:
        """Fixes the stored extra model outputs to those of the first rows: later missing ones are
        zero-filled, new ones dropped (the native schema is fixed once written)."""
        if self.extra_schema is None:
            self.extra_schema = {k: map_structure(_empty_like, v) for k, v in rows.items() if k.startswith(EXTRA_PREFIX)}
            self.template = {k: map_structure(_empty_like, v) for k, v in rows.items()}
        extras = {k for k in rows if k.startswith(EXTRA_PREFIX)}
        if extras == self.extra_schema.keys():
            return rows
        count = len(rows["t"])
        conformed = {k: v for k, v in rows.items() if not k.startswith(EXTRA_PREFIX) or k in self.extra_schema}
        for name, empty in self.extra_schema.items():
            if name not in conformed:
                conformed[name] = map_structure(lambda leaf: np.zeros((count, *leaf.shape[1:]), dtype=leaf.dtype), empty)
        return conformed

    def _actions_of(self, episode: Any) -> Any:
        """The chunk's actions, batched, Discrete columns narrowed (None for an empty chunk)."""
        num = len(episode)
        if num == 0:
            return None
        if self.spaces[0] is None:
            self.spaces = (episode.observation_space, episode.action_space)
        if self.actions is None:
            self.actions = ActionColumns(self.spaces[1])
        return self.actions.narrowed(_as_batch(episode.get_actions(slice(0, num))))

    def _segment_of(self, episode: Any, actions: Any) -> Segment | None:
        """The episode's unstored steps: its last observation so far (if contiguous) and this chunk."""
        num = len(episode)
        previous = self.open.pop(episode.id_, None)
        if num == 0:
            return previous
        raw_infos = episode.get_infos(slice(0, num + 1))
        chunk = Segment(
            key=-1,
            base=int(episode.t_started),
            obs=_as_batch(episode.get_observations(slice(0, num + 1))),
            actions=actions,
            rewards=np.asarray(episode.get_rewards(slice(0, num)), dtype=np.float64),
            extras={k: _as_batch(episode.get_extra_model_outputs(k, slice(0, num))) for k in episode.extra_model_outputs},
            infos=list(raw_infos) if any(raw_infos) else None,
        )
        if previous is not None and previous.base + len(previous) == chunk.base:
            previous.extend(chunk)
            return previous
        chunk.key = self.next_key
        self.next_key += 1
        self._tag(chunk.key, (episode.id_, episode.agent_id, episode.module_id, episode.multi_agent_episode_id), chunk.base)
        self.counts["episodes_added"] += 1
        return chunk

    def _tag(self, key: int, tag: Tag, first_t: int) -> None:
        # Each stored episode holds at least one row, so at most capacity + open episodes have rows.
        self.tags[key] = tag
        self.starts[key] = first_t
        while len(self.tags) > self.capacity + MAX_OPEN_EPISODES:
            self.tags.popitem(last=False)
            self.starts.popitem(last=False)

    def first_rows(self, keys: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Whether each row (episode key, t) is the first its episode stored: t is the episode's first
        ``t_started`` this writer saw, or 0 for an episode it did not write (env runners' direct writes,
        whose episodes it stores from their reset on)."""
        starts = self.starts
        return np.array([t == starts.get(key, 0) for key, t in zip(keys.tolist(), ts.tolist())], dtype=bool)

    def available_steps(self, rows: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of sampled sequences (flat or nested rows with ``mask``, ``end``, ``episode``, ``t``): the steps
        available from each start (at most seq_len - 1), whether its last row is an episode's final
        observation, and whether the observation after its last step is an unfinished episode's newest,
        held here (then ``open_observation`` gives it). O(B) plus a dict lookup per sequence that
        reaches the newest row of its stream."""
        mask, end = rows["mask"], rows["end"]
        valid = mask.sum(axis=1).astype(np.int64)
        span = np.arange(len(valid))
        last = np.maximum(valid - 1, 0)
        final = end[span, last] != END_NONE
        held = np.zeros(len(valid), dtype=bool)
        for i in np.flatnonzero(~final & (valid < mask.shape[1]) & (valid > 0)).tolist():
            segment = self._open_segment(int(rows["episode"][i, last[i]]))
            held[i] = segment is not None and segment.base == int(rows["t"][i, last[i]]) + 1
        return np.where(held, valid, last), final, held

    def _open_segment(self, key: int) -> Segment | None:
        tag = self.tags.get(key)
        return None if tag is None else self.open.get(tag[0])

    def open_observation(self, key: int) -> Any:
        """The newest observation of the unfinished episode ``key`` (see available_steps)."""
        segment = self._open_segment(key)
        assert segment is not None
        return map_structure(lambda leaf: leaf[0], segment.obs)

    def info(self, key: int, t: int) -> Any:
        """The info of episode ``key`` at step ``t`` ({} when it was empty or its row is gone)."""
        value = self.infos.get((key, t))
        if value is None:
            segment = self._open_segment(key)
            if segment is not None and segment.base == t and segment.infos:
                return segment.infos[0]
            return {}
        return value

    def final_rows_held(self) -> int:
        """Final-observation rows among the rows held (exact for a local storage)."""
        self._forget_evicted()
        return len(self.finals)

    _STATE = ("next_key", "rows_added", "spaces", "extra_schema", "template", "layout_known", "counts", "payload_steps_received")

    def get_state(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self._STATE}
        state.update(
            open=[(episode_id, vars(segment)) for episode_id, segment in self.open.items()],
            infos=list(self._info_rows), info_values=[self.infos.get(k) for _, k in self._info_rows],
            finals=list(self.finals), tags=list(self.tags.items()), starts=list(self.starts.items()),
            layout=None if self.layout is None else self.layout.to_json(),
            actions=None if self.actions is None else self.actions.get_state(),
        )
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])
        self.open = OrderedDict((episode_id, Segment(**fields)) for episode_id, fields in state["open"])
        self._info_rows = deque((row, tuple(key)) for row, key in state["infos"])
        self.infos = {key: value for (_, key), value in zip(self._info_rows, state["info_values"])}
        self.finals = deque(state["finals"])
        self.tags = OrderedDict(state["tags"])
        self.starts = OrderedDict(state["starts"])
        self.layout = None if state["layout"] is None else Layout.from_json(state["layout"])
        self.actions = None if state["actions"] is None else ActionColumns.from_state(state["actions"])
        self.counts = dict(self.counts)


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
