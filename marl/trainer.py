"""The trainer as an object: stages collect → update → evaluate → log → checkpoint, callbacks,
several policies (learners and frozen ones) at once, and `step()` for an outer loop.

    with Trainer(TrainConfig(env="mpe2/simple_tag_v3", policies="adversary=ippo agent=random")) as t:
        while not t.done:
            t.step()

`marl.train.train(cfg, algo_cfg)` is `Trainer(cfg, algo_cfg).run()`. Without `policies` one
learner controls every agent and acts on the whole batch (the collector calls it directly).
With `policies` each slot (marl.agentmap) is a learner or a frozen policy built on the
sub-spec of its agents; a `PolicyMap` calls each once per step on its agents' rows, and each
learner updates from its own agents' rows only (`slot_batch`).

Callbacks follow `Callback`: objects with any of its hooks, which the trainer calls at its
stages, and whose state the checkpoints keep.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import math
import time
from dataclasses import replace
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from marl import agentmap, envs
from marl.algos import ALGOS
from marl.checkpoint import kept_checkpoint, save_step_checkpoint
from marl.config import TrainConfig
from marl.configio import check_choices, load_yaml, save_yaml, to_dict
from marl.core.errors import MarlError, check
from marl.core.policies import PolicyMap, fits, slot_batch
from marl.core.rollout import Collector, evaluate as run_episodes
from marl.core.vec import EpisodeStats, VecEnv
from marl.logging import RunLogger, config_group
from marl.train import (EVAL_SEED_OFFSET, _claim_run_dir, _eval_envs, _evaluator, _finite, _load_model, _record_changes,
                        _resume_checkpoint, _rewind_metrics, _rng_state, _seed_everything, _set_rng_state, build,
                        episode_metrics, resolve_device, resumed_configs, run_dir_for)
from marl.rundir import check_run_dir


def slot_metrics(prefix: str, episodes: Sequence[EpisodeStats], names: Sequence[str], agents: Sequence[str]) -> dict[str, float]:
    """Per policy: the mean return of its agents (`<prefix>/<slot>/return_mean`) and, in a zero-sum
    game (every episode's returns sum to 0, some are not 0), its win / draw / loss rates (its
    return > 0, = 0, < 0); per team (agent-name prefix) not named by a policy, when there are
    several: `<prefix>/team_<team>/return_mean`."""
    if not episodes or episodes[0].owner is None:
        return {}
    returns = np.array([ep.agent_returns for ep in episodes], np.float64)
    owners = np.array([ep.owner for ep in episodes])
    zero_sum = bool(np.allclose(returns.sum(1), 0.0, atol=1e-6) and np.any(returns != 0))
    out = {}
    for k, name in enumerate(names):
        r = (returns * (owners == k)).sum(1)
        out[f"{prefix}/{name}/return_mean"] = float(r.mean())
        if zero_sum:
            out.update({f"{prefix}/{name}/win_rate": float((r > 0).mean()), f"{prefix}/{name}/draw_rate": float((r == 0).mean()),
                        f"{prefix}/{name}/loss_rate": float((r < 0).mean())})
    groups = agentmap.teams(agents)
    if len(groups) > 1:
        out.update({f"{prefix}/team_{t}/return_mean": float(returns[:, idx].sum(1).mean()) for t, idx in groups.items() if t not in names})
    return out


class Callback(Protocol):
    """What a trainer callback may define: each hook is optional (the trainer calls the ones an
    object has, in the order of `callbacks`) and gets the trainer first. Define only the hooks
    you need, on a class of your own rather than a subclass of this one: having `on_evaluate`
    changes when evaluations are collected."""

    def on_step_start(self, t: "Trainer") -> None:
        """Before each iteration's rollout (e.g. swap an opponent with `t.set_policy`)."""

    def on_collect(self, t: "Trainer", batch: dict, episodes: list[EpisodeStats]) -> None:
        """After the rollout, with its batch and the episodes that ended in it."""

    def on_update(self, t: "Trainer", metrics: dict[str, float]) -> None:
        """After the learners' updates; keys added to `metrics` are logged when this step writes a row."""

    def on_evaluate(self, t: "Trainer", step: int, episodes: list[EpisodeStats]) -> dict[str, float] | None:
        """An evaluation of the policies of env step `step`; a returned dict joins its row. With
        this hook the trainer waits for each evaluation right after starting it, so the hook
        sees it at the same point of every run, resumed or not."""

    def on_log(self, t: "Trainer", step: int, row: dict[str, float]) -> None:
        """A training row, before it is written."""

    def on_checkpoint(self, t: "Trainer", payload: dict) -> None:
        """A checkpoint, before it is saved."""

    def state_dict(self) -> dict:
        """State kept in every checkpoint (`payload["callbacks"]`)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` on `--resume`."""


@contextlib.contextmanager
def frozen_heap():
    """The objects alive when training starts (imported modules, envs, networks: ~220k on a
    connect-four self-play run) left out of Python's garbage collections until it ends
    (gc.freeze): a full collection otherwise walks all of them, ~0.1 s each there."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Trainer:
    """One run: `step()` runs one iteration (collect, update, log, evaluate, checkpoint as their
    schedules say); `run()` steps until `cfg.steps` and closes. Attributes an outer loop or a
    callback reads: `step_count` (env steps), `updates`, `cfg`, `spec`, `run_dir`, `slots`
    (names), `learners` (slot name → learner), `policy(name)`; `set_policy(name, policy)`
    swaps a frozen slot's policy, `play(...)` runs greedy episodes with chosen policies.

    `policies` (Python API) replaces `cfg.policies`: a list of (pattern, choice) where a choice
    may also be a policy object or a callable `f(spec) -> policy`; `algo_configs` maps a slot
    name to its learner's config (else `algo_cfg` for learners of `cfg.algo`, the preset with
    `algo_cfg.rollout_len` for others: every learner learns from the same rollouts).
    """

    def __init__(self, cfg: TrainConfig, algo_cfg=None, set_fields=None, callbacks: Sequence[Callback] = (),
                 policies: Sequence[tuple[str, Any]] | None = None, algo_configs: dict | None = None):
        entry = ALGOS.get(cfg.algo)
        run_dir = run_dir_for(cfg)
        self.resume_from, ckpt = None, {}
        holds_run = check_run_dir(run_dir, cfg.resume, cfg.overwrite)
        changes: dict = {}
        if cfg.resume:
            self.resume_from, ckpt = _resume_checkpoint(run_dir)  # a corrupt checkpoint fails here, before the run dir is touched
            cfg, algo_cfg, changes = resumed_configs(load_yaml(run_dir / "config.yaml"), cfg, algo_cfg, set_fields)
            entry = ALGOS.get(cfg.algo)
        algo_cfg = algo_cfg if algo_cfg is not None else entry.make_config()
        check(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}", "pass --seed 0 or more")
        check(cfg.eval_num_envs >= 0, f"eval_num_envs must be >= 0, got {cfg.eval_num_envs}", "pass --eval-num-envs 0 (one env per episode) or more")
        for name in ("num_envs", "eval_episodes"):
            check(getattr(cfg, name) >= 1, f"{name} must be at least 1, got {getattr(cfg, name)}", f"pass --{name.replace('_', '-')} 1 or more")
        if policies is not None and all(isinstance(c, str) for _, c in policies):  # config.yaml records the map
            cfg = replace(cfg, policies=" ".join(f"{p}={c}" for p, c in policies))
        device = resolve_device(cfg.device)
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        self.cfg, self.algo_cfg, self.device, self.run_dir = cfg, algo_cfg, device, run_dir
        self.callbacks = list(callbacks)
        entries = policies if policies is not None else (agentmap.parse(cfg.policies) if cfg.policies else None)
        if entries is None:
            self.make_fn, self.vec, learner = build(cfg, algo_cfg, device)
            self.pmap, self.slots, self.learners, self.slot_cfgs = None, ["all"], {"all": learner}, {"all": (cfg.algo, algo_cfg)}
        else:
            self._build_slots(entries, algo_configs or {})
        self.spec = self.vec.spec
        try:
            self.lock = _claim_run_dir(run_dir, cfg, holds_run)
        except BaseException:
            self.vec.close()
            raise
        config = {"train": to_dict(cfg), "algo": {"name": cfg.algo, **to_dict(algo_cfg)}}
        self.logger, self.evals, self._play_vec = None, None, None
        try:
            # resume/overwrite are actions of this invocation, not settings: `--config <this file>` must not repeat them
            save_yaml(run_dir / "config.yaml", {"train": to_dict(replace(cfg, resume=False, overwrite=False, allow_config_change=False)),
                                                "algo": to_dict(algo_cfg)})
            self.collector = Collector(self.vec, self.pmap if self.pmap is not None else self.learners["all"], device)
            self.step_count = self.updates = 0
            self.last = {"log": 0, "eval": 0, "ckpt": 0}
            if self.resume_from is not None:
                self._load(ckpt)
                _rewind_metrics(run_dir, ckpt.get("metrics_bytes"))
                if changes:
                    _record_changes(run_dir, self.step_count, changes)
            group = config_group({**config["train"], "algo_config": config["algo"]})
            self.logger = RunLogger(run_dir, config, wandb_mode=cfg.wandb, project=cfg.wandb_project, entity=cfg.wandb_entity,
                                    group=group, name=run_dir.name, total_steps=cfg.steps, progress=cfg.progress, start_step=self.step_count)
            self.evals = _evaluator(cfg, self.make_fn, self.spec, device) if cfg.eval_interval > 0 else None
        except BaseException:
            for close in (self.vec.close, self.lock.release, *((self.logger.close,) if self.logger is not None else ())):
                close()
            raise
        self.rollout_len = next(iter(self.slot_cfgs.values()))[1].rollout_len
        self.per_update = self.rollout_len * cfg.num_envs
        # episodes finished since the last log row (a resumed run continues the checkpoint's)
        self.window: list[EpisodeStats] = list(ckpt.get("window", []))
        self._t_start, self._steps_at_start, self._train_time = time.perf_counter(), self.step_count, 0.0
        self.final: dict = {}
        self._eval_started: dict[int, float] = {}  # env step of an evaluation in flight -> run seconds when it started
        if self.evals is not None and (self.step_count == 0 or ckpt.get("eval_pending")):
            self.evaluate()

    # -- building ---------------------------------------------------------------------------
    def _build_slots(self, entries, algo_configs: dict) -> None:
        cfg = self.cfg
        check(cfg.steps >= 1, f"steps must be at least 1, got {cfg.steps}", "pass --steps 1 or more")
        self.make_fn = envs.make_factory(cfg.env, **cfg.env_kwargs)
        self.vec = VecEnv(self.make_fn, cfg.num_envs, seed=cfg.seed, workers=cfg.workers)
        spec = self.vec.spec
        try:
            slots = agentmap.assign(entries, spec.agents)
            if cfg.seats == "shuffle":
                check(len(set(spec.obs_dims)) == 1 and len(set(spec.action_sizes)) == 1,
                      f"--seats shuffle needs agents with equal spaces, but env '{cfg.env}' has observation sizes {list(spec.obs_dims)} "
                      f"and action sizes {list(spec.action_sizes)}", "use --seats fixed")
            _seed_everything(cfg.seed)
            self.slots, self.learners, self.slot_cfgs, policies = [s.name for s in slots], {}, {}, []
            for k, slot in enumerate(slots):
                sub = spec.subset(slot.agents)
                if agentmap.is_learner(slot.choice):
                    entry = ALGOS.get(slot.choice)
                    algo_cfg = algo_configs.get(slot.name) or (self.algo_cfg if slot.choice == cfg.algo else
                                                                entry.make_config(rollout_len=self.algo_cfg.rollout_len))
                    kind_ok = algo_cfg.discrete if sub.discrete else algo_cfg.continuous
                    check(kind_ok, f"{slot.choice} cannot handle the {sub.action_kind} actions of env '{cfg.env}'",
                          f"pick an algorithm for {sub.action_kind} actions (marl train --help lists them)")
                    check_choices(algo_cfg)
                    algo_cfg.validate(sub, cfg.num_envs)
                    learner = entry.learner(algo_cfg, sub, self.device, cfg.seed + k)
                    self.learners[slot.name], self.slot_cfgs[slot.name] = learner, (slot.choice, algo_cfg)
                    policies.append(learner)
                else:
                    policies.append(agentmap.frozen_policy(slot.choice, sub, slot.name, self.device, cfg.seed + 7919 * (k + 1)))
            check(bool(self.learners), f"--policies gives no agent to a learner ({cfg.policies})",
                  "name an algorithm for at least one team, e.g. adversary=ippo")
            lens = {name: c.rollout_len for name, (_, c) in self.slot_cfgs.items()}
            check(len(set(lens.values())) == 1, f"the learners collect rollouts of different lengths {lens}",
                  "give every learner the same rollout_len")
            self.slot_agents = [s.agents for s in slots]
            self.pmap = PolicyMap(policies, self.slot_agents, spec, cfg.num_envs, cfg.seats == "shuffle", cfg.seed)
        except BaseException:
            self.vec.close()
            raise

    # -- the policies -----------------------------------------------------------------------
    def policy(self, name: str) -> Any:
        """The acting policy of a slot now: a frozen copy of a learner's, or the frozen one."""
        if name in self.learners:
            return self.learners[name].policy()
        return self.pmap.policies[self.slots.index(name)]

    def set_policy(self, name: str, policy: Any) -> None:
        """Let `policy` (built on `spec.subset` of the slot's agents) act for a frozen slot from now
        on (its recurrent state starts afresh). The checkpoint keeps it, so a resume continues with it."""
        check(self.pmap is not None and name in self.slots, f"no policy slot '{name}'", f"slots: {', '.join(self.slots)}")
        check(name not in self.learners, f"slot '{name}' is a learner; only a frozen slot's policy can be swapped",
              "give the opponent its own --policies entry (e.g. random) and swap that one")
        k = self.slots.index(name)
        fits(f"the policy for slot '{name}'", policy, self.pmap.specs[k], self.device)
        self.pmap.policies[k] = policy
        self.collector.hidden[k] = policy.initial_hidden(self.cfg.num_envs)

    def _eval_policy(self, overrides: dict | None = None, num_envs: int | None = None, seed: int = 0) -> Any:
        """A frozen copy of the joint policy for evaluation (overrides: slot name → policy)."""
        if self.pmap is None:
            return self.learners["all"].policy()
        overrides = overrides or {}
        policies = [copy.deepcopy(overrides[n]) if n in overrides else
                    self.learners[n].policy() if n in self.learners else copy.deepcopy(self.pmap.policies[k])
                    for k, n in enumerate(self.slots)]
        pmap = PolicyMap(policies, self.slot_agents, self.spec, num_envs or _eval_envs(self.cfg, self.cfg.eval_episodes),
                         self.pmap.shuffle, seed)
        return pmap.to(torch.device("cpu"))

    def play(self, overrides: dict | None = None, episodes: int | None = None, seed: int | None = None) -> list[EpisodeStats]:
        """Greedy episodes in this process with the current policies, `overrides` (slot name →
        policy) in their slots; each EpisodeStats has `owner` (slot index per agent)."""
        episodes = episodes or self.cfg.eval_episodes
        seed = self.cfg.seed + EVAL_SEED_OFFSET if seed is None else seed
        num_envs = _eval_envs(self.cfg, episodes)
        if self._play_vec is None or self._play_vec.num_envs != num_envs:
            if self._play_vec is not None:
                self._play_vec.close()
            self._play_vec = VecEnv(self.make_fn, num_envs, seed=seed, workers=0, spec=self.spec)
        policy = self._eval_policy(overrides, num_envs, seed)
        policy = policy.to(self.device)
        return run_episodes(self._play_vec, policy, episodes, self.device, seed=seed)

    # -- stages ---------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.step_count >= self.cfg.steps

    def _callbacks(self, hook: str, *args) -> list:
        return [getattr(cb, hook)(self, *args) for cb in self.callbacks if hasattr(cb, hook)]

    def collect(self) -> tuple[dict, list[EpisodeStats]]:
        batch, episodes = self.collector.collect(self.rollout_len)
        self._callbacks("on_collect", batch, episodes)
        return batch, episodes

    def update(self, batch: dict) -> dict[str, float]:
        """Each learner's update on its own rows; a non-finite loss stops the run (parameters made
        non-finite by an update give a non-finite loss at the next one, and `checkpoint` checks
        them: a diverged model is never saved)."""
        metrics: dict[str, float] = {}
        for k, name in enumerate(self.slots):
            learner = self.learners.get(name)
            if learner is None:
                continue
            own = learner.update(batch if self.pmap is None else slot_batch(batch, self.pmap, k))
            self._stop_if_diverged(name, sorted(k for k, v in own.items() if not math.isfinite(v)), self.step_count + self.per_update)
            metrics.update(own if self.pmap is None else {f"{name}/{key}": v for key, v in own.items()})
        self._callbacks("on_update", metrics)
        return metrics

    def _stop_if_diverged(self, name: str, bad: list[str], step: int) -> None:
        if bad:
            where = "" if self.pmap is None else f" ({name})"
            raise MarlError(f"training diverged{where}: {', '.join(bad)} became non-finite at env step {step}",
                            f"lower --lr (or --max-grad-norm); {kept_checkpoint(self.run_dir)}")

    def _episode_metrics(self, prefix: str, episodes: list[EpisodeStats]) -> dict[str, float]:
        out = episode_metrics(prefix, episodes, self.spec.agents)
        if self.pmap is not None:
            out.update(slot_metrics(prefix, episodes, self.slots, self.spec.agents))
        return out

    def log_evals(self) -> None:
        """Log the evaluations started so far (waiting for those in flight): at fixed points of
        the loop, so that the rows of metrics.jsonl do not depend on how long one took."""
        for at, eps in self.evals.results() if self.evals is not None else ():
            row = self._episode_metrics("eval", eps)
            if at in self._eval_started:  # when the evaluated policy was taken (time_s is when the row is written)
                row["perf/eval_policy_time_s"] = self._eval_started.pop(at)
            for extra in self._callbacks("on_evaluate", at, eps):
                row.update(extra or {})
            self.final = row
            self.logger.log(at, row)

    def evaluate(self) -> None:
        """Start a greedy evaluation of the current policies (logged by `log_evals`)."""
        self.log_evals()  # at most one in flight
        seed = self.cfg.seed + EVAL_SEED_OFFSET
        self._eval_started[self.step_count] = self.logger.elapsed()
        self.evals.start(self.step_count, self._eval_policy(seed=seed))
        self.last["eval"] = self.step_count
        if any(hasattr(cb, "on_evaluate") for cb in self.callbacks):
            self.log_evals()  # the callbacks see each evaluation at once: at the same point of every run, resumed or not

    def log(self, metrics: dict[str, float]) -> None:
        self.log_evals()
        step = self.step_count
        elapsed = time.perf_counter() - self._t_start
        row = {**self._episode_metrics("train", self.window), **metrics,
               "perf/steps_per_s": (step - self._steps_at_start) / max(self._train_time, 1e-9),
               "perf/wall_steps_per_s": (step - self._steps_at_start) / max(elapsed, 1e-9), "perf/updates": self.updates}
        self._callbacks("on_log", step, row)
        self.logger.log(step, row)
        self.window, self.last["log"] = [], step

    def checkpoint(self) -> None:
        for name, learner in self.learners.items():  # never save a diverged model
            self._stop_if_diverged(name, [] if _finite(learner) else ["parameters"], self.step_count)
        # an evaluation of this very step may still run: the checkpoint says so, and a resumed
        # run redoes it (its parameters are the checkpoint's); one of an earlier step (other
        # parameters) and the run's last one are logged first
        evals = self.evals
        if self.done or (evals is not None and any(at < self.step_count for at in evals.pending)):
            self.log_evals()
        payload = {"version": 1, "step": self.step_count, "updates": self.updates, "collector": self.collector.state_dict(),
                   "rng": _rng_state(), "config": {"train": to_dict(self.cfg), "algo": to_dict(self.algo_cfg)},
                   "eval_pending": evals is not None and bool(evals.pending),
                   "schedule": dict(self.last), "metrics_bytes": self.logger.offset, "window": list(self.window)}
        if self.pmap is None:
            learner = self.learners["all"]
            payload.update(model=learner.state_dict(), extra=learner.extra_state())
        else:
            payload["slots"] = {name: self._slot_state(k, name) for k, name in enumerate(self.slots)}
            payload["seats"] = self.pmap.seat_state()
        payload["callbacks"] = [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.callbacks]
        self._callbacks("on_checkpoint", payload)
        save_step_checkpoint(self.run_dir, self.step_count, payload)
        self.last["ckpt"] = self.step_count

    def _slot_state(self, k: int, name: str) -> dict:
        learner = self.learners.get(name)
        agents = [self.spec.agents[i] for i in self.slot_agents[k]]
        if learner is None:
            return {"agents": agents, "policy": self.pmap.policies[k]}  # the frozen policy itself (it may have been swapped)
        algo, algo_cfg = self.slot_cfgs[name]
        return {"agents": agents, "algo": algo, "algo_config": to_dict(algo_cfg), "model": learner.state_dict(),
                "extra": learner.extra_state()}

    def _load(self, ckpt: dict) -> None:
        if self.pmap is None:
            learner = self.learners["all"]
            _load_model(learner, ckpt["model"], self.resume_from)
            learner.load_extra_state(ckpt["extra"])
        else:
            slots = ckpt.get("slots", {})
            check(set(slots) == set(self.slots), f"checkpoint {self.resume_from} holds the policies {sorted(slots)}, not {self.slots}",
                  "resume with the run's own --policies")
            for k, name in enumerate(self.slots):
                if name in self.learners:
                    _load_model(self.learners[name], slots[name]["model"], self.resume_from)
                    self.learners[name].load_extra_state(slots[name]["extra"])
                else:
                    self.pmap.policies[k] = slots[name]["policy"]
            self.pmap.load_seat_state(ckpt["seats"])
        self.collector.load_state_dict(ckpt["collector"])
        _set_rng_state(ckpt["rng"])
        self.step_count, self.updates = ckpt["step"], ckpt["updates"]
        self.last = {**dict.fromkeys(self.last, self.step_count), **ckpt.get("schedule", {})}
        for cb, state in zip(self.callbacks, ckpt.get("callbacks") or []):
            if state is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(state)

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One iteration: collect a rollout, update every learner, then log, evaluate and
        checkpoint where their intervals (or the run's end) say. Returns the update's metrics."""
        cfg = self.cfg
        self._callbacks("on_step_start")
        t0 = time.perf_counter()
        batch, episodes = self.collect()
        metrics = self.update(batch)
        self._train_time += time.perf_counter() - t0
        self.step_count += self.per_update
        self.updates += 1
        self.window.extend(episodes)
        if self.step_count - self.last["log"] >= cfg.log_interval or self.done:
            self.log(metrics)
        if self.evals is not None and (self.step_count - self.last["eval"] >= cfg.eval_interval or self.done):
            self.evaluate()
        if self.step_count - self.last["ckpt"] >= cfg.checkpoint_interval or self.done:
            self.checkpoint()
        return metrics

    def run(self) -> dict:
        """Step until `cfg.steps`, close, and return the final metrics (the last evaluation's)."""
        with self, frozen_heap():
            while not self.done:
                self.step()
            self.log_evals()
        return {"step": self.step_count, "run_dir": str(self.run_dir), **self.final}

    def close(self, exit_code: int = 0) -> None:
        self.logger.close(exit_code)
        self.vec.close()
        if self._play_vec is not None:
            self._play_vec.close()
        if self.evals is not None:
            self.evals.close()
        self.lock.release()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(0 if exc_type is None else 1)

