"""Registry-driven: every registered algorithm trains a few updates on every compatible
built-in env (and mpe2), and every trained run can be evaluated and rendered."""
import pytest

from marl import envs
from marl.algos import ALGOS
from marl.config import TrainConfig
from marl.core.errors import MarlError
from marl.core.vec import VecEnv
from marl.train import evaluate, train

SMALL_ENVS = {
    "builtin/identity": {},
    "builtin/grid": {"max_steps": 6},
    "builtin/target": {},
    "builtin/matrix_qtran": {},
    "mpe2/simple_spread_v3": {"max_cycles": 6},
    "gym/FrozenLake-v1": {"is_slippery": False},  # one agent, a Discrete observation: the single-agent and tabular names
}


def _compatible():
    for algo in ALGOS:
        for env, kw in SMALL_ENVS.items():
            vec = VecEnv(envs.make_factory(env, **kw), 1)
            spec = vec.spec
            vec.close()
            entry = ALGOS.get(algo)
            cfg = entry.make_config()
            try:
                cfg.validate(spec, 2)
            except MarlError:
                continue  # e.g. a tabular method on vector observations
            if (cfg.discrete if spec.discrete else cfg.continuous) and (spec.n_agents == 1 or not entry.multi_agent):
                yield algo, env, kw


@pytest.mark.parametrize("algo,env,kw", list(_compatible()))
def test_every_algorithm_runs_on_every_compatible_env(tmp_path, algo, env, kw):
    entry = ALGOS.get(algo)
    cfg = TrainConfig(algo=algo, env=env, env_kwargs=kw, steps=64, num_envs=2, eval_interval=64, eval_episodes=2,
                      run_dir=str(tmp_path / "run"), wandb="disabled", progress=False)
    algo_cfg = entry.make_config(**_small(entry))
    if getattr(algo_cfg, "reward", "agent") == "agent" and getattr(algo_cfg, "mixer", "none") not in ("none",):
        algo_cfg = entry.make_config(**_small(entry), reward="sum")
    out = train(cfg, algo_cfg)
    assert out["step"] >= 64 and "eval/return_mean" in out
    assert (tmp_path / "run" / "checkpoints").exists()


def _small(entry):
    fields = set(entry.config.__dataclass_fields__)
    small = {"rollout_len": 8}
    for name, value in {"batch_size": 2, "buffer_size": 16, "learning_starts": 1}.items():
        if name in fields:
            small[name] = value
    if "minibatches" in fields:  # at most the 16 samples of a rollout (ppo's preset splits SB3's 2048 into 32)
        small["minibatches"] = min(entry.make_config().minibatches, 2)
    return small


def test_evaluate_reports_returns_and_renders_a_video(tmp_path):
    cfg = TrainConfig(algo="mappo", env="mpe2/simple_spread_v3", env_kwargs={"max_cycles": 5}, steps=80, num_envs=2,
                      eval_interval=0, run_dir=str(tmp_path / "run"), wandb="disabled", progress=False)
    train(cfg, ALGOS.get("mappo").make_config(rollout_len=5))
    out = evaluate(str(tmp_path / "run"), episodes=3, video=str(tmp_path / "ep.gif"))
    assert out["eval/episodes"] == 3 and out["eval/length_mean"] == 5
    assert (tmp_path / "ep.gif").stat().st_size > 1000


def _conforms(obj, *protocols) -> list[str]:
    """What `obj` lacks of the protocols: a member, or a method whose parameters do not start
    with the protocol's (names compared unless positional-only; extra parameters of the
    implementation need defaults)."""
    import inspect

    problems = []
    for proto in protocols:
        for name in getattr(proto, "__annotations__", {}):
            if not hasattr(obj, name):
                problems.append(f"{proto.__name__}.{name} missing")
        for name, member in vars(proto).items():
            if name.startswith("_") or not callable(member):
                continue
            if not callable(getattr(obj, name, None)):
                problems.append(f"{proto.__name__}.{name}() missing")
                continue
            want = list(inspect.signature(member).parameters.values())[1:]  # without self
            have = list(inspect.signature(getattr(obj, name)).parameters.values())
            extra_ok = all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in have[len(want):])
            renamed = any(w.kind is not w.POSITIONAL_ONLY and w.name != h.name for w, h in zip(want, have))
            if len(have) < len(want) or renamed or not extra_ok:
                problems.append(f"{proto.__name__}.{name}{inspect.signature(member)} != {name}{inspect.signature(getattr(obj, name))}")
    return problems


@pytest.mark.parametrize("algo", ALGOS.names())
def test_every_algorithm_implements_the_learner_and_config_protocols(algo):
    """The registry's contract (marl.algos.registry): each registered config is an AlgoConfig
    and each learner a Learner (itself a marl.core.rollout.Policy), with the protocol's
    parameter names."""
    import torch

    from marl.algos.registry import AlgoConfig, Learner
    from marl.core.rollout import Policy

    entry = ALGOS.get(algo)
    vec = VecEnv(envs.make_factory("builtin/identity"), 2)
    cfg = entry.make_config(**({"reward": "sum"} if algo in ("vdn", "qmix", "qtran") else {}))
    learner = entry.learner(cfg, vec.spec, torch.device("cpu"), 0)
    vec.close()
    assert isinstance(cfg, AlgoConfig) and isinstance(learner, Learner)
    assert _conforms(cfg, AlgoConfig) == [] and _conforms(learner, Learner, Policy) == []


def test_protocol_check_names_what_is_missing():
    from marl.algos.registry import AlgoConfig, Learner

    class Partial:
        discrete = True

        def validate(self, spec):
            pass

        def act(self, obs, state, avail, alive, hidden, explore):
            pass

    assert not isinstance(Partial(), AlgoConfig) and not isinstance(Partial(), Learner)
    problems = _conforms(Partial(), AlgoConfig, Learner)
    assert "AlgoConfig.continuous missing" in problems and "Learner.update() missing" in problems
    assert any(p.startswith("AlgoConfig.validate") for p in problems)
