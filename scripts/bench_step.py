#!/usr/bin/env python
"""Benchmark: one gradient step of our single-agent DQN and SAC against Stable-Baselines3's
and against a plain PyTorch step of the same arithmetic, in one process.

Each side trains with its defaults (ours: the `single_agent` presets; SB3: its class defaults)
on batches drawn from a replay of 1,000 transitions: ours from its `TransitionReplay` (one
gather per field for a round's steps, as `update` draws them), SB3 through `model.train`
(sampling, the step and its logging), the plain step from tensors by index. The plain step is
the least a PyTorch program of the same math does: `nn.Sequential` networks, the same losses,
clipping and Adam (torch.optim), twin critics as two networks. Rounds alternate the three
sides, `--steps` gradient steps each; the median round of each side is reported. Torch uses
one thread. This separates the gradient step from collection, evaluation and start-up, which
`bench_sb3.py` times together.

  python scripts/bench_step.py [--algos dqn,sac] [--rounds 8] [--steps 40]

Needs `pip install 'marl[bench]'` (stable-baselines3).
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import gymnasium
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENVS = {"dqn": "CartPole-v1", "sac": "Pendulum-v1"}
FILL = 1000  # transitions in every replay


def ours(algo: str) -> Callable[[int], None]:
    """`steps` gradient steps of our learner on batches of its filled replay."""
    from marl import envs
    from marl.algos import ALGOS
    from marl.core.spec import EnvSpec

    name = f"gym/{ENVS[algo]}"
    spec = EnvSpec.from_env(envs.make(name), name=name)
    entry = ALGOS.get(algo)
    cfg = entry.make_config()
    learner = entry.learner(cfg, spec, torch.device("cpu"), 0)
    gen = torch.Generator().manual_seed(0)
    rows = {}
    for k, (shape, dtype) in learner.replay.fields.items():
        if dtype == torch.bool:
            rows[k] = torch.ones(FILL, *shape, dtype=torch.bool) if k not in ("terminated", "truncated", "done") else torch.zeros(FILL, *shape, dtype=torch.bool)
        elif k == "actions" and spec.discrete:
            rows[k] = torch.randint(spec.n_actions, (FILL, *shape), generator=gen)
        elif k == "actions":
            rows[k] = torch.rand(FILL, *shape, generator=gen) * 4 - 2  # Pendulum's [-2, 2]
        else:
            rows[k] = torch.randn(FILL, *shape, generator=gen)
    learner.replay.add(rows)

    def run(steps: int) -> None:
        for batch in learner.replay.batches(steps, cfg.batch_size, gen):
            learner._train_step(batch)
    return run


def sb3(algo: str) -> Callable[[int], None]:
    """`steps` gradient steps of SB3's `train` after 1,000 random env steps."""
    from stable_baselines3 import DQN, SAC

    model = (DQN if algo == "dqn" else SAC)("MlpPolicy", gymnasium.make(ENVS[algo]), seed=0, device="cpu", learning_starts=FILL)
    model.learn(FILL)  # fills the replay; no gradient step yet (learning_starts)
    return lambda steps: model.train(gradient_steps=steps, batch_size=model.batch_size)


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def plain_dqn() -> Callable[[int], None]:
    """DQN of our preset's math (SB3's defaults but the squared TD error): 64-64, batch 32, lr 1e-4, clip 10."""
    g = torch.Generator().manual_seed(0)
    obs, nxt = torch.randn(FILL, 4, generator=g), torch.randn(FILL, 4, generator=g)
    act, rew, term = torch.randint(2, (FILL, 1), generator=g), torch.ones(FILL), torch.zeros(FILL)
    q = mlp(4, 2, 64)
    target = copy.deepcopy(q).requires_grad_(False)
    opt = torch.optim.Adam(q.parameters(), 1e-4)

    def run(steps: int) -> None:
        for _ in range(steps):
            i = torch.randint(FILL, (32,), generator=g)
            with torch.no_grad():
                y = rew[i] + 0.99 * (1 - term[i]) * target(nxt[i]).max(-1).values
            loss = F.mse_loss(q(obs[i]).gather(-1, act[i]).squeeze(-1), y)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(q.parameters(), 10.0)
            opt.step()
    return run


def plain_sac() -> Callable[[int], None]:
    """SAC of SB3's defaults: 256-256 actor and twin critics, batch 256, lr 3e-4, learned temperature, tau 0.005."""
    g = torch.Generator().manual_seed(0)
    obs, nxt = torch.randn(FILL, 3, generator=g), torch.randn(FILL, 3, generator=g)
    act, rew, term = torch.rand(FILL, 1, generator=g) * 2 - 1, torch.randn(FILL, 1, generator=g), torch.zeros(FILL, 1)
    actor, critics = mlp(3, 2, 256), [mlp(4, 1, 256), mlp(4, 1, 256)]
    targets = [copy.deepcopy(c).requires_grad_(False) for c in critics]
    q_params = [p for c in critics for p in c.parameters()]
    t_params = [p for c in targets for p in c.parameters()]
    log_alpha = torch.zeros(1, requires_grad=True)
    actor_opt, critic_opt, alpha_opt = (torch.optim.Adam(p, 3e-4) for p in (actor.parameters(), q_params, [log_alpha]))

    def sample(o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = actor(o).chunk(2, -1)
        log_std = log_std.clamp(-20, 2)
        u = mean + log_std.exp() * torch.randn(mean.shape, generator=g)
        logp = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
                - 2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1, keepdim=True)
        return torch.tanh(u), logp

    def q_min(nets: list[nn.Module], o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = torch.cat([o, a], -1)
        return torch.min(nets[0](x), nets[1](x))

    def run(steps: int) -> None:
        for _ in range(steps):
            i = torch.randint(FILL, (256,), generator=g)
            o, a = obs[i], act[i]
            alpha = log_alpha.exp().detach()
            with torch.no_grad():
                a2, logp2 = sample(nxt[i])
                y = rew[i] + 0.99 * (1 - term[i]) * (q_min(targets, nxt[i], a2) - alpha * logp2)
            x = torch.cat([o, a], -1)
            critic_loss = sum(F.mse_loss(c(x), y) for c in critics)
            critic_opt.zero_grad()
            critic_loss.backward()
            critic_opt.step()
            pi, logp = sample(o)
            for p in q_params:
                p.requires_grad_(False)
            actor_loss = (alpha * logp - q_min(critics, o, pi)).mean()
            for p in q_params:
                p.requires_grad_(True)
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
            alpha_loss = -(log_alpha * (logp.detach() - 1.0)).mean()
            alpha_opt.zero_grad()
            alpha_loss.backward()
            alpha_opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(t_params, q_params, 0.005)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", default="dqn,sac")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=0, help="gradient steps a round (0: 400 for dqn, 40 for sac)")
    args = p.parse_args()
    torch.set_num_threads(1)
    algos = args.algos.split(",")
    for algo in algos:
        if algo not in ENVS:
            p.error(f"unknown algo '{algo}': pass --algos with some of {','.join(ENVS)}")
    for algo in algos:
        sides = {"ours": ours(algo), "sb3": sb3(algo), "plain": plain_dqn() if algo == "dqn" else plain_sac()}
        steps = args.steps or (400 if algo == "dqn" else 40)
        ms: dict[str, list[float]] = {k: [] for k in sides}
        for run in sides.values():
            run(steps // 4)  # warm-up
        for _ in range(args.rounds):
            for name, run in sides.items():
                t = time.perf_counter()
                run(steps)
                ms[name].append(1e3 * (time.perf_counter() - t) / steps)
        med = {k: statistics.median(v) for k, v in ms.items()}
        print(f"{algo} on {ENVS[algo]}: ms a gradient step, median of {args.rounds} rounds of {steps} "
              f"(range): " + ", ".join(f"{k} {med[k]:.3f} ({min(v):.3f}-{max(v):.3f})" for k, v in ms.items()))
        print(f"  SB3 / ours {med['sb3'] / med['ours']:.2f}, plain / ours {med['plain'] / med['ours']:.2f}", flush=True)


if __name__ == "__main__":
    main()
