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
