"""Off-policy actor-critics (MADDPG, MATD3, ISAC, MASAC) and their transition replay: the
Gumbel-softmax and tanh-Gaussian math, the replay's ring, bootstrap rows and resume, the
information each network reads, known answers through the real trainer, exact resume, bad input.
Their one-agent presets (ddpg, td3, sac on Pendulum-v1) are checked in tests/test_single_agent.py.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from marl import envs
from marl.algos import ALGOS
from marl.algos.ddpg import ou_step
from marl.algos.offpolicy import joint_actions
from marl.algos.transitions import TransitionReplay, transition_rows
from marl.checkpoint import load_checkpoint
from marl.cli import main
from marl.config import TrainConfig
from marl.core.policies import RandomPolicy
from marl.core.rollout import Collector
from marl.core.vec import VecEnv
from marl.nets.dists import categorical_sample, gaussian_sample, gumbel_softmax, tanh_gaussian_sample
from marl.train import train

FAST = dict(wandb="disabled", progress=False, workers=0, eval_episodes=32, num_envs=4)
OFF_ALGOS = ["maddpg", "matd3", "isac", "masac"]
TARGET_KW = dict(rollout_len=4, updates_per_step=0.5, batch_size=128, learning_starts=256)


def _run(tmp_path, name="run", **kw):
    algo_kw = kw.pop("algo_kw", {})
    cfg = TrainConfig(run_dir=str(tmp_path / name), **{**FAST, **kw})
    return train(cfg, ALGOS.get(cfg.algo).make_config(**algo_kw))


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- Gumbel-softmax
def test_straight_through_gumbel_forward_is_the_one_hot_sample_and_backward_the_soft_ones():
    logits = torch.randn(64, 5, requires_grad=True)
    w = torch.randn(64, 5)
    hard = gumbel_softmax(logits, 0.7, torch.Generator().manual_seed(3))
    assert torch.equal(hard.detach().sum(-1), torch.ones(64)) and set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    # the forward value is a sample of softmax(logits): the Gumbel-max draw of the same noise
    assert torch.equal(hard.detach().argmax(-1), categorical_sample(logits.detach(), torch.Generator().manual_seed(3)))
    (g_hard,) = torch.autograd.grad((w * hard).sum(), logits)
    soft = gumbel_softmax(logits, 0.7, torch.Generator().manual_seed(3), hard=False)
    (g_soft,) = torch.autograd.grad((w * soft).sum(), logits)
    torch.testing.assert_close(g_hard, g_soft, rtol=0, atol=0)
    assert g_hard.abs().sum() > 0


def test_gumbel_softmax_follows_its_formula_and_temperature_limits():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]]).expand(1000, 4)
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(5))
    g = -torch.log(-torch.log(u))
    for tau in (0.3, 1.0, 4.0):
        soft = gumbel_softmax(logits, tau, torch.Generator().manual_seed(5), hard=False)
        torch.testing.assert_close(soft, torch.softmax((logits + g) / tau, -1))
    one_hot = torch.nn.functional.one_hot((logits + g).argmax(-1), 4).float()
    top2 = (logits + g).topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    for tau in (0.1, 0.01, 1e-3):  # tau -> 0: the one-hot of argmax(logits + g), off by at most (A - 1) exp(-gap / tau)
        cold = gumbel_softmax(logits, tau, torch.Generator().manual_seed(5), hard=False)
        assert ((cold - one_hot).abs().max(-1).values <= 3 * torch.exp(-gap / tau) + 1e-6).all()
    assert (cold - one_hot).abs().max(-1).values[gap > 0.05].max() < 1e-6
    hot = gumbel_softmax(logits, 1e4, torch.Generator().manual_seed(5), hard=False)
    assert (hot - 0.25).abs().max() < 1e-3  # tau -> infinity: uniform
    # the hard samples' frequencies are softmax(logits), whatever the temperature
    freq = gumbel_softmax(logits[:1].expand(20000, 4), 5.0, torch.Generator().manual_seed(6)).mean(0)
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.015, rtol=0)


def test_gumbel_softmax_never_picks_a_masked_action():
    logits = torch.zeros(500, 3).masked_fill(torch.tensor([False, True, False]), -1e9)
    hard = gumbel_softmax(logits, 1.0, torch.Generator().manual_seed(0))
    assert hard[:, 1].sum() == 0 and hard[:, [0, 2]].sum() == 500


def test_tanh_gaussian_log_prob_matches_the_change_of_variables():
    """log pi(a) = log N(u) - sum log(1 - tanh(u)^2), checked in float64 on the same draws u
    (a = tanh(u) rounds to +-1 in float32 for large |u|, so u is recomputed, not read back from a)."""
    gen = torch.Generator().manual_seed(0)
    mean, log_std = 2.0 * torch.randn(200, 3, generator=gen), 0.5 * torch.randn(200, 3, generator=gen)
    a, logp = tanh_gaussian_sample(mean, log_std, torch.Generator().manual_seed(1))
    u = gaussian_sample(mean, log_std, torch.Generator().manual_seed(1)).double()
    expected = (torch.distributions.Normal(mean.double(), log_std.double().exp()).log_prob(u)
                - torch.log1p(-torch.tanh(u) ** 2)).sum(-1)
    assert torch.equal(a, torch.tanh(u.float()))
    torch.testing.assert_close(logp.double(), expected, atol=1e-3, rtol=1e-5)


def test_discrete_soft_value_by_hand_ignores_unavailable_actions():
    from marl.algos.sac import discrete_soft_value
    from marl.nets.dists import mask_logits

    logits = mask_logits(torch.zeros(1, 3), torch.tensor([[True, True, False]]))
    logp = torch.log_softmax(logits, -1)
    value = discrete_soft_value(logp.exp(), logp, torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([0.1]))
    torch.testing.assert_close(value, torch.tensor([2.0 + 0.1 * math.log(2.0)]))  # 0.5 (1 + 0.1 ln 2) + 0.5 (3 + 0.1 ln 2)


def test_ou_noise_has_the_stationary_std_the_learner_asks_for():
    theta, std = 0.15, 0.3
    sigma = std * math.sqrt(theta * (2 - theta))
    gen, x, xs = torch.Generator().manual_seed(0), torch.zeros(4000), []
    for _ in range(200):
        x = ou_step(x, theta, sigma, torch.randn(4000, generator=gen))
    assert abs(float(x.std()) - std) < 0.02


# ----------------------------------------------------------------------------- transition replay
FIELDS = {"obs": ((2, 3), torch.float32), "actions": ((2,), torch.long), "acting": ((2,), torch.bool)}


def _rows_from(start: int, n: int) -> dict:
    ids = torch.arange(start, start + n)
    return {"obs": ids.float().view(n, 1, 1).expand(n, 2, 3).clone(), "actions": ids.view(n, 1).expand(n, 2).clone(),
            "acting": (ids % 2 == 0).view(n, 1).expand(n, 2).clone()}


def test_replay_ring_wraps_and_keeps_the_newest_rows():
    replay = TransitionReplay(5, FIELDS)
    replay.add(_rows_from(0, 3))
    replay.add(_rows_from(3, 4))  # rows 5 and 6 overwrite 0 and 1
    assert len(replay) == 5 and replay.ptr == 2
    assert replay.storage["actions"][:, 0].tolist() == [5, 6, 2, 3, 4]
    replay.add(_rows_from(7, 12))  # more than the capacity: only the newest 5 (14..18)
    assert sorted(replay.storage["actions"][:, 0].tolist()) == [14, 15, 16, 17, 18]
    s = replay.sample(64, torch.Generator().manual_seed(0))
    assert {k: (tuple(v.shape), v.dtype) for k, v in s.items()} == {
        "obs": ((64, 2, 3), torch.float32), "actions": ((64, 2), torch.long), "acting": ((64, 2), torch.bool)}
    assert set(s["actions"][:, 0].tolist()) <= {14, 15, 16, 17, 18}
    assert torch.equal(s["obs"][:, 0, 0].long(), s["actions"][:, 0])  # the fields of a row stay together
    assert torch.equal(s["acting"][:, 0], s["actions"][:, 0] % 2 == 0)


def test_replay_resumes_exactly_and_refuses_another_layout():
    a = TransitionReplay(8, FIELDS)
    a.add(_rows_from(0, 11))
    gen = torch.Generator().manual_seed(1)
    b = TransitionReplay(8, FIELDS)
    b.load_state_dict(a.state_dict())
    gen_b = torch.Generator()
    gen_b.set_state(gen.get_state())
    for _ in range(3):
        a.add(_rows_from(20, 3))
        b.add(_rows_from(20, 3))
        sa, sb = a.sample(16, gen), b.sample(16, gen_b)
        assert all(torch.equal(sa[k], sb[k]) for k in FIELDS)
    with pytest.raises(Exception, match="does not match"):
        TransitionReplay(9, FIELDS).load_state_dict(a.state_dict())


def test_batches_draw_the_rows_of_as_many_sample_calls():
    """The gradient steps between two collections take their batches from one `batches` call: the
    same rows, in the same order, as one `sample` call each from the same generator state."""
    replay = TransitionReplay(50, FIELDS)
    replay.add(_rows_from(0, 37))
    together = replay.batches(4, 8, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    one_by_one = [replay.sample(8, gen) for _ in range(4)]
    assert len(together) == 4 and all(torch.equal(a[k], b[k]) for a, b in zip(together, one_by_one) for k in FIELDS)
    assert len({tuple(b["actions"][:, 0].tolist()) for b in together}) == 4  # four different batches
    assert replay.batches(0, 8, gen) == []


def test_large_replay_prints_its_memory_estimate(capsys, monkeypatch):
    import marl.algos.transitions as transitions

    monkeypatch.setattr(transitions, "LARGE_BYTES", 1000)
    replay = TransitionReplay(100, FIELDS)
    assert replay.nbytes() == 100 * (2 * 3 * 4 + 2 * 8 + 2)
    replay.add(_rows_from(0, 2))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "100 transitions" in err[0] and "GiB" in err[0] and "--buffer-size" in err[0]


@pytest.mark.parametrize("env, kw, ends", [("builtin/target", {"episode_len": 3}, "truncated"),
                                           ("builtin/matrix_additive", {"episode_len": 2}, "terminated")])
def test_transition_rows_bootstrap_from_final_observations_after_truncation_only(env, kw, ends):
    vec = VecEnv(envs.make_factory(env, **kw), 3, seed=2)
    try:
        batch, _ = Collector(vec, RandomPolicy(vec.spec, seed=0), torch.device("cpu")).collect(7)
        rows = transition_rows(batch, ("obs", "next_obs", "next_acting", "terminated", "truncated", "acting"))
    finally:
        vec.close()
    T, E = batch["done"].shape
    done = batch["done"].flatten()
    assert done.any() and (~done).any()
    ended = rows[ends]
    assert torch.equal(ended.all(-1), done) and not rows["terminated" if ends == "truncated" else "truncated"].any()
    final = batch["final_obs"].flatten(0, 1)
    assert torch.equal(rows["next_obs"][done], final[done])
    # truncation: bootstrap from the final observation; termination: no bootstrap
    assert bool(rows["next_acting"][done].all()) == (ends == "truncated")
    assert rows["next_acting"][~done].all()
    nxt = torch.cat([batch["obs"][1:], batch["next_obs"].unsqueeze(0)]).flatten(0, 1)
    assert torch.equal(rows["next_obs"][~done], nxt[~done])


def test_joint_actions_replace_or_drop_each_agents_own_slot():
    joint = torch.arange(12.0).view(1, 3, 4)  # agent j's action features = row j
    own = -torch.ones(1, 3, 4)
    rows = joint_actions(joint, own).view(1, 3, 3, 4)
    dropped = joint_actions(joint, drop_own=True).view(1, 3, 3, 4)
    for i in range(3):
        for j in range(3):
            assert torch.equal(rows[0, i, j], own[0, j] if i == j else joint[0, j])
            assert torch.equal(dropped[0, i, j], torch.zeros(4) if i == j else joint[0, j])


# ----------------------------------------------------------------------------- what each network reads
def _learner(algo: str, env: str, **overrides):
    vec = VecEnv(envs.make_factory(env), 1)
    spec = vec.spec
    vec.close()
    entry = ALGOS.get(algo)
    return entry.learner(entry.make_config(**overrides), spec, torch.device("cpu"), 0), spec


@pytest.mark.parametrize("algo", OFF_ALGOS)
@pytest.mark.parametrize("sharing", ["all", "none", [0, 1, 1]])
def test_each_actor_reads_only_its_own_observation(algo, sharing):
    learner, spec = _learner(algo, "mpe2/simple_spread_v3", sharing=sharing)
    obs = torch.randn(spec.n_agents, spec.obs_dim)
    jac = torch.autograd.functional.jacobian(lambda o: learner.actor(o), obs)  # [N, out, N, D]
    reads = jac.abs().sum((1, 3))
    assert torch.equal(reads > 0, torch.eye(spec.n_agents, dtype=torch.bool)), reads


@pytest.mark.parametrize("algo, central", [("maddpg", True), ("matd3", True), ("masac", True), ("isac", False)])
@pytest.mark.parametrize("env", ["builtin/target", "mpe2/simple_spread_v3"])
def test_central_critics_read_every_agents_action_and_local_ones_their_own(algo, central, env):
    learner, spec = _learner(algo, env)
    n, a = spec.n_agents, spec.n_actions
    obs, state = torch.randn(1, n, spec.obs_dim), torch.randn(1, spec.state_dim)
    own = torch.randn(1, n, a) if not spec.discrete else torch.eye(a)[torch.randint(a, (1, n))]
    jac = torch.autograd.functional.jacobian(lambda x: learner.q_values(learner.critic, obs, state, x), own)[..., 0, :, :]
    reads = jac.abs().sum((0, 1, 3, 5))  # [N (critic of agent i), N (action of agent j)], both twin critics
    eye = torch.eye(n, dtype=torch.bool)
    if spec.discrete and algo in ("isac", "masac"):  # discrete SAC: a value per own action, reading the others' actions
        expect = ~eye if central else torch.zeros(n, n, dtype=torch.bool)
    else:
        expect = torch.ones(n, n, dtype=torch.bool) if central else eye
    assert torch.equal(reads > 0, expect), reads


@pytest.mark.parametrize("critic_input", ["state", "obs"])
def test_a_central_critic_reads_the_state_or_every_agents_observation(critic_input):
    learner, spec = _learner("maddpg", "builtin/target", critic_input=critic_input)  # state(): the targets
    obs, state = torch.randn(1, spec.n_agents, spec.obs_dim), torch.randn(1, spec.state_dim)
    x = torch.zeros(1, spec.n_agents, spec.n_actions)
    d_obs, d_state = torch.autograd.functional.jacobian(lambda o, s: learner.q_values(learner.critic, o, s, x), (obs, state))
    reads_obs = d_obs.abs().sum((0, 1, 3, 4, 6)) > 0  # [critic of agent i, observation of agent j]
    assert torch.equal(reads_obs, torch.ones_like(reads_obs) if critic_input == "obs" else torch.zeros_like(reads_obs))
    assert (d_state.abs().sum() > 0) == (critic_input == "state")
    assert ("state" in learner.replay.fields) == (critic_input == "state")


def test_policy_is_a_frozen_copy_that_acts_like_the_learner():
    learner, spec = _learner("maddpg", "builtin/target")
    policy = learner.policy()
    inputs = {"obs": torch.randn(5, spec.n_agents, spec.obs_dim), "avail": torch.ones(5, spec.n_agents, spec.n_actions, dtype=torch.bool)}
    assert torch.equal(policy.act(inputs, None, False)[0], learner.act(inputs, None, False)[0])
    assert not any(p.requires_grad for p in policy.parameters()) and not hasattr(policy, "critic")
    low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
    noisy = policy.act(inputs, policy.initial_hidden(5), True)[0]
    assert ((noisy >= low) & (noisy <= high)).all()


@pytest.mark.parametrize("algo", OFF_ALGOS)
def test_actions_respect_masks_and_the_envs_bounds(algo):
    learner, spec = _learner(algo, "mpe2/simple_spread_v3")  # discrete: 5 actions
    gen = torch.Generator().manual_seed(0)
    avail = torch.rand(200, spec.n_agents, spec.n_actions, generator=gen) < 0.5
    avail[..., 0] |= ~avail.any(-1)
    inputs = {"obs": torch.randn(200, spec.n_agents, spec.obs_dim, generator=gen), "avail": avail}
    for explore in (False, True):
        actions = learner.act(inputs, None, explore)[0]
        assert avail.gather(-1, actions.unsqueeze(-1)).all()
    vec = VecEnv(envs.make_factory("mpe2/simple_spread_v3", continuous_actions=True), 1)
    spec = vec.spec
    vec.close()
    assert spec.action_low[0][0] == 0.0 and spec.action_high[0][0] == 1.0  # mpe2's continuous actions lie in [0, 1]
    entry = ALGOS.get(algo)
    learner = entry.learner(entry.make_config(noise_std=2.0) if algo in ("maddpg", "matd3") else entry.make_config(), spec,
                            torch.device("cpu"), 0)
    inputs = {"obs": 10 * torch.randn(200, spec.n_agents, spec.obs_dim, generator=gen),
              "avail": torch.ones(200, spec.n_agents, spec.n_actions, dtype=torch.bool)}
    for explore in (False, True):
        actions = learner.act(inputs, None, explore)[0]
        assert actions.min() >= 0.0 and actions.max() <= 1.0
    assert learner.act(inputs, None, True)[0].std() > 0.1  # exploration reaches across the range


# ----------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("algo", OFF_ALGOS)
def test_continuous_target_task_is_solved(tmp_path, algo):
    """builtin/target (2 agents, 4 steps): reward -||a - target||^2 with the target in the
    observation, so the optimum is 0; random actions return about -10.7, always acting 0 -5.3."""
    out = _run(tmp_path, algo=algo, env="builtin/target", steps=2000, eval_interval=2000, algo_kw=TARGET_KW)
    assert out["eval/return_mean"] > -0.3, out


def test_discrete_maddpg_reaches_the_matrix_game_optimum(tmp_path):
    """matrix_additive: payoff u[a0] + v[a1], unique optimum (1, 2) = 5 per agent (team 10),
    the next best 4 (team 8); a discrete MADDPG through the Gumbel-softmax reaches it."""
    kw = dict(rollout_len=1, updates_per_step=0.25, batch_size=64, learning_starts=64)
    wins = sum(_run(tmp_path, f"s{seed}", algo="maddpg", env="builtin/matrix_additive", steps=1200, num_envs=8, seed=seed,
                    eval_interval=1200, eval_episodes=8, algo_kw=kw)["eval/return_mean"] == 10.0 for seed in (1, 2, 3))
    assert wins >= 2


def test_discrete_masac_reaches_the_matrix_game_optimum(tmp_path):
    kw = dict(rollout_len=1, updates_per_step=0.25, batch_size=64, learning_starts=64)
    out = _run(tmp_path, algo="masac", env="builtin/matrix_additive", steps=1200, num_envs=8, eval_interval=1200, eval_episodes=8, algo_kw=kw)
    assert out["eval/return_mean"] == 10.0


# ----------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("algo, env", [("matd3", "builtin/target"), ("masac", "mpe2/simple_spread_v3")])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, algo, env):
    kw = dict(algo=algo, env=env, env_kwargs={"max_cycles": 10} if env.startswith("mpe2") else {}, seed=3, eval_interval=240,
              checkpoint_interval=240, log_interval=80,
              algo_kw=dict(rollout_len=5, updates_per_step=0.25, batch_size=32, learning_starts=40, buffer_size=200, noise="ou")
              if algo == "matd3" else dict(rollout_len=5, updates_per_step=0.25, batch_size=32, learning_starts=40, buffer_size=200))
    _run(tmp_path, "full", steps=720, **kw)
    _run(tmp_path, "split", steps=240, **kw)
    assert load_checkpoint(tmp_path / "split")["extra"]["replay"]["size"] == 200  # the ring wrapped
    train(TrainConfig(run_dir=str(tmp_path / "split"), resume=True, steps=720))

    def metrics(name):
        return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "time_s"} for r in _rows(tmp_path / name)]

    full, split = metrics("full"), metrics("split")
    assert split == full and any("loss/critic" in r for r in full)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_720.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "step_720.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# ----------------------------------------------------------------------------- bad input
CLI = ["train", "--steps", "64", "--num-envs", "2", "--eval-interval", "0", "--wandb", "disabled", "--progress", "false", "--workers", "0"]


@pytest.mark.parametrize("argv, expected", [
    (["--algo", "maddpg", "--env", "builtin/target", "--buffer-size", "100", "--batch-size", "256"],
     ["replay of 100 transitions is smaller than a batch of 256", "--buffer-size"]),
    (["--algo", "maddpg", "--env", "builtin/identity", "--gumbel-temperature", "0"], ["gumbel_temperature must be positive"]),
    (["--algo", "matd3", "--env", "builtin/target", "--noise-std", "-0.1"], ["noise_std must be >= 0", "--noise-std"]),
    (["--algo", "matd3", "--env", "builtin/target", "--target-noise", "-1"], ["target_noise must be >= 0"]),
    (["--algo", "masac", "--env", "gym/Pendulum-v1", "--allow-state-fallback", "false"],
     ["central critic reads a global state", "--critic local"]),
    (["--algo", "isac", "--env", "builtin/target", "--tau", "0"], ["tau must lie in (0, 1]"]),
])
def test_bad_input_exits_2_with_one_line(argv, expected, tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*CLI, "--run-dir", str(tmp_path / "run"), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(t in err[0] for t in expected), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algo", OFF_ALGOS)
def test_help_lists_every_hyperparameter_with_its_docstring(algo, capsys):
    from marl.configio import field_docs

    with pytest.raises(SystemExit) as info:
        main(["train", "--algo", algo, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    docs = field_docs(ALGOS.get(algo).config)
    assert set(docs) == {f for f in ALGOS.get(algo).config.__dataclass_fields__}
    for name, doc in docs.items():
        assert f"--{name.replace('_', '-')} " in out and " ".join(doc.split()[:4]) in flat, name


@pytest.mark.parametrize("algo, extra, fix", [
    ("isac", [], "ippo"),
    ("idqn", ["--replay", "transitions", "--returns", "nstep"], "--replay episodes"),
])
def test_turn_based_games_are_refused_with_one_line(tmp_path, capsys, algo, extra, fix):
    """One-step transitions cannot carry a move's reward to the mover's next decision."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*CLI, "--run-dir", str(tmp_path / "run"), "--algo", algo, "--env", "pettingzoo.classic/tictactoe_v3",
              "--learning-starts", "8", "--batch-size", "8", "--rollout-len", "4", *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "turn-based" in err[0] and fix in err[0], err


def test_matd3_delays_actor_and_target_updates_and_soft_updates_by_tau():
    learner, spec = _learner("matd3", "builtin/target", tau=0.05)
    vec = VecEnv(envs.make_factory("builtin/target"), 4, seed=0)
    try:
        batch, _ = Collector(vec, learner, torch.device("cpu")).collect(8)
    finally:
        vec.close()
    learner.replay.add(transition_rows(batch, learner.replay.fields))
    (t_actor, actor), (t_critic, critic) = learner._targets
    for step in range(4):
        before = [x.detach().clone() for x in (actor, critic, t_actor, t_critic)]
        stats = learner._train_step(learner.replay.sample(16, learner.sample_gen))
        learner.grad_steps += 1
        assert not torch.equal(critic, before[1])  # the critics learn at every step
        moved = step % 2 == 1  # policy_delay 2: the actor and the targets at every second step
        assert ("actor" in stats) == moved and (not torch.equal(actor, before[0])) == moved
        if moved:
            torch.testing.assert_close(t_actor, before[2] + 0.05 * (actor - before[2]), rtol=0, atol=1e-7)
            torch.testing.assert_close(t_critic, before[3] + 0.05 * (critic - before[3]), rtol=0, atol=1e-7)
        else:
            assert torch.equal(t_actor, before[2]) and torch.equal(t_critic, before[3])
    assert learner.critic.body.net[0].weight.shape[0] == 2  # twin critics: two weight sets (sharing 'all')
