"""Continuous-action target task: reward -||a - target||^2 per agent."""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from marl.envs.builtin.base import BuiltinEnv


class Target(BuiltinEnv):
    """Each agent observes its own random target in [-1, 1]^dim and is paid -||a - target||^2
    (actions clipped to [-1, 1]); new targets every step, truncation after episode_len."""

    def __init__(self, n_agents: int = 2, dim: int = 2, episode_len: int = 4):
        super().__init__()
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        self.dim, self.episode_len = int(dim), int(episode_len)
        box = spaces.Box(-1.0, 1.0, (self.dim,), np.float32)
        self._obs_spaces = dict.fromkeys(self.possible_agents, box)
        self._act_spaces = {a: spaces.Box(-1.0, 1.0, (self.dim,), np.float32) for a in self.possible_agents}
        self.state_space = spaces.Box(-1.0, 1.0, (n_agents * self.dim,), np.float32)
        self.targets = np.zeros((n_agents, self.dim), dtype=np.float32)
        self.t = 0

    def _draw(self) -> None:
        self.targets = self.rng.uniform(-1.0, 1.0, self.targets.shape).astype(np.float32)

    def state(self) -> np.ndarray:
        return self.targets.ravel().copy()

    def reset(self, seed=None, options=None):
        self._seed(seed)
        self.t = 0
        self._draw()
        self.agents = list(self.possible_agents)
        return {a: self.targets[i].copy() for i, a in enumerate(self.agents)}, {a: {} for a in self.agents}

    def step(self, actions):
        agents, index = self.agents, self.possible_agents.index
        rewards = {}
        for a in agents:
            act = np.clip(np.asarray(actions[a], dtype=np.float32), -1.0, 1.0)
            rewards[a] = -float(np.sum((act - self.targets[index(a)]) ** 2))
        self.t += 1
        done = self.t >= self.episode_len
        self._draw()
        self.agents = [] if done else agents
        return ({a: self.targets[index(a)].copy() for a in agents}, rewards, dict.fromkeys(agents, False),
                dict.fromkeys(agents, done), {a: {} for a in agents})
