"""Policies apart from learners (a learner's `policy()` is a small frozen acting copy), several
policies in one run (the agent -> policy map, each learner on its own rows), the trainer's
callbacks, competitive envs end to end, and exact resume of all of it."""
import dataclasses
import json

import pytest
import torch

from marl import envs
from marl.agentmap import assign, parse
from marl.algos import ALGOS
from marl.checkpoint import load_checkpoint
from marl.cli import main
from marl.config import TrainConfig
from marl.core.errors import MarlError
from marl.core.policies import PolicyMap, RandomPolicy, slot_batch
from marl.core.rollout import Collector, to_tensors
from marl.core.vec import VecEnv
from marl.train import train

CPU = torch.device("cpu")


def _learner(algo, env="mpe2/simple_spread_v3", **kw):
    vec = VecEnv(envs.make_factory(env, **({"max_cycles": 8} if env.startswith("mpe2/") else {})), 3, seed=0)
    entry = ALGOS.get(algo)
    return vec, entry.learner(entry.make_config(rollout_len=8, **kw), vec.spec, CPU, 0)


def _numel(module):
    return sum(t.numel() for t in (*module.parameters(), *module.buffers()))


def _team_kw(algo: str, **kw) -> dict:
    """A team reward where the config has one (the mixers need it)."""
    names = {f.name for f in dataclasses.fields(ALGOS.get(algo).config)}
    return {**({"reward": "sum"} if "reward" in names else {}), **kw}


@pytest.mark.parametrize("algo,kw", [(a, {"recurrent": True} if a == "ippo" else {}) for a in ALGOS.names()])
def test_frozen_policies_are_small_and_act_as_the_learner(algo, kw):
    """Every registered learner hands out a copy of its acting networks only, which acts as it
    does and does not follow its later updates."""
    one_agent = bool(ALGOS.get(algo).multi_agent)  # a single-agent name (or a tabular method)
    vec, learner = _learner(algo, "gym/FrozenLake-v1" if one_agent else "mpe2/simple_spread_v3", **_team_kw(algo, **kw))
    batch, _ = Collector(vec, learner, CPU).collect(8)
    learner.update(batch)
    policy = learner.policy()
    # only the acting network: no critic, mixer or target parameters, no optimiser or replay
    learns_more = any(hasattr(learner, name) for name in ("critic", "head", "target_net", "target_critic"))
    assert 0 < _numel(policy) <= _numel(learner) and (_numel(policy) < _numel(learner) or not learns_more)
    assert not any(hasattr(policy, name) for name in ("opt", "replay", "critic", "target_net", "critic_opt"))
    assert all(not p.requires_grad and p.device.type == "cpu" for p in policy.parameters())
    # its own tensors, not views of the learner's flat buffer
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in policy.parameters())
    inputs = to_tensors(vec.reset(3), CPU)
    want, _, _ = learner.act(inputs, learner.initial_hidden(3), False)
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


def test_evaluate_a_run_of_several_policies_reproduces_its_last_evaluation(tmp_path):
    from marl.train import evaluate

    cfg = TrainConfig(algo="ippo", env="mpe2/simple_push_v3", env_kwargs={"max_cycles": 8}, policies="adversary=ippo agent=mappo",
                      steps=160, num_envs=4, workers=2, eval_interval=160, eval_episodes=6, wandb="disabled", progress=False,
                      run_dir=str(tmp_path / "run"))
    train(cfg, ALGOS.get("ippo").make_config(rollout_len=8, epochs=1))
    last = [r for r in _metrics(tmp_path / "run") if "eval/return_mean" in r][-1]
    again = evaluate(str(tmp_path / "run"), episodes=6, device="cpu", video=str(tmp_path / "ep.gif"))
    assert again.pop("video") and {k: v for k, v in last.items() if k.startswith("eval/")} == again
    assert "eval/adversary/return_mean" in again and "eval/agent/return_mean" in again


COMPETITIVE = [
    ("mpe2/simple_tag_v3", {"max_cycles": 8}, "adversary=ippo agent=random", "fixed", False),
    ("mpe2/simple_adversary_v3", {"max_cycles": 8}, "adversary=ippo agent=mappo", "fixed", False),
    ("mpe2/simple_push_v3", {"max_cycles": 8}, "adversary=ia2c agent=ippo", "fixed", False),
    ("pettingzoo.classic/tictactoe_v3", {}, "player_1=ippo player_2=random", "shuffle", True),
    ("pettingzoo.classic/connect_four_v3", {}, "player_0=ippo player_1=random", "shuffle", True),
    ("pettingzoo.classic/leduc_holdem_v4", {}, "player_0=ippo player_1=random", "shuffle", True),
    ("pettingzoo.classic/rps_v2", {}, "player_0=ippo player_1=random", "fixed", True),
]


@pytest.mark.parametrize("env,kw,policies,seats,zero_sum", COMPETITIVE, ids=[c[0].split("/")[1] for c in COMPETITIVE])
def test_competitive_envs_run_end_to_end_with_per_team_results(tmp_path, env, kw, policies, seats, zero_sum):
    cfg = TrainConfig(algo="ippo", env=env, env_kwargs=kw, policies=policies, seats=seats, steps=64, num_envs=4, workers=0,
                      eval_interval=64, eval_episodes=16, wandb="disabled", progress=False, run_dir=str(tmp_path / "run"))
    out = train(cfg, ALGOS.get("ippo").make_config(rollout_len=16, epochs=1))
    names = [p.split("=")[0] for p in policies.split()]
    assert all(f"eval/{n}/return_mean" in out for n in names), out
    if zero_sum:  # both sides' results, which the summed team return (0) cannot give
        for n in names:
            assert out[f"eval/{n}/win_rate"] + out[f"eval/{n}/draw_rate"] + out[f"eval/{n}/loss_rate"] == pytest.approx(1.0)
        assert out[f"eval/{names[0]}/win_rate"] == pytest.approx(out[f"eval/{names[1]}/loss_rate"])
        assert out["eval/return_mean"] == pytest.approx(0.0, abs=1e-6)
    else:
        assert not any(k.endswith("win_rate") for k in out)


@pytest.mark.slow
def test_simple_tag_adversaries_then_prey_learn_against_frozen_opponents(tmp_path):
    """Known answer, two phases on mpe2 simple_tag (3 adversaries, 1 prey, 25 steps):
    1. IPPO adversaries trained against a frozen random prey catch it more often (collision steps
       per episode = the adversaries' summed return / 30) than the untrained adversaries;
    2. an IPPO prey trained against those adversaries, frozen from phase 1's checkpoint, is caught
       less often than the random prey and keeps a higher return (the untrained greedy prey flees
       off the map: rarely caught, but its boundary penalty makes its return the worst).
    Run: python -m pytest tests/test_policies.py -m slow -k simple_tag -s  (11 min on 2 busy cores; prints the measures)."""
    from marl.trainer import Trainer, slot_metrics

    base = dict(algo="ippo", env="mpe2/simple_tag_v3", env_kwargs={"max_cycles": 25}, num_envs=8, workers=0, seed=1,
                eval_interval=0, log_interval=10**9, wandb="disabled", progress=False)
    ippo = ALGOS.get("ippo").make_config()

    def match(trainer, overrides=None):
        m = slot_metrics("e", trainer.play(overrides, episodes=200), trainer.slots, trainer.spec.agents)
        return m["e/adversary/return_mean"] / 30, m["e/agent/return_mean"]

    with Trainer(TrainConfig(policies="adversary=ippo agent=random", steps=60_000, run_dir=str(tmp_path / "adv"), **base), ippo) as t:
        untrained, _ = match(t)
        while not t.done:
            t.step()
        trained, _ = match(t)
    print(f"phase 1: catches per episode of the random prey, untrained {untrained:.3f}, trained adversaries {trained:.3f}")
    assert trained > untrained + 0.15, (untrained, trained)
    with Trainer(TrainConfig(policies=f"adversary={tmp_path / 'adv'}#adversary agent=ippo", steps=60_000,
                             run_dir=str(tmp_path / "prey"), **base), ippo) as t:
        random_caught, random_return = match(t, {"agent": RandomPolicy(t.spec.subset([3]), CPU, 0)})
        _, untrained_return = match(t)
        while not t.done:
            t.step()
        caught, prey_return = match(t)
    print(f"phase 2: catches / prey return: random prey {random_caught:.3f} / {random_return:.2f}, untrained prey return "
          f"{untrained_return:.2f}, trained prey {caught:.3f} / {prey_return:.2f}")
    assert caught < random_caught - 0.1 and prey_return > max(random_return, untrained_return) + 5, \
        (random_caught, random_return, untrained_return, caught, prey_return)


class EpisodeCounter:
    """A callback with state: counts finished training episodes, logs the count with every
    evaluation, and swaps the frozen opponent for a freshly seeded random one at every step."""

    def __init__(self):
        self.episodes, self.hooks = 0, set()

    def on_step_start(self, trainer):
        self.hooks.add("on_step_start")
        if trainer.pmap is not None:
            name = trainer.slots[1]
            trainer.set_policy(name, RandomPolicy(trainer.spec.subset(trainer.slot_agents[1]), CPU, seed=trainer.updates))

    def on_collect(self, trainer, batch, episodes):
        self.episodes += len(episodes)
        self.hooks.add("on_collect")

    def on_update(self, trainer, metrics):
        metrics["train/cb_episodes"] = float(self.episodes)

    def on_evaluate(self, trainer, step, episodes):
        return {"eval/cb_episodes": float(self.episodes)}

    def on_checkpoint(self, trainer, payload):
        self.hooks.add("on_checkpoint")

    def state_dict(self):
        return {"episodes": self.episodes}

    def load_state_dict(self, state):
        self.episodes = state["episodes"]


@pytest.mark.parametrize("policies", ["", "player_1=ippo player_2=random"])
def test_callbacks_hook_in_and_resume_exactly(tmp_path, policies):
    base = dict(algo="ippo", env="pettingzoo.classic/tictactoe_v3", policies=policies, num_envs=4, workers=0, seed=3,
                eval_interval=80, eval_episodes=4, checkpoint_interval=80, log_interval=40, wandb="disabled", progress=False)
    ippo = ALGOS.get("ippo").make_config(rollout_len=10, epochs=1)
    full = EpisodeCounter()
    train(TrainConfig(run_dir=str(tmp_path / "full"), steps=200, **base), ippo, callbacks=[full])
    train(TrainConfig(run_dir=str(tmp_path / "split"), steps=80, **base), ippo, callbacks=[EpisodeCounter()])
    resumed = EpisodeCounter()
    train(TrainConfig(run_dir=str(tmp_path / "split"), resume=True, steps=200), callbacks=[resumed])
    rows = _metrics(tmp_path / "full")
    assert rows == _metrics(tmp_path / "split") and resumed.episodes == full.episodes > 0
    assert [r["eval/cb_episodes"] for r in rows if "eval/cb_episodes" in r][-1] == full.episodes
    assert any("train/cb_episodes" in r for r in rows) and full.hooks == {"on_step_start", "on_collect", "on_checkpoint"}


def test_set_policy_refuses_a_policy_that_does_not_fit_the_slot(tmp_path):
    """A swapped-in policy acts once on a dummy batch of the slot first: one for another game's
    spaces (9 actions where connect four has 7) is refused with one line, and the slot keeps
    its policy; a fitting one is taken."""
    from marl.trainer import Trainer

    cfg = TrainConfig(algo="ippo", env="pettingzoo.classic/connect_four_v3", policies="player_0=ippo player_1=random", num_envs=2,
                      workers=0, steps=64, eval_interval=0, wandb="disabled", progress=False, run_dir=str(tmp_path / "run"))
    ttt = VecEnv(envs.make_factory("pettingzoo.classic/tictactoe_v3"), 1, seed=0).spec.subset([1])
    with Trainer(cfg, ALGOS.get("ippo").make_config(rollout_len=8)) as t:
        before = t.policy("player_1")
        with pytest.raises(MarlError, match="the policy for slot 'player_1' does not fit this env's spaces") as info:
            t.set_policy("player_1", ALGOS.get("ippo").learner(ALGOS.get("ippo").make_config(), ttt, CPU).policy())
        assert "\n" not in str(info.value) and t.policy("player_1") is before
        fitting = RandomPolicy(t.spec.subset([1]), CPU, seed=5)
        t.set_policy("player_1", fitting)
        assert t.policy("player_1") is fitting


def first_legal(spec):
    """A `module:factory` policy for --policies: the first available action of each agent."""
    return Recorder(None)


def test_frozen_choices_module_factory_and_a_checkpoint_of_another_run(tmp_path, capsys):
    base = dict(algo="ippo", env="mpe2/simple_push_v3", env_kwargs={"max_cycles": 8}, steps=64, num_envs=4, workers=0,
                eval_interval=64, eval_episodes=4, wandb="disabled", progress=False)
    ippo = ALGOS.get("ippo").make_config(rollout_len=8, epochs=1)
    train(TrainConfig(policies="adversary=ippo agent=test_policies:first_legal", run_dir=str(tmp_path / "one"), **base), ippo)
    train(TrainConfig(policies=f"adversary={tmp_path / 'one'}#adversary agent=ippo", run_dir=str(tmp_path / "two"), **base), ippo)
    trained = load_checkpoint(tmp_path / "one" / "checkpoints" / "latest.pt")["slots"]["adversary"]["model"]
    frozen = load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.pt")["slots"]["adversary"]["policy"].state_dict()
    assert frozen and all(torch.equal(v, trained[k]) for k, v in frozen.items())
    for text, words in ((f"adversary={tmp_path / 'one'}#nosuch agent=ippo", "has no policy 'nosuch'"),
                        (f"adversary=ippo agent={tmp_path / 'one'}#adversary", "does not fit the agents"),
                        ("adversary=ippo agent=nosuchmodule:f", "ModuleNotFoundError")):
        with pytest.raises(MarlError) as info:
            train(TrainConfig(policies=text, run_dir=str(tmp_path / "bad"), **base), ippo)
        assert words in str(info.value) and not (tmp_path / "bad").exists()
