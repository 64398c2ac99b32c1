"""MADDPG (Lowe et al. 2017) and MATD3 (Ackermann et al. 2019), continuous and discrete.

One learner; the variants are config values: MATD3 = `twin_critics` (the smaller target value),
`target_noise` (target policy smoothing) and `policy_delay` (actor and targets updated every
d critic steps). With `critic='local'` it is independent DDPG / TD3; with one agent it is
single-agent DDPG / TD3 (Lillicrap et al. 2016; Fujimoto et al. 2018). Shared machinery
(replay, critics of joint actions, targets): `marl.algos.offpolicy`.

One gradient step, top to bottom in `_train_step` (x = actions in [-1, 1] or one-hot):
    x'_i = mu'_i(o'_i)                 target actors; continuous: + clip(N(0, target_noise)),
                                       discrete: a sample of softmax(logits'), one-hot
    y_i  = r_i + gamma * bootstrap_i * min_c Q'_{c,i}(s', x'_1 .. x'_N)
    critic loss = sum_c mean over acting agents of (Q_{c,i}(s, x_1 .. x_N) - y_i)^2
    every policy_delay steps:
      x_i(theta) = tanh(mu_i(o_i)) or the straight-through Gumbel-softmax of the masked logits
      actor loss = -mean_acting Q_{1,i}(s, x_1 .. x_i(theta) .. x_N) + actor_reg * mean(out^2)
                   (the other agents' actions are the stored ones, as in MADDPG)
      targets <- (1 - tau) targets + tau online
Exploration: Gaussian noise (or Ornstein-Uhlenbeck) on the squashed action, clipped to the
env's bounds; discrete actors sample their softmax.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from marl.algos.offpolicy import ReplayACConfig, ReplayACLearner
from marl.algos.registry import ALGOS, AlgoEntry
from marl.algos.returns import masked_mean
from marl.core.errors import check
from marl.core.spec import EnvSpec
from marl.nets.dists import gumbel_softmax, mask_logits


@dataclass(frozen=True)
class DDPGConfig(ReplayACConfig):
    noise: Literal["gaussian", "ou"] = "gaussian"
    """Exploration noise of continuous actions: 'gaussian' (independent per step) or 'ou' (Ornstein-Uhlenbeck, temporally correlated)."""
    noise_std: float = 0.1
    """Standard deviation of the exploration noise, in units of half the action range."""
    ou_theta: float = 0.15
    """Mean reversion rate of the Ornstein-Uhlenbeck noise (noise='ou')."""
    gumbel_temperature: float = 1.0
    """Temperature of the straight-through Gumbel-softmax through which discrete actions pass their gradient (lower: closer to one-hot, noisier gradients)."""
    actor_reg: float = 1e-3
    """Weight of the squared pre-squash actor output (logits) in the actor loss (MADDPG's regulariser; 0 = off)."""
    target_noise: float = 0.0
    """Target policy smoothing (TD3): std of the noise added to continuous target actions, in units of half the action range (0 = off)."""
    target_noise_clip: float = 0.5
    """Clip of the target policy smoothing noise, in units of half the action range."""
    policy_delay: int = 1
    """Critic steps per actor step; the targets move with the actor (TD3's delayed updates use 2)."""

    def validate(self, spec: EnvSpec, rollout_envs: int) -> None:
        super().validate(spec, rollout_envs)
        check(self.gumbel_temperature > 0, f"gumbel_temperature must be positive, got {self.gumbel_temperature}",
              "pass e.g. --gumbel-temperature 1.0")
        for name in ("noise_std", "target_noise", "target_noise_clip", "actor_reg"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}", f"pass --{name.replace('_', '-')} 0 or more")
        check(0 < self.ou_theta <= 1, f"ou_theta must lie in (0, 1], got {self.ou_theta}", "pass e.g. --ou-theta 0.15")
        check(self.policy_delay >= 1, f"policy_delay must be at least 1, got {self.policy_delay}", "pass --policy-delay 1 (or 2 for TD3)")


def ou_step(x: Tensor, theta: float, sigma: float, eps: Tensor) -> Tensor:
    """One step of the Ornstein-Uhlenbeck process around 0 (unit time step): x + theta * (0 - x) + sigma * eps.
    Its stationary standard deviation is sigma / sqrt(theta * (2 - theta))."""
    return x - theta * x + sigma * eps


class DDPGLearner(ReplayACLearner):
    actor_kind = "deterministic"

    def __init__(self, config: DDPGConfig, spec: EnvSpec, device: torch.device, seed: int = 0):
        super().__init__(config, spec, device, seed, critic_out=1, noise_std=config.noise_std)
        self.ou: Tensor | None = None  # OU noise state [E, N, A]

    def _noise(self, shape: torch.Size) -> Tensor:
        cfg = self.cfg
        eps = torch.randn(shape, generator=self.act_gen, device=self.device)
        if cfg.noise == "gaussian":
            return cfg.noise_std * eps
        if self.ou is None or self.ou.shape != shape:
            self.ou = torch.zeros(shape, device=self.device)
        # sigma chosen so that the stationary std is noise_std
        self.ou = ou_step(self.ou, cfg.ou_theta, cfg.noise_std * (cfg.ou_theta * (2 - cfg.ou_theta)) ** 0.5, eps)
        return self.ou

    def _policy_actions(self, actor, obs: Tensor, avail: Tensor, hard: bool) -> tuple[Tensor, Tensor]:
        """(actions as critics read them [B, N, A], the raw output): tanh of the output, or the
        straight-through Gumbel-softmax of the masked logits (`hard` False: one-hot samples, no gradient)."""
        out = actor(obs)
        if not self.spec.discrete:
            return torch.tanh(out), out
        sample = gumbel_softmax(mask_logits(out, avail), self.cfg.gumbel_temperature, self.train_gen)
        return (sample if hard else sample.detach()), out

    def _train_step(self, s: dict) -> dict[str, Tensor]:
        cfg = self.cfg
        state, next_state = s.get("state"), s.get("next_state")
        mask = s["acting"]
        with torch.no_grad():
            x_next, _ = self._policy_actions(self.target_actor, s["next_obs"], s["next_avail"], hard=False)
            if cfg.target_noise > 0 and not self.spec.discrete:
                eps = torch.randn(x_next.shape, generator=self.train_gen, device=x_next.device) * cfg.target_noise
                x_next = (x_next + eps.clamp(-cfg.target_noise_clip, cfg.target_noise_clip)).clamp(-1.0, 1.0)
            q_next = self.q_values(self.target_critic, s["next_obs"], next_state, x_next).squeeze(-1).min(0).values
            target = self.rewards(s) + cfg.gamma * s["next_acting"] * q_next
        joint = self.action_features(s["actions"])
        q = self.q_values(self.critic, s["obs"], state, joint).squeeze(-1)
        stats = self.critic_step(q, target, mask)
        if (self.grad_steps + 1) % cfg.policy_delay == 0:
            own, out = self._policy_actions(self.actor, s["obs"], s["avail"], hard=True)
            q_pi = self.actor_q_values(s["obs"], state, joint, own)[0].squeeze(-1)
            reg = masked_mean(out.square(), s["avail"] & mask.unsqueeze(-1)) if cfg.actor_reg > 0 else q_pi.new_zeros(())
            loss = -masked_mean(q_pi, mask) + cfg.actor_reg * reg
            stats.update(actor=loss.detach(), actor_grad_norm=self.actor_step(loss))
            self.update_targets()
        return stats

    def extra_state(self) -> dict:
        return {**super().extra_state(), "ou": self.ou}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.ou = None if state["ou"] is None else state["ou"].to(self.device)


def _entry(preset: dict, summary: str) -> AlgoEntry:
    return AlgoEntry(DDPGConfig, DDPGLearner, preset, summary)


MATD3_PRESET = {"twin_critics": True, "target_noise": 0.2, "target_noise_clip": 0.5, "policy_delay": 2}

ALGOS.register("maddpg", _entry({"gamma": 0.95},
                                "deterministic actors, centralised critics of all agents' actions (Lowe et al. 2017); "
                                "discrete actions by the straight-through Gumbel-softmax"))
ALGOS.register("matd3", _entry({"gamma": 0.95, **MATD3_PRESET},
                               "MADDPG with twin critics, target policy smoothing and delayed actor updates (TD3 for many agents)"))
