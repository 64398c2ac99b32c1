"""Run logging: metrics.jsonl (always), a console progress bar or plain lines, and W&B.

W&B never blocks training: `online` without an API key, or whose server does not answer within
REACH_TIMEOUT seconds, becomes `offline` (one console line), init has a timeout, and any W&B failure prints one warning and leaves the JSONL log running.
Files land under `<run_dir>/wandb` (WANDB_DIR is set to the run directory).
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import netrc
import os
import secrets
import string
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from marl.core.errors import MarlError, first_line

WANDB_MODES = ("online", "offline", "disabled")
# Keys that differ between seeds / reruns of one experiment; left out of the W&B group hash.
_NOT_IN_GROUP = {"seed", "run_dir", "resume", "overwrite", "allow_config_change", "progress", "device", "workers", "wandb",
                 "wandb_project", "wandb_entity", "log_interval", "checkpoint_interval"}
_SHOW = (("train/return_mean", "ret"), ("eval/return_mean", "eval"))


def _plain(v: Any) -> Any:
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return v.tolist()  # numpy / torch scalars and arrays
    return v


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e5 or not math.isfinite(x) else f"{x:.3e}"
    return str(x)


def config_group(config: dict) -> str:
    """Stable W&B group for a config: '<algo>-<env>-<hash of the config without seed, run dir, ...>'."""
    def strip(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip(v) for k, v in sorted(d.items()) if k not in _NOT_IN_GROUP}
        return [strip(v) for v in d] if isinstance(d, (list, tuple)) else d

    digest = hashlib.sha1(json.dumps(strip(config), sort_keys=True, default=str).encode()).hexdigest()[:8]
    run = config.get("run", config) if isinstance(config.get("run"), dict) else config
    algo = run.get("algo") if isinstance(run.get("algo"), str) else ""
    env = str(run.get("env", "")).replace("/", "_").replace(":", "_")
    return "-".join(p for p in (algo, env, digest) if p)


def has_wandb_key() -> bool:
    """WANDB_API_KEY is set, or a netrc file has an entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    file = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        auth = netrc.netrc(file).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(mode: str) -> tuple[str, str | None]:
    """(mode to use, console note or None): online without a key falls back to offline."""
    mode = str(mode).strip().lower()
    if mode not in WANDB_MODES:
        raise MarlError(f"wandb mode '{mode}' is not one of {', '.join(WANDB_MODES)}", "use --wandb offline")
    if mode == "online" and not has_wandb_key():
        return "offline", ("W&B: no API key (WANDB_API_KEY or ~/.netrc), logging offline instead; "
                           "run `wandb login` to log online, or `wandb sync` the offline run later")
    if mode == "online" and (problem := _unreachable(_wandb_url(), REACH_TIMEOUT)):
        return "offline", (f"W&B: cannot reach {_wandb_url()} ({problem}), logging offline instead; "
                           "`wandb sync` the offline run once the network is back")
    return mode, None


REACH_TIMEOUT = 3.0  # seconds to wait for the W&B server before falling back to offline


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def _unreachable(url: str, timeout: float) -> str | None:
    """Why the W&B server at `url` gives no HTTP answer within `timeout` s, or None when it
    answers (any status). W&B's own init waits its full init_timeout (60 s) for a server it
    cannot reach."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # an answer, if not a welcome one: the server is there
    except (OSError, ValueError) as err:  # URLError, timeouts, refused connections, bad URLs
        reason = getattr(err, "reason", err)
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return None


class RunLogger:
    """One training run's logger. `log(step, metrics)` never raises because of W&B or the console."""

    def __init__(self, run_dir: str | os.PathLike, config: dict, wandb_mode: str = "offline",
                 project: str = "marl", entity: str = "", group: str = "", name: str = "",
                 total_steps: int = 0, progress: bool = True, start_step: int = 0,
                 init_timeout: float = 60.0, console_interval: float = 10.0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.total_steps, self.step, self._start_step = int(total_steps), int(start_step), int(start_step)
        self.latest: dict[str, Any] = {}
        self.console_interval = console_interval
        self._time_offset = _last_time(self.path)  # a resumed run continues its clock
        self._t0 = self._last_print = time.monotonic()
        self._printed_once = False
        self._file = open(self.path, "a", encoding="utf-8")
        self._bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_steps or None, initial=self.step, unit="step", unit_scale=True,
                             dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
        mode, note = resolve_wandb_mode(wandb_mode)
        if note:
            self._say(note, err=True)
        self.wandb_mode = mode
        self.wandb_run = None
        if mode != "disabled":
            self.wandb_run = self._init_wandb(mode, config, project, entity, group or config_group(config),
                                              name or self.run_dir.name, init_timeout)
        self._t0 = self._last_print = time.monotonic()  # W&B start-up is not training time

    @property
    def offset(self) -> int:
        """Bytes of metrics.jsonl written so far (a checkpoint records it: resume cuts the file back to it)."""
        return self._file.tell() if self._file is not None else self.path.stat().st_size

    # ------------------------------------------------------------------ W&B
    def _init_wandb(self, mode, config, project, entity, group, name, init_timeout):
        try:
            import wandb

            os.environ["WANDB_DIR"] = str(self.run_dir.resolve())
            id_file = self.run_dir / ".wandb_id"
            resumed = id_file.is_file() and mode == "online"  # offline: each session is its own run in the group
            run_id = id_file.read_text().strip() if resumed else "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            settings = wandb.Settings(init_timeout=init_timeout, finish_timeout=60.0, console="off", silent=True,
                                      disable_git=True, save_code=False)
            run = wandb.init(project=project or "marl", entity=entity or None, group=group, name=name,
                             config=config, dir=str(self.run_dir.resolve()), mode=mode, id=run_id,
                             resume="allow" if resumed else None,
                             reinit="create_new", settings=settings)
            id_file.write_text(run_id)
            run.define_metric("global_step")
            run.define_metric("*", step_metric="global_step")
            return run
        except Exception as e:  # noqa: BLE001 - W&B trouble must never stop training
            self._warn_wandb("init", e)
            return None

    def _warn_wandb(self, what: str, e: BaseException) -> None:
        reason = first_line(e, 160)
        self._say(f"warning: W&B {what} failed ({type(e).__name__}: {reason}); "
                  f"continuing with {self.path} only", err=True)

    def _wandb_log(self, step: int, metrics: dict) -> None:
        if self.wandb_run is None:
            return
        flat: dict[str, Any] = {"global_step": step}
        for k, v in metrics.items():
            if isinstance(v, (list, tuple)):  # per-agent lists -> key/0, key/1, ...
                flat.update({f"{k}/{i}": x for i, x in enumerate(v) if isinstance(x, (int, float))})
            elif isinstance(v, (int, float)):
                flat[k] = v
        try:
            self.wandb_run.log(flat)
        except Exception as e:  # noqa: BLE001
            self._warn_wandb("log", e)
            self.wandb_run = None

    # ------------------------------------------------------------------ console
    def _say(self, line: str, err: bool = False) -> None:
        stream = sys.stderr if err else sys.stdout
        if self._bar is not None:
            self._bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def _steps_per_s(self) -> float:
        if "perf/steps_per_s" in self.latest:
            return float(self.latest["perf/steps_per_s"])
        elapsed = time.monotonic() - self._t0
        return (self.step - self._start_step) / elapsed if elapsed > 0 else 0.0

    def _status(self) -> str:
        parts = [f"{k} {_fmt(self.latest[k])}" for k, _ in _SHOW if k in self.latest]
        return " | ".join([f"{self._steps_per_s():,.0f} steps/s"] + parts)

    def _console(self, metrics: dict) -> None:
        if self._bar is not None:
            self._bar.update(max(0, self.step - self._bar.n))
            short = [f"{s}={_fmt(self.latest[k])}" for k, s in _SHOW if k in self.latest]
            self._bar.set_postfix_str(" ".join(short), refresh=True)
            return
        now = time.monotonic()
        is_eval = any(k.startswith("eval/") for k in metrics)
        if is_eval or not self._printed_once or now - self._last_print >= self.console_interval:
            total = f"/{self.total_steps:,}" if self.total_steps else ""
            self._say(f"step {self.step:,}{total} | {self._status()}")
            self._last_print, self._printed_once = now, True

    # ------------------------------------------------------------------ public
    def elapsed(self) -> float:
        """Seconds of the run so far (across resumes): what a row logged now would hold as time_s."""
        return round(self._time_offset + time.monotonic() - self._t0, 3)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one event to metrics.jsonl, update the console, forward to W&B."""
        if self._file is None:
            raise RuntimeError("RunLogger.log called after close()")
        self.step = int(step)
        metrics = {str(k): _plain(v) for k, v in metrics.items()}
        record = {"step": self.step, "time_s": self.elapsed(), **metrics}
        line = json.dumps(record, default=str) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            from marl.checkpoint import disk_full_error, kept_checkpoint

            raise disk_full_error(self.run_dir, len(line.encode()), kept_checkpoint(self.run_dir), "metrics.jsonl") from None
        self.latest.update(metrics)
        self._console(metrics)
        self._wandb_log(self.step, metrics)

    def close(self, exit_code: int = 0) -> None:
        """Flush and close everything (idempotent). exit_code != 0 marks the W&B run as failed."""
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError:  # a full disk: the write that failed has already raised
            pass
        self._file = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._printed_once:
            self._say(f"done: step {self.step:,} | {self._status()}")
        run, self.wandb_run = self.wandb_run, None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
                if self.wandb_mode == "offline":
                    self._say(f"W&B offline run saved; upload with: wandb sync {Path(run.dir).parent}")
            except Exception as e:  # noqa: BLE001
                self._warn_wandb("finish", e)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_code=0 if exc_type is None else 1)


def _last_time(path: Path) -> float:
    """time_s of the last complete record of an existing metrics.jsonl (0 when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0.0
    for line in reversed(lines):
        try:
            return float(json.loads(line)["time_s"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0.0


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Every event of a run's metrics.jsonl (run dir or the file itself); a torn last line is skipped."""
    path = Path(run_dir)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise MarlError(f"metrics file {path} is missing", "point at a run directory written by marl train")
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a write cut short by a crash
    return records
