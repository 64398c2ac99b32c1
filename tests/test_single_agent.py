"""Single-agent names (marl.single_agent) as the one-agent case of the multi-agent learners, on
real gymnasium envs: the same code path, the CLI entries, known answers and bad input."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marl import envs
from marl.algos import ALGOS
from marl.cli import main
from marl.config import TrainConfig
from marl.core.rollout import Collector
from marl.core.vec import VecEnv
from marl.single_agent import SINGLE_AGENT
from marl.single_agent.presets import zoo
from marl.train import train

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["--wandb", "disabled", "--progress", "false", "--device", "cpu", "--workers", "0"]


def _fails(capsys, argv: list[str], *expected: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "; " in err[0], err
    for text in expected:
        assert text in err[0], (text, err[0])
    return err[0]


# ----------------------------------------------------------------------------- one code path
def _seeded(learner, cfg, spec):
    torch.manual_seed(0)  # network initialisation draws from the global generator (the trainer seeds it)
    return learner(cfg, spec, torch.device("cpu"), 7)


@pytest.mark.parametrize("single", sorted(SINGLE_AGENT))
def test_the_one_agent_learner_is_the_multi_agent_learner_with_sharing_none(single):
    """The single-agent name builds the multi-agent learner: given the multi-agent name its
    hyperparameter values (sharing none on the env's one agent), the same seed and the same
    batch, both make the same update."""
    entry = ALGOS.get(single)
    multi = ALGOS.get(entry.multi_agent)
    assert entry.learner is multi.learner and entry.config is multi.config
    replay = "batch_size" in {f.name for f in dataclasses.fields(entry.config)}
    small = {"batch_size": 2, "learning_starts": 2, "buffer_size": 16} if replay else {}
    cfg = entry.make_config(**small, rollout_len=32, **({"epochs": 2, "minibatches": 4} if single == "ppo" else {}))
    assert cfg.sharing == "none"
    multi_cfg = multi.make_config(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    vec = VecEnv(envs.make_factory("gym/CartPole-v1"), 4, seed=3, workers=0)
    try:
        assert vec.spec.n_agents == 1
        batch, _ = Collector(vec, _seeded(entry.learner, cfg, vec.spec), torch.device("cpu")).collect(32)
        one, many = (_seeded(e.learner, c, vec.spec) for e, c in ((entry, cfg), (multi, multi_cfg)))
        batch = {k: v.clone() for k, v in batch.items()}
    finally:
        vec.close()
    before = {k: v.clone() for k, v in one.state_dict().items()}
    stats_one = one.update({k: v.clone() for k, v in batch.items()})
    stats_many = many.update({k: v.clone() for k, v in batch.items()})
    assert stats_one == stats_many and any(k.startswith("loss/") for k in stats_one)
    a, b = one.state_dict(), many.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(before[k], a[k]) for k in a)  # the update changed something


@pytest.mark.parametrize("single", ["ddpg", "td3", "sac"])
def test_off_policy_presets_take_a_gradient_step_after_every_env_step(single):
    """SB3's off-policy schedule (train_freq 1, gradient_steps 1): the preset collects one vector
    step of the E envs per update call, and the call takes its E gradient steps, none before
    learning_starts transitions are in the replay. Like SB3 it clips no gradients."""
    entry = ALGOS.get(single)
    cfg = entry.make_config()
    assert (cfg.rollout_len, cfg.updates_per_step, cfg.learning_starts, cfg.max_grad_norm) == (1, 1.0, 100, 0.0)  # SB3 clips none
    cfg = dataclasses.replace(cfg, batch_size=8, learning_starts=12, hidden=(16, 16))
    vec = VecEnv(envs.make_factory("gym/Pendulum-v1"), 4, seed=3, workers=0)
    try:
        learner = _seeded(entry.learner, cfg, vec.spec)
        collector = Collector(vec, learner, torch.device("cpu"))
        steps = []
        for _ in range(5):
            batch, _ = collector.collect(cfg.rollout_len)
            assert batch["done"].shape == (1, 4)
            learner.update(batch)
            steps.append(learner.grad_steps)
    finally:
        vec.close()
    assert steps == [0, 0, 4, 8, 12]  # 12 transitions after the third vector step


# ----------------------------------------------------------------------------- entries
def test_marl_train_runs_ppo_on_cartpole(tmp_path, capsys):
    assert main(["train", "--algo", "ppo", "--env", "gym/CartPole-v1", "--steps", "2048", "--eval-episodes", "2",
                 "--run-dir", str(tmp_path / "run"), *QUIET]) == 0
    out = capsys.readouterr().out
    assert "eval/return_mean" in out and (tmp_path / "run" / "checkpoints" / "latest.pt").is_file()


def test_python_m_single_agent_entry(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = [sys.executable, "-m", "marl.single_agent"]
    ok = subprocess.run([*run, "q_learning", "FrozenLake-v1", "--steps", "64", "--num-envs", "2", "--eval-episodes", "2",
                         "--run-dir", str(tmp_path / "run"), *QUIET], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "eval/return_mean" in ok.stdout and (tmp_path / "run" / "config.yaml").read_text().count("gym/FrozenLake-v1") == 1


def test_single_agent_entry_help_and_bad_names(capsys):
    from marl.single_agent.__main__ import main as single_main

    assert single_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "python -m marl.single_agent ppo CartPole-v1" in out and "sarsa" in out
    for argv, text in ((["ippo", "CartPole-v1"], "'ippo' is a multi-agent algorithm"), (["ppo"], "expected an algorithm and a gymnasium env id")):
        with pytest.raises(SystemExit) as info:
            single_main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and text in err[0], err


def test_help_lists_the_single_agent_names_and_their_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--algo", "reinforce", "--help"])
    out = capsys.readouterr().out
    for text in ("ppo ", "a2c ", "reinforce ", "dqn ", "q_learning ", "sarsa ", "dyna_q ", "--baseline", "--gae-lambda"):
        assert text in out, text
    with pytest.raises(SystemExit):
        main(["train", "--algo", "dqn", "--help"])
    assert "--dueling" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line(tmp_path, capsys):
    run = ["--run-dir", str(tmp_path / "run"), *QUIET]
    _fails(capsys, ["train", "--algo", "dqn", "--env", "gym/Pendulum-v1", *run],
           "dqn cannot handle the continuous actions of env 'gym/Pendulum-v1'", "ppo")
    _fails(capsys, ["train", "--algo", "ppo", "--env", "mpe2/simple_spread_v3", *run],
           "ppo is a single-agent algorithm", "has 3 agents", "--algo ippo")
    _fails(capsys, ["train", "--algo", "sarsa", "--env", "mpe2/simple_spread_v3", *run], "has 3 agents", "--algo idqn")
    _fails(capsys, ["train", "--algo", "ppo", "--env", "gym/CartPole-v9", *run],
           "unknown gymnasium env 'gym/CartPole-v9'", "did you mean gym/CartPole-v1")
    _fails(capsys, ["train", "--algo", "q_learning", "--env", "gym/CartPole-v1", *run],
           "tabular methods need a Discrete observation space", "gym/FrozenLake-v1")
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- known answers
def _greedy_return(tmp_path, algo: str, env: str, env_kwargs: dict, steps: int, seed: int = 1, num_envs: int = 16, **kw) -> float:
    cfg = TrainConfig(algo=algo, env=env, env_kwargs=env_kwargs, steps=steps, num_envs=num_envs, workers=0, seed=seed,
                      eval_interval=steps, eval_episodes=32, run_dir=str(tmp_path / f"{algo}-{seed}"), wandb="disabled",
                      progress=False, log_interval=10**9)
    return train(cfg, ALGOS.get(algo).make_config(**kw))["eval/return_mean"]


@pytest.mark.parametrize("baseline", [True, False])
def test_reinforce_learns_a_contextual_bandit(tmp_path, baseline):
    """builtin/identity with one agent: 4 arms, the one to pull shown as a one-hot observation,
    4 pulls an episode. Random play earns 1, the greedy optimum 4."""
    ret = _greedy_return(tmp_path, "reinforce", "builtin/identity", {"n_agents": 1, "episode_len": 4}, 4096, baseline=baseline)
    assert ret >= 3.75, ret


def test_a2c_learns_cartpole(tmp_path):
    """SB3's A2C defaults, 16 envs: greedy return >= 100 after 20k env steps, where random play
    lasts about 20 steps (measured at 20k: 500, 205, 409 for seeds 1-3)."""
    assert _greedy_return(tmp_path, "a2c", "gym/CartPole-v1", {}, 20_000, seed=2) >= 100


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a2c_balances_cartpole(tmp_path, seed):
    """SB3's A2C defaults, 16 envs: greedy return >= 150 after 100k env steps (measured 337, 278,
    193 for seeds 1-3; A2C's greedy return swings between evaluations, the zoo trains it for 500k).
    Command: python -m pytest tests/test_single_agent.py -m slow -k a2c"""
    assert _greedy_return(tmp_path, "a2c", "gym/CartPole-v1", {}, 100_000, seed=seed) >= 150


def _greedy_returns(tmp_path, algo: str, env: str, steps: int, every: int, seed: int, num_envs: int, **kw) -> list[float]:
    """The greedy return (32 episodes) of every evaluation, every `every` env steps."""
    import json

    run_dir = tmp_path / f"{algo}-{seed}"
    cfg = TrainConfig(algo=algo, env=env, steps=steps, num_envs=num_envs, workers=0, seed=seed, eval_interval=every,
                      eval_episodes=32, run_dir=str(run_dir), wandb="disabled", progress=False, log_interval=10**9)
    train(cfg, ALGOS.get(algo).make_config(**kw))
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return [r["eval/return_mean"] for r in rows if "eval/return_mean" in r]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ppo_balances_cartpole(tmp_path, seed):
    """The greedy return reaches >= 475 within 100k env steps (zoo: 500 at 1e5); measured: 500 at
    20k for seeds 1-3, and 500, 347, 500 at 100k (without the zoo's clip-range anneal the greedy
    policy can slip late). Command: python -m pytest tests/test_single_agent.py -m slow -k ppo_balances"""
    num_envs, tuning = zoo("ppo", "CartPole-v1")
    returns = _greedy_returns(tmp_path, "ppo", "gym/CartPole-v1", 100_000, 10_000, seed, num_envs, **tuning)
    assert max(returns) >= 475 and returns[-1] >= 200, returns


def test_dqn_dueling_head_splits_value_and_advantages():
    """--dueling: the network's first output is V(s), the others the advantages; Q = V + A - mean(A),
    so the mean of Q over actions is V."""
    from marl.algos.qlearning import Dueling

    vec = VecEnv(envs.make_factory("gym/CartPole-v1"), 1, workers=0)
    spec = vec.spec
    vec.close()
    learner = _seeded(ALGOS.get("dqn").learner, ALGOS.get("dqn").make_config(dueling=True), spec)
    assert isinstance(learner.net, Dueling)
    obs = torch.randn(5, 1, 4)
    raw, _ = learner.net.net(obs)
    q, _ = learner.net(obs)
    assert raw.shape[-1] == 3 and q.shape[-1] == 2
    assert torch.allclose(q.mean(-1), raw[..., 0], atol=1e-6)
    assert torch.allclose(q[..., 1] - q[..., 0], raw[..., 2] - raw[..., 1], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dqn_balances_cartpole(tmp_path, seed):
    """The greedy return reaches >= 475 within 100k env steps (zoo: 500 at 5e4); measured on seed 1:
    500 at 60k. Command: python -m pytest tests/test_single_agent.py -m slow -k dqn_balances"""
    num_envs, tuning = zoo("dqn", "CartPole-v1")
    returns = _greedy_returns(tmp_path, "dqn", "gym/CartPole-v1", 100_000, 10_000, seed, num_envs, **tuning)
    assert max(returns) >= 475, returns


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("algo", ["ddpg", "sac", "td3"])
def test_off_policy_actor_critics_swing_up_pendulum(tmp_path, algo, seed):
    """Greedy return >= -200 after 20k env steps (zoo at 20k: TD3 -152, DDPG -152, SAC -157).
    Command: python -m pytest tests/test_single_agent.py -m slow -k pendulum"""
    num_envs, tuning = zoo(algo, "Pendulum-v1")
    assert _greedy_return(tmp_path, algo, "gym/Pendulum-v1", {}, 20_000, seed=seed, num_envs=num_envs, **tuning) >= -200
