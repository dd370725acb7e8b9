"""The shard processes' fixed glibc mmap threshold (ray_replay.distributed.allocator; issue 18's soak).

Process-wide, so each case runs in a child interpreter: after a 4 MiB block is freed, glibc's default
dynamic threshold has risen to 4 MiB and a 2 MiB block comes from the heap (where, freed, it may stay
in the process); with the threshold fixed, the 2 MiB block is mapped (and given back when freed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import ctypes, json, sys
    import numpy as np
    from ray_replay.distributed.allocator import fix_mmap_threshold

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    fixed = fix_mmap_threshold() if sys.argv[1] == "fixed" else None
    block = np.ones(4 << 20, np.uint8)
    del block
    before = libc.mallinfo2().hblks
    block = np.ones(2 << 20, np.uint8)
    print(json.dumps({"set": fixed, "mapped": libc.mallinfo2().hblks - before}))
""")


def run_child(mode: str) -> dict[str, object]:
    # The child imports the ray_replay this test session imports (the installed package, or the
    # checkout where PYTHONPATH names it): the parent's environment, less any sanitizer preload, run
    # outside the checkout (``-c`` puts the working directory first on sys.path, and a checkout's
    # ray_replay/ has no built extension).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tempfile.gettempdir())
    assert done.returncode == 0, f"the {mode} child failed:\n{done.stderr}"
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_fixed_threshold_maps_the_large_blocks_that_the_dynamic_one_puts_on_the_heap() -> None:
    assert run_child("default") == {"set": None, "mapped": 0}
    assert run_child("fixed") == {"set": True, "mapped": 1}


def test_off_linux_or_refused_it_reports_false_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray_replay.distributed import allocator

    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.fix_mmap_threshold() is False
