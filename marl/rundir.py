"""Run directories: recognised by a marker file marl writes, locked for the life of a run.

A run directory holds only what marl writes into it (`MARL_ENTRIES`). `--overwrite` removes
those entries and nothing else, and refuses a directory that holds anything more; a new run
refuses a non-empty directory that is not marl's. While a run trains it holds an exclusive
`fcntl.flock` on `<run_dir>/.marl-lock`: the kernel drops it when the process dies (SIGKILL
included), so a crashed run never leaves the directory stuck, and a second writer is refused
with the holder's PID.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from marl.core.errors import MarlError, check

MARKER = ".marl-run"
LOCK = ".marl-lock"
# everything marl writes into a run directory (the trainer, the logger, W&B, the resume log)
MARL_ENTRIES = frozenset({MARKER, LOCK, "config.yaml", "config_changes.yaml", "metrics.jsonl", "checkpoints",
                          "wandb", ".wandb_id",
                          "ratings.csv", "ratings.png"})


def is_run(path: Path) -> bool:
    """`path` holds a marl run: the marker, or (runs written before the marker) a config.yaml
    next to a checkpoints/ folder."""
    return (path / MARKER).is_file() or ((path / "config.yaml").is_file() and (path / "checkpoints").is_dir())


def foreign_entries(path: Path) -> list[str]:
    """Names in `path` that marl did not write (sorted)."""
    return sorted(p.name for p in path.iterdir() if p.name not in MARL_ENTRIES) if path.is_dir() else []


def check_run_dir(path: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse a run directory this invocation must not write to; True when it holds a run.

    Reads only: nothing is created or removed here."""
    check(not path.exists() or path.is_dir(), f"--run-dir {path} is a file, not a directory",
          "pass a directory path for --run-dir")
    holds_run = path.is_dir() and is_run(path)
    if resume:
        check(holds_run and (path / "config.yaml").is_file(), f"run directory {path} holds no run to resume",
              "drop --resume to start a new run there")
        return True
    if holds_run:
        check(overwrite, f"run directory {path} already holds a run",
              "pass --resume to continue it, --overwrite to replace it, or another --run-dir")
        foreign = foreign_entries(path)
        check(not foreign, f"run directory {path} also holds files marl did not write ({', '.join(foreign[:3])}"
                           f"{', ...' if len(foreign) > 3 else ''}), so --overwrite will not replace it",
              "move those files out, or pick another --run-dir")
        return True
    check(not (path.is_dir() and any(p.name != LOCK for p in path.iterdir())), f"run directory {path} is not empty and holds no marl run",
          "pick a new or empty --run-dir (marl writes config.yaml, metrics.jsonl and checkpoints/ into it)")
    return False


def clear_run(path: Path) -> None:
    """Remove what marl wrote into `path` (not the lock, which this process holds)."""
    for name in sorted(MARL_ENTRIES - {LOCK}):
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


def writable_error(path: Path, err: OSError) -> MarlError:
    """One line for a run directory the process may not write (read-only, no permission)."""
    reason = os.strerror(err.errno) if err.errno else type(err).__name__
    return MarlError(f"cannot write to run directory {path} ({reason})",
                     "pick a --run-dir you can write to, or fix its permissions")


class RunLock:
    """Exclusive lock on a run directory for the life of a run (`with RunLock(path): ...`)."""

    def __init__(self, path: Path):
        import fcntl

        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise writable_error(self.path, err) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MarlError(f"run directory {self.path} is in use by another marl process (PID {holder})",
                                "wait for that run to finish (or stop it), or pick another --run-dir") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def mark(path: Path) -> None:
    """Write the marker that identifies `path` as a marl run directory."""
    (path / MARKER).write_text("a marl run directory: `marl train --overwrite` removes only what marl wrote here\n")
