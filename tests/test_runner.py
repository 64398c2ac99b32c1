"""The vectorised runner: last reward counted, truncation vs termination, alive masks,
padding, masks from infos, worker processes, exact env snapshots, env errors, the one-agent path."""
import gymnasium
import numpy as np
import pytest

from envs.adapters import GymParallel
from marl import envs
from marl.core.errors import EnvStepError
from marl.core.vec import VecEnv, env_seeds


def _random_actions(avail, rng):
    e, n, _ = avail.shape
    return np.array([[rng.choice(np.flatnonzero(avail[k, i])) for i in range(n)] for k in range(e)])


def test_episode_return_counts_the_last_reward_and_truncation_is_not_termination():
    factory = envs.make_factory("mpe2/simple_spread_v3", max_cycles=5)
    vec = VecEnv(factory, 1, seed=7)
    ref = factory()
    ref_obs, _ = ref.reset(seed=env_seeds(7, 1)[0])
    out = vec.reset()
    np.testing.assert_array_equal(out["obs"][0], np.stack([ref_obs[a] for a in ref.possible_agents]))
    rng = np.random.default_rng(0)
    total = 0.0
    for t in range(5):
        actions = _random_actions(out["avail"], rng)
        final_obs, rewards, term, trunc, _ = ref.step({a: int(actions[0, i]) for i, a in enumerate(ref.possible_agents)})
        total += sum(rewards.values())
        out, episodes = vec.step(actions)
        np.testing.assert_allclose(out["reward"][0], [rewards[a] for a in ref.possible_agents], rtol=1e-6)
    assert out["done"][0] and out["truncated"][0].all() and not out["terminated"][0].any()
    np.testing.assert_array_equal(out["final_obs"][0], np.stack([final_obs[a] for a in ref.possible_agents]))
    assert len(episodes) == 1 and episodes[0].length == 5
    assert episodes[0].team_return == pytest.approx(total, rel=1e-5)
    assert out["alive"][0].all()  # auto-reset: the new episode's agents are alive


def test_agent_that_terminates_early_is_masked_not_dropped():
    vec = VecEnv(envs.make_factory("builtin/grid", size=2, max_steps=10), 1, seed=0)
    out = vec.reset()
    pos = vec._local.envs[0].pos
    # move agent_0 to (1,1): right (and down if needed); agent_1 stays
    a0 = 4 if pos["agent_0"][0] == 1 else 2
    out, _ = vec.step(np.array([[a0, 0]]))
    if a0 == 2:
        out, _ = vec.step(np.array([[4, 0]]))
    assert out["terminated"][0].tolist() == [True, False]
    assert out["alive"][0].tolist() == [False, True]
    assert out["obs"].shape == (1, 2, 6)  # the agent axis keeps both agents


def test_heterogeneous_spaces_are_padded_and_masked():
    vec = VecEnv(envs.make_factory("builtin/identity", n_agents=3, n_actions=3, hetero=True), 2, seed=0)
    out = vec.reset()
    assert vec.spec.obs_dims == (3, 4, 5) and out["obs"].shape == (2, 3, 5)
    assert out["avail"][0].tolist() == [[True] * 3 + [False] * 2, [True] * 4 + [False], [True] * 5]
    assert (out["obs"][:, 0, 3:] == 0).all()


def test_action_mask_from_infos_feeds_avail():
    vec = VecEnv(envs.make_factory("builtin/identity", masked=True), 2, seed=0)
    out = vec.reset()
    assert (out["avail"].sum(-1) == 3).all()
    forbidden = ~out["avail"]
    targets = out["obs"].argmax(-1)
    assert not np.take_along_axis(forbidden, targets[..., None], -1).any()


@pytest.mark.parametrize("continuous", [False, True])
def test_worker_processes_match_in_process_stepping(continuous):
    factory = envs.make_factory("mpe2/simple_spread_v3", max_cycles=6, continuous_actions=continuous)
    inline, workers = VecEnv(factory, 5, seed=3), VecEnv(factory, 5, seed=3, workers=2)  # uneven split: 3 + 2 envs
    try:
        a, b = inline.reset(), workers.reset()
        np.testing.assert_array_equal(a["obs"], b["obs"])
        rng = np.random.default_rng(1)
        for _ in range(13):
            actions = rng.uniform(0, 1, (5, 3, 5)).astype(np.float32) if continuous else _random_actions(a["avail"], rng)
            (a, ea), (b, eb) = inline.step(actions), workers.step(actions)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert [(e.env, e.team_return) for e in ea] == [(e.env, e.team_return) for e in eb]
    finally:
        workers.close()


@pytest.mark.parametrize("name, workers", [("mpe2/simple_spread_v3", 0), ("builtin/grid", 0),
                                           ("pettingzoo.classic/connect_four_v3", 0), ("mpe2/simple_spread_v3", 2)])
def test_env_snapshot_restores_exactly(name, workers):
    vec = VecEnv(envs.make_factory(name), 2, seed=0, workers=workers)
    out = vec.reset()
    rng = np.random.default_rng(0)
    for _ in range(5):
        out, _ = vec.step(_random_actions(out["avail"], rng))
    snap, rng_state, start = vec.get_state(), rng.bit_generator.state, {k: v.copy() for k, v in out.items()}

    def run():
        cur, trace = start, []
        for _ in range(20):
            cur, _ = vec.step(_random_actions(cur["avail"], rng))
            trace.append({k: v.copy() for k, v in cur.items()})
        return trace

    first = run()
    vec.set_state(snap)
    rng.bit_generator.state = rng_state
    for x, y in zip(first, run()):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    vec.close()


class _Exploding:
    """A real env whose step raises after a few steps (to check the error names env, step, agents)."""

    def __init__(self):
        self.inner = envs.make("builtin/identity")
        self.possible_agents = self.inner.possible_agents
        self.observation_space, self.action_space = self.inner.observation_space, self.inner.action_space
        self.t = 0

    @property
    def agents(self):
        return self.inner.agents

    def reset(self, seed=None, options=None):
        self.t = 0
        return self.inner.reset(seed=seed)

    def step(self, actions):
        self.t += 1
        if self.t == 3:
            raise RuntimeError("physics blew up")
        return self.inner.step(actions)

    def close(self):
        pass


def test_env_error_names_env_step_and_agents():
    vec = VecEnv(_Exploding, 1, seed=0)
    vec.reset()
    vec.step(np.zeros((1, 2), np.int64))
    vec.step(np.zeros((1, 2), np.int64))
    with pytest.raises(EnvStepError, match=r"RuntimeError: physics blew up at episode step 3 for agents \['agent_0', 'agent_1'\]"):
        vec.step(np.zeros((1, 2), np.int64))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_action_outside_its_agents_range_is_refused_before_any_env_steps(workers):
    """player_1 moves first in tictactoe; player_2's action is not read at that step."""
    vec = VecEnv(envs.make_factory("pettingzoo.classic/tictactoe_v3"), 2, seed=0, workers=workers)
    vec.reset()
    before = vec.get_state()
    for bad in (9, -1):
        actions = np.array([[0, 0], [bad, 0]])
        with pytest.raises(EnvStepError, match=rf"action {bad} of agent 'player_1' in env copy 1 is outside its 9 actions \(0..8\)"):
            vec.step(actions)
    assert vec.get_state() == before
    b, _ = vec.step(np.array([[0, 9], [4, -1]]))  # the waiting player's values are ignored
    assert b["acting"][:, 1].all() and not b["acting"][:, 0].any()
    vec.close()


def test_workers_from_a_program_on_stdin_fail_with_one_line():
    """Worker processes re-import __main__; a program piped on stdin has no file to import."""
    import subprocess
    import sys

    program = "from marl import envs\nfrom marl.core.vec import VecEnv\nVecEnv(envs.make_factory('builtin/identity'), 2, workers=2)\n"
    proc = subprocess.run([sys.executable, "-"], input=program, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "MarlError: env worker processes cannot start from a program read from <stdin>" in proc.stderr
    assert "BrokenPipe" not in proc.stderr


def test_nearby_run_seeds_share_no_env_seed():
    """Seeds 1, 2, 3 (a usual three-seed study) must not replay each other's episodes."""
    runs = [set(env_seeds(s, 100)) for s in (1, 2, 3)]
    assert all(len(r) == 100 for r in runs)
    assert not (runs[0] & runs[1]) and not (runs[1] & runs[2]) and not (runs[0] & runs[2])
    assert env_seeds(1, 4) == env_seeds(1, 100)[:4]  # env k's seed does not depend on E


class _MaskedGym(gymnasium.Env):
    """A one-agent gymnasium env whose info carries an action mask at odd steps; episodes end
    by termination, by a time limit, or by both at once."""

    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gymnasium.spaces.Discrete(3)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        info = {"action_mask": np.array([1, self.t % 3 != 0, 1], np.int8)} if self.t % 2 else {}
        ends = self.np_random.random() < (0.5 if self.t == 30 else 0.05)  # at the time limit: both flags half the time
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), float(action) - 1.0, bool(ends), self.t >= 30, info


@pytest.mark.parametrize("factory", [envs.make_factory("gym/CartPole-v1"), envs.make_factory("gym/Pendulum-v1"),
                                     lambda: GymParallel(_MaskedGym())], ids=["cartpole", "pendulum", "masked"])
def test_one_agent_envs_step_to_the_same_arrays_as_the_general_path(factory):
    """VecEnv steps one-agent gymnasium envs without dicts (`_step_one`); the arrays and the
    finished episodes are those of the general per-agent reading, masks in infos included."""
    fast, general = VecEnv(factory, 4, seed=2), VecEnv(factory, 4, seed=2)
    general._local._one = False
    assert fast._local._one
    a, b = fast.reset(), general.reset()
    rng = np.random.default_rng(0)
    for _ in range(120):
        if fast.spec.discrete:
            actions = _random_actions(a["avail"], rng)
        else:  # beyond the box: both paths clip
            actions = rng.uniform(-4, 4, (4, 1, fast.spec.n_actions)).astype(np.float32)
        (a, ea), (b, eb) = fast.step(actions), general.step(actions)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert [(e.env, e.team_return, e.length) for e in ea] == [(e.env, e.team_return, e.length) for e in eb]
