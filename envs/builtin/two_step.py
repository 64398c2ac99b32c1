"""The cooperative two-step game of the QMIX paper (Rashid et al. 2018, section 6.1)."""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from marl.envs.builtin.base import BuiltinEnv

PAYOFF_2A = [[7.0, 7.0], [7.0, 7.0]]
PAYOFF_2B = [[0.0, 1.0], [1.0, 8.0]]


class TwoStep(BuiltinEnv):
    """Two agents, two actions, two steps, team reward.

    Step 1 (state 1) pays nothing; agent_0's action picks the next state (0 -> 2A, 1 -> 2B),
    agent_1's action has no effect. Step 2 pays every agent PAYOFF_2A[a0][a1] = 7 in 2A or
    PAYOFF_2B[a0][a1] in 2B (8 for joint action (1, 1)), then terminates. The optimum is
    2B with (1, 1): 8 per agent; VDN's additive utilities settle for 2A's safe 7.
    Observation of every agent and the global state: a one-hot of (1, 2A, 2B), all zeros
    after the end.
    """

    def __init__(self):
        super().__init__()
        self.possible_agents = ["agent_0", "agent_1"]
        obs = spaces.Box(0.0, 1.0, (3,), np.float32)
        self._obs_spaces = dict.fromkeys(self.possible_agents, obs)
        self._act_spaces = {a: spaces.Discrete(2) for a in self.possible_agents}
        self.state_space = obs
        self.payoff = {1: np.asarray(PAYOFF_2A, np.float32), 2: np.asarray(PAYOFF_2B, np.float32)}
        self.where = 0  # 0: state 1, 1: 2A, 2: 2B, 3: ended

    def state(self) -> np.ndarray:
        out = np.zeros(3, dtype=np.float32)
        if self.where < 3:
            out[self.where] = 1.0
        return out

    def reset(self, seed=None, options=None):
        self._seed(seed)
        self.where = 0
        self.agents = list(self.possible_agents)
        return {a: self.state() for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        a0, a1 = int(actions["agent_0"]), int(actions["agent_1"])
        agents = self.agents
        if self.where == 0:
            reward, self.where = 0.0, 1 + a0
        else:
            reward, self.where = float(self.payoff[self.where][a0, a1]), 3
        done = self.where == 3
        self.agents = [] if done else agents
        return ({a: self.state() for a in agents}, dict.fromkeys(agents, reward),
                dict.fromkeys(agents, done), dict.fromkeys(agents, False), {a: {} for a in agents})
