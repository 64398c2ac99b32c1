"""Property tests for marl.nets: sharing semantics, grouped layers against plain torch layers,
and the masked/Gaussian distribution functions against hand-computed values."""
import math

import pytest
import torch
from torch import nn

from marl.core.errors import MarlError
from marl.nets import (
    MLP, AgentNet, GroupGRUCell, GroupLayerNorm, GroupLinear, SetNet, categorical_entropy,
    categorical_greedy, categorical_logp, categorical_logp_entropy, categorical_probs, categorical_sample, gaussian_entropy,
    gaussian_logp, gaussian_sample, mask_logits, num_groups, resolve_groups, unroll, with_agent_id,
)
from marl.nets.models import stack_nets

N, D, A = 4, 6, 5
SHARINGS = ["all", "none", [1, 1, 0, 0], [0, 2, 2]]  # ids in any order, with gaps; [0, 2, 2] has 3 agents
KINDS = ["mlp", "mlp_layer_norm", "gru"]


def make_net(kind: str, sharing) -> AgentNet:
    torch.manual_seed(0)
    groups = resolve_groups(sharing, N if isinstance(sharing, str) else len(sharing))
    return AgentNet(D, A, (16, 16), groups=groups, recurrent=kind == "gru", layer_norm=kind == "mlp_layer_norm")


def torch_gru(cell: GroupGRUCell, k: int) -> nn.GRUCell:
    """A torch.nn.GRUCell holding group k's weights."""
    ref = nn.GRUCell(cell.in_dim, cell.hidden)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh"):
            getattr(ref, name).copy_(getattr(cell, name)[k].t())
        ref.bias_ih.copy_(cell.bias_ih[k]), ref.bias_hh.copy_(cell.bias_hh[k])
    return ref


def run(net: AgentNet, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
    out, h2 = net(x, h)  # output and new hidden state side by side: both must be per agent
    return out if h2 is None else torch.cat([out, h2], dim=-1)


# ---------------------------------------------------------------- resolve_groups

@pytest.mark.parametrize("sharing, expected", [
    ("all", [0, 0, 0, 0]), ("none", [0, 1, 2, 3]), ([1, 1, 0, 0], [1, 1, 0, 0]),
    ([0, 2, 2, 0], [0, 1, 1, 0]), ((7, 3, 7, 5), [2, 0, 2, 1]), (torch.tensor([4, 4, 4, 4]), [0, 0, 0, 0]),
])
def test_resolve_groups(sharing, expected):
    g = resolve_groups(sharing, 4)
    assert g.dtype == torch.long and g.tolist() == expected


@pytest.mark.parametrize("sharing, words", [
    ("some", "unknown sharing"), ([0, 1], "2 group ids but the env has 4"), ([0, 1, 1, 1.5], "integers"),
    ([0, "a", 1, 1], "integers"), ([True, False, True, True], "integers"), (3, "sharing must be"),
    (torch.tensor([0.0, 1.0, 1.0, 0.0]), "1-D integer"),
])
def test_resolve_groups_errors(sharing, words):
    with pytest.raises(MarlError) as err:
        resolve_groups(sharing, 4)
    msg = str(err.value)
    assert words in msg and "\n" not in msg and err.value.fix


# ---------------------------------------------------------------- sharing properties

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sharing", SHARINGS, ids=str)
def test_agent_input_moves_only_its_output(kind, sharing):
    net = make_net(kind, sharing)
    n = net.n_agents
    x = torch.randn(3, n, D)
    h = torch.randn(3, n, net.hidden_dim) if kind == "gru" else None
    base = run(net, x, h)
    for i in range(n):
        x2 = x.clone()
        x2[:, i] += torch.randn(3, D)
        moved = run(net, x2, h)
        others = [j for j in range(n) if j != i]
        torch.testing.assert_close(moved[:, others], base[:, others], rtol=0, atol=1e-6)
        assert (moved[:, i] - base[:, i]).abs().max() > 1e-4
        if h is not None:  # the hidden state is per agent too
            h2 = h.clone()
            h2[:, i] += 1.0
            torch.testing.assert_close(run(net, x, h2)[:, others], base[:, others], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sharing", SHARINGS, ids=str)
def test_equal_inputs_equal_outputs_iff_same_group(kind, sharing):
    net = make_net(kind, sharing)
    n, groups = net.n_agents, resolve_groups(sharing, net.n_agents).tolist()
    x = torch.randn(5, 1, D).expand(5, n, D)
    h = torch.randn(5, 1, net.hidden_dim).expand(5, n, net.hidden_dim) if kind == "gru" else None
    y = run(net, x, h)
    for i in range(n):
        for j in range(i + 1, n):
            if groups[i] == groups[j]:
                torch.testing.assert_close(y[:, i], y[:, j], rtol=0, atol=1e-6)
            else:
                assert (y[:, i] - y[:, j]).abs().max() > 1e-3, (i, j, groups)


def test_gradient_reaches_only_own_group():
    net = MLP(D, A, (8,), groups=[1, 1, 0, 2])  # resolved to [1, 1, 0, 2]
    net(torch.randn(2, N, D))[:, 2].sum().backward()  # agent 2 is group 0
    for layer in (m for m in net.modules() if isinstance(m, GroupLinear)):
        assert layer.weight.grad[0].abs().sum() > 0
        assert layer.weight.grad[1:].abs().sum() == 0 and layer.bias.grad[1:].abs().sum() == 0


# ---------------------------------------------------------------- layers against torch

@pytest.mark.parametrize("sharing", ["all", "none", [1, 0, 1, 2], [2, 1, 0, 3]], ids=str)
def test_group_linear_equals_separate_linears(sharing):
    groups = resolve_groups(sharing, N)
    layer, refs = GroupLinear(D, 3, groups), [nn.Linear(D, 3) for _ in range(num_groups(groups))]
    with torch.no_grad():
        layer.bias.normal_()
        for k, lin in enumerate(refs):
            lin.weight.copy_(layer.weight[k].t()), lin.bias.copy_(layer.bias[k])
    x = torch.randn(2, 7, N, D)
    expected = torch.stack([refs[groups[i]](x[..., i, :]) for i in range(N)], dim=-2)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x[0, 0]), expected[0, 0])  # no leading dims


@pytest.mark.parametrize("sharing", ["all", "none", [1, 0, 1, 2]], ids=str)
def test_mlp_equals_per_agent_torch_layers(sharing):
    groups = resolve_groups(sharing, N)
    net = MLP(D, A, (8, 8), groups=groups, activation="tanh", layer_norm=True)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()  # layer-norm affine too, so it is not the identity
    x = torch.randn(2, 3, N, D)
    for i in range(N):
        y, g = x[..., i, :], groups[i]
        for layer in net.net:
            if isinstance(layer, GroupLinear):
                y = y @ layer.weight[g] + layer.bias[g]
            elif isinstance(layer, GroupLayerNorm):
                y = nn.functional.layer_norm(y, (layer.dim,), layer.weight[g], layer.bias[g])
            else:
                y = layer(y)
        torch.testing.assert_close(net(x)[..., i, :], y)


def test_recurrent_agent_net_equals_layer_by_layer():
    net = make_net("gru", [1, 0, 1, 2])
    x, h = torch.randn(2, 3, N, D), torch.randn(2, 3, N, net.hidden_dim)
    out, h2 = net(x, h)  # runs agent-major inside
    ref_h = net.rnn(net.fc[1](net.fc[0](x)), h)  # each layer on its own, batch-major
    torch.testing.assert_close(h2, ref_h)
    torch.testing.assert_close(out, net.head.net[0](ref_h))


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("per_agent", [False, True])
def test_set_net_is_invariant_to_agent_order_and_reads_every_agent(recurrent, per_agent):
    """Relabelled agents: the team output stays, per-agent outputs (and hidden states) follow
    their agents. Any agent's input, and the context, moves every output."""
    torch.manual_seed(0)
    net = SetNet(D, 3, 2, (16, 16), groups=resolve_groups("all", N), per_agent=per_agent, recurrent=recurrent,
                 layer_norm=True)
    x, c = torch.randn(5, N, D), torch.randn(5, 3)
    h = torch.randn(5, N, net.hidden_dim) if recurrent else None
    out, h2 = net(x, c, h)
    assert out.shape == (5, N if per_agent else 1, 2)
    perm = torch.tensor([2, 0, 3, 1])
    out_p, h2_p = net(x[:, perm], c, None if h is None else h[:, perm])
    torch.testing.assert_close(out_p, out[:, perm] if per_agent else out)
    if recurrent:
        torch.testing.assert_close(h2_p, h2[:, perm])
    moved = x.clone()
    moved[:, 3] += 1.0
    assert ((net(moved, c, h)[0] - out).abs().amax(-1) > 1e-6).all()
    assert ((net(x, c + 1.0, h)[0] - out).abs().amax(-1) > 1e-6).all()


@pytest.mark.parametrize("sharing", ["all", [1, 1, 0, 0]])
@pytest.mark.parametrize("kind", KINDS)
def test_stacked_nets_compute_each_net_on_its_own_agents(kind, sharing):
    """stack_nets of 3 nets (different weights, one architecture): one forward over their agents
    side by side equals each net's own forward on its block, states included."""
    nets = []
    for seed in range(3):
        net = make_net(kind, sharing)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * seed * torch.randn_like(p))
        nets.append(net)
    stacked = stack_nets(nets)
    x = torch.randn(5, 3 * N, D)
    h = torch.randn(5, 3 * N, stacked.hidden_dim)
    out = run(stacked, x, h if kind == "gru" else None)
    for m, net in enumerate(nets):
        rows = slice(m * N, (m + 1) * N)
        torch.testing.assert_close(out[:, rows], run(net, x[:, rows], h[:, rows] if kind == "gru" else None))
    with pytest.raises(ValueError, match="one architecture"):
        stack_nets([nets[0], AgentNet(D, A, (8,), groups=nets[0].groups)])


def test_orthogonal_init_per_group():
    layer = GroupLinear(8, 8, resolve_groups("none", 3), gain=2.0)
    for w in layer.weight:
        torch.testing.assert_close(w.t() @ w, 4.0 * torch.eye(8), atol=1e-5, rtol=0)
    assert not torch.allclose(layer.weight[0], layer.weight[1])


@pytest.mark.parametrize("recurrent", [False, True])
def test_parameter_count_is_k_networks(recurrent):
    def count(m):
        return sum(p.numel() for p in m.parameters())

    single = count(AgentNet(D, A, (16, 16), groups=resolve_groups("all", 1), recurrent=recurrent))
    for sharing, k in [("all", 1), ([0, 0, 1, 1], 2), ([0, 2, 2, 0], 2), ("none", 4)]:
        net = AgentNet(D, A, (16, 16), groups=resolve_groups(sharing, N), recurrent=recurrent)
        assert count(net) == k * single
    plain = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, A))
    assert count(MLP(D, A, (16, 16), groups=[0, 1, 1, 0])) == 2 * count(plain)


@pytest.mark.parametrize("sharing", ["all", [0, 1, 0, 1], "none"], ids=str)
def test_group_gru_cell_matches_torch(sharing):
    torch.manual_seed(1)
    groups = resolve_groups(sharing, N)
    cell = GroupGRUCell(D, 7, groups)
    x, h = torch.randn(3, N, D), torch.randn(3, N, 7)
    out = cell(x, h)
    for i in range(N):
        torch.testing.assert_close(out[:, i], torch_gru(cell, groups[i])(x[:, i], h[:, i]))
    if sharing == "all":  # K = 1: one GRUCell over all agents' rows at once
        flat = torch_gru(cell, 0)(x.reshape(-1, D), h.reshape(-1, 7))
        torch.testing.assert_close(out, flat.reshape(3, N, 7))


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("recurrent", [False, True])
def test_agent_net_forward_backward(recurrent):
    net = AgentNet(D + N, A, (16, 16), groups=resolve_groups([0, 0, 1, 1], N), recurrent=recurrent, layer_norm=True)
    x = with_agent_id(torch.randn(2, 3, N, D))
    h = net.initial_hidden((2, 3))
    out, h2 = net(x, h)
    assert out.shape == (2, 3, N, A) and h.shape == h2.shape == (2, 3, N, net.hidden_dim)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("dim", [0, 1])
def test_unroll_carries_the_state_and_restarts_after_done(dim):
    """unroll over 5 steps with an episode ending at step 1 of env 0: env 0's steps 2-4 equal
    a fresh unroll of those steps from zeros, env 1 equals one unbroken unroll; a
    feed-forward net goes through all steps in one call."""
    net, x = make_net("gru", [1, 1, 0, 0]), torch.randn(5, 2, N, D)
    done = torch.zeros(5, 2, dtype=torch.bool)
    done[1, 0] = True
    move = (lambda t: t.movedim(0, 1)) if dim else (lambda t: t)  # noqa: E731
    with torch.no_grad():
        out = move(unroll(net, (move(x),), net.initial_hidden(2), move(done), dim=dim))
        steps, h = [], None
        for t in range(5):
            o, h = net(x[t], h)
            steps.append(o)
        torch.testing.assert_close(out[:, 1], torch.stack(steps)[:, 1])
        torch.testing.assert_close(out[:2, 0], torch.stack(steps)[:2, 0])
        torch.testing.assert_close(out[2:, 0], unroll(net, (x[2:, :1],), net.initial_hidden(1)).squeeze(1))
        ff = make_net("mlp", "all")
        torch.testing.assert_close(unroll(ff, (x,), None, done), ff(x)[0])


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_layer_norm_bounds_output_far_from_the_data(activation):
    """A critic evaluated far outside its training inputs (agents that flew off) extrapolates:
    without LayerNorm a relu net's output grows with the input scale, with it the output
    converges to a bound (what keeps bootstrapped truncation values from running away)."""
    x = torch.randn(32, N, D)
    outs = {}
    for ln in (False, True):
        torch.manual_seed(0)
        net = AgentNet(D, 1, (16, 16), groups=resolve_groups("all", N), activation=activation, layer_norm=ln)
        with torch.no_grad():
            outs[ln] = [net(x * scale, None)[0] for scale in (1e3, 1e6)]
    near, far = outs[True]
    assert torch.allclose(near, far, atol=1e-3)
    if activation == "relu":
        ratio = outs[False][1].abs().mean() / outs[False][0].abs().mean()
        assert ratio > 100  # unbounded: grows with the input
    else:  # each hidden unit lies in [-1, 1] after LayerNorm and tanh
        bound = net.output_layer.weight.abs().sum() + net.output_layer.bias.abs().sum()
        assert float(far.abs().max()) <= float(bound.detach()) + 1e-4


def test_recurrent_none_hidden_is_zeros():
    net, x = make_net("gru", "none"), torch.randn(3, N, D)
    torch.testing.assert_close(net(x, None), net(x, net.initial_hidden(3)))


def test_with_agent_id():
    x = torch.randn(2, 3, N, D)
    y = with_agent_id(x)  # a new tensor; x is untouched
    assert y.shape == (2, 3, N, D + N)
    torch.testing.assert_close(y[..., :D], x)
    torch.testing.assert_close(y[1, 2, :, D:], torch.eye(N))


def test_bad_activation_is_user_error():
    with pytest.raises(MarlError, match="unknown activation"):
        MLP(D, A, groups=[0, 1], activation="swish")


# ---------------------------------------------------------------- categorical

def test_masked_softmax_logp_entropy_hand_computed():
    logits = mask_logits(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True]))
    e, e3 = math.e, math.e**3
    p = torch.tensor([e / (e + e3), 0.0, e3 / (e + e3)])
    torch.testing.assert_close(categorical_probs(logits), p)
    assert categorical_probs(logits)[1].item() == 0.0
    torch.testing.assert_close(categorical_logp(logits, torch.tensor(0)), torch.tensor(math.log(e / (e + e3))))
    torch.testing.assert_close(categorical_logp(logits, torch.tensor(2)), torch.tensor(math.log(e3 / (e + e3))))
    ent = -(p[0] * p[0].log() + p[2] * p[2].log())
    torch.testing.assert_close(categorical_entropy(logits), ent)
    assert categorical_greedy(logits).item() == 2
    logp2, ent2 = categorical_logp_entropy(logits, torch.tensor(2))
    torch.testing.assert_close(logp2, torch.tensor(math.log(e3 / (e + e3))))
    torch.testing.assert_close(ent2, ent)


def test_masked_action_never_sampled():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 10.0, 0.5, -1.0]).expand(20000, 4)  # the masked one would dominate
    avail = torch.tensor([True, False, True, True]).expand(20000, 4)
    masked = mask_logits(logits, avail)
    acts = categorical_sample(masked, gen)
    assert (acts != 1).all() and categorical_greedy(masked).ne(1).all()
    freq = torch.bincount(acts, minlength=4).float() / acts.numel()
    torch.testing.assert_close(freq, categorical_probs(masked[0]), atol=0.015, rtol=0)
    assert torch.equal(acts, categorical_sample(masked, torch.Generator().manual_seed(0)))  # seeded draws repeat


def test_all_masked_row_has_no_nan():
    logits = mask_logits(torch.randn(2, 3, requires_grad=True), torch.tensor([[False] * 3, [True, False, False]]))
    values = [categorical_probs(logits), categorical_logp(logits, torch.tensor([1, 0])), categorical_entropy(logits)]
    assert all(torch.isfinite(v).all() for v in values)
    torch.testing.assert_close(values[2], torch.tensor([math.log(3), 0.0]))
    assert categorical_sample(logits)[1].item() == 0
    sum(v.sum() for v in values).backward()


# ---------------------------------------------------------------- gaussian

def test_gaussian_against_torch_normal():
    torch.manual_seed(0)
    mean, log_std, act = torch.randn(5, N, 3), torch.randn(5, N, 3) * 0.5, torch.randn(5, N, 3)
    ref = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(gaussian_logp(mean, log_std, act), ref.log_prob(act).sum(-1))
    torch.testing.assert_close(gaussian_entropy(log_std), ref.entropy().sum(-1))


def test_gaussian_sample_moments():
    gen = torch.Generator().manual_seed(0)
    mean, log_std = torch.tensor([1.0, -2.0]), torch.tensor([0.0, math.log(0.5)])
    s = gaussian_sample(mean.expand(40000, 2), log_std, gen)
    torch.testing.assert_close(s.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(s.std(0), log_std.exp(), atol=0.02, rtol=0)
