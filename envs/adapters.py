"""Adapters to PettingZoo ParallelEnvs (from gymnasium envs, and a leaner AEC-to-parallel step).

- `GymParallel`: a single-agent gymnasium env as a one-agent ParallelEnv ("agent_0").
- `TupleParallel`: a gymnasium env with Tuple observation/action spaces (one entry per
  agent, e.g. level-based foraging) as an N-agent ParallelEnv with a shared episode end.
- `CycleParallel`: PettingZoo's aec_to_parallel for AEC envs whose agents act in a fixed
  cycle, without the observation it computes and drops before every agent's move.

The gymnasium adapters keep terminated and truncated apart and return the final step's
dicts in full.
"""
from __future__ import annotations

from typing import Any, Callable

from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.utils.conversions import aec_to_parallel_wrapper


class GymParallel(ParallelEnv):
    """One gymnasium env seen as a ParallelEnv with the single agent "agent_0"."""

    def __init__(self, env: Any):
        self.env = env
        self.possible_agents = ["agent_0"]
        self.agents: list[str] = []
        self.metadata = dict(getattr(env, "metadata", {}))
        self.render_mode = getattr(env, "render_mode", None)
        self._obs_space, self._act_space = env.observation_space, env.action_space

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_space

    def reset(self, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.agents = ["agent_0"]
        return {"agent_0": obs}, {"agent_0": info}

    def step(self, actions: dict):
        obs, reward, terminated, truncated, info = self.step_one(actions["agent_0"])
        return {"agent_0": obs}, {"agent_0": reward}, {"agent_0": terminated}, {"agent_0": truncated}, {"agent_0": info}

    def step_one(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """The agent's step as gymnasium returns it, without `step`'s dicts
        (`marl.core.vec.OneAgentStep`: VecEnv steps one-agent envs through it)."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        terminated, truncated = bool(terminated), bool(truncated)
        self.agents = [] if (terminated or truncated) else ["agent_0"]
        return obs, float(reward), terminated, truncated, info

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


class TupleParallel(ParallelEnv):
    """A gymnasium env with Tuple spaces (entry i = agent i) seen as a ParallelEnv.

    Rewards are per agent (a list or array from the env, or one float shared by all);
    terminated/truncated are shared by every agent. `split_end(env, terminated, truncated)`
    may reclassify an episode end (e.g. a time limit the env reports as termination).
    """

    def __init__(self, env: Any, split_end: Callable[[Any, bool, bool], tuple[bool, bool]] | None = None):
        obs_space, act_space = env.observation_space, env.action_space
        if not (isinstance(obs_space, spaces.Tuple) and isinstance(act_space, spaces.Tuple)):
            raise TypeError(f"TupleParallel needs Tuple spaces, got {obs_space} and {act_space}")
        self.env, self.split_end = env, split_end
        n = len(act_space.spaces)
        self.possible_agents = [f"agent_{i}" for i in range(n)]
        self.agents: list[str] = []
        self.metadata = dict(getattr(env, "metadata", {}))
        self.render_mode = getattr(env, "render_mode", None)
        self._obs = dict(zip(self.possible_agents, obs_space.spaces))
        self._act = dict(zip(self.possible_agents, act_space.spaces))

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._act[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        return dict(zip(self.agents, obs)), {a: dict(info) for a in self.agents}

    def step(self, actions: dict):
        agents = self.possible_agents
        obs, reward, terminated, truncated, info = self.env.step(tuple(actions[a] for a in agents))
        if self.split_end is not None and (terminated or truncated):
            terminated, truncated = self.split_end(self.env, bool(terminated), bool(truncated))
        if isinstance(reward, (int, float)):
            reward = [reward] * len(agents)
        done = bool(terminated or truncated)
        self.agents = [] if done else list(agents)
        return (dict(zip(agents, obs)), {a: float(r) for a, r in zip(agents, reward)},
                dict.fromkeys(agents, bool(terminated)), dict.fromkeys(agents, bool(truncated)),
                {a: dict(info) for a in agents})

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


def lbf_split_end(env: Any, terminated: bool, truncated: bool) -> tuple[bool, bool]:
    """lbforaging ends an episode at its step limit with terminated=True; when food is left
    on the field the end was the time limit, so report it as a truncation."""
    base = env.unwrapped
    if terminated and base.field.sum() > 0:
        return False, True
    return terminated, truncated


class CycleParallel(aec_to_parallel_wrapper):
    """aec_to_parallel_wrapper whose step skips `aec_env.last()` before each agent's move.

    The wrapper reads last() and ignores the result, so every parallel step builds N
    observations nobody uses (mpe2 simple_spread: 6 observe() calls per step instead of 3).
    Everything else is the wrapper's own step: agents in cycle order, rewards summed over
    the cycle, flags, infos and observations read after it, agents that ended stepped out.
    """

    def step(self, actions):
        env = self.aec_env
        rewards = dict.fromkeys(env.agents, 0)
        for agent in env.agents:
            if agent != env.agent_selection:
                raise AssertionError(f"expected agent {agent} got agent {env.agent_selection}: CycleParallel needs agents that step in a cycle")
            env.step(actions[agent])
            for a in env.agents:
                rewards[a] = rewards.get(a, 0) + env.rewards[a]
        terminations, truncations, infos = dict(env.terminations), dict(env.truncations), dict(env.infos)
        observations = {a: env.observe(a) for a in env.agents}
        while env.agents and (env.terminations[env.agent_selection] or env.truncations[env.agent_selection]):
            env.step(None)
        self.agents = env.agents
        return observations, rewards, terminations, truncations, infos
