"""Run directories, checkpoints and resume under hostile conditions, through the real `marl`
command: foreign files next to a run, a second writer, SIGKILL, damaged or deleted checkpoints,
a full disk, flags given to --resume."""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from marl.envs.builtin.identity import Identity
from marl.checkpoint import load_checkpoint
from marl.cli import main
from marl.logging import read_metrics
from tests.test_cli import HERE, SMALL, fails, snapshot, steps_of, train

ROOT = Path(__file__).resolve().parent.parent
FAST = [*SMALL, "--workers", "0"]
ME = "tests.test_reliability"  # module path of the env factories below


# ----------------------------------------------------------------------------- faulty envs
class FaultyIdentity(Identity):
    """builtin/identity whose step `at` of the first episode returns `value` as agent_1's
    reward (`field="reward"`), as one float of its observation (`field="obs"`), or an
    observation of `size` floats instead of 4 (`field="shape"`)."""

    def __init__(self, field: str = "reward", value: float = float("nan"), at: int = 3, size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.field, self.value, self.at, self.size, self.episodes = field, value, at, size, 0

    def reset(self, seed=None, options=None):
        self.episodes += 1
        return super().reset(seed=seed, options=options)

    def step(self, actions):
        obs, rew, term, trunc, infos = super().step(actions)
        if self.episodes == 1 and self.t == self.at:
            if self.field == "reward":
                rew["agent_1"] = self.value
            elif self.field == "obs":
                obs["agent_1"][2] = self.value
            else:
                obs["agent_1"] = np.zeros(self.size, np.float32)
        return obs, rew, term, trunc, infos


def broken_factory(**kwargs):
    """A user's factory that fails the way user code does."""
    raise FileNotFoundError("[Errno 2] No such file or directory: 'maps/arena.txt'")


def cli(*argv: str, tmp: Path | None = None, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    """`python -m marl.cli ...` in a new process group (killed as a whole), repository first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **(env_extra or {})}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return subprocess.Popen([sys.executable, "-m", "marl.cli", *argv], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(cond, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without what depends on the clock."""
    return [{k: v for k, v in r.items() if k != "time_s" and not k.startswith("perf/")} for r in read_metrics(run_dir)]


# ----------------------------------------------------------------------------- 1. --overwrite
def test_overwrite_never_deletes_files_marl_did_not_write(tmp_path, capsys):
    project = tmp_path / "project"  # a user's folder that happens to hold a config.yaml and a metrics.jsonl
    (project / "data").mkdir(parents=True)
    for name, text in {"config.yaml": "lr: 1\n", "metrics.jsonl": "{}\n", "notes.txt": "mine", "data/results.csv": "1,2"}.items():
        (project / name).write_text(text)
    before = snapshot(project)
    for extra in ([], ["--overwrite"]):
        fails(capsys, ["train", *FAST, "--run-dir", str(project), *extra], f"run directory {project} is not empty and holds no marl run",
              "pick a new or empty --run-dir")
        assert snapshot(project) == before
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "128", "--workers", "0") == 0
    assert (run_dir / ".marl-run").is_file()
    (run_dir / "notes.txt").write_text("the user's own notes")
    before = snapshot(run_dir)
    fails(capsys, ["train", *FAST, "--run-dir", str(run_dir), "--overwrite"], "also holds files marl did not write (notes.txt)",
          "move those files out")
    assert snapshot(run_dir) == before
    (run_dir / "notes.txt").unlink()
    assert train(run_dir, "--steps", "256", "--workers", "0", "--overwrite") == 0
    assert steps_of(run_dir, "eval/return_mean") == [0, 256] and load_checkpoint(run_dir)["step"] == 256


# ----------------------------------------------------------------------------- 2 + 5. lock, SIGKILL leftovers
def test_second_writer_is_refused_and_a_killed_run_leaves_nothing_behind(tmp_path, capsys):
    """A real second process holds the run: --overwrite and --resume are refused naming its PID.
    SIGKILL of its whole process group then leaves multiprocessing's pymp-* folder (and, when it
    lands in a checkpoint write, a temp file); the next run cleans both and resumes."""
    run_dir, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    proc = cli("train", *SMALL, "--steps", "100000000", "--checkpoint-interval", "64", "--log-interval", "64",
               "--workers", "2", "--run-dir", str(run_dir), tmp=tmp)
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "latest.pt").is_file(), proc=proc)
        before = (run_dir / "config.yaml").read_bytes()
        for extra in (["--overwrite"], ["--resume"]):
            fails(capsys, ["train", *FAST, "--run-dir", str(run_dir), *extra],
                  f"run directory {run_dir} is in use by another marl process (PID {proc.pid})", "wait for that run to finish")
        assert (run_dir / "config.yaml").read_bytes() == before and proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert list(tmp.glob("pymp-*")), "the killed run left no forkserver folder: nothing to clean"
    stale = run_dir / "checkpoints" / ".step_999.pt.4242.0badc0de.tmp"  # what a kill inside a checkpoint write leaves
    stale.write_bytes(b"")
    step = load_checkpoint(run_dir)["step"]
    resumed = cli("train", "--resume", "--run-dir", str(run_dir), "--steps", str(step + 128), tmp=tmp)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert load_checkpoint(run_dir)["step"] == step + 128
    assert not stale.exists() and not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert not list(tmp.glob("pymp-*"))
    for key in ("train/return_mean", "eval/return_mean"):
        steps = steps_of(run_dir, key)
        assert steps == sorted(set(steps)), (key, steps)  # rows logged after the checkpoint were not doubled


# ----------------------------------------------------------------------------- 3. hints after Ctrl-C
def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train(run_dir, "--env", f"{HERE}:FlakyIdentity", "--env-kwargs", "episode_len=20,fail_at=5,interrupt=true",
              "--eval-interval", "0", "--workers", "0")
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert "no checkpoint yet, so there is nothing to resume" in err and "--resume" not in err, err
    assert not (run_dir / "checkpoints").exists()
    fails(capsys, ["train", "--resume", "--run-dir", str(run_dir)], "has no checkpoint to resume from")
    # the hint's advice works: the same run again, --overwrite replacing what it wrote
    assert train(run_dir, "--steps", "128", "--workers", "0", "--overwrite") == 0


# ----------------------------------------------------------------------------- 6. metrics after resume
def test_resumed_metrics_hold_the_uninterrupted_rows_once_each(tmp_path):
    """Schedules not aligned with the checkpoints (log every 160, evaluate every 192, checkpoint
    every 128 env steps; 64 per update). Deleting the newest checkpoints and resuming from step
    256 logs exactly the rows of the uninterrupted run: none twice, none missing. The resume
    also changes --workers (a setting): the same envs, now stepped by two worker processes."""
    sched = ["--steps", "512", "--log-interval", "160", "--eval-interval", "192", "--checkpoint-interval", "128", "--workers", "0"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train(full, *sched) == 0
    assert train(cut, *sched) == 0
    for name in ("latest.pt", "step_512.pt", "step_384.pt"):
        (cut / "checkpoints" / name).unlink()
    assert main(["train", "--resume", "--run-dir", str(cut), "--workers", "2"]) == 0
    assert steps_of(full, "eval/return_mean") == [0, 192, 384, 512]
    assert rows(cut) == rows(full)


# ----------------------------------------------------------------------------- 7. full disk
def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC injected into the write of the second checkpoint (a real full filesystem needs
    root to mount): one line naming the disk and the space needed, the checkpoint of step 128
    intact, no temp file left; the run resumes once there is space."""
    run_dir = tmp_path / "run"
    fsync = os.fsync

    def full_disk(fd):
        if ".step_256.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    line = fails(capsys, ["train", *FAST, "--run-dir", str(run_dir), "--steps", "256", "--checkpoint-interval", "128"],
                 "no space left on the disk at /", f"to write a checkpoint into {run_dir / 'checkpoints'}", "MiB free",
                 "the run keeps its checkpoint of step 128 (continue with --resume)")
    assert "needs " in line
    monkeypatch.undo()
    assert load_checkpoint(run_dir)["step"] == 128
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest.pt", "step_128.pt"]
    assert main(["train", "--resume", "--run-dir", str(run_dir)]) == 0
    assert load_checkpoint(run_dir)["step"] == 256


def test_full_disk_while_logging_is_one_line(tmp_path, capsys, monkeypatch):
    """ENOSPC from the metrics.jsonl write after the checkpoint of step 128 (injected)."""
    import builtins

    import marl.logging

    run_dir = tmp_path / "run"

    class FillingFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            if '"step": 192' in text:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(marl.logging, "open", lambda *a, **kw: FillingFile(builtins.open(*a, **kw)), raising=False)
    fails(capsys, ["train", *FAST, "--run-dir", str(run_dir), "--steps", "512", "--checkpoint-interval", "128",
                   "--log-interval", "64", "--eval-interval", "0"],
          f"no space left on the disk at /", f"to write metrics.jsonl into {run_dir}",
          "the run keeps its checkpoint of step 128 (continue with --resume)")
    assert load_checkpoint(run_dir)["step"] == 128


# ----------------------------------------------------------------------------- resume flags (issue 16, item 6)
def test_resume_applies_settings_and_refuses_changes_to_what_is_learned(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "128", "--workers", "0") == 0
    before = snapshot(run_dir)
    lr = yaml.safe_load((run_dir / "config.yaml").read_text())["algo"]["lr"]
    resume = ["train", "--resume", "--run-dir", str(run_dir)]
    for flag, value, saved in (("--lr", "0.1", lr), ("--seed", "3", 1), ("--num-envs", "16", 4),
                               ("--env", "builtin/grid", "builtin/identity"), ("--algo", "ippo", "mappo")):
        fails(capsys, [*resume, flag, value], f"--resume: {flag} {value} differs from the run's {saved}", "changes what the run learns",
              f"marl train --config {run_dir}/config.yaml {flag} {value}", "--allow-config-change")
        assert snapshot(run_dir) == before
    # settings apply: more evaluation episodes, another log interval, the steps
    assert main([*resume, "--steps", "256", "--eval-episodes", "6", "--log-interval", "64", "--device", "cpu"]) == 0
    assert [r["eval/episodes"] for r in read_metrics(run_dir) if "eval/episodes" in r] == [4, 4, 6]
    assert steps_of(run_dir, "train/return_mean") == [128, 192, 256]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["eval_episodes"] == 6 and config["train"]["steps"] == 256
    assert not (run_dir / "config_changes.yaml").exists()
    # asked for explicitly, a change is made and recorded
    assert main([*resume, "--steps", "320", "--lr", "0.1", "--allow-config-change"]) == 0
    assert yaml.safe_load((run_dir / "config_changes.yaml").read_text()) == [
        {"step": 256, "changes": {"lr": {"from": lr, "to": 0.1}}}]
    assert load_checkpoint(run_dir)["config"]["algo"]["lr"] == 0.1
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["algo"]["lr"] == 0.1 and config["train"]["allow_config_change"] is False


def test_help_describes_what_resume_does_with_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--allow-config-change" in text and "recorded in its config_changes.yaml" not in text
    assert "a flag that changes what is learned (algo, env, env_kwargs, seed, num_envs, any hyperparameter) is refused" in text
    assert "record them in <run_dir>/config_changes.yaml" in text


# ----------------------------------------------------------------------------- 8-10. env faults named
@pytest.mark.parametrize("field, value, workers, expected", [
    ("reward", "nan", "0", "returned nan in the reward of agent 'agent_1' at episode step 3"),
    ("obs", "inf", "0", "returned inf in the obs of agent 'agent_1' at episode step 3"),
    ("obs", "-inf", "2", "returned -inf in the obs of agent 'agent_1' at episode step 3"),
])
def test_non_finite_env_output_names_the_env_not_the_learning_rate(field, value, workers, expected, tmp_path, capsys):
    line = fails(capsys, ["train", *SMALL, "--run-dir", str(tmp_path / "run"), "--env", f"{ME}:FaultyIdentity",
                          "--env-kwargs", f"field={field},value={value},at=3", "--workers", workers],
                 f"env '{ME}:FaultyIdentity' (copy 0) {expected}", "fix the env", "lowering --lr does not help")
    assert "diverged" not in line


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--ent-coef", "nan"), ("--clip", "-inf"), ("--gamma", "nan")])
def test_non_finite_hyperparameters_are_refused(flag, value, tmp_path, capsys):
    fails(capsys, ["train", *FAST, "--run-dir", str(tmp_path / "run"), f"{flag}={value}"], f"{flag} must be a finite number, got {value}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("size", [3, 5])
def test_observation_changing_shape_mid_episode_is_one_line(size, tmp_path, capsys):
    fails(capsys, ["train", *FAST, "--run-dir", str(tmp_path / "run"), "--env", f"{ME}:FaultyIdentity",
                   "--env-kwargs", f"field=shape,size={size},at=3"],
          f"env '{ME}:FaultyIdentity' (copy 0) at episode step 3: agent 'agent_1' observed shape ({size},), "
          "its observation space declares (4,)", "fix the env so every observation matches")


def test_factory_that_raises_is_one_line_and_the_traceback_is_behind_marl_debug(tmp_path):
    argv = ["train", *FAST, "--run-dir", str(tmp_path / "run"), "--env", f"{ME}:broken_factory"]
    proc = cli(*argv)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.splitlines() == [f"error: the factory of env '{ME}:broken_factory' raised FileNotFoundError: [Errno 2] No such "
                                "file or directory: 'maps/arena.txt'; fix the factory or its --env-kwargs {}; MARL_DEBUG=1 "
                                "shows the traceback"], err
    proc = cli(*argv, env_extra={"MARL_DEBUG": "1"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in err and 'in broken_factory' in err
    assert err.strip().splitlines()[-1].startswith("error: the factory of env")


# ----------------------------------------------------------------------------- 11. one line instead of a traceback
@pytest.mark.parametrize("argv, expected", [
    (["--hidden", "0"], ["hidden sizes must be positive, got [0]", "--hidden"]),
    (["--hidden", "64,abc"], ["--hidden expects tuple[int, ...], got '64,abc'"]),
    (["--env", "mpe2/simple_spread_v3", "--env-kwargs", "N=abc"],
     ["the factory of env 'mpe2/simple_spread_v3' raised TypeError", "--env-kwargs {'N': 'abc'}"]),
])
def test_bad_values_are_one_line(argv, expected, tmp_path, capsys):
    fails(capsys, ["train", *FAST, "--run-dir", str(tmp_path / "run"), *argv], *expected)
    assert not (tmp_path / "run").exists()


def test_run_dir_naming_a_file_or_not_writable_is_one_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "results.csv"
    afile.write_text("1,2\n")
    fails(capsys, ["train", *FAST, "--run-dir", str(afile)], f"--run-dir {afile} is a file, not a directory")
    assert afile.read_text() == "1,2\n"
    run_dir = tmp_path / "run"
    assert train(run_dir, "--steps", "128", "--workers", "0") == 0
    before = snapshot(run_dir)
    # a read-only filesystem (injected: the tests may run as root, whom permissions do not stop)
    open_, mkdir = os.open, os.mkdir

    def read_only(call):
        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(tmp_path)) and (call is mkdir or args[0] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return call(path, *args, **kwargs)
        return refuse

    monkeypatch.setattr(os, "open", read_only(open_))
    monkeypatch.setattr(os, "mkdir", read_only(mkdir))
    fails(capsys, ["train", "--resume", "--run-dir", str(run_dir), "--steps", "256"],
          f"cannot write to run directory {run_dir} (Read-only file system)", "pick a --run-dir you can write to")
    fails(capsys, ["train", *FAST, "--run-dir", str(tmp_path / "new")], f"cannot write to run directory {tmp_path / 'new'}")
    monkeypatch.undo()
    assert snapshot(run_dir) == before and not (tmp_path / "new").exists()


def test_videos_refuse_a_missing_folder_and_print_no_stray_lines(tmp_path, capsys):
    run_dir = tmp_path / "cartpole"
    assert main(["train", "--algo", "ippo", "--env", "gym/CartPole-v1", "--steps", "64", "--num-envs", "2", "--rollout-len", "32",
                 "--eval-interval", "0", "--workers", "0", "--wandb", "disabled", "--progress", "false", "--run-dir", str(run_dir)]) == 0
    missing = tmp_path / "missing" / "v.gif"
    fails(capsys, ["evaluate", "--checkpoint", str(run_dir), "--episodes", "1", "--video", str(missing)],
          f"--video {missing}: the folder {missing.parent} does not exist", "create it first")
    assert not missing.parent.exists()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    proc = subprocess.run([sys.executable, "-m", "marl.cli", "evaluate", "--checkpoint", str(run_dir), "--episodes", "1",
                           "--device", "cpu", "--video", str(tmp_path / "v.gif")], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no "XDG_RUNTIME_DIR is invalid" from SDL
    assert (tmp_path / "v.gif").stat().st_size > 0 and "video: " in proc.stdout


def test_video_of_an_env_that_needs_a_display_prints_the_returns_then_one_line(tmp_path):
    run_dir = tmp_path / "lbf"
    assert main(["train", "--algo", "ippo", "--env", "lbforaging/Foraging-8x8-2p-3f-v3", "--steps", "64", "--num-envs", "2",
                 "--rollout-len", "32", "--eval-interval", "0", "--workers", "0", "--wandb", "disabled", "--progress", "false",
                 "--run-dir", str(run_dir)]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "marl.cli", "evaluate", "--checkpoint", str(run_dir), "--episodes", "2",
                           "--device", "cpu", "--video", str(tmp_path / "x.gif")], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert "eval/return_mean: " in proc.stdout and "eval/episodes: 2" in proc.stdout  # the returns were not lost
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(
        "error: env 'lbforaging/Foraging-8x8-2p-3f-v3' could not render a frame (NoSuchDisplayException"), proc.stderr
    assert "xvfb-run" in proc.stderr and not (tmp_path / "x.gif").exists()


# ----------------------------------------------------------------------------- 13. W&B without a network
def test_wandb_online_without_a_network_falls_back_within_seconds(tmp_path):
    """A key, and a server that accepts the connection but never answers (a dead proxy, a
    captive network): W&B's own init would wait its 60 s timeout; the run logs offline after a
    few seconds instead, with one note line."""
    run_dir = tmp_path / "run"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes connections; nobody ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        proc = cli("train", *FAST, "--steps", "64", "--eval-interval", "0", "--run-dir", str(run_dir), "--wandb", "online",
                   env_extra={"WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": url})
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - start
    assert proc.returncode == 0, err
    notes = [line for line in err.splitlines() if "W&B" in line]
    assert len(notes) == 1 and notes[0].startswith(f"W&B: cannot reach {url} (TimeoutError: timed out)") and "logging offline" in notes[0], err
    assert took < 45, took  # start-up and training take ~10 s on 2 busy cores, the probe 3 s; W&B alone waited 60
    assert list((run_dir / "wandb").glob("offline-run-*"))


# ----------------------------------------------------------------------------- 14. env names and extras
def test_every_env_name_in_the_readme_resolves_or_names_its_extra():
    """Each env name the README gives is one the installed libraries know; where it needs an
    optional dependency that is not installed, the error names a marl extra that exists."""
    import re
    import tomllib

    from marl import envs
    from marl.core.errors import MarlError

    readme = (ROOT / "README.md").read_text()
    names = sorted(set(re.findall(r"(?<![\w<])((?:mpe2|pettingzoo\.[a-z]+|gym|lbforaging|builtin)/[A-Za-z0-9_.:-]+)", readme)))
    assert {"pettingzoo.sisl/multiwalker_v9", "pettingzoo.butterfly/knights_archers_zombies_v11", "mpe2/simple_spread_v3"} <= set(names)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(envs.FAMILY_EXTRAS) <= set(extras)
    for name in names:
        try:
            envs.make_factory(name)
        except MarlError as err:
            hint = re.search(r"pip install 'marl\[(\w+)\]'", str(err))
            assert hint and hint.group(1) in extras, (name, str(err))  # a missing optional dependency, not a wrong name


# ----------------------------------------------------------------------------- 12. a user's own `envs` package
USER_ENVS = '''"""A research project's own env package (EPyMARL has one of this name)."""
from marl.envs.builtin.identity import Identity


def make(**kwargs):
    return Identity(**kwargs)
'''


def run_from_user_project(tmp_path: Path, pythonpath: str) -> subprocess.CompletedProcess:
    """`python -m marl.cli train` from a project whose top-level `envs` package is not marl's:
    marl's own envs (builtin/identity) and the project's factory (envs:make) both work."""
    project = tmp_path / "project"
    (project / "envs").mkdir(parents=True, exist_ok=True)
    (project / "envs" / "__init__.py").write_text(USER_ENVS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), pythonpath])}
    for name in ("builtin/identity", "envs:make"):
        proc = subprocess.run([sys.executable, "-m", "marl.cli", "train", *FAST, "--steps", "64", "--eval-interval", "0",
                               "--env", name, "--run-dir", str(project / "runs" / name.replace("/", "-").replace(":", "-"))],
                              cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (name, proc.stderr)
    return proc


def test_a_user_package_named_envs_does_not_shadow_marls_from_a_checkout(tmp_path):
    run_from_user_project(tmp_path, str(ROOT))


def test_the_installed_package_holds_envs_as_marl_envs(tmp_path):
    """Lay out the packages as pyproject.toml declares them for installation (`packages`,
    `package-dir`: what setuptools puts in the wheel), check that they hold every module of
    marl/, envs/ and single_agent/ and no top-level `envs`, and train from a project with its own `envs`."""
    import shutil
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    site = tmp_path / "site"
    for package in setup["packages"]:
        parent = max((p for p in setup["package-dir"] if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / setup["package-dir"][parent] / package[len(parent) + 1:].replace(".", "/")
        target = site / package.replace(".", "/")
        target.mkdir(parents=True)
        for module in folder.glob("*.py"):
            shutil.copy(module, target / module.name)
    installed = {p.relative_to(site).as_posix() for p in site.rglob("*.py")}
    expected = {f"marl/{p.relative_to(ROOT / 'marl').as_posix()}" for p in (ROOT / "marl").rglob("*.py")} | \
               {f"marl/{top}/{p.relative_to(ROOT / top).as_posix()}" for top in ("envs", "single_agent") for p in (ROOT / top).rglob("*.py")}
    assert installed == expected, installed ^ expected  # every package listed, nothing outside marl/
    run_from_user_project(tmp_path, str(site))


def test_env_snapshots_of_checkpoints_from_before_marl_envs_still_load(monkeypatch):
    """Checkpoints written while the package imported as top-level `envs` name their env classes
    `envs.builtin...`; they load as marl.envs classes, never from a user's `envs`."""
    import pickle

    import marl.envs.builtin.identity as identity
    from marl.core.vec import VecEnv
    from marl import envs

    import marl.envs.builtin as builtin

    vec = VecEnv(envs.make_factory("builtin/identity"), 2, seed=3)
    vec.reset(3)
    with monkeypatch.context() as old_layout:  # pickle the envs as the old layout named them
        for name, module in (("envs", envs), ("envs.builtin", builtin), ("envs.builtin.identity", identity)):
            old_layout.setitem(sys.modules, name, module)
        old_layout.setattr(identity.Identity, "__module__", "envs.builtin.identity")
        old = vec.get_state()[0]
    assert b"envs.builtin.identity" in old and b"marl.envs.builtin.identity" not in old
    monkeypatch.setitem(sys.modules, "envs", None)  # `import envs` would fail: nothing may use that name
    with pytest.raises(ImportError):
        pickle.loads(old)
    vec.set_state([old])
    assert all(type(e) is identity.Identity for e in vec._local.envs)
    vec.close()


def test_env_snapshots_written_by_the_runner_module_still_load(monkeypatch):
    """Env snapshots of EzPickle envs name their state setter; checkpoints written while it lived
    in marl.core.vec load with the one in marl.core.snapshots."""
    import marl.core.snapshots as snapshots
    import marl.core.vec as vec_module
    from marl import envs
    from marl.core.vec import VecEnv

    vec = VecEnv(envs.make_factory("mpe2/simple_spread_v3", max_cycles=5), 2, seed=3)
    vec.reset(3)
    vec.step(np.ones((2, 3), np.int64))
    with monkeypatch.context() as old_layout:
        old_layout.setattr(snapshots._set_dict, "__module__", "marl.core.vec")
        old_layout.setattr(vec_module, "_set_dict", snapshots._set_dict, raising=False)
        old = vec.get_state()[0]
    assert b"marl.core.vec" in old and b"_set_dict" in old
    fresh = VecEnv(envs.make_factory("mpe2/simple_spread_v3", max_cycles=5), 2, seed=9)
    fresh.set_state([old])
    a, _ = vec.step(np.zeros((2, 3), np.int64))
    expect = a["obs"].copy()
    b, _ = fresh.step(np.zeros((2, 3), np.int64))
    assert np.array_equal(b["obs"], expect)
    vec.close()
    fresh.close()
