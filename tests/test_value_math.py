"""Value-based pieces against hand-computed values: targets, mixers, replay, episode builder, QTRAN losses."""
from __future__ import annotations

import io

import pytest
import torch

from marl.algos.mixers import MIXERS, Mixer, QMixer, VDNMixer, td_loss
from marl.algos.qtran import QTranJoint, QTranV, qtran_losses
from marl.algos.replay import EpisodeBuilder, EpisodeReplay
from marl.algos.targets import nstep_targets, td_lambda_targets
from marl.core.errors import MarlError

G = 0.5
# row 0: terminated after 3 steps; row 1: truncated after 2 steps; row 2: runs to the end of
# the tensor (bootstraps). Padded entries hold garbage (9, 99) that must never leak in.
R = torch.tensor([[1.0, 2.0, 3.0, 9.0], [1.0, 1.0, 9.0, 9.0], [0.0, 0.0, 0.0, 1.0]])
NV = torch.tensor([[10.0, 20.0, 30.0, 99.0], [4.0, 8.0, 99.0, 99.0], [0.0, 0.0, 0.0, 2.0]])
TERM = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
FILLED = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


@pytest.mark.parametrize("n, expected", [
    (1, [[6.0, 12.0, 3.0, 0.0], [3.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]),
    (2, [[7.0, 3.5, 3.0, 0.0], [3.5, 5.0, 0.0, 0.0], [0.0, 0.0, 1.0, 2.0]]),
    (10, [[2.75, 3.5, 3.0, 0.0], [3.5, 5.0, 0.0, 0.0], [0.25, 0.5, 1.0, 2.0]]),
])
def test_nstep_hand_values(n, expected):
    assert torch.allclose(nstep_targets(R, NV, TERM, FILLED, G, n), torch.tensor(expected))


def test_td_lambda_hand_values():
    assert torch.allclose(td_lambda_targets(R, NV, TERM, FILLED, G, 0.0), nstep_targets(R, NV, TERM, FILLED, G, 1))
    # lam = 1: Monte-Carlo for the terminated row, MC + discounted final value when truncated
    assert torch.allclose(td_lambda_targets(R, NV, TERM, FILLED, G, 1.0), nstep_targets(R, NV, TERM, FILLED, G, 10))
    mc = td_lambda_targets(R, NV, TERM, FILLED, G, 1.0)[0, :3]
    assert torch.allclose(mc, torch.tensor([1 + G * 2 + G**2 * 3, 2 + G * 3, 3.0]))
    half = td_lambda_targets(R, NV, TERM, FILLED, G, 0.5)
    # G2 = 3; G1 = 2 + .5 (.5*20 + .5*3) = 7.75; G0 = 1 + .5 (.5*10 + .5*7.75) = 5.4375
    assert torch.allclose(half[0], torch.tensor([5.4375, 7.75, 3.0, 0.0]))
    # truncated: G1 = 1 + .5*8 = 5; G0 = 1 + .5 (.5*4 + .5*5) = 3.25
    assert torch.allclose(half[1], torch.tensor([3.25, 5.0, 0.0, 0.0]))


def test_q_lambda_trace_cut_hand_values():
    """Watkins' Q(lambda): trace[:, t] = 0 (the action at step t+1 was not greedy) makes G_t
    bootstrap from V_t alone; trace 1 everywhere is TD(lambda), 0 everywhere the one-step target."""
    trace = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    got = td_lambda_targets(R, NV, TERM, FILLED, G, 0.5, trace)
    # row 0: G2 = 3; G1 = 2 + .5 * 20 = 12 (cut); G0 = 1 + .5 (.5*10 + .5*12) = 6.5
    # row 1 (truncated): G1 = 1 + .5*8 = 5; G0 = 1 + .5*4 = 3 (cut)
    # row 2 (no cut): G3 = 1 + .5*2 = 2; G2 = .5 (.5*0 + .5*2) = .5; G1 = .5 (.5*.5) = .125; G0 = .5 (.5*.125) = .03125
    assert torch.allclose(got, torch.tensor([[6.5, 12.0, 3.0, 0.0], [3.0, 5.0, 0.0, 0.0], [0.03125, 0.125, 0.5, 2.0]]))
    assert torch.allclose(td_lambda_targets(R, NV, TERM, FILLED, G, 0.5, torch.ones(3, 4)), td_lambda_targets(R, NV, TERM, FILLED, G, 0.5))
    assert torch.allclose(td_lambda_targets(R, NV, TERM, FILLED, G, 0.9, torch.zeros(3, 4)), nstep_targets(R, NV, TERM, FILLED, G, 1))
    # a [B, T] trace broadcasts over a trailing agent axis; a per-agent trace cuts each agent alone
    per_agent = td_lambda_targets(R[..., None].expand(3, 4, 2), NV[..., None].expand(3, 4, 2), TERM, FILLED, G, 0.5,
                                  torch.stack([trace, torch.ones(3, 4)], -1))
    assert torch.allclose(per_agent[..., 0], got) and torch.allclose(per_agent[..., 1], td_lambda_targets(R, NV, TERM, FILLED, G, 0.5))
    assert torch.allclose(td_lambda_targets(R[..., None].expand(3, 4, 2), NV[..., None].expand(3, 4, 2), TERM, FILLED, G, 0.5, trace),
                          got[..., None].expand(3, 4, 2))


def _random_episodes(B=5, T=7, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    filled = (torch.arange(T)[None] < lengths[:, None]).float()
    term = torch.zeros(B, T)
    ended_by_term = torch.rand(B, generator=g) < 0.5
    term[torch.arange(B), lengths - 1] = ended_by_term.float()
    return torch.randn(B, T, N, generator=g), torch.randn(B, T, N, generator=g), term, filled


def test_td_lambda_is_the_lambda_mixture_of_nstep_returns():
    rewards, next_values, term, filled = _random_episodes()
    lam, T = 0.7, rewards.shape[1]
    got = td_lambda_targets(rewards, next_values, term, filled, 0.9, lam)
    nstep = [nstep_targets(rewards, next_values, term, filled, 0.9, n) for n in range(1, T + 1)]
    length = filled.sum(1)
    for b in range(rewards.shape[0]):
        for t in range(int(length[b])):
            m = int(length[b]) - t  # steps left; the m-step return is the full return
            want = sum((1 - lam) * lam ** (k - 1) * nstep[k - 1][b, t] for k in range(1, m)) + lam ** (m - 1) * nstep[m - 1][b, t]
            assert torch.allclose(got[b, t], want, atol=1e-5)


def test_targets_agent_axis_and_padding_garbage():
    rewards, next_values, term, filled = _random_episodes()
    for fn, arg in ((nstep_targets, 3), (td_lambda_targets, 0.6)):
        out = fn(rewards, next_values, term, filled, 0.9, arg)
        per_agent = torch.stack([fn(rewards[..., i], next_values[..., i], term, filled, 0.9, arg) for i in range(3)], -1)
        assert torch.allclose(out, per_agent)
        pad = (filled == 0)[..., None].expand_as(rewards)
        noisy = fn(rewards.masked_fill(pad, 1e3), next_values.masked_fill(pad, -1e3), term, filled, 0.9, arg)
        assert torch.allclose(out, noisy) and (out[pad] == 0).all()
    with pytest.raises(ValueError):
        nstep_targets(R, NV, TERM, torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 3), G, 1)


# ---------------------------------------------------------------- mixers
N, S = 3, 5


@pytest.mark.parametrize("name", [n for n in MIXERS if isinstance(MIXERS.get(n), type) and issubclass(MIXERS.get(n), Mixer)])
def test_every_mixer_shapes_and_errors(name):
    mixer = MIXERS.get(name)(N, S)
    q3, s3 = torch.randn(4, 6, N), torch.randn(4, 6, S)
    out3, out2 = mixer(q3, s3), mixer(q3[:, 2], s3[:, 2])
    lead3, lead2 = ((4, 6, N), (4, N)) if mixer.per_agent else ((4, 6), (4,))
    assert out3.shape == lead3 and out2.shape == lead2
    assert torch.allclose(out3[:, 2], out2, atol=1e-6)
    bad = [(torch.randn(4, 6, N + 1), s3), (q3, torch.randn(4, 6, S + 1)), (q3, torch.randn(4, 5, S)),
           (q3, torch.randn(4, S)), (torch.randn(2, 4, 6, N), torch.randn(2, 4, 6, S))]
    for q, s in bad:
        with pytest.raises(MarlError):
            mixer(q, s)
    if mixer.needs_state:
        with pytest.raises(MarlError):
            mixer(q3, None)


def test_vdn_is_the_exact_sum():
    q = torch.randn(4, 6, N)
    assert torch.equal(VDNMixer(N, S)(q, torch.randn(4, 6, S)), q.sum(-1))
    assert torch.equal(VDNMixer(N, 0)(q[:, 0]), q[:, 0].sum(-1))


@pytest.mark.parametrize("seed, layers", [(0, 2), (1, 2), (2, 1)])
def test_qmix_is_monotone_in_every_utility(seed, layers):
    torch.manual_seed(seed)
    mixer = QMixer(N, S, hypernet_layers=layers)
    q = (torch.randn(64, 8, N) * 5).requires_grad_()
    state = torch.randn(64, 8, S) * 3
    (grad,) = torch.autograd.grad(mixer(q, state).sum(), q)
    assert (grad >= 0).all() and (grad > 0).any()
    # the state matters (hypernetworks and V(s)), and only the state is mixed in besides q
    assert not torch.allclose(mixer(q, state), mixer(q, state.flip(0)))


def test_qmix_config_errors():
    with pytest.raises(MarlError):
        QMixer(N, S, hypernet_layers=3)
    with pytest.raises(MarlError):
        QMixer(N, 0)


# ---------------------------------------------------------------- replay
FIELDS = {"obs": ((2,), torch.float32), "actions": ((N,), torch.long)}


def _episode(length: int, tag: float) -> dict:
    return {"obs": torch.full((length, 2), tag) + torch.arange(length)[:, None],
            "actions": torch.full((length, N), int(tag), dtype=torch.long)}


def test_replay_round_trip_padding_and_trim():
    rb = EpisodeReplay(4, 6, FIELDS, "cpu")
    rb.add(_episode(3, 1.0))
    rb.add(_episode(5, 10.0))
    assert len(rb) == 2
    batch = rb.sample(2, torch.Generator().manual_seed(0))
    assert batch["obs"].shape == (2, 5, 2) and batch["actions"].shape == (2, 5, N) and batch["filled"].shape == (2, 5)
    for row in range(2):
        L = int(batch["filled"][row].sum())
        assert torch.equal(batch["filled"][row], (torch.arange(5) < L).float())
        assert torch.equal(batch["obs"][row, :L], _episode(L, 1.0 if L == 3 else 10.0)["obs"])
        assert (batch["obs"][row, L:] == 0).all() and (batch["actions"][row, L:] == 0).all()
    rb.add(_episode(2, 20.0))
    rb.add(_episode(1, 30.0))
    rb.add(_episode(4, 40.0))  # ring: overwrites the oldest (tag 1)
    assert len(rb) == 4
    tags = sorted(int(x) for x in rb.sample(4, torch.Generator().manual_seed(1))["actions"][:, 0, 0])
    assert tags == [10, 20, 30, 40]
    short = EpisodeReplay(2, 6, FIELDS)
    short.add(_episode(2, 1.0))
    short.add(_episode(1, 2.0))
    assert short.sample(2)["obs"].shape[1] == 2  # trimmed to the longest sampled episode


def test_replay_errors_and_batch_check():
    with pytest.raises(MarlError):
        EpisodeReplay(4, 6, FIELDS, batch_size=8)
    rb = EpisodeReplay(4, 6, FIELDS, batch_size=4)
    rb.add(_episode(2, 1.0))
    with pytest.raises(MarlError):
        rb.sample(2)  # fewer episodes than a batch
    with pytest.raises(MarlError):
        rb.add(_episode(7, 1.0))  # longer than max_len
    with pytest.raises(MarlError):
        EpisodeReplay(4, 6, {"filled": ((1,), torch.float32)})


def test_replay_state_dict_round_trip():
    rb = EpisodeReplay(3, 6, FIELDS)
    for i in range(5):
        rb.add(_episode(1 + i, 10.0 * i))
    buf = io.BytesIO()
    torch.save(rb.state_dict(), buf)
    buf.seek(0)
    other = EpisodeReplay(3, 6, FIELDS)
    other.load_state_dict(torch.load(buf))
    assert len(other) == len(rb) and other.ptr == rb.ptr
    for x in (rb, other):
        x.add(_episode(2, 77.0))
    a, b = rb.sample(3, torch.Generator().manual_seed(3)), other.sample(3, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(MarlError):
        EpisodeReplay(4, 6, FIELDS).load_state_dict(rb.state_dict())


# ---------------------------------------------------------------- episode builder
def _segment(t0: int, T: int, done_at: dict[int, list[int]]) -> dict:
    """E=2 envs, N=1, obs = 100 * env + global step."""
    t = torch.arange(t0, t0 + T, dtype=torch.float32)[:, None]
    obs = (100.0 * torch.arange(2)[None] + t)[..., None, None]  # [T, 2, 1, 1]
    done = torch.zeros(T, 2, dtype=torch.bool)
    for e, ts in done_at.items():
        done[ts, e] = True
    return {"obs": obs, "reward": obs[..., 0] * 0 + 1, "done": done}


def test_episode_builder_spans_segments_and_resumes():
    seg0 = _segment(0, 3, {1: [1]})  # env 1 ends at global step 1
    seg1 = _segment(3, 3, {0: [0], 1: [2]})  # env 0 ends at step 3, env 1 at step 5
    builder = EpisodeBuilder(2, ["obs", "reward"])
    first = builder.add(seg0)
    assert [ep["obs"].flatten().tolist() for ep in first] == [[100.0, 101.0]]
    saved = builder.state_dict()
    second = builder.add(seg1)
    assert [ep["obs"].flatten().tolist() for ep in second] == [[0.0, 1.0, 2.0, 3.0], [102.0, 103.0, 104.0, 105.0]]
    assert sorted(second[0]) == ["obs", "reward"]
    resumed = EpisodeBuilder(2, ["obs", "reward"])
    resumed.load_state_dict(saved)
    again = resumed.add(seg1)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(second, again) for k in x)
    # env 0's episode that started at step 4 is still open
    assert builder.state_dict()["partial"][0]["obs"].flatten().tolist() == [4.0, 5.0]


# ---------------------------------------------------------------- QTRAN
def test_qtran_losses_hand_example():
    q_jt = torch.tensor([1.0, 2.0], requires_grad=True)
    v = torch.tensor([0.5, -1.0], requires_grad=True)
    args = dict(q_jt=q_jt, q_jt_target=torch.tensor([2.0, 2.0]), q_tilde_opt=torch.tensor([3.0, 1.0]),
                q_jt_opt_detached=q_jt * 0 + 2.0, v_jt=v, q_tilde_taken=torch.tensor([0.0, 5.0]),
                q_jt_taken_detached=q_jt)
    out = qtran_losses(**args, filled=torch.ones(2), lambda_opt=2.0, lambda_nopt=3.0)
    # td: ((1-2)^2 + 0)/2; opt: ((3-2+.5)^2 + (1-2-1)^2)/2; nopt: (min(0-1+.5, 0)^2 + min(5-2-1, 0)^2)/2
    want = {"td": 0.5, "opt": (2.25 + 4.0) / 2, "nopt": 0.125, "loss": 0.5 + 2 * 3.125 + 3 * 0.125}
    assert {k: round(float(x.detach()), 6) for k, x in out.items()} == want
    (grad_q,) = torch.autograd.grad(out["opt"] + out["nopt"], q_jt, allow_unused=True)
    assert grad_q is None or (grad_q == 0).all()  # Q^_jt is held fixed in L_opt and L_nopt
    (grad_v,) = torch.autograd.grad(out["opt"] + out["nopt"], v)
    assert torch.allclose(grad_v, torch.tensor([1.5 - 0.5, -2.0]))  # d/dv of the means above
    masked = qtran_losses(**args, filled=torch.tensor([1.0, 0.0]))
    assert [round(float(masked[k].detach()), 6) for k in ("td", "opt", "nopt")] == [1.0, 2.25, 0.25]
    with pytest.raises(MarlError):
        qtran_losses(**{**args, "v_jt": torch.zeros(3)}, filled=torch.ones(2))


def test_td_loss_hand_values_and_clipped_gradient():
    error = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    assert td_loss(error).tolist() == [9.0, 1.0, 0.25, 0.0, 0.25, 4.0]
    huber = td_loss(error, "huber")
    assert huber.tolist() == [2.5, 0.5, 0.125, 0.0, 0.125, 1.5]  # e^2/2 inside [-1, 1], |e| - 1/2 outside
    (grad,) = torch.autograd.grad(huber.sum(), error)
    assert grad.tolist() == [-1.0, -1.0, -0.5, 0.0, 0.5, 1.0]  # the error clipped to [-1, 1]
    with pytest.raises(ValueError, match="squared"):
        td_loss(error, "absolute")  # a misspelt kind is not silently the squared error
    # QTRAN's TD term takes it; its constraint terms stay squared
    args = dict(q_jt=torch.tensor([1.0, 5.0]), q_jt_target=torch.tensor([2.0, 2.0]), q_tilde_opt=torch.zeros(2),
                q_jt_opt_detached=torch.zeros(2), v_jt=torch.ones(2), q_tilde_taken=torch.zeros(2),
                q_jt_taken_detached=torch.zeros(2), filled=torch.ones(2))
    squared, clipped = qtran_losses(**args), qtran_losses(**args, loss_kind="huber")
    assert (float(squared["td"]), float(clipped["td"])) == ((1.0 + 9.0) / 2, (0.5 + 2.5) / 2)
    assert float(squared["opt"]) == float(clipped["opt"]) == 1.0


def test_qtran_networks_shapes_and_agent_permutation():
    torch.manual_seed(0)
    joint, value = QTranJoint(N, S, 4, 6), QTranV(S)
    state, feats = torch.randn(2, 7, S), torch.randn(2, 7, N, 4)
    acts = torch.nn.functional.one_hot(torch.randint(6, (2, 7, N)), 6).float()
    out = joint(state, feats, acts)
    assert out.shape == (2, 7) and value(state).shape == (2, 7)
    perm = torch.tensor([2, 0, 1])
    assert torch.allclose(joint(state, feats[..., perm, :], acts[..., perm, :]), out, atol=1e-5)
    other = acts.roll(1, dims=-1)
    assert not torch.allclose(joint(state, feats, other), out)
    with pytest.raises(MarlError):
        joint(state, feats[..., :2, :], acts)
