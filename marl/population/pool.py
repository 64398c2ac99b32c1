"""An opponent pool: frozen snapshots of the learner's policy and fixed opponents.

Sampling is a pure function of the members' records (`sampling_probs`): `latest` (the newest
snapshot), `uniform`, or prioritised fictitious self-play (`pfsp`, AlphaStar's
f(p) = (1 - p)^2 of the learner's win rate p against each member, so the opponents it loses
to are drawn most). A member's win rate is the learner's decayed score against it (win 1,
draw 1/2, loss 0) with one imaginary draw as prior, so an unplayed member counts as p = 1/2.
Snapshots are taken every `snapshot_interval` env steps or when the learner's score against
the pool since the last snapshot passes `snapshot_win_rate`. At most `max_size` snapshots are
kept (the oldest leaves first); fixed opponents never leave. Members have stable ids, so an
env that plays a member keeps it to the end of its episode even if it left the pool.
Everything, the sampling generator included, is in `state_dict()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from marl.core.errors import check

Sampling = Literal["latest", "uniform", "pfsp"]
SAMPLINGS: tuple[str, ...] = ("latest", "uniform", "pfsp")


def pfsp_weights(win_rates: np.ndarray, power: float = 2.0) -> np.ndarray:
    """Normalised (1 - p)^power over the members (AlphaStar's 'hard' weighting); uniform when
    the learner beats every member always (every weight 0)."""
    w = np.clip(1.0 - np.asarray(win_rates, np.float64), 0.0, 1.0) ** power
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))


def sampling_probs(mode: str, win_rates: np.ndarray, latest: int, power: float = 2.0) -> np.ndarray:
    """Probability of drawing each of n members: `latest` puts all of it on member index `latest`,
    `uniform` spreads it evenly, `pfsp` weights by `pfsp_weights`."""
    n = len(win_rates)
    check(n > 0, "the opponent pool is empty", "add a fixed opponent or let the learner take a snapshot first")
    if mode == "latest":
        p = np.zeros(n)
        p[latest] = 1.0
        return p
    if mode == "uniform":
        return np.full(n, 1.0 / n)
    check(mode == "pfsp", f"unknown opponent sampling '{mode}'", f"pick one of {', '.join(SAMPLINGS)}")
    return pfsp_weights(win_rates, power)


def win_rate(score: np.ndarray, games: np.ndarray) -> np.ndarray:
    """The learner's win rate against each member from its (decayed) score and game count, with
    one draw as prior: (score + 1/2) / (games + 1)."""
    return (np.asarray(score, np.float64) + 0.5) / (np.asarray(games, np.float64) + 1.0)


@dataclass
class Member:
    """One opponent: `kind` snapshot (a frozen copy of the learner's policy, `state` its state
    dict, taken at env step `step`), or a fixed opponent (`random`, `checkpoint`, `factory`,
    `source` saying which)."""

    id: int
    name: str
    kind: str
    source: str = ""
    step: int = 0
    state: dict | None = None
    score: float = 0.0
    games: float = 0.0


@dataclass
class OpponentPool:
    max_size: int = 10
    sampling: str = "pfsp"
    seed: int = 0
    decay: float = 0.99
    """Each recorded result multiplies a member's earlier score and game count by this."""
    members: list[Member] = field(default_factory=list)
    next_id: int = 0
    since_snapshot: list[float] = field(default_factory=lambda: [0.0, 0.0])
    last_snapshot: int = 0

    def __post_init__(self):
        check(self.max_size >= 1, f"the pool's max size must be at least 1, got {self.max_size}", "pass --pool-size 1 or more")
        self.rng = np.random.default_rng(self.seed)

    # members
    def _add(self, **kw) -> Member:
        member = Member(id=self.next_id, **kw)
        self.next_id += 1
        self.members.append(member)
        return member

    def add_fixed(self, name: str, kind: str, source: str = "", state: dict | None = None) -> Member:
        check(all(m.name != name for m in self.members), f"two pool opponents are named '{name}'", "give each fixed opponent once")
        return self._add(name=name, kind=kind, source=source, state=state)

    def add_snapshot(self, state: dict, step: int) -> Member:
        """A frozen copy of the learner at env step `step`; the oldest snapshot leaves when there
        are more than max_size."""
        member = self._add(name=f"snapshot@{step}", kind="snapshot", step=step, state=state)
        snapshots = [m for m in self.members if m.kind == "snapshot"]
        for old in snapshots[: max(0, len(snapshots) - self.max_size)]:
            self.members.remove(old)
        self.since_snapshot, self.last_snapshot = [0.0, 0.0], step
        return member

    def by_id(self, member_id: int) -> Member | None:
        return next((m for m in self.members if m.id == member_id), None)

    def ids(self) -> list[int]:
        return [m.id for m in self.members]

    # records and sampling
    def win_rates(self) -> np.ndarray:
        return win_rate([m.score for m in self.members], [m.games for m in self.members])

    def record(self, member_id: int, score: float) -> None:
        """One finished game of the learner against a member: score 1 win, 0.5 draw, 0 loss."""
        self.since_snapshot = [self.since_snapshot[0] + score, self.since_snapshot[1] + 1]
        member = self.by_id(member_id)
        if member is not None:
            member.score = member.score * self.decay + score
            member.games = member.games * self.decay + 1.0

    def wants_snapshot(self, step: int, interval: int, threshold: float, min_games: int) -> bool:
        """Every `interval` env steps (0: never), or once the learner scored at least `threshold`
        (0: never) over at least `min_games` games since the last snapshot."""
        score, games = self.since_snapshot
        return (interval > 0 and step - self.last_snapshot >= interval) or \
            (threshold > 0 and games >= min_games and score / games >= threshold)

    def probs(self) -> np.ndarray:
        latest = max(range(len(self.members)), key=lambda i: (self.members[i].kind == "snapshot", self.members[i].id)) if self.members else 0
        return sampling_probs(self.sampling, self.win_rates(), latest)

    def sample(self, n: int) -> np.ndarray:
        """Ids of n opponents drawn independently with `probs()`."""
        ids = np.asarray(self.ids(), np.int64)
        return ids[self.rng.choice(len(ids), size=n, p=self.probs())]

    # checkpoints
    def state_dict(self) -> dict:
        return {"members": [dict(vars(m)) for m in self.members], "next_id": self.next_id, "rng": self.rng.bit_generator.state,
                "since_snapshot": list(self.since_snapshot), "last_snapshot": self.last_snapshot}

    def load_state_dict(self, state: dict) -> None:
        self.members = [Member(**m) for m in state["members"]]
        self.next_id, self.last_snapshot = state["next_id"], state["last_snapshot"]
        self.since_snapshot = list(state["since_snapshot"])
        self.rng.bit_generator.state = state["rng"]
