"""Checkpoints: atomic writes, clear errors on load, `step_<N>.pt` files plus `latest.pt`.

Layout of a run: `<run_dir>/checkpoints/step_<N>.pt` (the last `keep` are kept) and
`latest.pt` (the newest, an independent copy: damage to one file is not damage to the other).
A file is written to a temp file in the same folder, flushed and fsynced, then renamed over the
final name: a crash leaves either the previous checkpoint or the new one under that name, never
a half-written file. A full disk is one error line naming the disk and the space needed; the
previous checkpoints stay. `load_newest` falls back to the newest checkpoint that loads.

Checkpoints are pickles (torch.save): they hold RNG states and config values besides
tensors, so only load checkpoints you trust.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import re
import secrets
import typing
from pathlib import Path
from typing import Any

import torch

from marl.core.errors import MarlError, first_line

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
        raise MarlError(f"{corrupt} ({type(e).__name__}: {first_line(e)})", fix) from None
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
    """Write checkpoints/step_<step>.pt and latest.pt (two independent atomic copies of the same
    bytes); keep the last `keep` step files (<= 0: all). A full disk raises one MarlError."""
    folder = checkpoint_dir(run_dir)
    path = folder / f"step_{int(step)}.pt"
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, "payload": payload}, buffer)
    data = buffer.getbuffer()
    try:
        for target in (path, folder / "latest.pt"):
            atomic_write(target, lambda f: f.write(data))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(folder, 2 * len(data), kept_checkpoint(run_dir)) from None
        raise
    if keep > 0:
        for _, old in step_checkpoints(run_dir)[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def kept_checkpoint(run_dir: str | os.PathLike) -> str:
    """What a run that stops now keeps, true for its checkpoints/ folder."""
    steps = step_checkpoints(run_dir)
    if steps:
        return f"the run keeps its checkpoint of step {steps[-1][0]} (continue with --resume)"
    return "the run has no checkpoint yet (nothing to resume; start it again)"


def disk_full_error(folder: Path, needed: int, kept: str, what: str = "a checkpoint") -> MarlError:
    """One line naming the disk (its mount point) holding `folder` and the space a write needs."""
    mount = Path(folder).resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    free = shutil.disk_usage(mount).free if mount.exists() else 0
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    return MarlError(f"no space left on the disk at {mount} to write {what} into {folder} "
                     f"(needs {mib(needed)}, {mib(free)} free)",
                     f"free at least {mib(max(needed - free, 0) or needed)} there (or pass a --run-dir on another disk); {kept}")


def load_newest(run_dir: str | os.PathLike) -> tuple[Path, dict, str]:
    """(path, payload, note) of the newest checkpoint of a run that loads: latest.pt, else the
    step files newest first. `note` is one line naming what was skipped ("" when nothing was).
    MarlError when none loads (the newest one's error) or the run has none."""
    folder = checkpoint_dir(Path(run_dir))
    candidates = [folder / "latest.pt"] if (folder / "latest.pt").is_file() else []
    candidates += [p for _, p in reversed(step_checkpoints(run_dir))]
    if not candidates:
        raise MarlError(f"no checkpoint in {run_dir}", "train first, or point at <run_dir>/checkpoints/latest.pt")
    failures: list[tuple[Path, MarlError]] = []
    for path in candidates:
        try:
            payload = load_checkpoint(path)
        except MarlError as err:
            failures.append((path, err))
            continue
        note = ""
        if failures:
            skipped = ", ".join(p.name for p, _ in failures)
            note = (f"note: {skipped} in {folder} did not load ({failures[0][1].problem.rpartition(' (')[2].rstrip(')')}); "
                    f"using {path.name} (step {payload.get('step', '?')})")
        return path, payload, note
    raise failures[0][1]


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, dict, str]:
    """(file, payload, note) for a path the user gave: a run directory, its checkpoints/ folder
    or its latest.pt mean the newest checkpoint that loads (`load_newest`); any other file is
    loaded as it is."""
    path = Path(path)
    if path.is_dir():
        run = path.parent if path.name == "checkpoints" and not (path / "checkpoints").is_dir() else path
        return load_newest(run)
    if path.name == "latest.pt" and path.parent.name == "checkpoints" and path.is_file():
        return load_newest(path.parent.parent)
    return path, load_checkpoint(path), ""


def remove_stale_temp_files(run_dir: str | os.PathLike) -> None:
    """Delete temp files a killed process left in checkpoints/ (they never carry a final name)."""
    folder = checkpoint_dir(run_dir)
    for p in folder.glob(".*.tmp") if folder.is_dir() else []:
        p.unlink(missing_ok=True)
