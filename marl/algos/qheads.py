"""Value heads of the Q-learner: `HEADS[mixer](cfg, spec, feat_dim)` turns the agents'
utilities into a loss, `head.loss(target_head, context, targets_fn)`,
`targets_fn(context, next_values)` giving the return targets.

`MixerHead` (mixer none|vdn|qmix): per-agent TD for IDQN, or TD on the mixed Q_tot of a
registered mixer (`marl.algos.mixers`).

`QTranHead` (`--algo qtran`): QTRAN-base. The per-agent utilities Q_i come from the same
agent networks as IDQN/VDN/QMIX (see `marl.algos.qlearning`); this head adds the joint
action-value network Q_jt(s, tau, u) and the state-value network V_jt(s) of Son et al.
(2019) and trains all three with the paper's losses (`marl.algos.qtran.qtran_losses`):

    L_td   = (Q_jt(s, tau, u) - y)^2,   y = r + gamma Q_jt^target(s', tau', u_bar')
    L_opt  = (sum_i max_u Q_i - Q_jt(s, tau, u_bar) + V_jt(s))^2          (Q_jt held fixed)
    L_nopt = min(sum_i Q_i(u_i) - Q_jt(s, tau, u) + V_jt(s), 0)^2          (Q_jt held fixed)

u_bar is the greedy joint action of the utilities over available actions; u_bar' at the
next step likewise (from the online utilities with double Q, else from the target ones).
The per-agent features fed to Q_jt are the agent-network inputs (observation plus the
one-hot agent id when `agent_id`), so Q_jt sees (s, o_1..o_N, u_1..u_N).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from marl.algos.mixers import MIXERS
from marl.algos.qtran import QTranJoint, QTranV, qtran_losses
from marl.algos.returns import masked_mean


class MixerHead(nn.Module):
    """Utilities -> TD loss through a registered mixer (none: per-agent TD, vdn, qmix)."""

    def __init__(self, cfg, spec, feat_dim: int):
        super().__init__()
        kwargs = {"embed_dim": cfg.mixer_embed_dim, "hypernet_embed": cfg.hypernet_embed} if cfg.mixer == "qmix" else {}
        self.mixer = MIXERS.get(cfg.mixer)(spec.n_agents, spec.state_dim, **kwargs)
        self.per_agent = self.mixer.per_agent

    def loss(self, target: "MixerHead", c: dict, targets_fn) -> dict[str, Tensor]:
        acting = c["acting"].to(c["q_taken"].dtype)
        needs = self.mixer.needs_state
        q = self.mixer(c["q_taken"] * acting, c["state"][:, :-1] if needs else None)
        with torch.no_grad():
            nxt = target.mixer(c["next_q"], c["state"][:, 1:] if needs else None)
            y = targets_fn(c, nxt)
        mask = c["filled"] * acting if self.per_agent else c["filled"]
        td = masked_mean((q - y) ** 2, mask)
        return {"loss": td, "td": td, "q": q, "target": y, "mask": mask}


def _one_hot(actions: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(actions.long(), n).to(dtype)


class QTranHead(nn.Module):
    """Q_jt and V_jt with the QTRAN-base losses; `loss(target, c, targets_fn)` like `MixerHead`."""

    per_agent = False

    def __init__(self, cfg, spec, feat_dim: int):
        super().__init__()
        self.n_actions = spec.n_actions
        self.lambda_opt, self.lambda_nopt = cfg.lambda_opt, cfg.lambda_nopt
        self.joint = QTranJoint(spec.n_agents, spec.state_dim, feat_dim, spec.n_actions, embed_dim=cfg.qtran_embed,
                                encode_dim=cfg.qtran_embed)
        self.v = QTranV(spec.state_dim, embed_dim=cfg.qtran_embed)

    def loss(self, target: "QTranHead", c: dict, targets_fn) -> dict[str, Tensor]:
        A, B = self.n_actions, c["q_taken"].shape[0]
        feats, state, acting = c["feats"][:, :-1], c["state"][:, :-1], c["acting"].to(c["q_taken"].dtype)
        # Q_jt at the taken and at the greedy joint action, in one pass
        both = self.joint(torch.cat([state, state]), torch.cat([feats, feats]),
                          torch.cat([_one_hot(c["actions"], A, feats.dtype), _one_hot(c["greedy"], A, feats.dtype)]))
        q_jt, q_jt_opt = both.split(B)
        with torch.no_grad():
            next_jt = target.joint(c["state"][:, 1:], c["feats"][:, 1:], _one_hot(c["next_actions"], A, feats.dtype))
            y = targets_fn(c, next_jt)
        parts = qtran_losses(
            q_jt=q_jt, q_jt_target=y,
            q_tilde_opt=(c["q_greedy"] * acting).sum(-1), q_jt_opt_detached=q_jt_opt.detach(),
            v_jt=self.v(state),
            q_tilde_taken=(c["q_taken"] * acting).sum(-1), q_jt_taken_detached=q_jt.detach(),
            filled=c["filled"], lambda_opt=self.lambda_opt, lambda_nopt=self.lambda_nopt,
        )
        return {"loss": parts["loss"], "td": parts["td"], "opt": parts["opt"], "nopt": parts["nopt"],
                "q": q_jt, "target": y, "mask": c["filled"]}


HEADS = {"none": MixerHead, "vdn": MixerHead, "qmix": MixerHead, "qtran": QTranHead}
