"""Turn-based (AEC) games: an agent's transition runs from one of its decisions to its next one
(marl.algos.returns). Hand values on real tictactoe_v3 trajectories through the env layer,
team-value returns and final observations where agents end at different times, and self-play
learners that beat a random opponent from both seats."""
import numpy as np
import pytest
import torch

from marl import envs
from marl.algos import ALGOS
from marl.algos.onpolicy import OnPolicyLearner
from marl.algos.qlearning import QLearner
from marl.core.errors import MarlError
from marl.core.policies import AgentPolicies, RandomPolicy, outcomes
from marl.core.rollout import Collector, evaluate
from marl.core.vec import VecEnv
from marl.nets.layers import GroupLinear

TTT = "pettingzoo.classic/tictactoe_v3"
G = 0.99
CPU = torch.device("cpu")


def _constant(net, value: float) -> None:
    """Make a network output `value` for every input and every output unit."""
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        [m for m in net.modules() if isinstance(m, GroupLinear)][-1].bias.fill_(value)


def _own_decisions(acting, reward, ended):
    """Reference: per agent, the list of (rewards of the transition, it ended, its episode end
    was a termination) for each own decision, in time order, for one env's steps (numpy)."""
    out = []
    for i in range(acting.shape[1]):
        decs, cur = [], None
        for t in range(acting.shape[0]):
            if acting[t, i]:
                cur = [0.0, False]
                decs.append(cur)
            if cur is not None:
                cur[0] += float(reward[t, i])
                if ended[t, i]:
                    cur[1] = True
                    cur = None
        out.append(decs)
    return out


def _reference_returns(decs, value, lam, next_known):
    """λ-return of each own decision with a constant value `value` and γ per own decision; every
    tictactoe game terminates, so an ended transition does not bootstrap. A last transition
    that did not end bootstraps from `value` if its next decision is known, else it has none."""
    G_next, out = None, []
    for k in range(len(decs) - 1, -1, -1):
        r, ended = decs[k]
        if ended:
            g = r
        elif k == len(decs) - 1:
            g = r + G * value if next_known else None
        else:
            nxt = value if G_next is None else (1 - lam) * value + lam * G_next
            g = r + G * nxt
        out.append(g)
        G_next = g
    return out[::-1]


def _q_learner(**kw):
    vec = VecEnv(envs.make_factory(TTT), 4, seed=0)
    cfg = ALGOS.get("idqn").make_config(gamma=G, batch_size=2, buffer_size=64, learning_starts=10**6, **kw)
    learner = QLearner(cfg, vec.spec, CPU, seed=0)
    for net in (learner.net, learner.target_net):
        _constant(net, 0.5)
    collector = Collector(vec, learner, CPU)
    batch, _ = collector.collect(40)
    learner.update(batch)
    vec.close()
    sample = learner.replay.sample(len(learner.replay), learner.sample_gen)
    c = learner._context(sample)
    return sample, learner.head.loss(learner.target_head, c, learner._targets)["target"]


@pytest.mark.parametrize("kw", [{"returns": "nstep", "n_step": 1}, {"returns": "nstep", "n_step": 3},
                                {"returns": "td_lambda", "td_lambda": 0.6}])
def test_idqn_targets_run_over_own_decisions(kw):
    """Q = 0.5 everywhere, γ = 0.99: a mid-game move's one-step target is γ · 0.5 = 0.495 (its
    next own decision), n counts own decisions, and the loser's last move, whose -1 arrives on
    the opponent's winning move, gets -1 (no bootstrap: its game terminated)."""
    sample, y = _q_learner(**kw)
    steps = sample["filled"][:, 1:].bool()
    acting, reward = sample["acting"][:, :-1], sample["reward"][:, :-1]
    ended = sample["terminated"][:, :-1] | sample["truncated"][:, :-1]
    lost = seen_mid = 0
    for b in range(y.shape[0]):
        L = int(steps[b].sum())
        a, r, e = acting[b, :L].numpy(), reward[b, :L].numpy(), ended[b, :L].numpy()
        decs = _own_decisions(a, r, e)
        for i in range(2):
            times = np.flatnonzero(a[:, i])
            if kw["returns"] == "td_lambda":
                want = _reference_returns(decs[i], 0.5, kw["td_lambda"], next_known=False)
            else:
                n, want = kw["n_step"], []
                for k in range(len(decs[i])):
                    m = min(n, len(decs[i]) - k)
                    g = sum(G**j * decs[i][k + j][0] for j in range(m))
                    want.append(g + (G**m * 0.5 if k + m < len(decs[i]) else 0.0))
            torch.testing.assert_close(y[b, times, i], torch.tensor(want, dtype=torch.float32))
            if decs[i][-1][0] == -1.0:
                lost += 1
                assert y[b, times[-1], i].item() == pytest.approx(-1.0)
            if kw == {"returns": "nstep", "n_step": 1} and len(times) > 1:
                seen_mid += 1
                assert y[b, times[0], i].item() == pytest.approx(G * 0.5)
        assert (y[b, :L][~a] == 0).all()  # no target where the agent does not decide
    assert lost > 0, "no game was lost in the sample: pick another seed"
    assert seen_mid > 0 or kw != {"returns": "nstep", "n_step": 1}


def test_onpolicy_returns_run_over_own_decisions():
    """IPPO with a constant critic c = 0.5 (γ = 0.99, λ = 0.95) on a tictactoe rollout: returns
    over each agent's own decisions; the loser's last move returns -1 (its -1 arrives on the
    opponent's move); a move whose next own decision lies past the rollout is left out."""
    vec = VecEnv(envs.make_factory(TTT), 3, seed=1)
    cfg = ALGOS.get("ippo").make_config(gamma=G, gae_lambda=0.95, value_norm=False, rollout_len=20)
    learner = OnPolicyLearner(cfg, vec.spec, CPU, seed=0)
    _constant(learner.critic, 0.5)
    batch, _ = Collector(vec, learner, CPU).collect(20)
    vec.close()
    values, adv, ret, mask = learner._advantages(batch)
    ended = batch["terminated"] | batch["truncated"] | batch["done"].unsqueeze(-1)
    lost = 0
    for e in range(3):
        a, r, en = batch["acting"][:, e].numpy(), batch["reward"][:, e].numpy(), ended[:, e].numpy()
        for i in range(2):
            times = np.flatnonzero(a[:, i])
            # split the decisions into episodes (a transition that ended closes its episode)
            decs = _own_decisions(a, r, en)[i]
            start = 0
            for k in range(len(decs)):
                if decs[k][1] or k == len(decs) - 1:
                    part = decs[start:k + 1]
                    known = bool(batch["next_acting"][e, i]) if k == len(decs) - 1 else True
                    want = _reference_returns(part, 0.5, 0.95, next_known=known)
                    for j, g in enumerate(want):
                        t = times[start + j]
                        assert bool(mask[t, e, i]) == (g is not None)
                        if g is not None:
                            assert ret[t, e, i].item() == pytest.approx(g, abs=1e-5)
                            assert adv[t, e, i].item() == pytest.approx(g - 0.5, abs=1e-5)
                    if part[-1][0] == -1.0:
                        lost += 1
                        assert ret[times[k], e, i].item() == pytest.approx(-1.0)
                    start = k + 1
        assert not mask[:, e][~batch["acting"][:, e]].any()
    assert lost > 0, "no game was lost in the rollout: pick another seed"


def test_team_value_bootstraps_until_the_env_episode_ends():
    """MAPPO with a team reward (one value per env step) on builtin/grid, where an agent on its
    goal terminates while the other goes on: both agents' returns at a step are the one team
    return, bootstrapped until the env's episode ends (not cut at the first agent's end)."""
    vec = VecEnv(envs.make_factory("builtin/grid", size=3, max_steps=12), 8, seed=0)
    cfg = ALGOS.get("mappo").make_config(reward="mean", gamma=G, gae_lambda=0.95, value_norm=False, rollout_len=48)
    learner = OnPolicyLearner(cfg, vec.spec, CPU, seed=0)
    _constant(learner.critic, 0.5)
    batch, _ = Collector(vec, learner, CPU).collect(48)
    vec.close()
    _, adv, ret, mask = learner._advantages(batch)
    early = batch["terminated"] & ~batch["done"].unsqueeze(-1)
    assert early.any(), "no agent ended before the other: pick another seed"
    t, e, i = early.nonzero()[0].tolist()
    both = batch["acting"][t, e].all()
    assert both and ret[t, e, 0] == ret[t, e, 1]
    torch.testing.assert_close(ret[..., 0], ret[..., 1])
    # the agent that terminated at t bootstraps like the team: r_t + γ((1 - λ) c + λ G_{t+1})
    team_r = batch["reward"][t, e].mean()
    want = team_r + G * (0.05 * 0.5 + 0.95 * ret[t + 1, e, 1 - i])
    assert ret[t, e, i].item() == pytest.approx(want.item(), abs=1e-5)
    assert torch.equal(mask, batch["acting"])


def test_final_observation_rows_are_this_steps_not_an_earlier_agents():
    """builtin/grid on 2x2 cells: agent_0 reaches its goal and leaves; when the episode ends later
    (agent_1 truncated), agent_0's final-observation row is empty, not its own final
    observation from its earlier end, and the final state is the env's state after the step."""
    vec = VecEnv(envs.make_factory("builtin/grid", size=2, max_steps=4), 1, seed=0)
    vec.reset()
    env = vec._local.envs[0]
    a0 = 4 if env.pos["agent_0"][0] == 1 else 2  # right, or down then right
    out, _ = vec.step(np.array([[a0, 0]]))
    if a0 == 2:
        out, _ = vec.step(np.array([[4, 0]]))
    assert out["terminated"][0].tolist() == [True, False]
    assert out["final_obs"][0, 0].any()
    while not out["done"][0]:
        out, _ = vec.step(np.array([[0, 0]]))
    assert out["truncated"][0].tolist() == [False, True]
    assert not out["final_obs"][0, 0].any() and out["final_obs"][0, 1].any()
    np.testing.assert_array_equal(out["final_state"][0], np.concatenate([out["final_obs"][0, 1, 4:6], out["final_obs"][0, 1, :2], [0.0, 0.0]]))
    vec.close()


def test_turn_based_game_end_keeps_every_players_final_observation():
    """The turn-based adapter hands the final board of every player at the game's end, so a
    truncated game bootstraps from this game's observation (never an earlier game's rows)."""
    vec = VecEnv(envs.make_factory(TTT), 1, seed=0)
    out = vec.reset()
    policy = RandomPolicy(vec.spec, CPU, seed=0)
    for _ in range(9):
        actions, _, _ = policy.act({"avail": torch.as_tensor(out["avail"])}, None, False)
        out, eps = vec.step(actions.numpy())
        assert out["alive"][0].all() and out["acting"][0].sum() == 1
        if out["done"][0]:
            break
    assert out["done"][0] and out["final_obs"][0].any(-1).all()
    moves = out["final_obs"][0].reshape(2, 3, 3, 2).sum((1, 2, 3))
    assert (moves == eps[0].length).all()  # every stone of the finished game, from each player's view
    vec.close()


class _Fixed:
    """A policy that always takes action `a`."""

    def __init__(self, a: int):
        self.a, self.calls = a, 0

    def initial_hidden(self, num_envs):
        return None

    def act(self, inputs, hidden, explore):
        self.calls += 1
        return torch.full(inputs["avail"].shape[:-1], self.a), hidden, {}


def test_agent_policies_take_each_agents_actions_from_its_own_policy():
    first, second = _Fixed(1), _Fixed(2)
    joint = AgentPolicies([first, second], [1, 0, 1])
    inputs = {"avail": torch.ones(4, 3, 5, dtype=torch.bool)}
    actions, hidden, _ = joint.act(inputs, joint.initial_hidden(4), False)
    assert actions.tolist() == [[2, 1, 2]] * 4 and hidden == [None, None]
    assert first.calls == second.calls == 1  # one batched call per policy
    with pytest.raises(MarlError):
        AgentPolicies([first, second], [0, 0, 0])
    with pytest.raises(MarlError):
        AgentPolicies([first], [0, 1])


def test_random_policy_picks_only_available_actions():
    spec = VecEnv(envs.make_factory(TTT), 1, seed=0).spec
    avail = torch.rand(64, 2, 9, generator=torch.Generator().manual_seed(0)) < 0.3
    avail[0] = False  # no action available: any
    actions, _, _ = RandomPolicy(spec, CPU, seed=0).act({"avail": avail}, None, False)
    picked = avail.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    assert picked[1:][avail[1:].any(-1)].all()
    counts = outcomes([type("Ep", (), {"agent_returns": np.array(r)})() for r in ([1.0, -1.0], [0.0, 0.0], [-1.0, 1.0])], 2)
    assert counts.tolist() == [[1, 1, 1], [1, 1, 1]]


@pytest.fixture
def one_thread():
    """One torch thread, as the trainer runs (TrainConfig.torch_threads); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _self_play(algo: str, steps: int, **kw):
    """One learner controlling both players of tictactoe, trained by self-play."""
    torch.manual_seed(0)  # network initialisation
    vec = VecEnv(envs.make_factory(TTT), 16, seed=0)
    entry = ALGOS.get(algo)
    cfg = entry.make_config(rollout_len=32, **kw)
    cfg.validate(vec.spec, vec.num_envs)
    learner = entry.learner(cfg, vec.spec, CPU, seed=0)
    collector = Collector(vec, learner, CPU)
    for _ in range(steps // (32 * vec.num_envs)):
        batch, _ = collector.collect(32)
        learner.update(batch)
    vec.close()
    return learner, vec.spec


@pytest.mark.parametrize("algo, steps, kw", [
    ("ippo", 90_000, {"ent_coef": 0.05}),
    ("idqn", 80_000, {"epsilon_anneal_steps": 50_000, "epsilon_finish": 0.3, "buffer_size": 2000,
                       "updates_per_collect": 8, "lr": 1e-3}),
])
def test_self_play_beats_a_random_player_from_both_seats(algo, steps, kw, one_thread):
    """Greedy play against a uniformly random masked player, 200 games per seat: win or draw in
    at least 90 % from either seat. The second seat learns to defend only when its own moves are
    credited with the opponent's replies (a transition runs to its next decision)."""
    learner, spec = _self_play(algo, steps, **kw)
    vec = VecEnv(envs.make_factory(TTT), 50, seed=123, spec=spec)
    opponent = RandomPolicy(spec, CPU, seed=1)
    for seat in (0, 1):
        owner = [0, 1] if seat == 0 else [1, 0]
        episodes = evaluate(vec, AgentPolicies([learner, opponent], owner), 200, CPU, seed=5)
        win, draw, loss = outcomes(episodes, 2)[seat]
        assert win + draw >= 180, f"{algo} from seat {seat}: {win} wins, {draw} draws, {loss} losses"
    vec.close()
