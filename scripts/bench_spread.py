#!/usr/bin/env python
"""Benchmark: algorithms on mpe2 simple_spread_v3 (N=3, 25 steps, discrete), side by side
with the raw env step rate and, optionally, EPyMARL (../shared/bench/epymarl/run.sh).

Each of our runs is a separate `marl train` process, timed from the outside like the peer
(wall time includes start-up and evaluation). Reported per run: wall seconds, training env
steps/s (= steps / wall, EPyMARL's convention), greedy eval return over all 25 steps at
the end, and score = 1 - R / R_random with R_random = -79.64 (25 steps). After the timed
run, `marl evaluate` re-runs the final greedy policy on --final-episodes episodes (default
1000) outside the timing: one 100-episode evaluation has a standard error of about 1.4.

With --peer, each algorithm's runs are timed in the order ours, peer, ours (same seed, same
result; the second run of ours only times): this machine's speed drifts by more than
the effects measured, and the mean of two runs on either side of the peer cancels a drift
that is linear in time. The ratio to the peer uses that mean wall time.

With --continuous, our runs use simple_spread's continuous actions (`continuous_actions=True`;
EPyMARL has no peer for it) and the score is against a uniformly random policy's return on
the same protocol, measured here over --final-episodes episodes.

  python scripts/bench_spread.py --algos mappo,ippo --seeds 1,2,3 [--peer mappo,ippo] [--out bench-results]
      [--extra "FLAGS for every run"] [--algo-extra "mappo=FLAGS for MAPPO's runs only"]
  python scripts/bench_spread.py --algos maddpg --peer maddpg --seeds 1,2,3 --algo-extra "maddpg=--reward sum"
  python scripts/bench_spread.py --algos maddpg,matd3,masac --continuous --seeds 1,2,3 --extra "--reward sum"
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
RANDOM_RETURN_25 = -79.64
RANDOM_RETURN_24 = -76.13


def raw_env_rate(duration: float) -> float:
    out = subprocess.run([sys.executable, str(SHARED / "env_throughput.py"), "--only", "mpe_parallel", "--duration", str(duration), "--repeats", "3"],
                         capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("mpe_parallel"))
    return float(line.split()[2].replace(",", ""))


def random_return(env_kwargs: dict, episodes: int) -> float:
    """Mean team return of uniformly random actions on simple_spread (25 steps) with `env_kwargs`."""
    sys.path.insert(0, str(ROOT))
    import torch

    from marl import envs
    from marl.core.policies import RandomPolicy
    from marl.core.rollout import evaluate as run_episodes
    from marl.core.vec import VecEnv

    vec = VecEnv(envs.make_factory("mpe2/simple_spread_v3", **env_kwargs), min(episodes, 100), seed=12345)
    try:
        eps = run_episodes(vec, RandomPolicy(vec.spec), episodes, torch.device("cpu"), seed=12345)
    finally:
        vec.close()
    return sum(e.team_return for e in eps) / len(eps)


def evaluate(run_dir: Path, episodes: int) -> float:
    """Greedy team return of a run's final checkpoint over `episodes` episodes."""
    cmd = [sys.executable, "-m", "marl.cli", "evaluate", "--checkpoint", str(run_dir), "--episodes", str(episodes), "--device", "cpu"]
    out = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    return float(next(line for line in out.splitlines() if line.startswith("eval/return_mean:")).split()[1])


def ours(algo: str, seed: int, steps: int, out: Path, extra: list[str], final_episodes: int, tag: str = "",
         random: float = RANDOM_RETURN_25) -> dict:
    run_dir = out / f"marl_{algo}_seed{seed}{tag}"
    cmd = [sys.executable, "-m", "marl.cli", "train", "--algo", algo, "--env", "mpe2/simple_spread_v3", "--steps", str(steps),
           "--seed", str(seed), "--run-dir", str(run_dir), "--overwrite", "--wandb", "disabled", "--progress", "false", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["eval/return_mean"]) for r in rows if "eval/return_mean" in r]
    final = curve[-1][1]
    loop = [r["perf/steps_per_s"] for r in rows if "perf/steps_per_s" in r][-1]  # collection + updates only
    precise = evaluate(run_dir, final_episodes) if final_episodes else None
    return {"who": "marl", "algo": algo, "seed": seed, "wall_s": wall, "steps_per_s": steps / wall, "loop_steps_per_s": loop, "eval_return": final,
            "score": 1 - final / random, "final_episodes": final_episodes, "final_return": precise,
            "final_score": None if precise is None else 1 - precise / random, "curve": curve, "command": " ".join(cmd[1:]),
            "timing_repeat": bool(tag)}


def peer(algo: str, seed: int, steps: int, out: Path) -> dict:
    env = {**os.environ, "ALG": algo, "SEED": str(seed), "T_MAX": str(steps), "OUT_DIR": str(out)}
    subprocess.run(["bash", str(SHARED / "epymarl" / "run.sh")], check=True, env=env, stdout=subprocess.DEVNULL)
    d = json.loads((out / f"epymarl_{algo}_seed{seed}.json").read_text())
    final = d["final_test_return_mean_team"]
    return {"who": "epymarl", "algo": algo, "seed": seed, "wall_s": d["wall_seconds"], "steps_per_s": d["train_env_steps_per_s"],
            "eval_return": final, "score": 1 - final / RANDOM_RETURN_24, "command": f"ALG={algo} SEED={seed} T_MAX={steps} bash run.sh"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", default="mappo,ippo")
    ap.add_argument("--peer", default="", help="EPyMARL algorithms to run too (needs run.sh's EPYMARL_SRC/SMACLITE_SRC or its cache)")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--extra", default="", help="extra flags for marl train, e.g. '--num-envs 16'")
    ap.add_argument("--algo-extra", action="append", default=[], metavar="ALGO=FLAGS",
                    help="extra flags for one algorithm's runs only (repeatable), e.g. 'mappo=--lr-anneal-steps 200000'")
    ap.add_argument("--continuous", action="store_true", help="continuous actions (continuous_actions=True), scored against a random policy's return")
    ap.add_argument("--final-episodes", type=int, default=1000, help="greedy episodes to re-evaluate each final policy on, untimed (0: skip)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"raw_env_steps_per_s_before": raw_env_rate(5.0), "runs": []}
    print(f"raw env rate: {results['raw_env_steps_per_s_before']:,.0f} steps/s", flush=True)
    peers, algos = [a for a in args.peer.split(",") if a], args.algos.split(",")
    own = dict(item.split("=", 1) for item in args.algo_extra)
    extra = {algo: [*args.extra.split(), *own.get(algo, "").split()] for algo in algos}
    random = RANDOM_RETURN_25
    if args.continuous:
        extra = {algo: [*flags, "--env-kwargs", "continuous_actions=True"] for algo, flags in extra.items()}
        random = results["random_return"] = random_return({"continuous_actions": True}, max(args.final_episodes, 100))
        print(f"random policy, continuous actions: {random:.2f} (25 steps)", flush=True)

    def run_peer(algo: str, seed: int) -> dict:
        p = peer(algo, seed, args.steps, out)
        results["runs"].append(p)
        print(f"epymarl {algo} seed {seed}: wall {p['wall_s']:.0f}s, {p['steps_per_s']:.0f} steps/s, eval {p['eval_return']:.2f} (24 steps), score {p['score']:.3f}", flush=True)
        return p

    for algo in [a for a in peers if a not in algos]:
        for seed in seeds:
            run_peer(algo, seed)
    for algo in algos:
        for seed in seeds:
            r = ours(algo, seed, args.steps, out, extra[algo], args.final_episodes, random=random)
            results["runs"].append(r)
            precise = f"; {r['final_episodes']} episodes {r['final_return']:.2f}, score {r['final_score']:.3f}" if r["final_return"] is not None else ""
            print(f"marl {algo} seed {seed}: wall {r['wall_s']:.0f}s, {r['steps_per_s']:.0f} steps/s "
                  f"(training loop {r['loop_steps_per_s']:.0f}), eval {r['eval_return']:.2f} (25 steps), score {r['score']:.3f}{precise}", flush=True)
            if algo not in peers:
                continue
            p = run_peer(algo, seed)
            again = ours(algo, seed, args.steps, out, extra[algo], 0, tag="_again", random=random)
            results["runs"].append(again)
            mean_wall = (r["wall_s"] + again["wall_s"]) / 2
            print(f"marl {algo} seed {seed} again: wall {again['wall_s']:.0f}s (training loop {again['loop_steps_per_s']:.0f}), "
                  f"eval {again['eval_return']:.2f}; mean wall {mean_wall:.0f}s = {p['wall_s'] / mean_wall:.2f}x the peer's speed", flush=True)
        mine = [r for r in results["runs"] if r["who"] == "marl" and r["algo"] == algo and not r["timing_repeat"]]
        for key, label in (("eval_return", "eval"), ("final_return", f"{args.final_episodes}-episode")):
            if len(mine) > 1 and all(r[key] is not None for r in mine):
                mean = sum(r[key] for r in mine) / len(mine)
                print(f"marl {algo} mean of {len(mine)} seeds ({label}): {mean:.2f}, score {1 - mean / random:.3f}", flush=True)
    results["raw_env_steps_per_s_after"] = raw_env_rate(5.0)
    print(f"raw env rate after: {results['raw_env_steps_per_s_after']:,.0f} steps/s")
    (out / "bench_spread.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
