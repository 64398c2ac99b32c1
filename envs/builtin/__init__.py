"""Built-in small envs for tests and quick checks, by name (without the "builtin/" prefix)."""
from __future__ import annotations

from functools import partial
from typing import Callable

from marl.envs.builtin.grid import Grid
from marl.envs.builtin.identity import Identity
from marl.envs.builtin.matrix import PRESETS, MatrixGame
from marl.envs.builtin.target import Target
from marl.envs.builtin.two_step import TwoStep

BUILTINS: dict[str, Callable] = {
    "matrix": MatrixGame,
    **{name: partial(MatrixGame, payoff=payoff) for name, payoff in PRESETS.items()},
    "identity": Identity,
    "grid": Grid,
    "target": Target,
    "two_step": TwoStep,
}

__all__ = ["BUILTINS", "Grid", "Identity", "MatrixGame", "Target", "TwoStep"]
