"""Nested fields for ``ReplayBuffer``: dicts and tuples of arrays stored as flat native columns.

A buffer whose schema nests (given, or inferred from nested values at the first add) becomes an
instance of a subclass that flattens ``add``/``add_batch`` values through its :class:`Layout` and
rebuilds the structure in ``sample``; a flat buffer keeps the native methods with no Python frame in
between. A buffer made without schema starts in a subclass whose first ``add``/``add_batch`` looks
at the values once and then settles into the nested or the plain class (the class of an instance is
swapped; the layouts are identical, so this is safe, and ``isinstance(buf, ReplayBuffer)`` holds
throughout). A call that raises changes nothing, nesting included: the class settles only after the
first rows are stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray_replay.nested import Layout, infer_layout

__all__ = ["attach", "infer_on_first_add", "public_type"]

_TRANSITION = ("state", "action", "reward", "next_state", "done")  # the native layer's positional names
_CLASSES: dict[tuple[type, type], type] = {}


def public_type(buffer: Any) -> type:
    """The user-visible class of ``buffer`` (its nesting subclass removed), for pickling."""
    return getattr(type(buffer), "_public_type", type(buffer))


def attach(buffer: Any, layout: Layout) -> None:
    """Makes ``buffer`` (whose native schema is ``layout``'s columns, or still unknown) a nested buffer."""
    buffer._layout = layout
    buffer.__class__ = _subclass(NestedFields, public_type(buffer))


def infer_on_first_add(buffer: Any) -> None:
    """Makes ``buffer`` (no schema yet) check its first values for nesting."""
    buffer.__class__ = _subclass(InferNesting, public_type(buffer))


def _subclass(mixin: type, base: type) -> type:
    key = (mixin, base)
    if key not in _CLASSES:
        _CLASSES[key] = type(base.__name__, (mixin, base), {"_public_type": base, "__module__": base.__module__,
                                                              "__qualname__": base.__qualname__})
    return _CLASSES[key]


def _settle(buffer: Any, layout: Layout | None) -> None:
    if layout is None:
        buffer.__class__ = public_type(buffer)
    else:
        attach(buffer, layout)


class NestedFields:
    """Mixed in before the buffer class: nested values in, nested samples out."""

    _layout: Layout

    def add(self, *fields: Any, priority: float | None = None, stream: int | None = 0, **named: Any) -> None:
        super().add(priority=priority, stream=stream, **self._layout.flatten_call(fields, named))  # type: ignore[misc]

    def add_batch(self, *columns: Any, priorities: Any = None, streams: Any = None, **named: Any) -> None:
        super().add_batch(priorities=priorities, streams=streams, **self._layout.flatten_call(columns, named))  # type: ignore[misc]

    def sample(self, batch_size: int, *, beta: float | None = None, out: Mapping[str, Any] | None = None, partial: bool = False,
               masses: bool = False) -> dict[str, Any]:
        """As ReplayBuffer.sample, with the fields in their nested structure (``out`` may be nested too)."""
        flat_out = None if out is None else self._layout.flatten_some(out)
        rows = super().sample(batch_size, beta=beta, out=flat_out, partial=partial, masses=masses)  # type: ignore[misc]
        return self._layout.unflatten(rows)

    @property
    def nested_schema(self) -> dict[str, Any]:
        """The schema in its nested form (``schema`` is the flat one of the stored columns)."""
        return self._layout.spec(self.schema)  # type: ignore[attr-defined]

    def _get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # Every path that saves (save, flush, pickling, shard checkpoints) goes through _get_state.
        state: dict[str, Any] = super()._get_state(*args, **kwargs)  # type: ignore[misc]
        state["nested"] = self._layout.to_json()
        return state

    def __reduce__(self) -> tuple[Any, ...]:
        from ray_replay.buffer import _restore

        return (_restore, (public_type(self), self._get_state()))


class InferNesting:
    """Mixed in before the buffer class until the first rows are stored: finds nesting in them.

    Thread-safe settling: another thread may swap this instance's class while a call is inside these
    methods, so they call the public class's (native) methods and module functions, never ``super()``
    or methods looked up on ``self``."""

    def add(self, *fields: Any, priority: float | None = None, stream: int | None = 0, **named: Any) -> None:
        base: Any = public_type(self)
        layout = _layout_of(fields, named, batched=False)
        if layout is None:
            base.add(self, *fields, priority=priority, stream=stream, **named)
        else:
            base.add(self, priority=priority, stream=stream, **layout.flatten_call(fields, named))
        _settle(self, layout)

    def add_batch(self, *columns: Any, priorities: Any = None, streams: Any = None, **named: Any) -> None:
        base: Any = public_type(self)
        layout = _layout_of(columns, named, batched=True)
        if layout is None:
            base.add_batch(self, *columns, priorities=priorities, streams=streams, **named)
        else:
            base.add_batch(self, priorities=priorities, streams=streams, **layout.flatten_call(columns, named))
        if self.schema:  # type: ignore[attr-defined]  # (an empty batch infers nothing)
            _settle(self, layout)

    def __reduce__(self) -> tuple[Any, ...]:
        from ray_replay.buffer import _restore

        return (_restore, (public_type(self), self._get_state()))  # type: ignore[attr-defined]


def _layout_of(fields: tuple[Any, ...], named: Mapping[str, Any], batched: bool) -> Layout | None:
    # (Not short-cut on a known schema: another thread may have stored the first rows and not yet
    # settled the class; these values are flattened all the same and checked against that schema.)
    if len(fields) > len(_TRANSITION):  # the native layer's error
        return None
    values = [*fields, *named.values()]
    if not any(isinstance(value, (Mapping, tuple)) for value in values):
        return None
    return infer_layout([*_TRANSITION[: len(fields)], *named], values, batched)
