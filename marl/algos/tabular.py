"""Tabular learners for discrete gymnasium envs (FrozenLake, CliffWalking, Taxi): Q-learning,
SARSA, Expected SARSA, their n-step forms and Dyna-Q (Sutton & Barto 2018, ch. 6-8).

One learner; the variants are config values (`method`, `n_step`, `planning_steps`). It fits
the trainer like every learner: `act` is ε-greedy on the table, `update(batch)` takes the
rollout segment the collector gathered ([T, E] rows of the one agent). The env layer one-hot
encodes a Discrete observation (marl.core.spec.Encoder), so a state's index is the argmax of
its observation.

The n-step target of the transition at step τ (S&B eqs. 7.1, 7.2, 7.7):
    G = r_τ + γ r_{τ+1} + ... + γ^{m-1} r_{τ+m-1} + γ^m · V(s_{τ+m})
with m = n, or fewer when the episode ends first: no bootstrap after a termination, and after
a truncation the episode's final state bootstraps. V of a state:
    q_learning      max_a Q(s, a)
    sarsa           Q(s, a_{τ+n}), the action taken there (at a truncation, where none was
                    taken: the expectation, as for expected_sarsa)
    expected_sarsa  Σ_a π(a|s) Q(s, a), π the ε-greedy policy
and Q(s_τ, a_τ) += α (G − Q(s_τ, a_τ)) once step τ + n has been taken (the step that gives
SARSA its next action): updates lag the env by n steps, and the rows still waiting are
carried to the next segment (and into checkpoints).
Dyna-Q (`planning_steps` > 0, S&B 8.2): after each real update a deterministic model keeps
the last (reward, next state, terminated) of the (s, a) just updated, and `planning_steps`
one-step Q-learning updates replay (s, a) pairs drawn uniformly from those seen.
The E envs' transitions of one step update the table together: (s, a) pairs they share
move by the mean of their errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from marl.algos.registry import ALGOS, AlgoEntry
from marl.core.errors import check
from marl.core.spec import EnvSpec
from marl.nets.dists import categorical_sample, mask_logits

CARRIED = ("s", "a", "r", "terminated", "done", "final_s")


@dataclass(frozen=True)
class TabularConfig:
    method: Literal["q_learning", "sarsa", "expected_sarsa"] = "q_learning"
    """Bootstrap value: max over the next actions (Q-learning), the next action taken (SARSA) or the
    expectation under the ε-greedy policy (Expected SARSA)."""
    n_step: int = 1
    """n of the n-step target (1: the one-step methods)."""
    planning_steps: int = 0
    """Dyna-Q: one-step Q-learning updates on the learned model after every real step (0 = none)."""
    lr: float = 0.1
    """Step size α of the table update."""
    gamma: float = 0.99
    """Discount factor."""
    epsilon: float = 0.1
    """Exploration rate of the ε-greedy behaviour (evaluation is greedy)."""
    init_q: float = 0.0
    """Initial value of every table entry (optimistic values explore)."""
    rollout_len: int = 1
    """Steps collected from every env per update call (1 = the online methods of the book)."""

    # action kinds it handles (marl.algos.registry.AlgoConfig)
    discrete = True
    continuous = False

    def validate(self, spec: EnvSpec, rollout_envs: int) -> None:
        check(spec.discrete_obs, f"tabular methods need a Discrete observation space; env '{spec.name}' observes "
              f"{spec.obs_dim} numbers", "use a function-approximation algorithm (dqn, ppo) or a discrete env such as "
              "gym/FrozenLake-v1, gym/CliffWalking-v1, gym/Taxi-v4")
        for name in ("n_step", "rollout_len"):
            check(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}", f"pass --{name.replace('_', '-')} 1 or more")
        check(self.planning_steps >= 0, f"planning_steps must be >= 0, got {self.planning_steps}", "pass --planning-steps 0 or more")
        check(0 < self.lr <= 1, f"lr must lie in (0, 1], got {self.lr}", "pass e.g. --lr 0.1")
        for name in ("gamma", "epsilon"):
            check(0 <= getattr(self, name) <= 1, f"{name} must lie in [0, 1], got {getattr(self, name)}", f"pass --{name} between 0 and 1")


# ----------------------------------------------------------------------------- pure pieces
def greedy_mask(q: Tensor, avail: Tensor) -> Tensor:
    """The available actions of maximal value, [..., A] bool."""
    masked = mask_logits(q, avail)
    return masked == masked.max(-1, keepdim=True).values


def egreedy_probs(q: Tensor, avail: Tensor, epsilon: float) -> Tensor:
    """π(a|s) of the ε-greedy policy, [..., A]: ε spread over the available actions, 1 − ε over
    the greedy ones (ties share it)."""
    best, avail = greedy_mask(q, avail).to(q.dtype), avail.to(q.dtype)
    return epsilon * avail / avail.sum(-1, keepdim=True) + (1 - epsilon) * best / best.sum(-1, keepdim=True)


def table_update(q: Tensor, s: Tensor, a: Tensor, target: Tensor, lr: float) -> None:
    """Q[s, a] += lr (target − Q[s, a]) in place for a batch of transitions; those that share
    (s, a) move it by the mean of their errors."""
    flat = q.view(-1)
    idx = s * q.shape[-1] + a
    err = target - flat[idx]
    total = torch.zeros_like(flat).index_add_(0, idx, err)
    count = torch.zeros_like(flat).index_add_(0, idx, torch.ones_like(err))
    flat.add_(lr * total / count.clamp_min(1.0))


# ----------------------------------------------------------------------------- acting
class TablePolicy(nn.Module):
    """ε-greedy on a Q table [S, A]; greedy breaks ties by the first action, exploring uniformly."""

    def __init__(self, n_states: int, n_actions: int, init_q: float, epsilon: float, seed: int, device: torch.device):
        super().__init__()
        self.register_buffer("q", torch.full((n_states, n_actions), float(init_q), device=device))
        self.epsilon, self.seed = epsilon, seed
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)

    def initial_hidden(self, num_envs: int):
        return None

    @torch.no_grad()
    def act(self, inputs: dict, hidden, explore: bool):
        q, avail = self.q[inputs["obs"].argmax(-1)], inputs["avail"]  # [E, N, A]
        if not explore:
            return mask_logits(q, avail).argmax(-1), hidden, {}
        probs = egreedy_probs(q, avail, self.epsilon)
        return categorical_sample(mask_logits(probs.log(), probs > 0), self.gen), hidden, {}


# ----------------------------------------------------------------------------- learner
class TabularLearner(nn.Module):
    def __init__(self, config: TabularConfig, spec: EnvSpec, device: torch.device, seed: int = 0):
        super().__init__()
        self.cfg, self.spec, self.device = config, spec, device
        S, A = spec.obs_dim, spec.n_actions
        self.pi = TablePolicy(S, A, config.init_q, config.epsilon, seed, device)
        self.gen = torch.Generator(device=device)  # planning draws
        self.gen.manual_seed(seed + 1)
        # Dyna-Q's model, and the actions available in each state seen (the bootstraps' max and
        # expectation run over them: an action never available keeps its initial value)
        self.model = {"r": torch.zeros(S, A, device=device), "next": torch.zeros(S, A, dtype=torch.long, device=device),
                      "terminated": torch.zeros(S, A, dtype=torch.bool, device=device),
                      "seen": torch.zeros(S, A, dtype=torch.bool, device=device),
                      "avail": torch.ones(S, A, dtype=torch.bool, device=device)}
        self.carry: dict[str, Tensor] | None = None  # rows whose target still waits for later steps
        self.env_steps = 0

    @property
    def q(self) -> Tensor:
        return self.pi.q

    def initial_hidden(self, num_envs: int):
        return None

    def act(self, inputs: dict, hidden, explore: bool):
        return self.pi.act(inputs, hidden, explore)

    def policy(self) -> nn.Module:
        """A frozen acting copy (the table and the ε-greedy rule), on the CPU."""
        q = self.q
        pi = TablePolicy(q.shape[0], q.shape[1], 0.0, self.cfg.epsilon, self.pi.seed, torch.device("cpu"))
        pi.q.copy_(q.detach().cpu())
        return pi.eval()

    def _value(self, s: Tensor) -> Tensor:
        """V(s) under the method's bootstrap over the actions available in s (sarsa: the
        expectation, for states where no action was taken)."""
        q, avail = self.q[s], self.model["avail"][s]
        if self.cfg.method == "q_learning":
            return mask_logits(q, avail).max(-1).values
        return (egreedy_probs(q, avail, self.cfg.epsilon) * q).sum(-1)

    def update(self, b: dict) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.n_step
        T, E = b["done"].shape
        self.env_steps += T * E
        rows = {"s": b["obs"][..., 0, :].argmax(-1), "a": b["actions"][..., 0], "r": b["reward"][..., 0],
                "terminated": b["terminated"][..., 0], "done": b["done"], "final_s": b["final_obs"][..., 0, :].argmax(-1)}
        done = b["done"]
        self.model["avail"][rows["s"]] = b["avail"][..., 0, :]
        self.model["avail"][rows["final_s"][done]] = b["final_avail"][..., 0, :][done]
        if self.carry is not None:
            rows = {k: torch.cat([self.carry[k], v]) for k, v in rows.items()}
        L, errors = rows["s"].shape[0], []
        for tau in range(L - n):  # step tau + n has been taken: its target is known
            errors.append(self._real_update(rows, tau))
            if cfg.planning_steps:
                self._plan(rows, tau)
        self.carry = {k: v[max(0, L - n):].clone() for k, v in rows.items()}
        out = {"train/epsilon": cfg.epsilon}
        if errors:
            out["loss/td_abs"] = float(torch.cat(errors).abs().mean())
        return out

    def _real_update(self, rows: dict, tau: int) -> Tensor:
        cfg = self.cfg
        s, a = rows["s"][tau], rows["a"][tau]
        ret = torch.zeros_like(rows["r"][tau])
        running = torch.ones_like(rows["done"][tau])  # the episode has not ended before this row
        disc = 1.0
        for k in range(cfg.n_step):
            row = tau + k
            ret += running * disc * rows["r"][row]
            disc *= cfg.gamma
            truncated = running & rows["done"][row] & ~rows["terminated"][row]
            ret += truncated * disc * self._value(rows["final_s"][row])
            running = running & ~rows["done"][row]
        nxt_s, nxt_a = rows["s"][tau + cfg.n_step], rows["a"][tau + cfg.n_step]
        boot = self.q[nxt_s, nxt_a] if cfg.method == "sarsa" else self._value(nxt_s)
        ret += running * disc * boot
        err = ret - self.q[s, a]
        table_update(self.q, s, a, ret, cfg.lr)
        if cfg.planning_steps:
            done = rows["done"][tau]
            m = self.model
            m["r"][s, a] = rows["r"][tau]
            m["next"][s, a] = torch.where(done, rows["final_s"][tau], rows["s"][tau + 1])
            m["terminated"][s, a] = rows["terminated"][tau]
            m["seen"][s, a] = True
        return err

    def _plan(self, rows: dict, tau: int) -> None:
        """`planning_steps` one-step Q-learning updates on (s, a) pairs drawn from the model, E at a time."""
        m, E, A = self.model, rows["s"].shape[1], self.q.shape[1]
        seen = m["seen"].view(-1).to(torch.float32)
        for _ in range(self.cfg.planning_steps):
            idx = torch.multinomial(seen, E, replacement=True, generator=self.gen)
            s, a = idx // A, idx % A
            nxt = m["next"][s, a]
            target = m["r"][s, a] + self.cfg.gamma * (~m["terminated"][s, a]) * mask_logits(self.q[nxt], m["avail"][nxt]).max(-1).values
            table_update(self.q, s, a, target, self.cfg.lr)

    # -- checkpoint ---------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Generators, counters, the rows waiting for their target and the Dyna model."""
        return {"act_gen": self.pi.gen.get_state(), "gen": self.gen.get_state(), "env_steps": self.env_steps,
                "carry": self.carry, "model": self.model}

    def load_extra_state(self, state: dict) -> None:
        self.pi.gen.set_state(state["act_gen"])
        self.gen.set_state(state["gen"])
        self.env_steps = int(state["env_steps"])
        self.carry = None if state["carry"] is None else {k: v.to(self.device) for k, v in state["carry"].items()}
        self.model = {k: v.to(self.device) for k, v in state["model"].items()}


def _entry(summary: str, **preset) -> AlgoEntry:
    return AlgoEntry(TabularConfig, TabularLearner, preset, summary, multi_agent="idqn")


ALGOS.register("q_learning", _entry("tabular Q-learning, ε-greedy (Watkins 1989; Sutton & Barto 6.5); --n-step N for n-step",
                                    method="q_learning"))
ALGOS.register("sarsa", _entry("tabular SARSA, on-policy TD control (Sutton & Barto 6.4); --n-step N for n-step SARSA (7.2)",
                               method="sarsa"))
ALGOS.register("expected_sarsa", _entry("tabular Expected SARSA: the ε-greedy expectation of the next values (Sutton & Barto 6.6)",
                                        method="expected_sarsa"))
ALGOS.register("dyna_q", _entry("tabular Dyna-Q: Q-learning plus updates replayed from a learned model (Sutton & Barto 8.2)",
                                method="q_learning", planning_steps=10))
