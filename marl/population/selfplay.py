"""Self-play against an opponent pool, for two-player games.

In every env the learner plays one seat against one pool member; both are redrawn when the
env's episode ends (`SelfPlayPolicy`: the seat uniformly, the opponent with the pool's
sampling). The learner acts on the whole batch once per step, each opponent in use once on
its envs' rows; the learner learns only from its own seat's rows (`learner_batch` clears
`acting` elsewhere). `SelfPlay` ties it together for the trainer: results of training games
feed the pool's win rates, snapshots (`learner.policy()` state dicts) join the pool on a
schedule or past a win rate, and every evaluation plays greedy matches of the learner against
each member (and the fixed opponents) from both seats, each game updating OpenSkill ratings.
Pool, sampler, ratings, seats, opponents' generators and recurrent states are all in
`state_dict()`, so a resumed run continues the same games.
"""
from __future__ import annotations

import importlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from marl.core.errors import MarlError, check
from marl.core.policies import AgentPolicies, RandomPolicy
from marl.core.rollout import Policy, evaluate as run_episodes
from marl.core.spec import EnvSpec
from marl.core.vec import EpisodeStats, VecEnv
from marl.configio import to_dict
from marl.train import Callback
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
    """Fixed opponents, comma-separated: random (uniform over legal moves), a checkpoint (file or run directory), or module:factory (called as factory(spec, device), returns a policy)."""
    fixed_in_pool: bool = True
    """Fixed opponents are also drawn as training opponents (else they are only evaluation opponents)."""
    match_games: int = 20
    """Greedy games per seat against each opponent at every evaluation; each game updates the ratings."""


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
def _fits(name: str, policy: Policy, spec: EnvSpec) -> Policy:
    """One exploring step of `policy` on an all-legal dummy batch: its actions must be [E, N]
    legal indices (discrete) or [E, N, A] (continuous); a one-line MarlError otherwise."""
    e, n = 2, spec.n_agents
    inputs = {"obs": torch.zeros(e, n, spec.obs_dim), "state": torch.zeros(e, spec.state_dim),
              "avail": torch.ones(e, n, spec.n_actions, dtype=torch.bool), "alive": torch.ones(e, n, dtype=torch.bool),
              "acting": torch.ones(e, n, dtype=torch.bool)}
    fix = f"give opponents for env '{spec.name}' ({n} agents, observations of {spec.obs_dim} floats, {spec.n_actions} actions)"
    try:
        actions, _, _ = policy.act(inputs, policy.initial_hidden(e), True)
    except MarlError:
        raise
    except Exception as err:  # noqa: BLE001 - a user's policy: its failure is the message
        raise MarlError(f"pool opponent '{name}' does not fit this env's spaces ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", fix) from None
    want = (e, n) if spec.discrete else (e, n, spec.n_actions)
    ok = tuple(actions.shape) == want and (not spec.discrete or bool(((actions >= 0) & (actions < spec.n_actions)).all()))
    check(ok, f"pool opponent '{name}' does not fit this env's spaces (actions of shape {tuple(actions.shape)}, want {want}"
              f"{' with values below ' + str(spec.n_actions) if spec.discrete else ''})", fix)
    return policy


def fixed_opponent(source: str, spec: EnvSpec, seed: int) -> tuple[str, Callable[[], Policy]]:
    """(kind, builder) of a fixed opponent given as `random`, a checkpoint path, or module:factory;
    the builder is checked against the env's spaces once here."""
    cpu = torch.device("cpu")
    if source == "random":
        build = lambda: RandomPolicy(spec, cpu, seed=seed)  # noqa: E731
        kind = "random"
    elif Path(source).exists():
        build = lambda: load_policy(source, spec, cpu)  # noqa: E731
        kind = "checkpoint"
    elif ":" in source:
        module, _, name = source.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise MarlError(f"pool opponent '{source}' cannot be loaded ({err})", "give module.path:factory of an importable callable") from None
        build = lambda: factory(spec, cpu)  # noqa: E731
        kind = "factory"
    else:
        raise MarlError(f"pool opponent '{source}' is neither random, an existing checkpoint nor module:factory",
                        "give random, a checkpoint file or run directory, or module.path:factory")
    _fits(source, build(), spec)
    return kind, build


def frozen_policy(learner) -> Policy:
    """The learner's frozen acting copy (`Learner.policy()`)."""
    if hasattr(learner, "policy"):
        return learner.policy()
    import copy

    policy = copy.deepcopy(learner).eval().requires_grad_(False)
    return policy


def load_policy(path: str, spec: EnvSpec, device: torch.device) -> Policy:
    """The frozen policy of a run's checkpoint (file or run directory), built for `spec`."""
    from marl.algos import ALGOS
    from marl.checkpoint import resolve_checkpoint
    from marl.train import _load_model, _saved_algo_config

    found, ckpt, _ = resolve_checkpoint(path)
    saved = ckpt["config"]
    entry = ALGOS.get(saved["train"]["algo"])
    learner = entry.learner(_saved_algo_config(entry, saved["algo"]), spec, device, 0)
    try:
        _load_model(learner, ckpt["model"], found)
    except MarlError as err:
        raise MarlError(f"pool opponent '{path}' does not fit this env's spaces ({err.problem})",
                        f"give a checkpoint of a run on env '{spec.name}' or one with the same spaces") from None
    return frozen_policy(learner)


def _generators(policy: Any) -> list[torch.Generator]:
    return [v for _, v in sorted(vars(policy).items()) if isinstance(v, torch.Generator)]


# ----------------------------------------------------------------------------- the training policy
class SelfPlayPolicy:
    """The joint policy of self-play training. Its recurrent state is [learner's state, fresh
    flags [E]]: the collector zeroes the flags of envs whose episode ended, and the next `act`
    draws a new seat and opponent for them. `extras['learner_seat']` [E, N] marks the
    learner's column."""

    def __init__(self, learner: Policy, pool: OpponentPool, opponent: Callable[[int], Policy], num_envs: int, n_agents: int):
        self.learner, self.pool, self.opponent, self.n = learner, pool, opponent, n_agents
        self.seat = np.zeros(num_envs, np.int64)
        self.opp = np.full(num_envs, -1, np.int64)
        self.games: list[deque] = [deque() for _ in range(num_envs)]  # (seat, opponent id) per unfinished episode
        self.opp_hidden: dict[int, Any] = {}

    def initial_hidden(self, num_envs: int) -> list:
        return [self.learner.initial_hidden(num_envs), torch.zeros(num_envs)]

    def _draw(self, envs: np.ndarray, num_envs: int) -> None:
        self.opp[envs] = self.pool.sample(len(envs))
        self.seat[envs] = self.pool.rng.integers(0, self.n, size=len(envs))
        for e in envs:
            self.games[e].append((int(self.seat[e]), int(self.opp[e])))
        for k in np.unique(self.opp[envs]):
            policy = self.opponent(int(k))
            h0 = policy.initial_hidden(num_envs)
            if h0 is not None:
                rows = torch.as_tensor(envs[self.opp[envs] == k])
                h = self.opp_hidden.setdefault(int(k), h0)
                h[rows] = h0[rows]

    def act(self, inputs: dict[str, torch.Tensor], hidden: list, explore: bool):
        learner_h, fresh = hidden
        E = fresh.shape[0]
        new = np.flatnonzero(fresh.cpu().numpy() == 0)
        if len(new):
            self._draw(new, E)
            fresh = torch.ones_like(fresh)
        actions, learner_h, extras = self.learner.act(inputs, learner_h, explore)
        mine = torch.nn.functional.one_hot(torch.as_tensor(self.seat, device=actions.device), self.n).bool()  # [E, N]
        # a feed-forward opponent acts only in envs where its side moves (turn-based: about half);
        # a recurrent one at every step of its games, as it was trained
        moves = (inputs["acting"] & ~mine).any(-1).cpu().numpy() if "acting" in inputs else np.ones(E, bool)
        for k in np.unique(self.opp):
            h = self.opp_hidden.get(int(k))
            rows = np.flatnonzero((self.opp == k) & (moves if h is None else True))
            if not len(rows):
                continue
            rows = torch.as_tensor(rows, device=actions.device)
            policy = self.opponent(int(k))
            sub = {key: v.index_select(0, rows) for key, v in inputs.items()}
            a, h_new, _ = policy.act(sub, None if h is None else h[rows], True)
            if h is not None:
                h[rows] = h_new
            actions[rows] = torch.where(mine[rows].view(*mine[rows].shape, *([1] * (a.dim() - 2))), actions[rows], a.to(actions.device))
        return actions, [learner_h, fresh], {**extras, "learner_seat": mine}

    def finished(self, episodes: list[EpisodeStats]) -> list[tuple[int, int, float]]:
        """(seat, opponent id, learner's score) of each finished episode, in order."""
        out = []
        for ep in episodes:
            seat, opp = self.games[ep.env].popleft()
            ret = float(np.asarray(ep.agent_returns)[seat])
            out.append((seat, opp, 1.0 if ret > 0 else 0.5 if ret == 0 else 0.0))
        return out

    def state_dict(self) -> dict:
        return {"seat": self.seat.copy(), "opp": self.opp.copy(), "games": [list(g) for g in self.games], "opp_hidden": dict(self.opp_hidden)}

    def load_state_dict(self, state: dict) -> None:
        self.seat, self.opp = state["seat"].copy(), state["opp"].copy()
        self.games = [deque(tuple(x) for x in g) for g in state["games"]]
        self.opp_hidden = dict(state["opp_hidden"])


def learner_batch(batch: dict[str, torch.Tensor], seat_now: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rollout as the learner's update sees it: only its own seat's rows act (`acting` and,
    after the rollout, `next_acting` with the seats of the episodes in progress), and its own
    recurrent state."""
    out = {k: v for k, v in batch.items() if k != "learner_seat"}
    out["acting"] = batch["acting"] & batch["learner_seat"]
    out["next_acting"] = batch["next_acting"] & seat_now.to(batch["next_acting"].device)
    if "hidden0" in batch:
        learner_h = batch["hidden0"][0]
        if learner_h is None:
            out.pop("hidden0")
        else:
            out["hidden0"] = learner_h
    return out


class _Exploring:
    """An opponent that samples its moves also in greedy evaluations (greedy against greedy
    would repeat one game)."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def initial_hidden(self, num_envs: int):
        return self.policy.initial_hidden(num_envs)

    def act(self, inputs, hidden, explore):
        return self.policy.act(inputs, hidden, True)


# ----------------------------------------------------------------------------- the trainer's part
class SelfPlay(Callback):
    """Self-play for one learner, a trainer callback: its joint training policy (`policy`), the
    rows its update sees (`learner_batch`), the pool's records and snapshots (`after_update`),
    the rated matches (`evaluate`), ratings.csv and ratings.png (`finish`), all of it in the
    checkpoints (`state_dict`)."""

    name = "self_play"

    def __init__(self, cfg: SelfPlayConfig):
        self.cfg = cfg

    def config(self) -> dict:
        return to_dict(self.cfg)

    def setup(self, learner, spec: EnvSpec, make_fn, run_cfg, device: torch.device) -> None:
        cfg, seed, num_envs = self.cfg, run_cfg.seed, run_cfg.num_envs
        check_config(cfg, spec)
        self.spec, self.learner, self.device, self.seed = spec, learner, device, seed
        self.fixed: dict[str, Callable[[], Policy]] = {}
        self.pool = OpponentPool(max_size=cfg.pool_size, sampling=cfg.sampling, seed=seed)
        self.ratings = Ratings()
        self.ratings.add(LEARNER)
        self.eval_only: list[str] = []
        for k, source in enumerate(cfg.opponents):
            kind, build = fixed_opponent(str(source), spec, seed=seed + 7919 * (k + 1))
            self.fixed[str(source)] = build
            self.ratings.add(str(source))
            if cfg.fixed_in_pool:
                self.pool.add_fixed(str(source), kind, source=str(source))
            else:
                self.eval_only.append(str(source))
        self._policies: dict[int, Policy] = {}
        self.retired: dict[int, Any] = {}  # members that left the pool while an env still plays them
        self.joint = None
        self.snapshot(0)
        self.joint: SelfPlayPolicy = SelfPlayPolicy(learner, self.pool, self._opponent, num_envs, spec.n_agents)
        self.match_vec = VecEnv(make_fn, cfg.match_games, seed=seed, workers=0, spec=spec)
        self.match_seed = seed + 2_000_003

    # opponents
    def _build(self, member) -> Policy:
        if member.kind == "snapshot":
            policy = frozen_policy(self.learner)
            policy.load_state_dict(member.state)
            return policy
        return self.fixed[member.source]()

    def _opponent(self, member_id: int) -> Policy:
        """The training policy of a pool member (kept while an env still plays it)."""
        if member_id not in self._policies:
            member = self.pool.by_id(member_id) or self.retired.get(member_id)
            check(member is not None, f"opponent {member_id} is neither in the pool nor in a game", "this is a bug")
            self._policies[member_id] = self._build(member)
            for k, g in enumerate(_generators(self._policies[member_id])):
                g.manual_seed(self.seed * 1_000_003 + member_id * 101 + k)
        return self._policies[member_id]

    def snapshot(self, step: int) -> None:
        before = {m.id: m for m in self.pool.members}
        member = self.pool.add_snapshot({k: v.detach().cpu().clone() for k, v in frozen_policy(self.learner).state_dict().items()}, step)
        self.ratings.add(member.name, like=LEARNER)
        playing = set(self.joint.opp.tolist()) if self.joint is not None else set()
        for k, m in before.items():
            if self.pool.by_id(k) is None:
                self.ratings.remove_unrated(m.name)
                if k in playing:
                    self.retired[k] = m

    # training
    def policy(self, learner=None) -> SelfPlayPolicy:
        return self.joint

    def learner_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seat_now = torch.nn.functional.one_hot(torch.as_tensor(self.joint.seat), self.spec.n_agents).bool()
        return learner_batch(batch, seat_now)

    def after_update(self, step: int, episodes: list[EpisodeStats]) -> dict[str, float]:
        """Record the finished training games, take a snapshot when due, drop the policies of
        members no env plays any more; returns training metrics."""
        results = self.joint.finished(episodes)
        for _, opp, score in results:
            self.pool.record(opp, score)
        if self.pool.wants_snapshot(step, self.cfg.snapshot_interval, self.cfg.snapshot_win_rate, self.cfg.snapshot_min_games):
            self.snapshot(step)
        playing = set(self.joint.opp.tolist())
        self.retired = {k: m for k, m in self.retired.items() if k in playing}
        live = set(self.pool.ids()) | playing
        for k in [k for k in self._policies if k not in live]:
            del self._policies[k]
            self.joint.opp_hidden.pop(k, None)
        score, games = self.pool.since_snapshot
        out = {"selfplay/pool_size": float(len(self.pool.members)), "selfplay/members_added": float(self.pool.next_id)}
        if games:
            out["selfplay/score_since_snapshot"] = score / games
        return out

    # evaluation
    def _eval_opponents(self) -> list[tuple[str, Policy]]:
        out = [(m.name, self._build(m)) for m in self.pool.members] + [(name, self.fixed[name]()) for name in self.eval_only]
        for k, (_, policy) in enumerate(out):
            for j, g in enumerate(_generators(policy)):
                g.manual_seed(self.match_seed + 31 * k + j)
        return out

    def evaluate(self, step: int) -> dict[str, float]:
        """`match_games` greedy games of the learner from each seat against every pool member and
        fixed opponent; every game updates the ratings. Returns the learner's win/draw/loss
        rates against each fixed opponent, its mean score against the pool, and the ratings."""
        out: dict[str, float] = {}
        scores = []
        for name, opponent in self._eval_opponents():
            counts = np.zeros(3)
            for seat in range(self.spec.n_agents):
                owner = [1] * self.spec.n_agents
                owner[seat] = 0
                policy = AgentPolicies([self.learner, _Exploring(opponent)], owner)
                for ep in run_episodes(self.match_vec, policy, self.cfg.match_games, self.device, seed=self.match_seed):
                    ret = float(np.asarray(ep.agent_returns)[seat])
                    score = 1.0 if ret > 0 else 0.5 if ret == 0 else 0.0
                    self.ratings.game(LEARNER, name, score)
                    counts[int(2 - 2 * score)] += 1
                    scores.append(score)
            if name in self.fixed:
                out.update({f"eval/vs_{name}/{k}": float(c / counts.sum()) for k, c in zip(("win", "draw", "loss"), counts)})
        out["eval/score_vs_pool"] = float(np.mean(scores))
        out.update(self.ratings.record(step, [LEARNER, *(m.name for m in self.pool.members), *self.eval_only]))
        return out

    def finish(self, run_dir: Path) -> None:
        """ratings.csv (the final table) and ratings.png (rating against env steps)."""
        self.ratings.write_table(Path(run_dir) / "ratings.csv")
        self.ratings.plot(Path(run_dir) / "ratings.png")

    def close(self) -> None:
        if hasattr(self, "match_vec"):
            self.match_vec.close()

    # checkpoints
    def state_dict(self) -> dict:
        gens = {k: [g.get_state() for g in _generators(p)] for k, p in self._policies.items()}
        return {"pool": self.pool.state_dict(), "ratings": self.ratings.state_dict(), "joint": self.joint.state_dict(), "generators": gens,
                "retired": {k: dict(vars(m)) for k, m in self.retired.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state["pool"])
        self.ratings.load_state_dict(state["ratings"])
        self.joint.load_state_dict(state["joint"])
        self.retired = {k: Member(**m) for k, m in state["retired"].items()}
        self._policies = {}
        for k, states in state["generators"].items():
            for g, s in zip(_generators(self._opponent(k)), states):
                g.set_state(s)
