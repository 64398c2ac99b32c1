"""On-policy family: known answers, sharing modes, continuous actions, determinism, resume."""
import json
import shutil

import pytest
import torch

from marl.algos import ALGOS
from marl.checkpoint import load_checkpoint
from marl.config import TrainConfig
from marl.train import evaluate, train

FAST = dict(wandb="disabled", progress=False, eval_episodes=16, log_interval=2000, num_envs=8)


def _run(tmp_path, name="run", **kw):
    algo_kw = kw.pop("algo_kw", {})
    cfg = TrainConfig(run_dir=str(tmp_path / name), **{**FAST, **kw})
    return train(cfg, ALGOS.get(cfg.algo).make_config(**algo_kw))


@pytest.mark.parametrize("algo,reward", [("ippo", "agent"), ("mappo", "agent"), ("ia2c", "agent"), ("maa2c", "agent"),
                                         ("mappo", "sum"), ("maa2c", "sum")])
def test_learns_identity_task(tmp_path, algo, reward):
    """Each agent must name its own target: random play scores ~4 of 16. With the team reward
    (sum) the central critics learn one value per env step."""
    kw = {"rollout_len": 16, "lr": 3e-3} if algo.endswith("a2c") else {"rollout_len": 32}
    out = _run(tmp_path, algo=algo, env="builtin/identity", steps=16_000, eval_interval=16_000, seed=3,
               algo_kw={**kw, "reward": reward})
    assert out["eval/return_mean"] >= 15.0, out


def test_popart_option_learns(tmp_path):
    """PopArt keeps the denormalised values fixed when the statistics move (tests/test_returns.py);
    the learner with it on still solves the identity task."""
    out = _run(tmp_path, algo="mappo", env="builtin/identity", steps=16_000, eval_interval=16_000, seed=3,
               algo_kw={"rollout_len": 32, "popart": True, "minibatches": 1})
    assert out["eval/return_mean"] >= 15.0, out


@pytest.mark.parametrize("recurrent", [False, True])
def test_team_value_critic_takes_the_state_once(recurrent):
    """MLP central critic + team reward: no agent id, one value per env step shared by all agents;
    with per-agent rewards each agent keeps its own value (agent id appended)."""
    from marl import envs
    from marl.core.rollout import to_tensors
    from marl.core.vec import VecEnv

    vec = VecEnv(envs.make_factory("mpe2/simple_spread_v3"), 4, seed=0)
    spec, inputs = vec.spec, to_tensors(vec.reset(), torch.device("cpu"))
    entry = ALGOS.get("mappo")
    team = entry.learner(entry.make_config(reward="sum", recurrent=recurrent, critic_net="mlp"), spec, torch.device("cpu"))
    own = entry.learner(entry.make_config(reward="agent", recurrent=recurrent, critic_net="mlp"), spec, torch.device("cpu"))
    first = lambda net: next(p for n, p in net.named_parameters() if "weight" in n)  # noqa: E731
    assert first(team.critic).shape[-2] == spec.state_dim
    assert first(own.critic).shape[-2] == spec.state_dim + spec.n_agents
    value = lambda learner, x: learner._value(x["obs"], x["state"], learner._split(learner.initial_hidden(4))[1])[0]  # noqa: E731
    v = value(team, inputs)
    assert v.shape == (4, spec.n_agents) and torch.equal(v, v[:, :1].expand_as(v))
    moved = {**inputs, "obs": inputs["obs"] + 1.0}  # the team critic reads the state only
    assert torch.equal(value(team, moved), v)
    mine = value(own, inputs)
    assert not torch.equal(mine, mine[:, :1].expand_as(mine))
    explored = team.act(inputs, team.initial_hidden(4), explore=True)[2]
    assert ("value" in explored) == recurrent  # a feed-forward critic runs once per rollout, in the update
    torch.testing.assert_close(explored.get("value", v), v)
    assert "value" not in team.act(inputs, team.initial_hidden(4), explore=False)[2]  # evaluation skips the critic
    vec.close()


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("env", ["mpe2/simple_spread_v3", "builtin/identity"])
def test_set_critic_reads_every_agent_and_a_state_beyond_them(env, recurrent):
    """The default central critic (Deep Sets over the agents' observations): one value per env
    step with the team reward, one per agent with their own. mpe2 declares its state to be
    the concatenated observations, so the critic ignores it; identity does not, so its state
    joins the pooled embedding."""
    from marl import envs
    from marl.core.rollout import to_tensors
    from marl.core.vec import VecEnv

    vec = VecEnv(envs.make_factory(env), 4, seed=0)
    spec, inputs = vec.spec, to_tensors(vec.reset(), torch.device("cpu"))
    entry = ALGOS.get("mappo")
    make = lambda reward: entry.learner(entry.make_config(reward=reward, recurrent=recurrent), spec, torch.device("cpu"))  # noqa: E731
    team, own = make("sum"), make("agent")
    assert team.sets and team.context_dim == (0 if env.startswith("mpe2") else spec.state_dim)
    value = lambda learner, x: learner._value(x["obs"], x["state"], learner._split(learner.initial_hidden(4))[1])[0]  # noqa: E731
    v, mine = value(team, inputs), value(own, inputs)
    assert v.shape == mine.shape == (4, spec.n_agents)
    assert torch.equal(v, v[:, :1].expand_as(v)) and not torch.equal(mine, mine[:, :1].expand_as(mine))
    obs = inputs["obs"].clone()
    obs[:, -1] += 1.0  # the last agent's observation moves every agent's value
    for learner, before in ((team, v), (own, mine)):
        assert ((value(learner, {**inputs, "obs": obs}) - before).abs() > 1e-6).all()
    moved_state = value(team, {**inputs, "state": inputs["state"] + 1.0})
    assert torch.equal(moved_state, v) == env.startswith("mpe2")
    explored = team.act(inputs, team.initial_hidden(4), explore=True)[2]
    torch.testing.assert_close(explored.get("value", team._denormalize(v)), team._denormalize(v))
    vec.close()


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("algo", ["ippo", "mappo"])
def test_rollout_values_match_a_step_by_step_unroll(algo, recurrent):
    """The update's rollout values equal an unroll of the critic step by step: for every step,
    the value of that step's observation and, as next value, the final observation's where
    the agent's episode ended (time limit 5 < rollout 8, so envs reset mid-rollout) and the
    next step's otherwise. A recurrent critic reads a final observation with the state
    carried to it (before the reset) and the observation after the rollout with the state
    carried there, not with a zero state."""
    from marl import envs
    from marl.core.rollout import Collector, reset_hidden
    from marl.core.vec import VecEnv

    vec = VecEnv(envs.make_factory("mpe2/simple_spread_v3", max_cycles=5), 3, seed=0)
    entry = ALGOS.get(algo)
    learner = entry.learner(entry.make_config(reward="sum", recurrent=recurrent), vec.spec, torch.device("cpu"))
    b, _ = Collector(vec, learner, torch.device("cpu")).collect(8)
    values, next_values = learner._rollout_values(b)
    value = lambda obs, state, h: (lambda v, h: (learner._denormalize(v), h))(*learner._value(obs, state, h))  # noqa: E731
    ended = b["terminated"] | b["truncated"]
    assert ended.any() and not ended.all()
    h = learner._split(b["hidden0"])[1] if recurrent else None
    for t in range(8):
        v, h = value(b["obs"][t], b["state"][t], h)
        torch.testing.assert_close(values[t], v)
        final = value(b["final_obs"][t], b["final_state"][t], h)[0]
        h = reset_hidden(h, b["done"][t])
        after = value(b["next_obs"], b["next_state"], h)[0] if t == 7 else values[t + 1]
        torch.testing.assert_close(next_values[t], torch.where(ended[t], final, after))
    vec.close()


def test_steps_where_no_agent_decides_are_left_out_of_the_update():
    """A rollout with an env in which no agent decides (acting all False, as a slot's agents
    wait on the other side's moves in turn-based games) updates the learner exactly as the
    rollout without that env: those steps are dropped before the minibatches are drawn, so
    the minibatches hold the same steps in the same order."""
    from marl import envs
    from marl.core.rollout import Collector
    from marl.core.vec import VecEnv

    vec = VecEnv(envs.make_factory("mpe2/simple_spread_v3", max_cycles=5), 3, seed=0)
    entry = ALGOS.get("ippo")
    make = lambda: torch.manual_seed(0) and entry.learner(entry.make_config(), vec.spec, torch.device("cpu"), seed=1)  # noqa: E731
    with_idle, without = make(), make()
    b, _ = Collector(vec, with_idle, torch.device("cpu")).collect(8)
    b = {k: v.clone() for k, v in b.items()}
    b["acting"][:, 1] = False
    b["next_acting"][1] = False
    keep = torch.tensor([0, 2])
    without.gen.set_state(with_idle.gen.get_state())  # acting drew from it
    cut = {k: v.index_select(0 if k.startswith("next_") else 1, keep) for k, v in b.items()}
    with_idle.update(b)
    without.update(cut)
    for p, q in zip(with_idle.parameters(), without.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    vec.close()


@pytest.mark.parametrize("popart", [False, True])
def test_value_clip_is_centred_on_the_critics_own_output(popart):
    """--value-clip clips the value update around what the critic output before the update
    (MAPPO's value_preds). At the first minibatch of an update the critic has not moved, so
    the centre equals its output and no sample loses its value gradient to the clip, however
    far the value statistics moved on this rollout's returns."""
    from marl import envs
    from marl.core.rollout import Collector
    from marl.core.vec import VecEnv

    vec = VecEnv(envs.make_factory("mpe2/simple_spread_v3"), 4, seed=0)
    entry = ALGOS.get("mappo")
    learner = entry.learner(entry.make_config(value_clip=0.2, popart=popart), vec.spec, torch.device("cpu"))
    collector = Collector(vec, learner, torch.device("cpu"))
    step, firsts = learner._step, []

    def recording_step(mb, h0):
        if first[0]:  # the critic has not moved yet
            with torch.no_grad():
                firsts.append((learner._evaluate(mb, h0)[2], mb["old_v"]))
            first[0] = False
        return step(mb, h0)

    learner._step = recording_step
    for _ in range(3):
        first = [True]
        learner.update(collector.collect(25)[0])
        assert abs(float(learner.value_norm.mean)) > 0.5  # the statistics moved
    assert len(firsts) == 3
    for values, centre in firsts:
        torch.testing.assert_close(values, centre, rtol=0, atol=1e-5)
    vec.close()


@pytest.mark.parametrize("sharing", ["none", [1, 0]])
def test_learns_with_separate_and_grouped_parameters(tmp_path, sharing):
    out = _run(tmp_path, algo="ippo", env="builtin/identity", steps=16_000, eval_interval=16_000, seed=1,
               algo_kw={"sharing": sharing, "agent_id": False, "rollout_len": 32})
    assert out["eval/return_mean"] >= 15.0, out


def test_learns_heterogeneous_masked_agents(tmp_path):
    """Padded observation/action sizes and an info action mask: still solvable, masks respected."""
    out = _run(tmp_path, algo="mappo", env="builtin/identity", env_kwargs={"n_agents": 3, "hetero": True, "masked": True},
               steps=20_000, eval_interval=20_000, seed=2, algo_kw={"rollout_len": 32})
    assert out["eval/return_mean"] >= 22.0, out  # 3 agents x 8 steps = 24 at best


def test_continuous_actions_reach_the_target(tmp_path):
    """Gaussian policy: reward -||a - target||^2; random actions score about -2.6 per agent-step."""
    out = _run(tmp_path, algo="ippo", env="builtin/target", steps=30_000, eval_interval=30_000, seed=0,
               algo_kw={"rollout_len": 32, "lr": 3e-3, "ent_coef": 0.0})
    assert out["eval/return_mean"] > -0.5, out


def test_recurrent_policy_trains(tmp_path):
    out = _run(tmp_path, algo="mappo", env="builtin/identity", steps=12_000, eval_interval=12_000, seed=0,
               algo_kw={"recurrent": True, "rollout_len": 32, "epochs": 4, "minibatches": 2})
    assert out["eval/return_mean"] >= 15.0, out


def _metrics(path):
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "time_s"} for r in rows]


def test_same_seed_same_metrics(tmp_path):
    kw = dict(algo="mappo", env="mpe2/simple_spread_v3", env_kwargs={"max_cycles": 10}, steps=3200, eval_interval=1600, seed=5,
              algo_kw={"rollout_len": 20})
    _run(tmp_path, "a", **kw)
    _run(tmp_path, "b", **kw)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_background_and_in_process_evaluation_log_the_same_rows(tmp_path):
    """--workers 2 evaluates in a background process, --workers 0 in the training process: the
    same episodes, and the rows of metrics.jsonl in the same order."""
    kw = dict(algo="mappo", env="mpe2/simple_spread_v3", env_kwargs={"max_cycles": 10}, steps=3200, eval_interval=960,
              log_interval=640, seed=5, algo_kw={"rollout_len": 20})
    _run(tmp_path, "bg", workers=2, **kw)
    _run(tmp_path, "here", workers=0, **kw)
    rows = _metrics(tmp_path / "bg")
    assert [r["step"] for r in rows if "eval/return_mean" in r] == [0, 960, 1920, 2880, 3200]
    assert rows == _metrics(tmp_path / "here")
    # `marl evaluate` on the final checkpoint runs the same episodes; --seed those of another run
    last = [r for r in rows if "eval/return_mean" in r][-1]
    again = evaluate(str(tmp_path / "bg"), episodes=16, device="cpu")
    assert again == {k: v for k, v in last.items() if k.startswith("eval/")}
    assert evaluate(str(tmp_path / "bg"), episodes=16, device="cpu", seed=6)["eval/return_mean"] != last["eval/return_mean"]


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_not_logged_at_a_checkpoint_is_redone_on_resume(tmp_path, workers):
    """A run killed right after a checkpoint whose evaluation was not logged yet (in flight in the
    background process, or done in-process and waiting for the next log row) logs it on resume."""
    kw = dict(algo="mappo", env="mpe2/simple_spread_v3", env_kwargs={"max_cycles": 15}, eval_interval=1600, seed=4,
              checkpoint_interval=1600, log_interval=800, workers=workers, algo_kw={"rollout_len": 20})
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    _run(tmp_path, "full", steps=3200, **kw)
    assert load_checkpoint(full / "checkpoints" / "step_1600.pt")["eval_pending"]
    assert not load_checkpoint(full / "checkpoints" / "step_3200.pt")["eval_pending"]  # the last one is logged first
    (crashed / "checkpoints").mkdir(parents=True)  # what a kill right after the checkpoint at 1600 leaves
    shutil.copy(full / "config.yaml", crashed / "config.yaml")
    shutil.copy(full / "checkpoints" / "step_1600.pt", crashed / "checkpoints" / "step_1600.pt")
    lines = (full / "metrics.jsonl").read_text().splitlines(keepends=True)
    written = 1 + next(i for i, line in enumerate(lines) if json.loads(line)["step"] == 1600)  # the train row of 1600
    assert "eval/return_mean" not in lines[written - 1]
    (crashed / "metrics.jsonl").write_text("".join(lines[:written]))
    train(TrainConfig(run_dir=str(crashed), resume=True, steps=3200))  # the rest from the run
    assert _metrics(crashed) == _metrics(full)


@pytest.mark.parametrize("algo_kw", [{"rollout_len": 20}, {"rollout_len": 20, "recurrent": True, "epochs": 2, "reward": "sum"}])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, algo_kw):
    kw = dict(algo="mappo", env="mpe2/simple_spread_v3", env_kwargs={"max_cycles": 15}, eval_interval=1600, seed=4,
              checkpoint_interval=1600, log_interval=800, algo_kw=algo_kw)
    _run(tmp_path, "full", steps=4800, **kw)
    _run(tmp_path, "split", steps=1600, **kw)
    cfg = TrainConfig(run_dir=str(tmp_path / "split"), resume=True, steps=4800)  # the rest from the run
    train(cfg)
    full, split = _metrics(tmp_path / "full"), _metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [r["step"] for r in full]
    assert split == full
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_4800.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "step_4800.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
