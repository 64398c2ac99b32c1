"""Training runs: `train(TrainConfig(...), algo_config)` is the Python API (notebooks) and
`marl train` maps its flags onto the same call; it runs a `marl.trainer.Trainer` (collect →
update → evaluate → log → checkpoint, in one run directory). This module holds the pieces
of a run the trainer uses (devices, building, resume, run directories) and `evaluate`.
"""
from __future__ import annotations

import dataclasses
from functools import partial
import random
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from marl import envs
from marl.algos import ALGOS
from marl.checkpoint import load_newest, remove_stale_temp_files, resolve_checkpoint, step_checkpoints
from marl.config import TrainConfig
from marl.configio import check_choices, flag, from_dict, load_yaml, save_yaml, to_dict
from marl.core.errors import MarlError, check
from marl.core.evaluator import BackgroundEvaluator, Evaluator
from marl.core.tempdirs import remove_stale_mp_dirs
from marl.core.rollout import evaluate as run_episodes
from marl.core.vec import EpisodeStats, VecEnv
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


def _evaluator(cfg: TrainConfig, make_fn, spec, device: torch.device):
    """Greedy evaluations of a run: in a background process, or with --workers 0 in this one."""
    num_envs, seed = _eval_envs(cfg, cfg.eval_episodes), cfg.seed + EVAL_SEED_OFFSET
    if cfg.workers == 0:
        return Evaluator(make_fn, spec, num_envs, cfg.eval_episodes, seed, device)
    return BackgroundEvaluator(make_fn, spec, num_envs, cfg.eval_episodes, seed)


def train(cfg: TrainConfig, algo_cfg=None, set_fields=None, **trainer_kw) -> dict:
    """Train `cfg.algo` on `cfg.env` (or the policies of `cfg.policies`); returns the final
    metrics. See TrainConfig for fields and `marl.trainer.Trainer` (which this runs) for
    `trainer_kw` (callbacks, policies, algo_configs).

    With `cfg.resume` the run's saved config is the base and `cfg` changes only the fields named
    in `set_fields` (None: those not at TrainConfig's defaults); see `resumed_configs`."""
    from marl.trainer import Trainer  # the trainer builds on this module's helpers

    return Trainer(cfg, algo_cfg, set_fields, **trainer_kw).run()


def _saved_algo_config(entry, saved: dict):
    """The algorithm config a run was saved with. A field added after the run was written
    takes the value that rebuilds the run's networks (the config's `saved_defaults`), not
    today's default."""
    older = {k: v for k, v in getattr(entry.config, "saved_defaults", {}).items() if k not in saved}
    return from_dict(entry.config, {**saved, **older})


def _saved_policies(ckpt: dict, path, spec, shuffle: bool, device: torch.device, num_envs: int, seed: int):
    """The joint policy a checkpoint of several policies acted with (greedy copies of its learners)."""
    from marl.core.policies import PolicyMap

    policies, agents = [], []
    for slot in ckpt["slots"].values():
        idx = [spec.agents.index(a) for a in slot["agents"]]
        agents.append(idx)
        if "model" not in slot:
            policies.append(slot["policy"])
            continue
        entry = ALGOS.get(slot["algo"])
        learner = entry.learner(_saved_algo_config(entry, slot["algo_config"]), spec.subset(idx), torch.device("cpu"), 0)
        _load_model(learner, slot["model"], path)
        policies.append(learner.policy())
    return PolicyMap(policies, agents, spec, num_envs, shuffle, seed).to(device)


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
    dev = resolve_device(device)
    if "slots" in ckpt:  # a run of several policies
        make_fn = envs.make_factory(cfg.env, **cfg.env_kwargs)
        vec = VecEnv(make_fn, 1, seed=cfg.seed, workers=0)
        vec.close()  # built for the spec
        joint = partial(_saved_policies, ckpt, path, vec.spec, cfg.seats == "shuffle", dev)
    else:
        entry = ALGOS.get(cfg.algo)
        make_fn, vec, learner = build(replace(cfg, workers=0), _saved_algo_config(entry, saved["algo"]), dev)
        vec.close()  # the training envs: built for the spec and the config's checks
        _load_model(learner, ckpt["model"], path)
        frozen = learner.policy().to(dev)
        joint = lambda num_envs, seed: frozen  # noqa: E731
    spec = vec.spec
    vec = VecEnv(make_fn, _eval_envs(cfg, episodes), seed=eval_seed, workers=0, spec=spec)
    try:
        eps = run_episodes(vec, joint(vec.num_envs, eval_seed), episodes, dev, seed=eval_seed)
    finally:
        vec.close()
    out = episode_metrics("eval", eps, spec.agents)
    if "slots" in ckpt:
        from marl.trainer import slot_metrics

        out.update(slot_metrics("eval", eps, list(ckpt["slots"]), spec.agents))
    policy = joint(1, eval_seed)
    if video:
        from marl.video import record_video

        try:
            out["video"] = record_video(cfg.env, cfg.env_kwargs, policy, dev, video, seed=eval_seed)
        except MarlError as err:
            err.partial = out
            raise
    return out
