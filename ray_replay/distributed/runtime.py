"""Starting or joining Ray for ray_replay's demo, benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

__all__ = ["LOOPBACK", "init_ray", "is_local_address"]

LOOPBACK = "127.0.0.2"  # a loopback address: a local Ray neither listens on nor talks over the network


@contextlib.contextmanager
def _worker_safe_cwd() -> Iterator[None]:
    """Ray puts the driver's working directory first on its workers' sys.path. Started from a source
    checkout whose ``ray_replay/`` is not the imported (built) package, workers would import the
    sources without the compiled core; so Ray is started from a neutral directory in that case."""
    here = Path.cwd()
    sources = here / "ray_replay"
    if not (sources / "__init__.py").exists() or any(sources.glob("_core.*.so")) or any(sources.glob("_core.*.pyd")):
        yield
        return
    os.chdir(tempfile.gettempdir())
    try:
        yield
    finally:
        os.chdir(here)


def is_local_address(address: str | None) -> bool:
    """True for a new local Ray (None or "local") or a cluster on this machine's loopback addresses."""
    if address is None or address == "local":
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host.startswith("127.") or host == "localhost"


def init_ray(address: str | None = None, **kwargs: Any) -> Any:
    """ray.init for ray_replay's demo, benchmarks and tests.

    Address None starts a new local Ray, always: plain ``ray.init()`` would instead join any Ray it
    finds running on the machine (RAY_ADDRESS, the latest session's file, or any GCS process), such
    as another user's or another test run's, and then refuse num_cpus. A new local Ray or a cluster
    on loopback gets this driver on 127.0.0.2, so nothing listens on or talks over the network;
    joining a remote cluster leaves Ray to pick the address it can be reached at. Extra keyword
    arguments go to ray.init (num_cpus, include_dashboard, ...).
    """
    if is_local_address(address):
        kwargs.setdefault("_node_ip_address", LOOPBACK)
    if address is None:
        address = "local"
    with _worker_safe_cwd():
        return ray.init(address=address, **kwargs)
