"""Ray for the distributed tests: one lazily started local Ray for the session, on loopback.

Only tests that request ``ray_local`` start it. Tests that need their own multi-node Cluster request
``ray_stopped`` first, which shuts the session Ray down (the next ``ray_local`` test starts it again),
so two Rays never run at once. Whatever is started here is stopped here. ``make test-python`` runs the
modules with a Ray of their own in pytest processes of their own, so each process starts one Ray.

Every test that needs Ray (it uses ``ray_local``, ``ray_stopped`` or a fixture built on them) is
marked ``ray`` at collection, so ``-m "not ray"`` leaves them out: the sanitizer run (``make
test-asan``, with ASan preloaded) does, and sets RAY_REPLAY_TESTS_NO_RAY, which makes any attempt to
start Ray here fail at once with a message saying so, rather than start Ray's processes under ASan.

Ray's startup deadlines are made generous for a loaded machine (see ``RAY_STARTUP_ENV``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Fixtures that start or stop a Ray; a test whose fixture closure holds any of them is marked "ray".
RAY_FIXTURES = frozenset({"_session_ray", "ray_local", "ray_stopped"})

# Set by `make test-asan`: this pytest process runs under the ASan preload and must not start Ray.
NO_RAY_ENV = "RAY_REPLAY_TESTS_NO_RAY"

# How long a starting Ray may take here before a test fails (Ray's own defaults are 30-60 s, which a
# busy 2-core machine can miss).
RAY_STARTUP_TIMEOUT_S = 120

# Ray's deadlines that it reads from RAY_<config name> (src/ray/common/ray_config_def.h, Ray 2.60):
# every Ray process started by this run inherits them (GCS, raylets, workers, Cluster nodes, the
# drivers of subprocesses). Set before any test module imports ray, since ray_constants reads
# RAY_gcs_server_request_timeout_seconds at import; a value already in the environment wins.
RAY_STARTUP_ENV = {
    "RAY_worker_register_timeout_seconds": "180",  # a new worker process registering with its raylet (60)
    "RAY_agent_register_timeout_ms": "120000",  # the raylet's dashboard and runtime-env agents (30 s)
    "RAY_raylet_start_wait_time_s": "120",  # waiting for the raylet to come up (30)
    "RAY_py_gcs_connect_timeout_s": "120",  # Python's GCS client connecting (30)
    "RAY_gcs_rpc_server_connect_timeout_s": "30",  # a C++ GCS client connecting (5)
    "RAY_gcs_rpc_server_reconnect_timeout_s": "120",  # a client giving up on an unresponsive GCS (60)
    "RAY_gcs_server_request_timeout_seconds": "120",  # synchronous GCS requests, e.g. ray.get_actor (60)
}
for _name, _value in RAY_STARTUP_ENV.items():
    os.environ.setdefault(_name, _value)


# tests/chaos (network namespaces, mounts: root only, minutes per scenario) runs only under
# `make test-chaos`, which sets this; a plain `pytest` or `make test-python` leaves it out.
CHAOS_ENV = "RAY_REPLAY_CHAOS"
collect_ignore = [] if os.environ.get(CHAOS_ENV) else ["chaos"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks "ray" (registered in pyproject.toml) every test whose fixtures, direct or not, start or stop Ray."""
    for item in items:
        if RAY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Whatever Ray is still connected is shut down before the interpreter tears down, so Ray's
    background threads are not running at finalization (ray-project/ray#31145)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _refuse_ray_under_asan() -> None:
    """Fails the test at once where Ray must not start (the ASan run), saying why."""
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get(NO_RAY_ENV) or "libasan" in preload:
        pytest.fail(
            f"this test starts Ray, which must not run under the ASan preload ({NO_RAY_ENV}="
            f"{os.environ.get(NO_RAY_ENV, '')!r}, LD_PRELOAD={preload!r}): its processes start slowly and miss "
            "Ray's startup deadlines. Select with -m 'not ray'; a test that reaches Ray other than through "
            "its fixture arguments (e.g. request.getfixturevalue) needs @pytest.mark.ray.",
            pytrace=False,
        )


def _patient_node_registration() -> None:
    """Ray 2.60 waits a fixed 30 s for a node it starts (ray.init, Cluster.add_node) to register with
    the GCS (ray/_private/node.py, not configurable), retrying ray._private.services.get_node; here
    each lookup retries for up to RAY_STARTUP_TIMEOUT_S before failing, which widens that deadline.
    Only the lookup's failure is delayed; a found node returns at once. Skipped if Ray changes it."""
    from ray._private import services

    original = getattr(services, "get_node", None)
    if original is None or getattr(original, "_ray_replay_patient", False):
        return

    def get_node(gcs_address, node_id):
        give_up = time.monotonic() + RAY_STARTUP_TIMEOUT_S
        while True:
            try:
                return original(gcs_address, node_id)
            except RuntimeError:
                if time.monotonic() >= give_up:
                    raise
                time.sleep(0.5)

    get_node._ray_replay_patient = True
    services.get_node = get_node


def prepare_ray_start() -> None:
    """Called before this process starts any Ray: refuses under ASan, widens the startup deadline."""
    _refuse_ray_under_asan()
    _patient_node_registration()


class _SessionRay:
    """Starts the local Ray on demand and remembers to stop it."""

    def start(self) -> None:
        import ray

        from ray_replay.distributed.runtime import init_ray

        if not ray.is_initialized():
            prepare_ray_start()
            # Actors defined in test modules are imported by the workers, which need tests/ on their path.
            path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
            init_ray(
                num_cpus=4,
                include_dashboard=False,
                object_store_memory=512 * 1024**2,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
            )

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="session")
def _session_ray() -> Iterator[_SessionRay]:
    session = _SessionRay()
    yield session
    session.stop()


@pytest.fixture
def ray_local(_session_ray: _SessionRay) -> None:
    """A running local Ray (4 CPUs, loopback), shared by the tests of the session."""
    _session_ray.start()


@pytest.fixture
def ray_stopped(_session_ray: _SessionRay) -> None:
    """No Ray running in this process (for tests that start their own Cluster or Ray, right after)."""
    prepare_ray_start()
    _session_ray.stop()


@pytest.fixture
def coordinators(ray_local: None) -> Iterator[Callable[..., Any]]:
    """``make(**options)``: a ReplayCoordinator.remote(**options) for the test; every one made is shut
    down (its shards with it) and killed after the test, whether it passed or not."""
    import ray

    from ray_replay.distributed import ReplayCoordinator

    made: list[Any] = []

    def make(**options: Any) -> Any:
        replay = ReplayCoordinator.remote(**options)
        made.append(replay)
        return replay

    yield make
    for replay in made:
        ray.get(replay.shutdown.remote())
        ray.kill(replay)
