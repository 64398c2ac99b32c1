"""GAE and running normalisation against hand-computed values."""
import pytest
import torch

from marl.algos.returns import RunningNorm, gae, normalize, per_agent_rewards, preserve_outputs

G, L = 0.9, 0.8


def _run(term, trunc, next_values):
    r = torch.tensor([1.0, 2.0, 3.0])
    v = torch.tensor([0.5, 1.0, 1.5])
    term, trunc = torch.tensor(term), torch.tensor(trunc)
    return gae(r, v, torch.tensor(next_values), term, term | trunc, G, L)


def test_gae_termination_does_not_bootstrap():
    # episode: steps 0,1,2, terminated at step 2; V(final obs) = 10 must be ignored
    adv, ret = _run([False, False, True], [False, False, False], [1.0, 1.5, 10.0])
    d2 = 3.0 - 1.5
    d1 = 2.0 + G * 1.5 - 1.0
    d0 = 1.0 + G * 1.0 - 0.5
    a2 = d2
    a1 = d1 + G * L * a2
    a0 = d0 + G * L * a1
    torch.testing.assert_close(adv, torch.tensor([a0, a1, a2]))
    torch.testing.assert_close(ret, adv + torch.tensor([0.5, 1.0, 1.5]))


def test_gae_truncation_bootstraps_from_final_observation():
    adv, _ = _run([False, False, False], [False, False, True], [1.0, 1.5, 10.0])
    d2 = 3.0 + G * 10.0 - 1.5
    d1 = 2.0 + G * 1.5 - 1.0
    d0 = 1.0 + G * 1.0 - 0.5
    torch.testing.assert_close(adv[2], torch.tensor(d2))
    torch.testing.assert_close(adv[0], torch.tensor(d0 + G * L * (d1 + G * L * d2)))


def test_gae_trace_is_cut_between_episodes():
    # step 0 ends an episode (truncated); step 1 starts a new one: A_0 must not see A_1
    r = torch.tensor([1.0, 5.0])
    v = torch.tensor([0.0, 0.0])
    nv = torch.tensor([2.0, 0.0])  # V(final obs of episode 1) = 2
    term = torch.tensor([False, True])
    ended = torch.tensor([True, True])
    adv, _ = gae(r, v, nv, term, ended, G, L)
    torch.testing.assert_close(adv, torch.tensor([1.0 + G * 2.0, 5.0]))


def test_gae_lambda_one_is_discounted_return_minus_value():
    r = torch.tensor([1.0, 1.0, 1.0])
    v = torch.tensor([0.3, 0.2, 0.1])
    nv = torch.tensor([0.2, 0.1, 0.0])
    term = torch.tensor([False, False, True])
    adv, ret = gae(r, v, nv, term, term, G, 1.0)
    torch.testing.assert_close(ret, torch.tensor([1 + G + G * G, 1 + G, 1.0]))


def test_normalize_ignores_masked_entries():
    x = torch.tensor([1.0, 3.0, 100.0])
    out = normalize(x, torch.tensor([True, True, False]))
    torch.testing.assert_close(out[:2], torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)


def test_running_norm_matches_batch_statistics():
    norm = RunningNorm()
    data = torch.randn(1000) * 3 + 2
    for chunk in data.chunk(7):
        norm.update(chunk)
    torch.testing.assert_close(norm.mean, data.mean(), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.var, data.var(unbiased=False), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(norm.denormalize(norm.normalize(data)), data, atol=1e-4, rtol=0)


def test_per_agent_rewards_modes():
    r = torch.tensor([[1.0, 2.0, 0.0]])
    assert per_agent_rewards(r, "agent") is r
    assert per_agent_rewards(r, "sum").tolist() == [[3.0, 3.0, 3.0]]
    assert per_agent_rewards(r, "mean").tolist() == [[1.0, 1.0, 1.0]]


def test_popart_keeps_denormalised_outputs():
    """After the statistics move, the rescaled layer predicts the same denormalised values."""
    from marl.nets import AgentNet

    torch.manual_seed(0)
    net = AgentNet(6, 1, hidden=(8,), groups=[0, 1])
    norm = RunningNorm()
    norm.update(torch.randn(50) * 3 + 1)
    x = torch.randn(5, 2, 6)
    before = norm.denormalize(net(x)[0])
    old_mean, old_std = norm.mean.clone(), norm.std
    norm.update(torch.randn(200) * 40 - 150)
    assert not torch.allclose(norm.denormalize(net(x)[0]), before)  # without the rescale values jump
    preserve_outputs(net.output_layer, old_mean, old_std, norm.mean, norm.std)
    torch.testing.assert_close(norm.denormalize(net(x)[0]), before, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_flat_optimiser_trains_like_torch_optim_on_separate_tensors(kind):
    """`flatten` puts parameters and gradients into one buffer each; our Adam / RMSprop and
    gradient clipping over it give the same parameters, step by step, as torch.optim and
    torch's clipping over the separate tensors (also after a learning-rate change and a
    state-dict round trip), and loading a module state dict writes into the buffer."""
    import copy

    from marl.algos.optim import OPTIMISERS, clip_grad_norm, flatten

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    net = copy.deepcopy(ref)
    flat = flatten(net.parameters())
    assert all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for p in net.parameters())
    torch_opt = {"adam": lambda ps: torch.optim.Adam(ps, lr=0.05, eps=1e-5, foreach=False),
                 "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.05, alpha=0.99, eps=1e-5, foreach=False)}[kind]
    opt_ref, opt = torch_opt(list(ref.parameters())), OPTIMISERS[kind]([flat], 0.05, eps=1e-5)
    x = torch.randn(16, 4)
    for step in range(6):
        if step == 3:  # anneal, and carry the state over into a fresh optimiser
            opt_ref.param_groups[0]["lr"] = opt.lr = 0.02
            fresh = OPTIMISERS[kind]([flat], 0.05, eps=1e-5)
            fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
            opt = fresh
        opt_ref.zero_grad()
        ref(x).square().sum().backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt_ref.step()
        opt.zero_grad()
        net(x).square().sum().backward()
        norm = clip_grad_norm([flat], 1.0)
        opt.step()
        assert norm > 1.0  # the clip was active
        torch.testing.assert_close(norm, ref_norm)
        for a, b in zip(ref.parameters(), net.parameters()):
            # Not bitwise: one norm over the buffer sums in another order, and RMSprop's first steps
            # (g / sqrt(0.01 g^2)) amplify that rounding to ~1e-6 on some CPUs; a wrong step is ~1e-3 off.
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    net.load_state_dict(copy.deepcopy(ref).state_dict() | {"0.bias": torch.full((8,), 3.0)})
    assert (flat[4 * 8:4 * 8 + 8] == 3.0).all()


@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_flat_optimiser_continues_from_torch_optim_state(kind):
    """Checkpoints written before FlatOptimizer hold torch.optim state: loading it continues
    the run as torch.optim itself would."""
    from marl.algos.optim import OPTIMISERS

    torch.manual_seed(0)
    target, w_ref = torch.randn(10), torch.randn(10, requires_grad=True)
    torch_opt = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[kind]([w_ref], lr=0.05, eps=1e-5, foreach=False)
    pairs = [(w_ref, torch_opt)]
    for step in range(6):
        if step == 3:
            w = w_ref.detach().clone().requires_grad_(True)
            opt = OPTIMISERS[kind]([w], 0.1, eps=1e-5)
            opt.load_state_dict(torch_opt.state_dict())
            assert (opt.lr, opt.steps) == (0.05, 3)
            pairs.append((w, opt))
        for p, o in pairs:
            o.zero_grad()
            (p - target).pow(4).sum().backward()
            o.step()
    torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=1e-7)


def test_no_private_torch_functions():
    """The package accepts any torch >= 2.2: private functions (torch._foreach_*, ...) may change
    between releases, so marl and envs use public ops only."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    uses = [f"{path.relative_to(root)}:{i}" for pkg in ("marl", "envs") for path in sorted((root / pkg).rglob("*.py"))
            for i, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"torch\._[a-z]\w*\(", line.split("#")[0])]
    assert not uses, uses


def test_optimiser_choices_are_the_registered_optimisers():
    import typing

    from marl.algos.optim import OPTIMISERS
    from marl.algos.qlearning import QConfig
    from marl.configio import field_types

    assert set(typing.get_args(field_types(QConfig)["optimiser"])) == set(OPTIMISERS)
