"""Which policy controls which agents: `--policies` parsed into slots, and the frozen choices.

A slot is one policy and the agents it controls. `--policies "adversary=ippo agent=random"`
gives each PATTERN=CHOICE entry one slot: PATTERN is a team (the agent-name prefix before the
last '_': `adversary` for adversary_0, adversary_1), an agent name or a glob (`adversary_*`);
CHOICE is an algorithm name (a learner), `random`, a checkpoint (a file or a run directory,
`#TEAM` picks one slot of a run with several) or `module:factory` (`factory(spec)` returns a
policy for the slot's sub-spec). Every agent must be covered by exactly one slot.
"""
from __future__ import annotations

import fnmatch
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from marl.core.errors import MarlError, check
from marl.core.policies import RandomPolicy
from marl.core.spec import EnvSpec


@dataclass(frozen=True)
class Slot:
    """One policy of a run and the agents (indices into the env's agents) it controls."""

    name: str
    agents: tuple[int, ...]
    choice: Any
    """An algorithm name (a learner), 'random', a checkpoint path, 'module:factory', or a policy object."""


def team_of(agent: str) -> str:
    """The team of an agent: its name before the last '_' (adversary_0 -> adversary)."""
    return agent.rsplit("_", 1)[0]


def teams(agents: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, a in enumerate(agents):
        out.setdefault(team_of(a), []).append(i)
    return out


def parse(text: str) -> list[tuple[str, str]]:
    """'PATTERN=CHOICE PATTERN=CHOICE' (spaces or commas between entries) -> [(pattern, choice)]."""
    entries = []
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        pattern, eq, choice = item.partition("=")
        check(bool(eq and pattern and choice), f"--policies entry '{item}' is not PATTERN=CHOICE",
              "write e.g. --policies 'adversary=ippo agent=random' (a team, agent name or glob = an algorithm, random, a checkpoint or module:factory)")
        entries.append((pattern, choice))
    check(bool(entries), "--policies is empty", "give PATTERN=CHOICE entries, or leave --policies out to let --algo control every agent")
    return entries


def _slot_name(pattern: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "", pattern).strip("_.-") or "slot"


def assign(entries: Sequence[tuple[str, Any]], agents: Sequence[str]) -> list[Slot]:
    """Slots for (pattern, choice) entries; MarlError for an unknown team, a pattern matching no
    agent, an agent claimed twice or an agent no entry covers."""
    groups, owner, slots = teams(agents), {}, []
    for pattern, choice in entries:
        if any(c in pattern for c in "*?["):
            matched = [i for i, a in enumerate(agents) if fnmatch.fnmatchcase(a, pattern)]
            check(bool(matched), f"--policies pattern '{pattern}' matches none of the agents {list(agents)}",
                  "fix the pattern (teams: " + ", ".join(groups) + ")")
        elif pattern in agents:
            matched = [list(agents).index(pattern)]
        else:
            check(pattern in groups, f"--policies names the unknown team '{pattern}'",
                  f"use a team ({', '.join(groups)}), an agent name ({', '.join(agents)}) or a glob such as '{next(iter(groups))}_*'")
            matched = groups[pattern]
        for i in matched:
            check(i not in owner, f"agent '{agents[i]}' is claimed by two policies ('{owner.get(i)}' and '{pattern}')",
                  "give every agent to exactly one --policies entry")
            owner[i] = pattern
        name = _slot_name(pattern)
        check(all(s.name != name for s in slots), f"two --policies entries are both named '{name}'", "use distinct patterns")
        slots.append(Slot(name, tuple(matched), choice))
    missing = [a for i, a in enumerate(agents) if i not in owner]
    check(not missing, f"no policy controls agent(s) {missing}", "add a --policies entry for them (e.g. their team = random)")
    return slots


def is_learner(choice: Any) -> bool:
    from marl.algos import ALGOS

    return isinstance(choice, str) and choice in ALGOS


def frozen_policy(choice: Any, spec: EnvSpec, slot: str, device: torch.device, seed: int) -> Any:
    """The fixed policy of a slot whose choice is not an algorithm."""
    if not isinstance(choice, str):
        return choice(spec) if callable(choice) and not hasattr(choice, "act") else choice
    if choice == "random":
        return RandomPolicy(spec, device, seed)
    path, _, team = choice.partition("#")
    if Path(path).exists():
        return checkpoint_policy(path, team or slot, spec, exact=bool(team)).to(device)
    if ":" in choice:
        module, _, attr = choice.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise MarlError(f"--policies {slot}={choice}: {type(err).__name__}: {err}",
                            "give module.path:factory of an importable module (factory(spec) returns a policy)") from None
        policy = factory(spec)
        check(callable(getattr(policy, "act", None)) and callable(getattr(policy, "initial_hidden", None)),
              f"--policies {slot}={choice}: the factory returned {type(policy).__name__}, not a policy",
              "return an object with initial_hidden(E) and act(inputs, hidden, explore) (marl.core.rollout.Policy)")
        return policy
    from marl.algos import ALGOS

    raise MarlError(f"--policies {slot}={choice}: not an algorithm, 'random', an existing checkpoint or module:factory",
                    f"algorithms: {', '.join(ALGOS.names())}")


def checkpoint_policy(path: str, slot: str, spec: EnvSpec, exact: bool = False) -> torch.nn.Module:
    """The frozen policy of the learner `slot` of a saved run (unless `exact`, a run's only
    learner when it has no learner of that name; a single-learner run's is named '')."""
    from marl.algos import ALGOS
    from marl.checkpoint import resolve_checkpoint
    from marl.train import _load_model, _saved_algo_config

    file, ckpt, _ = resolve_checkpoint(path)
    saved = ckpt.get("slots")
    if saved is None:  # a run of one learner over every agent
        saved = {"": {"algo": ckpt["config"]["train"]["algo"], "algo_config": ckpt["config"]["algo"], "agents": None, "model": ckpt["model"]}}
    learners = {k: v for k, v in saved.items() if "model" in v}
    entry = learners.get(slot) or (next(iter(learners.values())) if len(learners) == 1 and not exact else None)
    check(entry is not None, f"checkpoint {file} has no policy '{slot}' (its learners: {', '.join(map(repr, learners))})",
          f"pass {path}#NAME with one of them")
    algo = ALGOS.get(entry["algo"])
    fits = entry["agents"] is None or len(entry["agents"]) == spec.n_agents
    try:
        learner = algo.learner(_saved_algo_config(algo, entry["algo_config"]), spec, torch.device("cpu"), 0) if fits else None
        if learner is not None:
            _load_model(learner, entry["model"], file)
    except (MarlError, RuntimeError, IndexError):
        learner = None
    check(learner is not None, f"the policy in checkpoint {file} does not fit the agents {list(spec.agents)} (their spaces or number differ)",
          "use a checkpoint trained on the same agents of the same env")
    return learner.policy()
