"""What the off-policy actor-critics (MADDPG/MATD3 in `ddpg.py`, the SAC family in `sac.py`)
share: the config fields, the acting module, the critics of joint actions, the transition
replay, target networks and the checkpoint.

How it fits the trainer: `update(batch)` stores the rollout segment the collector just
gathered in a `TransitionReplay` (one row per env step of each env), then takes
`updates_per_step` gradient steps per env step collected, each on `batch_size` sampled rows
(`_train_step`, the family's math). Actors read only their own observation (plus agent id);
critics are per agent, built over grouped layers like every network (`sharing`):

    critic 'central':  Q_i(s, a_1 .. a_N)  s = the env's state, or the agents' observations
                       concatenated (env without state(), or whose state is exactly that)
    critic 'local':    Q_i(o_i, a_i)       independent learners; with one agent this is
                                           single-agent DDPG / TD3 / SAC

Actions enter a critic normalised: continuous ones mapped from the env's [low, high] to
[-1, 1] (the actor's tanh range), discrete ones one-hot. `joint_actions` builds every agent's
critic input at once, without a loop over agents. Twin critics (`twin_critics`) are two weight
sets per group in one grouped network: one batched pass gives both.

Targets: y_i = r_i + gamma * bootstrap_i * Q'_i(s', a'), where bootstrap_i (`next_acting`) is
False after a termination and True after a truncation, whose final observation is kept in the
replay. Target networks follow the online ones by Polyak averaging (`tau`), one `lerp_` over
each flat parameter buffer. Transitions are one env step long: turn-based games, where
an agent's transition runs to its next decision, are refused (one line at the first update, `marl.algos.transitions.one_step_rows`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from marl.algos.optim import adam, clip_grad_norm, flatten
from marl.algos.returns import masked_mean, per_agent_rewards
from marl.algos.transitions import TransitionReplay, one_step_rows
from marl.core.errors import check
from marl.core.policies import frozen_copy
from marl.core.spec import EnvSpec
from marl.nets.dists import categorical_greedy, categorical_sample, mask_logits
from marl.nets.models import AgentNet, with_agent_id
from marl.nets.sharing import resolve_groups

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass(frozen=True)
class ReplayACConfig:
    critic: Literal["central", "local"] = "central"
    """Critic input: 'central' (the state, or all observations, and every agent's action: MADDPG/MASAC) or 'local' (own observation and action: independent learners, single-agent DDPG/TD3/SAC)."""
    critic_input: Literal["state", "obs"] = "state"
    """What a central critic reads besides the actions: 'state' (the env's state(); the concatenated observations on an env without one) or 'obs' (every agent's observation, concatenated)."""
    rollout_len: int = 25
    """Steps collected from every env per update call."""
    updates_per_step: float = 0.04
    """Gradient steps per env step collected (the replay ratio; 0.04 = one per 25 env steps, EPyMARL's one per MPE episode; single-agent control usually takes 1)."""
    batch_size: int = 512
    """Transitions per gradient step."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (env steps of one env; the oldest are overwritten)."""
    learning_starts: int = 1000
    """Transitions the replay must hold before gradient steps start (and at least batch_size)."""
    random_steps: int = 0
    """Env steps at the start with uniformly random actions (fills the replay with broad experience)."""
    actor_lr: float = 5e-4
    """Adam learning rate of the actors."""
    critic_lr: float = 5e-4
    """Adam learning rate of the critics."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.01
    """Polyak rate of the target networks per gradient step (1 = copy)."""
    twin_critics: bool = False
    """Two critics per agent, the smaller of their target values in the targets (TD3, SAC; Fujimoto et al. 2018)."""
    reward: Literal["agent", "sum", "mean"] = "agent"
    """Reward each agent learns from: 'agent' (its own), 'sum' or 'mean' over agents (a team reward)."""
    sharing: str | list[int] = "all"
    """Parameter sharing of actors and critics: 'all', 'none' or a group id per agent such as 0,0,1."""
    agent_id: bool = True
    """Append a one-hot agent id to actor and critic inputs (useful when sharing)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden sizes of actors and critics."""
    layer_norm: bool = False
    """LayerNorm after every hidden linear layer of actors and critics."""
    max_grad_norm: float = 10.0
    """Gradient norm clip of actor and critic steps (0 = off)."""
    allow_state_fallback: bool = True
    """A central critic on an env without env.state(): read the concatenated observations (false: refuse)."""
    replay_device: str = ""
    """Device of the replay buffer: empty = the learner device, or cpu / cuda / cuda:N."""

    discrete = True
    continuous = True

    def validate(self, spec: EnvSpec, rollout_envs: int) -> None:
        for name in ("rollout_len", "batch_size", "buffer_size", "actor_lr", "critic_lr", "updates_per_step"):
            value = getattr(self, name)
            check(value > 0, f"{name} must be positive, got {value}", f"pass a positive --{name.replace('_', '-')}")
        check(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"hidden sizes must be positive, got {list(self.hidden)}",
              "pass --hidden with one or more positive layer widths, e.g. 64,64")
        check(self.buffer_size >= self.batch_size, f"replay of {self.buffer_size} transitions is smaller than a batch of {self.batch_size}",
              "raise --buffer-size or lower --batch-size")
        for name in ("learning_starts", "random_steps", "max_grad_norm"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}", f"pass --{name.replace('_', '-')} 0 or more")
        check(0.0 <= self.gamma <= 1.0, f"gamma must lie in [0, 1], got {self.gamma}", "pass e.g. --gamma 0.99")
        check(0.0 < self.tau <= 1.0, f"tau must lie in (0, 1], got {self.tau}", "pass e.g. --tau 0.01 (1 copies the networks)")
        check(self.replay_device in ("", "cpu") or self.replay_device.startswith("cuda"), f"replay_device '{self.replay_device}' is not understood",
              "leave --replay-device empty (the learner device) or pass cpu / cuda")
        check(not self.replay_device.startswith("cuda") or torch.cuda.is_available(),
              f"replay_device '{self.replay_device}' requested but CUDA is not available", "leave --replay-device empty or pass cpu")
        if self.critic == "central" and self.critic_input == "state" and not spec.has_state:
            check(self.allow_state_fallback, f"the central critic reads a global state but env '{spec.name}' has no state()",
                  "pass --allow-state-fallback true or --critic-input obs to read the concatenated observations, or --critic local")
        resolve_groups(self.sharing, spec.n_agents)


# ----------------------------------------------------------------------------- pure pieces
def joint_actions(joint: Tensor, own: Tensor | None = None, drop_own: bool = False) -> Tensor:
    """Every agent's view of the joint action, [..., N, N * A], from `joint` [..., N, A]: row i
    is the joint action with agent i's slot replaced by `own[..., i, :]` (its policy's action,
    through which the actor's gradient flows; MADDPG keeps the others' stored actions) or, with
    `drop_own`, zeroed (a critic that outputs a value for each of agent i's actions)."""
    n = joint.shape[-2]
    eye = torch.eye(n, dtype=torch.bool, device=joint.device).unsqueeze(-1)  # [N (i), N (j), 1]
    rows = joint.unsqueeze(-3).expand(*joint.shape[:-2], n, n, joint.shape[-1])
    if drop_own:
        rows = rows.masked_fill(eye, 0.0)
    elif own is not None:
        rows = torch.where(eye, own.unsqueeze(-3), rows)
    return rows.flatten(-2)


def soft_update(target: Tensor, online: Tensor, tau: float) -> None:
    """Polyak averaging in place: target <- (1 - tau) target + tau online."""
    with torch.no_grad():
        target.lerp_(online, tau)


# ----------------------------------------------------------------------------- acting
class ReplayActor(nn.Module):
    """The networks needed to act (a learner's `policy()` is a frozen copy of it): per-agent
    actors on local observations (plus agent id), grouped by `sharing`.

    kind 'deterministic' (DDPG): a = affine(tanh(out)) into the env's [low, high]; exploring
    adds Gaussian noise of `noise_std` (or the `noise` given, both in [-1, 1] units) before
    clipping to the bounds. kind 'gaussian' (SAC): out = (mean, log_std); a = affine(tanh(u)),
    u ~ N(mean, std) exploring, u = mean greedy. kind 'categorical' (discrete): masked logits;
    exploring samples softmax(logits) (the forward value of the straight-through Gumbel-softmax),
    greedy takes the argmax."""

    def __init__(self, spec: EnvSpec, groups: Tensor, kind: str, hidden: tuple[int, ...], agent_id: bool,
                 layer_norm: bool, noise_std: float = 0.0):
        super().__init__()
        self.kind, self.agent_id, self.noise_std, self.n = kind, agent_id, noise_std, spec.n_agents
        a = spec.n_actions
        self.net = AgentNet(spec.obs_dim + (spec.n_agents if agent_id else 0), 2 * a if kind == "gaussian" else a,
                            hidden=hidden, groups=groups, activation="relu", layer_norm=layer_norm, out_gain=0.01)
        low = torch.tensor(spec.action_low or [[-1.0] * a] * spec.n_agents, dtype=torch.float32)
        high = torch.tensor(spec.action_high or [[1.0] * a] * spec.n_agents, dtype=torch.float32)
        self.register_buffer("mid", (high + low) / 2)
        self.register_buffer("scale", (high - low) / 2)

    def forward(self, obs: Tensor) -> Tensor:
        """Raw network output [..., N, A] (or [..., N, 2A] for 'gaussian')."""
        return self.net(with_agent_id(obs) if self.agent_id else obs)[0]

    def to_env(self, x: Tensor) -> Tensor:
        """[-1, 1] -> the env's [low, high]."""
        return torch.addcmul(self.mid, self.scale, x)

    def from_env(self, a: Tensor) -> Tensor:
        """The env's [low, high] -> [-1, 1] (what critics read)."""
        return (a - self.mid) / self.scale

    @staticmethod
    def mean_log_std(out: Tensor) -> tuple[Tensor, Tensor]:
        """Split a 'gaussian' output; log_std is squashed into [LOG_STD_MIN, LOG_STD_MAX]."""
        mean, raw = out.chunk(2, dim=-1)
        return mean, LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1)

    def initial_hidden(self, num_envs: int):
        return None

    @torch.no_grad()
    def act(self, inputs: dict, hidden, explore: bool, generator: torch.Generator | None = None, noise: Tensor | None = None):
        out = self(inputs["obs"])
        if self.kind == "categorical":
            logits = mask_logits(out, inputs["avail"])
            return (categorical_sample(logits, generator) if explore else categorical_greedy(logits)), hidden, {}
        if self.kind == "gaussian":
            mean, log_std = self.mean_log_std(out)
            u = mean + log_std.exp() * torch.randn(mean.shape, generator=generator, device=mean.device) if explore else mean
            return self.to_env(torch.tanh(u)), hidden, {}
        x = torch.tanh(out)
        if explore:
            if noise is None:
                noise = self.noise_std * torch.randn(x.shape, generator=generator, device=x.device)
            x = (x + noise).clamp(-1.0, 1.0)
        return self.to_env(x), hidden, {}


def uniform_actions(spec: EnvSpec, avail: Tensor, generator: torch.Generator) -> Tensor:
    """Uniformly random actions: over the available ones (discrete) or in [-1, 1] (continuous, then mapped)."""
    if spec.discrete:
        return categorical_sample(mask_logits(torch.zeros(avail.shape, device=avail.device), avail), generator)
    return torch.rand(avail.shape, generator=generator, device=avail.device) * 2 - 1


# ----------------------------------------------------------------------------- learner base
class ReplayACLearner(nn.Module):
    """Replay, critics, targets and checkpoint of the off-policy actor-critics. A subclass sets
    `actor_kind`, builds with `critic_out` values per agent (`drop_own`: the critic reads the
    other agents' actions only and outputs one value per own action) and writes `_train_step`."""

    actor_kind: str = "deterministic"

    def __init__(self, config: ReplayACConfig, spec: EnvSpec, device: torch.device, seed: int = 0,
                 critic_out: int = 1, drop_own: bool = False, noise_std: float = 0.0):
        super().__init__()
        cfg = self.cfg = config
        self.spec, self.device, self.n, self.drop_own = spec, device, spec.n_agents, drop_own
        n, a = spec.n_agents, spec.n_actions
        groups = resolve_groups(cfg.sharing, n)
        kind = "categorical" if spec.discrete else self.actor_kind
        self.actor = ReplayActor(spec, groups, kind, tuple(cfg.hidden), cfg.agent_id, cfg.layer_norm, noise_std)
        self.central = cfg.critic == "central"
        self.read_state = self.central and cfg.critic_input == "state" and not spec.state_is_concat_obs  # else the observations
        self.n_critics = 2 if cfg.twin_critics else 1
        if self.central:
            ctx = (spec.state_dim if self.read_state else n * spec.obs_dim) + (0 if drop_own and n == 1 else n * a)
        else:
            ctx = spec.obs_dim + (0 if drop_own else a)
        k = int(groups.max()) + 1
        critic_groups = torch.cat([groups + c * k for c in range(self.n_critics)])  # twin critics: their own weight sets
        self.critic = AgentNet(ctx + (n if cfg.agent_id else 0), critic_out, hidden=tuple(cfg.hidden), groups=critic_groups,
                               activation="relu", layer_norm=cfg.layer_norm, out_gain=1.0)
        self.target_actor, self.target_critic = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        for p in (*self.target_actor.parameters(), *self.target_critic.parameters()):
            p.requires_grad_(False)
        self.to(device)
        self.actor_params = [flatten(self.actor.parameters())]
        self.critic_params = [flatten(self.critic.parameters())]
        self._targets = [(flatten(self.target_actor.parameters(), grad=False), self.actor_params[0]),
                         (flatten(self.target_critic.parameters(), grad=False), self.critic_params[0])]
        self.actor_opt = adam(self.actor_params, cfg.actor_lr)
        self.critic_opt = adam(self.critic_params, cfg.critic_lr)
        self.act_gen = torch.Generator(device=device)
        self.act_gen.manual_seed(seed)
        self.train_gen = torch.Generator(device=device)
        self.train_gen.manual_seed(seed + 2)
        self.sample_gen = torch.Generator()
        self.sample_gen.manual_seed(seed + 1)
        self.env_steps = self.grad_steps = 0
        self.credit = 0.0  # fractional gradient steps owed (updates_per_step)
        actions = ((n,), torch.long) if spec.discrete else ((n, a), torch.float32)
        fields = {"obs": ((n, spec.obs_dim), torch.float32), "avail": ((n, a), torch.bool), "alive": ((n,), torch.bool),
                  "acting": ((n,), torch.bool), "actions": actions, "reward": ((n,), torch.float32),
                  "terminated": ((n,), torch.bool), "truncated": ((n,), torch.bool),
                  "next_obs": ((n, spec.obs_dim), torch.float32), "next_avail": ((n, a), torch.bool), "next_acting": ((n,), torch.bool)}
        if self.read_state:
            fields.update({"state": ((spec.state_dim,), torch.float32), "next_state": ((spec.state_dim,), torch.float32)})
        self.replay = TransitionReplay(cfg.buffer_size, fields, cfg.replay_device or device, cfg.batch_size)

    # -- acting -------------------------------------------------------------------------
    def initial_hidden(self, num_envs: int):
        return None

    def policy(self) -> nn.Module:
        """A frozen copy of the acting networks (no critic, optimiser or replay)."""
        return frozen_copy(self.actor)

    def _noise(self, shape: torch.Size) -> Tensor | None:
        """Exploration noise of a deterministic actor while exploring (None: the actor's own)."""
        return None

    @torch.no_grad()
    def act(self, inputs: dict, hidden, explore: bool):
        """Explore with the family's noise or sampling (uniformly random during `random_steps`), else greedy."""
        if explore and self.env_steps < self.cfg.random_steps:
            x = uniform_actions(self.spec, inputs["avail"], self.act_gen)
            return (x if self.spec.discrete else self.actor.to_env(x)), hidden, {}
        noise = self._noise(inputs["avail"].shape) if explore and self.actor.kind == "deterministic" else None
        return self.actor.act(inputs, hidden, explore, self.act_gen, noise)

    # -- critics ------------------------------------------------------------------------
    def action_features(self, actions: Tensor) -> Tensor:
        """Stored actions as critics read them, [..., N, A]: one-hot, or normalised to [-1, 1]."""
        if self.spec.discrete:
            return nn.functional.one_hot(actions, self.spec.n_actions).float()
        return self.actor.from_env(actions)

    def q_values(self, net: AgentNet, obs: Tensor, state: Tensor | None, joint: Tensor, own: Tensor | None = None) -> Tensor:
        """Critic outputs [C, B, N, out] (C = 1 or 2 twin critics) for observations [B, N, D],
        the state [B, S] (central critics reading it), the joint action features [B, N, A]
        and optionally agent i's own action `own` [B, N, A] in place of its stored one."""
        if self.central:
            ctx = state if self.read_state else obs.flatten(-2)
            parts = [ctx.unsqueeze(-2).expand(*obs.shape[:-1], ctx.shape[-1])]
            if not (self.drop_own and self.n == 1):
                parts.append(joint_actions(joint, own, self.drop_own))
        else:
            parts = [obs] if self.drop_own else [obs, joint if own is None else own]
        x = torch.cat(parts, dim=-1)
        if self.cfg.agent_id:
            x = with_agent_id(x)
        if self.n_critics > 1:
            x = torch.cat([x] * self.n_critics, dim=-2)
        out = net(x)[0]
        return out.unflatten(-2, (self.n_critics, self.n)).movedim(-3, 0)

    def actor_q_values(self, obs: Tensor, state: Tensor | None, joint: Tensor, own: Tensor) -> Tensor:
        """`q_values` of the online critics for the actor's loss: the graph carries the gradient
        through the actions `own` only, not the critics' parameter gradients (about a ninth of
        a SAC gradient step's arithmetic, which the actor's step would discard)."""
        self.critic.requires_grad_(False)
        try:
            return self.q_values(self.critic, obs, state, joint, own=own)
        finally:
            self.critic.requires_grad_(True)

    def rewards(self, s: dict) -> Tensor:
        return per_agent_rewards(s["reward"] * s["alive"], self.cfg.reward)

    def critic_step(self, q: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """One critic gradient step on the TD loss sum_c mean_{acting} (Q_c - y)^2, q [C, B, N]."""
        loss = sum(masked_mean((qc - target) ** 2, mask) for qc in q)
        self.critic_opt.zero_grad()
        loss.backward()
        gnorm = clip_grad_norm(self.critic_params, self.cfg.max_grad_norm)
        self.critic_opt.step()
        return {"critic": loss.detach(), "q_mean": masked_mean(q[0].detach(), mask), "target_mean": masked_mean(target, mask),
                "critic_grad_norm": gnorm}

    def actor_step(self, loss: Tensor) -> Tensor:
        self.actor_opt.zero_grad()
        loss.backward()
        gnorm = clip_grad_norm(self.actor_params, self.cfg.max_grad_norm)
        self.actor_opt.step()
        return gnorm

    def update_targets(self) -> None:
        for target, online in self._targets:
            soft_update(target, online, self.cfg.tau)

    # -- learning -----------------------------------------------------------------------
    def update(self, b: dict) -> dict[str, float]:
        cfg = self.cfg
        T, E = b["done"].shape
        self.replay.add(one_step_rows(b, self.replay.fields, self.spec.name,
                                      "use ippo/mappo or idqn (their transitions run to each agent's next decision)"))
        self.env_steps += T * E
        out = {"train/buffer_transitions": float(len(self.replay))}
        if len(self.replay) < max(cfg.learning_starts, cfg.batch_size):
            return out
        self.credit += T * E * cfg.updates_per_step
        steps, self.credit = int(self.credit), self.credit - int(self.credit)
        stats: dict[str, list[Tensor]] = {}
        for sample in self.replay.batches(steps, cfg.batch_size, self.sample_gen):
            for k, v in self._train_step(sample).items():
                stats.setdefault(k, []).append(v.float())
            self.grad_steps += 1
        if stats:
            means = torch.stack([torch.stack(v).mean() for v in stats.values()]).tolist()  # one device sync
            out.update({f"loss/{k}": m for k, m in zip(stats, means)})
        return out

    def _train_step(self, s: dict) -> dict[str, Tensor]:
        raise NotImplementedError

    # -- checkpoint ---------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Optimisers, generators, counters and the replay."""
        return {"actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "act_gen": self.act_gen.get_state(), "train_gen": self.train_gen.get_state(), "sample_gen": self.sample_gen.get_state(),
                "env_steps": self.env_steps, "grad_steps": self.grad_steps, "credit": self.credit, "replay": self.replay.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.act_gen.set_state(state["act_gen"])
        self.train_gen.set_state(state["train_gen"])
        self.sample_gen.set_state(state["sample_gen"])
        self.env_steps, self.grad_steps, self.credit = int(state["env_steps"]), int(state["grad_steps"]), float(state["credit"])
        self.replay.load_state_dict(state["replay"])
