"""Policies that are not learners, and several policies in one joint step.

`RandomPolicy` acts uniformly over each agent's available actions (a fixed opponent for
evaluation). `AgentPolicies` says which policy controls which agent: each policy acts once
per step on the whole batch (batched over envs and agents, as every `Policy` does) and its
actions are kept in the columns of its own agents. `outcomes` counts wins, draws and losses
per agent from finished episodes (the sign of each agent's return: what a zero-sum game's
team return, 0 by construction, cannot say).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch

from marl.core.errors import MarlError
from marl.core.rollout import Policy
from marl.core.spec import EnvSpec
from marl.core.vec import EpisodeStats


def device_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """`gen` when it lives on `device`, else a new generator there seeded with gen's seed (a
    frozen policy moved to another device keeps sampling)."""
    if gen.device.type == device.type and (gen.device.index or 0) == (device.index or 0):
        return gen
    out = torch.Generator(device=device)
    out.manual_seed(gen.initial_seed())
    return out


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of an acting module on the CPU, in eval mode, without gradients. Its tensors
    are fresh CPU copies: a learner's parameters are views into one flat buffer that holds its
    critic and every other network too, which a plain deepcopy would copy whole."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=False)
    for b in module.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    for m in module.modules():
        for v in vars(m).values():
            if isinstance(v, torch.Generator):
                memo[id(v)] = device_generator(v, torch.device("cpu")) if v.device.type != "cpu" else copy.deepcopy(v)
    out = copy.deepcopy(module, memo)
    out.eval()
    return out.requires_grad_(False)


class RandomPolicy:
    """Uniform over the available actions (discrete) or over the action box (continuous)."""

    def __init__(self, spec: EnvSpec, device: torch.device | str = "cpu", seed: int = 0):
        self.spec, self.device = spec, torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        if not spec.discrete:
            self.low = torch.as_tensor(np.asarray(spec.action_low, np.float32), device=self.device)
            self.high = torch.as_tensor(np.asarray(spec.action_high, np.float32), device=self.device)

    def initial_hidden(self, num_envs: int) -> None:
        return None

    def act(self, inputs: dict[str, torch.Tensor], hidden: Any, explore: bool) -> tuple[torch.Tensor, Any, dict]:
        avail = inputs["avail"]
        if not self.spec.discrete:
            u = torch.rand(avail.shape, generator=self.gen, device=avail.device)
            return self.low + u * (self.high - self.low), hidden, {}
        weights = (avail | ~avail.any(-1, keepdim=True)).flatten(0, -2).float()  # an agent with no action left: any
        actions = torch.multinomial(weights, 1, generator=self.gen).view(avail.shape[:-1])
        return actions, hidden, {}


class AgentPolicies:
    """One joint policy from several: agent i is controlled by `policies[owner[i]]`.

    Each policy acts on the full batch once per step (its actions for other agents' columns
    are dropped), so a step costs one batched call per policy, whatever the number of agents.
    The recurrent state is the list of the policies' states."""

    def __init__(self, policies: Sequence[Policy], owner: Sequence[int]):
        if not policies or any(not 0 <= o < len(policies) for o in owner):
            raise MarlError(f"every agent needs the index of one of the {len(policies)} policies, got {list(owner)}",
                            "give one policy index per agent")
        unused = sorted(set(range(len(policies))) - set(owner))
        if unused:
            raise MarlError(f"policies {unused} control no agent", "drop them or give them agents")
        self.policies, self.owner = list(policies), torch.as_tensor(list(owner))

    def initial_hidden(self, num_envs: int) -> list:
        return [p.initial_hidden(num_envs) for p in self.policies]

    def act(self, inputs: dict[str, torch.Tensor], hidden: list, explore: bool) -> tuple[torch.Tensor, list, dict]:
        actions, states = None, []
        for k, (policy, h) in enumerate(zip(self.policies, hidden)):
            a, h, _ = policy.act(inputs, h, explore)
            states.append(h)
            mine = (self.owner == k).to(a.device).view(-1, *([1] * (a.dim() - 2)))  # [N] over [E, N, ...]
            actions = a if actions is None else torch.where(mine, a, actions)
        return actions, states, {}


def outcomes(episodes: Sequence[EpisodeStats], n_agents: int) -> np.ndarray:
    """[N, 3] counts of (win, draw, loss) per agent: its episode return > 0, == 0, < 0."""
    returns = np.array([ep.agent_returns for ep in episodes], np.float64).reshape(-1, n_agents)
    return np.stack([(returns > 0).sum(0), (returns == 0).sum(0), (returns < 0).sum(0)], axis=1)
