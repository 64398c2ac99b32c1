"""Policies apart from learners: a learner's `policy()` is a small frozen acting copy."""
import torch

from marl import envs
from marl.algos import ALGOS
from marl.core.rollout import Collector, to_tensors
from marl.core.vec import VecEnv

CPU = torch.device("cpu")


def _learner(algo, env="mpe2/simple_spread_v3", **kw):
    vec = VecEnv(envs.make_factory(env, max_cycles=8), 3, seed=0)
    entry = ALGOS.get(algo)
    return vec, entry.learner(entry.make_config(rollout_len=8, **kw), vec.spec, CPU, 0)


def _numel(module):
    return sum(t.numel() for t in (*module.parameters(), *module.buffers()))


def test_frozen_policies_are_small_and_act_as_the_learner():
    for algo, acting_net, kw in (("mappo", "actor", {}), ("ippo", "actor", {"recurrent": True}), ("qmix", "net", {"reward": "sum"})):
        vec, learner = _learner(algo, **kw)
        batch, _ = Collector(vec, learner, CPU).collect(8)
        learner.update(batch)
        policy = learner.policy()
        # only the acting network: no critic, mixer or target parameters, no optimiser or replay
        keys = set(policy.state_dict())
        assert keys and all(k.startswith(acting_net + ".") for k in keys), sorted(keys)
        assert _numel(policy) == _numel(getattr(learner, acting_net)) < _numel(learner)
        assert not any(hasattr(policy, name) for name in ("opt", "replay", "critic", "target_net"))
        assert all(not p.requires_grad and p.device.type == "cpu" for p in policy.parameters())
        # its own tensors, not views of the learner's flat buffer
        assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in policy.parameters())
        inputs = to_tensors(vec.reset(3), CPU)
        h = learner.initial_hidden(3)
        want, _, _ = learner.act(inputs, h, False)
        got, _, _ = policy.act(inputs, policy.initial_hidden(3), False)
        assert torch.equal(want, got)
        # later updates do not reach the copy, and a copy loads another copy's weights
        before = {k: v.clone() for k, v in policy.state_dict().items()}
        learner.update(Collector(vec, learner, CPU).collect(8)[0])
        assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
        fresh = learner.policy()
        policy.load_state_dict(fresh.state_dict())
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in policy.state_dict().items())
        vec.close()


def test_exploring_policy_samples_like_the_learner():
    vec, learner = _learner("mappo")
    policy = learner.policy()  # the copy carries the learner's generator state
    inputs = to_tensors(vec.reset(1), CPU)
    a, _, ea = learner.act(inputs, None, True)
    b, _, eb = policy.act(inputs, None, True)
    assert torch.equal(a, b) and torch.allclose(ea["logp"], eb["logp"])
    vec.close()


# ----------------------------------------------------------------------------- the agent -> policy map
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from marl.agentmap import assign, parse  # noqa: E402
from marl.checkpoint import load_checkpoint  # noqa: E402
from marl.cli import main  # noqa: E402
from marl.config import TrainConfig  # noqa: E402
from marl.core.errors import MarlError  # noqa: E402
from marl.core.policies import PolicyMap, RandomPolicy, slot_batch  # noqa: E402
from marl.train import train  # noqa: E402

TAG = ("adversary_0", "adversary_1", "adversary_2", "agent_0")


class Recorder:
    """A policy that records what it was given and plays a fixed action (None: the first available)."""

    def __init__(self, action):
        self.calls, self.action = [], action

    def initial_hidden(self, num_envs):
        return None

    def act(self, inputs, hidden, explore):
        self.calls.append({k: v.clone() for k, v in inputs.items()})
        actions = inputs["avail"].long().argmax(-1) if self.action is None else torch.full(inputs["obs"].shape[:2], self.action)
        return actions, hidden, {"mark": inputs["obs"][..., 0]}


def test_policies_by_team_agent_name_and_glob():
    slots = assign(parse("adversary=ippo agent_0=random"), TAG)
    assert [(s.name, s.agents, s.choice) for s in slots] == [("adversary", (0, 1, 2), "ippo"), ("agent_0", (3,), "random")]
    assert [s.agents for s in assign(parse("adversary_[01]=ippo, adversary_2=random agent=mod:f"), TAG)] == [(0, 1), (2,), (3,)]
    for text, words in (("hunter=ippo agent=random", "unknown team 'hunter'"),
                        ("adversary=ippo adversary_1=random agent=random", "'adversary_1' is claimed by two policies"),
                        ("adversary=ippo", "no policy controls agent(s) ['agent_0']"),
                        ("prey_*=ippo adversary=random", "matches none of the agents"),
                        ("adversary ippo", "is not PATTERN=CHOICE")):
        with pytest.raises(MarlError, match=None) as info:
            assign(parse(text), TAG)
        assert words in str(info.value), (text, str(info.value))


def test_each_policy_acts_once_per_step_on_its_own_agents_rows():
    vec = VecEnv(envs.make_factory("mpe2/simple_tag_v3", max_cycles=5), 3, seed=0)
    adv, prey = Recorder(1), Recorder(3)
    pmap = PolicyMap([adv, prey], [(0, 1, 2), (3,)], vec.spec, 3)
    batch, _ = Collector(vec, pmap, CPU).collect(6)
    assert len(adv.calls) == len(prey.calls) == 6
    for t in range(6):
        assert adv.calls[t]["obs"].shape == (3, 3, 16) and prey.calls[t]["obs"].shape == (3, 1, 14)
        torch.testing.assert_close(adv.calls[t]["obs"], batch["obs"][t, :, :3, :16])
        torch.testing.assert_close(prey.calls[t]["obs"], batch["obs"][t, :, 3:, :14])
    assert (batch["actions"][..., :3] == 1).all() and (batch["actions"][..., 3] == 3).all()
    # each learner's batch: its agents' rows, its own widths and extras
    own = slot_batch(batch, pmap, 1)
    assert own["obs"].shape == (6, 3, 1, 14) and own["reward"].shape == (6, 3, 1) and own["next_obs"].shape == (3, 1, 14)
    torch.testing.assert_close(own["reward"], batch["reward"][..., 3:])
    torch.testing.assert_close(own["mark"], batch["obs"][..., 3:, 0])
    assert "0/mark" not in own and "mark" not in slot_batch(batch, pmap, 0) or slot_batch(batch, pmap, 0)["mark"].shape == (6, 3, 3)
    vec.close()


def test_shuffled_seats_are_redrawn_per_env_when_its_episode_ends():
    vec = VecEnv(envs.make_factory("pettingzoo.classic/tictactoe_v3"), 8, seed=0)
    first, second = Recorder(None), RandomPolicy(vec.spec.subset([1]), CPU, seed=0)
    pmap = PolicyMap([first, second], [(0,), (1,)], vec.spec, 8, shuffle=True, seed=3)
    seats0 = pmap.seats.clone()
    assert len({tuple(r) for r in seats0.tolist()}) == 2  # both seatings among 8 envs
    batch, episodes = Collector(vec, pmap, CPU).collect(30)
    assert episodes and all(ep.owner is not None and sorted(ep.owner) == [0, 1] for ep in episodes)
    seats = batch["seats"]  # [T, E, N]
    changed = (seats[1:] != seats[:-1]).any(-1)
    assert not (changed & ~batch["done"][:-1]).any()  # only after an episode ended
    assert changed.any()
    # the first policy acted exactly where its agent was to move
    for t, call in enumerate(first.calls):
        mine = seats[t][:, 0]
        torch.testing.assert_close(call["acting"][:, 0], batch["acting"][t].gather(1, mine[:, None])[:, 0])
    vec.close()


def _metrics(path):
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "time_s"} for r in rows]


@pytest.mark.parametrize("env,kw,policies,seats,workers", [
    ("mpe2/simple_tag_v3", {"max_cycles": 10}, "adversary=ippo agent=idqn", "fixed", 0),
    ("pettingzoo.classic/tictactoe_v3", {}, "player_1=ippo player_2=random", "shuffle", 2)])
def test_two_policy_run_interrupted_then_resumed_equals_uninterrupted(tmp_path, env, kw, policies, seats, workers):
    base = dict(algo="ippo", env=env, env_kwargs=kw, policies=policies, seats=seats, num_envs=4, workers=workers, seed=2,
                eval_interval=160, eval_episodes=6, checkpoint_interval=160, log_interval=80, wandb="disabled", progress=False)
    small = {"agent": ALGOS.get("idqn").make_config(rollout_len=10, batch_size=2, learning_starts=2, buffer_size=20)}
    ippo = ALGOS.get("ippo").make_config(rollout_len=10, epochs=2)
    train(TrainConfig(run_dir=str(tmp_path / "full"), steps=480, **base), ippo, algo_configs=small)
    train(TrainConfig(run_dir=str(tmp_path / "split"), steps=160, **base), ippo, algo_configs=small)
    train(TrainConfig(run_dir=str(tmp_path / "split"), resume=True, steps=480), algo_configs=small)
    full = _metrics(tmp_path / "full")
    assert full == _metrics(tmp_path / "split")
    name = policies.split("=")[0]
    assert any(f"{name}/loss/policy" in r for r in full) and any(f"eval/{name}/return_mean" in r for r in full)
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "step_480.pt")["slots"] for run in ("full", "split"))
    for slot in a:
        for key, value in a[slot].get("model", {}).items():
            torch.testing.assert_close(value, b[slot]["model"][key], rtol=0, atol=0)


def test_bad_policy_maps_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    for text, words in (("adversary=ippo", "no policy controls agent(s) ['agent_0']"),
                        ("adversary=ippo adversary_0=random agent=random", "claimed by two policies"),
                        ("hunters=ippo agent=random", "unknown team 'hunters'")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(["train", "--env", "mpe2/simple_tag_v3", "--policies", text, "--run-dir", str(run_dir), "--wandb", "disabled"])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and words in err[0], err
        assert not run_dir.exists()
