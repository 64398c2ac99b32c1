"""The algorithm registry (name -> config class, learner class, preset values) and the
contract every registered algorithm implements: `AlgoConfig` for its config, `Learner` for
its learner. The trainer, the evaluator and checkpoints use nothing else of them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

import torch

from marl.configio import check_finite
from marl.core.errors import MarlError
from marl.core.registry import Registry
from marl.core.rollout import Policy
from marl.core.spec import EnvSpec


@runtime_checkable
class AlgoConfig(Protocol):
    """A frozen dataclass whose fields are the algorithm's hyperparameters (one flag each).

    `discrete` / `continuous`: the action kinds it handles; the trainer refuses an env with
    any other (marl.train.build). `validate(spec, rollout_envs)` raises a MarlError for a
    configuration that cannot run on the env, before anything is built. A field added later
    may name, in a class attribute `saved_defaults`, the value that rebuilds runs saved
    before it existed (marl.train._saved_algo_config)."""

    discrete: bool
    continuous: bool

    def validate(self, spec: EnvSpec, rollout_envs: int) -> None: ...


@runtime_checkable
class Learner(Policy, Protocol):
    """A torch.nn.Module built as learner(config, spec, device, seed) that acts (`Policy`:
    `initial_hidden(E)`, `act(inputs, hidden, explore) -> (actions, hidden, extras)`, where
    `inputs` holds the tensors of marl.core.vec.OBS_FIELDS, e.g. `obs` [E, N, D]) and learns:
    `update(batch)` takes a rollout batch with leading [T, E] axes (marl.core.rollout) plus
    the extras `act` returned while exploring, and returns metrics to log (it never logs).
    Checkpoints hold `state_dict()` (networks and buffers) and `extra_state()` (optimiser,
    generators, counters, replay); the trainer checks `parameters()` and `buffers()` for
    non-finite values after every update.

    `policy()` hands out a frozen acting copy: a torch.nn.Module on the CPU holding deep copies
    of only the networks acting needs (no optimiser, no replay, no critic, no target network),
    with `initial_hidden(E)` and `act(inputs, hidden, explore)` equal to the learner's and
    `state_dict/load_state_dict` of its own. The learner keeps that acting module itself and
    delegates `act` to it; evaluators and opponents hold such copies, never learners."""

    def policy(self) -> torch.nn.Module: ...

    def update(self, batch: dict[str, torch.Tensor], /) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any: ...

    def extra_state(self) -> dict: ...

    def load_extra_state(self, state: dict, /) -> None: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def buffers(self) -> Iterator[torch.Tensor]: ...


@dataclass(frozen=True)
class AlgoEntry:
    config: type[AlgoConfig]
    """Frozen config dataclass of the algorithm family."""
    learner: type[Learner]
    """Learner class: learner(config, spec, device, seed)."""
    preset: dict = field(default_factory=dict)
    """Config values that make this name (e.g. mappo = critic 'central')."""
    summary: str = ""
    """One line for --help."""
    multi_agent: str = ""
    """Set for a single-agent name (marl.single_agent): the algorithm to use instead on an env
    with more than one agent. The trainer refuses such an env for this name."""

    def make_config(self, **overrides: Any) -> AlgoConfig:
        names = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise MarlError(f"unknown hyperparameter(s) {unknown} for {self.config.__name__}", f"valid: {sorted(names)}")
        return check_finite(self.config(**{**self.preset, **overrides}))


ALGOS: Registry[AlgoEntry] = Registry("algorithm")
