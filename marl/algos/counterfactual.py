"""Action-value critic math for stochastic actor-critics, as pure functions: COMA's
counterfactual baseline (Foerster et al. 2018) and the policy-gradient weights of a
centralised Q critic.

A COMA critic answers, for agent i, Q(s, (a_-i, a)) for every action a of agent i in one
pass: its input holds the other agents' actions (`others_actions`) but not i's own. Shapes:
q [..., N, A] (that row of values per agent), probs [..., N, A] (π_i(a | τ_i), exactly 0 on
unavailable actions), actions [..., N], avail [..., N, A] bool.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def others_actions(onehot: Tensor, acting: Tensor) -> Tensor:
    """The joint action as each agent's critic sees it: onehot [..., N, A] (the agents' actions),
    acting [..., N] (agents that chose one; the others contribute zeros) -> [..., N, N * A], row i
    the joint one-hot with agent i's own block zeroed."""
    n, a = onehot.shape[-2:]
    joint = (onehot * acting.unsqueeze(-1).to(onehot.dtype)).flatten(-2)  # [..., N*A]
    keep = 1.0 - torch.eye(n, dtype=onehot.dtype, device=onehot.device).repeat_interleave(a, dim=-1)  # [N, N*A]
    return joint.unsqueeze(-2) * keep


def counterfactual_baseline(q: Tensor, probs: Tensor, avail: Tensor | None = None) -> Tensor:
    """Σ_a π_i(a | τ_i) Q(s, (a_-i, a)), [..., N]: agent i's own action marginalised out under its
    policy, the others' kept. Unavailable actions (avail False) add nothing, whatever Q says there."""
    terms = probs * q
    if avail is not None:
        terms = torch.where(avail, terms, torch.zeros((), dtype=q.dtype, device=q.device))
    return terms.sum(-1)


def taken(q: Tensor, actions: Tensor) -> Tensor:
    """Q of the action each agent took, [..., N]."""
    return q.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def coma_advantage(q: Tensor, probs: Tensor, actions: Tensor, avail: Tensor | None = None) -> Tensor:
    """COMA's counterfactual advantage Q(s, a) - Σ_a' π_i(a') Q(s, (a_-i, a')), [..., N]. Its
    expectation over a ~ π_i is exactly 0 for any fixed Q, and it is 0 wherever Q does not
    depend on agent i's own action."""
    return taken(q, actions) - counterfactual_baseline(q, probs, avail)


def policy_weights(kind: Literal["counterfactual", "q", "q_minus_v"], q: Tensor, probs: Tensor, actions: Tensor,
                   avail: Tensor | None, value: Tensor | None) -> Tensor:
    """What the log-probability of each taken action is weighted by, [..., N]: COMA's
    counterfactual advantage, the centralised Q(s, a) itself, or Q(s, a) - V(s) with a learned
    state value `value` [..., N] (the central-QV critic of Foerster et al.)."""
    if kind == "counterfactual":
        return coma_advantage(q, probs, actions, avail)
    if kind == "q":
        return taken(q, actions)
    if value is None:
        raise ValueError("q_minus_v needs the state values")
    return taken(q, actions) - value
