"""Identity task: each agent sees a one-hot random target and is paid 1 for naming it."""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from marl.envs.builtin.base import BuiltinEnv


class Identity(BuiltinEnv):
    """Per-agent reward 1 when action == own target. `hetero`: agent i has n_actions + i
    actions (and observation size); `masked`: infos carry an `action_mask` forbidding one
    wrong action. Episodes end by truncation after episode_len steps (targets are i.i.d.)."""

    def __init__(self, n_agents: int = 2, n_actions: int = 4, episode_len: int = 8,
                 hetero: bool = False, masked: bool = False):
        super().__init__()
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        self.sizes = {a: n_actions + (i if hetero else 0) for i, a in enumerate(self.possible_agents)}
        if min(self.sizes.values()) < 2:
            raise ValueError("identity needs n_actions >= 2")
        self.episode_len, self.masked = int(episode_len), bool(masked)
        self._obs_spaces = {a: spaces.Box(0.0, 1.0, (n,), np.float32) for a, n in self.sizes.items()}
        self._act_spaces = {a: spaces.Discrete(n) for a, n in self.sizes.items()}
        self.state_space = spaces.Box(0.0, 1.0, (sum(self.sizes.values()),), np.float32)
        self.targets: dict[str, int] = {}
        self.t = 0

    def _draw(self) -> None:
        self.targets = {a: int(self.rng.integers(n)) for a, n in self.sizes.items()}

    def _obs(self, agent: str) -> np.ndarray:
        out = np.zeros(self.sizes[agent], dtype=np.float32)
        out[self.targets[agent]] = 1.0
        return out

    def _info(self, agent: str) -> dict:
        if not self.masked:
            return {}
        n, target = self.sizes[agent], self.targets[agent]
        mask = np.ones(n, dtype=np.int8)
        mask[(target + 1) % n] = 0
        return {"action_mask": mask}

    def state(self) -> np.ndarray:
        return np.concatenate([self._obs(a) for a in self.possible_agents])

    def reset(self, seed=None, options=None):
        self._seed(seed)
        self.t = 0
        self._draw()
        self.agents = list(self.possible_agents)
        return {a: self._obs(a) for a in self.agents}, {a: self._info(a) for a in self.agents}

    def step(self, actions):
        agents = self.agents
        rewards = {a: float(int(actions[a]) == self.targets[a]) for a in agents}
        self.t += 1
        done = self.t >= self.episode_len
        self._draw()
        self.agents = [] if done else agents
        return ({a: self._obs(a) for a in agents}, rewards, dict.fromkeys(agents, False),
                dict.fromkeys(agents, done), {a: self._info(a) for a in agents})
