"""Checkpoints: atomic writes, clear errors on load, `step_<N>.pt` files plus `latest.pt`.

Layout of a run: `<run_dir>/checkpoints/step_<N>.pt` (the last `keep` are kept) and
`latest.pt` (the newest, a hard link or copy). A file is written to a temp file in the same
folder, flushed and fsynced, then renamed over the final name: a crash leaves either the
previous checkpoint or the new one under that name, never a half-written file.

Checkpoints are pickles (torch.save): they hold RNG states and config values besides
tensors, so only load checkpoints you trust.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import typing
from pathlib import Path
from typing import Any

import torch

from marl.core.errors import MarlError

FORMAT = "marl-checkpoint"
VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def atomic_write(path: str | os.PathLike, write: typing.Callable[[typing.BinaryIO], Any]) -> Path:
    """Call write(binary file) on a temp file next to `path`, fsync, rename it over `path`.

    A crash leaves the old file or the new one under `path`, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, unlike mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write `payload` (model/optimiser state dicts, RNG states, counters, ...) atomically to `path`."""
    if not isinstance(payload, dict):
        raise TypeError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
    path = Path(path)
    wrapped = {"format": FORMAT, "version": VERSION, "payload": payload}
    atomic_write(path, lambda f: torch.save(wrapped, f))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The payload given to save_checkpoint. `path` may also be a run directory (its latest checkpoint).

    MarlError (one line + fix) for a missing, truncated or foreign file."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise MarlError(f"no checkpoint in {path}", "train first, or point at <run_dir>/checkpoints/latest.pt")
        path = found
    if not path.is_file():
        raise MarlError(f"checkpoint {path} is missing", "check the path; runs keep them in <run_dir>/checkpoints/")
    corrupt = f"checkpoint {path} is corrupt or not a marl checkpoint"
    fix = "use a file written by marl train (<run_dir>/checkpoints/latest.pt or step_<N>.pt)"
    try:
        data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle garbage, foreign format: all one user error
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise MarlError(f"{corrupt} ({type(e).__name__}: {reason})", fix) from None
    if not (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("payload"), dict)):
        raise MarlError(corrupt, fix)
    if data.get("version", 0) > VERSION:
        raise MarlError(f"checkpoint {path} was written by a newer marl (format {data['version']})", "upgrade marl")
    return data["payload"]


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def step_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every step_<N>.pt of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = ((_STEP_RE.match(p.name), p) for p in folder.iterdir())
    return sorted((int(m.group(1)), p) for m, p in found if m and p.is_file())


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """`latest.pt` of a run (or its highest step_<N>.pt); None when the run has none.

    Accepts the run directory or its checkpoints/ folder."""
    run_dir = Path(run_dir)
    if run_dir.name == "checkpoints" and not (run_dir / "checkpoints").is_dir():
        run_dir = run_dir.parent
    latest = checkpoint_dir(run_dir) / "latest.pt"
    if latest.is_file():
        return latest
    steps = step_checkpoints(run_dir)
    return steps[-1][1] if steps else None


def save_step_checkpoint(run_dir: str | os.PathLike, step: int, payload: dict, keep: int = 3) -> Path:
    """Write checkpoints/step_<step>.pt and latest.pt atomically; keep the last `keep` step files (<= 0: all)."""
    folder = checkpoint_dir(run_dir)
    path = save_checkpoint(folder / f"step_{int(step)}.pt", payload)
    latest = folder / "latest.pt"
    tmp = folder / f".latest.pt.{os.getpid()}.tmp"
    try:  # latest.pt: a hard link to the step file when the filesystem allows it, else a copy
        tmp.unlink(missing_ok=True)
        os.link(path, tmp)
        os.replace(tmp, latest)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write(latest, lambda f: f.write(path.read_bytes()))
    if keep > 0:
        for _, old in step_checkpoints(run_dir)[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def remove_stale_temp_files(run_dir: str | os.PathLike) -> None:
    """Delete temp files a killed process left in checkpoints/ (they never carry a final name)."""
    folder = checkpoint_dir(run_dir)
    for p in folder.glob(".*.tmp") if folder.is_dir() else []:
        p.unlink(missing_ok=True)
