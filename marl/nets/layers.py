"""Grouped layers: K weight sets, gathered per agent by group index, one batched op for all agents.

Every layer takes `groups`, a LongTensor[N] of group indices 0..K-1 (see
`marl.nets.sharing.resolve_groups`), and inputs with an agent axis second to last:
x[..., N, D]. The compute is the same as one network per agent, whatever K is:

- K == 1 (sharing "all"): one plain matrix multiply (addmm) over all rows;
- groups == arange(N) (sharing "none"): one torch.baddbmm over the agent axis, no gather;
- otherwise: gather the weights [K, in, out] -> [N, in, out] by group, then one baddbmm.

Layout. bmm wants the agent axis first, so each layer also accepts `agent_major=True`:
x[N, B, D] in, [N, B, D'] out. Stacks (MLP, AgentNet) convert once with `to_agent_major` /
`from_agent_major` instead of transposing around every layer (that copy cost ~20% at large
batch). With K == 1 the layout does not matter and nothing is converted.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from marl.nets.sharing import Sharing, as_groups


def _mode(groups: torch.Tensor) -> str:
    """'shared' (K == 1), 'identity' (groups == arange(N)) or 'gather'."""
    if int(groups.max().item()) == 0:
        return "shared"
    if torch.equal(groups, torch.arange(groups.numel(), dtype=groups.dtype)):
        return "identity"
    return "gather"


def to_agent_major(x: torch.Tensor, n_agents: int) -> torch.Tensor:
    """x[..., N, D] -> a [N, B, D] view (B = prod of the leading dims)."""
    if x.shape[-2] != n_agents:
        raise ValueError(f"input has {x.shape[-2]} agents on axis -2 but the network was built for {n_agents}")
    return x.reshape(-1, n_agents, x.shape[-1]).transpose(0, 1)


def from_agent_major(y: torch.Tensor, lead: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """y[N, B, D] -> [*lead, N, D] (the inverse of `to_agent_major`)."""
    return y.transpose(0, 1).reshape(*lead, y.shape[0], y.shape[-1])


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   groups: torch.Tensor, mode: str, agent_major: bool = False) -> torch.Tensor:
    """y[..., n, :] = x[..., n, :] @ weight[groups[n]] + bias[groups[n]] as one batched op.

    x [..., N, in] (or [N, B, in] with agent_major), weight [K, in, out], bias [K, out] or
    None, groups LongTensor[N]; `mode` from `_mode(groups)` picks the fast path.
    """
    d_out = weight.shape[-1]
    if mode == "shared":  # one 2-D GEMM over all rows; view() is cheaper than select + t()
        x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        w2 = weight.view(weight.shape[1], d_out)
        y = torch.mm(x2, w2) if bias is None else torch.addmm(bias.view(d_out), x2, w2)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], d_out)
    xb = x if agent_major else to_agent_major(x, groups.numel())
    if mode == "gather":
        weight = weight.index_select(0, groups)
        bias = None if bias is None else bias.index_select(0, groups)
    y = torch.bmm(xb, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), xb, weight)
    return y if agent_major else from_agent_major(y, x.shape[:-2])


class GroupLinear(nn.Module):
    """Linear layer with one weight set per group: x[..., N, in] -> [..., N, out].

    Parameters: `weight` [K, in, out], `bias` [K, out]. Each group's weight is initialised
    orthogonally with `gain` (bias zero), so different groups start different.
    """

    def __init__(self, in_dim: int, out_dim: int, groups: Sharing, bias: bool = True, gain: float = 1.0):
        super().__init__()
        groups = as_groups(groups)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.register_buffer("groups", groups, persistent=False)
        self.n_agents, self.n_groups = groups.numel(), int(groups.max()) + 1
        self.mode = _mode(groups)
        self.weight = nn.Parameter(torch.empty(self.n_groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(self.n_groups, out_dim)) if bias else None
        self.reset_parameters(gain)

    @torch.no_grad()
    def reset_parameters(self, gain: float = 1.0) -> None:
        """Orthogonal init of each group's [in, out] weight with `gain`; zero bias."""
        for w in self.weight:
            nn.init.orthogonal_(w, gain=gain)
        if self.bias is not None:
            self.bias.zero_()

    def forward(self, x: torch.Tensor, agent_major: bool = False) -> torch.Tensor:
        """x[..., N, in] -> [..., N, out] (or [N, B, in] -> [N, B, out] with agent_major)."""
        return grouped_linear(x, self.weight, self.bias, self.groups, self.mode, agent_major)

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}, agents={self.n_agents}, groups={self.n_groups}, mode={self.mode}"


class GroupLayerNorm(nn.Module):
    """LayerNorm over the last dim with per-group affine scale and shift: x[..., N, D]."""

    def __init__(self, dim: int, groups: Sharing, eps: float = 1e-5):
        super().__init__()
        groups = as_groups(groups)
        self.dim, self.eps = dim, eps
        self.register_buffer("groups", groups, persistent=False)
        self.mode = _mode(groups)
        k = int(groups.max()) + 1
        self.weight = nn.Parameter(torch.ones(k, dim))
        self.bias = nn.Parameter(torch.zeros(k, dim))

    def forward(self, x: torch.Tensor, agent_major: bool = False) -> torch.Tensor:
        """x[..., N, D] (or [N, B, D] with agent_major) normalised, then scaled and shifted
        by each agent's group."""
        if self.mode == "shared":
            return F.layer_norm(x, (self.dim,), self.weight.view(self.dim), self.bias.view(self.dim), self.eps)
        w, b = self.weight, self.bias
        if self.mode == "gather":
            w, b = w.index_select(0, self.groups), b.index_select(0, self.groups)
        if agent_major:
            w, b = w.unsqueeze(1), b.unsqueeze(1)
        return torch.addcmul(b, F.layer_norm(x, (self.dim,), None, None, self.eps), w)


class GroupGRUCell(nn.Module):
    """GRU cell with one weight set per group, torch.nn.GRUCell's equations (gate order r, z, n):

        r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
        z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
        n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
        h' = (1 - z) * n + z * h

    Parameters `weight_ih` [K, in, 3H], `weight_hh` [K, H, 3H], `bias_ih`, `bias_hh` [K, 3H]
    (torch's [3H, in] weights transposed), initialised like torch: U(-1/sqrt(H), 1/sqrt(H)).
    forward(x[..., N, in], h[..., N, H]) -> h'[..., N, H] (or [N, B, .] with agent_major).
    """

    def __init__(self, in_dim: int, hidden: int, groups: Sharing):
        super().__init__()
        groups = as_groups(groups)
        self.in_dim, self.hidden = in_dim, hidden
        self.register_buffer("groups", groups, persistent=False)
        self.n_agents, self.n_groups = groups.numel(), int(groups.max()) + 1
        self.mode = _mode(groups)
        k = self.n_groups
        self.weight_ih = nn.Parameter(torch.empty(k, in_dim, 3 * hidden))
        self.weight_hh = nn.Parameter(torch.empty(k, hidden, 3 * hidden))
        self.bias_ih = nn.Parameter(torch.empty(k, 3 * hidden))
        self.bias_hh = nn.Parameter(torch.empty(k, 3 * hidden))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as torch.nn.GRUCell."""
        bound = 1.0 / math.sqrt(self.hidden)
        for p in self.parameters():
            p.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor, h: torch.Tensor, agent_major: bool = False) -> torch.Tensor:
        """x[..., N, in], h[..., N, H] -> h'[..., N, H]."""
        if not agent_major and self.mode != "shared":
            lead = h.shape[:-2]
            h2 = self.forward(to_agent_major(x, self.n_agents), to_agent_major(h, self.n_agents), True)
            return from_agent_major(h2, lead)
        gi = grouped_linear(x, self.weight_ih, self.bias_ih, self.groups, self.mode, agent_major)
        gh = grouped_linear(h, self.weight_hh, self.bias_hh, self.groups, self.mode, agent_major)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(torch.addcmul(i_n, r, h_n))
        return n + z * (h - n)

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, hidden={self.hidden}, agents={self.n_agents}, groups={self.n_groups}, mode={self.mode}"
