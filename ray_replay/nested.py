"""Nested fields (dicts and tuples of arrays, as gymnasium's Dict and Tuple spaces make them) as flat columns.

The native core stores flat columns only. A nested schema such as::

    {"obs": {"image": ((64, 64, 3), np.uint8), "vector": ((8,), np.float32)}, "action": ((), np.int64)}

is flattened here into leaf columns named by their path (``"obs.image"``, ``"obs.vector"``,
``"action"``; a tuple's items are ``"pair[0]"``, ``"pair[1]"``), and a :class:`Layout` remembers the
structure so values can be flattened on the way in and samples rebuilt on the way out. Leaf specs are
passed through untouched (whatever the native schema parser accepts: ``(shape, dtype)`` or longer),
so every leaf option composes with nesting.

Contracts: flattening checks the structure only (a missing or extra key, a tuple of the wrong length,
a container where a leaf belongs); shapes and dtypes are the native layer's, whose errors name the leaf
column, i.e. the full path. Either way the error is raised before anything is written. Costs: one
Python call per leaf per add (no copy: leaves are handed to the native layer as given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Layout", "column_name", "flat_buffer_kwargs", "flatten_schema", "infer_layout", "is_leaf_spec", "is_nested_schema", "map_structure",
           "refuse_unknown_nesting", "stack_structures", "unbatch"]

PathKey = str | int
Path = tuple[PathKey, ...]
# A node of the structure: ("leaf", column name), ("dict", ((key, node), ...)) or ("tuple", (node, ...)).
Node = tuple[str, Any]


def column_name(path: Path) -> str:
    """``("obs", "image")`` -> ``"obs.image"``; ``("pair", 0)`` -> ``"pair[0]"``."""
    text = str(path[0])
    for key in path[1:]:
        text += f"[{key}]" if isinstance(key, int) else f".{key}"
    return text


def is_leaf_spec(spec: Any) -> bool:
    """A leaf is ``(shape, dtype, ...)`` with shape an int or a sequence of ints and dtype not a container."""
    if not isinstance(spec, (tuple, list)) or len(spec) < 2:
        return False
    shape, dtype = spec[0], spec[1]
    if isinstance(dtype, (Mapping, tuple, list)):
        return False
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        return True
    return isinstance(shape, (tuple, list)) and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in shape)


def is_nested_schema(schema: Mapping[str, Any]) -> bool:
    """True when some field of ``schema`` is a dict or a tuple of specs rather than a leaf spec."""
    return any(not is_leaf_spec(spec) for spec in schema.values())


def flatten_schema(schema: Mapping[str, Any]) -> tuple[dict[str, Any], Layout]:
    """The flat native schema (column name -> leaf spec, in depth-first order) and the layout of ``schema``."""
    if not isinstance(schema, Mapping):
        raise TypeError("schema must be a mapping of field name -> spec")
    leaves: dict[str, Any] = {}

    def walk(spec: Any, path: Path) -> Node:
        where = column_name(path)
        if is_leaf_spec(spec):
            leaves[_claim(leaves, path)] = spec
            return ("leaf", where)
        if isinstance(spec, Mapping):
            if not spec:
                raise ValueError(f"schema field '{where}': an empty dict has no leaves to store")
            return ("dict", tuple((key, walk(sub, (*path, _key(key, where)))) for key, sub in spec.items()))
        if isinstance(spec, (tuple, list)) and spec and all(isinstance(sub, (Mapping, tuple, list)) for sub in spec):
            return ("tuple", tuple(walk(sub, (*path, i)) for i, sub in enumerate(spec)))
        raise ValueError(f"schema field '{where}': expected (shape, dtype), a dict of specs or a tuple of specs, got {spec!r}")

    top = tuple((name, walk(spec, (_key(name, "schema"),))) for name, spec in schema.items())
    if not top:
        raise ValueError("schema must name at least one field")
    return leaves, Layout(top)


def flat_buffer_kwargs(buffer_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], Layout | None]:
    """ReplayBuffer keyword arguments with a nested ``schema`` flattened, and its layout (None if flat)."""
    schema = buffer_kwargs.get("schema")
    if not isinstance(schema, Mapping) or not is_nested_schema(schema):
        return dict(buffer_kwargs), None
    flat, layout = flatten_schema(schema)
    return {**buffer_kwargs, "schema": flat}, layout


def map_structure(fn: Any, *values: Any) -> Any:
    """``fn`` applied leaf by leaf over values of one structure (dicts and tuples nest; anything else is
    a leaf), e.g. ``map_structure(lambda a: a[:n], obs)`` slices every leaf of a Dict observation."""
    first = values[0]
    if isinstance(first, Mapping):
        return {key: map_structure(fn, *(value[key] for value in values)) for key in first}
    if isinstance(first, tuple):
        return tuple(map_structure(fn, *(value[i] for value in values)) for i in range(len(first)))
    return fn(*values)


def stack_structures(items: Sequence[Any]) -> Any:
    """A list of structures (one per row) -> one structure of arrays with a leading batch axis."""
    if not isinstance(items[0], (Mapping, tuple)):
        return np.asarray(items)
    return map_structure(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *items)


def unbatch(batch: Any, size: int) -> list[Any]:
    """One structure of batched arrays -> a list of ``size`` structures (views of row i, no copy)."""
    if not isinstance(batch, (Mapping, tuple)):
        return list(batch)
    return [map_structure(lambda leaf, i=i: leaf[i], batch) for i in range(size)]


def refuse_unknown_nesting(fields: Sequence[Any], named: Mapping[str, Any]) -> None:
    """A sharded replay learns nesting only from its schema: dict values without one are refused."""
    for name, value in [*enumerate(fields), *named.items()]:
        if _is_mapping(value):
            raise TypeError(f"field '{name}': nested (dict) values on a sharded replay need the nested schema up front "
                            "(schema= for DistributedReplay / ReplayCoordinator)")


def infer_layout(names: Sequence[str], values: Sequence[Any], batched: bool, every_tuple: bool = False) -> Layout | None:
    """The layout of the first values added to a buffer without schema, or None if every value is flat.

    Only dicts nest, and tuples that numpy cannot turn into one array (parts of different shapes or
    dtypes, or containing dicts); a tuple of equal arrays stays one array, as it always was (pass
    ``schema=`` to store such a tuple as a Tuple space). ``every_tuple``: every tuple nests (values
    that come from gymnasium spaces, where a tuple is always a Tuple space).
    """
    nested = False

    def walk(value: Any, path: Path) -> Node:
        nonlocal nested
        where = column_name(path)
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"field '{where}': an empty dict has no leaves to store")
            nested = True
            return ("dict", tuple((key, walk(sub, (*path, _key(key, where)))) for key, sub in value.items()))
        if isinstance(value, tuple) and value and (every_tuple or not _one_array(value, batched)):
            nested = True
            return ("tuple", tuple(walk(sub, (*path, i)) for i, sub in enumerate(value)))
        return ("leaf", where)

    layout = Layout(tuple((name, walk(value, (name,))) for name, value in zip(names, values)))
    if not nested:
        return None
    layout.leaf_names()  # raises on two leaves with one column name
    return layout


class Layout:
    """The structure of a nested schema: flattens values into leaf columns and rebuilds samples."""

    def __init__(self, top: tuple[tuple[str, Node], ...]) -> None:
        self._top = top
        self._nodes = dict(top)
        self.fields = tuple(name for name, _ in top)  # top-level field names, in order
        self.columns = self.leaf_names()  # leaf column names, in order

    def leaf_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for path in self.paths():
            name = column_name(path)
            if name in names:
                raise ValueError(f"two nested fields map to the same column '{name}': rename a key")
            names.append(name)
        return tuple(names)

    def paths(self) -> list[Path]:
        """Each leaf's path, in column order."""
        out: list[Path] = []

        def walk(node: Node, path: Path) -> None:
            kind, content = node
            if kind == "leaf":
                out.append(path)
            elif kind == "dict":
                for key, sub in content:
                    walk(sub, (*path, key))
            else:
                for i, sub in enumerate(content):
                    walk(sub, (*path, i))

        for name, node in self._top:
            walk(node, (name,))
        return out

    # -- values in -------------------------------------------------------------------------------------

    def flatten_call(self, fields: Sequence[Any], named: Mapping[str, Any]) -> dict[str, Any]:
        """``add``/``add_batch``'s positional and named values as flat columns (positional values take the
        top-level fields in order). Raises ValueError/TypeError naming the path; builds nothing else."""
        if not fields:
            return self.flatten(named)
        if len(fields) > len(self.fields):
            raise ValueError(f"got {len(fields)} positional values but the schema has {len(self.fields)} fields ({', '.join(self.fields)})")
        values = dict(zip(self.fields, fields))
        for name, value in named.items():
            if name in values:
                raise TypeError(f"field '{name}' given twice")
            values[name] = value
        return self.flatten(values)

    def flatten(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Nested values (one row or a batch: leaves are passed as they are) -> ``{column: leaf}``."""
        out: dict[str, Any] = {}
        if values.keys() != self._nodes.keys():
            for name in values:
                if name not in self._nodes:
                    raise ValueError(f"unknown field '{name}' (the schema has {', '.join(self.fields)})")
        for name, node in self._top:
            if name not in values:
                raise ValueError(f"missing field '{name}'")
            if node[0] == "leaf" and not _is_mapping(values[name]):
                out[node[1]] = values[name]  # the common case, a flat field: no call
            else:
                _flatten(node, values[name], (name,), out)
        return out

    def flatten_some(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Flattens the fields of ``values`` that are in the layout (``sample``'s ``out=``); other keys pass."""
        nodes = self._nodes
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key in nodes:
                _flatten(nodes[key], value, (key,), out)
            else:
                out[key] = value
        return out

    # -- samples out -----------------------------------------------------------------------------------

    def unflatten(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        """Flat sample columns -> the nested structure; keys that are not leaves (``weights``, ``ids``,
        ``probabilities``) stay at the top level, after the fields."""
        out: dict[str, Any] = {name: _build(node, columns) for name, node in self._top}
        leaves = set(self.columns)
        for key, value in columns.items():
            if key not in leaves:
                out[key] = value
        return out

    def spec(self, flat_schema: Mapping[str, Any]) -> dict[str, Any]:
        """The nested schema (``{field: {key: (shape, dtype)}}``) of a flat one of this layout."""
        return {name: _build(node, flat_schema) for name, node in self._top}

    # -- persistence: a JSON-able description (one path per column) -----------------------------------

    def to_json(self) -> list[list[PathKey]]:
        return [list(path) for path in self.paths()]

    @classmethod
    def from_json(cls, paths: Any) -> Layout:
        """Rebuilds a layout from :meth:`to_json`; raises ValueError for anything that is not one."""
        if not isinstance(paths, list) or not paths:
            raise ValueError("nested layout: expected a non-empty list of paths")
        root: dict[PathKey, Any] = {}
        for path in paths:
            if not isinstance(path, list) or not path or not isinstance(path[0], str) or not all(
                    isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool) and k >= 0) for k in path):
                raise ValueError(f"nested layout: bad path {path!r}")
            node = root
            for key in path[:-1]:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise ValueError(f"nested layout: path {path!r} goes through a leaf")
                node = child
            if path[-1] in node:
                raise ValueError(f"nested layout: path {path!r} given twice")
            node[path[-1]] = None

        def node_of(tree: Any, path: Path) -> Node:
            if tree is None:
                return ("leaf", column_name(path))
            keys = list(tree)
            if all(isinstance(k, int) for k in keys):
                if sorted(keys) != list(range(len(keys))):
                    raise ValueError(f"nested layout: tuple '{column_name(path)}' has indices {sorted(keys)}")
                return ("tuple", tuple(node_of(tree[i], (*path, i)) for i in range(len(keys))))
            if not all(isinstance(k, str) for k in keys):
                raise ValueError(f"nested layout: '{column_name(path)}' mixes dict keys and tuple indices")
            return ("dict", tuple((k, node_of(tree[k], (*path, k))) for k in keys))

        return cls(tuple((str(name), node_of(sub, (str(name),))) for name, sub in root.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self._top == other._top

    def __hash__(self) -> int:
        return hash(self._top)

    def __repr__(self) -> str:
        return f"Layout({', '.join(self.columns)})"


def _key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"'{where}': nested keys must be non-empty str, got {key!r}")
    return key


def _claim(leaves: Mapping[str, Any], path: Path) -> str:
    name = column_name(path)
    if name in leaves:
        raise ValueError(f"two nested fields map to the same column '{name}': rename a key")
    return name


def _one_array(value: tuple[Any, ...], batched: bool) -> bool:
    """Whether numpy makes one (non-object) array of ``value``, as it did before nesting existed."""
    return not any(isinstance(part, Mapping) for part in value) and _stacks(value)


def _stacks(value: tuple[Any, ...]) -> bool:
    try:
        return np.asarray(value).dtype != object
    except ValueError:  # ragged
        return False


_LEAF_TYPES = frozenset({np.ndarray, int, float, bool, np.float32, np.float64, np.int64, np.int32, np.bool_, np.uint8})


def _is_mapping(value: Any) -> bool:
    """isinstance(value, Mapping), without the ABC check (about 0.5 us) for the usual types."""
    kind = type(value)
    if kind is dict:
        return True
    return kind not in _LEAF_TYPES and isinstance(value, Mapping)


def _flatten(node: Node, value: Any, path: Path, out: dict[str, Any]) -> None:
    # The hot path builds no strings: paths and messages are made only for an error.
    kind, content = node
    if kind == "leaf":
        if _is_mapping(value):
            raise TypeError(f"field '{column_name(path)}': expected an array, got a dict with keys {sorted(map(str, value))}")
        out[content] = value
    elif kind == "dict":
        if not _is_mapping(value):
            raise TypeError(f"field '{column_name(path)}': expected a dict with keys {[k for k, _ in content]}, got {type(value).__name__}")
        if len(value) != len(content):
            keys = [k for k, _ in content]
            extra = [k for k in value if k not in keys]
            if extra:
                raise ValueError(f"field '{column_name(path)}': unexpected key(s) {extra} (expected keys {keys})")
        for key, sub in content:
            try:
                leaf = value[key]
            except KeyError:
                keys = [k for k, _ in content]
                raise ValueError(f"field '{column_name((*path, key))}': missing (expected keys {keys} in '{column_name(path)}')") from None
            if sub[0] == "leaf" and not _is_mapping(leaf):
                out[sub[1]] = leaf
            else:
                _flatten(sub, leaf, (*path, key), out)
    else:
        if type(value) is not tuple and (isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence)):
            raise TypeError(f"field '{column_name(path)}': expected a tuple of {len(content)} items, got {type(value).__name__}")
        if len(value) != len(content):
            raise ValueError(f"field '{column_name(path)}': expected a tuple of {len(content)} items, got {len(value)}")
        for i, sub in enumerate(content):
            _flatten(sub, value[i], (*path, i), out)


def _build(node: Node, columns: Mapping[str, Any]) -> Any:
    kind, content = node
    if kind == "leaf":
        return columns[content]
    if kind == "dict":
        return {key: _build(sub, columns) for key, sub in content}
    return tuple(_build(sub, columns) for sub in content)
