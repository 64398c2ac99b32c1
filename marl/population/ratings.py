"""Ratings of the learner and its opponents with OpenSkill (Plackett-Luce, Weng & Lin 2011).

Every evaluation game between two players updates both ratings (a draw is a tie). A snapshot
enters with the rating its learner had when it was taken. `history` holds one row per player
per evaluation (env step, mu, sigma), from which the final table (`write_table`) and the plot
of rating against env steps (`plot`) are drawn; everything is plain numbers, so it goes into
checkpoints as is.
"""
from __future__ import annotations

import csv
from pathlib import Path

from openskill.models import PlackettLuce

LEARNER = "learner"


class Ratings:
    def __init__(self):
        self.model = PlackettLuce()
        self.players: dict[str, tuple[float, float]] = {}  # name -> (mu, sigma)
        self.history: list[dict] = []

    def add(self, name: str, like: str | None = None) -> None:
        """A new player at the model's initial rating, or at `like`'s current one."""
        if name not in self.players:
            rating = self.model.rating()
            self.players[name] = self.players[like] if like in self.players else (rating.mu, rating.sigma)

    def game(self, a: str, b: str, score: float) -> None:
        """One game of a against b: score 1 a won, 0.5 draw, 0 b won."""
        self.add(a)
        self.add(b)
        ra, rb = (self.model.rating(mu=mu, sigma=s) for mu, s in (self.players[a], self.players[b]))
        ranks = [0, 0] if score == 0.5 else ([0, 1] if score > 0.5 else [1, 0])
        (ra,), (rb,) = self.model.rate([[ra], [rb]], ranks=ranks)
        self.players[a], self.players[b] = (ra.mu, ra.sigma), (rb.mu, rb.sigma)

    def ordinal(self, name: str) -> float:
        """A conservative skill estimate, mu - 3 sigma."""
        mu, sigma = self.players[name]
        return mu - 3 * sigma

    def remove_unrated(self, name: str) -> None:
        """Forget a player that left before playing a rated game."""
        if name != LEARNER and not any(h["player"] == name for h in self.history) and name in self.players:
            del self.players[name]

    def record(self, step: int, names=None) -> dict[str, float]:
        """Append the ratings of `names` (None: every player) at env step `step` to the history;
        returns the metrics to log (rating/<name> = mu, plus the learner's sigma)."""
        out: dict[str, float] = {}
        for name in self.players if names is None else names:
            mu, sigma = self.players[name]
            self.history.append({"step": step, "player": name, "mu": mu, "sigma": sigma})
            out[f"rating/{name}"] = mu
        if LEARNER in self.players:
            out["rating/learner_sigma"] = self.players[LEARNER][1]
        return out

    def table(self) -> list[dict]:
        """Players by conservative rating, best first."""
        rows = [{"player": n, "mu": mu, "sigma": s, "ordinal": mu - 3 * s} for n, (mu, s) in self.players.items()]
        return sorted(rows, key=lambda r: -r["ordinal"])

    def write_table(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["player", "mu", "sigma", "ordinal"])
            writer.writeheader()
            writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in self.table())

    def plot(self, path: Path, max_players: int = 12) -> None:
        """Rating (mu, with a band of one sigma) against env steps: the learner and the best
        rated others."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [LEARNER] + [r["player"] for r in self.table() if r["player"] != LEARNER][: max_players - 1]
        fig, ax = plt.subplots(figsize=(8, 5))
        for name in names:
            rows = [h for h in self.history if h["player"] == name]
            if not rows:
                continue
            steps = [h["step"] for h in rows]
            mu = [h["mu"] for h in rows]
            sigma = [h["sigma"] for h in rows]
            line, = ax.plot(steps, mu, label=name, lw=2.5 if name == LEARNER else 1.2)
            ax.fill_between(steps, [m - s for m, s in zip(mu, sigma)], [m + s for m, s in zip(mu, sigma)], color=line.get_color(), alpha=0.12)
        if not self.history:
            ax.text(0.5, 0.5, "no evaluation yet", ha="center", transform=ax.transAxes)
        ax.set_xlabel("env steps")
        ax.set_ylabel("OpenSkill rating (mu ± sigma)")
        if self.history:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def state_dict(self) -> dict:
        return {"players": dict(self.players), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.players = {k: tuple(v) for k, v in state["players"].items()}
        self.history = list(state["history"])
