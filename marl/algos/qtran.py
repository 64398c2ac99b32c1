"""QTRAN-base pieces (Son et al. 2019, "QTRAN: Learning to Factorize with Transformation").

Notation of the paper: per-agent utilities Q_i(tau_i, u_i); their sum
Q'_jt(tau, u) = sum_i Q_i(tau_i, u_i); a joint action-value network Q_jt(tau, u); a
state-value network V_jt(tau); the greedy joint action u_bar = (argmax_u Q_i)_i. Training
minimises L = L_td + lambda_opt L_opt + lambda_nopt L_nopt with

    L_td   = (Q_jt(tau, u) - y)^2
    L_opt  = (Q'_jt(tau, u_bar) - Q^_jt(tau, u_bar) + V_jt(tau))^2
    L_nopt = min(Q'_jt(tau, u) - Q^_jt(tau, u) + V_jt(tau), 0)^2

where Q^_jt is Q_jt held fixed (no gradient) in the two factorisation losses, so they move
the utilities and V_jt only. `QTranJoint` and `QTranV` are the two networks; the losses
are the pure function `qtran_losses`.

`QTranHead` puts them together as the Q-learner's "qtran" value decomposition (registered
in `marl.algos.mixers.MIXERS`). The per-agent utilities Q_i come from the same agent
networks as IDQN/VDN/QMIX (see `marl.algos.qlearning`); u_bar is the greedy joint action
of the utilities over available actions, u_bar' at the next step likewise (from the online
utilities with double Q, else from the target ones), and the TD target is
y = r + gamma Q_jt^target(s', tau', u_bar') (or the configured multi-step return). The
per-agent features fed to Q_jt are the agent-network inputs (observation plus the one-hot
agent id when `agent_id`), so Q_jt sees (s, o_1..o_N, u_1..u_N).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from marl.algos.mixers import MIXERS, TargetsFn, td_loss
from marl.algos.returns import masked_mean
from marl.core.errors import MarlError


class QTranJoint(nn.Module):
    """Q_jt(s, u) of QTRAN-base.

    Each agent's features h_i (hidden state or utilities, [..., N, F]) are concatenated
    with its one-hot action u_i ([..., N, A]) and encoded by one shared MLP; the encodings
    are summed over agents (permutation-invariant, as in the paper's QTRAN-base) and,
    joined with the state [..., S], fed to an MLP with one output. The encoder has
    `encode_dim` units (pymarl uses feat_dim + n_actions; a narrow ReLU encoder can
    collapse joint actions onto the same sum), the head two hidden layers of `embed_dim`. Give the features an
    agent id when the agents are not interchangeable.
    """

    def __init__(self, n_agents: int, state_dim: int, feat_dim: int, n_actions: int, embed_dim: int = 64,
                 encode_dim: int = 64):
        super().__init__()
        self.n_agents, self.state_dim, self.feat_dim, self.n_actions = n_agents, state_dim, feat_dim, n_actions
        enc_in = feat_dim + n_actions
        self.encoder = nn.Sequential(nn.Linear(enc_in, encode_dim), nn.ReLU(), nn.Linear(encode_dim, encode_dim))
        self.head = nn.Sequential(
            nn.Linear(state_dim + encode_dim, embed_dim), nn.ReLU(),
            nn.Linear(embed_dim, embed_dim), nn.ReLU(),
            nn.Linear(embed_dim, 1),
        )

    def forward(self, state: Tensor, feats: Tensor, actions_onehot: Tensor) -> Tensor:
        """Q_jt [...] from state [..., S], features [..., N, F] and one-hot actions [..., N, A]."""
        lead = state.shape[:-1]
        want = {"state": (*lead, self.state_dim), "feats": (*lead, self.n_agents, self.feat_dim),
                "actions_onehot": (*lead, self.n_agents, self.n_actions)}
        for name, x in (("state", state), ("feats", feats), ("actions_onehot", actions_onehot)):
            if tuple(x.shape) != want[name]:
                raise MarlError(f"QTranJoint got {name} of shape {tuple(x.shape)}", f"pass {name} as {list(want[name])}")
        enc = self.encoder(torch.cat([feats, actions_onehot.to(feats.dtype)], dim=-1)).sum(dim=-2)
        return self.head(torch.cat([state, enc], dim=-1)).squeeze(-1)


class QTranV(nn.Module):
    """V_jt(s) of QTRAN: a state-value MLP (state [..., S] -> [...])."""

    def __init__(self, state_dim: int, embed_dim: int = 64):
        super().__init__()
        self.state_dim = state_dim
        self.net = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, state: Tensor) -> Tensor:
        """V_jt [...] from state [..., S]."""
        if state.shape[-1] != self.state_dim:
            raise MarlError(f"QTranV got state of shape {tuple(state.shape)}", f"pass state as [..., {self.state_dim}]")
        return self.net(state).squeeze(-1)


def qtran_losses(q_jt: Tensor, q_jt_target: Tensor, q_tilde_opt: Tensor, q_jt_opt_detached: Tensor, v_jt: Tensor,
                 q_tilde_taken: Tensor, q_jt_taken_detached: Tensor, filled: Tensor,
                 lambda_opt: float = 1.0, lambda_nopt: float = 1.0, loss_kind: str = "squared") -> dict[str, Tensor]:
    """QTRAN-base losses, each a mean over the filled entries (all tensors [B, T] or [B]).

    q_jt: Q_jt(s, u) at the taken joint action; q_jt_target: its TD target y;
    q_tilde_opt: Q'_jt(s, u_bar) = sum_i max_u Q_i; q_jt_opt_detached: Q_jt(s, u_bar);
    v_jt: V_jt(s); q_tilde_taken: Q'_jt(s, u) = sum_i Q_i(u_i) at the taken action;
    q_jt_taken_detached: Q_jt(s, u). The target and both "detached" inputs are detached
    here as well, so gradients follow the paper whatever the caller passes.
    td is `td_loss(q_jt - y, loss_kind)` (squared or Huber), the constraints are squared.
    Returns {"td", "opt", "nopt", "loss"} with loss = td + lambda_opt opt + lambda_nopt nopt.
    """
    shapes = {tuple(t.shape) for t in (q_jt, q_jt_target, q_tilde_opt, q_jt_opt_detached, v_jt, q_tilde_taken,
                                         q_jt_taken_detached, filled)}
    if len(shapes) != 1:
        raise MarlError(f"qtran_losses got inputs of different shapes {sorted(shapes)}", "pass all inputs as [B, T] (or all as [B])")
    td = masked_mean(td_loss(q_jt - q_jt_target.detach(), loss_kind), filled)
    opt = masked_mean((q_tilde_opt - q_jt_opt_detached.detach() + v_jt) ** 2, filled)
    nopt_err = q_tilde_taken - q_jt_taken_detached.detach() + v_jt
    nopt = masked_mean(torch.clamp(nopt_err, max=0.0) ** 2, filled)
    return {"td": td, "opt": opt, "nopt": nopt, "loss": td + lambda_opt * opt + lambda_nopt * nopt}


def _one_hot(actions: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(actions.long(), n).to(dtype)


class QTranHead(nn.Module):
    """Q_jt and V_jt with the QTRAN-base losses: a `MixerKind` and its `ValueHead` (marl.algos.mixers)."""

    needs_state = True
    per_agent = False

    def __init__(self, cfg, spec, feat_dim: int):
        super().__init__()
        self.n_actions = spec.n_actions
        self.lambda_opt, self.lambda_nopt, self.loss_kind = cfg.lambda_opt, cfg.lambda_nopt, cfg.td_loss
        self.joint = QTranJoint(spec.n_agents, spec.state_dim, feat_dim, spec.n_actions, embed_dim=cfg.qtran_embed,
                                encode_dim=cfg.qtran_embed)
        self.v = QTranV(spec.state_dim, embed_dim=cfg.qtran_embed)

    @classmethod
    def value_head(cls, cfg, spec, feat_dim: int) -> "QTranHead":
        return cls(cfg, spec, feat_dim)

    def loss(self, target: "QTranHead", c: dict[str, Tensor], targets_fn: TargetsFn) -> dict[str, Tensor]:
        A, B = self.n_actions, c["q_taken"].shape[0]
        feats, state, acting = c["feats"][:, :-1], c["state"][:, :-1], c["acting"].to(c["q_taken"].dtype)
        # Q_jt at the taken and at the greedy joint action, in one pass
        both = self.joint(torch.cat([state, state]), torch.cat([feats, feats]),
                          torch.cat([_one_hot(c["actions"], A, feats.dtype), _one_hot(c["greedy"], A, feats.dtype)]))
        q_jt, q_jt_opt = both.split(B)
        with torch.no_grad():
            y = targets_fn(c, target.joint(c["state"][:, 1:], c["feats"][:, 1:], _one_hot(c["next_actions"], A, feats.dtype)))
        parts = qtran_losses(
            q_jt=q_jt, q_jt_target=y,
            q_tilde_opt=(c["q_greedy"] * acting).sum(-1), q_jt_opt_detached=q_jt_opt.detach(),
            v_jt=self.v(state),
            q_tilde_taken=(c["q_taken"] * acting).sum(-1), q_jt_taken_detached=q_jt.detach(),
            filled=c["filled"], lambda_opt=self.lambda_opt, lambda_nopt=self.lambda_nopt, loss_kind=self.loss_kind,
        )
        return {"loss": parts["loss"], "td": parts["td"], "opt": parts["opt"], "nopt": parts["nopt"],
                "q": q_jt, "target": y, "mask": c["filled"]}


MIXERS.register("qtran", QTranHead)
