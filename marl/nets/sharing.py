"""Parameter sharing as one field: `sharing = "all" | "none" | [group id per agent]`.

`resolve_groups` turns that field into a LongTensor[N] of group indices 0..K-1, which every
grouped layer (`marl.nets.layers`) uses to gather its K weight sets, one per group.
"""
from __future__ import annotations

import numbers
from typing import Sequence, Union

import torch

from marl.core.errors import MarlError

Sharing = Union[str, Sequence[int], torch.Tensor]

_FIX = 'use sharing="all", sharing="none" or a list with one integer group id per agent'


def resolve_groups(sharing: Sharing, n_agents: int) -> torch.Tensor:
    """Group index per agent, LongTensor[N] with values 0..K-1 (every index used).

    - "all": one network for everyone (all zeros, K = 1);
    - "none": one network per agent (arange(N), K = N);
    - a list/tuple (or 1-D integer tensor/array) of group ids per agent, in any order and with
      gaps, e.g. [1, 1, 0, 0] or [0, 2, 2]: ids are remapped to 0..K-1 by sorted value, so
      [0, 2, 2] -> [0, 1, 1]. Agents with equal ids share weights.

    Raises MarlError for an unknown string, a wrong length or a non-integer id.
    """
    if isinstance(n_agents, bool) or not isinstance(n_agents, numbers.Integral) or n_agents < 1:
        raise MarlError(f"n_agents must be a positive integer, got {n_agents!r}", "pass len(spec.agents)")
    n = int(n_agents)
    if isinstance(sharing, str):
        if sharing == "all":
            return torch.zeros(n, dtype=torch.long)
        if sharing == "none":
            return torch.arange(n, dtype=torch.long)
        raise MarlError(f"unknown sharing '{sharing}'", _FIX)
    if isinstance(sharing, torch.Tensor):
        if sharing.dim() != 1 or sharing.is_floating_point() or sharing.is_complex() or sharing.dtype == torch.bool:
            raise MarlError(f"sharing tensor must be 1-D integer, got {sharing.dtype} of shape {tuple(sharing.shape)}", _FIX)
        ids = [int(v) for v in sharing.tolist()]
    else:
        try:
            items = list(sharing)
        except TypeError:
            raise MarlError(f"sharing must be 'all', 'none' or a list of group ids, got {sharing!r}", _FIX) from None
        bad = [v for v in items if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
        if bad:
            raise MarlError(f"sharing group ids must be integers, got {bad[0]!r} in {items!r}", _FIX)
        ids = [int(v) for v in items]
    if len(ids) != n:
        raise MarlError(
            f"sharing has {len(ids)} group ids but the env has {n} agents",
            f"give exactly one group id per agent (in possible_agents order), e.g. {[0] * n}",
        )
    remap = {g: k for k, g in enumerate(sorted(set(ids)))}
    return torch.tensor([remap[g] for g in ids], dtype=torch.long)


def num_groups(groups: torch.Tensor) -> int:
    """K, the number of distinct weight sets, for a LongTensor from `resolve_groups`."""
    return int(groups.max().item()) + 1 if groups.numel() else 0


def as_groups(groups: Sharing, n_agents: int | None = None) -> torch.Tensor:
    """Accept a resolved LongTensor[N] as is, else resolve a sharing field (`n_agents` needed
    for "all"/"none"; a list gives its own length)."""
    if isinstance(groups, torch.Tensor) and not groups.is_floating_point() and groups.dtype != torch.bool:
        if groups.dim() != 1:
            raise MarlError(f"groups must be a 1-D tensor, got shape {tuple(groups.shape)}", _FIX)
        return resolve_groups(groups, groups.numel())
    if isinstance(groups, str):
        if n_agents is None:
            raise MarlError(f"sharing '{groups}' needs the number of agents", "pass n_agents or resolve_groups(sharing, N)")
        return resolve_groups(groups, n_agents)
    try:
        length = len(groups)  # type: ignore[arg-type]
    except TypeError:
        raise MarlError(f"sharing must be 'all', 'none' or a list of group ids, got {groups!r}", _FIX) from None
    return resolve_groups(groups, length if n_agents is None else n_agents)
