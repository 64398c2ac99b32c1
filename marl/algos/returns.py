"""Return and advantage math as pure functions over tensors with a leading time axis."""
from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    ended: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over [T, ...] tensors.

    next_values[t] is the value of the observation after step t (the final observation when
    the episode ended at t). terminated[t] stops bootstrapping (a time-limit truncation
    does not); ended[t] (terminated or truncated or env reset) cuts the λ-trace so that
    the next episode never leaks into this one.
        δ_t = r_t + γ (1 - term_t) V'_t - V_t,   A_t = δ_t + γ λ (1 - ended_t) A_{t+1}
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
