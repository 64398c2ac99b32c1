"""The `marl` command end to end, with the real trainer on the tiny built-in env `builtin/identity`.

Every user mistake must end in exit code 2 with ONE stderr line `error: <problem>; <fix>` and leave
existing run files untouched. The envs below are real PettingZoo envs reached through the
`module.path:factory` form (`tests.test_cli:...`, importable with the repo root on the path).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from marl import envs
from marl.envs.builtin.identity import Identity
from marl.algos import ALGOS
from marl.algos.onpolicy import OnPolicyConfig
from marl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from marl.cli import load_run_config, main
from marl.config import TrainConfig
from marl.configio import field_docs, load_yaml, save_yaml
from marl.logging import read_metrics

ROOT = Path(__file__).resolve().parent.parent
HERE = "tests.test_cli"  # module path of the env factories below
SMALL = ["--env", "builtin/identity", "--steps", "512", "--num-envs", "4", "--rollout-len", "16",
         "--eval-interval", "256", "--eval-episodes", "4", "--wandb", "disabled", "--progress", "false",
         "--device", "cpu"]


# ----------------------------------------------------------------------------- real tiny envs
class TupleActionEnv(ParallelEnv):
    """A valid two-agent PettingZoo env whose actions are Tuple(Discrete(2), Discrete(3)): unsupported by marl."""

    metadata = {"name": "tuple_action", "render_modes": []}
    render_mode = None

    def __init__(self, episode_len: int = 4):
        self.possible_agents = ["agent_0", "agent_1"]
        self.agents: list[str] = []
        self.episode_len, self.t = episode_len, 0
        self._obs = spaces.Box(0.0, 1.0, (2,), np.float32)
        self._act = {a: spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))) for a in self.possible_agents}

    def observation_space(self, agent):
        return self._obs

    def action_space(self, agent):
        return self._act[agent]

    def reset(self, seed=None, options=None):
        self.agents, self.t = list(self.possible_agents), 0
        return {a: np.zeros(2, np.float32) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        agents, self.t = self.agents, self.t + 1
        done = self.t >= self.episode_len
        self.agents = [] if done else agents
        obs = {a: np.full(2, self.t / self.episode_len, np.float32) for a in agents}
        rewards = {a: float(actions[a][0] == 1) + float(actions[a][1] == 2) for a in agents}
        return obs, rewards, dict.fromkeys(agents, False), dict.fromkeys(agents, done), {a: {} for a in agents}


class FlakyIdentity(Identity):
    """builtin/identity whose step raises at step `fail_at` of the env's 2nd episode
    (RuntimeError, or KeyboardInterrupt when `interrupt`, as a Ctrl-C during stepping)."""

    def __init__(self, fail_at: int = 5, interrupt: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.fail_at, self.interrupt, self.finished = fail_at, interrupt, 0

    def step(self, actions):
        if self.finished == 1 and self.t + 1 == self.fail_at:
            if self.interrupt:
                raise KeyboardInterrupt
            raise RuntimeError("sensor glitch")
        out = super().step(actions)
        self.finished += not self.agents
        return out


class FlakyInEvaluation(Identity):
    """builtin/identity whose step raises at step `fail_at` after its 2nd reset with a seed. Only
    evaluation envs get there (every evaluation reseeds them; training envs are seeded once):
    in the run's 2nd evaluation."""

    def __init__(self, fail_at: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.fail_at, self.seeded = fail_at, 0

    def reset(self, seed=None, options=None):
        self.seeded += seed is not None
        return super().reset(seed=seed, options=options)

    def step(self, actions):
        if self.seeded >= 2 and self.t + 1 == self.fail_at:
            raise RuntimeError("sensor glitch")
        return super().step(actions)


# ----------------------------------------------------------------------------- helpers
def train(run_dir: Path, *extra: str) -> int:
    return main(["train", *SMALL, "--run-dir", str(run_dir), *extra])


def fails(capsys, argv: list[str], *expected: str) -> str:
    """main(argv) exits 2 with one stderr line `error: problem; fix` holding every `expected` text."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("error: ") and "; " in line, line  # the problem, then the fix
    for text in expected:
        assert text in line, (text, line)
    return line


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def steps_of(run_dir: Path, key: str) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if key in r]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One real short run (512 steps, checkpoints every 128) shared by the read-only tests."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert train(run_dir, "--checkpoint-interval", "128") == 0
    return run_dir


# ----------------------------------------------------------------------------- positive paths
def test_train_help_lists_algorithms_env_forms_and_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for name in ("mappo", "ippo", "maa2c", "ia2c"):
        assert name in ALGOS.names() and f"\n  {name} " in out and ALGOS.get(name).summary in flat
    for form in envs.ENV_FORMS:
        assert form.split()[0] in out
    assert "builtin/identity" in out
    for cls in (TrainConfig, OnPolicyConfig):
        for name, doc in field_docs(cls).items():
            flag = "--" + name.replace("_", "-")
            first_words = " ".join(doc.split()[:4])
            assert f"{flag} " in out and first_words in flat, (flag, first_words)


def test_short_run_writes_config_metrics_and_checkpoint(run):
    saved_run, saved_algo = load_run_config(run / "config.yaml")
    assert (saved_run["algo"], saved_run["env"], saved_run["steps"]) == ("mappo", "builtin/identity", 512)
    assert saved_algo["rollout_len"] == 16 and saved_algo["critic"] == "central"  # mappo preset kept
    records = read_metrics(run)
    assert all(isinstance(r["step"], int) and isinstance(r["time_s"], float) for r in records)
    keys = set().union(*records)
    assert {"train/return_mean", "eval/return_mean", "perf/steps_per_s", "loss/policy"} <= keys
    assert steps_of(run, "eval/return_mean") == [0, 256, 512]
    evals = [r for r in records if "eval/return_mean" in r]  # when the evaluated policy was taken: at or before the row
    assert all(0 <= r["perf/eval_policy_time_s"] <= r["time_s"] for r in evals)
    assert [r["perf/eval_policy_time_s"] for r in evals] == sorted(r["perf/eval_policy_time_s"] for r in evals)
    assert steps_of(run, "train/return_mean")[-1] == 512
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == 512 and ckpt["updates"] == 8 and ckpt["config"]["train"]["steps"] == 512
    assert latest_checkpoint(run).name == "latest.pt"


def test_evaluate_run_dir_and_checkpoint_file(run, capsys):
    capsys.readouterr()
    for target in (run, run / "checkpoints" / "latest.pt"):
        assert main(["evaluate", "--checkpoint", str(target), "--episodes", "4", "--device", "cpu"]) == 0
        lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
        assert lines["eval/episodes"] == "4" and lines["eval/length_mean"] == "8"
        assert 0.0 <= float(lines["eval/return_mean"]) <= 16.0  # 2 agents x 8 steps x reward <= 1
        assert {"eval/return_agent_0", "eval/return_agent_1"} <= set(lines)
    fails(capsys, ["evaluate", "--checkpoint", str(run), "--seed", "-1", "--device", "cpu"], "seed must be >= 0", "--seed 0")


def test_evaluate_a_recurrent_checkpoint(tmp_path, capsys):
    """evaluate checks the saved config as training did (recurrent: minibatches <= envs)."""
    run_dir = tmp_path / "rec"
    assert train(run_dir, "--recurrent", "true", "--minibatches", "2") == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run_dir), "--episodes", "4", "--device", "cpu"]) == 0
    assert "eval/return_mean: " in capsys.readouterr().out


def test_config_file_reproduces_a_run(run, tmp_path):
    assert main(["train", "--config", str(run / "config.yaml"), "--run-dir", str(tmp_path / "again")]) == 0
    old_run, old_algo = load_run_config(run / "config.yaml")
    new_run, new_algo = load_run_config(tmp_path / "again" / "config.yaml")
    assert {**old_run, "run_dir": ""} == {**new_run, "run_dir": ""} and old_algo == new_algo
    # flags override the file
    assert main(["train", "--config", str(run / "config.yaml"), "--run-dir", str(tmp_path / "b"),
                 "--lr", "1e-3", "--steps", "128"]) == 0
    b_run, b_algo = load_run_config(tmp_path / "b" / "config.yaml")
    assert b_algo == {**old_algo, "lr": 1e-3} and b_run["steps"] == 128 and b_run["seed"] == old_run["seed"]


def test_resume_with_more_steps_continues_from_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "256", "--checkpoint-interval", "128") == 0
    assert load_checkpoint(run_dir)["step"] == 256
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--steps", "512", "--progress", "false"]) == 0
    ckpt = load_checkpoint(run_dir)
    assert ckpt["step"] == 512 and ckpt["updates"] == 8  # 4 updates before, 4 after: not restarted from 0
    for key in ("train/return_mean", "eval/return_mean", "loss/policy"):
        steps = steps_of(run_dir, key)
        assert steps == sorted(set(steps)) and steps[-1] == 512, (key, steps)  # increasing, no duplicates
    assert steps_of(run_dir, "eval/return_mean") == [0, 256, 512]
    saved_run, _ = load_run_config(run_dir / "config.yaml")
    assert saved_run["steps"] == 512 and saved_run["checkpoint_interval"] == 128 and saved_run["resume"] is False
    # the resumed run's config starts a fresh run elsewhere (it does not carry `resume: true` along)
    assert main(["train", "--config", str(run_dir / "config.yaml"), "--run-dir", str(tmp_path / "copy"), "--steps", "128"]) == 0


def test_sharing_groups_and_typed_flags_on_a_two_agent_env(tmp_path):
    assert train(tmp_path / "run", "--algo", "ippo", "--sharing", "0,1", "--steps", "128", "--hidden", "32,16",
                 "--env-kwargs", "n_actions=3,episode_len=4", "--norm-adv", "false") == 0
    saved_run, saved_algo = load_run_config(tmp_path / "run" / "config.yaml")
    assert saved_run["env_kwargs"] == {"n_actions": 3, "episode_len": 4}
    assert (saved_algo["sharing"], saved_algo["hidden"], saved_algo["norm_adv"], saved_algo["critic"]) == ([0, 1], [32, 16], False, "local")
    model = load_checkpoint(tmp_path / "run")["model"]
    assert tuple(model["actor.body.net.0.weight"].shape) == (2, 3 + 2, 32)  # a weight set per group; obs + agent id
    assert tuple(model["actor.body.net.6.weight"].shape) == (2, 16, 3)  # after 2 x (linear, LayerNorm, act)


@pytest.mark.parametrize("algo", ["mappo", "qmix"])
def test_sharing_none_flag_gives_one_network_per_agent(algo, tmp_path):
    assert train(tmp_path / "run", "--algo", algo, "--sharing", "none", "--reward", "sum", "--steps", "64", "--env-kwargs", "episode_len=4") == 0
    assert load_run_config(tmp_path / "run" / "config.yaml")[1]["sharing"] == "none"
    model = load_checkpoint(tmp_path / "run")["model"]
    first = next(k for k in model if k.endswith("net.0.weight"))
    assert model[first].shape[0] == 2  # the identity env has two agents


# ----------------------------------------------------------------------------- bad inputs: exit 2, one line
BAD_INPUTS = {
    "unknown algorithm": (["--algo", "no-such-algo"], ["unknown algorithm 'no-such-algo'", "mappo"]),
    "unknown env": (["--env", "mpe2/simple_sprad_v3"], ["unknown env 'mpe2/simple_sprad_v3'", "did you mean mpe2/simple_spread_v3"]),
    "zero lr": (["--lr", "0"], ["lr must be positive", "--lr"]),
    "negative lr": (["--lr", "-0.001"], ["lr must be positive", "--lr"]),
    "negative clip": (["--clip", "-0.1"], ["clip", ">= 0", "--clip"]),
    "minibatches > rollout": (["--minibatches", "65"], ["minibatches (65) exceed the 64 samples", "--minibatches"]),
    "zero steps": (["--steps", "0"], ["--steps must be > 0"]),
    "negative seed": (["--seed", "-1"], ["seed must be >= 0", "--seed 0"]),
    "unsupported spaces": (["--env", f"{HERE}:TupleActionEnv"], [f"env '{HERE}:TupleActionEnv'", "Tuple", "not supported", "Discrete"]),
    "no cuda": (["--device", "cuda"], ["CUDA is not available", "--device cpu"]),
    "algorithm that cannot handle the env's action space": (
        ["--algo", "qmix", "--env", "builtin/target"],
        ["qmix cannot handle the continuous actions of env 'builtin/target'", "pick an algorithm for continuous actions"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_no_run_dir(case, tmp_path, capsys):
    argv, expected = BAD_INPUTS[case]
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fails(capsys, ["train", *SMALL, "--run-dir", str(tmp_path / "run"), *argv], *expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--steps", "lots"], "--steps expects int"), (["--norm-adv", "maybe"], "--norm-adv expects bool"),
    (["--env-kwargs", "N"], "--env-kwargs expects dict"), (["--device", "tpu"], "device 'tpu' is not understood"),
    (["--sharing", "0,1,2"], "sharing has 3 group ids but the env has 2 agents"),
])
def test_bad_flag_values_exit_2(argv, expected, tmp_path, capsys):
    fails(capsys, ["train", *SMALL, "--run-dir", str(tmp_path / "run"), *argv], expected)
    assert not (tmp_path / "run").exists()


CHOICES = [("mappo", "--critic", "local,central", "centrl"), ("mappo", "--critic-net", "sets,mlp", "deepsets"),
           ("ippo", "--reward", "agent,sum,mean", "team"), ("mappo", "--activation", "tanh,relu", "gelu"),
           ("qmix", "--returns", "q_lambda,td_lambda,nstep", "mc"), ("qmix", "--optimiser", "adam,rmsprop", "sgd"),
           ("vdn", "--reward", "agent,sum,mean", "none")]


@pytest.mark.parametrize("algo, opt, choices, bad", CHOICES)
def test_choice_flags_list_their_choices_and_refuse_others(algo, opt, choices, bad, tmp_path, capsys):
    """A choice field is a Literal: --help lists the choices, any other value is one error line
    (exit 2) naming the flag and the choices, before a run directory exists."""
    with pytest.raises(SystemExit):
        main(["train", "--algo", algo, "--help"])
    assert f"{opt} {{{choices}}}" in capsys.readouterr().out
    quoted = " | ".join(f"'{c}'" for c in choices.split(","))
    fails(capsys, ["train", *SMALL, "--algo", algo, "--run-dir", str(tmp_path / "run"), opt, bad], f"{opt} expects {quoted}", repr(bad))
    assert not (tmp_path / "run").exists()


def test_choice_fields_are_checked_for_configs_built_in_python(tmp_path):
    from marl.core.errors import MarlError
    from marl.train import train as train_run

    cfg = TrainConfig(env="builtin/identity", steps=64, num_envs=2, workers=0, wandb="disabled", progress=False, run_dir=str(tmp_path / "run"))
    with pytest.raises(MarlError, match=re.escape("--critic expects 'local' | 'central', got 'centrl'")):
        train_run(cfg, ALGOS.get("mappo").make_config(critic="centrl"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tuple_env_is_a_valid_pettingzoo_env():
    from pettingzoo.test import parallel_api_test

    parallel_api_test(envs.make(f"{HERE}:TupleActionEnv"), num_cycles=10)  # the env is fine; marl refuses its spaces


def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lbforaging", None)  # `import lbforaging` raises ImportError
    fails(capsys, ["train", *SMALL, "--env", "lbforaging/Foraging-8x8-2p-3f-v3", "--run-dir", str(tmp_path / "run")],
          "needs lbforaging", "pip install 'marl[lbf]'")
    assert not (tmp_path / "run").exists()


def test_existing_run_is_refused_and_untouched_then_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "128") == 0
    before = snapshot(run_dir)
    fails(capsys, ["train", *SMALL, "--run-dir", str(run_dir)], "already holds a run", "--resume", "--overwrite")
    assert snapshot(run_dir) == before
    assert train(run_dir, "--steps", "256", "--seed", "7", "--overwrite") == 0
    assert steps_of(run_dir, "eval/return_mean") == [0, 256]  # the old log is gone, not appended to
    assert load_run_config(run_dir / "config.yaml")[0]["seed"] == 7 and load_checkpoint(run_dir)["step"] == 256
    assert not (run_dir / "checkpoints" / "step_128.pt").exists()
    # the config of an overwritten run does not carry `overwrite: true`: reusing it cannot wipe a run
    before = snapshot(run_dir)
    fails(capsys, ["train", "--config", str(run_dir / "config.yaml")], f"run directory {run_dir} already holds a run")
    assert snapshot(run_dir) == before


def test_resume_without_a_checkpoint(run, tmp_path, capsys):
    """A run whose checkpoints are gone: the hint names a fix that keeps its metrics.jsonl."""
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "128") == 0
    shutil.rmtree(run_dir / "checkpoints")
    before = snapshot(run_dir)
    fails(capsys, ["train", "--resume", "--run-dir", str(run_dir), "--steps", "1024"],
          f"run directory {run_dir} has no checkpoint to resume from", "another --run-dir",
          "--overwrite would replace this one, its metrics.jsonl included")
    assert snapshot(run_dir) == before
    fails(capsys, ["train", "--resume", "--run-dir", str(tmp_path / "empty")], "holds no run to resume", "drop --resume")
    copied = tmp_path / "copied"  # a config.yaml alone is not a run
    copied.mkdir()
    (copied / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    fails(capsys, ["train", "--resume", "--run-dir", str(copied)], "holds no run to resume")


def test_damaged_checkpoints_fall_back_to_the_newest_that_loads(tmp_path, capsys):
    """latest.pt is an independent copy: truncating it and the newest step file leaves the
    step before, which resume and evaluate use with one note line. When none loads, one whole
    error line (no word cut) and the run directory as it was."""
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "256", "--checkpoint-interval", "128") == 0
    folder = run_dir / "checkpoints"
    assert (folder / "latest.pt").stat().st_ino != (folder / "step_256.pt").stat().st_ino  # not a hard link
    for name in ("latest.pt", "step_256.pt"):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])  # cut short in place
    assert load_checkpoint(folder / "step_128.pt")["step"] == 128  # the other copy took no damage
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(folder / "latest.pt"), "--episodes", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    note = out.err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("note: latest.pt, step_256.pt in") and note[0].endswith("using step_128.pt (step 128)"), note
    assert "eval/return_mean" in out.out
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--steps", "384"]) == 0
    assert load_checkpoint(folder / "latest.pt")["step"] == 384
    # rows logged after step 128 were cut back and logged again by the resumed run, once each
    assert steps_of(run_dir, "train/return_mean") == [384] and steps_of(run_dir, "eval/return_mean") == [0, 256, 384]
    for path in folder.glob("*.pt"):
        path.write_bytes(path.read_bytes()[:100])
    before = snapshot(run_dir)
    for argv in (["train", "--resume", "--run-dir", str(run_dir), "--steps", "512"],
                 ["evaluate", "--checkpoint", str(run_dir), "--device", "cpu"]):
        line = fails(capsys, argv, f"checkpoint {folder / 'latest.pt'} is corrupt", "checkpoints/latest.pt")
        reason = line.split("(RuntimeError: ", 1)[1].rsplit(" ...)", 1)[0]
        with pytest.raises(RuntimeError) as info:
            torch.load(folder / "latest.pt", weights_only=False)
        full = " ".join(str(info.value).split())
        assert full.startswith(reason) and full[len(reason)] in " .,;:", (reason, full)  # cut between words
    assert snapshot(run_dir) == before  # config.yaml and metrics.jsonl as they were
    fails(capsys, ["evaluate", "--checkpoint", str(tmp_path / "missing.pt")], "is missing")


def test_runs_saved_before_an_option_existed_load_as_they_were_built(tmp_path, capsys):
    """A MAPPO run written before `critic_net` existed has no such key and an MLP critic:
    evaluate and resume rebuild that critic (OnPolicyConfig.saved_defaults). A checkpoint
    whose networks do not fit the config is one line, not a traceback."""
    run_dir = tmp_path / "old"
    assert train(run_dir, "--critic-net", "mlp") == 0
    evaluate = ["evaluate", "--checkpoint", str(run_dir), "--episodes", "4", "--device", "cpu"]
    capsys.readouterr()
    assert main(evaluate) == 0
    before = capsys.readouterr().out
    latest = latest_checkpoint(run_dir)
    ckpt = load_checkpoint(latest)
    del ckpt["config"]["algo"]["critic_net"]
    save_checkpoint(latest, ckpt)
    config = load_yaml(run_dir / "config.yaml")
    del config["algo"]["critic_net"]
    save_yaml(run_dir / "config.yaml", config)
    assert main(evaluate) == 0 and capsys.readouterr().out == before
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--steps", "640"]) == 0
    assert load_checkpoint(latest_checkpoint(run_dir))["config"]["algo"]["critic_net"] == "mlp"
    ckpt = load_checkpoint(latest)
    ckpt["model"].pop("critic.body.net.0.bias")
    save_checkpoint(latest, ckpt)
    fails(capsys, evaluate, "does not fit the networks", "critic.body.net.0.bias", "with the marl version that wrote it")


def test_env_raising_mid_episode_keeps_the_last_checkpoint(tmp_path):
    """Through the real entry point (`python scripts/train.py`): exit 2 and exactly one stderr line."""
    run_dir = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "scripts" / "train.py"), "train", *SMALL, "--run-dir", str(run_dir),
            "--env", f"{HERE}:FlakyIdentity", "--env-kwargs", "episode_len=20,fail_at=5",
            "--eval-interval", "0", "--checkpoint-interval", "64"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr
    line = err[0]
    # 16 steps per env per update: the 2nd episode (env steps 21..40) fails at its step 5 in the 2nd rollout
    for text in (f"env '{HERE}:FlakyIdentity'", "RuntimeError: sensor glitch", "at episode step 5",
                 "agents ['agent_0', 'agent_1']", "; fix the env"):
        assert text in line, (text, line)
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    assert ckpt["step"] == 64 and ckpt["updates"] == 1
    assert (run_dir / "config.yaml").is_file()


def test_env_raising_in_background_evaluation_keeps_the_last_checkpoint(tmp_path, capsys):
    """The evaluation at step 256 runs in the background process (--workers 2); its env error
    reaches the training process as the same one line, and the checkpoint of step 256 stays."""
    run_dir = tmp_path / "run"
    line = fails(capsys, ["train", *SMALL, "--run-dir", str(run_dir), "--env", f"{HERE}:FlakyInEvaluation",
                          "--checkpoint-interval", "256", "--workers", "2"],
                 f"env '{HERE}:FlakyInEvaluation'", "RuntimeError: sensor glitch", "at episode step 3", "; fix the env")
    assert "exited unexpectedly" not in line
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 256
    assert steps_of(run_dir, "eval/return_mean") == [0]


def test_ctrl_c_while_stepping_exits_130_and_keeps_the_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        # the env raises KeyboardInterrupt itself, so it must run in this process (--workers 0)
        train(run_dir, "--env", f"{HERE}:FlakyIdentity", "--env-kwargs", "episode_len=20,fail_at=5,interrupt=true",
              "--eval-interval", "0", "--checkpoint-interval", "64", "--workers", "0")
    assert info.value.code == 130
    assert f"--resume --run-dir {run_dir}" in capsys.readouterr().err
    assert load_checkpoint(run_dir)["step"] == 64


def test_diverging_training_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, capsys):
    """A learning rate of 100 drives the loss to NaN after a few updates: the run stops instead of
    training on NaN, and the checkpoints written before the divergence are finite."""
    run_dir = tmp_path / "run"
    argv = ["train", *SMALL, "--algo", "ippo", "--run-dir", str(run_dir), "--steps", "4096",
            "--checkpoint-interval", "64", "--lr", "100"]
    line = fails(capsys, argv, "training diverged", "non-finite", "--lr")
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None and all(torch.isfinite(v).all() for v in load_checkpoint(ckpt)["model"].values() if v.is_floating_point())
    assert f"the run keeps its checkpoint of step {load_checkpoint(ckpt)['step']} (continue with --resume)" in line
    # diverging before the first checkpoint: the hint does not promise one
    fails(capsys, [*argv[:-2], "--lr", "1e30", "--checkpoint-interval", "100000", "--run-dir", str(tmp_path / "early")],
          "training diverged", "the run has no checkpoint yet")
