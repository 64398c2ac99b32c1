"""Value-based family on a replay: IDQN, VDN, QMIX (mixer none|vdn|qmix), QTRAN, and DQN as its one-agent case.

One learner; the variants are config values (`mixer`). How it fits the trainer: every
`update(batch)` receives the rollout segment the collector just gathered ([T, E] tensors
of `rollout_len` steps from `num_envs` envs, see ARCHITECTURE.md), cuts it into whole
episodes with an `EpisodeBuilder` (partial episodes wait for the next segment), stores
them in an `EpisodeReplay` on the replay device, then takes `updates_per_collect` gradient
steps, each on `batch_size` episodes sampled from the replay. The trainer, collector and
checkpointing are the same as for the on-policy family; the replay, the builder's partial
episodes, the epsilon counter and the generators are part of the checkpoint (extra_state).

`replay='transitions'` keeps one-step transitions instead (marl.algos.transitions: no padding to
the longest episode, sampling cost independent of episode length), for feed-forward agents with
one-step targets; a sampled transition is read as an episode of one step (`QLearner._rows`), so
the value heads and the target math below are the same for both replays.

Episode layout in the replay (L + 1 rows for L steps): `marl.algos.replay`.

Targets (one step of the math, top to bottom in `_loss`):
    Q_i(o_t, u_t)                       chosen utilities (zero for agents not acting)
    u'_i = argmax_{avail} Q_i(o_{t+1})  online net with double Q, else target net
    Q'_i = Q_i^target(o_{t+1}, u'_i)    zero for agents not acting after the step (truncated: kept)
    mixer: Q_tot = mix(Q_i, s_t), Q'_tot = mix^target(Q'_i, s_{t+1})   (none: per agent)
    y = n-step or TD(lambda) return over the episode, no bootstrap after termination;
        independent learners over their own decisions (turn-based games: the rewards until
        the agent's next move belong to its move, n counts own decisions, marl.algos.returns)
    loss = mean over real steps (and acting agents for independent learners) of (Q - y)^2
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from marl.algos import qtran  # noqa: F401  (registers the "qtran" mixer)
from marl.algos.mixers import MIXERS
from marl.algos.optim import OPTIMISERS, clip_grad_norm, flatten
from marl.algos.registry import ALGOS, AlgoEntry
from marl.algos.replay import STEP_KEYS, EpisodeBuilder, EpisodeReplay, episode_rows, segment_steps, with_acting
from marl.algos.returns import RunningNorm, decisions, masked_mean, per_agent_rewards, rewards_differ, scalar_team_reward
from marl.algos.targets import greedy_next_values, masked_argmax, nstep_targets, own_decision_targets, td_lambda_targets
from marl.algos.transitions import TransitionReplay, one_step_rows
from marl.core.errors import MarlError, check
from marl.core.policies import device_generator, frozen_copy
from marl.core.spec import EnvSpec
from marl.nets.dists import categorical_sample, mask_logits
from marl.nets.models import AgentNet, unroll, with_agent_id
from marl.nets.sharing import resolve_groups

@dataclass(frozen=True)
class QConfig:
    mixer: str = "qmix"
    """Value decomposition, a name in marl.algos.mixers.MIXERS: 'none' (IDQN: independent per-agent TD), 'vdn' (sum),
    'qmix' (monotonic hypernetwork mixer on the global state), 'qtran' (QTRAN-base joint Q and V networks) or a registered one."""
    rollout_len: int = 25
    """Steps collected from every env per update call (25 = one MPE episode per env)."""
    updates_per_collect: int = 0
    """Gradient steps per update call, each on `batch_size` samples from the replay; 0 = one per `env_steps_per_update` env steps collected."""
    env_steps_per_update: float = 50.0
    """Replay ratio when updates_per_collect is 0: env steps collected per gradient step (50: 8 steps for 16 envs x 25 steps;
    one per 100 learned simple_spread worse and EPyMARL's one per 25 takes twice the steps, BENCHMARKS.md "Why these defaults")."""
    replay: Literal["episodes", "transitions"] = "episodes"
    """Replay kind: 'episodes' (whole episodes padded to the longest: recurrent agents, n-step / TD(lambda) / Q(lambda) targets,
    turn-based games) or 'transitions' (one-step transitions: feed-forward agents, --returns nstep --n-step 1)."""
    batch_size: int = 32
    """Samples per gradient step: episodes, or transitions with replay='transitions'."""
    buffer_size: int = 5000
    """Replay capacity in episodes, or transitions with replay='transitions' (the oldest are overwritten)."""
    learning_starts: int = 32
    """Episodes (or transitions) the replay must hold before gradient steps start (at least batch_size)."""
    lr: float = 5e-4
    """Learning rate."""
    optimiser: Literal["adam", "rmsprop"] = "adam"
    """Optimiser: adam or rmsprop (pymarl's RMSprop, alpha 0.99, eps 1e-5)."""
    gamma: float = 0.99
    """Discount factor."""
    epsilon_start: float = 1.0
    """Exploration rate at the start of training."""
    epsilon_finish: float = 0.05
    """Exploration rate after the anneal (evaluation is always greedy)."""
    epsilon_anneal_steps: int = 50_000
    """Env steps over which epsilon falls linearly from start to finish."""
    double_q: bool = True
    """Double Q: the online net picks the next action (over available actions), the target net values it."""
    dueling: bool = False
    """Dueling agent networks (Wang et al. 2016): a state value and action advantages, Q = V + A - mean(A)."""
    target_update_interval_or_tau: float = 200.0
    """Target networks: > 1 copies them every this many gradient steps (hard); <= 1 is the soft-update rate tau per step."""
    returns: Literal["q_lambda", "td_lambda", "nstep"] = "q_lambda"
    """Return target: 'q_lambda' (Watkins' Q(lambda): the TD(lambda) return with the trace cut after a
    step whose next action is not the greedy one the bootstrap values), 'td_lambda' (no cut: it mixes in
    the epsilon-greedy behaviour's returns) or 'nstep' (n = n_step; n_step 1 is one-step Q-learning)."""
    n_step: int = 1
    """n of the n-step target (returns='nstep')."""
    td_lambda: float = 0.6
    """lambda of the TD(lambda) / Q(lambda) target (returns='td_lambda' or 'q_lambda')."""
    recurrent: bool = False
    """GRU agents unrolled over whole episodes (else feed-forward agents on the current observation; a GRU update costs ~3x)."""
    sharing: str | list[int] = "all"
    """Parameter sharing of the agent networks: 'all', 'none' or a group id per agent such as 0,0,1."""
    agent_id: bool = True
    """Append a one-hot agent id to the agent network inputs (useful when sharing)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden sizes of the agent networks (recurrent: first layer size, GRU size, then head layers)."""
    reward: Literal["agent", "sum", "mean"] = "agent"
    """Reward each learner sees: 'agent' (its own; VDN/QMIX/QTRAN then need the agents' rewards to be equal), 'sum' or 'mean' over agents (a team reward)."""
    standardise_rewards: bool = False
    """Standardise rewards by running mean and std before computing targets (EPyMARL's standardise_rewards; centring changes the task where episodes terminate)."""
    max_grad_norm: float = 10.0
    """Gradient norm clip (0 = off)."""
    td_loss: Literal["squared", "huber"] = "squared"
    """Loss of the TD error: 'squared' or 'huber' (its gradient clipped to [-1, 1]: Nature DQN's error clipping, SB3's DQN loss); QTRAN applies it to its TD term."""
    allow_state_fallback: bool = True
    """QMIX/QTRAN on an env without env.state(): use the concatenated observations as the state (false: refuse)."""
    replay_device: str = ""
    """Device of the replay buffer: empty = the learner device, or cpu / cuda / cuda:N."""
    mixer_embed_dim: int = 32
    """QMIX mixing network width."""
    hypernet_embed: int = 64
    """QMIX hypernetwork hidden width."""
    qtran_embed: int = 64
    """QTRAN joint-Q and V network width."""
    lambda_opt: float = 1.0
    """QTRAN weight of the optimal-action constraint loss."""
    lambda_nopt: float = 1.0
    """QTRAN weight of the non-optimal-action constraint loss."""

    # action kinds it handles (marl.algos.registry.AlgoConfig)
    discrete = True
    continuous = False

    @property
    def needs_state(self) -> bool:
        return MIXERS.get(self.mixer).needs_state

    @property
    def common_reward(self) -> bool:
        return not MIXERS.get(self.mixer).per_agent

    def validate(self, spec: EnvSpec, rollout_envs: int) -> None:
        check(self.mixer in MIXERS, f"mixer must be one of {', '.join(MIXERS)}, got {self.mixer!r}", f"pass --mixer {' or '.join(MIXERS)}")
        check(self.updates_per_collect >= 0, f"updates_per_collect must be >= 0, got {self.updates_per_collect}",
              "pass --updates-per-collect 0 (one per --env-steps-per-update env steps) or more")
        check(self.replay in ("episodes", "transitions"), f"replay must be episodes or transitions, got {self.replay!r}",
              "pass --replay episodes or --replay transitions")
        if self.replay == "transitions":
            check(not self.recurrent, "recurrent agents are unrolled over whole episodes, and a transition replay holds single steps",
                  "pass --replay episodes or --recurrent false")
            check(self.returns == "nstep" and self.n_step == 1,
                  f"a transition replay gives one-step targets, not returns={self.returns!r} with n_step {self.n_step}",
                  "pass --returns nstep --n-step 1, or --replay episodes")
        for name in ("lr", "rollout_len", "batch_size", "buffer_size", "n_step", "hidden", "env_steps_per_update"):
            value = getattr(self, name)
            ok = all(int(v) > 0 for v in value) if name == "hidden" else value > 0
            check(ok, f"{name} must be positive, got {value}", f"pass a positive --{name.replace('_', '-')}")
        check(self.buffer_size >= self.batch_size, f"buffer_size ({self.buffer_size} {self.replay}) is smaller than batch_size ({self.batch_size} {self.replay})",
              "raise --buffer-size or lower --batch-size")
        check(self.learning_starts >= 0, f"learning_starts must be >= 0, got {self.learning_starts}", "pass --learning-starts 0 or more")
        for name in ("epsilon_start", "epsilon_finish", "gamma", "td_lambda"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"{name} must lie in [0, 1], got {value}", f"pass --{name.replace('_', '-')} between 0 and 1")
        check(self.epsilon_anneal_steps >= 0, f"epsilon_anneal_steps must be >= 0, got {self.epsilon_anneal_steps}", "pass --epsilon-anneal-steps 0 or more")
        check(self.target_update_interval_or_tau > 0, f"target_update_interval_or_tau must be positive, got {self.target_update_interval_or_tau}",
              "pass e.g. 200 (hard copy every 200 gradient steps) or 0.005 (soft)")
        check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}", "pass --max-grad-norm 10 (0 = off)")
        check(self.replay_device in ("", "cpu") or self.replay_device.startswith("cuda"), f"replay_device '{self.replay_device}' is not understood",
              "leave --replay-device empty (the learner device) or pass cpu / cuda")
        check(not self.replay_device.startswith("cuda") or torch.cuda.is_available(), f"replay_device '{self.replay_device}' requested but CUDA is not available",
              "leave --replay-device empty or pass cpu")
        if self.needs_state and not spec.has_state:
            check(self.allow_state_fallback, f"mixer '{self.mixer}' needs a global state but env '{spec.name}' has no state()",
                  "pass --allow-state-fallback true to use the concatenated observations, or use an env with state()")
        resolve_groups(self.sharing, spec.n_agents)


class Lazy(dict):
    """A dict whose entries named in `makers` are computed at their first read, each maker
    called with the dict (to read other entries): a value head that never reads one (the
    greedy actions only QTRAN needs, the state only mixers of it) never pays for it. Makers
    get the dict as an argument rather than closing over it, so a batch's tensors and their
    graph are freed when the step ends, not at Python's next garbage collection."""

    def __init__(self, makers: dict[str, Callable[[dict], Tensor]], **entries: Tensor):
        super().__init__(**entries)
        self.makers = makers

    def __missing__(self, key: str) -> Tensor:
        if key not in self.makers:
            raise KeyError(key)
        value = self[key] = self.makers.pop(key)(self)
        return value


# ----------------------------------------------------------------------------- pure pieces
def epsilon_at(cfg: QConfig, env_steps: int) -> float:
    """Linear schedule from epsilon_start to epsilon_finish over epsilon_anneal_steps env steps."""
    if cfg.epsilon_anneal_steps <= 0:
        return cfg.epsilon_finish
    frac = min(1.0, env_steps / cfg.epsilon_anneal_steps)
    return (1.0 - frac) * cfg.epsilon_start + frac * cfg.epsilon_finish


def fitted_means(fits: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The mean over gradient steps of each step's masked mean of its fitted values and of its
    targets, from (values, targets, mask) per step: computed once for an update's steps (in
    one pass when their shapes agree), not inside every step."""
    with torch.no_grad():
        if all(f[0].shape == fits[0][0].shape for f in fits):
            q, y, mask = (torch.stack(x) for x in zip(*fits))
            mask = mask.to(q.dtype).expand_as(q).flatten(1)
            denom = mask.sum(1).clamp_min(1.0)
            return ((q.flatten(1) * mask).sum(1) / denom).mean(), ((y.flatten(1) * mask).sum(1) / denom).mean()
        means = torch.stack([torch.stack([masked_mean(q, mask), masked_mean(y, mask)]) for q, y, mask in fits]).mean(0)
        return means[0], means[1]


# ----------------------------------------------------------------------------- acting
class QPolicy(nn.Module):
    """What acting needs of a value-based learner: the agent Q-network and epsilon-greedy over
    the available actions (greedy when not exploring). The learner owns one, sets its
    `epsilon` from its schedule and acts through it; `QLearner.policy()` hands out a frozen
    copy (no mixer, no target networks, no replay, no optimiser)."""

    def __init__(self, net: AgentNet, agent_id: bool, gen: torch.Generator, epsilon: float = 0.0):
        super().__init__()
        self.net, self.agent_id, self.gen, self.epsilon = net, agent_id, gen, epsilon

    def initial_hidden(self, num_envs: int):
        return self.net.initial_hidden((num_envs,)) if self.net.recurrent else None

    @torch.no_grad()
    def act(self, inputs: dict, hidden, explore: bool):
        """Epsilon-greedy over the available actions (greedy when explore is False)."""
        obs = inputs["obs"]
        q, hidden = self.net(with_agent_id(obs) if self.agent_id else obs, hidden)
        avail = inputs["avail"]
        actions = masked_argmax(q, avail)
        if explore:
            gen = self.gen = device_generator(self.gen, q.device)
            uniform = categorical_sample(mask_logits(torch.zeros_like(q), avail), gen)
            coin = torch.rand(actions.shape, generator=gen, device=q.device) < self.epsilon
            actions = torch.where(coin, uniform, actions)
        return actions, hidden, {}


class Dueling(nn.Module):
    """An agent network read as a dueling head (Wang et al. 2016): its first output is the state
    value V, the others the advantages A; Q = V + A - mean(A). Same interface as the AgentNet."""

    def __init__(self, net: AgentNet):
        super().__init__()
        self.net = net

    def initial_hidden(self, *args, **kwargs) -> Tensor:
        return self.net.initial_hidden(*args, **kwargs)

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        out, h = self.net(x, h)
        value, adv = out[..., :1], out[..., 1:]
        return value + adv - adv.mean(-1, keepdim=True), h


# ----------------------------------------------------------------------------- learner
class QLearner(nn.Module):
    def __init__(self, config: QConfig, spec: EnvSpec, device: torch.device, seed: int = 0):
        super().__init__()
        cfg = self.cfg = config
        self.spec, self.device, self.n = spec, device, spec.n_agents
        groups = resolve_groups(cfg.sharing, spec.n_agents)
        feat_dim = spec.obs_dim + (spec.n_agents if cfg.agent_id else 0)
        self.net = AgentNet(feat_dim, spec.n_actions + cfg.dueling, hidden=tuple(cfg.hidden), groups=groups,
                            recurrent=cfg.recurrent, activation="relu", out_gain=1.0)
        if cfg.dueling:
            self.net = Dueling(self.net)
        self.head = MIXERS.get(cfg.mixer).value_head(cfg, spec, feat_dim)
        self.target_net, self.target_head = copy.deepcopy(self.net), copy.deepcopy(self.head)
        for p in (*self.target_net.parameters(), *self.target_head.parameters()):
            p.requires_grad_(False)
        self.reward_norm = RunningNorm()
        self.to(device)
        self.params = [flatten([*self.net.parameters(), *self.head.parameters()])]  # one buffer (marl.algos.optim.flatten)
        self.opt = OPTIMISERS[cfg.optimiser](self.params, cfg.lr)
        self.act_gen = torch.Generator(device=device)
        self.act_gen.manual_seed(seed)
        self.sample_gen = torch.Generator()  # replay indices are drawn on the CPU
        self.sample_gen.manual_seed(seed + 1)
        self.env_steps = self.grad_steps = 0
        n, d, a, s = spec.n_agents, spec.obs_dim, spec.n_actions, spec.state_dim
        fields = {"obs": ((n, d), torch.float32), "state": ((s,), torch.float32), "avail": ((n, a), torch.bool),
                  "alive": ((n,), torch.bool), "acting": ((n,), torch.bool), "actions": ((n,), torch.long),
                  "reward": ((n,), torch.float32), "terminated": ((n,), torch.bool), "truncated": ((n,), torch.bool),
                  "next_acting": ((n,), torch.bool)}
        replay_device = cfg.replay_device or device
        if cfg.replay == "transitions":
            fields.update({"next_obs": fields["obs"], "next_state": fields["state"], "next_avail": fields["avail"], "done": ((), torch.bool)})
            self.replay = TransitionReplay(cfg.buffer_size, fields, replay_device, cfg.batch_size)
        else:
            self.replay = EpisodeReplay(cfg.buffer_size, None, fields, device=replay_device, batch_size=cfg.batch_size)
        self.builder: EpisodeBuilder | None = None  # built at the first segment (its number of envs)
        self.credit = 0.0  # fractional gradient steps owed (env_steps_per_update)
        # the acting part, over the same network (kept out of the module tree: the checkpoint keys stay the learner's)
        self.__dict__["pi"] = QPolicy(self.net, cfg.agent_id, self.act_gen)

    def policy(self) -> QPolicy:
        """A frozen copy of the acting part on the CPU, at the current epsilon."""
        self.pi.epsilon = self.epsilon
        return frozen_copy(self.pi)

    # -- acting -------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        return epsilon_at(self.cfg, self.env_steps)

    def _inputs(self, obs: Tensor) -> Tensor:
        return with_agent_id(obs) if self.cfg.agent_id else obs

    def initial_hidden(self, num_envs: int):
        return self.pi.initial_hidden(num_envs)

    def act(self, inputs: dict, hidden, explore: bool):
        """Epsilon-greedy over the available actions (greedy when explore is False): `QPolicy.act`."""
        self.pi.epsilon = self.epsilon
        return self.pi.act(inputs, hidden, explore)

    # -- learning -----------------------------------------------------------------------
    def update(self, b: dict) -> dict[str, float]:
        cfg = self.cfg
        T, E = b["done"].shape
        if cfg.common_reward and cfg.reward == "agent" and self.n > 1 and rewards_differ(b["reward"], b["alive"]):
            raise MarlError(f"mixer '{cfg.mixer}' learns one team reward but the agents of env '{self.spec.name}' get different rewards",
                            "pass --reward sum or --reward mean")
        self.env_steps += T * E
        if cfg.replay == "transitions":
            self.replay.add(one_step_rows(b, self.replay.fields, self.spec.name,
                                          "pass --replay episodes (transitions run to each agent's next decision)"))
        else:
            if self.builder is None:
                self.builder = EpisodeBuilder(E, STEP_KEYS)
            for ep in self.builder.add(segment_steps(b)):
                self.replay.add(episode_rows(ep))
        out = {"train/epsilon": self.epsilon, f"train/buffer_{cfg.replay}": len(self.replay)}
        if len(self.replay) < max(cfg.learning_starts, cfg.batch_size):
            return out
        self.credit += T * E / cfg.env_steps_per_update
        owed, self.credit = int(self.credit), self.credit - int(self.credit)
        if not (cfg.updates_per_collect or owed):
            return out
        stats: dict[str, list[Tensor]] = {}
        fits = []
        steps = cfg.updates_per_collect or owed
        moved = self.replay.device != self.device
        for sample in self.replay.batches(steps, cfg.batch_size, self.sample_gen):
            if moved:
                sample = {k: v.to(self.device, non_blocking=True) for k, v in sample.items()}
            step_stats, fit = self._train_step(sample)
            for k, v in step_stats.items():
                stats.setdefault(k, []).append(v)
            fits.append(fit)
        q_mean, target_mean = fitted_means(fits)
        stats.update(q_taken_mean=[q_mean], target_mean=[target_mean])
        means = torch.stack([torch.stack(v).mean() for v in stats.values()]).tolist()  # one device sync
        out.update({f"loss/{k}": m for k, m in zip(stats, means)})
        return out

    def _unroll(self, net: AgentNet, x: Tensor) -> Tensor:
        """Utilities [B, R, N, A] for inputs [B, R, N, F]; a GRU runs over the R rows from zeros."""
        return unroll(net, (x,), net.initial_hidden(x.shape[:1]) if self.cfg.recurrent else None, dim=1)

    def _targets(self, c: dict[str, Tensor], next_values: Tensor) -> Tensor:
        """Return targets [B, T, ...] of the context `c` (see `_context`) bootstrapping from
        `next_values` (the heads' `targets_fn`): over each agent's own decisions where `c` holds
        them (independent learners), with Watkins' trace cut for `returns='q_lambda'`."""
        cfg = self.cfg
        view, trace = c.get("decisions"), c["trace"] if cfg.returns == "q_lambda" else None
        if view is not None and trace is not None:
            trace = view.at_close(trace)  # a transition closes just before the agent's next decision

        def fn(reward: Tensor, nxt: Tensor, terminated: Tensor, filled: Tensor) -> Tensor:
            if cfg.returns == "nstep":
                return nstep_targets(reward, nxt, terminated, filled, cfg.gamma, cfg.n_step)
            return td_lambda_targets(reward, nxt, terminated, filled, cfg.gamma, cfg.td_lambda, trace)

        if view is not None:
            return own_decision_targets(view, c["reward"], next_values, c["terminated"], fn)
        return fn(c["reward"], next_values, c["terminated"], c["filled"])

    def _context(self, s: dict) -> dict[str, Tensor]:
        """Everything a value head needs from a sampled batch (`_rows`: T steps of B samples)."""
        cfg, head = self.cfg, self.head
        r = self._rows(s)
        q_now, acting, actions = r["q_now"], r["acting"], r["actions"]
        next_actions, next_q = greedy_next_values(r["q_next"], r["tq_next"], r["next_avail"], cfg.double_q)
        c = Lazy({"feats": lambda c: r["feats"], "state": lambda c: r["state"],  # read by some heads only (QTRAN, QMIX)
                  "greedy": lambda c: masked_argmax(q_now.detach(), r["avail"]),
                  "q_greedy": lambda c: q_now.gather(-1, c["greedy"].unsqueeze(-1)).squeeze(-1)},
                 acting=acting, actions=actions, next_actions=next_actions, next_q=next_q * r["next_acting"].to(next_q.dtype),
                 q_taken=q_now.gather(-1, actions.unsqueeze(-1)).squeeze(-1))
        if cfg.returns == "q_lambda":  # Watkins' trace: step t+1's action is the one the bootstrap after step t values
            greedy_next = (r["actions_after"] == next_actions) | ~r["acting_after"]  # agents not acting there pass
            c["trace"] = greedy_next if head.per_agent else greedy_next.all(-1)
        reward, term, trunc, filled = r["reward"], r["terminated"], r["truncated"], r["filled"]
        if head.per_agent:  # own episode per agent: it ends at the agent's own termination/truncation
            c["filled"] = filled.unsqueeze(-1).expand(term.shape)
            if cfg.replay == "episodes":  # steps after the agent's own end are not its episode
                ended = term | trunc
                before = (ended.cumsum(dim=1) - ended.long()) > 0
                c["filled"] = c["filled"] * (~before).to(filled.dtype)
                last = filled.bool() & ~torch.cat([filled[:, 1:], torch.zeros_like(filled[:, :1])], dim=1).bool()
                c["decisions"] = decisions(acting, ended | last.unsqueeze(-1), dim=1)  # a transition is everyone's decision
            c["terminated"] = term
            c["reward"] = per_agent_rewards(reward, cfg.reward)
        else:  # one team episode: it terminates at its last step unless an agent was truncated there
            if cfg.replay == "transitions":  # the env's episode ends where it said so
                last = r["done"].to(filled.dtype)
            else:
                last = filled - torch.cat([filled[:, 1:], torch.zeros_like(filled[:, :1])], dim=1)
            c["filled"] = filled
            c["terminated"] = last * (~trunc.any(-1)).to(filled.dtype)
            c["reward"] = scalar_team_reward(reward, r["alive"], cfg.reward)
        if cfg.standardise_rewards:
            real = c["filled"] > 0
            self.reward_norm.update(c["reward"][real])
            c["reward"] = (c["reward"] - self.reward_norm.mean) / self.reward_norm.var.clamp_min(1e-8).sqrt()
        return c

    def _rows(self, s: dict) -> dict[str, Tensor]:
        """A sample as T steps of B episodes: the utilities at each step (`q_now`, with gradients)
        and after it (`q_next` online, `tq_next` target, no gradients), the step's masks, actions,
        rewards and ends [B, T, ...], `filled` [B, T], and `feats` / `state` over the T + 1 rows.
        Episodes ([B, R] rows, T = R - 1) unroll every row; transitions ([B], T = 1) run each net
        only on the row it is used on (the target net on the next row, the online net on the
        learned row and, for double Q, the next one)."""
        if self.cfg.replay == "transitions":
            step = {k: s[k].unsqueeze(1) for k in ("avail", "next_avail", "acting", "actions", "next_acting", "reward",
                                                      "terminated", "truncated", "alive", "done")}
            x_now, x_next = self._inputs(s["obs"]).unsqueeze(1), self._inputs(s["next_obs"]).unsqueeze(1)
            q_now = self.net(x_now)[0]
            with torch.no_grad():
                tq_next = self.target_net(x_next)[0]
                q_next = self.net(x_next)[0] if self.cfg.double_q else tq_next
            return Lazy({"feats": lambda r: torch.cat([x_now, x_next], 1), "state": lambda r: torch.stack([s["state"], s["next_state"]], 1)},
                        **step, q_now=q_now, q_next=q_next, tq_next=tq_next, filled=step["reward"].new_ones(step["done"].shape))
        x = self._inputs(s["obs"])
        q = self._unroll(self.net, x)
        with torch.no_grad():
            tq_next = self._unroll(self.target_net, x)[:, 1:]
        step = {k: s[k][:, :-1] for k in ("avail", "acting", "actions", "next_acting", "reward", "terminated", "truncated", "alive")}
        return {**step, "q_now": q[:, :-1], "q_next": q[:, 1:].detach(), "tq_next": tq_next, "next_avail": s["avail"][:, 1:],
                "actions_after": s["actions"][:, 1:], "acting_after": s["acting"][:, 1:], "feats": x, "state": s["state"],
                "filled": s["filled"][:, 1:]}  # step t is real when row t + 1 is filled

    def _train_step(self, s: dict) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor, Tensor]]:
        """One gradient step: its statistics, and (fitted values, targets, mask) for `fitted_means`."""
        cfg = self.cfg
        parts = self.head.loss(self.target_head, self._context(s), self._targets)
        self.opt.zero_grad()
        parts["loss"].backward()
        gnorm = clip_grad_norm(self.params, cfg.max_grad_norm)
        self.opt.step()
        self.grad_steps += 1
        self._update_targets()
        stats = {"td": parts["td"].detach(), "grad_norm": gnorm, **{k: parts[k].detach() for k in ("opt", "nopt") if k in parts}}
        return stats, (parts["q"].detach(), parts["target"], parts["mask"])

    def _update_targets(self) -> None:
        rate = self.cfg.target_update_interval_or_tau
        if rate > 1 and self.grad_steps % int(round(rate)):  # a hard copy is not due: nothing to do
            return
        pairs = ((self.net, self.target_net), (self.head, self.target_head))
        with torch.no_grad():
            for online, target in pairs:
                if rate > 1:
                    target.load_state_dict(online.state_dict())
                else:
                    for t, o in zip(target.parameters(), online.parameters(), strict=True):
                        t.lerp_(o, rate)

    # -- checkpoint ---------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Optimiser, generators, counters, the builder's partial episodes and the replay."""
        return {"opt": self.opt.state_dict(), "act_gen": self.act_gen.get_state(), "sample_gen": self.sample_gen.get_state(),
                "env_steps": self.env_steps, "grad_steps": self.grad_steps, "credit": self.credit,
                "builder": None if self.builder is None else {"num_envs": self.builder.num_envs, **self.builder.state_dict()},
                "replay": self.replay.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.opt.lr = self.cfg.lr  # the config's lr: a resume (or a PBT exploit) may change it
        self.act_gen.set_state(state["act_gen"])
        self.sample_gen.set_state(state["sample_gen"])
        self.env_steps, self.grad_steps, self.credit = int(state["env_steps"]), int(state["grad_steps"]), float(state.get("credit", 0.0))
        builder, replay = state["builder"], state["replay"]
        if "next_alive" in replay["fields"]:  # saved without an acting mask: parallel envs, where it is alive
            builder, replay = with_acting(builder), with_acting(replay)
        if builder is not None:
            self.builder = EpisodeBuilder(builder["num_envs"], STEP_KEYS)
            self.builder.load_state_dict(builder)
        self.replay.load_state_dict(replay)


def _entry(mixer: str, summary: str, **preset) -> AlgoEntry:
    return AlgoEntry(QConfig, QLearner, {"mixer": mixer, **preset}, summary)


ALGOS.register("idqn", _entry("none", "independent deep Q-learners on an episode replay (per-agent TD, epsilon-greedy)"))
ALGOS.register("vdn", _entry("vdn", "value decomposition: the team Q is the sum of agent utilities (Sunehag et al. 2018)"))
# QMIX's hypernetwork mixer is the one whose targets grew without bound at gamma 0.99: with
# time-limit bootstrapping its |Q| heads for r / (1 - gamma), the gradient norm grows with it,
# and the greedy return fell late in training; at 0.9 or 0.95 (horizons within MPE's 25 steps) it
# stayed bounded, 0.9 scoring a little higher (BENCHMARKS.md, "Why these defaults").
ALGOS.register("qmix", _entry("qmix", "monotonic mixing of agent utilities by hypernetworks on the global state (Rashid et al. 2018)",
                              gamma=0.9))
ALGOS.register("qtran", _entry("qtran", "QTRAN-base: joint Q and state-value networks with factorisation constraints (Son et al. 2019)"))
