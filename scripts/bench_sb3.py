#!/usr/bin/env python
"""Benchmark: our single-agent algorithms against Stable-Baselines3 on the same gymnasium env,
with the same env-step budget and the same seeds, under one of two tunings:

  --tuning default  each side's defaults (ours: the presets of marl.single_agent and
                    TrainConfig's run defaults, e.g. 16 envs; SB3: its class defaults, one env);
  --tuning zoo      rl-baselines3-zoo's per-env tuning on both sides (SB3: the zoo's values
                    below; ours: marl.single_agent.presets.ZOO, the same values as our fields).

Both sides evaluate the greedy (deterministic) policy on `--eval-episodes` episodes every
`--eval-every` env steps, in the training process (ours with --workers 0; SB3 in a callback),
so both pay the same evaluation cost. Reported per run: wall seconds from the start of
training to the first evaluation at or above the threshold (evaluation included), the env
steps at that point, and the final greedy return; then the mean over seeds and the ratio of
SB3's time to ours. Torch uses one thread on both sides.

`--repeats k` runs every (algorithm, seed) k times on each side, alternating ours and SB3, and
keeps each side's fastest run: a run is deterministic given its seed (the same evaluations
every time), so only its seconds differ, and the fastest is the one least slowed by the
machine (this machine's speed drifts by 20-30 % from minute to minute).

  python scripts/bench_sb3.py [--algos ppo,dqn,sac] [--seeds 1,2,3] [--tuning default|zoo] [--repeats 1] [--out bench-results/sb3.json]

Needs `pip install 'marl[bench]'` (stable-baselines3, never imported by marl itself).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# algo: (env id, env-step budget, return threshold); thresholds and budgets of the issue (rl-baselines3-zoo)
TASKS = {"ppo": ("CartPole-v1", 100_000, 475.0), "dqn": ("CartPole-v1", 100_000, 475.0),
         "sac": ("Pendulum-v1", 20_000, -200.0), "td3": ("Pendulum-v1", 20_000, -200.0), "ddpg": ("Pendulum-v1", 20_000, -200.0)}



def _linear(start: float):
    """SB3 schedule: `start` falling linearly to 0 over training (the zoo's lin_<start>)."""
    return lambda progress_remaining: progress_remaining * start


# rl-baselines3-zoo (hyperparams/{ppo,dqn,sac}.yml): n_envs and the model's keyword arguments
SB3_ZOO = {
    ("ppo", "CartPole-v1"): (8, dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                                     learning_rate=_linear(1e-3), clip_range=_linear(0.2))),
    ("dqn", "CartPole-v1"): (1, dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
                                     target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                                     exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))),
    ("sac", "Pendulum-v1"): (1, dict(learning_rate=1e-3)),
}


def run_ours(algo: str, env_id: str, steps: int, seed: int, eval_every: int, episodes: int, workdir: Path,
             tuning: str) -> list[tuple[int, float, float]]:
    """(env step, seconds since training started, greedy return) at every evaluation."""
    from marl.algos import ALGOS
    from marl.config import TrainConfig
    from marl.single_agent.presets import zoo
    from marl.train import train

    num_envs, values = zoo(algo, env_id) if tuning == "zoo" else (TrainConfig.num_envs, {})
    run_dir = workdir / f"ours-{algo}-s{seed}"
    cfg = TrainConfig(algo=algo, env=f"gym/{env_id}", steps=steps, seed=seed, num_envs=num_envs, workers=0, eval_interval=eval_every,
                      eval_episodes=episodes, run_dir=str(run_dir), wandb="disabled", progress=False, log_interval=eval_every,
                      checkpoint_interval=steps, torch_threads=1)
    train(cfg, ALGOS.get(algo).make_config(**values))
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    # the run's seconds when the evaluated policy was taken (SB3's side: when its callback starts an evaluation)
    return [(r["step"], r["perf/eval_policy_time_s"], r["eval/return_mean"]) for r in rows if "eval/return_mean" in r]


def run_sb3(algo: str, env_id: str, steps: int, seed: int, eval_every: int, episodes: int, tuning: str) -> list[tuple[int, float, float]]:
    import stable_baselines3 as sb3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    eval_env = gymnasium.make(env_id)
    evals: list[tuple[int, float, float]] = []

    def evaluate(model) -> float:
        returns = []
        for k in range(episodes):  # the same episodes at every evaluation
            obs, _ = eval_env.reset(seed=seed + 1_000_003 + k)
            done, total = False, 0.0
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = eval_env.step(action)
                total, done = total + float(reward), terminated or truncated
            returns.append(total)
        return float(np.mean(returns))

    class Every(BaseCallback):
        def _on_training_start(self) -> None:
            self.t0, self.next = time.perf_counter(), 0
            self._eval()

        def _eval(self) -> None:
            evals.append((self.num_timesteps, time.perf_counter() - self.t0, evaluate(self.model)))
            self.next += eval_every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self._eval()
            return True

        def _on_training_end(self) -> None:
            if evals[-1][0] != self.num_timesteps:
                self._eval()

    n_envs, kwargs = SB3_ZOO[(algo, env_id)] if tuning == "zoo" else (1, {})
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed) if n_envs > 1 else gymnasium.make(env_id)
    model = getattr(sb3, algo.upper())("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
    model.learn(total_timesteps=steps, callback=Every())
    return evals


def summarise(evals: list[tuple[int, float, float]], threshold: float) -> dict:
    hit = next(((step, t) for step, t, ret in evals if ret >= threshold), None)
    return {"steps_to_threshold": hit[0] if hit else None, "seconds_to_threshold": round(hit[1], 2) if hit else None,
            "seconds_total": round(evals[-1][1], 2), "final_return": evals[-1][2], "evals": evals}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default="ppo,dqn,sac", help="comma-separated; names not registered in marl are left out with a note")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--eval-every", type=int, default=5000, help="env steps between greedy evaluations (both sides)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--steps", type=int, default=0, help="override every budget (a quick check; 0 = the budgets above)")
    p.add_argument("--tuning", choices=("default", "zoo"), default="default", help="each side's defaults, or the zoo's tuning on both")
    p.add_argument("--repeats", type=int, default=1, help="runs per side and seed, alternating; each side's fastest is kept")
    p.add_argument("--out", default="", help="write every evaluation of every run as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    from marl.algos import ALGOS

    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos.split(","):
            if algo not in ALGOS or algo not in TASKS or (args.tuning == "zoo" and (algo, TASKS[algo][0]) not in SB3_ZOO):
                print(f"note: {algo} has no task (or no {args.tuning} tuning) in this benchmark; left out", file=sys.stderr)
                continue
            env_id, steps, threshold = TASKS[algo]
            steps = args.steps or steps
            for seed in seeds:
                for repeat in range(args.repeats):
                    for side in ("ours", "sb3"):
                        evals = run_ours(algo, env_id, steps, seed, args.eval_every, args.eval_episodes, Path(tmp) / f"r{repeat}",
                                         args.tuning) if side == "ours" else \
                            run_sb3(algo, env_id, steps, seed, args.eval_every, args.eval_episodes, args.tuning)
                        r = summarise(evals, threshold)
                        print(f"{algo} {env_id} {side} seed {seed} run {repeat + 1}: threshold {threshold} at {r['seconds_to_threshold']} s "
                              f"({r['steps_to_threshold']} steps), {r['seconds_total']} s for the budget, final greedy return "
                              f"{r['final_return']:.1f}", flush=True)
                        best = results.get((algo, side, seed))
                        if best is None or r["seconds_total"] < best["seconds_total"]:
                            results[(algo, side, seed)] = r
    if args.repeats > 1:
        print(f"\nEach seed's fastest of {args.repeats} runs per side.")
    print("\n| algo | env (budget) | side | s to threshold (mean; runs reaching it) | s for the budget (mean) | final greedy return (mean) |"
          "\n|---|---|---|---|---|---|")
    for algo in dict.fromkeys(a for a, _, _ in results):
        env_id, steps, threshold = TASKS[algo]
        steps = args.steps or steps
        means, totals = {}, {}
        for side in ("ours", "sb3"):
            runs = [results[(algo, side, s)] for s in seeds]
            times = [r["seconds_to_threshold"] for r in runs if r["seconds_to_threshold"] is not None]
            means[side] = statistics.mean(times) if len(times) == len(runs) else None
            shown = f"{statistics.mean(times):.1f}; {len(times)}/{len(runs)}" if times else f"never; 0/{len(runs)}"
            totals[side] = statistics.mean(r["seconds_total"] for r in runs)
            print(f"| {algo} | {env_id} ({steps}, >= {threshold}) | {side} | {shown} | {totals[side]:.1f} | "
                  f"{statistics.mean(r['final_return'] for r in runs):.1f} |")
        shown = f"{means['sb3'] / means['ours']:.2f}x" if means["ours"] and means["sb3"] else "-"
        print(f"| {algo} | | SB3 time / ours | {shown} | {totals['sb3'] / totals['ours']:.2f}x | |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({f"{a}/{side}/{s}": r for (a, side, s), r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
