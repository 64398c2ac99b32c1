"""Two-player zero-sum matrix games: exact exploitability of a strategy pair.

`payoff[i, j]` is the row player's payoff when row plays i and column plays j (the column
player gets -payoff). The exploitability of (x, y) is the mean of what each side gains by a
best response: (max_i (A y)_i - min_j (x A)_j) / 2, i.e. NashConv / 2; it is 0 exactly at a
Nash equilibrium. For a symmetric game (A = -A^T) and x = y it is max_i (A x)_i.
"""
from __future__ import annotations

import numpy as np

ROCK_PAPER_SCISSORS = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])


def exploitability(payoff: np.ndarray, x: np.ndarray, y: np.ndarray | None = None) -> float:
    """NashConv / 2 of the row strategy x and column strategy y (y = x when omitted)."""
    a = np.asarray(payoff, np.float64)
    x = np.asarray(x, np.float64)
    y = x if y is None else np.asarray(y, np.float64)
    return float(((a @ y).max() - (x @ a).min()) / 2)
