"""Tabular learners (marl.algos.tabular) on gymnasium's discrete envs, through the trainer.

Known answers from Sutton & Barto (2018): on CliffWalking with ε-greedy behaviour (ε 0.1),
Q-learning's greedy path runs along the cliff (return −13) while SARSA's keeps away from it
(Example 6.6); Dyna-Q reaches the optimal path in fewer env steps than Q-learning (Example 8.1).
The exact fixed point of SARSA with ε 0.1 (the best ε-greedy policy, found by policy iteration
below) walks two rows above the cliff (−15); in finite time SARSA's greedy path is that one or the
top row (−17, the book's figure). Both stay off the cliff's edge.
"""
from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import torch

from marl.algos import ALGOS
from marl.algos.tabular import egreedy_probs, table_update
from marl.checkpoint import load_checkpoint
from marl.config import TrainConfig
from marl.train import train

CLIFF = {"env": "gym/CliffWalking-v1", "env_kwargs": {"max_episode_steps": 100}}  # the time limit ends greedy loops


def _train(tmp_path, algo: str, steps: int, num_envs: int = 16, eval_interval: int = 0, seed: int = 1, env=CLIFF, **algo_kw):
    cfg = TrainConfig(algo=algo, **env, steps=steps, num_envs=num_envs, workers=0, seed=seed,
                      eval_interval=eval_interval or steps, eval_episodes=1, run_dir=str(tmp_path / algo),
                      wandb="disabled", progress=False, log_interval=10**9)
    out = train(cfg, ALGOS.get(algo).make_config(**algo_kw))
    evals = [json.loads(line) for line in open(tmp_path / algo / "metrics.jsonl")]
    return out, [(e["step"], e["eval/return_mean"]) for e in evals if "eval/return_mean" in e]


def test_q_learning_takes_the_cliff_path_and_sarsa_the_safe_one(tmp_path):
    q, _ = _train(tmp_path, "q_learning", 10_000, lr=0.5, gamma=1.0, epsilon=0.1)
    assert q["eval/return_mean"] == -13  # the optimal path, one step from the cliff all the way
    sarsa, _ = _train(tmp_path, "sarsa", 32_000, lr=0.1, gamma=1.0, epsilon=0.1)
    assert sarsa["eval/return_mean"] in (-15, -17), sarsa  # two or three rows above the cliff, never along it


def _sarsa_fixed_point_return(epsilon: float) -> float:
    """Greedy return of the best ε-greedy policy on CliffWalking (γ 1), by policy iteration on
    the env's own transition table."""
    P = gymnasium.make("CliffWalking-v1").unwrapped.P
    S, A = len(P), len(P[0])
    nxt = np.array([[P[s][a][0][1] for a in range(A)] for s in range(S)])
    rew = np.array([[P[s][a][0][2] for a in range(A)] for s in range(S)], dtype=float)
    end = np.array([[P[s][a][0][3] for a in range(A)] for s in range(S)])
    pi = np.full((S, A), 1 / A)
    for _ in range(50):
        q = np.zeros((S, A))
        for _ in range(5000):
            v = (pi * q).sum(1)
            q_new = rew + np.where(end, 0.0, v[nxt])
            if np.abs(q_new - q).max() < 1e-9:
                break
            q = q_new
        new = np.full((S, A), epsilon / A)
        new[np.arange(S), q.argmax(1)] += 1 - epsilon
        if np.allclose(new, pi):
            break
        pi = new
    s, ret = 36, 0.0  # the start state
    for _ in range(100):
        a = int(q[s].argmax())
        ret += rew[s, a]
        done, s = bool(end[s, a]), int(nxt[s, a])
        if done:
            break
    return ret


def test_expected_sarsa_reaches_the_exact_fixed_point_of_epsilon_greedy_control(tmp_path):
    assert _sarsa_fixed_point_return(0.1) == -15
    out, _ = _train(tmp_path, "expected_sarsa", 20_000, lr=0.2, gamma=1.0, epsilon=0.1)
    assert out["eval/return_mean"] == -15


def test_dyna_q_finds_the_optimal_path_in_fewer_env_steps_than_q_learning(tmp_path):
    def first_optimal(algo: str) -> int:
        _, evals = _train(tmp_path, algo, 4000, num_envs=4, eval_interval=200, lr=0.5, gamma=1.0, epsilon=0.1)
        return next((step for step, ret in evals if ret == -13), 10**9)

    dyna, q = first_optimal("dyna_q"), first_optimal("q_learning")
    assert dyna <= 1200 and 2 * dyna <= q, (dyna, q)  # measured: about 700 against 3000 (seeds 1-3)


def test_n_step_sarsa_learns_the_safe_path_too(tmp_path):
    out, _ = _train(tmp_path, "sarsa", 24_000, lr=0.1, gamma=1.0, epsilon=0.1, n_step=3)
    assert out["eval/return_mean"] in (-15, -17), out


# ----------------------------------------------------------------------------- pure pieces
def test_table_update_moves_shared_entries_by_the_mean_error():
    q = torch.zeros(3, 2)
    table_update(q, torch.tensor([0, 0, 2]), torch.tensor([1, 1, 0]), torch.tensor([1.0, 3.0, -4.0]), lr=0.5)
    assert torch.equal(q, torch.tensor([[0.0, 1.0], [0.0, 0.0], [-2.0, 0.0]]))  # (0,1): 0.5 * mean(1, 3)


def test_egreedy_probs_split_ties_and_respect_masks():
    q = torch.tensor([[1.0, 1.0, 0.0, 5.0]])
    avail = torch.tensor([[True, True, True, False]])
    p = egreedy_probs(q, avail, 0.3)
    assert torch.allclose(p, torch.tensor([[0.1 + 0.35, 0.1 + 0.35, 0.1, 0.0]]))


def test_n_step_target_by_hand():
    """One env, n = 2, Q-learning, γ 0.5: the transition of step 0 gets r0 + γ r1 + γ² max Q(s2)."""
    from marl.algos.tabular import TabularLearner
    from marl.core.spec import EnvSpec

    spec = EnvSpec(("agent_0",), (3,), "discrete", (2,), 3, False, False, name="chain", discrete_obs=True)
    learner = TabularLearner(ALGOS.get("q_learning").make_config(n_step=2, gamma=0.5, lr=1.0), spec, torch.device("cpu"))
    learner.q[2] = torch.tensor([4.0, 8.0])
    eye = torch.eye(3)
    T = 3  # states 0 -> 1 -> 2 -> 2, rewards 1, 2, 0; no episode end
    b = {"obs": eye[[0, 1, 2]].view(T, 1, 1, 3), "actions": torch.tensor([1, 0, 1]).view(T, 1, 1),
         "reward": torch.tensor([1.0, 2.0, 0.0]).view(T, 1, 1), "terminated": torch.zeros(T, 1, 1, dtype=torch.bool),
         "done": torch.zeros(T, 1, dtype=torch.bool), "final_obs": torch.zeros(T, 1, 1, 3),
         "avail": torch.ones(T, 1, 1, 2, dtype=torch.bool), "final_avail": torch.ones(T, 1, 1, 2, dtype=torch.bool)}
    learner.update(b)
    assert learner.q[0, 1] == 1 + 0.5 * 2 + 0.25 * 8
    assert learner.q[1, 0] == 0  # its target needs step 3: carried to the next segment
    b2 = {k: v[:1].clone() for k, v in b.items()}
    b2["obs"], b2["reward"] = eye[[2]].view(1, 1, 1, 3), torch.tensor([0.5]).view(1, 1, 1)
    b2["terminated"][:] = True
    b2["done"][:] = True
    learner.update(b2)
    assert learner.q[1, 0] == 2 + 0.5 * 0 + 0.25 * 8  # r1 + γ r2 + γ² max Q(s3 = 2)
    assert learner.q[2, 1] == 8.0  # the transition of step 2 waits for step 4
    b3 = {k: v.clone() for k, v in b2.items()}
    b3["obs"], b3["terminated"][:], b3["done"][:] = eye[[0]].view(1, 1, 1, 3), False, False
    learner.update(b3)
    assert learner.q[2, 1] == 0 + 0.5 * 0.5  # r2 + γ r3, and no bootstrap: the episode terminated at step 3


def test_tabular_runs_on_frozenlake_and_taxi_and_resumes_exactly(tmp_path):
    """The trainer's checkpoint holds the rows waiting for their targets and the Dyna model:
    an interrupted run resumed equals the uninterrupted one."""
    env = {"env": "gym/FrozenLake-v1", "env_kwargs": {"is_slippery": False}}
    full, _ = _train(tmp_path / "a", "dyna_q", 400, num_envs=4, env=env, n_step=2)
    cfg = TrainConfig(algo="dyna_q", **env, steps=200, num_envs=4, workers=0, seed=1, eval_interval=400, eval_episodes=1,
                      run_dir=str(tmp_path / "b"), wandb="disabled", progress=False, log_interval=10**9, checkpoint_interval=100)
    algo_cfg = ALGOS.get("dyna_q").make_config(n_step=2)
    train(cfg, algo_cfg)
    resumed = train(TrainConfig(**{**cfg.__dict__, "steps": 400, "resume": True}), algo_cfg)
    a = load_checkpoint(tmp_path / "a" / "dyna_q")["model"]
    b = load_checkpoint(tmp_path / "b")["model"]
    assert torch.equal(a["pi.q"], b["pi.q"]) and a["pi.q"].abs().sum() > 0
    out, _ = _train(tmp_path, "q_learning", 400, num_envs=4, env={"env": "gym/Taxi-v4", "env_kwargs": {}})
    assert out["step"] == 400 and resumed["step"] == 400


def test_bootstraps_read_only_the_actions_available_in_the_next_state():
    """Taxi-like masks: an action never available keeps its initial value, which must not enter
    the max (Q-learning) or the expectation (Expected SARSA) of the next state's value."""
    from marl.algos.tabular import TabularLearner
    from marl.core.spec import EnvSpec

    spec = EnvSpec(("agent_0",), (2,), "discrete", (2,), 2, False, True, name="masked", discrete_obs=True)
    eye = torch.eye(2)
    b = {"obs": eye[[0, 1]].view(2, 1, 1, 2), "actions": torch.tensor([1, 1]).view(2, 1, 1),
         "reward": torch.tensor([-1.0, -1.0]).view(2, 1, 1), "terminated": torch.zeros(2, 1, 1, dtype=torch.bool),
         "done": torch.zeros(2, 1, dtype=torch.bool), "final_obs": torch.zeros(2, 1, 1, 2),
         "avail": torch.tensor([[True, True], [False, True]]).view(2, 1, 1, 2), "final_avail": torch.ones(2, 1, 1, 2, dtype=torch.bool)}
    for method, expected in (("q_learning", -1 + 0.5 * -4), ("expected_sarsa", -1 + 0.5 * -4)):
        learner = TabularLearner(ALGOS.get("q_learning").make_config(method=method, gamma=0.5, lr=1.0), spec, torch.device("cpu"))
        learner.q[1] = torch.tensor([10.0, -4.0])  # action 0 is never available in state 1
        learner.update({k: v.clone() for k, v in b.items()})
        assert learner.q[0, 1] == expected, method


@pytest.mark.parametrize("algo", ["q_learning", "sarsa", "expected_sarsa", "dyna_q"])
def test_policy_is_a_frozen_greedy_copy(algo):
    from marl.core.spec import EnvSpec

    spec = EnvSpec(("agent_0",), (4,), "discrete", (3,), 4, False, False, discrete_obs=True)
    learner = ALGOS.get(algo).learner(ALGOS.get(algo).make_config(), spec, torch.device("cpu"), 0)
    learner.q[:] = torch.arange(12.0).view(4, 3) % 5
    pi = learner.policy()
    obs = torch.eye(4).view(4, 1, 4)
    inputs = {"obs": obs, "avail": torch.ones(4, 1, 3, dtype=torch.bool)}
    assert torch.equal(pi.act(inputs, None, False)[0], learner.act(inputs, None, False)[0])
    learner.q.zero_()
    assert pi.q.abs().sum() > 0 and not any(p.requires_grad for p in pi.buffers())
