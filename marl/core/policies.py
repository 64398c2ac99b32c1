"""Policies that are not learners, and several policies in one joint step.

`RandomPolicy` acts uniformly over each agent's available actions (a fixed opponent for
evaluation). `PolicyMap` says which policy controls which agents: each policy is built on
the sub-spec of its agents and acts once per step on its own agents' rows (gathered along
the agent axis, per env, so seats may differ between envs and be redrawn when an env's
episode ends). `AgentPolicies` is the simpler map for policies built on the full spec: each
acts on the whole batch and its actions are kept in the columns of its own agents. `fits`
checks that a policy acts in a slot's spaces. `outcomes` counts wins, draws and losses per
agent from finished episodes (the sign of each agent's return: what a zero-sum game's team
return, 0 by construction, cannot say).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch

from marl.core.errors import MarlError, check, first_line
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


def fits(what: str, policy: Any, spec: EnvSpec, device: torch.device | str = "cpu") -> Any:
    """`policy` if one exploring step on an all-legal dummy batch of `spec` (a slot's agents)
    gives actions [E, n] of legal indices (discrete) or [E, n, A] (continuous); otherwise a
    one-line MarlError that names `what` (e.g. "pool opponent 'x'")."""
    e, n = 2, spec.n_agents
    inputs = {"obs": torch.zeros(e, n, spec.obs_dim, device=device), "state": torch.zeros(e, spec.state_dim, device=device),
              "avail": torch.ones(e, n, spec.n_actions, dtype=torch.bool, device=device),
              "alive": torch.ones(e, n, dtype=torch.bool, device=device), "acting": torch.ones(e, n, dtype=torch.bool, device=device)}
    fix = f"give a policy for env '{spec.name}' (observations of {spec.obs_dim} floats, {spec.n_actions} actions, {n} agents)"
    try:
        actions, _, _ = policy.act(inputs, policy.initial_hidden(e), True)
    except MarlError:
        raise
    except Exception as err:  # noqa: BLE001 - a user's policy: its failure is the message
        raise MarlError(f"{what} does not fit this env's spaces ({type(err).__name__}: {first_line(err)})", fix) from None
    want = (e, n) if spec.discrete else (e, n, spec.n_actions)
    ok = tuple(actions.shape) == want and (not spec.discrete or bool(((actions >= 0) & (actions < spec.n_actions)).all()))
    check(ok, f"{what} does not fit this env's spaces (actions of shape {tuple(actions.shape)}, want {want}"
              f"{' with values below ' + str(spec.n_actions) if spec.discrete else ''})", fix)
    return policy


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

    def to(self, device: torch.device | str) -> "RandomPolicy":
        """Act on `device` from now on (its generator is reseeded there when it moves)."""
        self.device, self.gen = torch.device(device), device_generator(self.gen, torch.device(device))
        if not self.spec.discrete:
            self.low, self.high = self.low.to(device), self.high.to(device)
        return self

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])

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


def take(x: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """The entries of x at agent indices `idx` along `dim`: idx [n] (the same agents everywhere)
    or idx [*x.shape[:dim], n] (per leading index, e.g. per env)."""
    if idx.dim() == 1:
        return x.index_select(dim, idx)
    return x.gather(dim, idx.view(*idx.shape, *([1] * (x.dim() - dim - 1))).expand(*idx.shape, *x.shape[dim + 1:]))


def narrow_agents(x: torch.Tensor, key: str, spec: EnvSpec, dim: int) -> torch.Tensor:
    """Cut the padding of a field with an agent axis at `dim` to a sub-spec's own widths."""
    if key.endswith("obs"):
        return x.narrow(dim + 1, 0, spec.obs_dim)
    if key.endswith("avail") or (key.endswith("actions") and not spec.discrete):
        return x.narrow(dim + 1, 0, spec.n_actions)
    return x


AGENT_FIELDS = ("obs", "avail", "alive", "acting")  # the per-agent fields of a policy's inputs


class PolicyMap:
    """One joint policy from several, each controlling its own agents.

    `policies[k]` is built on `specs[k]` (`EnvSpec.subset` of the agents it controls) and
    controls `len(specs[k].agents)` agents of every env. Which ones is `seats` [E, N]: a
    permutation of the agent indices per env whose columns are taken by the policies in order
    (policy k has columns offsets[k]:offsets[k+1]). With `shuffle` the seats of an env are
    redrawn (uniformly, from `seed`) when its episode ends (self-play from either seat; the
    agents' spaces must then agree), else every env keeps `agents` (per policy, its agent
    indices). A step costs one batched call per policy, whatever the number of agents. The
    recurrent state is the list of the policies' states; `act` also returns the seats it
    acted under (`seats`) and each policy's extras prefixed with `<k>/`."""

    def __init__(self, policies: Sequence[Policy], agents: Sequence[Sequence[int]], spec: EnvSpec, num_envs: int,
                 shuffle: bool = False, seed: int = 0):
        self.policies, self.spec, self.shuffle = list(policies), spec, shuffle
        order = [int(i) for group in agents for i in group]
        if sorted(order) != list(range(spec.n_agents)):
            raise MarlError(f"the policies' agents {[list(g) for g in agents]} do not cover each of the {spec.n_agents} agents exactly once",
                            "give every agent to exactly one policy")
        self.specs = [spec.subset(g) for g in agents]
        self.offsets = np.cumsum([0] + [len(g) for g in agents]).tolist()
        self.gen = torch.Generator()
        self.gen.manual_seed(seed)
        self.fixed = torch.as_tensor(order)
        self._cols = torch.repeat_interleave(torch.arange(len(self.policies)), torch.diff(torch.as_tensor(self.offsets)))
        self.seats = self.fixed.expand(num_envs, -1).clone()
        if shuffle:
            self._redraw(torch.ones(num_envs, dtype=torch.bool))

    def columns(self, k: int) -> slice:
        return slice(self.offsets[k], self.offsets[k + 1])

    def _redraw(self, envs: torch.Tensor) -> None:
        n = int(envs.sum())
        if n:
            self.seats[envs] = torch.rand(n, self.spec.n_agents, generator=self.gen).argsort(-1)

    def owner(self, seats: torch.Tensor) -> torch.Tensor:
        """[..., N] index of the policy controlling each agent, for seats [..., N]."""
        return torch.empty_like(seats).scatter_(-1, seats, self._cols.expand_as(seats))

    def initial_hidden(self, num_envs: int) -> list:
        return [p.initial_hidden(num_envs) for p in self.policies]

    def act(self, inputs: dict[str, torch.Tensor], hidden: list, explore: bool) -> tuple[torch.Tensor, list, dict]:
        obs = inputs["obs"]
        E, N = obs.shape[:2]
        seats = self.seats.to(obs.device)
        actions = None
        states, extras = [], {"seats": seats.clone()}  # a copy: the seats may be redrawn before the collector stores it
        for k, (policy, spec, h) in enumerate(zip(self.policies, self.specs, hidden)):
            idx = seats[:, self.columns(k)] if self.shuffle else self.fixed[self.columns(k)].to(obs.device)
            sub = {key: narrow_agents(take(inputs[key], idx, 1), key, spec, 1) for key in AGENT_FIELDS}
            sub["state"] = inputs["state"]
            a, h, ex = policy.act(sub, h, explore)
            states.append(h)
            extras.update({f"{k}/{name}": v for name, v in ex.items()})
            if actions is None:
                shape = (E, N) if spec.discrete else (E, N, self.spec.n_actions)
                actions = torch.zeros(shape, dtype=a.dtype, device=obs.device)
            if not spec.discrete and a.shape[-1] < self.spec.n_actions:
                a = torch.nn.functional.pad(a, (0, self.spec.n_actions - a.shape[-1]))
            full = idx.expand(E, -1) if idx.dim() == 1 else idx
            actions.scatter_(1, full.view(*full.shape, *([1] * (a.dim() - 2))).expand_as(a), a)
        return actions, states, extras

    def episodes_ended(self, done: np.ndarray, episodes: Sequence[EpisodeStats]) -> None:
        """Tag the finished episodes with the policy of each agent, then redraw those envs' seats."""
        if not episodes:
            return
        ended = [ep.env for ep in episodes]
        for ep, owner in zip(episodes, self.owner(self.seats[ended]).tolist()):
            ep.owner = tuple(owner)
        if self.shuffle:
            self._redraw(torch.as_tensor(done, dtype=torch.bool))

    def seat_state(self) -> dict:
        return {"seats": self.seats.clone(), "gen": self.gen.get_state()}

    def load_seat_state(self, state: dict) -> None:
        self.seats, _ = state["seats"].clone(), self.gen.set_state(state["gen"])

    def to(self, device: torch.device) -> "PolicyMap":
        self.policies = [p.to(device) if hasattr(p, "to") else p for p in self.policies]
        return self


def slot_batch(batch: dict[str, torch.Tensor], pmap: PolicyMap, k: int) -> dict[str, torch.Tensor]:
    """The rollout batch as policy k's learner sees it: its agents' rows (by the seats of every
    step; the observation after the rollout by the seats then), cut to its spec's widths, its
    own extras, its recurrent state at the rollout's start."""
    spec, cols = pmap.specs[k], pmap.columns(k)
    seats, next_seats = batch["seats"][..., cols], pmap.seats[:, cols].to(batch["seats"].device)
    out = {}
    for key, v in batch.items():
        if key in ("seats", "hidden0") or "/" in key:
            continue
        if v.dim() >= 3 and key in PER_AGENT:
            out[key] = narrow_agents(take(v, seats, 2), key, spec, 2)
        elif key.startswith("next_") and key[5:] in AGENT_FIELDS:
            out[key] = narrow_agents(take(v, next_seats, 1), key, spec, 1)
        else:
            out[key] = v
    out.update({key.split("/", 1)[1]: v for key, v in batch.items() if key.startswith(f"{k}/")})
    hidden0 = batch.get("hidden0")
    if hidden0 is not None and hidden0[k] is not None:
        out["hidden0"] = hidden0[k]
    return out


PER_AGENT = ("obs", "avail", "alive", "acting", "actions", "reward", "terminated", "truncated", "final_obs", "final_avail")


def outcomes(episodes: Sequence[EpisodeStats], n_agents: int) -> np.ndarray:
    """[N, 3] counts of (win, draw, loss) per agent: its episode return > 0, == 0, < 0."""
    returns = np.array([ep.agent_returns for ep in episodes], np.float64).reshape(-1, n_agents)
    return np.stack([(returns > 0).sum(0), (returns == 0).sum(0), (returns < 0).sum(0)], axis=1)
