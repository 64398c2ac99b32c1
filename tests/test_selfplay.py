"""Self-play against an opponent pool through the real trainer and CLI: seats and opponents
redrawn per episode, the learner learning only from its own seat, rated matches, files in the
run directory, exact resume of pool and ratings, bad input; and the learning known answers
(tictactoe, connect four: slow)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from marl import envs
from marl.algos import ALGOS
from marl.checkpoint import load_checkpoint
from marl.cli import main
from marl.config import TrainConfig
from marl.core.policies import AgentPolicies, RandomPolicy, outcomes
from marl.core.rollout import Collector, evaluate
from marl.core.vec import VecEnv
from marl.population.selfplay import SelfPlay, SelfPlayConfig

TTT = "pettingzoo.classic/tictactoe_v3"
C4 = "pettingzoo.classic/connect_four_v3"
CPU = torch.device("cpu")
ME = "tests.test_selfplay"


def rows(run_dir) -> list[dict]:
    """metrics.jsonl without what depends on the clock."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k != "time_s" and not k.startswith("perf/")})
    return out


def _setup(cfg: SelfPlayConfig, num_envs=8, algo="ippo", **algo_kw):
    torch.manual_seed(0)
    make = envs.make_factory(TTT)
    vec = VecEnv(make, num_envs, seed=0)
    entry = ALGOS.get(algo)
    learner = entry.learner(entry.make_config(rollout_len=32, **algo_kw), vec.spec, CPU, seed=0)
    sp = SelfPlay(cfg)
    sp.setup(learner, vec.spec, make, TrainConfig(seed=0, num_envs=num_envs), CPU)
    return vec, learner, sp


def test_seats_and_opponents_are_redrawn_per_episode_and_only_the_learners_rows_act():
    vec, learner, sp = _setup(SelfPlayConfig(self_play=True, opponents=["random"], snapshot_interval=10**9))
    collector = Collector(vec, sp.policy(), CPU)
    batch, episodes = collector.collect(40)
    mine = batch["learner_seat"]  # [T, E, N]
    assert (mine.sum(-1) == 1).all()
    seats = mine.float().argmax(-1)  # [T, E]
    done = batch["done"]
    # within an episode the seat never changes; over 8 envs x several games both seats occur
    same_episode = ~done[:-1]
    assert (seats[1:][same_episode] == seats[:-1][same_episode]).all()
    assert set(seats.flatten().tolist()) == {0, 1} and len(episodes) > 16
    drawn = sp.joint.finished(episodes)
    assert {opp for _, opp, _ in drawn} == {m.id for m in sp.pool.members}  # random and snapshot@0 both played
    lb = sp.learner_batch(batch)
    assert not (lb["acting"] & ~mine).any() and (lb["acting"] == (batch["acting"] & mine)).all()
    assert lb["acting"].sum() > 0 and (batch["acting"] & ~mine).sum() > 0  # the opponents' moves are dropped
    # a learner update runs on it
    assert np.isfinite(learner.update(lb)["loss/policy"])
    vec.close()
    sp.close()


def test_opponent_moves_come_from_the_opponent():
    """With a learner that always picks the lowest legal cell and an opponent that picks random
    legal cells, the moves in the opponent's column are not all lowest-cell moves, the
    learner's are."""
    vec, learner, sp = _setup(SelfPlayConfig(self_play=True, opponents=["random"], fixed_in_pool=True, sampling="uniform",
                                             snapshot_interval=10**9))
    sp.pool.members = [m for m in sp.pool.members if m.kind == "random"]

    class Lowest:
        def initial_hidden(self, e):
            return None

        def act(self, inputs, hidden, explore):
            return inputs["avail"].float().argmax(-1), None, {}

    sp.joint.learner = Lowest()
    batch, _ = Collector(vec, sp.policy(), CPU).collect(60)
    acting, mine = batch["acting"], batch["learner_seat"]
    lowest = batch["avail"].float().argmax(-1)
    took_lowest = batch["actions"] == lowest
    assert took_lowest[acting & mine].all()
    assert not took_lowest[acting & ~mine].all()
    vec.close()
    sp.close()


RUN = ["train", "--algo", "ippo", "--env", TTT, "--self-play", "--opponents", "random", "--snapshot-interval", "512",
       "--pool-size", "3", "--sampling", "pfsp", "--match-games", "4", "--num-envs", "8", "--rollout-len", "32", "--workers", "0",
       "--eval-interval", "768", "--eval-episodes", "4", "--log-interval", "512", "--checkpoint-interval", "512",
       "--wandb", "disabled", "--progress", "false", "--seed", "3"]


def test_self_play_run_writes_ratings_and_resumes_with_the_same_pool_and_ratings(tmp_path):
    """An uninterrupted run against a run killed after its checkpoint at step 1024 (the newer
    checkpoints deleted) and resumed with --resume: the same metrics rows (ratings included),
    the same ratings table, pool and weights at the end."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*RUN, "--steps", "2048", "--run-dir", str(full)]) == 0
    assert main([*RUN, "--steps", "2048", "--run-dir", str(cut)]) == 0
    for name in ("latest.pt", "step_2048.pt", "step_1536.pt"):
        (cut / "checkpoints" / name).unlink()
    assert main(["train", "--resume", "--run-dir", str(cut)]) == 0
    assert rows(cut) == rows(full)
    a, b = load_checkpoint(full / "checkpoints" / "step_2048.pt"), load_checkpoint(cut / "checkpoints" / "step_2048.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    pa, pb = a["callbacks"]["self_play"]["pool"], b["callbacks"]["self_play"]["pool"]
    assert [m["name"] for m in pa["members"]] == [m["name"] for m in pb["members"]]
    assert [m["name"] for m in pa["members"]] == ["random", "snapshot@1024", "snapshot@1536", "snapshot@2048"]  # at most 3 snapshots
    assert (full / "ratings.csv").read_text() == (cut / "ratings.csv").read_text()
    table = list(csv.DictReader(open(full / "ratings.csv")))
    assert {r["player"] for r in table} >= {"learner", "random", "snapshot@2048"}
    assert (full / "ratings.png").read_bytes()[:4] == b"\x89PNG"
    rated = [r for r in rows(full) if "rating/learner" in r]
    assert [r["step"] for r in rated] == [0, 768, 1536, 2048]
    assert all(0 <= r["eval/vs_random/win"] <= 1 for r in rated)


def wrong_size_policy(spec, device):
    """A user's opponent factory that answers with actions for 3 agents."""
    class Wrong:
        def initial_hidden(self, e):
            return None

        def act(self, inputs, hidden, explore):
            return torch.zeros(inputs["avail"].shape[0], 3, dtype=torch.long), None, {}
    return Wrong()


def test_bad_self_play_input_is_one_line_before_anything_is_written(tmp_path, capsys):
    def fails(args, *words):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
        for w in words:
            assert w in err, err
    run = tmp_path / "run"
    fails([*RUN, "--opponents", f"{ME}:wrong_size_policy", "--run-dir", str(run)],
          f"pool opponent '{ME}:wrong_size_policy' does not fit this env's spaces", "want (2, 2)")
    fails([*RUN, "--opponents", "nowhere:nothing", "--run-dir", str(run)], "cannot be loaded")
    fails([*RUN, "--opponents", "rnadom", "--run-dir", str(run)], "neither random, an existing checkpoint nor module:factory")
    fails([*RUN, "--sampling", "best", "--run-dir", str(run)], "--sampling")
    fails([*RUN, "--snapshot-interval", "0", "--run-dir", str(run)], "without snapshots")
    fails([*RUN, "--env", "mpe2/simple_spread_v3", "--run-dir", str(run)], "needs a two-player game", "has 3 agents")
    assert not run.exists()


def test_a_checkpoint_of_another_game_is_refused_as_opponent(tmp_path, capsys):
    c4 = tmp_path / "c4"
    assert main(["train", "--algo", "ippo", "--env", C4, "--steps", "64", "--num-envs", "2", "--rollout-len", "32", "--workers", "0",
                 "--eval-interval", "0", "--wandb", "disabled", "--progress", "false", "--run-dir", str(c4)]) == 0
    with pytest.raises(SystemExit) as e:
        main([*RUN, "--opponents", str(c4), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"pool opponent '{c4}' does not fit this env's spaces" in err, err


# ----------------------------------------------------------------------------- known answers (slow)
def _trained_by_self_play(tmp_path, env: str, steps: int, algo_kw: dict, **sp_kw):
    """A learner trained only by self-play through the trainer (the pool's snapshots and, with
    sp_kw's opponents, fixed players), loaded back from its checkpoint as a frozen policy."""
    from marl.population.selfplay import load_policy
    from marl.train import train

    cfg = TrainConfig(algo="ippo", env=env, steps=steps, seed=0, eval_interval=0, log_interval=steps // 10,
                      checkpoint_interval=steps, wandb="disabled", progress=False, run_dir=str(tmp_path / "run"))
    train(cfg, ALGOS.get("ippo").make_config(**algo_kw), callbacks=[SelfPlay(SelfPlayConfig(self_play=True, **sp_kw))])
    spec = VecEnv(envs.make_factory(env), 1, seed=0).spec
    return load_policy(str(tmp_path / "run"), spec, CPU), spec


def _against_random(policy, spec, env: str, games: int = 200) -> list[tuple[int, int, int]]:
    """(wins, draws, losses) of greedy play against the uniformly random masked player, per seat."""
    vec = VecEnv(envs.make_factory(env), 50, seed=123, spec=spec)
    out = []
    for seat in (0, 1):
        owner = [0, 1] if seat == 0 else [1, 0]
        episodes = evaluate(vec, AgentPolicies([policy, RandomPolicy(spec, CPU, seed=1)], owner), games, CPU, seed=5)
        out.append(tuple(int(x) for x in outcomes(episodes, 2)[seat]))
    vec.close()
    return out


@pytest.mark.slow
def test_tictactoe_self_play_wins_or_draws_95_percent_against_random_from_both_seats(tmp_path):
    """python -m pytest tests/test_selfplay.py -m slow -k tictactoe"""
    policy, spec = _trained_by_self_play(tmp_path, TTT, TTT_STEPS, TTT_ALGO, **TTT_SELF_PLAY)
    for seat, (win, draw, loss) in enumerate(_against_random(policy, spec, TTT)):
        assert win + draw >= 190, f"seat {seat}: {win} wins, {draw} draws, {loss} losses"


@pytest.mark.slow
def test_connect_four_self_play_beats_random_90_percent_from_both_seats_within_100k_moves(tmp_path):
    """python -m pytest tests/test_selfplay.py -m slow -k connect_four"""
    policy, spec = _trained_by_self_play(tmp_path, C4, 100_000, {}, opponents=["random"])
    for seat, (win, draw, loss) in enumerate(_against_random(policy, spec, C4)):
        assert win >= 180, f"seat {seat}: {win} wins, {draw} draws, {loss} losses"
