"""On-policy actor-critic family: IA2C, IPPO (local critics), MAA2C, MAPPO (central critic).

One learner; the variants are config values (`critic`, `clip`, `epochs`). The math reads
top to bottom in `update`: values → GAE(λ) → normalised advantages → clipped surrogate,
(clipped) value loss, entropy bonus → clipped gradient step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from marl.algos.distributional import energy_distance, gmm_mean, gmm_params, point_mass
from marl.algos.optim import adam, clip_grad_norm, flatten
from marl.algos.registry import ALGOS, AlgoEntry
from marl.algos.returns import RunningNorm, gae, normalize, own_gae, per_agent_rewards, preserve_outputs
from marl.core.errors import check
from marl.core.rollout import reset_hidden
from marl.core.spec import EnvSpec
from marl.nets.dists import (
    categorical_greedy,
    categorical_logp,
    categorical_logp_entropy,
    categorical_sample,
    gaussian_entropy,
    gaussian_logp,
    gaussian_sample,
    mask_logits,
)
from marl.core.policies import device_generator, frozen_copy
from marl.nets.models import AgentNet, SetNet, stack_nets, unroll, with_agent_id
from marl.nets.sharing import resolve_groups


@dataclass(frozen=True)
class OnPolicyConfig:
    critic: Literal["local", "central"] = "central"
    """Value critic input: 'local' (own observation: IA2C/IPPO) or 'central' (every agent's: MAA2C/MAPPO)."""
    critic_dist: Literal["none", "gmm"] = "none"
    """Value critic output: 'none' (one value, squared error) or 'gmm' (GMAC, Nam et al. 2021: a mixture of
    Gaussians trained with the energy distance to the λ-return, a point mass; its mean is the value)."""
    gmm_components: int = 5
    """Gaussians in the mixture of a 'gmm' critic."""
    critic_net: Literal["sets", "mlp"] = "sets"
    """Network of a central critic: 'sets' (Deep Sets: every agent's observation through its
    sharing group's encoder, the embeddings averaged, plus the global state where it holds
    more than the observations) or 'mlp' (an MLP on the global state, Yu et al.'s)."""
    rollout_len: int = 25
    """Steps collected from every env before each update."""
    lr: float = 5e-4
    """Adam learning rate of actor and critic."""
    lr_anneal_steps: int = 0
    """Anneal the learning rate linearly to 0 over this many env steps (0 = constant; set it to --steps to end at 0)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE λ (1 = Monte-Carlo advantages, 0 = one-step TD)."""
    baseline: bool = True
    """Subtract the critic's value from the return to form the advantage (false: the return itself, REINFORCE
    without a baseline; the critic still values the observation where a rollout cuts an episode)."""
    reward: Literal["agent", "sum", "mean"] = "agent"
    """Reward each agent learns from: 'agent' (its own), 'sum' or 'mean' (the team's, a common reward)."""
    clip: float = 0.2
    """PPO ratio clip; 0 turns the surrogate into the plain policy gradient (A2C)."""
    value_clip: float = 0.0
    """Clip of the value update around the old value (0 = off)."""
    epochs: int = 10
    """Passes over each rollout."""
    minibatches: int = 2
    """Minibatches per epoch (split over env-steps; over envs when recurrent)."""
    ent_coef: float = 0.01
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 10.0
    """Gradient norm clip (0 = off)."""
    norm_adv: bool = True
    """Normalise advantages over the batch."""
    value_norm: bool = True
    """Train the critic on running-normalised returns (MAPPO's value normalisation)."""
    popart: bool = False
    """Rescale the critic's output layer when the value statistics change (PopArt), so that the
    denormalised values stay put; it keeps --minibatches 1 from diverging. Off by default: it
    learned simple_spread slower (BENCHMARKS.md, "Why these defaults")."""
    sharing: str | list[int] = "all"
    """Parameter sharing: 'all', 'none' or a group id per agent such as 0,0,1."""
    agent_id: bool = True
    """Append a one-hot agent id to network inputs (useful when sharing)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of actor and critic."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Hidden activation: tanh or relu."""
    layer_norm: bool = False
    """LayerNorm after every hidden linear layer. It bounds the critic's output however far the
    inputs move, which keeps bootstrapped truncation values from feeding back without limit."""
    recurrent: bool = False
    """GRU after the first layer of actor and critic (trained over whole rollouts)."""

    # action kinds it handles (marl.algos.registry.AlgoConfig)
    discrete = True
    continuous = True
    # runs saved before a field existed were built with these values (marl.train._saved_algo_config)
    saved_defaults = {"critic_net": "mlp"}

    @property
    def team_value(self) -> bool:
        """A central critic with a team reward learns one value per env step: every agent has
        the same return, so the critic's head (the whole MLP critic, which then takes the
        state without an agent id) runs once per env step instead of once per agent."""
        return self.critic == "central" and self.reward != "agent"

    def validate(self, spec: EnvSpec, rollout_envs: int) -> None:
        for name in ("lr", "rollout_len", "epochs", "minibatches"):
            value = getattr(self, name)
            check(value > 0, f"{name} must be positive, got {value}", f"pass a positive --{name.replace('_', '-')}")
        check(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"hidden sizes must be positive, got {list(self.hidden)}",
              "pass --hidden with one or more positive layer widths, e.g. 64,64")
        check(0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma and gae_lambda must lie in [0, 1]", "pass values such as --gamma 0.99 --gae-lambda 0.95")
        check(self.clip >= 0 and self.value_clip >= 0, "clip and value_clip must be >= 0", "pass --clip 0.2 (or 0 for A2C)")
        check(self.gmm_components > 0, f"gmm_components must be positive, got {self.gmm_components}", "pass --gmm-components 5")
        if self.critic_dist == "gmm":
            check(self.value_clip == 0 and not self.popart, "a 'gmm' critic has no single output to clip or rescale (value_clip, popart)",
                  "pass --value-clip 0 --popart false with --critic-dist gmm")
        units = rollout_envs if self.recurrent else rollout_envs * self.rollout_len
        check(self.minibatches <= units, f"minibatches ({self.minibatches}) exceed the {units} samples in a rollout", "lower --minibatches or raise --rollout-len/--num-envs")


class ActorPolicy(torch.nn.Module):
    """What acting needs of an on-policy learner: the actor (and the Gaussian log-std of a
    continuous one). `act` samples (explore) or takes the greedy action, over the available
    actions; exploring also returns the log-prob. The learner owns one and acts through it;
    `OnPolicyLearner.policy()` hands out a frozen copy."""

    def __init__(self, actor: AgentNet, log_std: torch.nn.Parameter | None, groups: torch.Tensor | None,
                 discrete: bool, agent_id: bool, gen: torch.Generator):
        super().__init__()
        self.actor, self.discrete, self.agent_id, self.gen = actor, discrete, agent_id, gen
        if log_std is not None:
            self.log_std = log_std
            self.register_buffer("groups", groups)
        self.recurrent = actor.recurrent

    def initial_hidden(self, num_envs: int):
        if not self.recurrent:
            return None
        return self.actor.initial_hidden((num_envs,))

    def group_log_std(self) -> torch.Tensor:
        return self.log_std[self.groups]

    @torch.no_grad()
    def act(self, inputs: dict, hidden, explore: bool):
        obs = inputs["obs"]
        out, hidden = self.actor(with_agent_id(obs) if self.agent_id else obs, hidden)
        if explore:
            self.gen = device_generator(self.gen, out.device)
        action, extras = _choose(out, None if self.discrete else self.group_log_std(), inputs["avail"], explore, self.gen)
        return action, hidden, extras

    @staticmethod
    def stack(policies: "list[ActorPolicy]", gen: torch.Generator) -> "ActorStack":
        """Feed-forward copies of one actor (e.g. an opponent pool's snapshots) as one module
        that acts for each row with its own copy (`ActorStack.act_members`), sampling with `gen`."""
        return ActorStack(policies, gen)


def packed_slots(member: torch.Tensor, m: int) -> torch.Tensor:
    """slot[r]: how many rows before row r have the same member (in 0..m-1): row r's place
    in its member's block when each member's rows are packed in order."""
    order = torch.argsort(member, stable=True)
    counts = torch.bincount(member, minlength=m)
    first = counts.cumsum(0) - counts  # where each member's rows start in `order`
    slot = torch.empty_like(member)
    slot[order] = torch.arange(len(member), device=member.device) - first[member[order]]
    return slot


def _choose(out: torch.Tensor, log_std: torch.Tensor | None, avail: torch.Tensor, explore: bool,
            gen: torch.Generator, logp: bool = True) -> tuple[torch.Tensor, dict]:
    """The action from the actor's output [..., n, out] (masked logits, or a Gaussian's mean
    with `log_std` [n, A] or [..., n, A]): sampled with its log-prob (explore; `logp=False`
    leaves the log-prob out), else greedy."""
    if log_std is None:
        logits = mask_logits(out, avail)
        if not explore:
            return categorical_greedy(logits), {}
        action = categorical_sample(logits, gen)
        return action, {"logp": categorical_logp(logits, action)} if logp else {}
    if not explore:
        return out, {}
    log_std = log_std.expand_as(out)
    action = gaussian_sample(out, log_std, gen)
    return action, {"logp": gaussian_logp(out, log_std, action)} if logp else {}


class ActorStack(torch.nn.Module):
    """M feed-forward `ActorPolicy` copies of one architecture as one module (`stack_nets`):
    `act_members(inputs, member, explore)` acts for row e with copy member[e], in one batched
    pass with one call's overhead. Each copy's rows are packed into its block of a [W, M*n]
    batch (W: the most rows of one copy), so every copy runs on W rows, not on all of them."""

    def __init__(self, policies: list[ActorPolicy], gen: torch.Generator):
        super().__init__()
        first = policies[0]
        check(not first.recurrent, "recurrent actors cannot be stacked", "act with each copy on its own rows")
        self.m, self.discrete, self.agent_id, self.gen = len(policies), first.discrete, first.agent_id, gen
        self.actor = stack_nets([p.actor for p in policies])
        self.log_std = None if first.discrete else torch.cat([p.group_log_std() for p in policies])  # [M*n, A]

    @torch.no_grad()
    def act_members(self, inputs: dict, member: torch.Tensor, explore: bool) -> torch.Tensor:
        """Actions [R, n] (or [R, n, A]) for the obs and avail of R rows, row r by copy member[r]."""
        obs = inputs["obs"]
        rows, n = obs.shape[:2]
        x = with_agent_id(obs) if self.agent_id else obs
        member = member.to(obs.device)
        slot = packed_slots(member, self.m)
        packed = x.new_zeros(int(slot.max()) + 1 if rows else 0, self.m, n, x.shape[-1])
        packed[slot, member] = x
        out = self.actor(packed.flatten(1, 2))[0].unflatten(1, (self.m, n))[slot, member]
        log_std = None if self.log_std is None else self.log_std.view(self.m, n, -1)[member]
        return _choose(out, log_std, inputs["avail"], explore, self.gen, logp=False)[0]


class OnPolicyLearner(torch.nn.Module):
    def __init__(self, config: OnPolicyConfig, spec: EnvSpec, device: torch.device, seed: int = 0):
        super().__init__()
        self.cfg, self.spec, self.device = config, spec, device
        groups = resolve_groups(config.sharing, spec.n_agents)
        n, extra = spec.n_agents, spec.n_agents if config.agent_id else 0
        kw = dict(hidden=tuple(config.hidden), recurrent=config.recurrent, activation=config.activation,
                  layer_norm=config.layer_norm)
        self.actor = AgentNet(spec.obs_dim + extra, spec.n_actions, out_gain=0.01, groups=groups, **kw)
        self.sets = config.critic == "central" and config.critic_net == "sets"
        self.gmm = config.critic_dist == "gmm"
        v_out = 3 * config.gmm_components if self.gmm else 1  # a mixture: logits, means, raw stds
        self.context_dim = 0 if spec.state_is_concat_obs else spec.state_dim  # the state part a set critic reads
        if self.sets:
            self.critic = SetNet(spec.obs_dim + extra, self.context_dim, v_out, groups=groups,
                                 per_agent=not config.team_value, out_gain=1.0, **kw)
        elif config.team_value:  # one network for the team, whatever the actors share
            self.critic = AgentNet(spec.state_dim, v_out, out_gain=1.0, groups=torch.zeros(n, dtype=torch.long), **kw)
        else:
            critic_in = spec.state_dim if config.critic == "central" else spec.obs_dim
            self.critic = AgentNet(critic_in + extra, v_out, out_gain=1.0, groups=groups, **kw)
        if not spec.discrete:
            self.log_std = torch.nn.Parameter(torch.zeros(int(groups.max()) + 1, spec.n_actions))
            self.register_buffer("groups", groups)
        self.value_norm = RunningNorm()
        self.to(device)
        self.params = [flatten(self.parameters())]  # a list, so that the module does not register it twice
        self.opt = adam(self.params, config.lr, eps=1e-5)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.n = n
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.long))
        # the acting part, over the same tensors (kept out of the module tree: the checkpoint keys stay the learner's)
        self.__dict__["pi"] = ActorPolicy(self.actor, getattr(self, "log_std", None), getattr(self, "groups", None),
                                          spec.discrete, config.agent_id, self.gen)

    def policy(self) -> ActorPolicy:
        """A frozen copy of the acting part on the CPU: the actor only (no critic, no optimiser)."""
        return frozen_copy(self.pi)

    # -- acting -------------------------------------------------------------------------
    def _with_id(self, obs: torch.Tensor) -> torch.Tensor:
        return with_agent_id(obs) if self.cfg.agent_id else obs

    def _critic_in(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """[..., N, D]; a feed-forward team critic gets [..., 1, S] and its value is broadcast."""
        if self.cfg.critic == "local":
            v_in = obs
        elif self.cfg.team_value and not self.cfg.recurrent:
            return state.unsqueeze(-2)
        else:  # recurrent team critics keep one hidden state per agent, like the actors
            v_in = state.unsqueeze(-2).expand(*state.shape[:-1], self.n, state.shape[-1])
        return with_agent_id(v_in) if self.cfg.agent_id and not self.cfg.team_value else v_in

    def _critic_out(self, obs: torch.Tensor, state: torch.Tensor, h=None) -> tuple[torch.Tensor, Any]:
        """The critic's output [..., N, 1] (a mixture's [..., N, 3K] with 'gmm') and its next hidden state."""
        if self.sets:
            out, h = self.critic(self._with_id(obs), state[..., :self.context_dim], h)
        else:
            out, h = self.critic(self._critic_in(obs, state), h)
        return out.expand(*obs.shape[:-1], out.shape[-1]), h

    def _value(self, obs: torch.Tensor, state: torch.Tensor, h=None) -> tuple[torch.Tensor, Any]:
        """Normalised values [..., N] (a mixture's mean) and the critic's next hidden state."""
        out, h = self._critic_out(obs, state, h)
        return (gmm_mean(out) if self.gmm else out.squeeze(-1)), h

    def initial_hidden(self, num_envs: int):
        if not self.cfg.recurrent:
            return None
        h = self.actor.initial_hidden((num_envs,), self.n).to(self.device)
        return torch.cat([h, h], dim=-1)

    def _split(self, hidden):
        if hidden is None:
            return None, None
        half = hidden.shape[-1] // 2
        return hidden[..., :half], hidden[..., half:]

    def _log_std(self) -> torch.Tensor:
        return self.pi.group_log_std()

    @torch.no_grad()
    def act(self, inputs: dict, hidden, explore: bool):
        """The actor's action (`ActorPolicy.act`). Exploring with a recurrent critic (whose state
        must advance with the rollout) also returns the denormalised value; a feed-forward
        critic runs once per rollout in the update."""
        ha, hc = self._split(hidden)
        extras = {}
        if explore and self.cfg.recurrent:
            value, hc = self._value(inputs["obs"], inputs["state"], hc)
            extras["value"] = self._denormalize(value)
            extras["critic_hidden"] = hc  # after this step, before any reset: bootstraps its next observation
        action, ha, own = self.pi.act(inputs, ha, explore)
        hidden = None if ha is None else torch.cat([ha, hc], dim=-1)
        return action, hidden, {**extras, **own}

    # -- learning -----------------------------------------------------------------------
    def _evaluate(self, b: dict, h0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs, entropies and normalised values of the stored actions, [T, E, N] (a 'gmm'
        critic's mixtures [T, E, N, 3K] instead of values)."""
        ha, hc = self._split(h0)
        out = unroll(self.actor, (self._with_id(b["obs"]),), ha, b["done"])
        values = unroll(self._critic_out if self.gmm else self._value, (b["obs"], b["state"]), hc, b["done"])
        if self.spec.discrete:
            return (*categorical_logp_entropy(mask_logits(out, b["avail"]), b["actions"]), values)
        log_std = self._log_std().expand_as(out)
        return gaussian_logp(out, log_std, b["actions"]), gaussian_entropy(log_std), values

    def _denormalize(self, value: torch.Tensor) -> torch.Tensor:
        return self.value_norm.denormalize(value) if self.cfg.value_norm else value

    @torch.no_grad()
    def _rollout_values(self, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, next_values), [T, E, N], denormalised: the value of the observation at and
        after every step t. A feed-forward critic evaluates the rollout's observations, the
        last ones and the final ones of ended episodes in one batched pass. A recurrent one
        had its values computed while acting; its bootstrap values continue from the critic
        state after each step (before the reset of an ended episode, whose final observation
        it reads), as an unbroken unroll would."""
        T, E = b["reward"].shape[:2]
        ended = b["done"].unsqueeze(-1) if self.cfg.team_value else b["terminated"] | b["truncated"]
        rows = ended.flatten(0, 1).any(-1).nonzero().squeeze(-1)  # the steps whose final observation is read
        obs = [b["next_obs"], b["final_obs"].flatten(0, 1).index_select(0, rows)]
        state = [b["next_state"], b["final_state"].flatten(0, 1).index_select(0, rows)]
        if self.cfg.recurrent:
            h = b["critic_hidden"]  # [T, E, N, H]
            last_h = reset_hidden(h[-1], b["done"][-1])  # as the collector did
            v = self._denormalize(self._value(torch.cat(obs), torch.cat(state), torch.cat([last_h, h.flatten(0, 1).index_select(0, rows)]))[0])
            values = b["value"]
        else:
            v = self._denormalize(self._value(torch.cat([b["obs"].flatten(0, 1), *obs]),
                                              torch.cat([b["state"].flatten(0, 1), *state]))[0])
            values = v[:T * E].view(T, E, -1)
        last, at_rows = v[-(E + len(rows)):].split([E, len(rows)])
        final = at_rows.new_zeros(T * E, at_rows.shape[-1]).index_copy_(0, rows, at_rows)
        nxt = torch.cat([values[1:], last.unsqueeze(0)])
        return values, torch.where(ended, final.view(T, E, -1), nxt)

    def _advantages(self, b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, advantages, returns, mask), [T, E, N]: mask marks the rows the losses and
        statistics use (decisions whose return is known).

        A team value (`team_value`) has one return per env step: it bootstraps until the env's
        episode ends (terminated unless an agent was truncated at its last step), whichever
        agents ended before, as the team value-based learners do. Otherwise each agent's return
        runs over its own decisions (marl.algos.returns: in turn-based games the rewards between
        two of its moves belong to the first, γ once per own decision) and ends at its own end;
        a decision whose next one lies past the rollout has no return yet and is left out."""
        cfg = self.cfg
        values, next_values = self._rollout_values(b)
        rewards = per_agent_rewards(b["reward"], cfg.reward)
        if cfg.team_value:
            done = b["done"].unsqueeze(-1).expand_as(rewards)
            term = done & ~b["truncated"].any(-1, keepdim=True)
            adv, returns = gae(rewards, values, next_values, term, done, cfg.gamma, cfg.gae_lambda)
            return values, adv, returns, b["acting"]
        ended = b["terminated"] | b["truncated"] | b["done"].unsqueeze(-1)
        adv, returns, mask = own_gae(rewards, values, next_values, b["terminated"], ended, b["acting"], b["next_acting"],
                                     cfg.gamma, cfg.gae_lambda)
        return values, adv, returns, mask

    def update(self, b: dict) -> dict[str, float]:
        cfg = self.cfg
        values, adv, returns, mask = self._advantages(b)
        if not cfg.baseline:
            adv = returns
        if cfg.value_norm:
            old_v = self.value_norm.normalize(values)  # the critic's own outputs: the value clip's centre
            old = (self.value_norm.mean.clone(), self.value_norm.std) if cfg.popart else None
            self.value_norm.update(returns[mask])
            if old is not None:  # PopArt rescales the critic to output `values` in the new statistics
                preserve_outputs(self.critic.output_layer, *old, self.value_norm.mean, self.value_norm.std)
                old_v = self.value_norm.normalize(values)
            target = self.value_norm.normalize(returns)
        else:
            target, old_v = returns, values
        if cfg.norm_adv:
            adv = normalize(adv, mask)
        T, E = b["reward"].shape[:2]
        if cfg.lr_anneal_steps > 0:
            self.opt.lr = cfg.lr * max(0.0, 1.0 - float(self.env_steps) / cfg.lr_anneal_steps)
        self.env_steps += T * E
        h0 = b.get("hidden0")
        data = {"obs": b["obs"], "state": b["state"], "avail": b["avail"], "actions": b["actions"], "done": b["done"],
                "weight": mask.to(adv.dtype), "adv": adv, "target": target, "old_v": old_v, "old_logp": b["logp"]}
        if not cfg.recurrent:
            # independent env-steps (agents kept together): flatten [T, E] once and keep the steps
            # where an agent learns (in a turn-based game a slot's agents wait at every other step)
            data = {k: v.flatten(0, 1) for k, v in data.items()}
            live = data["weight"].flatten(1).any(-1)
            if bool(live.any()) and not bool(live.all()):
                data = {k: v[live] for k, v in data.items()}
        stats = []
        for _ in range(cfg.epochs):  # minibatches of env-steps, or of whole env sequences when recurrent
            perm = torch.randperm(E if cfg.recurrent else len(data["adv"]), generator=self.gen, device=self.device)
            for idx in perm.chunk(cfg.minibatches):  # index_select: a quarter of the cost of v[idx] at this size
                mb = {k: v.index_select(1 if cfg.recurrent else 0, idx) for k, v in data.items()}
                stats.append(self._step(mb, None if h0 is None else h0.index_select(0, idx)))
        means = torch.stack(stats).mean(0).tolist()
        return {f"loss/{k}": v for k, v in zip(("policy", "value", "entropy", "approx_kl", "clipfrac", "grad_norm"), means)}

    def _step(self, mb: dict, h0) -> torch.Tensor:
        """One gradient step on a minibatch; returns the step's statistics as one tensor."""
        cfg = self.cfg
        logp, ent, values = self._evaluate(mb, h0)
        w, a, ret, ov = mb["weight"], mb["adv"], mb["target"], mb["old_v"]
        denom = w.sum().clamp_min(1.0)
        mean = lambda x: (x * w).sum() / denom  # noqa: E731  (over the decisions with a return)
        log_ratio = logp - mb["old_logp"]
        ratio = log_ratio.exp()
        if cfg.clip > 0:
            pg_loss = -mean(torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a))
        else:
            pg_loss = -mean(logp * a)
        if self.gmm:  # GMAC: energy distance between the predicted mixture and the λ-return
            v_loss = energy_distance(gmm_params(values), point_mass(ret))
        else:
            v_loss = (values - ret) ** 2
        if cfg.value_clip > 0:
            clipped = ov + (values - ov).clamp(-cfg.value_clip, cfg.value_clip)
            v_loss = torch.max(v_loss, (clipped - ret) ** 2)
        v_loss, entropy = mean(v_loss), mean(ent)
        loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
        self.opt.zero_grad()
        loss.backward()
        gnorm = clip_grad_norm(self.params, cfg.max_grad_norm)
        self.opt.step()
        with torch.no_grad():
            kl = mean((ratio - 1) - log_ratio)
            clipfrac = mean(((ratio - 1).abs() > cfg.clip).to(w.dtype)) if cfg.clip > 0 else torch.zeros_like(kl)
            return torch.stack([pg_loss, v_loss, entropy, kl, clipfrac, gnorm.to(kl.dtype)]).detach()

    def extra_state(self) -> dict:
        return {"opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_extra_state(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.opt.lr = self.cfg.lr  # the config's lr (a resume may change it); annealing recomputes it before each update
        self.gen.set_state(state["gen"])


def _entry(preset: dict, summary: str) -> AlgoEntry:
    return AlgoEntry(OnPolicyConfig, OnPolicyLearner, preset, summary)


# MAPPO and IPPO differ only in their critic. The preset (figures: BENCHMARKS.md, "Why these
# defaults"): lr 1e-3 (annealed by --lr-anneal-steps) and an entropy bonus of 0.02 learned
# simple_spread better than 5e-4 and 0.01; LayerNorm bounds a critic's output far from its
# training data, so the truncation bootstrap cannot feed extrapolated values back into the
# targets (without it MAPPO diverged with 8 envs). MAPPO's central critic is the Deep Sets one
# (`critic_net`), which learns from every agent's observation through a shared encoder.
PPO_PRESET = {"lr": 1e-3, "layer_norm": True, "ent_coef": 0.02}
ALGOS.register("mappo", _entry({"critic": "central", **PPO_PRESET},
                                "PPO with a centralised value critic over all agents' observations (Yu et al. 2022)"))
ALGOS.register("ippo", _entry({"critic": "local", **PPO_PRESET},
                               "independent PPO: per-agent critics on local observations (de Witt et al. 2020)"))
ALGOS.register("maa2c", _entry({"critic": "central", "clip": 0.0, "epochs": 1, "minibatches": 1, "value_norm": False}, "advantage actor-critic with a centralised value critic"))
ALGOS.register("ia2c", _entry({"critic": "local", "clip": 0.0, "epochs": 1, "minibatches": 1, "value_norm": False}, "independent advantage actor-critic"))
