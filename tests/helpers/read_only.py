"""A read-only folder for failure tests: a tmpfs mounted ro (chmod does not stop root, this does)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tmpfs_mount(folder: Path, options: str) -> Iterator[Path]:
    """Create `folder` and mount an empty tmpfs with mount `options` on it until the block ends."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextmanager
def read_only_mount(folder: Path) -> Iterator[Path]:
    """Create `folder` and mount an empty read-only file system on it until the block ends."""
    with tmpfs_mount(folder, "ro,size=1m") as mounted:
        yield mounted
