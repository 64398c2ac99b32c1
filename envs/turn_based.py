"""Turn-based (AEC) PettingZoo envs as a ParallelEnv: one parallel step = one move.

- observations hold the agent to move next (its obs kept as is, e.g. the
  {"observation", "action_mask"} dict of classic games) and the final observation of every
  agent whose game ended at this move (to bootstrap a truncated game from); the runner
  marks as acting only the agents still in `agents`;
- actions need only that agent's entry (others are ignored);
- rewards hold every live agent's reward from that move (`env.rewards`), so the final
  move pays both the winner and the loser;
- terminations/truncations hold every live agent; an agent leaves `agents` on the move
  that ends it, and when the game ends every remaining agent is ended (`agents` is empty);
- done agents that AEC still expects a `step(None)` for are stepped internally.

Moves go through the env's wrappers (their checks stay); the per-move reads (agent to move,
rewards, flags, infos) come from the innermost env below wrappers that keep none of these
themselves (PettingZoo's own forward them): the same objects without a walk through each
wrapper's `__getattr__` (a third of the adapter's time on connect four).
"""
from __future__ import annotations

from typing import Any

from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv


_READ = frozenset({"agents", "agent_selection", "rewards", "terminations", "truncations", "infos"})


def _reads_from(env: AECEnv) -> AECEnv:
    """The innermost env whose `_READ` fields are `env`'s: past every wrapper that keeps none
    of them itself (one that does, e.g. a reward transform, is read from)."""
    while hasattr(env, "env") and not (_READ & set(vars(env))):
        env = env.env
    return env


class TurnBasedParallel(ParallelEnv):
    def __init__(self, aec_env: AECEnv):
        self.aec = aec_env
        self.raw = aec_env  # set again after each reset: a wrapper may keep its own fields from then on
        self.possible_agents = list(aec_env.possible_agents)
        self.agents: list[str] = []
        self.metadata = dict(getattr(aec_env, "metadata", {}))
        self.render_mode = getattr(aec_env, "render_mode", None)
        state_space = getattr(aec_env, "state_space", None)
        if state_space is not None:
            self.state_space = state_space

    def observation_space(self, agent: str) -> spaces.Space:
        return self.aec.observation_space(agent)

    def action_space(self, agent: str) -> spaces.Space:
        return self.aec.action_space(agent)

    def _skip_done(self) -> None:
        """Step None for done agents AEC selects until a live agent is to move (or none is left)."""
        raw = self.raw
        while raw.agents and (raw.terminations[raw.agent_selection] or raw.truncations[raw.agent_selection]):
            self.aec.step(None)

    def _next_obs(self) -> dict[str, Any]:
        actor = self.raw.agent_selection
        return {actor: self.aec.observe(actor)} if self.agents else {}

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.aec.reset(seed=seed, options=options)
        self.raw = _reads_from(self.aec)
        self._skip_done()
        raw = self.raw
        self.agents = [a for a in raw.agents if not (raw.terminations[a] or raw.truncations[a])]
        return self._next_obs(), {a: dict(raw.infos[a]) for a in self.agents}

    def step(self, actions: dict):
        aec, raw, before = self.aec, self.raw, self.agents
        actor = raw.agent_selection
        if actor not in actions:
            raise KeyError(f"turn-based env: '{actor}' is to move but actions has only {sorted(actions)}")
        aec.step(actions[actor])
        rewards = {a: float(raw.rewards.get(a, 0.0)) for a in before}
        terms = {a: bool(raw.terminations.get(a, False)) for a in before}
        truncs = {a: bool(raw.truncations.get(a, False)) for a in before}
        infos = {a: dict(raw.infos.get(a, {})) for a in before}
        final = {a: aec.observe(a) for a in before if a in raw.agents and (terms[a] or truncs[a])}
        self._skip_done()
        self.agents = [a for a in raw.agents if not (raw.terminations[a] or raw.truncations[a])]
        for a in before:  # an agent that left without a flag (e.g. the game is over) ends now
            if a not in self.agents and not (terms[a] or truncs[a]):
                terms[a] = True
        return {**final, **self._next_obs()}, rewards, terms, truncs, infos

    def state(self):
        return self.aec.state()

    def render(self):
        return self.aec.render()

    def close(self):
        self.aec.close()
