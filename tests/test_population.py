"""Opponent pool, opponent sampling, ratings and exploitability: pure functions against hand
values, and the matrix-game known answer (latest-only self-play cycles, a uniform pool of
snapshots reaches the mixed equilibrium)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from marl.core.errors import MarlError
from marl.population.matrix import ROCK_PAPER_SCISSORS as RPS, exploitability
from marl.population.pool import OpponentPool, pfsp_weights, sampling_probs, win_rate
from marl.population.ratings import LEARNER, Ratings


def test_pfsp_weights_prefer_the_opponents_the_learner_loses_to():
    w = pfsp_weights(np.array([0.0, 0.5, 0.75, 1.0]))
    assert np.allclose(w, np.array([1.0, 0.25, 0.0625, 0.0]) / 1.3125)
    assert np.allclose(pfsp_weights(np.array([1.0, 1.0])), [0.5, 0.5])  # beats all: uniform


def test_sampling_probs_latest_uniform_pfsp():
    rates = np.array([0.9, 0.2, 0.5])
    assert sampling_probs("latest", rates, latest=1).tolist() == [0, 1, 0]
    assert np.allclose(sampling_probs("uniform", rates, latest=1), 1 / 3)
    assert np.allclose(sampling_probs("pfsp", rates, latest=1), np.array([0.01, 0.64, 0.25]) / 0.9)
    with pytest.raises(MarlError, match="empty"):
        sampling_probs("uniform", np.array([]), latest=0)


def test_win_rate_starts_at_a_half_and_follows_results():
    assert win_rate([0.0], [0.0]).tolist() == [0.5]
    assert np.allclose(win_rate([3.0, 0.0], [3.0, 3.0]), [3.5 / 4, 0.5 / 4])


def test_pool_keeps_max_size_snapshots_and_its_fixed_opponents():
    pool = OpponentPool(max_size=2, sampling="latest", seed=0)
    pool.add_fixed("random", "random")
    for step in (10, 20, 30):
        pool.add_snapshot({"w": step}, step)
    assert [m.name for m in pool.members] == ["random", "snapshot@20", "snapshot@30"]
    assert set(pool.sample(20).tolist()) == {pool.members[-1].id}  # latest: the newest snapshot
    with pytest.raises(MarlError, match="two pool opponents"):
        pool.add_fixed("random", "random")


def test_pool_snapshots_on_schedule_or_win_rate():
    pool = OpponentPool(max_size=5)
    pool.add_snapshot({}, 0)
    assert not pool.wants_snapshot(99, interval=100, threshold=0, min_games=0)
    assert pool.wants_snapshot(100, interval=100, threshold=0, min_games=0)
    for score in (1, 1, 0.5, 1):
        pool.record(pool.members[0].id, score)
    assert pool.wants_snapshot(1, interval=0, threshold=0.85, min_games=4)  # 3.5 / 4
    assert not pool.wants_snapshot(1, interval=0, threshold=0.9, min_games=4)
    assert not pool.wants_snapshot(1, interval=0, threshold=0.85, min_games=5)
    pool.add_snapshot({}, 1)
    assert not pool.wants_snapshot(1, interval=0, threshold=0.85, min_games=1)  # counted anew


def test_pfsp_pool_draws_the_hard_opponent_and_resumes_exactly():
    pool = OpponentPool(max_size=5, sampling="pfsp", seed=3, decay=1.0)
    easy, hard = pool.add_fixed("easy", "random"), pool.add_fixed("hard", "random")
    for _ in range(9):
        pool.record(easy.id, 1.0)
        pool.record(hard.id, 0.0)
    # win rates 0.95 and 0.05: weights 0.0025 and 0.9025
    draws = pool.sample(2000)
    assert 0.99 < (draws == hard.id).mean() <= 1.0
    copy = OpponentPool(max_size=5, sampling="pfsp", seed=99)
    copy.load_state_dict(pool.state_dict())
    assert pool.sample(50).tolist() == copy.sample(50).tolist()
    assert np.allclose(pool.win_rates(), copy.win_rates())


def test_ratings_winner_gains_draw_keeps_order_and_snapshot_inherits(tmp_path):
    r = Ratings()
    for _ in range(10):
        r.game(LEARNER, "random", 1.0)
    assert r.players[LEARNER][0] > 25 > r.players["random"][0]
    r.add("snapshot@5", like=LEARNER)
    assert r.players["snapshot@5"] == r.players[LEARNER]
    mu = r.players[LEARNER][0]
    r.game(LEARNER, "snapshot@5", 0.5)
    assert r.players[LEARNER][0] == pytest.approx(mu) and r.players[LEARNER][1] < r.players["snapshot@5"][1] + 1
    metrics = r.record(100)
    assert metrics["rating/learner"] == r.players[LEARNER][0] and len(r.history) == 3
    r.write_table(tmp_path / "ratings.csv")
    rows = list(csv.DictReader(open(tmp_path / "ratings.csv")))
    assert rows[-1]["player"] == "random" and len(rows) == 3
    r.plot(tmp_path / "ratings.png")
    assert (tmp_path / "ratings.png").read_bytes()[:4] == b"\x89PNG"
    copy = Ratings()
    copy.load_state_dict(r.state_dict())
    assert copy.table() == r.table()


def test_exploitability_of_known_strategies():
    third = np.full(3, 1 / 3)
    assert exploitability(RPS, third) == pytest.approx(0.0)
    assert exploitability(RPS, [1.0, 0.0, 0.0]) == pytest.approx(1.0)  # paper beats it by 1
    assert exploitability(RPS, [0.5, 0.5, 0.0]) == pytest.approx(0.5)  # paper: 0.5 * 1 + 0.5 * 0
    assert exploitability(RPS, third, [1.0, 0.0, 0.0]) == pytest.approx(0.5)  # only the column side gives 1
    matching_pennies = np.array([[1.0, -1.0], [-1.0, 1.0]])
    assert exploitability(matching_pennies, [0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert exploitability(matching_pennies, [0.8, 0.2], [0.5, 0.5]) == pytest.approx(0.3)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _matrix_self_play(sampling: str, steps: int = 2000, lr: float = 2.0, entropy: float = 0.2, games: int = 64):
    """A softmax policy on rock-paper-scissors trained by policy gradient (exact expected
    gradient, an entropy bonus) against `games` opponents drawn from the pool per step; a
    snapshot every 10 steps. Returns the learner's policy at every step and the pool."""
    pool = OpponentPool(max_size=1000, sampling=sampling, seed=0)
    theta = np.array([1.0, 0.0, 0.0])
    pool.add_snapshot({"probs": _softmax(theta)}, 0)
    played = []
    for t in range(1, steps + 1):
        y = np.mean([pool.by_id(i).state["probs"] for i in pool.sample(games)], axis=0)
        x = _softmax(theta)
        g = RPS @ y - entropy * np.log(x)
        theta += lr * x * (g - x @ g)
        played.append(x)
        if pool.wants_snapshot(t, interval=10, threshold=0, min_games=0):
            pool.add_snapshot({"probs": _softmax(theta)}, t)
    return np.array(played), pool


def test_latest_self_play_cycles_and_a_uniform_pool_reaches_the_mixed_equilibrium():
    played, _ = _matrix_self_play("latest")
    late = played[-500:]
    assert min(exploitability(RPS, x) for x in late) > 0.25  # never near the equilibrium
    assert len(set(late.argmax(1).tolist())) == 3 and (np.diff(late.argmax(1)) != 0).sum() >= 6  # rock → paper → scissors → ...
    played, pool = _matrix_self_play("uniform")
    average = np.mean([m.state["probs"] for m in pool.members], axis=0)
    assert exploitability(RPS, average) < 0.05
    assert np.mean([exploitability(RPS, x) for x in played[-500:]]) < 0.15  # and the learner stops cycling
