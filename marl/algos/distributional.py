"""A value distribution as a mixture of Gaussians, and the energy distance between two such
mixtures in closed form (GMAC: Nam, Kim & Park 2021, "GMAC: A Distributional Perspective on
Actor-Critic Framework"), as pure functions.

A mixture is (weights [..., K], means [..., K], stds [..., K]); a point mass is a component
with std 0. The distance is the energy distance
    D(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|   (X, X' ~ P and Y, Y' ~ Q, all independent),
which is twice the Cramér distance ∫ (F_P - F_Q)^2 in one dimension: 0 for identical
distributions, 2 |μ1 - μ2| for two point masses. For two Gaussian components X - Y is
Gaussian, N(d, s²) with d = μ1 - μ2 and s² = σ1² + σ2², and
    E|X - Y| = s √(2/π) exp(-d² / 2s²) + d erf(d / (s √2)),
so the mixture's expectation is the weighted sum over component pairs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MIN_VAR = 1e-8
"""Added to every pair's variance σ1² + σ2²: it keeps s and the gradients finite between point masses
(it moves E|X - Y| by at most √(2/π)·1e-4)."""


def pair_abs_diff(d: Tensor, var: Tensor) -> Tensor:
    """E|Z| for Z ~ N(d, var): s √(2/π) exp(-d²/2s²) + d erf(d/(s√2)), s² = var + MIN_VAR."""
    s = (var + MIN_VAR).sqrt()
    z = d / (s * math.sqrt(2.0))
    return s * math.sqrt(2.0 / math.pi) * torch.exp(-z * z) + d * torch.erf(z)


def expected_abs_diff(p: tuple[Tensor, Tensor, Tensor], q: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """E|X - Y| [...] for independent X ~ mixture p, Y ~ mixture q (each (weights, means, stds) [..., K])."""
    (wp, mp, sp), (wq, mq, sq) = p, q
    d = mp.unsqueeze(-1) - mq.unsqueeze(-2)
    var = sp.square().unsqueeze(-1) + sq.square().unsqueeze(-2)
    return (wp.unsqueeze(-1) * wq.unsqueeze(-2) * pair_abs_diff(d, var)).sum((-2, -1))


def energy_distance(p: tuple[Tensor, Tensor, Tensor], q: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| [...] between mixtures p and q (module docstring)."""
    return 2 * expected_abs_diff(p, q) - expected_abs_diff(p, p) - expected_abs_diff(q, q)


def point_mass(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The one-component mixture at x [...] -> weights, means, stds [..., 1]."""
    x = x.unsqueeze(-1)
    return torch.ones_like(x), x, torch.zeros_like(x)


def gmm_params(out: Tensor, min_std: float = 1e-3) -> tuple[Tensor, Tensor, Tensor]:
    """A network's output [..., 3K] (logits, means, raw stds) -> mixture (weights, means, stds) [..., K]."""
    logits, means, raw = out.chunk(3, dim=-1)
    return torch.softmax(logits, -1), means, torch.nn.functional.softplus(raw) + min_std


def gmm_mean(out: Tensor) -> Tensor:
    """The mean [...] of the mixture a network output [..., 3K] describes."""
    logits, means, _ = out.chunk(3, dim=-1)
    return (torch.softmax(logits, -1) * means).sum(-1)
