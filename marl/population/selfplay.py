"""Self-play against an opponent pool, for two-player games, on the trainer's policy slots.

A self-play run is a `marl.trainer.Trainer` with two slots and `seats="shuffle"`: the
learner's slot (the first agent's name) and the opponents' slot (the second's), whose policy
is a `PoolPolicy`; each env redraws which seat the learner takes when its episode ends (the
trainer's `PolicyMap`), and the learner updates from its own rows only. `PoolPolicy` plays a
pool member per env, redrawn with the pool's sampling when the env's episode ends; each
member in use acts once per step on the rows of its envs. The `SelfPlay` callback feeds the
results of training games into the pool's win rates, adds snapshots (`learner.policy()`
state dicts) on a schedule or past a win rate, and at every evaluation plays greedy matches
of the learner against every member and fixed opponent, each game updating OpenSkill
ratings. The pool policy (pool, sampler, per-env opponents, generators) is the opponent
slot's policy, which the trainer's checkpoints keep; the ratings are the callback's state.
"""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from marl.configio import load_yaml, save_yaml, to_dict
from marl.core.errors import MarlError, check
from marl.core.policies import fits
from marl.core.rollout import Policy
from marl.core.spec import EnvSpec
from marl.core.vec import EpisodeStats, VecEnv
from marl.population.pool import Member, OpponentPool, Sampling
from marl.population.ratings import LEARNER, Ratings


@dataclass(frozen=True)
class SelfPlayConfig:
    self_play: bool = False
    """Train by self-play against an opponent pool (two-player games): the learner plays one seat, a pool member the other, both redrawn every episode."""
    pool_size: int = 10
    """Most snapshots of the learner kept in the opponent pool (the oldest leaves first; fixed opponents always stay)."""
    snapshot_interval: int = 10_000
    """Add a snapshot of the learner's policy to the pool every this many env steps (0: only by win rate)."""
    snapshot_win_rate: float = 0.0
    """Also add a snapshot once the learner's score (win 1, draw 1/2) against the pool since the last one reaches this (0: off)."""
    snapshot_min_games: int = 100
    """Training games since the last snapshot before snapshot_win_rate is looked at."""
    sampling: Sampling = "pfsp"
    """Opponent sampling: latest snapshot, uniform over the pool, or pfsp (weight (1-p)^2 of the learner's win rate p against each)."""
    opponents: list = field(default_factory=list)
    """Fixed opponents, comma-separated: random (uniform over legal moves), a checkpoint (file or run directory), or module:factory (factory(spec) returns a policy)."""
    fixed_in_pool: bool = True
    """Fixed opponents are also drawn as training opponents (else they are only evaluation opponents)."""
    match_games: int = 20
    """Rated games against each opponent at every evaluation, times two (the learner greedy, its seat drawn per game); each game updates the ratings."""


def check_config(cfg: SelfPlayConfig, spec: EnvSpec) -> None:
    """MarlError before anything is built."""
    check(spec.n_agents == 2, f"self-play needs a two-player game, env '{spec.name}' has {spec.n_agents} agents ({', '.join(spec.agents)})",
          "train it without --self-play, or pick a two-player env (e.g. pettingzoo.classic/connect_four_v3)")
    check(cfg.pool_size >= 1, f"pool_size must be at least 1, got {cfg.pool_size}", "pass --pool-size 1 or more")
    check(cfg.snapshot_interval >= 0, f"snapshot_interval must be >= 0, got {cfg.snapshot_interval}", "pass --snapshot-interval 0 or more")
    check(0 <= cfg.snapshot_win_rate <= 1, f"snapshot_win_rate must be in [0, 1], got {cfg.snapshot_win_rate}", "pass a rate such as 0.7")
    check(cfg.snapshot_interval > 0 or cfg.snapshot_win_rate > 0, "self-play without snapshots: snapshot_interval and snapshot_win_rate are both 0",
          "pass --snapshot-interval N or --snapshot-win-rate X")
    check(cfg.match_games >= 1, f"match_games must be at least 1, got {cfg.match_games}", "pass --match-games 1 or more")


# ----------------------------------------------------------------------------- opponents
@runtime_checkable
class Stackable(Protocol):
    """A policy class whose feed-forward copies act as one module (e.g.
    `marl.algos.onpolicy.ActorPolicy`): `stack(copies, gen).act_members(inputs, member,
    explore)` returns the actions of row r by copy member[r], sampled with `gen`."""

    @staticmethod
    def stack(policies: list, gen: torch.Generator) -> Any: ...


def _generators(policy: Any) -> list[torch.Generator]:
    return [v for _, v in sorted(vars(policy).items()) if isinstance(v, torch.Generator)]


class _Exploring:
    """An opponent that samples its moves also in greedy evaluations (greedy against greedy
    would repeat one game)."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def initial_hidden(self, num_envs: int):
        return self.policy.initial_hidden(num_envs)

    def act(self, inputs, hidden, explore):
        return self.policy.act(inputs, hidden, True)


def _member_rows(inputs: dict[str, torch.Tensor], rows: np.ndarray, keys=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(row indices on the inputs' device, the inputs of those rows on the CPU, where members
    live: every field, or those named in `keys`)."""
    rows_t = torch.as_tensor(rows, device=inputs["obs"].device)
    return rows_t, {key: inputs[key].index_select(0, rows_t).cpu() for key in keys or inputs}


class PoolPolicy:
    """The opponents' slot: in each env one pool member, drawn with the pool's sampling when
    the env's episode starts. Its recurrent state is a flag per env that the collector zeroes
    when the env's episode ends; the next `act` draws for those envs. Members always sample
    their moves (`explore` is ignored: a greedy snapshot would repeat one game). A feed-forward
    member acts only on the rows of its envs where it moves; a recurrent one at every step of
    its games, as it was trained. Feed-forward snapshots of a policy class with a `stack`
    (`Stackable`) act together, in one call per step; other members act once each on their
    rows. `games[e]` holds the opponents of env e's unfinished episodes, oldest first."""

    def __init__(self, spec: EnvSpec, template: Policy, fixed: dict[str, Policy], pool: OpponentPool, seed: int):
        self.spec, self.template, self.fixed, self.pool, self.seed = spec, template, dict(fixed), pool, seed
        self.members: dict[int, Policy] = {}  # built policies of the members in use
        self.retired: dict[int, Member] = {}  # members that left the pool while an env still plays them
        self.opp = np.full(0, -1, np.int64)
        self.games: list[deque] = []
        self.opp_hidden: dict[int, Any] = {}
        self.stacks = isinstance(template, Stackable) and template.initial_hidden(1) is None
        self.snapshots: set[int] = set()  # the ids of every snapshot member built so far
        self.stack: tuple[tuple[int, ...], Any] = ((), None)  # (member ids, their stack) of the built snapshots
        self.gen = torch.Generator()  # the stack's moves
        self.gen.manual_seed(seed * 1_000_003 + 17)
        self._plan: tuple[np.ndarray, list[tuple[int, np.ndarray]]] | None = None  # `_layout`, until the opponents change

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_plan": None}

    def __setstate__(self, state: dict) -> None:
        """One pickled before the stack existed (an older run's checkpoint) acts member by member, as it did."""
        self.__dict__.update({"stacks": False, "snapshots": set(), "stack": ((), None), "gen": torch.Generator(), **state, "_plan": None})

    def member(self, member_id: int) -> Policy:
        if member_id not in self.members:
            m = self.pool.by_id(member_id) or self.retired.get(member_id)
            check(m is not None, f"opponent {member_id} is neither in the pool nor in a game", "this is a bug")
            if m.kind == "snapshot":
                policy = copy.deepcopy(self.template)
                policy.load_state_dict(m.state)
                self.snapshots.add(member_id)
            else:
                policy = self.fixed[m.name]
            for k, g in enumerate(_generators(policy)):
                g.manual_seed(self.seed * 1_000_003 + member_id * 101 + k)
            self.members[member_id] = policy
        return self.members[member_id]

    def initial_hidden(self, num_envs: int) -> torch.Tensor:
        return torch.zeros(num_envs)

    def _draw(self, envs: np.ndarray) -> None:
        E = len(self.opp)
        self.opp[envs] = self.pool.sample(len(envs))
        self._plan = None
        for e in envs:
            self.games[e].append(int(self.opp[e]))
        for k in np.unique(self.opp[envs]):
            h0 = self.member(int(k)).initial_hidden(E)
            if h0 is not None:
                rows = torch.as_tensor(envs[self.opp[envs] == k])
                h = self.opp_hidden.setdefault(int(k), h0)
                h[rows] = h0[rows]

    def act(self, inputs: dict[str, torch.Tensor], fresh: torch.Tensor, explore: bool):
        E, n = inputs["obs"].shape[:2]
        if len(self.opp) != E:  # a new env batch (e.g. a copy that evaluates)
            self.opp, self.games, self._plan = np.full(E, -1, np.int64), [deque() for _ in range(E)], None
        new = np.flatnonzero(fresh.cpu().numpy() == 0)
        if len(new):
            self._draw(new)
        at, alone = self._layout()
        device = inputs["obs"].device
        shape = (E, n) if self.spec.discrete else (E, n, self.spec.n_actions)
        actions = torch.zeros(shape, dtype=torch.long if self.spec.discrete else torch.float32, device=device)
        moves = inputs["acting"].any(-1).cpu().numpy()
        rows = np.flatnonzero((at >= 0) & moves)
        if len(rows):
            rows_t, sub = _member_rows(inputs, rows, ("obs", "avail"))
            actions[rows_t] = self.stack[1].act_members(sub, torch.as_tensor(at[rows]), True).to(device, actions.dtype)
        for k, envs in alone:
            h = self.opp_hidden.get(k)
            rows = np.flatnonzero(envs & moves if h is None else envs)
            if not len(rows):
                continue
            rows_t, sub = _member_rows(inputs, rows)
            a, h_new, _ = self.member(k).act(sub, None if h is None else h[rows], True)
            if h is not None:
                h[rows] = h_new
            actions[rows_t] = a.to(device, actions.dtype)
        return actions, torch.ones_like(fresh), {}

    def _layout(self) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """Who acts where, kept until an env draws a new opponent or a member is dropped: each
        env's copy in the stack (-1 where its member acts alone), and the members that act
        alone, in id order, each with the envs it plays in (a mask)."""
        if self._plan is None:
            ids = [int(k) for k in np.unique(self.opp)]
            stacked = self._stacked(ids)
            at = np.full(len(self.opp), -1, np.int64)
            for k in stacked:
                at[self.opp == k] = self.stack[0].index(k)
            self._plan = (at, [(k, self.opp == k) for k in ids if k not in stacked])
        return self._plan

    def _stacked(self, ids: list[int]) -> list[int]:
        """Which of the members `ids` act through the stack: the snapshots, when the template
        stacks. The stack holds every built snapshot and is rebuilt when they change."""
        if not self.stacks:
            return []
        for k in ids:
            self.member(k)
        snaps = tuple(sorted(k for k in self.members if k in self.snapshots))
        if snaps and snaps != self.stack[0]:
            self.stack = (snaps, type(self.template).stack([self.members[k] for k in snaps], self.gen))
        return [k for k in ids if k in self.snapshots]

    def finished(self, episodes: list[EpisodeStats]) -> list[int]:
        """The opponent of each finished episode, in order."""
        return [self.games[ep.env].popleft() for ep in episodes]

    def forget(self) -> None:
        """Drop what no env needs any more: built members and states of members that left."""
        playing = set(self.opp.tolist())
        self.retired = {k: m for k, m in self.retired.items() if k in playing}
        live = set(self.pool.ids()) | playing
        for k in [k for k in self.members if k not in live]:
            del self.members[k]
            self.opp_hidden.pop(k, None)
        self._plan = None

    def add_snapshot(self, state: dict, step: int) -> list[Member]:
        """A snapshot joins the pool; returns the members that left it."""
        before = {m.id: m for m in self.pool.members}
        self.pool.add_snapshot(state, step)
        gone = [m for k, m in before.items() if self.pool.by_id(k) is None]
        playing = set(self.opp.tolist())
        self.retired.update({m.id: m for m in gone if m.id in playing})
        return gone


# ----------------------------------------------------------------------------- the run
def _score(ret: float) -> float:
    return 1.0 if ret > 0 else 0.5 if ret == 0 else 0.0


class SelfPlay:
    """The self-play callback of a Trainer (see the module's docstring). Build the run with
    `self_play_policies` (or `train_self_play`)."""

    def __init__(self, cfg: SelfPlayConfig, learner_slot: str, pool_slot: str, eval_only: dict[str, Policy] | None = None):
        self.cfg, self.learner_slot, self.pool_slot = cfg, learner_slot, pool_slot
        self.eval_only = dict(eval_only or {})  # fixed opponents that only play the rated matches
        self.ratings = Ratings()
        self.ratings.add(LEARNER)
        for name in cfg.opponents:
            self.ratings.add(str(name))
        self._config_saved = False

    def _pool(self, t) -> PoolPolicy:
        return t.policy(self.pool_slot)

    def on_step_start(self, t) -> None:
        if not self._config_saved:  # config.yaml gets the self-play settings: --resume and --config rebuild the run
            data = load_yaml(t.run_dir / "config.yaml") or {}
            if data.get("self_play") != to_dict(self.cfg):
                save_yaml(t.run_dir / "config.yaml", {**data, "self_play": to_dict(self.cfg)})
            self._config_saved = True
        pp = self._pool(t)
        if pp.pool.wants_snapshot(t.step_count, self.cfg.snapshot_interval, self.cfg.snapshot_win_rate, self.cfg.snapshot_min_games):
            self._snapshot(t, pp)

    def _snapshot(self, t, pp: PoolPolicy) -> None:
        state = {k: v.detach().cpu().clone() for k, v in t.learners[self.learner_slot].policy().state_dict().items()}
        for m in pp.add_snapshot(state, t.step_count):
            self.ratings.remove_unrated(m.name)
        self.ratings.add(pp.pool.members[-1].name, like=LEARNER)

    def on_collect(self, t, batch, episodes: list[EpisodeStats]) -> None:
        pp = self._pool(t)
        k = t.slots.index(self.learner_slot)
        for ep, opp in zip(episodes, pp.finished(episodes)):
            ret = float(np.sum(np.asarray(ep.agent_returns)[np.asarray(ep.owner) == k]))
            pp.pool.record(opp, _score(ret))
        pp.forget()

    def on_update(self, t, metrics: dict) -> None:
        pool = self._pool(t).pool
        score, games = pool.since_snapshot
        metrics.update({"selfplay/pool_size": float(len(pool.members)), "selfplay/members_added": float(pool.next_id)})
        if games:
            metrics["selfplay/score_since_snapshot"] = score / games

    def on_evaluate(self, t, step: int, episodes) -> dict[str, float]:
        """The rated matches of the evaluation at `step` (the trainer calls this as soon as it
        started it, so the learner is the one evaluated): 2 x `match_games` greedy games of
        the learner against every pool member and evaluation-only opponent (the seats
        drawn per game, as in training); every game updates the ratings. Returns, for the
        evaluation's row, the learner's win/draw/loss rates against each fixed opponent, its
        mean score against the pool, and every rating."""
        pp = self._pool(t)
        opponents = [(m.name, copy.deepcopy(pp.member(m.id))) for m in pp.pool.members]
        opponents += [(name, copy.deepcopy(policy)) for name, policy in self.eval_only.items()]
        k = t.slots.index(self.learner_slot)
        seed = t.cfg.seed + MATCH_SEED_OFFSET
        out, scores = {}, []
        for j, (name, policy) in enumerate(opponents):
            for i, g in enumerate(_generators(policy)):
                g.manual_seed(seed + 31 * j + i)
            counts = np.zeros(3)
            for ep in t.play(overrides={self.pool_slot: _Exploring(policy)}, episodes=2 * self.cfg.match_games, seed=seed):
                score = _score(float(np.sum(np.asarray(ep.agent_returns)[np.asarray(ep.owner) == k])))
                self.ratings.game(LEARNER, name, score)
                counts[int(2 - 2 * score)] += 1
                scores.append(score)
            if name in self.cfg.opponents:
                out.update({f"eval/vs_{name}/{key}": float(c / counts.sum()) for key, c in zip(("win", "draw", "loss"), counts)})
        out["eval/score_vs_pool"] = float(np.mean(scores))
        out.update(self.ratings.record(step, [LEARNER, *(m.name for m in pp.pool.members), *self.eval_only]))
        return out

    def on_checkpoint(self, t, payload: dict) -> None:
        """ratings.csv at every checkpoint; ratings.png (slower) at the run's end."""
        self.ratings.write_table(t.run_dir / "ratings.csv")
        if t.done:
            self.ratings.plot(t.run_dir / "ratings.png")

    def state_dict(self) -> dict:
        return {"ratings": self.ratings.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ratings.load_state_dict(state["ratings"])


MATCH_SEED_OFFSET = 2_000_003


def fixed_opponent(source: str, spec: EnvSpec, slot: str, seed: int) -> Policy:
    """A fixed opponent (random, a checkpoint, module:factory) for the opponents' slot, checked
    against its spaces."""
    from marl import agentmap

    check(source == "random" or Path(source.partition("#")[0]).exists() or ":" in source,
          f"pool opponent '{source}' is neither random, an existing checkpoint nor module:factory",
          "give random, a checkpoint file or run directory, or module.path:factory")
    try:
        policy = agentmap.frozen_policy(source, spec, slot, torch.device("cpu"), seed)
    except MarlError as err:
        problem = err.problem.replace(f"--policies {slot}={source}: ", "")
        raise MarlError(f"pool opponent '{source}': {problem}", err.fix) from None
    return fits(f"pool opponent '{source}'", policy, spec)


def self_play_policies(cfg: SelfPlayConfig, run_cfg, algo_cfg=None) -> tuple[list, SelfPlay]:
    """The trainer's `policies` and the `SelfPlay` callback of a self-play run of `run_cfg.algo`
    on `run_cfg.env` (which must be a two-player game); MarlError before anything is built."""
    from marl import envs
    from marl.algos import ALGOS

    make_fn = envs.make_factory(run_cfg.env, **run_cfg.env_kwargs)
    probe = VecEnv(make_fn, 1, seed=run_cfg.seed, workers=0)
    spec = probe.spec
    probe.close()
    check_config(cfg, spec)
    entry = ALGOS.get(run_cfg.algo)
    algo_cfg = algo_cfg if algo_cfg is not None else entry.make_config()
    learner_slot, pool_slot = spec.agents
    sub = spec.subset([1])
    fixed = {str(o): fixed_opponent(str(o), sub, pool_slot, run_cfg.seed + 7919 * (j + 1)) for j, o in enumerate(cfg.opponents)}

    def pool_policy(slot_spec: EnvSpec) -> PoolPolicy:
        # the initial snapshot: the learner as built from the run's seed (the trainer builds its
        # learner right after seeding torch with it), without touching the run's generators
        with torch.random.fork_rng():
            torch.manual_seed(run_cfg.seed)
            template = entry.learner(algo_cfg, slot_spec, torch.device("cpu"), run_cfg.seed).policy()
        pool = OpponentPool(max_size=cfg.pool_size, sampling=cfg.sampling, seed=run_cfg.seed)
        if cfg.fixed_in_pool:
            for name in fixed:
                pool.add_fixed(name, "fixed", source=name)
        pool.add_snapshot({k: v.clone() for k, v in template.state_dict().items()}, 0)
        return PoolPolicy(slot_spec, template, fixed if cfg.fixed_in_pool else {}, pool, run_cfg.seed)

    callback = SelfPlay(cfg, learner_slot, pool_slot, eval_only={} if cfg.fixed_in_pool else fixed)
    callback.ratings.add("snapshot@0", like=LEARNER)
    return [(learner_slot, run_cfg.algo), (pool_slot, pool_policy)], callback


def train_self_play(run_cfg, algo_cfg=None, cfg: SelfPlayConfig | None = None, set_fields=None) -> dict:
    """`marl.train.train` of a self-play run (seats shuffled per episode): the Python API of
    `marl train --self-play`."""
    from dataclasses import replace

    from marl.train import train

    cfg = cfg or SelfPlayConfig(self_play=True)
    policies, callback = self_play_policies(cfg, run_cfg, algo_cfg)
    return train(replace(run_cfg, seats="shuffle"), algo_cfg, set_fields, callbacks=[callback], policies=policies)
