"""The SAC family (Haarnoja et al. 2018): ISAC (local critics) and MASAC (central critics),
continuous and discrete. With one agent and a local critic it is single-agent SAC.

Shared machinery (replay, critics of joint actions, targets): `marl.algos.offpolicy`.
Twin critics always; alpha_i is each agent's entropy temperature, learned to hold the policy's
entropy at a target (automatic temperature) unless `autotune_alpha` is off.

Continuous (tanh-squashed Gaussian, `marl.nets.dists.tanh_gaussian_sample`):
    x'_i, log pi'_i = sample of pi_i(o'_i)          (current actors at the next observations)
    y_i  = r_i + gamma * bootstrap_i * (min_c Q'_{c,i}(s', x'_1 .. x'_N) - alpha_i log pi'_i)
    actor loss = mean_acting (alpha_i log pi_i(x_i) - min_c Q_{c,i}(s, x_1 .. x_i(theta) .. x_N))
    alpha loss = -mean_acting log alpha_i (log pi_i(x_i) + target_i),  target_i = -A (minus the action dim)
Discrete (Christodoulou 2019): the critic outputs a value for each of agent i's actions,
reading the other agents' actions (central) or only o_i (local), and expectations over the
policy replace samples; unavailable actions have probability 0:
    V'_i = sum_a pi_i(a|o'_i) (min_c Q'_{c,i}(s', x'_-i, a) - alpha_i log pi_i(a|o'_i)),
           x'_-i one-hot samples of the other agents' current policies
    y_i  = r_i + gamma * bootstrap_i * V'_i
    actor loss = mean_acting sum_a pi_i(a) (alpha_i log pi_i(a) - min_c Q_{c,i}(s, x_-i, a))
    alpha loss = -mean_acting log alpha_i (sum_a pi_i(a) log pi_i(a) + target_i),
                 target_i = target_entropy_scale * log(number of available actions)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from marl.algos.offpolicy import ReplayACConfig, ReplayACLearner
from marl.algos.optim import adam
from marl.algos.registry import ALGOS, AlgoEntry
from marl.algos.returns import masked_mean
from marl.core.errors import check
from marl.core.spec import EnvSpec
from marl.nets.dists import categorical_sample, mask_logits, tanh_gaussian_sample


@dataclass(frozen=True)
class SACConfig(ReplayACConfig):
    twin_critics: bool = True
    """Two critics per agent, the smaller of their values in targets and actor loss (SAC's clipped double Q)."""
    alpha: float = 0.2
    """Initial entropy temperature (the fixed one with autotune_alpha false)."""
    autotune_alpha: bool = True
    """Learn each agent's temperature so that its policy entropy stays at the target entropy."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the log-temperatures."""
    target_entropy_scale: float = 0.89
    """Discrete actions: target entropy = this times log(number of available actions) (continuous: minus the action dim)."""

    def validate(self, spec: EnvSpec, rollout_envs: int) -> None:
        super().validate(spec, rollout_envs)
        check(self.alpha > 0, f"alpha must be positive, got {self.alpha}", "pass e.g. --alpha 0.2")
        check(self.alpha_lr > 0, f"alpha_lr must be positive, got {self.alpha_lr}", "pass e.g. --alpha-lr 3e-4")
        check(0 < self.target_entropy_scale <= 1, f"target_entropy_scale must lie in (0, 1], got {self.target_entropy_scale}",
              "pass e.g. --target-entropy-scale 0.89")


def discrete_soft_value(pi: Tensor, logp: Tensor, q: Tensor, alpha: Tensor) -> Tensor:
    """Soft state value of discrete SAC, [...]: sum_a pi(a) (Q(a) - alpha log pi(a)) for pi,
    log pi and Q [..., A] and alpha broadcastable to [...]. Unavailable actions have pi = 0 and
    add nothing, whatever their Q."""
    return (pi * (q - alpha.unsqueeze(-1) * logp)).sum(-1)


class SACLearner(ReplayACLearner):
    actor_kind = "gaussian"

    def __init__(self, config: SACConfig, spec: EnvSpec, device: torch.device, seed: int = 0):
        super().__init__(config, spec, device, seed, critic_out=spec.n_actions if spec.discrete else 1, drop_own=spec.discrete)
        self.log_alpha = nn.Parameter(torch.full((spec.n_agents,), math.log(config.alpha), device=device))
        self.alpha_opt = adam([self.log_alpha], config.alpha_lr)

    # -- the policy's actions and log-probs ---------------------------------------------------
    def _continuous(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(x in (-1, 1) [B, N, A], log pi [B, N]) reparameterised samples of the actors."""
        return tanh_gaussian_sample(*self.actor.mean_log_std(self.actor(obs)), self.train_gen)

    def _discrete(self, obs: Tensor, avail: Tensor) -> tuple[Tensor, Tensor]:
        """(pi, log pi), [B, N, A], over the available actions (probability 0 elsewhere)."""
        logp = torch.log_softmax(mask_logits(self.actor(obs), avail), dim=-1)
        return logp.exp(), logp

    def _train_step(self, s: dict) -> dict[str, Tensor]:
        cfg, discrete = self.cfg, self.spec.discrete
        state, next_state, mask = s.get("state"), s.get("next_state"), s["acting"]
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            if discrete:
                pi_next, logp_next = self._discrete(s["next_obs"], s["next_avail"])
                x_next = self.action_features(categorical_sample(logp_next, self.train_gen))
                q_next = self.q_values(self.target_critic, s["next_obs"], next_state, x_next).min(0).values
                v_next = discrete_soft_value(pi_next, logp_next, q_next, alpha)
            else:
                x_next, logp_next = self._continuous(s["next_obs"])
                q_next = self.q_values(self.target_critic, s["next_obs"], next_state, x_next).squeeze(-1).min(0).values
                v_next = q_next - alpha * logp_next
            target = self.rewards(s) + cfg.gamma * s["next_acting"] * v_next
        joint = self.action_features(s["actions"])
        q = self.q_values(self.critic, s["obs"], state, joint)
        q = q.gather(-1, s["actions"].expand(q.shape[:-1]).unsqueeze(-1)) if discrete else q
        stats = self.critic_step(q.squeeze(-1), target, mask)
        if discrete:
            pi, logp = self._discrete(s["obs"], s["avail"])
            with torch.no_grad():
                q_all = self.q_values(self.critic, s["obs"], state, joint).min(0).values
            loss = -masked_mean(discrete_soft_value(pi, logp, q_all, alpha), mask)
            neg_entropy = (pi * logp).sum(-1).detach()
            target_entropy = cfg.target_entropy_scale * s["avail"].sum(-1).clamp_min(1).float().log()
        else:
            x, logp = self._continuous(s["obs"])
            q_pi = self.actor_q_values(s["obs"], state, joint, x).squeeze(-1).min(0).values
            loss = masked_mean(alpha * logp - q_pi, mask)
            neg_entropy = logp.detach()
            target_entropy = torch.full_like(neg_entropy, -float(self.spec.n_actions))
        stats.update(actor=loss.detach(), actor_grad_norm=self.actor_step(loss), entropy=-masked_mean(neg_entropy, mask),
                     alpha=alpha.mean())
        if cfg.autotune_alpha:
            alpha_loss = -masked_mean(self.log_alpha * (neg_entropy + target_entropy), mask)
            self.alpha_opt.zero_grad()
            alpha_loss.backward()
            self.alpha_opt.step()
        self.update_targets()
        return stats

    def extra_state(self) -> dict:
        return {**super().extra_state(), "alpha_opt": self.alpha_opt.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.alpha_opt.load_state_dict(state["alpha_opt"])


def _entry(preset: dict, summary: str) -> AlgoEntry:
    return AlgoEntry(SACConfig, SACLearner, preset, summary)


ALGOS.register("isac", _entry({"critic": "local", "gamma": 0.95},
                              "independent soft actor-critics: per-agent twin critics on own observation and action, automatic entropy temperature"))
ALGOS.register("masac", _entry({"critic": "central", "gamma": 0.95},
                               "soft actor-critic with centralised twin critics of all agents' actions (continuous or discrete SAC)"))
