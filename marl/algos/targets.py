"""Bootstrapped return targets for value-based learners, and the greedy next-step values
they bootstrap from, as pure functions.

All functions take padded episode tensors with leading axes [B, T] (one episode per row,
the episode occupying the first L steps, padding after it) and an optional trailing agent
axis (or any trailing axes): rewards and next_values are [B, T, ...].

Conventions (see ARCHITECTURE.md, "Episode ends"):
- `next_values[:, t]` is the (target-network) value of the observation AFTER step t; when
  the episode ended at step t this is the value of the final observation, so a time-limit
  truncation bootstraps from it.
- `terminated[:, t]` is 1 when step t ended the episode by termination: no bootstrap there.
- `filled[:, t]` is 1 for real steps and 0 for padding after the episode end; targets of
  padded steps are 0 and padded steps are never mixed into the targets of real steps.
- Every reward, the last step's included, counts.
- A row whose last real step is neither terminated nor followed by padding (it runs to the
  end of the tensor) is treated like a truncation: it bootstraps from `next_values`.

`terminated` and `filled` may be [B, T] (shared by all agents) or carry the same trailing
axes as `rewards`; they are broadcast over the trailing axes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from marl.algos.returns import Decisions, gae
from marl.nets.dists import mask_logits


def _prepare(rewards: Tensor, next_values: Tensor, terminated: Tensor, filled: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes and return (not_terminated, filled) as float tensors shaped like rewards."""
    if rewards.dim() < 2:
        raise ValueError(f"rewards must have leading [B, T] axes, got shape {tuple(rewards.shape)}")
    if next_values.shape != rewards.shape:
        raise ValueError(f"next_values shape {tuple(next_values.shape)} != rewards shape {tuple(rewards.shape)}")

    def expand(x: Tensor, name: str) -> Tensor:
        if x.shape[:2] != rewards.shape[:2] or x.dim() > rewards.dim():
            raise ValueError(f"{name} shape {tuple(x.shape)} does not match rewards shape {tuple(rewards.shape)}")
        x = x.to(rewards.dtype)
        while x.dim() < rewards.dim():
            x = x.unsqueeze(-1)
        return x.expand_as(rewards)

    not_term = 1.0 - expand(terminated, "terminated")
    mask = expand(filled, "filled")
    if mask.shape[1] > 1 and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError("filled must be a prefix mask (1 for the episode's steps, then 0 for padding)")
    return not_term, mask


def nstep_targets(rewards: Tensor, next_values: Tensor, terminated: Tensor, filled: Tensor, gamma: float, n: int) -> Tensor:
    """n-step targets y_t = sum_{k<m} gamma^k r_{t+k} + gamma^m (1 - term_{t+m-1}) V_{t+m-1}.

    m = min(n, L - t) where L is the episode length (number of filled steps), so the sum
    never reaches past the episode end and the bootstrap uses the value after the last
    summed step (the final observation's value when the episode ended there, zero weight
    when it ended by termination). n=1 is the one-step TD target. Returns a tensor shaped
    like `rewards`, zero on padded steps.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    not_term, mask = _prepare(rewards, next_values, terminated, filled)
    if n == 1:  # the one-step TD target: every filled step bootstraps from its own next value
        return (rewards + gamma * not_term * next_values) * mask
    T = rewards.shape[1]
    length = mask.sum(dim=1, keepdim=True)  # [B, 1, ...]: episode length L
    t_idx = torch.arange(T, device=rewards.device, dtype=rewards.dtype)
    t_idx = t_idx.view(1, T, *([1] * (rewards.dim() - 2)))
    target = torch.zeros_like(rewards)
    for k in range(min(n, T)):
        shifted = torch.zeros_like(rewards)
        shifted[:, : T - k] = (rewards * mask)[:, k:]  # r_{t+k}, zero past the end / padding
        target = target + (gamma**k) * shifted
    # bootstrap index j = min(t + n, L) - 1, steps summed m = j - t + 1
    j = torch.minimum(t_idx + n, length) - 1
    j_long = j.clamp(min=0).long().expand_as(rewards)
    boot = (next_values * not_term).gather(1, j_long)
    m = (j - t_idx + 1).clamp(min=0)
    target = target + gamma**m * boot
    return target * mask


def td_lambda_targets(rewards: Tensor, next_values: Tensor, terminated: Tensor, filled: Tensor, gamma: float, lam: float,
                      trace: Tensor | None = None) -> Tensor:
    """TD(lambda) returns G_t = r_t + gamma (1 - term_t) [(1 - lam c_t) V_t + lam c_t G_{t+1}].

    V_t is `next_values[:, t]` and c_t = filled[:, t+1] says whether the episode goes on
    after step t (0 at the last step and at the end of the tensor), so at the last step
    G = r + gamma (1 - term) V: a truncated episode bootstraps, a terminated one does not.
    lam=0 gives the one-step target; lam=1 gives the Monte-Carlo return (plus the
    discounted final value for a truncated episode). Returns a tensor shaped like
    `rewards`, zero on padded steps.

    `trace` (optional, [B, T] or shaped like `rewards`) is one more factor on lam c_t.
    Watkins' Q(lambda) passes trace[:, t] = 1 when the action taken at step t+1 is the one
    V_t values (the greedy one) and 0 otherwise: after an exploratory action the rest of
    the episode is not the greedy policy's return, so G_t bootstraps from V_t there.

    Computed by `marl.algos.returns.gae` (the package's one λ-return): with the baseline of
    step t + 1 equal to the bootstrap value V_t of step t, GAE's returns are these G_t.
    """
    not_term, mask = _prepare(rewards, next_values, terminated, filled)
    goes_on = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    if trace is not None:
        trace = trace.to(rewards.dtype)
        goes_on = goes_on * trace.view(*trace.shape, *([1] * (rewards.dim() - trace.dim())))
    baseline = torch.cat([torch.zeros_like(next_values[:, :1]), next_values[:, :-1]], dim=1)
    time_first = lambda x: x.transpose(0, 1)  # noqa: E731
    _, g = gae(time_first(rewards * mask), time_first(baseline), time_first(next_values), time_first(1.0 - not_term),
               time_first(1.0 - goes_on), gamma, lam)
    return time_first(g) * mask


def own_decision_targets(view: Decisions, rewards: Tensor, next_values: Tensor, terminated: Tensor, target_fn) -> Tensor:
    """Targets of each agent's own decisions (marl.algos.returns, module docstring), [B, T, ...]
    steps as above with `view = decisions(acting, ended, dim=1)`: the rewards of a transition
    summed, the bootstrap value and termination read where it closes, and
    `target_fn(rewards, next_values, terminated, filled)` (n-step: n counts own decisions;
    TD(λ)) run on the decision sequence. Returns the targets at the decision steps, 0 elsewhere."""
    y = target_fn(view.sum(rewards), view.at_close(next_values), view.at_close(terminated), view.valid)
    return view.to_steps(y)


def masked_argmax(q: Tensor, avail: Tensor) -> Tensor:
    """argmax over the available actions only (q [..., A], avail [..., A] bool) -> [...]."""
    return mask_logits(q, avail).argmax(dim=-1)


def greedy_next_values(q_online: Tensor, q_target: Tensor, avail: Tensor, double_q: bool) -> tuple[Tensor, Tensor]:
    """(actions, values) at the next observation, [...] each, from utilities [..., A].

    Double Q: the online net picks the action, the target net values it; otherwise the
    target net does both. Unavailable actions are never picked, so never used in the max."""
    actions = masked_argmax(q_online if double_q else q_target, avail)
    return actions, q_target.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
