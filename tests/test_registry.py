"""Registry-driven: every registered algorithm trains a few updates on every compatible
built-in env (and mpe2), and every trained run can be evaluated and rendered."""
import pytest

from marl import envs
from marl.algos import ALGOS
from marl.config import TrainConfig
from marl.core.vec import VecEnv
from marl.train import evaluate, train

SMALL_ENVS = {
    "builtin/identity": {},
    "builtin/grid": {"max_steps": 6},
    "builtin/target": {},
    "builtin/matrix_qtran": {},
    "mpe2/simple_spread_v3": {"max_cycles": 6},
}


def _compatible():
    for algo in ALGOS:
        for env, kw in SMALL_ENVS.items():
            vec = VecEnv(envs.make_factory(env, **kw), 1)
            spec = vec.spec
            vec.close()
            cfg = ALGOS.get(algo).make_config()
            if (cfg.discrete if spec.discrete else cfg.continuous):
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
    return small


def test_evaluate_reports_returns_and_renders_a_video(tmp_path):
    cfg = TrainConfig(algo="mappo", env="mpe2/simple_spread_v3", env_kwargs={"max_cycles": 5}, steps=80, num_envs=2,
                      eval_interval=0, run_dir=str(tmp_path / "run"), wandb="disabled", progress=False)
    train(cfg, ALGOS.get("mappo").make_config(rollout_len=5))
    out = evaluate(str(tmp_path / "run"), episodes=3, video=str(tmp_path / "ep.gif"))
    assert out["eval/episodes"] == 3 and out["eval/length_mean"] == 5
    assert (tmp_path / "ep.gif").stat().st_size > 1000
