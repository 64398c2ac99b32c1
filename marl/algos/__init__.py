"""Algorithms. Importing this package registers every built-in algorithm in ALGOS."""
from marl.algos.registry import ALGOS, AlgoEntry

__all__ = ["ALGOS", "AlgoEntry"]
