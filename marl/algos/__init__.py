"""Algorithms. Importing this package registers every built-in algorithm in ALGOS."""
from marl.algos.registry import ALGOS, AlgoEntry
from marl.algos import onpolicy  # noqa: F401  (registers ia2c, ippo, maa2c, mappo)

__all__ = ["ALGOS", "AlgoEntry"]
