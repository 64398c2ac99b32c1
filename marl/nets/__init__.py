"""Networks with parameter sharing as one field (`sharing = "all" | "none" | [group ids]`),
grouped layers computed as one batched op over the agent axis, and action distributions as
pure functions. Imports only torch and marl.core."""
from marl.nets.dists import (
    MASK_VALUE,
    categorical_entropy,
    categorical_greedy,
    categorical_logp,
    categorical_logp_entropy,
    categorical_probs,
    categorical_sample,
    gaussian_entropy,
    gaussian_logp,
    gaussian_sample,
    gumbel_softmax,
    mask_logits,
    tanh_gaussian_sample,
)
from marl.nets.layers import GroupGRUCell, GroupLayerNorm, GroupLinear, grouped_linear
from marl.nets.models import MLP, AgentNet, SetNet, unroll, with_agent_id
from marl.nets.sharing import as_groups, num_groups, resolve_groups

__all__ = [
    "MASK_VALUE", "categorical_entropy", "categorical_greedy", "categorical_logp", "categorical_logp_entropy", "categorical_probs",
    "categorical_sample", "gaussian_entropy", "gaussian_logp", "gaussian_sample",
    "mask_logits", "GroupGRUCell", "GroupLayerNorm", "GroupLinear", "grouped_linear", "MLP",
    "AgentNet", "SetNet", "unroll", "with_agent_id", "as_groups", "num_groups", "resolve_groups",
]
