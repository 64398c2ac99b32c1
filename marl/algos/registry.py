"""The algorithm registry: name -> (config dataclass, learner class, preset values)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from marl.configio import check_finite
from marl.core.errors import MarlError
from marl.core.registry import Registry


@dataclass(frozen=True)
class AlgoEntry:
    config: type
    """Frozen config dataclass of the algorithm family."""
    learner: type
    """Learner class: learner(config, spec, device, seed)."""
    preset: dict = field(default_factory=dict)
    """Config values that make this name (e.g. mappo = critic 'central')."""
    summary: str = ""
    """One line for --help."""

    def make_config(self, **overrides: Any):
        names = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise MarlError(f"unknown hyperparameter(s) {unknown} for {self.config.__name__}", f"valid: {sorted(names)}")
        return check_finite(self.config(**{**self.preset, **overrides}))


ALGOS: Registry[AlgoEntry] = Registry("algorithm")
