"""Tiny cooperative grid: two agents must each reach their own goal cell."""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from marl.envs.builtin.base import BuiltinEnv

MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])  # stay, up, down, left, right


class Grid(BuiltinEnv):
    """agent_0's goal is the bottom-right corner, agent_1's the top-right; starts are random
    cells in the left column. Team reward: every live agent gets +1 per agent that reaches its
    goal this step, and -0.01 per step. An agent on its goal terminates (leaves `agents`) while
    the other goes on; after `max_steps` the remaining agents are truncated.
    Observation (scaled to [0, 1]): own position, own goal, other agent's position."""

    def __init__(self, size: int = 5, max_steps: int = 20):
        super().__init__()
        if size < 2:
            raise ValueError("grid size must be >= 2")
        self.size, self.max_steps = int(size), int(max_steps)
        self.possible_agents = ["agent_0", "agent_1"]
        self.goals = {"agent_0": np.array([size - 1, size - 1]), "agent_1": np.array([0, size - 1])}
        self._obs_spaces = {a: spaces.Box(0.0, 1.0, (6,), np.float32) for a in self.possible_agents}
        self._act_spaces = {a: spaces.Discrete(5) for a in self.possible_agents}
        self.state_space = spaces.Box(0.0, 1.0, (6,), np.float32)
        self.pos: dict[str, np.ndarray] = {}
        self.t = 0

    def _obs(self, agent: str) -> np.ndarray:
        other = self.possible_agents[1 - self.possible_agents.index(agent)]
        cells = np.concatenate([self.pos[agent], self.goals[agent], self.pos[other]])
        return (cells / (self.size - 1)).astype(np.float32)

    def state(self) -> np.ndarray:
        cells = np.concatenate([self.pos[a] for a in self.possible_agents]) / (self.size - 1)
        alive = [float(a in self.agents) for a in self.possible_agents]
        return np.concatenate([cells, alive]).astype(np.float32)

    def reset(self, seed=None, options=None):
        self._seed(seed)
        self.t = 0
        rows = self.rng.choice(self.size, size=2, replace=False)
        self.pos = {a: np.array([r, 0]) for a, r in zip(self.possible_agents, rows)}
        self.agents = list(self.possible_agents)
        return {a: self._obs(a) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        agents = self.agents
        for a in agents:
            self.pos[a] = np.clip(self.pos[a] + MOVES[int(actions[a])], 0, self.size - 1)
        arrived = {a: bool(np.array_equal(self.pos[a], self.goals[a])) for a in agents}
        self.t += 1
        timeout = self.t >= self.max_steps
        reward = sum(arrived.values()) - 0.01
        self.agents = [a for a in agents if not arrived[a] and not timeout]
        truncated = {a: timeout and not arrived[a] for a in agents}
        return ({a: self._obs(a) for a in agents}, dict.fromkeys(agents, float(reward)), arrived,
                truncated, {a: {} for a in agents})
