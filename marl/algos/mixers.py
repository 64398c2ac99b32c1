"""Mixers: combine per-agent utilities q_i into a joint value Q_tot (VDN, QMIX), and the
registry of the value decompositions the Q-learner dispatches through.

Every mixer takes agent utilities `q` shaped [B, T, N] or [B, N] and a global state shaped
[B, T, S] or [B, S] (the same leading axes), and returns Q_tot shaped [B, T] or [B].
The base class `Mixer` checks the shapes and flattens the leading axes, so a subclass only
implements `mix(q [M, N], state [M, S] | None) -> [M]`.

`MIXERS` is the registry behind the Q-learner's `mixer` config value: "none" (independent
learners: utilities are returned per agent, [B, T, N] / [B, N], and each agent gets its own
TD loss), "vdn", "qmix", and "qtran" (registered by `marl.algos.qtran`). An entry is a
`MixerKind`: the learner reads its `needs_state` / `per_agent` and builds its loss head
with `value_head(cfg, spec, feat_dim)`. A `Mixer` subclass is one; its head
(`MixerHead`) trains Q_tot = mixer(q_taken, s) by TD, and `from_config` builds the mixer
(override it to read config fields). A new mixer registered here needs no edit elsewhere:

    @MIXERS.register("max")
    class MaxMixer(Mixer):
        needs_state = False
        def mix(self, q, state):
            return q.max(dim=-1).values

With `--workers` >= 1 evaluation runs in a process that imports `__main__` and marl, not
the caller's other modules: register at the top level of the script (or of a module it
imports), where that process sees it too.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marl.algos.returns import masked_mean
from marl.core.errors import MarlError
from marl.core.registry import Registry
from marl.core.spec import EnvSpec

TargetsFn = Callable[[dict, Tensor], Tensor]
"""targets_fn(context, next_values) -> y: the learner's return targets (n-step, TD(lambda) or
Q(lambda)) for the values after each step, using the context's rewards, ends and traces."""


class ValueHead(Protocol):
    """What the Q-learner trains: `loss(target_head, context, targets_fn)` -> a dict with
    "loss" (to minimise), "td", "q" (the fitted values), "target" and "mask" (their real
    entries), plus any extra parts to log. `context` is `QLearner._context`'s dict."""

    per_agent: bool

    def loss(self, target: Any, c: dict[str, Tensor], targets_fn: TargetsFn) -> dict[str, Tensor]: ...


class MixerKind(Protocol):
    """A `MIXERS` entry (a class): what the config checks read, and how the head is built."""

    needs_state: bool
    """Reads the global state (QMIX/QTRAN on an env without state() use the fallback)."""
    per_agent: bool
    """Per-agent values and TD losses (independent learners) instead of one team value."""

    def value_head(self, cfg: Any, spec: EnvSpec, feat_dim: int) -> ValueHead: ...


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

    @classmethod
    def from_config(cls, cfg: Any, spec: EnvSpec) -> "Mixer":
        """The mixer for the Q-learner's config and env (override to read config fields)."""
        return cls(spec.n_agents, spec.state_dim)

    @classmethod
    def value_head(cls, cfg: Any, spec: EnvSpec, feat_dim: int) -> "MixerHead":
        """`MixerKind`: TD on the mixed utilities."""
        return MixerHead(cls.from_config(cfg, spec), cfg.td_loss)


def td_loss(error: Tensor, kind: str = "squared") -> Tensor:
    """Elementwise loss of TD errors: 'squared' (error²) or 'huber' (error²/2 inside [-1, 1],
    |error| - 1/2 outside: the gradient is the error clipped to [-1, 1], Mnih et al. 2015's error
    clipping and Stable-Baselines3's DQN loss, torch's smooth_l1_loss)."""
    if kind == "squared":
        return error ** 2
    if kind == "huber":
        return F.smooth_l1_loss(error, torch.zeros_like(error), reduction="none")
    raise ValueError(f"unknown TD loss '{kind}': use 'squared' or 'huber'")


class MixerHead(nn.Module):
    """Utilities -> TD loss through a mixer: per agent (independent) or on Q_tot."""

    def __init__(self, mixer: Mixer, loss_kind: str = "squared"):
        super().__init__()
        self.mixer = mixer
        self.per_agent = mixer.per_agent
        self.loss_kind = loss_kind

    def loss(self, target: "MixerHead", c: dict[str, Tensor], targets_fn: TargetsFn) -> dict[str, Tensor]:
        acting = c["acting"].to(c["q_taken"].dtype)
        needs = self.mixer.needs_state
        q_taken = c["q_taken"] if self.per_agent else c["q_taken"] * acting  # per agent the mask below leaves out the idle
        q = self.mixer(q_taken, c["state"][:, :-1] if needs else None)
        with torch.no_grad():
            y = targets_fn(c, target.mixer(c["next_q"], c["state"][:, 1:] if needs else None))
        mask = c["filled"] * acting if self.per_agent else c["filled"]
        td = masked_mean(td_loss(q - y, self.loss_kind), mask)
        return {"loss": td, "td": td, "q": q, "target": y, "mask": mask}


class IndependentMixer(Mixer):
    """No mixing (IDQN): returns the utilities unchanged, [B, T, N] / [B, N]."""

    needs_state = False
    per_agent = True

    def forward(self, q: Tensor, state: Tensor | None = None) -> Tensor:
        """The utilities themselves, after the shape check (no reshape on the gradient's path)."""
        self._check(q, state)
        return q

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

    @classmethod
    def from_config(cls, cfg: Any, spec: EnvSpec) -> "QMixer":
        return cls(spec.n_agents, spec.state_dim, embed_dim=cfg.mixer_embed_dim, hypernet_embed=cfg.hypernet_embed)


MIXERS: Registry[MixerKind] = Registry("mixer")
"""Value decompositions of the Q-learner: "none" (independent, per-agent output), "vdn", "qmix";
"qtran" is added by `marl.algos.qtran`."""
MIXERS.register("none", IndependentMixer)
MIXERS.register("vdn", VDNMixer)
MIXERS.register("qmix", QMixer)
