"""Disk faults for checkpoint directories (root only): a tiny tmpfs that fills up, a bind mount turned read-only.

Every mount made here is unmounted by the context manager that made it, whatever happens inside.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def small_tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB mounted on ``path`` (created); ``resize_tmpfs`` grows it later."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "chaos-checkpoints", str(path))
    try:
        yield path
    finally:
        _run("umount", "-l", str(path))


def resize_tmpfs(path: Path, size_kib: int) -> None:
    _run("mount", "-o", f"remount,size={size_kib}k", str(path))


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` bind-mounted on ``target`` (both created); ``set_read_only`` flips it."""
    source.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    _run("mount", "--bind", str(source), str(target))
    try:
        yield target
    finally:
        _run("umount", "-l", str(target))


def set_read_only(target: Path, read_only: bool) -> None:
    """Remounts the bind mount read-only (or back). The kernel refuses (EBUSY) while a file is open for
    writing there, e.g. a checkpoint being written: retried for up to 10 s."""
    deadline = time.monotonic() + 10
    while True:
        try:
            _run("mount", "-o", f"remount,bind,{'ro' if read_only else 'rw'}", str(target))
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
