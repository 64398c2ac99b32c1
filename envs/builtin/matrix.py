"""Cooperative matrix games (two agents, team reward), optionally repeated `episode_len` times."""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from marl.envs.builtin.base import BuiltinEnv

# payoff[a0][a1]; the presets are registered as builtin/<key>
PRESETS = {
    # QTRAN paper (Son et al. 2019), non-monotonic: optimum (0, 0) = 8
    "matrix_qtran": [[8, -12, -12], [-12, 0, 0], [-12, 0, 0]],
    # additive: payoff[i][j] = u[i] + v[j], u = [0, 2, 1], v = [1, 0, 3]; unique optimum (1, 2) = 5
    "matrix_additive": [[1, 0, 3], [3, 2, 5], [2, 1, 4]],
    # climbing game (Claus & Boutilier 1998): optimum (0, 0) = 11
    "climbing": [[11, -30, 0], [-30, 7, 6], [0, 0, 5]],
    # penalty game with k = -10: optima (0, 2) and (2, 0) = 10
    "penalty": [[-10, 0, 10], [0, 2, 0], [10, 0, -10]],
}


class MatrixGame(BuiltinEnv):
    """Both agents pick a row/column; each gets payoff[a0][a1]. Observation and state are a
    one-hot of the step index (all zeros after the last step); terminates after episode_len."""

    def __init__(self, payoff: list[list[float]] | None = None, episode_len: int = 1):
        super().__init__()
        self.payoff = np.asarray(PRESETS["matrix_qtran"] if payoff is None else payoff, dtype=np.float32)
        if self.payoff.ndim != 2 or episode_len < 1:
            raise ValueError("payoff must be a 2-D list of lists and episode_len >= 1")
        self.episode_len = int(episode_len)
        self.possible_agents = ["agent_0", "agent_1"]
        obs = spaces.Box(0.0, 1.0, (self.episode_len,), np.float32)
        self._obs_spaces = dict.fromkeys(self.possible_agents, obs)
        self._act_spaces = {a: spaces.Discrete(n) for a, n in zip(self.possible_agents, self.payoff.shape)}
        self.state_space = obs
        self.t = 0

    def state(self) -> np.ndarray:
        out = np.zeros(self.episode_len, dtype=np.float32)
        if self.t < self.episode_len:
            out[self.t] = 1.0
        return out

    def reset(self, seed=None, options=None):
        self._seed(seed)
        self.t = 0
        self.agents = list(self.possible_agents)
        return {a: self.state() for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        reward = float(self.payoff[int(actions["agent_0"]), int(actions["agent_1"])])
        self.t += 1
        done = self.t >= self.episode_len
        agents = self.agents
        self.agents = [] if done else agents
        return ({a: self.state() for a in agents}, dict.fromkeys(agents, reward),
                dict.fromkeys(agents, done), dict.fromkeys(agents, False), {a: {} for a in agents})
