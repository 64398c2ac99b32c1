"""EnvSpec: what the learner needs to know about a PettingZoo ParallelEnv, and the
encoder that turns its per-agent dicts into padded arrays with a fixed agent axis.

Contracts (see ARCHITECTURE.md):
- agent axis N = len(possible_agents), fixed order;
- observations flattened to float32 and zero-padded to the largest agent's size;
- discrete actions padded to the largest action set, padding masked out of `avail`;
- `avail` also takes a PettingZoo `action_mask` from the observation dict or the info dict;
- global state from `env.state()` when the env has it, else the concatenated padded obs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from marl.core.errors import MarlError


def _obs_part(space: spaces.Space) -> spaces.Space:
    """The observation inside a {'observation', 'action_mask'} dict, else the space itself."""
    if isinstance(space, spaces.Dict) and "observation" in space.spaces:
        return space.spaces["observation"]
    return space


def _flat_dim(space: spaces.Space, agent: str) -> int:
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    raise MarlError(
        f"observation space {space} of agent '{agent}' is not supported",
        "wrap the env so observations are Box, Discrete, MultiBinary or MultiDiscrete (or a dict with 'observation' and 'action_mask')",
    )


@dataclass(frozen=True)
class EnvSpec:
    """Static description of a multi-agent env, shared by runner, networks and learners."""

    agents: tuple[str, ...]
    obs_dims: tuple[int, ...]
    action_kind: str  # "discrete" | "continuous"
    action_sizes: tuple[int, ...]  # per agent: number of actions (discrete) or action dim (continuous)
    state_dim: int
    has_state: bool  # True when state comes from env.state(), False for concatenated obs
    has_action_mask: bool
    action_low: tuple[tuple[float, ...], ...] = ()
    action_high: tuple[tuple[float, ...], ...] = ()
    name: str = ""
    state_is_concat_obs: bool = False  # the state is the agents' observations concatenated: it adds nothing to them
    discrete_obs: bool = False  # every agent observes one Discrete value, one-hot encoded: its index is the obs argmax

    @property
    def n_agents(self) -> int:
        return len(self.agents)

    @property
    def obs_dim(self) -> int:
        return max(self.obs_dims)

    @property
    def n_actions(self) -> int:
        """Padded number of discrete actions (or padded action dim when continuous)."""
        return max(self.action_sizes)

    @property
    def discrete(self) -> bool:
        return self.action_kind == "discrete"

    def subset(self, agents: Any) -> "EnvSpec":
        """The spec of the agents at indices `agents` (in that order), as one policy sees them:
        their own observation and action sizes (padded to their own maxima), the global state."""
        idx = [int(i) for i in agents]
        pick = lambda values: tuple(values[i] for i in idx) if values else ()  # noqa: E731
        width = max(self.action_sizes[i] for i in idx)
        cut = lambda bounds: tuple(b[:width] for b in pick(bounds))  # noqa: E731
        return EnvSpec(pick(self.agents), pick(self.obs_dims), self.action_kind, pick(self.action_sizes), self.state_dim,
                       self.has_state, self.has_action_mask, cut(self.action_low), cut(self.action_high), self.name,
                       self.state_is_concat_obs)

    @classmethod
    def from_env(cls, env: Any, name: str = "") -> "EnvSpec":
        agents = tuple(env.possible_agents)
        if not agents:
            raise MarlError(f"env '{name}' has no agents", "check that the factory builds a PettingZoo env with possible_agents")
        obs_spaces = [env.observation_space(a) for a in agents]
        act_spaces = [env.action_space(a) for a in agents]
        obs_dims = tuple(_flat_dim(_obs_part(s), a) for s, a in zip(obs_spaces, agents))
        has_mask = any(isinstance(s, spaces.Dict) and "action_mask" in s.spaces for s in obs_spaces)
        if all(isinstance(s, spaces.Discrete) for s in act_spaces):
            kind, sizes, low, high = "discrete", tuple(int(s.n) for s in act_spaces), (), ()
        elif all(isinstance(s, spaces.Box) and len(s.shape) == 1 for s in act_spaces):
            kind, sizes = "continuous", tuple(int(s.shape[0]) for s in act_spaces)
            width = max(sizes)
            pad = lambda v, fill: tuple(float(x) for x in v) + (fill,) * (width - len(v))  # noqa: E731
            low = tuple(pad(s.low, -1.0) for s in act_spaces)
            high = tuple(pad(s.high, 1.0) for s in act_spaces)
        else:
            kinds = sorted({type(s).__name__ for s in act_spaces})
            raise MarlError(
                f"action spaces {kinds} of env '{name}' are not supported",
                "all agents need Discrete actions or all need 1-D Box actions (wrap MultiDiscrete/Tuple actions into one of these)",
            )
        state_fn = getattr(env, "state", None)
        has_state = False
        state_dim = len(agents) * max(obs_dims)
        if callable(state_fn):
            space = getattr(env, "state_space", None)
            if isinstance(space, spaces.Box):
                has_state, state_dim = True, int(np.prod(space.shape))
        # without state() the state is the concatenated padded observations; an env may declare
        # that its state() is the concatenation of its observations (envs.make does for mpe2)
        concat = not has_state or bool(getattr(env, "state_is_concat_obs", False))
        discrete_obs = all(isinstance(_obs_part(s), spaces.Discrete) for s in obs_spaces)
        return cls(agents, obs_dims, kind, sizes, state_dim, has_state, has_mask, low, high, name, concat, discrete_obs)


class ObsShapeError(ValueError):
    """An observation whose shape is not the agent's declared observation space's; the runner
    adds the env copy and the step to the message."""

    def __init__(self, agent: str, expected: tuple, got: tuple):
        self.agent, self.expected, self.got = agent, expected, got
        super().__init__(f"agent '{agent}' observed shape {got}, its observation space declares {expected}")


class Encoder:
    """Turns one env's per-agent dicts into padded arrays (the hot path of the runner)."""

    def __init__(self, spec: EnvSpec, env: Any):
        self.spec = spec
        self.index = {a: i for i, a in enumerate(spec.agents)}
        self._obs_spaces = [_obs_part(env.observation_space(a)) for a in spec.agents]
        self.simple = all(isinstance(s, spaces.Box) for s in self._obs_spaces)  # every observation is a Box: read as is
        base = np.zeros((spec.n_agents, max(spec.action_sizes)), dtype=bool)
        if spec.discrete:
            for i, n in enumerate(spec.action_sizes):
                base[i, :n] = True
        else:
            base[:] = True
        self.base_avail = base
        # state() == concatenation of the (unpadded) observations: build it from them
        self.state_from_obs = spec.has_state and spec.state_is_concat_obs
        d = spec.obs_dim
        self._valid = np.concatenate([np.arange(i * d, i * d + n) for i, n in enumerate(spec.obs_dims)])

    def _flat(self, i: int, value: Any) -> np.ndarray:
        space = self._obs_spaces[i]
        if isinstance(space, spaces.Discrete):
            out = np.zeros(space.n, dtype=np.float32)
            out[int(value) - int(space.start)] = 1.0
            return out
        if isinstance(space, spaces.MultiDiscrete):
            return np.concatenate([np.eye(n, dtype=np.float32)[v] for n, v in zip(space.nvec.ravel(), np.ravel(value))])
        return np.asarray(value, dtype=np.float32).ravel()

    def obs(self, obs: dict, infos: dict | None, out_obs: np.ndarray, out_avail: np.ndarray) -> None:
        """Write obs [N, D] and avail [N, A] for the agents present in `obs` (others untouched)."""
        index, simple, dims = self.index, self.simple, self.spec.obs_dims
        for agent, value in obs.items():
            i = index[agent]
            mask = None
            if isinstance(value, dict):
                mask = value.get("action_mask")
                value = value["observation"]
            flat = np.ravel(value) if simple else self._flat(i, value)
            if flat.shape[0] != dims[i]:  # never pad or cut silently: the env broke its declared space
                raise ObsShapeError(agent, self._obs_spaces[i].shape, np.shape(value))
            out_obs[i, : flat.shape[0]] = flat
            if mask is None and infos:
                mask = infos.get(agent, {}).get("action_mask")
            if mask is not None:
                n = len(mask)
                out_avail[i, :n] = np.asarray(mask, dtype=bool)
                out_avail[i, n:] = False
            else:
                out_avail[i] = self.base_avail[i]

    def state(self, env: Any, obs: np.ndarray) -> np.ndarray:
        """Global state for padded obs [N, D] of every agent."""
        if self.state_from_obs:
            return obs.reshape(-1)[self._valid]
        if self.spec.has_state:
            return np.asarray(env.state(), dtype=np.float32).ravel()
        return obs.reshape(-1)
