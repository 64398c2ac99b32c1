"""Mixers: combine per-agent utilities q_i into a joint value Q_tot (VDN, QMIX).

Every mixer takes agent utilities `q` shaped [B, T, N] or [B, N] and a global state shaped
[B, T, S] or [B, S] (the same leading axes), and returns Q_tot shaped [B, T] or [B].
The base class `Mixer` checks the shapes and flattens the leading axes, so a subclass only
implements `mix(q [M, N], state [M, S] | None) -> [M]`.

`MIXERS` is the registry: "none" (independent learners: utilities are returned per agent,
[B, T, N] / [B, N], and each agent gets its own TD loss), "vdn" and "qmix". Every entry is
built as `MIXERS.get(name)(n_agents, state_dim, **kwargs)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marl.core.errors import MarlError
from marl.core.registry import Registry


class Mixer(nn.Module):
    """Base class: shape checks around `mix`.

    Class attributes: `needs_state` (the mixer reads the global state; otherwise `state`
    may be None) and `per_agent` (the output keeps the agent axis instead of being Q_tot).
    """

    needs_state: bool = True
    per_agent: bool = False

    def __init__(self, n_agents: int, state_dim: int):
        super().__init__()
        if n_agents < 1:
            raise MarlError(f"{type(self).__name__} needs at least one agent, got n_agents={n_agents}")
        self.n_agents, self.state_dim = int(n_agents), int(state_dim)

    def _check(self, q: Tensor, state: Tensor | None) -> None:
        name = type(self).__name__
        if q.dim() not in (2, 3) or q.shape[-1] != self.n_agents:
            raise MarlError(
                f"{name} got agent utilities of shape {tuple(q.shape)}",
                f"pass q as [B, T, N] or [B, N] with N={self.n_agents} agents",
            )
        if state is None:
            if self.needs_state:
                raise MarlError(f"{name} needs the global state", f"pass state as [B, T, S] or [B, S] with S={self.state_dim}")
            return
        if state.dim() != q.dim() or state.shape[:-1] != q.shape[:-1] or state.shape[-1] != self.state_dim:
            lead = "[B, T, S]" if q.dim() == 3 else "[B, S]"
            raise MarlError(
                f"{name} got state of shape {tuple(state.shape)} for utilities of shape {tuple(q.shape)}",
                f"pass state as {lead} with the utilities' leading axes and S={self.state_dim}",
            )

    def forward(self, q: Tensor, state: Tensor | None = None) -> Tensor:
        """Q_tot [B, T] / [B] from utilities q [B, T, N] / [B, N] and state [B, T, S] / [B, S]."""
        self._check(q, state)
        lead = q.shape[:-1]
        flat_q = q.reshape(-1, self.n_agents)
        flat_s = None if state is None else state.reshape(-1, self.state_dim).to(q.dtype)
        out = self.mix(flat_q, flat_s)
        return out.reshape(*lead, self.n_agents) if self.per_agent else out.reshape(lead)

    def mix(self, q: Tensor, state: Tensor | None) -> Tensor:
        """Mix utilities q [M, N] given state [M, S] into [M] (or [M, N] when per_agent)."""
        raise NotImplementedError


class IndependentMixer(Mixer):
    """No mixing (IDQN): returns the utilities unchanged, [B, T, N] / [B, N]."""

    needs_state = False
    per_agent = True

    def mix(self, q: Tensor, state: Tensor | None) -> Tensor:
        """Identity on the utilities."""
        return q


class VDNMixer(Mixer):
    """VDN (Sunehag et al. 2018): Q_tot = sum_i q_i, exactly; has no parameters."""

    needs_state = False

    def mix(self, q: Tensor, state: Tensor | None) -> Tensor:
        """Sum over agents."""
        return q.sum(dim=-1)


def _hypernet(state_dim: int, out_dim: int, layers: int, embed: int) -> nn.Module:
    """State -> weights: one linear layer, or linear-ReLU-linear with `embed` hidden units."""
    if layers == 1:
        return nn.Linear(state_dim, out_dim)
    if layers == 2:
        return nn.Sequential(nn.Linear(state_dim, embed), nn.ReLU(), nn.Linear(embed, out_dim))
    raise MarlError(f"QMixer supports hypernet_layers 1 or 2, got {layers}", "set hypernet_layers to 1 or 2")


class QMixer(Mixer):
    """QMIX (Rashid et al. 2018): a monotonic mixing network whose weights come from the state.

    Q_tot = w2(s)^T elu(W1(s)^T q + b1(s)) + V(s), with W1 = |hyper_w1(s)| [N, E] and
    w2 = |hyper_w2(s)| [E] non-negative, so dQ_tot/dq_i >= 0. b1(s) is a linear map of the
    state and V(s) a two-layer state-value head (linear-ReLU-linear with E hidden units).
    Defaults follow the paper / pymarl: embed_dim=32, hypernet_layers=2, hypernet_embed=64.
    """

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int = 32, hypernet_layers: int = 2, hypernet_embed: int = 64):
        super().__init__(n_agents, state_dim)
        if state_dim < 1:
            raise MarlError("QMixer needs a global state (state_dim >= 1)", "use an env with state() or the concatenated observations")
        self.embed_dim = int(embed_dim)
        self.hyper_w1 = _hypernet(state_dim, self.embed_dim * self.n_agents, hypernet_layers, hypernet_embed)
        self.hyper_w2 = _hypernet(state_dim, self.embed_dim, hypernet_layers, hypernet_embed)
        self.hyper_b1 = nn.Linear(state_dim, self.embed_dim)
        self.value = nn.Sequential(nn.Linear(state_dim, self.embed_dim), nn.ReLU(), nn.Linear(self.embed_dim, 1))

    def mix(self, q: Tensor, state: Tensor | None) -> Tensor:
        """Monotonic mixing of q [M, N] conditioned on state [M, S]."""
        assert state is not None
        w1 = self.hyper_w1(state).abs().view(-1, self.n_agents, self.embed_dim)  # [M, N, E]
        b1 = self.hyper_b1(state)  # [M, E]
        hidden = F.elu(torch.einsum("mn,mne->me", q, w1) + b1)
        w2 = self.hyper_w2(state).abs()  # [M, E]
        return (hidden * w2).sum(dim=-1) + self.value(state).squeeze(-1)


MIXERS: Registry[type[Mixer]] = Registry("mixer")
"""Mixer registry: "none" (independent, per-agent output), "vdn", "qmix"."""
MIXERS.register("none", IndependentMixer)
MIXERS.register("vdn", VDNMixer)
MIXERS.register("qmix", QMixer)
