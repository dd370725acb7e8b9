"""Starting or joining Ray for ray_replay's demo, benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import ray

__all__ = ["LOOPBACK", "init_ray", "is_local_address"]

# The node address of a Ray that init_ray starts. Ray 2.60 binds its listening sockets to loopback
# only for a node whose address *is* localhost (127.0.0.1, ::1 or "localhost"): the GCS, raylet and
# core workers' gRPC servers (0.0.0.0 otherwise), the dashboard agent's gRPC, HTTP and metrics
# servers, the runtime-env agent, the dashboard head's and autoscaler monitor's metrics servers.
# Any other address, 127.0.0.2 included, gets them all on every interface.
LOOPBACK = "127.0.0.1"


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


@contextlib.contextmanager
def _loopback_kept() -> Iterator[None]:
    """ray.init (Ray 2.60) passes the node address and a cluster's address through
    ``ray._private.services.resolve_ip_for_localhost``, which turns 127.0.0.1 and "localhost" into
    the machine's network address, so a node given 127.0.0.1 would listen on every interface.
    For the duration of this ray.init call a loopback address is kept as given ("localhost" as
    127.0.0.1). Without that function (another Ray) nothing is changed."""
    try:
        from ray._common.network_utils import is_localhost  # type: ignore[attr-defined]  # re-exported from ray._raylet without __all__
        from ray._private import services

        original = services.resolve_ip_for_localhost
    except (ImportError, AttributeError):
        yield
        return

    def keep_loopback(host: str) -> str:
        if host and is_localhost(host):
            return LOOPBACK if host == "localhost" else host
        return cast(str, original(host))  # an untyped Ray function

    services.resolve_ip_for_localhost = keep_loopback
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


def is_local_address(address: str | None) -> bool:
    """True for a new local Ray (None or "local") or a cluster on this machine's loopback addresses."""
    if address is None or address == "local":
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host.startswith("127.") or host == "localhost"


def init_ray(address: str | None = None, **kwargs: Any) -> Any:
    """ray.init for ray_replay's demo, benchmarks and tests.

    Address None (or "local") starts a new local Ray, always: plain ``ray.init()`` would instead
    join any Ray it finds running on the machine (RAY_ADDRESS, the latest session's file, or any GCS
    process), such as another user's or another test run's, and then refuse num_cpus.

    That Ray is bound to loopback: its node address is 127.0.0.1 (``_node_ip_address``, kept as
    given although ray.init would replace it with the machine's address) and ``dashboard_host`` is
    127.0.0.1, so every listening socket of its processes is on 127.0.0.1 (Ray 2.60, checked by
    tests/test_loopback.py): the GCS, the raylet's node manager and object manager, every worker's
    and driver's gRPC server, the dashboard (HTTP, job API) and its metrics server, the autoscaler
    monitor's metrics server, the dashboard agent (gRPC, HTTP and the Prometheus metrics export)
    and the runtime-env agent. There are no exceptions. Apart from ``dashboard_host`` (the
    dashboard's HTTP server), Ray offers no option for where any of these bind (no flag, environment
    variable or _system_config key; the agents' and the monitor's options are ports only): each
    binds to loopback only when the node address is localhost, and to 0.0.0.0/[::] for any other,
    127.0.0.2 included. Passing ``_node_ip_address`` or ``dashboard_host`` overrides these. The
    agent's HTTP port (52365) and the dashboard's and monitor's metrics ports (44227, 44217) are
    fixed: where another Ray on the machine holds them, those servers do not start. Ray 2.60 also
    turns token authentication on for a Ray started this way unless RAY_AUTH_MODE says otherwise.

    Joining a cluster on loopback (an address on 127.x or localhost) keeps that address as given
    and lets Ray pick this machine's node of the cluster for the driver; joining any other cluster
    is plain ray.init, Ray picks the address the driver is reached at. Extra keyword arguments go
    to ray.init (num_cpus, include_dashboard, ...).
    """
    local = is_local_address(address)
    if address is None or address == "local":
        address = "local"
        kwargs.setdefault("_node_ip_address", LOOPBACK)
        kwargs.setdefault("dashboard_host", LOOPBACK)
    with _worker_safe_cwd(), _loopback_kept() if local else contextlib.nullcontext():
        return ray.init(address=address, **kwargs)
