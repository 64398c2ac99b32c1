"""COMA and the centralised Q actor-critic (marl.algos.counterfactual, marl.algos.coma):
the counterfactual baseline against hand-computed values, the critic's TD(λ) against the
payoff of a matrix game, and learning the optimum of a cooperative matrix game."""
from __future__ import annotations

import pytest
import torch

from marl import envs
from marl.algos import ALGOS
from marl.algos.counterfactual import coma_advantage, counterfactual_baseline, others_actions, policy_weights
from marl.cli import main
from marl.config import TrainConfig
from marl.core.rollout import Collector
from marl.core.vec import VecEnv
from marl.train import train


def _random_case(seed=0, n=3, a=4):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(5, n, a, generator=g, dtype=torch.float64) * 10
    avail = torch.rand(5, n, a, generator=g) > 0.3
    avail[..., 0] = True
    logits = torch.randn(5, n, a, generator=g, dtype=torch.float64).masked_fill(~avail, float("-inf"))
    return q, torch.softmax(logits, -1), avail


def test_expected_counterfactual_advantage_is_zero():
    """With the critic fixed, E_{a ~ π_i}[Q(s, (a_-i, a)) - baseline] = 0 for every agent, masks
    included (Q at unavailable actions is huge and must not matter)."""
    q, probs, avail = _random_case()
    q = q.masked_fill(~avail, 1e12)
    per_action = torch.stack([coma_advantage(q, probs, torch.full(q.shape[:-1], k), avail) for k in range(q.shape[-1])], -1)
    expected = torch.where(avail, probs * per_action, torch.zeros((), dtype=q.dtype)).sum(-1)
    torch.testing.assert_close(expected, torch.zeros_like(expected), atol=1e-9, rtol=0)


def test_advantage_is_zero_when_q_ignores_the_agents_own_action():
    q, probs, avail = _random_case(1)
    flat = q[..., :1].expand_as(q).clone()  # every action of agent i has the same value
    actions = torch.distributions.Categorical(probs=probs).sample()
    torch.testing.assert_close(coma_advantage(flat, probs, actions, avail), torch.zeros(5, 3, dtype=q.dtype))


def test_two_agent_two_action_table_gives_the_stated_baseline():
    """Q(a0, a1) = [[1, 2], [3, 4]], π0 = (0.25, 0.75), π1 = (0.6, 0.4), joint action (0, 1).
    Agent 0 varies its own action with a1 = 1: Q = (2, 4), baseline 0.25·2 + 0.75·4 = 3.5,
    advantage 2 - 3.5 = -1.5. Agent 1 with a0 = 0: Q = (1, 2), baseline 0.6·1 + 0.4·2 = 1.4,
    advantage 2 - 1.4 = 0.6."""
    table = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a0, a1 = 0, 1
    q = torch.stack([table[:, a1], table[a0, :]])  # [N, A]: row i = Q(s, (a_-i, ·))
    probs = torch.tensor([[0.25, 0.75], [0.6, 0.4]])
    torch.testing.assert_close(counterfactual_baseline(q, probs), torch.tensor([3.5, 1.4]))
    torch.testing.assert_close(coma_advantage(q, probs, torch.tensor([a0, a1])), torch.tensor([-1.5, 0.6]))
    torch.testing.assert_close(policy_weights("q", q, probs, torch.tensor([a0, a1]), None, None), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(policy_weights("q_minus_v", q, probs, torch.tensor([a0, a1]), None, torch.tensor([1.0, 3.0])),
                               torch.tensor([1.0, -1.0]))


def test_critic_input_holds_the_others_actions_only():
    onehot = torch.eye(3)[torch.tensor([2, 0, 1])]  # agents took actions 2, 0, 1
    acting = torch.tensor([True, True, False])
    x = others_actions(onehot, acting)
    assert x.shape == (3, 9)
    want = torch.tensor([[0, 0, 0, 1, 0, 0, 0, 0, 0],  # agent 0 sees agent 1's action, not its own nor agent 2's (not acting)
                         [0, 0, 1, 0, 0, 0, 0, 0, 0],
                         [0, 0, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(x, want)


def _learner(algo, env_kw, num_envs=16, seed=0, **kw):
    vec = VecEnv(envs.make_factory("builtin/matrix_additive", **env_kw), num_envs, seed=seed)
    torch.manual_seed(seed)
    entry = ALGOS.get(algo)
    learner = entry.learner(entry.make_config(**kw), vec.spec, torch.device("cpu"), seed)
    return vec, learner, Collector(vec, learner, torch.device("cpu"))


@pytest.mark.parametrize("minibatches", [1, 4])
def test_critic_learns_the_q_table_of_a_three_step_matrix_game(minibatches):
    """builtin/matrix_additive repeated 3 steps (terminates), team reward 'sum' (twice the payoff),
    an actor that does not move (lr 1e-12: uniform policy); maqac's Q critic is the same code. The critic's TD(λ) targets must
    converge to Q(s_k, a) = 2 p(a) + Σ_{j>k} γ^(j-k) 2 E[p], E[p] = 21/9, for every joint action,
    at every step, through rollouts of 2 steps that cut episodes (bootstrapping at their ends).
    The future part is 8.0 at the first step and 4.2 at the second: a missing or wrong bootstrap
    misses by more than the tolerance, which is the sampling noise of the λ-returns. With
    `critic_minibatches` 4 each update takes 4 steps on disjoint quarters of the rollout's rows."""
    gamma = 0.9
    torch.set_num_threads(1)
    vec, learner, col = _learner("coma", {"episode_len": 3}, num_envs=64, rollout_len=2, lr=1e-12, critic_lr=1e-3,
                                 gamma=gamma, td_lambda=0.5, ent_coef=0.0, target_update_interval=20 * minibatches, critic_steps=1,
                                 critic_minibatches=minibatches)
    for i in range(500):
        learner.critic_opt.lr = 1e-3 if i < 400 else 1e-4  # the last steps average the sampling noise out
        learner.update(col.collect(2)[0])
    vec.close()
    assert int(learner.critic_updates) == 500 * minibatches
    payoff = 2 * torch.tensor(envs.make("builtin/matrix_additive").payoff)
    mean = payoff.mean()
    a0, a1 = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    actions = torch.stack([a0.flatten(), a1.flatten()], -1)  # [9, 2]
    for k in range(3):
        obs = torch.zeros(9, 2, 3)
        obs[:, :, k] = 1.0
        q = learner.critic(learner._critic_in(obs[:, 0], obs, actions, torch.ones(9, 2, dtype=torch.bool)))[0].detach()
        future = sum(gamma ** (j - k) for j in range(k + 1, 3)) * mean
        want = payoff.flatten() + future
        torch.testing.assert_close(q[torch.arange(9), 0, actions[:, 0]], want, atol=0.5, rtol=0)  # agent 0's Q(s, a)
        torch.testing.assert_close(q[torch.arange(9), 1, actions[:, 1]], want, atol=0.5, rtol=0)


@pytest.mark.parametrize("algo, kw", [("coma", {}), ("maqac", {}), ("maqac", {"advantage": "q"})])
def test_reaches_the_optimum_of_a_cooperative_matrix_game(tmp_path, algo, kw):
    """builtin/matrix_additive (payoff u[a0] + v[a1], unique optimum (1, 2) = 5 per agent, team
    return 10) in at least 2 of 3 seeds. The agents want different actions, so the actors do not
    share parameters (a shared actor with nothing but the id to tell them apart lets one
    agent's gradient pull the other's policy)."""
    solved = 0
    for seed in range(3):
        cfg = TrainConfig(algo=algo, env="builtin/matrix_additive", steps=1600, num_envs=16, eval_interval=1600,
                          eval_episodes=4, workers=0, run_dir=str(tmp_path / f"s{seed}"), wandb="disabled",
                          progress=False, seed=seed)
        out = train(cfg, ALGOS.get(algo).make_config(rollout_len=1, sharing="none", **kw))
        solved += out["eval/return_mean"] == 10.0
    assert solved >= 2


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["coma", "maqac"])
def test_learns_simple_spread(tmp_path, algo):
    """simple_spread (3 agents, 25 steps, team reward), 100k steps with the preset: the greedy
    return must beat the random policy's -79.6 clearly (seed 1: COMA -65.8 over 32 episodes).
    `python -m pytest tests/test_coma.py -m slow` (~2 min each)."""
    cfg = TrainConfig(algo=algo, env="mpe2/simple_spread_v3", steps=100_000, eval_interval=100_000, eval_episodes=32, seed=1,
                      run_dir=str(tmp_path / "run"), wandb="disabled", progress=False)
    out = train(cfg, ALGOS.get(algo).make_config())
    assert out["eval/return_mean"] > -70.0, out


def test_policy_is_a_frozen_copy_that_acts_like_the_learner():
    vec, learner, col = _learner("coma", {}, num_envs=4)
    learner.update(col.collect(1)[0])
    policy = learner.policy()
    assert not any(p.requires_grad for p in policy.parameters()) and not hasattr(policy, "critic")
    inputs = {"obs": torch.ones(4, 2, 1), "avail": torch.rand(4, 2, 3) > 0.5}
    inputs["avail"][..., 1] = True
    greedy, _, _ = learner.act(inputs, None, explore=False)
    torch.testing.assert_close(policy.act(inputs, policy.initial_hidden(4), explore=False)[0], greedy)
    sampled = policy.act(inputs, None, explore=True)[0]
    assert bool(inputs["avail"].gather(-1, sampled.unsqueeze(-1)).all())  # masked actions are never drawn
    vec.close()


@pytest.mark.parametrize("argv, expected", [
    (["--algo", "coma", "--env", "builtin/target"], ["coma cannot handle the continuous actions", "pick an algorithm"]),
    (["--algo", "coma", "--td-lambda", "1.5"], ["td_lambda must lie in [0, 1]", "--td-lambda"]),
    (["--algo", "maqac", "--target-update-interval", "0"], ["target_update_interval must be positive"]),
    (["--algo", "maqac", "--advantage", "v"], ["--advantage", "counterfactual", "q_minus_v"]),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["train", "--env", "builtin/identity", "--steps", "64", "--run-dir", str(tmp_path / "run"), "--wandb", "disabled",
              *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert all(text in err[0] for text in expected), err[0]
    assert not (tmp_path / "run").exists()


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    """The target network, the critic-step counter (its copy schedule), both optimisers and the
    generator that samples the bootstrap actions are in the checkpoint: a split run equals a whole one
    (the target copies at critic steps 25 and 50 fall inside the resumed part)."""
    import json

    from marl.checkpoint import load_checkpoint

    kw = dict(algo="coma", env="mpe2/simple_spread_v3", env_kwargs={"max_cycles": 15}, eval_interval=800, seed=4,
              checkpoint_interval=800, log_interval=400, num_envs=4, wandb="disabled", progress=False, eval_episodes=4)
    algo_kw = dict(rollout_len=10, target_update_interval=25)
    train(TrainConfig(run_dir=str(tmp_path / "full"), steps=2400, **kw), ALGOS.get("coma").make_config(**algo_kw))
    train(TrainConfig(run_dir=str(tmp_path / "split"), steps=800, **kw), ALGOS.get("coma").make_config(**algo_kw))
    train(TrainConfig(run_dir=str(tmp_path / "split"), resume=True, steps=2400))

    def metrics(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith(("time", "perf"))} for r in rows]

    assert metrics(tmp_path / "split") == metrics(tmp_path / "full")
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_2400.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "step_2400.pt")["model"]
    assert any(k.startswith("target_critic.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
