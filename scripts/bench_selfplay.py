#!/usr/bin/env python
"""Benchmark: training moves per second of self-play on connect four, against the raw rate.

In one process, one after the other and again in reverse order (this machine's speed drifts):
  raw    PettingZoo's own `connect_four_v3.env()` AEC loop, uniformly random legal moves,
         moves per second;
  lean   the same loop over the env as the trainer builds it: `connect_four_v3.env()` without
         its OrderEnforcing and AssertOutOfBounds wrappers (`marl.envs.without_checks`), which
         only check the caller;
  train  the README's self-play command, `marl train --algo ippo --env
         pettingzoo.classic/connect_four_v3 --self-play --opponents random --sampling uniform
         --num-envs 128 --rollout-len 7` (the default network and PPO settings, a pool of snapshots
         and the random player; no evaluations), moves per second of training (`perf/steps_per_s`: collection
         with the pool's opponents and the learner's updates, as the trainer logs it) and of
         wall time.
Reports the rates and the ratios of training to both (target: training at least 50 % of the raw rate).

  python scripts/bench_selfplay.py [--steps 50000] [--raw-seconds 10] [--workers 2] [--num-envs 128] [--rollout-len 7] [--out bench-results/selfplay]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

C4 = "pettingzoo.classic/connect_four_v3"


def raw_rate(seconds: float, seed: int = 0, lean: bool = False) -> float:
    """Moves per second of connect_four_v3's AEC env with uniformly random legal moves (`lean`:
    without the wrappers that only check the caller, as the trainer steps it)."""
    from pettingzoo.classic import connect_four_v3

    from marl.envs import without_checks

    env = without_checks(connect_four_v3.env()) if lean else connect_four_v3.env()
    rng = np.random.default_rng(seed)
    moves, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.reset(seed=int(rng.integers(2**31)))
        for agent in env.agent_iter():
            obs, _, term, trunc, _ = env.last()
            if term or trunc:
                env.step(None)
                continue
            env.step(int(rng.choice(np.flatnonzero(obs["action_mask"]))))
            moves += 1
    return moves / (time.perf_counter() - start)


def train_rate(steps: int, workers: int, num_envs: int, run_dir: Path, rollout_len: int = 7) -> dict:
    from marl.algos import ALGOS
    from marl.config import TrainConfig
    from marl.population.selfplay import SelfPlayConfig, train_self_play

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig(algo="ippo", env=C4, steps=steps, workers=workers, num_envs=num_envs, device="cpu", run_dir=str(run_dir),
                      eval_interval=0, log_interval=steps, checkpoint_interval=steps, wandb="disabled", progress=False)
    start = time.perf_counter()
    train_self_play(cfg, ALGOS.get("ippo").make_config(rollout_len=rollout_len), SelfPlayConfig(self_play=True, opponents=["random"], sampling="uniform"))
    wall = time.perf_counter() - start
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    return {"train_moves_per_s": last["perf/steps_per_s"], "wall_moves_per_s": steps / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50_000, help="training moves per timed run")
    p.add_argument("--raw-seconds", type=float, default=10.0, help="seconds of each raw measurement")
    p.add_argument("--workers", type=int, default=2, help="--workers of the training run")
    p.add_argument("--num-envs", type=int, default=128, help="--num-envs of the training run (the README command's)")
    p.add_argument("--rollout-len", type=int, default=7, help="--rollout-len of the training run (the README command's)")
    p.add_argument("--out", default="bench-results/selfplay", help="run directories go here")
    a = p.parse_args()
    out = Path(a.out)
    raws, leans, trains = [], [], []
    for order in ("raw-lean-train", "train-lean-raw"):
        for what in order.split("-"):
            if what == "raw":
                raws.append(raw_rate(a.raw_seconds))
            elif what == "lean":
                leans.append(raw_rate(a.raw_seconds, lean=True))
            else:
                trains.append(train_rate(a.steps, a.workers, a.num_envs, out / f"run{len(trains)}", a.rollout_len))
    raw, lean = float(np.mean(raws)), float(np.mean(leans))
    rates = [t["train_moves_per_s"] for t in trains]
    train = float(np.mean(rates))
    wall = float(np.mean([t["wall_moves_per_s"] for t in trains]))
    print(f"raw connect_four_v3 AEC, random moves: {raw:,.0f} moves/s ({', '.join(f'{r:,.0f}' for r in raws)})")
    print(f"the same without the check wrappers: {lean:,.0f} moves/s ({', '.join(f'{r:,.0f}' for r in leans)})")
    print(f"self-play training (ippo, pool, {a.num_envs} envs x {a.rollout_len} steps, workers={a.workers}): {train:,.0f} moves/s "
          f"({', '.join(f'{r:,.0f}' for r in rates)}); wall {wall:,.0f} moves/s")
    print(f"training / raw: {train / raw:.2f} (target >= 0.50); wall / raw: {wall / raw:.2f}; training / lean: {train / lean:.2f}")


if __name__ == "__main__":
    main()
