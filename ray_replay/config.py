"""A buffer's configuration, defined once: the options that every state (``ReplayBuffer.get_state()``),
buffer file header and checkpoint carries, and the defaults of those added after the first file format
(a state or file without them loads as it always did).

Used by ``ReplayBuffer`` (rebuilding a buffer from a state: pickling, ``load``, checkpoints) and by
persistence.py (file headers, both ways). The constructor's keyword arguments are these options, with
``compress`` for the state's ``codecs`` (the codec of each compressed field); the schema and
``storage_dir`` travel beside them. A new option is added here, with its default, and in the
constructor (buffer.py, the bindings' NativeBuffer and ``_core.pyi``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CONFIG_KEYS", "OPTIONAL_CONFIG", "config_of", "constructor_options"]

# In every state and file since format version 1.
CONFIG_KEYS = ("capacity", "buffer_type", "seed", "alpha", "beta", "eps", "sampling", "on_full", "collect_stats")
# Added later (format version 2; codecs and sequence_priority_eta after it, compatibly), with their defaults.
OPTIONAL_CONFIG: Mapping[str, Any] = {"next_state": "store", "frame_stack_axis": None, "prefault": False, "codecs": None,
                                      "sequence_priority_eta": 0.9}


def config_of(source: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of a state or file header: every key of CONFIG_KEYS (KeyError when one is
    missing) and every optional one, its default where absent."""
    config = {key: source[key] for key in CONFIG_KEYS}
    config.update({key: source.get(key, default) for key, default in OPTIONAL_CONFIG.items()})
    return config


def constructor_options(state: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``ReplayBuffer(state["capacity"], state["buffer_type"], ...)`` that
    rebuild the buffer of ``state`` (all but schema and storage_dir)."""
    options = config_of(state)
    del options["capacity"], options["buffer_type"]
    options["compress"] = options.pop("codecs") or None
    return options
