"""A state filesystem the fault suite can fill up and free again, while a gateway writes to it.

Preferred: a small tmpfs mounted on the state dir (needs root and a ``mount`` that works);
:meth:`fill` writes a filler file until ``ENOSPC``, :meth:`free` deletes it. Where mounting is
impossible, the fallback lowers ``RLIMIT_FSIZE`` of the running gateway process to 0 with
``prlimit(2)`` (every write to a regular file then fails with ``EFBIG``; Python ignores
``SIGXFSZ``), and :meth:`free` lifts it again. ``FAULT_DISK_MODE=fsize`` forces the fallback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs

__all__ = ["FullDisk", "full_disk"]

TMPFS_SIZE = "64m"
_CHUNK = b"\0" * (1 << 20)


@attrs.define
class FullDisk:
    """Fills and frees the gateway's state storage; ``mode`` is ``tmpfs`` or ``fsize``."""

    mode: str
    state_dir: Path
    episodes: int = 0
    _limited: list[int] = attrs.field(factory=list)

    @property
    def filler(self) -> Path:
        return self.state_dir / "filler"

    def fill(self, gateway_pid: int) -> None:
        """Make the state storage refuse writes (for ``gateway_pid`` under ``fsize``)."""
        self.episodes += 1
        if self.mode == "fsize":
            _, hard = resource.prlimit(gateway_pid, resource.RLIMIT_FSIZE)
            resource.prlimit(gateway_pid, resource.RLIMIT_FSIZE, (0, hard))
            self._limited.append(gateway_pid)
            return
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    os.write(fd, _CHUNK)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            # Whatever pages are left: fill them byte by byte-ish, so nothing fits.
            for size in (65536, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, _CHUNK[:size])
        finally:
            os.close(fd)

    def free(self) -> None:
        """Give the space back (lift the limit of every process it was put on)."""
        if self.mode == "fsize":
            for pid in self._limited:
                with contextlib.suppress(ProcessLookupError):
                    resource.prlimit(
                        pid,
                        resource.RLIMIT_FSIZE,
                        (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
                    )
            self._limited.clear()
            return
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()


def _try_mount(state_dir: Path) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(state_dir)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextlib.contextmanager
def full_disk(state_dir: Path) -> Iterator[FullDisk]:
    """A :class:`FullDisk` over ``state_dir`` (created), unmounted again on the way out."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mounted = os.environ.get("FAULT_DISK_MODE") != "fsize" and _try_mount(state_dir)
    disk = FullDisk("tmpfs" if mounted else "fsize", state_dir)
    try:
        yield disk
    finally:
        disk.free()
        if mounted:
            subprocess.run(["umount", "-l", str(state_dir)], capture_output=True, check=False)
