"""Compact row columns, lossless: Discrete actions in the smallest integer dtype, step indices as int32.

A row's ``t`` (the episode timestep of its observation) is stored as int32: an episode whose steps
would pass 2^31 - 1 is refused with a ValueError naming it (:func:`check_steps`), never wrapped.

An action of a ``gymnasium.spaces.Discrete(n, start)`` space (or a Discrete leaf of a Dict / Tuple
action space) is stored in the smallest integer dtype holding ``start .. start + n - 1`` (uint8 for
CartPole's Discrete(2): 1 byte where RLlib hands over int64's 8). Values are checked, not wrapped:
one that the narrow dtype cannot hold exactly raises a ValueError naming the column. Each narrowed
column is stored under its name plus ``@as_<dtype>``, the dtype RLlib handed over (int64 for
Discrete), so whoever samples the rows (the Algorithm's buffer, also when env runners wrote them, see
ray_replay.rllib.direct) gives them back in that dtype (:func:`restore`) without knowing the spaces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from ray_replay.nested import Path, column_name

__all__ = ["MARK", "T_DTYPE", "ActionColumns", "check_steps", "restore", "smallest_dtype"]

T_DTYPE = np.int32
_T_MAX = int(np.iinfo(T_DTYPE).max)
MARK = "@as_"  # stored column name = column name + MARK + the dtype the column is given back in
# Candidates for a Discrete column, smallest first (uint64 is not smaller than RLlib's own int64).
_CANDIDATES = tuple(np.dtype(name) for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64"))


def smallest_dtype(low: int, high: int) -> np.dtype[Any]:
    """The smallest integer dtype holding every value of ``low .. high``."""
    for dtype in _CANDIDATES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    raise ValueError(f"Discrete values {low} .. {high} do not fit int64")


def check_steps(episode: Any) -> None:
    """Raises ValueError (naming the episode) when a step index of the chunk (its final observation's
    included) would not fit the int32 ``t`` column."""
    first, last = int(episode.t_started), int(episode.t_started) + len(episode)
    if first < 0 or last > _T_MAX:
        raise ValueError(f"episode {episode.id_!r}: step indices {first} .. {last} do not fit the replay's int32 't' column "
                         f"(0 .. {_T_MAX})")


class ActionColumns:
    """Which action columns are narrowed: ``column name -> (stored dtype, dtype given back)``, fixed by
    the action space and the first actions seen (the native schema is fixed by the first rows)."""

    def __init__(self, action_space: Any) -> None:
        self.narrow: dict[str, np.dtype[Any]] = {}
        self.spaces: dict[str, str] = {}  # column name -> the Discrete space, for messages
        self.wide: dict[str, str] = {}  # column name -> dtype name of the actions handed over (first seen)

        def walk(space: Any, path: Path) -> None:
            if isinstance(space, gym.spaces.Discrete):
                start, n = int(space.start), int(space.n)
                self.narrow[column_name(path)] = smallest_dtype(start, start + n - 1)
                self.spaces[column_name(path)] = f"Discrete({n}, start={start})"
            elif isinstance(space, gym.spaces.Dict):
                for key, sub in space.spaces.items():
                    walk(sub, (*path, key))
            elif isinstance(space, gym.spaces.Tuple):
                for i, sub in enumerate(space.spaces):
                    walk(sub, (*path, i))

        walk(action_space, ("actions",))

    def narrowed(self, actions: Any) -> Any:
        """The chunk's actions (batched: an array, or a dict / tuple structure of arrays) with every
        Discrete column in its narrow dtype. Raises ValueError naming the column for a value that the
        narrow dtype does not hold exactly (nothing is stored then)."""
        if not self.narrow:
            return actions

        def narrow(name: str, values: Any) -> Any:
            dtype = self.narrow.get(name)
            if dtype is None:
                return values
            values = np.asarray(values)
            self.wide.setdefault(name, values.dtype.name)
            stored = values.astype(dtype)
            if not np.array_equal(stored, values):
                bad = values[stored != values].reshape(-1)[0].item()
                raise ValueError(f"field '{name}': action {bad!r} is not a value of {self.spaces[name]} "
                                 f"(stored as {dtype.name}, which cannot hold it exactly)")
            return stored

        return _map_with_names(narrow, actions, ("actions",))

    def stored_names(self, columns: dict[str, Any]) -> dict[str, Any]:
        """Flat columns as stored: each narrowed column renamed ``name@as_<dtype given back>``."""
        if not self.wide:
            return columns
        return {f"{name}{MARK}{self.wide[name]}" if name in self.wide else name: value for name, value in columns.items()}

    def get_state(self) -> dict[str, Any]:
        return {"narrow": {k: v.name for k, v in self.narrow.items()}, "spaces": dict(self.spaces), "wide": dict(self.wide)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ActionColumns:
        columns = cls(None)
        columns.narrow = {k: np.dtype(v) for k, v in state["narrow"].items()}
        columns.spaces, columns.wide = dict(state["spaces"]), dict(state["wide"])
        return columns


def restore(rows: dict[str, Any]) -> dict[str, Any]:
    """Sampled flat rows with every narrowed column (``name@as_<dtype>``) back under its name, in its dtype."""
    marked = [name for name in rows if MARK in name]
    for name in marked:
        plain, dtype = name.rsplit(MARK, 1)
        rows[plain] = rows.pop(name).astype(dtype)
    return rows


def _map_with_names(fn: Callable[[str, Any], Any], value: Any, path: Path) -> Any:
    if isinstance(value, Mapping):
        return {key: _map_with_names(fn, sub, (*path, key)) for key, sub in value.items()}
    if isinstance(value, tuple):
        return tuple(_map_with_names(fn, sub, (*path, i)) for i, sub in enumerate(value))
    return fn(column_name(path), value)
