"""Agent networks over grouped layers: every module maps x[..., N, in] -> [..., N, out] with
the agent axis second to last, and `groups` (LongTensor[N] or a sharing list) decides which
agents share weights (see `marl.nets.sharing`).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from torch import nn

from marl.core.errors import MarlError
from marl.nets.layers import GroupGRUCell, GroupLayerNorm, GroupLinear, from_agent_major, to_agent_major
from marl.nets.sharing import Sharing, as_groups

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _activation(name: str) -> tuple[Callable[[], nn.Module], float]:
    """(module factory, orthogonal-init gain) for an activation name."""
    if name not in ACTIVATIONS:
        raise MarlError(f"unknown activation '{name}'", f"use one of {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name], nn.init.calculate_gain(name)


def _input_layer(in_dim: int, out_dim: int, groups: torch.Tensor, activation: str, layer_norm: bool) -> nn.Sequential:
    """Grouped Linear [-> LayerNorm] -> act: the layer before a GRU or a pooling."""
    act, gain = _activation(activation)
    layers = [GroupLinear(in_dim, out_dim, groups, gain=gain)]
    if layer_norm:
        layers.append(GroupLayerNorm(out_dim, groups))
    return nn.Sequential(*layers, act())


def _run(layers: nn.Sequential, x: torch.Tensor, agent_major: bool) -> torch.Tensor:
    """Apply layers in order, passing the layout flag to the grouped ones. Each layer's `forward`
    is called directly: these layers carry no hooks, and `nn.Module.__call__` costs ~2 µs a
    layer, a tenth of a small network's forward pass on CPU."""
    for layer in layers:
        x = layer.forward(x, agent_major) if isinstance(layer, (GroupLinear, GroupLayerNorm)) else layer.forward(x)
    return x


@functools.lru_cache(maxsize=32)
def _eye(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.eye(n, dtype=dtype, device=device)


def with_agent_id(x: torch.Tensor) -> torch.Tensor:
    """x[..., N, D] -> [..., N, D + N]: a one-hot agent id appended to each agent's input."""
    n = x.shape[-2]
    return torch.cat([x, _eye(n, x.dtype, x.device).expand(*x.shape[:-2], n, n)], dim=-1)


class MLP(nn.Module):
    """Grouped MLP: in -> hidden[0] -> ... -> out, each hidden layer Linear [-> LayerNorm] -> act.

    Hidden layers are initialised orthogonally with the activation's gain (sqrt(2) for relu,
    5/3 for tanh), the output layer with `out_gain` (e.g. 0.01 for a policy head). No
    activation on the output. `hidden=()` gives a single grouped linear layer.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (64, 64), *, groups: Sharing,
                 activation: str = "relu", layer_norm: bool = False, out_gain: float = 1.0):
        super().__init__()
        groups = as_groups(groups)
        act, gain = _activation(activation)
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers.append(GroupLinear(d_in, d_out, groups, gain=gain))
            if layer_norm:
                layers.append(GroupLayerNorm(d_out, groups))
            layers.append(act())
        layers.append(GroupLinear(dims[-1], out_dim, groups, gain=out_gain))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim, self.n_agents = in_dim, out_dim, groups.numel()
        self.agent_major = int(groups.max()) > 0  # run in [N, B, D] layout (bmm) when K > 1

    def forward(self, x: torch.Tensor, agent_major: bool = False) -> torch.Tensor:
        """x[..., N, in] -> [..., N, out] (or [N, B, in] -> [N, B, out] with agent_major)."""
        if agent_major:
            return _run(self.net, x, True)
        if not self.agent_major:  # one weight set: every layer is one GEMM over the rows, kept 2-D throughout
            return _run(self.net, x.reshape(-1, x.shape[-1]), False).view(*x.shape[:-1], self.out_dim)
        y = _run(self.net, to_agent_major(x, self.n_agents), True)
        return from_agent_major(y, x.shape[:-2])


class AgentNet(nn.Module):
    """Per-agent policy/value network with optional recurrence (EPyMARL style fc -> GRU -> fc).

    Feed-forward: an MLP over `hidden`. Recurrent: Linear(in, hidden[0]) -> act ->
    GRUCell(hidden[0], hidden[1]) -> MLP(hidden[2:]) -> out; the GRU state has size
    hidden[1] (hidden[0] when only one size is given). No activation after the GRU.
    forward(x, h) -> (out, h'); for a feed-forward net h is passed through untouched.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (64, 64), *, groups: Sharing,
                 recurrent: bool = False, activation: str = "relu", layer_norm: bool = False,
                 out_gain: float = 1.0):
        super().__init__()
        groups = as_groups(groups)
        hidden = tuple(int(h) for h in hidden)
        self.n_agents, self.recurrent = groups.numel(), recurrent
        self.agent_major = int(groups.max()) > 0
        self.in_dim, self.out_dim = in_dim, out_dim
        self.register_buffer("groups", groups, persistent=False)
        self.arch = dict(hidden=hidden, recurrent=recurrent, activation=activation, layer_norm=layer_norm, out_gain=out_gain)
        if not recurrent:
            self.hidden_dim = 0
            self.body = MLP(in_dim, out_dim, hidden, groups=groups, activation=activation,
                            layer_norm=layer_norm, out_gain=out_gain)
            return
        if not hidden:
            raise MarlError("a recurrent network needs at least one hidden size", "pass hidden=(64,) or more")
        self.hidden_dim = hidden[1] if len(hidden) > 1 else hidden[0]
        self.fc = _input_layer(in_dim, hidden[0], groups, activation, layer_norm)
        self.rnn = GroupGRUCell(hidden[0], self.hidden_dim, groups)
        self.head = MLP(self.hidden_dim, out_dim, hidden[2:], groups=groups, activation=activation,
                        layer_norm=layer_norm, out_gain=out_gain)

    @property
    def output_layer(self) -> GroupLinear:
        """The last linear layer (PopArt rescales it when value statistics change)."""
        return (self.head if self.recurrent else self.body).net[-1]

    def initial_hidden(self, batch_shape: Sequence[int] | int = (), n_agents: int | None = None) -> torch.Tensor:
        """Zeros [*batch_shape, N, H] on the network's device (H = 0 for a feed-forward net)."""
        if isinstance(batch_shape, int):
            batch_shape = (batch_shape,)
        p = next(self.parameters())
        n = self.n_agents if n_agents is None else n_agents
        return torch.zeros(*batch_shape, n, self.hidden_dim, dtype=p.dtype, device=p.device)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x[..., N, in], h[..., N, H] or None (zeros) -> (out[..., N, out], h'[..., N, H])."""
        if not self.recurrent:
            return self.body(x), h
        am, lead = self.agent_major, x.shape[:-2]
        if am:  # one layout change in, one out, instead of one around every layer
            x = to_agent_major(x, self.n_agents)
            h = None if h is None else to_agent_major(h, self.n_agents)
        z = _run(self.fc, x, am)
        if h is None:
            h = z.new_zeros(*z.shape[:-1], self.hidden_dim)
        h = self.rnn(z, h, am)
        out = self.head(h, am)
        if am:
            out, h = from_agent_major(out, lead), from_agent_major(h, lead)
        return out, h


def stack_nets(nets: Sequence[AgentNet]) -> AgentNet:
    """M AgentNets of one architecture (and sharing) as one, their agents side by side: agent
    i of net m is agent m*N + i of the result, with net m's weights (its groups shifted by m*K).
    One forward of x[..., M*N, in] computes every net on its own block of agents: a batched
    op per layer instead of M calls."""
    first = nets[0]
    for net in nets[1:]:
        if net.arch != first.arch or (net.in_dim, net.out_dim) != (first.in_dim, first.out_dim) or not torch.equal(net.groups, first.groups):
            raise ValueError("stack_nets needs nets of one architecture and sharing")
    k = int(first.groups.max()) + 1
    out = AgentNet(first.in_dim, first.out_dim, groups=torch.cat([first.groups + m * k for m in range(len(nets))]), **first.arch)
    states = [net.state_dict() for net in nets]
    out.load_state_dict({key: torch.cat([s[key] for s in states]) for key in states[0]})
    return out.to(first.groups.device)


def unroll(step: Callable[..., tuple[torch.Tensor, torch.Tensor | None]], xs: Sequence[torch.Tensor],
           h0: torch.Tensor | None, done: torch.Tensor | None = None, dim: int = 0) -> torch.Tensor:
    """Outputs of `step(*inputs, h) -> (out, h')` (e.g. an AgentNet) over the time axis `dim`
    of the inputs. With h0 None (a feed-forward net) all steps go through in one call;
    otherwise the state is carried step by step from h0 [*batch, N, H] and zeroed after
    the steps where `done` [*batch and time, the time axis at `dim`] is set (an episode ended)."""
    if h0 is None:
        return step(*xs, None)[0]
    outs, h = [], h0
    for t in range(xs[0].shape[dim]):
        out, h = step(*(x.select(dim, t) for x in xs), h)
        outs.append(out)
        if done is not None:
            h = h * (~done.select(dim, t)).to(h.dtype)[..., None, None]
    return torch.stack(outs, dim)


class SetNet(nn.Module):
    """Deep Sets over the agent axis (Zaheer et al. 2017): the centralised critic's network.

    Each agent's input goes through an encoder, Linear(in, hidden[0]) [-> LayerNorm] -> act
    (then a GRU when recurrent), with the weights of its sharing group. The embeddings are
    averaged over agents, and a head MLP over the remaining hidden sizes reads
    [mean, context] for one team output [..., 1, out] (`per_agent=False`), or
    [own embedding, mean, context] for one output per agent [..., N, out].

    Relabelling the agents (inputs and ids together) leaves the team output unchanged and
    permutes the per-agent outputs. The encoder learns from N samples per step where an
    MLP on the concatenated inputs gets one, and the input size does not grow with N.
    forward(x[..., N, in], context[..., C], h) -> (out, h'); h[..., N, H] when recurrent.
    """

    def __init__(self, in_dim: int, context_dim: int, out_dim: int, hidden: Sequence[int] = (64, 64), *,
                 groups: Sharing, per_agent: bool, recurrent: bool = False, activation: str = "relu",
                 layer_norm: bool = False, out_gain: float = 1.0):
        super().__init__()
        groups = as_groups(groups)
        hidden = tuple(int(h) for h in hidden)
        if not hidden:
            raise MarlError("a set network needs at least one hidden size", "pass hidden=(64, 64) or similar")
        self.recurrent, self.per_agent = recurrent, per_agent
        self.fc = _input_layer(in_dim, hidden[0], groups, activation, layer_norm)
        self.hidden_dim = (hidden[1] if len(hidden) > 1 else hidden[0]) if recurrent else 0
        if recurrent:
            self.rnn = GroupGRUCell(hidden[0], self.hidden_dim, groups)
        embed = self.hidden_dim or hidden[0]
        head_in = embed * (2 if per_agent else 1) + context_dim
        head_groups = groups if per_agent else torch.zeros(1, dtype=torch.long)
        self.head = MLP(head_in, out_dim, hidden[2:] if recurrent else hidden[1:], groups=head_groups,
                        activation=activation, layer_norm=layer_norm, out_gain=out_gain)

    @property
    def output_layer(self) -> GroupLinear:
        return self.head.net[-1]

    def forward(self, x: torch.Tensor, context: torch.Tensor, h: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        e = _run(self.fc, x, False)
        if self.recurrent:
            h = self.rnn(e, e.new_zeros(*e.shape[:-1], self.hidden_dim) if h is None else h)
            e = h
        parts = [e.mean(-2, keepdim=True), context.unsqueeze(-2)]
        if self.per_agent:
            parts = [e] + [p.expand(*e.shape[:-1], p.shape[-1]) for p in parts]
        return self.head(torch.cat(parts, dim=-1)), h
