"""Starting or joining Ray for ray_replay's demo, benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

__all__ = ["LOOPBACK", "init_ray"]

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


def init_ray(address: str | None = None, *, node_ip_address: str = LOOPBACK, **kwargs: Any) -> Any:
    """ray.init on loopback: a new local Ray (address None) or a running one (e.g. a Cluster's address).

    Extra keyword arguments go to ray.init (num_cpus, include_dashboard, ...).
    """
    with _worker_safe_cwd():
        return ray.init(address=address, _node_ip_address=node_ip_address, **kwargs)
