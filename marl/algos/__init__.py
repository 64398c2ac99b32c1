"""Algorithms. Importing this package registers every built-in algorithm in ALGOS, the
single-agent names of marl.single_agent (presets over these learners) included."""
from marl.algos.registry import ALGOS, AlgoEntry
from marl.algos import onpolicy  # noqa: F401  (registers ia2c, ippo, maa2c, mappo)
from marl.algos import qlearning  # noqa: F401  (registers idqn, vdn, qmix, qtran)
from marl.algos import ddpg  # noqa: F401  (registers maddpg, matd3)
from marl.algos import sac  # noqa: F401  (registers isac, masac)
from marl.algos import coma  # noqa: F401  (registers coma, maqac)
from marl.algos import tabular  # noqa: F401  (registers q_learning, sarsa, expected_sarsa, dyna_q)
from marl import single_agent  # noqa: F401,E402  (registers ppo, a2c, reinforce, dqn, ddpg, td3, sac)

__all__ = ["ALGOS", "AlgoEntry"]
