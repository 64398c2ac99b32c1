"""Population-based training on a real local Ray (marl.population.pbt) and the lr a resume sets."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace

import pytest
import torch

from marl.algos import ALGOS
from marl.cli import main
from marl.checkpoint import load_checkpoint
from marl.config import TrainConfig
from marl.core.policies import RandomPolicy
from marl.population.pbt import PBTConfig, run_pbt
from marl.train import train
from marl.trainer import Trainer

ray = pytest.importorskip("ray")

BASE = dict(env="builtin/identity", algo="ippo", workers=0, wandb="disabled", progress=False, torch_threads=1,
            eval_episodes=16)


@pytest.mark.parametrize("algo", ["ippo", "vdn"])
def test_resume_with_a_new_lr_updates_with_it(tmp_path, algo):
    """The optimiser state in a checkpoint carries the old lr; the resumed learner must step with
    the config's new one (what a PBT exploit relies on). lr 1e-20 leaves the weights as they are."""
    cfg = TrainConfig(**{**BASE, "algo": algo}, steps=400, run_dir=str(tmp_path / "run"), checkpoint_interval=400, eval_interval=0)
    train(cfg, ALGOS.get(algo).make_config(lr=1e-2, **({"learning_starts": 0, "reward": "sum"} if algo == "vdn" else {})))
    moved = []

    class Watch:
        def on_collect(self, t, batch, episodes):
            self.before = torch.cat([p.detach().flatten().clone() for p in t.learners["all"].parameters()])

        def on_update(self, t, metrics):
            after = torch.cat([p.detach().flatten() for p in t.learners["all"].parameters()])
            moved.append(float((after - self.before).abs().max()))

    resumed = replace(cfg, steps=800, resume=True, allow_config_change=True)
    with Trainer(resumed, ALGOS.get(algo).make_config(lr=1e-20, **({"learning_starts": 0, "reward": "sum"} if algo == "vdn" else {})),
                 set_fields={"steps", "allow_config_change"}, callbacks=[Watch()]) as t:
        assert t.learners["all"].opt.lr == 1e-20
        t.step()
    assert moved and moved[0] < 1e-12  # with the checkpoint's lr 1e-2 the weights move by ~1e-2
    assert (tmp_path / "run" / "config_changes.yaml").read_text().count("lr") == 1


@pytest.mark.parametrize("args, words", [
    (["--hparams", "learning_rate"], "has no hyperparameter 'learning_rate'"),
    (["--hparams", "lr", "--init", "ent_coef=0.1"], "'ent_coef' is not one of the --hparams"),
    (["--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1 cannot be reached"),
    (["--league", "player_1"], "--league player_1 needs --policies"),
    (["--members", "1"], "--members must be at least 2"),
    (["--self-play", "--pool-size", "3"], "marl pbt does not train self-play members (--pool-size, --self-play)"),
])
def test_bad_input_is_one_line_before_ray_starts(tmp_path, capsys, args, words):
    run_dir = tmp_path / "pop"
    with pytest.raises(SystemExit) as exit_:
        main(["pbt", "--algo", "ippo", "--env", "builtin/identity", "--steps", "800", "--run-dir", str(run_dir), *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and words in err, err
    assert not run_dir.exists() and not ray.is_initialized()


def _population(tmp_path, steps, interval, **pbt):
    cfg = TrainConfig(**BASE, steps=steps, seed=0, run_dir=str(tmp_path / "pop"))
    config = PBTConfig(members=2, interval=interval, hparams="lr=1e-5:1e-2", init="lr=1e-7,3e-3", quantile=0.5,
                       num_cpus=2, **pbt)
    return cfg, run_pbt(cfg, ALGOS.get("ippo").make_config(), config)


@pytest.mark.slow  # ~40-70 s: python -m pytest tests/test_pbt.py -m slow -q
def test_a_killed_worker_is_restored_and_the_population_finishes(tmp_path):
    """SIGKILL the Ray worker process of member 0 after its first report: Tune records the
    failure, restarts the member from its last checkpoint, and every member reaches the end."""
    member = tmp_path / "pop" / "member_0"
    killed = []

    def failed() -> bool:
        return any((tmp_path / "pop" / "tune").glob("_member_*_00000_*/error.txt"))

    def kill_once():  # kill each new worker of member 0 as it starts training, until Tune records a failure
        deadline, seen = time.time() + 150, set()
        while not failed() and time.time() < deadline:
            try:
                worker = json.loads((member / "worker.json").read_text())
            except (OSError, ValueError):
                worker = {"pid": None}
            if worker["pid"] not in seen and worker.get("step", 0) > 0:
                seen.add(worker["pid"])
                try:
                    os.kill(worker["pid"], signal.SIGKILL)
                    killed.append(worker["pid"])
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    killer = threading.Thread(target=kill_once, daemon=True)
    killer.start()
    cfg, result = _population(tmp_path, steps=2400, interval=800, max_failures=3)
    killer.join()
    assert killed, "no worker of member 0 was killed"
    errors = list((tmp_path / "pop" / "tune").glob("_member_*_00000_*/error.txt"))
    assert errors and "died" in errors[0].read_text().lower(), "Tune recorded no failure of member 0"
    assert [m["step"] for m in result["members"]] == [2400, 2400]
    restarts = [e for e in result["events"] if e["member"] == 0 and e["pid"] not in killed]
    assert restarts, "member 0 did not start again from a checkpoint"


@pytest.mark.slow  # ~60-70 s: python -m pytest tests/test_pbt.py -m slow -q
def test_pbt_replaces_a_bad_lr_and_matches_the_best_fixed_member(tmp_path):
    """Members start at lr 1e-7 (learns nothing in the budget) and 3e-3. The population's best
    member ends at least as good as the best member trained alone with its fixed lr and the
    same budget, and member 0's lr 1e-7 has been replaced by a copy of member 1's (perturbed),
    which is the lr its optimiser steps with."""
    steps = 4000
    fixed = []
    for k, lr in enumerate([1e-7, 3e-3]):
        cfg = TrainConfig(**BASE, steps=steps, seed=k, run_dir=str(tmp_path / f"fixed{k}"), eval_interval=800, checkpoint_interval=800)
        fixed.append(train(cfg, ALGOS.get("ippo").make_config(lr=lr))["eval/return_mean"])
    _, result = _population(tmp_path, steps=steps, interval=800)
    assert result["best"]["return"] >= max(fixed)
    assert fixed[0] < max(fixed)  # lr 1e-7 is really bad alone
    exploits = [e for e in result["events"] if e["kind"] == "exploit"]
    assert exploits and exploits[0]["member"] == 0 and exploits[0]["from"] == 1
    assert all(e["lr_used"] == e["hparams_after"]["lr"] for e in exploits)
    assert result["members"][0]["lr"] != 1e-7 and 1e-5 <= result["members"][0]["lr"]
    assert json.loads((tmp_path / "pop" / "population.json").read_text())["best"] == result["best"]
    assert all((tmp_path / "pop" / f"member_{k}" / "metrics.jsonl").is_file() for k in range(2))


def test_league_plays_each_member_against_the_others(tmp_path):
    """--league player_1: from the first report on, each member's frozen opponent slot holds a
    frozen copy of the other member's learner (not the random player it started with), and the
    population's return is the learner's own (rps is zero-sum: the sum over both seats is 0)."""
    cfg = TrainConfig(**{**BASE, "env": "pettingzoo.classic/rps_v2"}, steps=1600, seed=0, run_dir=str(tmp_path / "pop"),
                      policies="player_0=ippo player_1=random", seats="shuffle")
    result = run_pbt(cfg, ALGOS.get("ippo").make_config(), PBTConfig(members=2, interval=800, quantile=0.5, num_cpus=2, league="player_1"))
    games = {(e["member"], e["from"]) for e in result["events"] if e["kind"] == "opponent"}
    assert games == {(0, 1), (1, 0)}
    for k in range(2):
        ckpt = load_checkpoint(tmp_path / "pop" / f"member_{k}" / "checkpoints" / "latest.pt")
        assert not isinstance(ckpt["slots"]["player_1"]["policy"], RandomPolicy)
        rows = [json.loads(line) for line in (tmp_path / "pop" / f"member_{k}" / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if "eval/player_0/return_mean" in r]
        assert evals and evals[-1]["eval/player_0/return_mean"] == pytest.approx(result["members"][k]["return"])


def test_pbt_runs_on_an_existing_cluster(tmp_path):
    """`marl pbt --ray-address` on a Ray cluster the command did not start (`ray start --head`,
    with token authentication, as Ray turns it on for new clusters; the command runs in a
    process of its own, which reads the token from its environment): both members train to the
    end there, and the cluster outlives the command."""
    import secrets
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen(["ray", "start", "--head", "--port", "6391", "--num-cpus", "2", "--include-dashboard=false", "--block"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # its processes end with it
    try:
        address = next(line.split("--address=")[1].strip("'\" \n") for line in head.stdout if "ray start --address=" in line)
        cli = [sys.executable, "-c", "import sys; from marl.cli import main; sys.exit(main(sys.argv[1:]))"]
        run = subprocess.run([*cli, "pbt", "--algo", "ippo", "--env", "builtin/identity", "--steps", "2000", "--members", "2",
                              "--interval", "1000", "--hparams", "lr=1e-4:1e-2", "--ray-address", address, "--run-dir", str(tmp_path / "pop"),
                              "--workers", "0", "--eval-interval", "1000", "--eval-episodes", "8", "--wandb", "disabled", "--progress", "false"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        population = json.loads((tmp_path / "pop" / "population.json").read_text())
        assert [m["step"] for m in population["members"]] == [2000, 2000]
        assert subprocess.run(["ray", "status", "--address", address], capture_output=True, env=env).returncode == 0
    finally:
        head.terminate()
        head.wait(60)


@pytest.mark.slow  # ~30-60 s: python -m pytest tests/test_pbt.py -m slow -q
def test_ctrl_c_stops_the_population_with_exit_130_and_no_result(tmp_path):
    """Ctrl-C on `marl pbt` once both members have checkpointed: Tune stops the members and
    returns; the command does not report the stopped population as its result (no
    population.json, no table) but says where it stopped, exit 130, and the members keep their
    checkpoints."""
    import subprocess
    import sys

    pop = tmp_path / "pop"
    cli = [sys.executable, "-c", "import sys; from marl.cli import main; sys.exit(main(sys.argv[1:]))"]
    proc = subprocess.Popen([*cli, "pbt", "--algo", "ippo", "--env", "builtin/identity", "--steps", "40000", "--members", "2",
                             "--interval", "800", "--hparams", "lr=1e-4:1e-2", "--num-cpus", "2", "--run-dir", str(pop),
                             "--workers", "0", "--eval-episodes", "8", "--wandb", "disabled", "--progress", "false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        first = [pop / f"member_{k}" / "checkpoints" / "step_800.pt" for k in (0, 1)]
        while not all(f.is_file() for f in first) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130, err[-2000:]
    assert last.startswith("interrupted") and "stopped before --steps 40000" in last and str(pop) in last, last
    assert not (pop / "population.json").exists() and "member" not in out
    assert all((pop / f"member_{k}" / "checkpoints" / "latest.pt").is_file() for k in (0, 1))
