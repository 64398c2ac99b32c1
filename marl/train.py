"""The trainer: collect → update → evaluate → log → checkpoint, in one run directory.

`train(TrainConfig(...), algo_config)` is the Python API (notebooks); `marl train` maps
its flags onto the same call.
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from marl import envs
from marl.algos import ALGOS
from marl.checkpoint import kept_checkpoint, load_newest, remove_stale_temp_files, resolve_checkpoint, save_step_checkpoint, step_checkpoints
from marl.config import TrainConfig
from marl.configio import check_choices, flag, from_dict, load_yaml, save_yaml, to_dict
from marl.core.errors import MarlError, check
from marl.core.evaluator import BackgroundEvaluator, Evaluator
from marl.core.tempdirs import remove_stale_mp_dirs
from marl.core.rollout import Collector, evaluate as run_episodes
from marl.core.vec import EpisodeStats, VecEnv
from marl.logging import RunLogger, config_group
from marl.rundir import RunLock, check_run_dir, clear_run, mark

EVAL_SEED_OFFSET = 1_000_003
MAX_EVAL_ENVS = 128


def resolve_device(name: str) -> torch.device:
    """auto → cuda when available else cpu; cuda/cuda:N must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise MarlError(f"device '{name}' is not understood", "pass --device auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        check(torch.cuda.is_available(), f"device '{name}' requested but CUDA is not available", "pass --device cpu (or auto)")
        check(device.index is None or device.index < torch.cuda.device_count(), f"device '{name}' does not exist", f"pick cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def episode_metrics(prefix: str, episodes: list[EpisodeStats], agents: tuple[str, ...]) -> dict[str, float]:
    if not episodes:
        return {}
    out = {
        f"{prefix}/return_mean": float(np.mean([e.team_return for e in episodes])),
        f"{prefix}/return_std": float(np.std([e.team_return for e in episodes])),
        f"{prefix}/length_mean": float(np.mean([e.length for e in episodes])),
        f"{prefix}/episodes": len(episodes),
    }
    per_agent = np.mean([e.agent_returns for e in episodes], axis=0)
    out.update({f"{prefix}/return_{a}": float(r) for a, r in zip(agents, per_agent)})
    return out


def run_dir_for(cfg: TrainConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    env = cfg.env.replace("/", "-").replace(":", "-")
    return Path("runs") / f"{cfg.algo}-{env}-s{cfg.seed}"


def _finite(module: torch.nn.Module) -> bool:
    """Parameters and floating buffers (e.g. value statistics) hold no NaN or inf."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _resume_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """The newest checkpoint of a run that loads (one note line when a newer one did not)."""
    check(bool(step_checkpoints(run_dir)) or (run_dir / "checkpoints" / "latest.pt").is_file(),
          f"run directory {run_dir} has no checkpoint to resume from (the run stopped before its first one, or they were deleted)",
          "start a new run in another --run-dir (--overwrite would replace this one, its metrics.jsonl included)")
    path, payload, note = load_newest(run_dir)
    if note:
        print(note, file=sys.stderr)
    return path, payload


def _claim_run_dir(run_dir: Path, cfg: TrainConfig, holds_run: bool) -> RunLock:
    """Lock the run directory for this run, check it again under the lock (another run may have
    written it since), clear it for --overwrite, and mark it as marl's."""
    lock = RunLock(run_dir)
    try:
        check_run_dir(run_dir, cfg.resume, cfg.overwrite or holds_run)
        remove_stale_temp_files(run_dir)  # safe now: no other process writes here
        remove_stale_mp_dirs()  # forkserver folders of killed runs
        if holds_run and not cfg.resume:  # --overwrite, and everything validated: only now is the old run removed
            clear_run(run_dir)
        mark(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def _rewind_metrics(run_dir: Path, size: int | None) -> None:
    """Cut metrics.jsonl back to what it held when the checkpoint was written: the resumed run
    logs the later rows again (the same rows, since the resume is exact), so none is doubled."""
    path = run_dir / "metrics.jsonl"
    if size is not None and path.is_file() and path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)


# TrainConfig fields that do not change what is learned: a resume applies them as given
RESUME_SETTINGS = frozenset({"steps", "workers", "device", "run_dir", "overwrite", "resume", "allow_config_change",
                             "eval_interval", "eval_episodes", "eval_num_envs", "checkpoint_interval", "log_interval",
                             "wandb", "wandb_project", "wandb_entity", "torch_threads", "progress"})


def resumed_configs(saved: dict, cfg: TrainConfig, algo_cfg, set_fields=None) -> tuple[TrainConfig, object, dict]:
    """(run config, algorithm config, changes) for resuming the run saved as `saved` (its
    config.yaml). The saved run config is the base; the fields of `cfg` named in `set_fields`
    (None: those that differ from TrainConfig's defaults) replace its values. Settings
    (RESUME_SETTINGS) apply; a field that changes what is learned (algorithm, env, seed,
    num_envs, any hyperparameter of `algo_cfg`; None keeps the saved algorithm config) is
    refused unless `cfg.allow_config_change`. `changes` maps each such field to (saved, new)."""
    saved_cfg = from_dict(TrainConfig, saved["train"])
    default = TrainConfig()
    names = set(set_fields) if set_fields is not None else \
        {f.name for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) != getattr(default, f.name)}
    cfg = replace(saved_cfg, **{**{k: getattr(cfg, k) for k in names}, "resume": True})
    saved_algo = to_dict(_saved_algo_config(ALGOS.get(saved_cfg.algo), saved["algo"]))
    entry = ALGOS.get(cfg.algo)
    if algo_cfg is None:
        algo_cfg = from_dict(entry.config, saved_algo) if cfg.algo == saved_cfg.algo else entry.make_config()
    old_run, new_run, new_algo = to_dict(saved_cfg), to_dict(cfg), to_dict(algo_cfg)
    changes = {k: (old_run[k], new_run[k]) for k in old_run if k not in RESUME_SETTINGS and old_run[k] != new_run[k]}
    changes.update({k: (saved_algo.get(k), v) for k, v in new_algo.items() if saved_algo.get(k) != v})
    if changes and not cfg.allow_config_change:
        name, (old, new) = next(iter(changes.items()))
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise MarlError(f"--resume: {flag(name)} {_show(new)} differs from the run's {_show(old)}{more}, which changes what "
                        "the run learns", f"start a new run from its config (marl train --config {cfg.run_dir or '<run_dir>'}/config.yaml "
                        f"{flag(name)} {_show(new)} --run-dir NEW), or pass --allow-config-change to change this run "
                        "(recorded in its config_changes.yaml)")
    return cfg, algo_cfg, changes


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _record_changes(run_dir: Path, step: int, changes: dict) -> None:
    """Append a resume's accepted config changes to <run_dir>/config_changes.yaml."""
    path = run_dir / "config_changes.yaml"
    history = load_yaml(path) if path.is_file() else []
    history = (history if isinstance(history, list) else []) + [
        {"step": step, "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}]
    save_yaml(path, history)


def build(cfg: TrainConfig, algo_cfg, device: torch.device):
    """Env factory, vectorised envs and learner for a config (shared by train and evaluate)."""
    entry = ALGOS.get(cfg.algo)
    check(cfg.steps >= 1, f"steps must be at least 1, got {cfg.steps}", "pass --steps 1 or more")
    make_fn = envs.make_factory(cfg.env, **cfg.env_kwargs)
    vec = VecEnv(make_fn, cfg.num_envs, seed=cfg.seed, workers=cfg.workers)
    spec = vec.spec
    try:
        kind_ok = algo_cfg.discrete if spec.discrete else algo_cfg.continuous
        check(kind_ok, f"{cfg.algo} cannot handle the {spec.action_kind} actions of env '{cfg.env}'",
              f"pick an algorithm for {spec.action_kind} actions: {', '.join(_algos_for(spec.action_kind, spec.n_agents))}")
        check(not entry.multi_agent or spec.n_agents == 1,
              f"{cfg.algo} is a single-agent algorithm but env '{cfg.env}' has {spec.n_agents} agents ({', '.join(spec.agents)})",
              f"use its multi-agent counterpart: --algo {entry.multi_agent}")
        check_choices(algo_cfg)
        algo_cfg.validate(spec, cfg.num_envs)
    except MarlError:
        vec.close()
        raise
    _seed_everything(cfg.seed)
    learner = entry.learner(algo_cfg, spec, device, cfg.seed)
    return make_fn, vec, learner


def _algos_for(action_kind: str, n_agents: int) -> list[str]:
    """Registered names that handle an action kind (single-agent names only for one agent)."""
    return [name for name in ALGOS.names() if getattr(ALGOS.get(name).config, action_kind)
            and (n_agents == 1 or not ALGOS.get(name).multi_agent)]


def _eval_envs(cfg: TrainConfig, episodes: int) -> int:
    return cfg.eval_num_envs or min(episodes, MAX_EVAL_ENVS)


def _evaluator(cfg: TrainConfig, entry, algo_cfg, make_fn, spec, device: torch.device):
    """Greedy evaluations of a run: in a background process, or with --workers 0 in this one."""
    num_envs, seed = _eval_envs(cfg, cfg.eval_episodes), cfg.seed + EVAL_SEED_OFFSET
    if cfg.workers == 0:
        return Evaluator(make_fn, spec, num_envs, cfg.eval_episodes, seed, device)
    policy = partial(entry.learner, algo_cfg, spec, torch.device("cpu"), cfg.seed)
    return BackgroundEvaluator(make_fn, spec, policy, num_envs, cfg.eval_episodes, seed)


def train(cfg: TrainConfig, algo_cfg=None, set_fields=None) -> dict:
    """Train `cfg.algo` on `cfg.env`; returns the final metrics. See TrainConfig for fields.

    With `cfg.resume` the run's saved config is the base and `cfg` changes only the fields named
    in `set_fields` (None: those not at TrainConfig's defaults); see `resumed_configs`."""
    entry = ALGOS.get(cfg.algo)
    run_dir = run_dir_for(cfg)
    resume_from = None
    holds_run = check_run_dir(run_dir, cfg.resume, cfg.overwrite)
    changes: dict = {}
    if cfg.resume:
        resume_from, resume_ckpt = _resume_checkpoint(run_dir)  # a corrupt checkpoint fails here, before the run dir is touched
        cfg, algo_cfg, changes = resumed_configs(load_yaml(run_dir / "config.yaml"), cfg, algo_cfg, set_fields)
        entry = ALGOS.get(cfg.algo)
    algo_cfg = algo_cfg if algo_cfg is not None else entry.make_config()
    check(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}", "pass --seed 0 or more")
    check(cfg.eval_num_envs >= 0, f"eval_num_envs must be >= 0, got {cfg.eval_num_envs}", "pass --eval-num-envs 0 (one env per episode) or more")
    for name in ("num_envs", "eval_episodes"):
        check(getattr(cfg, name) >= 1, f"{name} must be at least 1, got {getattr(cfg, name)}", f"pass --{name.replace('_', '-')} 1 or more")
    device = resolve_device(cfg.device)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    make_fn, vec, learner = build(cfg, algo_cfg, device)
    try:
        lock = _claim_run_dir(run_dir, cfg, holds_run)
    except BaseException:
        vec.close()
        raise
    config = {"train": to_dict(cfg), "algo": {"name": cfg.algo, **to_dict(algo_cfg)}}
    logger = None
    try:
        # resume/overwrite are actions of this invocation, not settings: `--config <this file>` must not repeat them
        save_yaml(run_dir / "config.yaml", {"train": to_dict(replace(cfg, resume=False, overwrite=False, allow_config_change=False)),
                                            "algo": to_dict(algo_cfg)})
        collector = Collector(vec, learner, device)
        step = updates = 0
        last = {"log": 0, "eval": 0, "ckpt": 0}
        if resume_from is not None:
            ckpt = resume_ckpt
            _load_model(learner, ckpt["model"], resume_from)
            learner.load_extra_state(ckpt["extra"])
            collector.load_state_dict(ckpt["collector"])
            _set_rng_state(ckpt["rng"])
            step, updates = ckpt["step"], ckpt["updates"]
            last = {**dict.fromkeys(last, step), **ckpt.get("schedule", {})}
            _rewind_metrics(run_dir, ckpt.get("metrics_bytes"))
            if changes:
                _record_changes(run_dir, step, changes)
        group = config_group({**config["train"], "algo_config": config["algo"]})
        logger = RunLogger(run_dir, config, wandb_mode=cfg.wandb, project=cfg.wandb_project, entity=cfg.wandb_entity,
                           group=group, name=run_dir.name, total_steps=cfg.steps, progress=cfg.progress, start_step=step)
        evals = _evaluator(cfg, entry, algo_cfg, make_fn, vec.spec, device) if cfg.eval_interval > 0 else None
    except BaseException:
        for close in (vec.close, lock.release, *((logger.close,) if logger is not None else ())):
            close()
        raise
    per_update = algo_cfg.rollout_len * cfg.num_envs
    # episodes finished since the last log row (a resumed run continues the checkpoint's)
    window: list[EpisodeStats] = list(resume_ckpt.get("window", [])) if resume_from is not None else []
    t_start, steps_at_start = time.perf_counter(), step
    train_time = 0.0
    final: dict = {}

    def log_evals() -> None:
        """Log the evaluations started so far (waiting for those in flight): at fixed points of
        the loop, so that the rows of metrics.jsonl do not depend on how long one took."""
        nonlocal final
        for at, eps in evals.results() if evals is not None else ():
            final = episode_metrics("eval", eps, vec.spec.agents)
            logger.log(at, final)

    def start_eval() -> None:
        log_evals()  # at most one in flight
        evals.start(step, learner)
        last["eval"] = step

    def save() -> None:
        # an evaluation of this very step may still run: the checkpoint says so, and a resumed
        # run redoes it (its parameters are the checkpoint's); one of an earlier step (other
        # parameters) and the run's last one are logged first
        if step >= cfg.steps or (evals is not None and any(at < step for at in evals.pending)):
            log_evals()
        payload = {"version": 1, "step": step, "updates": updates, "model": learner.state_dict(), "extra": learner.extra_state(),
                   "collector": collector.state_dict(), "rng": _rng_state(), "config": {"train": to_dict(cfg), "algo": to_dict(algo_cfg)},
                   "eval_pending": evals is not None and bool(evals.pending),
                   "schedule": dict(last), "metrics_bytes": logger.offset, "window": list(window)}
        save_step_checkpoint(run_dir, step, payload)

    exit_code = 1
    try:
        if evals is not None and (step == 0 or (resume_from is not None and resume_ckpt.get("eval_pending"))):
            start_eval()
        while step < cfg.steps:
            t0 = time.perf_counter()
            batch, episodes = collector.collect(algo_cfg.rollout_len)
            metrics = learner.update(batch)
            bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
            if not bad and not _finite(learner):
                bad = ["parameters"]  # never checkpoint a diverged model
            if bad:
                raise MarlError(f"training diverged: {', '.join(bad)} became non-finite at env step {step + per_update}",
                                f"lower --lr (or --max-grad-norm); {kept_checkpoint(run_dir)}")
            train_time += time.perf_counter() - t0
            step += per_update
            updates += 1
            window.extend(episodes)
            if step - last["log"] >= cfg.log_interval or step >= cfg.steps:
                log_evals()
                elapsed = time.perf_counter() - t_start
                logger.log(step, {**episode_metrics("train", window, vec.spec.agents), **metrics,
                                  "perf/steps_per_s": (step - steps_at_start) / max(train_time, 1e-9),
                                  "perf/wall_steps_per_s": (step - steps_at_start) / max(elapsed, 1e-9), "perf/updates": updates})
                window, last["log"] = [], step
            if evals is not None and (step - last["eval"] >= cfg.eval_interval or step >= cfg.steps):
                start_eval()
            if step - last["ckpt"] >= cfg.checkpoint_interval or step >= cfg.steps:
                save()
                last["ckpt"] = step
        log_evals()
        exit_code = 0
    finally:
        logger.close(exit_code)
        vec.close()
        if evals is not None:
            evals.close()
        lock.release()
    return {"step": step, "run_dir": str(run_dir), **final}


def _saved_algo_config(entry, saved: dict):
    """The algorithm config a run was saved with. A field added after the run was written
    takes the value that rebuilds the run's networks (the config's `saved_defaults`), not
    today's default."""
    older = {k: v for k, v in getattr(entry.config, "saved_defaults", {}).items() if k not in saved}
    return from_dict(entry.config, {**saved, **older})


def _load_model(learner: torch.nn.Module, state: dict, path) -> None:
    """Load a checkpoint's weights; networks that do not match are one line, not a traceback."""
    problem = f"checkpoint {path} does not fit the networks this marl builds from its config"
    fix = "evaluate or resume it with the marl version that wrote it"
    want, have = set(learner.state_dict()), set(state)
    check(want == have, f"{problem} (missing {sorted(want - have)[:2]}, unexpected {sorted(have - want)[:2]})", fix)
    try:
        learner.load_state_dict(state)
    except RuntimeError as e:  # same names, other shapes
        raise MarlError(f"{problem} ({str(e).splitlines()[-1].strip()})", fix) from None


def evaluate(checkpoint: str, episodes: int = 32, video: str = "", device: str = "auto", seed: int | None = None) -> dict:
    """Load a checkpoint, run `episodes` greedy episodes, optionally render one to `video`.
    The episodes are those the run's own evaluations ran (with as many episodes), or with
    `seed` those of a run with that seed. A run directory (or its latest.pt) means its newest
    checkpoint that loads. When the video fails, the MarlError carries the returns (`.partial`)."""
    if video:
        folder = Path(video).parent
        check(folder.is_dir(), f"--video {video}: the folder {folder} does not exist", "create it first, or write the video into an existing folder")
    path, ckpt, note = resolve_checkpoint(checkpoint)
    if note:
        print(note, file=sys.stderr)
    saved = ckpt["config"]
    cfg = from_dict(TrainConfig, saved["train"])
    check(seed is None or seed >= 0, f"seed must be >= 0, got {seed}", "pass --seed 0 or more")
    eval_seed = (cfg.seed if seed is None else seed) + EVAL_SEED_OFFSET
    entry = ALGOS.get(cfg.algo)
    algo_cfg = _saved_algo_config(entry, saved["algo"])
    dev = resolve_device(device)
    make_fn, vec, learner = build(replace(cfg, workers=0), algo_cfg, dev)
    vec.close()  # the training envs: built for the spec and the config's checks
    _load_model(learner, ckpt["model"], path)
    vec = VecEnv(make_fn, _eval_envs(cfg, episodes), seed=eval_seed, workers=0, spec=vec.spec)
    try:
        eps = run_episodes(vec, learner, episodes, dev, seed=eval_seed)
    finally:
        vec.close()
    out = episode_metrics("eval", eps, vec.spec.agents)
    if video:
        from marl.video import record_video

        try:
            out["video"] = record_video(cfg.env, cfg.env_kwargs, learner, dev, video, seed=eval_seed)
        except MarlError as err:
            err.partial = out
            raise
    return out
