"""Temporary folders multiprocessing leaves behind when a run is killed.

Starting the forkserver creates `<tmp>/pymp-*/listener-*` (a Unix socket the server listens
on); the folder is removed when the process that made it exits normally, never after a
SIGKILL. Such a folder is stale once no process listens on its sockets any more: Linux lists
every bound Unix socket path in /proc/net/unix.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def _bound_socket_paths() -> set[str] | None:
    """Paths of the Unix sockets bound on this machine, or None where /proc/net/unix is absent."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return None
    return {parts[7] for parts in (line.split() for line in lines) if len(parts) >= 8}


def remove_stale_mp_dirs(base: str | None = None) -> list[Path]:
    """Delete the `pymp-*` folders in the temp dir that hold only listener sockets no process
    is bound to (their forkserver is gone); returns what was removed. A folder in use, empty,
    or holding anything else is left alone."""
    bound = _bound_socket_paths()
    if bound is None:
        return []
    removed = []
    for folder in Path(base or tempfile.gettempdir()).glob("pymp-*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != _uid():
                continue
            entries = list(folder.iterdir())
            if entries and all(e.name.startswith("listener-") and e.is_socket() and str(e) not in bound for e in entries):
                shutil.rmtree(folder)
                removed.append(folder)
        except OSError:
            continue  # another process removed it, or it is not ours to read
    return removed


def _uid() -> int:
    import os

    return os.getuid()
