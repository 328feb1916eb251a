"""A real full disk for log tests: a small tmpfs mounted on a folder (needs root, as on this
machine and in the CI container; elsewhere the test says why it cannot run).

Use :func:`small_tmpfs` as a context manager; :class:`gateway.logs.DiskFull` is the injected
variant that needs no privileges (for a gateway process: ``JsonlLog.opener = DiskFull(flag)``).
"""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Iterator


def mount_tmpfs(path: Path, size_bytes: int) -> str | None:
    """Mount a tmpfs of ``size_bytes`` on ``path``; None when done, else why it failed."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A folder on its own tmpfs of ``size_bytes`` (ENOSPC once it is full), unmounted after."""
    why = mount_tmpfs(path, size_bytes)
    if why is not None:
        raise PermissionError(f"cannot mount a tmpfs on {path} (root needed): {why}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
