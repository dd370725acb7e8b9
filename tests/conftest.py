"""Ray for the distributed tests: one lazily started local Ray for the session, on loopback.

Only tests that request ``ray_local`` start it. Tests that need their own multi-node Cluster request
``ray_stopped`` first, which shuts the session Ray down (the next ``ray_local`` test starts it again),
so two Rays never run at once. Whatever is started here is stopped here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


class _SessionRay:
    """Starts the local Ray on demand and remembers to stop it."""

    def start(self) -> None:
        import ray

        from ray_replay.distributed.runtime import init_ray

        if not ray.is_initialized():
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
    """No Ray running in this process (for tests that start their own Cluster)."""
    _session_ray.stop()
