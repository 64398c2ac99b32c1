"""`python -m marl.single_agent ALGO ENV [marl train flags]`: `marl train` for one agent, e.g.

    python -m marl.single_agent ppo CartPole-v1 --steps 100000 --seed 1
    python -m marl.single_agent sarsa CliffWalking-v1 --env-kwargs max_episode_steps=100

ENV is a gymnasium id (the `gym/` prefix is added when missing); ALGO a single-agent name
(ppo, a2c, reinforce, dqn, ddpg, td3, sac, or a tabular method: q_learning, sarsa,
expected_sarsa, dyna_q). Other flags are those of `marl train`.
"""
from __future__ import annotations

import sys

from marl.cli import main as marl_main
from marl.core.errors import MarlError


def single_agent_names() -> list[str]:
    from marl.algos import ALGOS

    return [name for name in ALGOS.names() if ALGOS.get(name).multi_agent]


def argv_for(args: list[str]) -> list[str]:
    """`marl train` arguments for `ALGO ENV [flags]`."""
    if len(args) < 2 or args[0].startswith("-") or args[1].startswith("-"):
        raise MarlError("expected an algorithm and a gymnasium env id",
                        f"run python -m marl.single_agent ALGO ENV [flags], ALGO one of {', '.join(single_agent_names())}, "
                        "e.g. python -m marl.single_agent ppo CartPole-v1")
    algo, env, rest = args[0], args[1], args[2:]
    if algo not in single_agent_names():
        from marl.algos import ALGOS

        what = f"'{algo}' is a multi-agent algorithm (run it with marl train --algo {algo})" if algo in ALGOS else f"unknown algorithm '{algo}'"
        raise MarlError(f"{what}, not a single-agent one", f"pick one of {', '.join(single_agent_names())}")
    env = env if env.startswith("gym/") or "/" in env or ":" in env else f"gym/{env}"
    return ["train", "--algo", algo, "--env", env, *rest]


def main(args: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nalgorithms: " + ", ".join(single_agent_names()))
        return 0
    try:
        argv = argv_for(args)
    except MarlError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return marl_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
