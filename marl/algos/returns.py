"""Return and advantage math as pure functions over tensors with a leading time axis.

Turn-based games: an agent's transition runs from one of its decisions to its next one
(PettingZoo's AEC view: `env.last()` hands an agent everything it received since its last
turn). `Decisions` maps a step sequence to the sequence of one agent's own decisions: the
rewards of every step of a transition (the opponent's moves included) are summed into that
transition's reward, it bootstraps from the value at the agent's next decision (or from its
final observation when its episode was truncated, or not at all when it terminated), and the
discount γ applies once per own decision, as a single-agent wrapper of the game (the opponent
part of the env) would give. The return math (`gae` here, the n-step and TD(λ) targets in
`marl.algos.targets`) then runs on the decision sequence. Where every agent acts at every
step (parallel envs) the decision sequence is the step sequence and the numbers are those of
the step sequence, bit for bit.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    ended: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over [T, ...] tensors; the one λ-return of the
    package (the TD(λ) targets of value-based learners are `returns` with the baseline of step
    t + 1 equal to the bootstrap value of step t, `marl.algos.targets.td_lambda_targets`).

    next_values[t] is the value of the observation after step t (the final observation when
    the episode ended at t). terminated[t] stops bootstrapping (a time-limit truncation
    does not); ended[t] (terminated or truncated or env reset, or the next step's return is
    unknown) cuts the λ-trace so that the next episode never leaks into this one.
        δ_t = r_t + γ (1 - term_t) V'_t - V_t,   A_t = δ_t + γ λ (1 - ended_t) A_{t+1}
    so returns_t = A_t + V_t = r_t + γ (1 - term_t) V'_t + γ λ (1 - ended_t) (returns_{t+1} - V_{t+1}).
    Per-step trace cuts (e.g. Watkins' Q(λ)) are one more factor on (1 - ended_t).
    The time axis is one step per decision: a turn-based game's steps go through `Decisions`
    first (γ per own decision, see the module docstring).
    Returns (advantages, returns = advantages + values).
    """
    not_term = 1.0 - terminated.to(values.dtype)
    carry = 1.0 - ended.to(values.dtype)
    deltas = rewards + gamma * not_term * next_values - values
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * carry[t] * last
        adv[t] = last
    return adv, adv + values


class Decisions(NamedTuple):
    """Index map between the steps of a sequence (axis `dim`) and one agent's own decisions
    along the same axis (built by `decisions`; trailing and leading axes are independent
    columns). Decision k of a column sits at position k of the decision axis; positions past
    the column's last decision hold zeros.

    index:  [.., T, ..] long, the decision whose transition step t belongs to (0 where none)
    owned:  step t belongs to a transition (from a decision up to the next one or the end of
            the agent's episode; steps after an end and before the next decision belong to none)
    close:  step t is the last step of its transition
    acting: step t is a decision
    valid:  decision space: decision k exists and its transition is complete (it ended, or
            the agent's next decision is known: within the data or `next_acting`)
    cut:    decision space: the λ-trace stops after decision k (its episode ended there, or the
            return of decision k + 1 is unknown)
    """

    index: Tensor
    owned: Tensor
    close: Tensor
    acting: Tensor
    valid: Tensor
    cut: Tensor
    dim: int

    def _scatter(self, x: Tensor, where: Tensor) -> Tensor:
        """Decision space: x summed over the steps in `where` of each decision."""
        x = torch.where(where, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return torch.zeros_like(x).scatter_add_(self.dim, self.index, x)

    def sum(self, x: Tensor) -> Tensor:
        """Per-decision sum of x over the steps of its transition (rewards)."""
        return self._scatter(x, self.owned)

    def at_close(self, x: Tensor) -> Tensor:
        """x at the last step of each transition (bootstrap values, termination flags)."""
        if x.dtype == torch.bool:
            return self._scatter(x.to(torch.uint8), self.close).bool()
        return self._scatter(x, self.close)

    def at_decision(self, x: Tensor) -> Tensor:
        """x at each decision step (the values of the states the agent decided in)."""
        return self._scatter(x, self.acting)

    def to_steps(self, y: Tensor) -> Tensor:
        """Decision space back to steps: y_k at the step of decision k, 0 elsewhere."""
        out = y.gather(self.dim, self.index)
        return torch.where(self.acting, out, torch.zeros((), dtype=y.dtype, device=y.device))


def decisions(acting: Tensor, ended: Tensor, next_acting: Tensor | None = None, dim: int = 0) -> Decisions:
    """The `Decisions` of step sequences: acting/ended bool [.., T, ..] along `dim` (the agent
    decides at step t / its episode ends at step t, by termination, truncation or env reset,
    or the data of its episode ends there); next_acting [.., ..] (without the time axis): the
    agent decides at the step after the data (a rollout's next observation), None when the
    data ends with every episode."""
    T = acting.shape[dim]
    dec = acting.long().cumsum(dim) - 1  # decision index of the latest decision at or before t
    e = ended.long()
    ends_before = e.cumsum(dim) - e
    # ends before the latest decision (ends_before never decreases, so a running max over the decision steps finds it)
    at_dec = torch.where(acting, ends_before, torch.full_like(ends_before, -1)).cummax(dim).values
    owned = (dec >= 0) & (ends_before == at_dec)
    after = acting.new_zeros(acting.shape) if next_acting is None else next_acting.unsqueeze(dim).expand_as(acting)
    acting_next = torch.cat([acting.narrow(dim, 1, T - 1), after.narrow(dim, T - 1, 1)], dim)
    last = torch.zeros_like(acting)
    last.narrow(dim, T - 1, 1).fill_(True)
    close = owned & (ended | acting_next | last)
    view = Decisions(dec.clamp_min(0), owned, close, acting, acting, acting, dim)
    valid = view.at_close(close & (ended | acting_next))
    valid_next = torch.cat([valid.narrow(dim, 1, T - 1), torch.zeros_like(valid.narrow(dim, 0, 1))], dim)
    return view._replace(valid=valid, cut=view.at_close(ended) | ~valid_next)


def own_gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, ended: Tensor,
            acting: Tensor, next_acting: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """`gae` over each agent's own decisions of [T, ...] step tensors (module docstring):
    acting[t] the agent decides at step t, next_acting the same after the last step; values[t]
    is read at decision steps, next_values[t] where a transition closes (the value at the
    agent's next decision, or of its final observation). Returns (advantages, returns, valid)
    at the decision steps (0 elsewhere); valid marks decisions whose transition is complete
    (a decision whose next one lies past the data has no return yet)."""
    view = decisions(acting, ended, next_acting)
    adv, ret = gae(view.sum(rewards), view.at_decision(values), view.at_close(next_values),
                   view.at_close(terminated), view.cut, gamma, lam)
    return view.to_steps(adv), view.to_steps(ret), view.to_steps(view.valid)


def per_agent_rewards(rewards: torch.Tensor, mode: str) -> torch.Tensor:
    """Rewards [..., N] as each agent learns them: 'agent' keeps its own, 'sum'/'mean' give every
    agent the team's sum/mean (agents not alive have reward 0, so they add nothing)."""
    if mode == "agent":
        return rewards
    team = rewards.sum(-1, keepdim=True) if mode == "sum" else rewards.mean(-1, keepdim=True)
    return team.expand_as(rewards)


def scalar_team_reward(reward: torch.Tensor, alive: torch.Tensor, mode: str) -> torch.Tensor:
    """Rewards [..., N] -> one team reward [...]: 'sum' or 'mean' over agents, or for
    'agent' the common reward of the alive agents (their rewards are checked to be equal)."""
    if mode == "sum":
        return reward.sum(-1)
    if mode == "mean":
        return reward.mean(-1)
    alive = alive.to(reward.dtype)
    return (reward * alive).sum(-1) / alive.sum(-1).clamp(min=1.0)


def rewards_differ(reward: torch.Tensor, alive: torch.Tensor) -> bool:
    """True when two alive agents got different rewards at some step (reward/alive [..., N])."""
    hi = reward.masked_fill(~alive, float("-inf")).amax(-1)
    lo = reward.masked_fill(~alive, float("inf")).amin(-1)
    return bool(((hi - lo) > 1e-6 * (1.0 + hi.abs())).any())


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def normalize(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the entries where mask is set."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) / (var.sqrt() + eps)


class RunningNorm(torch.nn.Module):
    """Running mean/variance (parallel-merge update) used to normalise value targets."""

    def __init__(self, shape=(), eps: float = 1e-5):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(eps))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        b_mean, b_var, b_count = x.mean(), x.var(unbiased=False), x.numel()
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean += delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> torch.Tensor:
        return self.var.clamp_min(1e-8).sqrt()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


@torch.no_grad()
def preserve_outputs(layer: torch.nn.Module, old_mean: torch.Tensor, old_std: torch.Tensor,
                     new_mean: torch.Tensor, new_std: torch.Tensor) -> None:
    """PopArt (van Hasselt et al. 2016): rescale a linear output layer in place so that its
    denormalised output y * std + mean is the same before and after the statistics change:
    W' = W σ/σ',  b' = (σ b + μ - μ') / σ'.

    Without it every change of the statistics shifts all predicted values, and the
    bootstrapped targets (which use those values) feed the shift back into the statistics:
    with truncation bootstrapping and one minibatch per epoch this loop diverged to NaN on
    simple_spread."""
    layer.weight.mul_(old_std / new_std)
    layer.bias.mul_(old_std).add_(old_mean - new_mean).div_(new_std)
