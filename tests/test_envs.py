"""envs/: name forms, built-in envs, adapters, errors. Small and fast (a few seconds)."""
from __future__ import annotations

import importlib.metadata
import pickle
import sys
import warnings

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from marl import envs
from marl.envs.turn_based import TurnBasedParallel
from marl.core.errors import MarlError
from marl.core.spec import EnvSpec

BUILTINS = [n for n in envs.names() if n.startswith("builtin/")]


def api_test(env, cycles: int = 60) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parallel_api_test(env, num_cycles=cycles)


def rollout(env, seed: int, pick) -> list:
    """One episode with actions pick(agent, obs, info, t); returns the list of step tuples."""
    obs, info = env.reset(seed=seed)
    steps = []
    while env.agents:
        actions = {a: pick(a, obs, info, len(steps)) for a in env.agents}
        out = env.step(actions)
        steps.append(out)
        obs, info = out[0], out[4]
    return steps


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_api_spec_and_seeding(name):
    assert len(BUILTINS) >= 8
    env = envs.make(name)
    api_test(env, 100)
    spec = EnvSpec.from_env(env, name)
    assert spec.has_state and spec.state_dim == env.state_space.shape[0] and not spec.state_is_concat_obs
    assert env.state().shape == env.state_space.shape

    def sampler(e):
        return lambda agent, obs, info, t: e.action_space(agent).sample()

    other = envs.make(name)
    a, b = rollout(env, 3, sampler(env)), rollout(other, 3, sampler(other))
    for x, y in zip(a, b):  # same seed and same (seeded) action sampling: same episode
        assert x[1] == y[1] and x[2] == y[2] and x[3] == y[3]
        assert all(np.array_equal(x[0][k], y[0][k]) for k in x[0])


def test_builtin_variants_api():
    for name, kw in [("builtin/identity", dict(n_agents=3, hetero=True, masked=True)),
                     ("builtin/grid", dict(size=3, max_steps=6)), ("builtin/matrix", dict(episode_len=3)),
                     ("builtin/target", dict(n_agents=3, dim=4))]:
        api_test(envs.make(name, **kw))


def test_matrix_final_step_rewards_counted():
    env = envs.make("builtin/climbing", episode_len=3)
    plan = [(0, 0), (1, 1), (2, 2)]  # payoffs 11, 7, 5 to each of the two agents
    steps = rollout(env, 0, lambda a, o, i, t: plan[t][int(a[-1])])
    assert len(steps) == 3 and env.agents == []
    last = steps[-1]
    assert last[1] == {"agent_0": 5.0, "agent_1": 5.0} and all(last[2].values()) and not any(last[3].values())
    assert sum(sum(s[1].values()) for s in steps) == 2 * (11 + 7 + 5)


def test_matrix_presets_optima():
    for name, best in [("matrix_qtran", 8), ("matrix_additive", 5), ("climbing", 11), ("penalty", 10)]:
        env = envs.make(f"builtin/{name}")
        assert env.payoff.max() == best
    additive = envs.make("builtin/matrix_additive").payoff
    assert np.allclose(additive, additive[:, :1] + additive[:1, :] - additive[0, 0])  # u[i] + v[j]
    assert (additive == additive.max()).sum() == 1


def test_identity_hetero_masked():
    env = envs.make("builtin/identity", n_agents=3, n_actions=4, hetero=True, masked=True, episode_len=2)
    assert [env.action_space(a).n for a in env.possible_agents] == [4, 5, 6]
    obs, info = env.reset(seed=1)
    for a in env.agents:
        target, mask = int(np.argmax(obs[a])), info[a]["action_mask"]
        assert len(mask) == env.action_space(a).n and mask.sum() == len(mask) - 1 and mask[target] == 1
    steps = rollout(env, 1, lambda a, o, i, t: int(np.argmax(o[a])))
    assert all(r == 1.0 for s in steps for r in s[1].values())
    assert all(steps[-1][3].values()) and not any(steps[-1][2].values())  # time limit: truncation


def test_grid_early_termination_and_truncation():
    env = envs.make("builtin/grid", size=3, max_steps=8)

    def pick(agent, obs, info, t):  # agent_0 walks to its goal (down, then right); agent_1 stays
        if agent == "agent_1":
            return 0
        row = round(obs[agent][0] * 2)
        return 2 if row < 2 else 4

    steps = rollout(env, 0, pick)
    ended = [t for t, s in enumerate(steps) if s[2].get("agent_0")]
    assert len(ended) == 1 and steps[ended[0]][1]["agent_0"] == pytest.approx(0.99)
    assert all("agent_0" not in s[1] for s in steps[ended[0] + 1:])  # gone after terminating
    assert len(steps) == 8 and steps[-1][3] == {"agent_1": True} and steps[-1][2] == {"agent_1": False}


def test_target_reward():
    env = envs.make("builtin/target", dim=3)
    obs, _ = env.reset(seed=0)
    _, rew, *_ = env.step({a: obs[a] for a in env.agents})
    assert all(r == pytest.approx(0.0) for r in rew.values())
    obs, _ = env.reset(seed=0)
    _, rew, *_ = env.step({a: np.zeros(3, np.float32) for a in env.agents})
    assert rew["agent_0"] == pytest.approx(-float(np.sum(obs["agent_0"] ** 2)), rel=1e-5)


def test_mpe2_simple_spread():
    env = envs.make("mpe2/simple_spread_v3", N=3, max_cycles=10)
    api_test(env, 30)
    spec = EnvSpec.from_env(env)
    assert spec.n_agents == 3 and spec.obs_dim == 18 and spec.n_actions == 5 and spec.discrete
    assert spec.has_state and spec.state_dim == 54 and spec.state_is_concat_obs  # declared by envs.make


def test_mpe2_fast_path_matches_standard_env():
    from mpe2 import simple_spread_v3

    fast, std = envs.make("mpe2/simple_spread_v3", max_cycles=10), simple_spread_v3.parallel_env(max_cycles=10)
    for seed in (0, 1):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        a = rollout(fast, seed, lambda ag, o, i, t: int(rng_a.integers(5)))
        b = rollout(std, seed, lambda ag, o, i, t: int(rng_b.integers(5)))
        assert len(a) == len(b) == 10
        for x, y in zip(a, b):
            assert x[1] == y[1] and x[2] == y[2] and x[3] == y[3]
            assert all(np.array_equal(x[0][k], y[0][k]) for k in y[0])
    assert envs.make("mpe2/simple_spread_v3", continuous_actions=True).action_space("agent_0").shape == (5,)


def test_mpe2_fast_path_observes_each_agent_once_per_step():
    env = envs.make("mpe2/simple_spread_v3")
    env.reset(seed=0)
    calls, observe = [], env.aec_env.observe
    env.aec_env.observe = lambda agent: calls.append(agent) or observe(agent)
    env.step({a: 0 for a in env.agents})
    assert sorted(calls) == sorted(env.agents)  # aec_to_parallel_wrapper observes every agent twice


def _masked_move(env):
    return lambda a, o, i, t: int(env.action_space(a).sample(mask=o[a]["action_mask"]))


def test_turn_based_adapter_invariants():
    env = envs.make("pettingzoo.classic/connect_four_v3")
    assert EnvSpec.from_env(env).has_action_mask
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        while env.agents:
            (actor,) = obs  # exactly the agent to move
            before = list(env.agents)
            obs, rew, term, trunc, _ = env.step({actor: _masked_move(env)(actor, obs, None, 0)})
            assert set(rew) == set(term) == set(trunc) == set(before)
            ended = {a for a in before if term[a] or trunc[a]}
            assert set(obs) == ended | ({env.aec.agent_selection} if env.agents else set())  # the mover, and final observations
        assert set(obs) == set(before) and all(term.values())
        assert sum(rew.values()) == 0 and sorted(rew.values()) in ([-1.0, 1.0], [0.0, 0.0])


def _turn_based_game(env, seed: int) -> list:
    """One game of uniformly random legal moves (drawn from `seed`): every step's tuple."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    steps = []
    while env.agents:
        (actor,) = (a for a in obs if a in env.agents)
        actions = {actor: int(rng.choice(np.flatnonzero(obs[actor]["action_mask"])))}
        obs, rew, term, trunc, info = env.step(actions)
        steps.append((actions, obs, rew, term, trunc, info))
    return steps


@pytest.mark.parametrize("game", ["connect_four_v3", "tictactoe_v3", "leduc_holdem_v4"])  # AEC-only modules (rps_v2 has a parallel_env)
def test_classic_games_without_the_check_wrappers_play_as_the_standard_env(game):
    import importlib

    from pettingzoo.utils.wrappers import AssertOutOfBoundsWrapper, OrderEnforcingWrapper

    ours, std = envs.make(f"pettingzoo.classic/{game}"), TurnBasedParallel(importlib.import_module(f"pettingzoo.classic.{game}").env())
    chain, e = [], ours.aec
    while e is not None:
        chain.append(type(e))
        e = getattr(e, "env", None)
    assert OrderEnforcingWrapper not in chain and AssertOutOfBoundsWrapper not in chain and len(chain) >= 1
    for seed in range(3):
        a, b = _turn_based_game(ours, seed), _turn_based_game(std, seed)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x[0] == y[0] and x[2:] == y[2:] and set(x[1]) == set(y[1])
            for agent in y[1]:
                o, p = x[1][agent], y[1][agent]
                assert all(np.array_equal(o[k], p[k]) for k in p) if isinstance(p, dict) else np.array_equal(o, p)


def test_an_illegal_classic_move_still_ends_the_game_with_the_penalty():
    env = envs.make("pettingzoo.classic/connect_four_v3")
    obs, _ = env.reset(seed=0)
    for _ in range(6):  # fill column 0
        (actor,) = obs
        obs, *_ = env.step({actor: 0})
    (actor,) = obs
    assert not obs[actor]["action_mask"][0]
    obs, rew, term, trunc, _ = env.step({actor: 0})
    assert rew[actor] == -1.0 and all(term.values()) and env.agents == []


def test_turn_based_loser_gets_final_reward():
    env = envs.make("pettingzoo.classic/connect_four_v3")
    obs, _ = env.reset(seed=0)
    columns = [0, 1, 0, 1, 0, 1, 0]  # player_0 stacks four in column 0
    for col in columns:
        (actor,) = obs
        obs, rew, term, trunc, _ = env.step({actor: col})
    assert rew == {"player_0": 1.0, "player_1": -1.0}
    assert term == {"player_0": True, "player_1": True} and env.agents == [] and set(obs) == {"player_0", "player_1"}


def test_gym_adapter_keeps_truncation():
    env = envs.make("gym/CartPole-v1")
    api_test(env, 50)
    assert EnvSpec.from_env(env).n_agents == 1
    env = envs.make("gym/CartPole-v1", max_episode_steps=4)
    steps = rollout(env, 0, lambda a, o, i, t: t % 2)
    assert len(steps) == 4 and steps[-1][3] == {"agent_0": True} and steps[-1][2] == {"agent_0": False}


def test_gymnasium_wrappers_by_name():
    """wrappers="A+B:arg": gymnasium's own wrapper classes, innermost first, with positional arguments;
    an unknown name is a one-line error naming the close match."""
    import gymnasium

    env = envs.make("gym/CartPole-v1", wrappers="NormalizeObservation+FrameStackObservation:4", max_episode_steps=20)
    assert isinstance(env.env, gymnasium.wrappers.FrameStackObservation)
    assert isinstance(env.env.env, gymnasium.wrappers.NormalizeObservation)
    assert EnvSpec.from_env(env).obs_dim == 16  # 4 frames of 4
    steps = rollout(env, 0, lambda a, o, i, t: t % 2)
    assert len(steps) == 20 and steps[-1][3] == {"agent_0": True}  # the time limit still truncates
    obs, _ = env.reset(seed=1)
    assert obs["agent_0"].shape == (4, 4) and abs(float(obs["agent_0"][-1].mean())) < 5  # normalised, stacked
    assert envs.gym_wrappers(["ClipReward:-1:1"]) == [("ClipReward", [-1, 1])]
    with pytest.raises(MarlError, match="unknown gymnasium wrapper 'FrameStack'.*FrameStackObservation"):
        envs.make("gym/CartPole-v1", wrappers="FrameStack:4")


def test_lbforaging_adapter():
    pytest.importorskip("lbforaging")
    env = envs.make("lbforaging/Foraging-8x8-2p-3f-v3")
    api_test(env, 60)
    assert env.possible_agents == ["agent_0", "agent_1"] and EnvSpec.from_env(env).n_actions == 6
    steps = rollout(env, 0, lambda a, o, i, t: 0)  # never loads food: ends at the step limit (50)
    assert len(steps) == 50 and all(steps[-1][3].values()) and not any(steps[-1][2].values())


def test_lbforaging_missing_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lbforaging", None)  # makes `import lbforaging` fail
    with pytest.raises(MarlError, match=r"pip install 'marl\[lbf\]'"):
        envs.make("lbforaging/Foraging-8x8-2p-3f-v3")


def test_module_factory_form():
    env = envs.make("marl.envs.builtin.grid:Grid", size=4)
    assert env.size == 4
    assert isinstance(envs.make("pettingzoo.classic.connect_four_v3:env"), TurnBasedParallel)
    with pytest.raises(MarlError, match="not a PettingZoo"):
        envs.make("collections:OrderedDict")
    with pytest.raises(MarlError, match="cannot load"):
        envs.make("marl.envs.builtin.grid:NoSuchThing")


def test_register_and_names():
    def tiny(**kw):
        return envs.make("builtin/grid", size=3, **kw)

    try:
        envs.register("test/tiny_grid", tiny)
        assert "test/tiny_grid" in envs.names()
        assert envs.make("test/tiny_grid", max_steps=3).max_steps == 3
        with pytest.raises(MarlError, match="already registered"):
            envs.register("test/tiny_grid", tiny)
    finally:
        envs._REGISTRY._items.pop("test/tiny_grid", None)


def test_entry_point_group(monkeypatch):
    real = importlib.metadata.entry_points
    ep = importlib.metadata.EntryPoint(name="ext/grid", value="marl.envs.builtin.grid:Grid", group="marl.envs")

    def fake(**kw):
        return [ep] if kw.get("group") == "marl.envs" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    assert "ext/grid" in envs.names()
    assert envs.make("ext/grid", size=3).size == 3


def test_factories_pickle():
    for name, kw in [("builtin/identity", {"hetero": True}), ("mpe2/simple_spread_v3", {"N": 2}),
                     ("gym/CartPole-v1", {}), ("marl.envs.builtin.grid:Grid", {"size": 3})]:
        factory = pickle.loads(pickle.dumps(envs.make_factory(name, **kw)))
        assert factory.env_name == name
        factory().reset(seed=0)


@pytest.mark.parametrize("name, expected", [
    ("builtin/matrx", "builtin/matrix"),
    ("simple_spread_v3", "mpe2/simple_spread_v3"),
    ("mpe2/simple_spred_v3", "mpe2/simple_spread_v3"),
    ("pettingzoo.sisl/pursuit_v4", "pettingzoo.sisl/pursuit_v5"),
    ("pettingzoo.classic/tic_tac_toe_v3", "pettingzoo.classic/tictactoe_v3"),
    ("pettingzoo.mpe/simple_spread_v3", "mpe2/simple_spread_v3"),
    ("gym/CartPole-v9", "gym/CartPole-v1"),
])
def test_unknown_names_give_close_matches(name, expected):
    with pytest.raises(MarlError) as err:
        envs.make_factory(name)
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_unknown_kwarg_is_user_error():
    with pytest.raises(MarlError, match="unexpected keyword"):
        envs.make("builtin/grid", sise=3)


@pytest.mark.parametrize("name", ["mpe2/simple_spread_v3", "mpe2/simple_adversary_v3"])
def test_mpe2_state_from_observations_equals_env_state(name):
    """The runner builds mpe2's state from observations; it must equal env.state() exactly."""
    from marl.core.spec import Encoder, EnvSpec

    env = envs.make(name)
    spec = EnvSpec.from_env(env)
    enc = Encoder(spec, env)
    assert enc.state_from_obs
    obs_buf = np.zeros((spec.n_agents, spec.obs_dim), np.float32)
    avail = np.ones((spec.n_agents, spec.n_actions), bool)
    obs, infos = env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(10):
        enc.obs(obs, infos, obs_buf, avail)
        np.testing.assert_array_equal(enc.state(env, obs_buf), env.state())
        acts = {a: int(rng.integers(env.action_space(a).n)) for a in env.agents}
        obs, _, _, _, infos = env.step(acts)


def test_two_step_game_payoffs():
    """QMIX paper's two-step game: agent_0's first action picks 2A (7 for every joint action)
    or 2B ([[0, 1], [1, 8]]); agent_1's first action has no effect."""
    totals = {}
    for first in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        for second in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            env = envs.make("builtin/two_step")
            plan = [first, second]
            steps = rollout(env, 0, lambda a, o, i, t: plan[t][int(a[-1])])
            assert len(steps) == 2 and env.agents == [] and all(steps[-1][2].values())
            assert steps[0][1] == {"agent_0": 0.0, "agent_1": 0.0}
            assert np.array_equal(steps[0][0]["agent_1"], [0, 1 + first[0] == 1, 1 + first[0] == 2])
            totals[first, second] = steps[-1][1]["agent_0"]
    assert {v for (f, s), v in totals.items() if f[0] == 0} == {7.0}
    assert [totals[(1, 0), s] for s in [(0, 0), (0, 1), (1, 0), (1, 1)]] == [0.0, 1.0, 1.0, 8.0]
    assert totals[(1, 1), (1, 1)] == 8.0  # agent_1's first action changes nothing
