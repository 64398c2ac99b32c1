"""Action distributions as pure functions on tensors (no torch.distributions: its argument
checks and object construction dominate at the small batch sizes of acting).

Categorical: logits [..., A]; masks `avail` [..., A] bool (True = available). Masked logits are
set to MASK_VALUE, a large finite negative, so softmax gives them probability exactly 0 and no
NaN appears even when a whole row is masked (that row becomes uniform).
Gaussian: mean [..., A], log_std broadcastable to it; log-probs and entropies are summed over A.
Relaxed and squashed forms for off-policy actor-critics: the straight-through Gumbel-softmax
(discrete MADDPG) and the tanh-squashed Gaussian with its log-prob correction (SAC).
"""
from __future__ import annotations

import math

import torch

MASK_VALUE = -1e9
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _fill(dtype: torch.dtype) -> float:
    """MASK_VALUE, or the dtype's lowest finite value when MASK_VALUE does not fit (float16)."""
    return max(MASK_VALUE, torch.finfo(dtype).min)


def mask_logits(logits: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
    """Logits with unavailable actions (avail False) replaced by MASK_VALUE; `avail=None` is a no-op."""
    if avail is None:
        return logits
    return logits.masked_fill(~avail.bool(), _fill(logits.dtype))


def categorical_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim (masked actions get exactly 0)."""
    return torch.softmax(logits, dim=-1)


def categorical_sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One action per row, LongTensor [...], by the Gumbel-max trick.

    Exact for masks: uniform noise is kept away from 0 so the Gumbel noise is finite and
    bounded (about [-4.5, 16.6] in float32), and entries at or below MASK_VALUE get no noise,
    so a masked action is never drawn (a fully masked row returns action 0).
    """
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_(min=torch.finfo(logits.dtype).tiny)))
    scores = torch.where(logits <= _fill(logits.dtype), logits, logits + gumbel)
    return scores.argmax(dim=-1)


def categorical_logp(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(actions), [...], for logits [..., A] and integer actions [...]."""
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(dim=-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [...] of softmax(logits); masked actions (probability 0) contribute 0."""
    return _entropy(torch.log_softmax(logits, dim=-1))


def categorical_logp_entropy(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(actions), entropy), both [...], from one log-softmax (what a policy update needs)."""
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), _entropy(logp)


def categorical_greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely action per row, LongTensor [...] (never a masked one unless all are)."""
    return logits.argmax(dim=-1)


def gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """mean + exp(log_std) * eps with eps ~ N(0, I), shape of mean (log_std broadcasts)."""
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return torch.addcmul(mean, log_std.exp(), eps)


def gaussian_logp(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(actions; mean, exp(log_std)^2 I), summed over the last (action) dim -> [...]."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(dim=-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, summed over the last dim -> log_std.shape[:-1]
    (broadcast it against the batch yourself when log_std is state-independent)."""
    return (0.5 + _HALF_LOG_2PI + log_std).sum(dim=-1)


def gumbel_softmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None,
                   hard: bool = True) -> torch.Tensor:
    """A relaxed one-hot sample [..., A] (Jang et al. 2017; Maddison et al. 2017):
    y = softmax((logits + g) / temperature), g ~ Gumbel(0, 1). With `hard` (straight through)
    the forward value is the one-hot of argmax(logits + g), a true sample of softmax(logits),
    and the gradient is that of the soft y: y_hard - y.detach() + y. As temperature -> 0 the
    soft y tends to that one-hot; as it grows y tends to uniform. Masked logits (MASK_VALUE)
    get no noise and probability 0."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_(min=torch.finfo(logits.dtype).tiny)))
    scores = torch.where(logits <= _fill(logits.dtype), logits, logits + gumbel)
    soft = torch.softmax(scores / temperature, dim=-1)
    if not hard:
        return soft
    one_hot = torch.nn.functional.one_hot(scores.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft


def tanh_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor, generator: torch.Generator | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, log pi(a)) for a = tanh(u), u ~ N(mean, exp(log_std)^2) reparameterised (gradients
    flow to mean and log_std). log pi(a) = log N(u) - sum log(1 - tanh(u)^2), the last term
    written stably as 2 (log 2 - u - softplus(-2u)). a lies in (-1, 1); an affine map to the
    action bounds adds a constant to log pi, which is left out (as in SAC's reference code)."""
    u = gaussian_sample(mean, log_std, generator)
    correction = 2.0 * (math.log(2.0) - u - torch.nn.functional.softplus(-2.0 * u))
    return torch.tanh(u), gaussian_logp(mean, log_std, u) - correction.sum(-1)


__all__ = [
    "gumbel_softmax", "tanh_gaussian_sample",
    "MASK_VALUE", "mask_logits", "categorical_probs", "categorical_sample", "categorical_logp",
    "categorical_entropy", "categorical_logp_entropy", "categorical_greedy", "gaussian_sample", "gaussian_logp",
    "gaussian_entropy",
]
