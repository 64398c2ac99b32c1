"""Shared plumbing of the built-in envs: fixed space objects per agent and seeding."""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


class BuiltinEnv(ParallelEnv):
    """Subclasses set `possible_agents`, `_obs_spaces`, `_act_spaces` (dicts) in __init__."""

    metadata = {"name": "builtin", "render_modes": []}
    render_mode = None
    _obs_spaces: dict[str, spaces.Space]
    _act_spaces: dict[str, spaces.Space]

    def __init__(self) -> None:
        self.agents: list[str] = []
        self.rng = np.random.default_rng()

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_spaces[agent]

    def _seed(self, seed: int | None) -> None:
        """Reseed the env's generator (and the action spaces, for sampling) when a seed is given."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
            for i, agent in enumerate(self.possible_agents):
                self._act_spaces[agent].seed(seed + i)

    def close(self) -> None:
        pass
