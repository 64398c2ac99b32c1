"""Transition replay for off-policy actor-critics (MADDPG, MATD3, the SAC family).

One row per env step of one env ("flat over env steps and envs"), the agent axis kept:
`obs [N, D]`, `actions`, `reward [N]`, the masks (`alive`, `acting`, `avail`), `terminated`
and `truncated` apart, and what the step bootstraps from: `next_obs` / `next_avail` (the
final observation where the agent's or the env's episode ended, see
`marl.algos.replay.segment_steps`) and `next_acting`, True where the value after the step
counts: the agent acts again, or its episode was truncated (time limit), not terminated.

The buffer is a ring of preallocated tensors on one device: adding n rows is one
`index_copy_` per field and sampling B rows one `index_select` per field, whatever the
capacity. The storage is allocated at the first `add` (an acting copy of a learner never
holds one), and a line on stderr estimates its size when it exceeds `LARGE_BYTES`.
`state_dict()` holds the stored rows and the ring pointer, so a resumed run samples the same
rows as an uninterrupted one.
"""
from __future__ import annotations

import math
import sys
from typing import Mapping

import torch
from torch import Tensor

from marl.algos.replay import segment_steps
from marl.core.errors import MarlError

LARGE_BYTES = 1 << 30
"""A replay whose storage would exceed this many bytes says so (one line on stderr) when it is allocated."""


def transition_rows(batch: Mapping[str, Tensor], keys) -> dict[str, Tensor]:
    """The rollout batch ([T, E, ...], marl.core.rollout) as T * E transition rows of the fields
    `keys` (any of segment_steps' fields), in step-major order."""
    steps = segment_steps(dict(batch))
    return {k: steps[k].flatten(0, 1) for k in keys}


def one_step_rows(batch: Mapping[str, Tensor], keys, env_name: str, fix: str) -> dict[str, Tensor]:
    """`transition_rows` of a rollout batch whose agents all act at every step they are in the
    episode; a turn-based game (an agent's transition runs to its next decision, not one env step)
    is a one-line MarlError with `fix`."""
    if bool((batch["alive"] & ~batch["acting"]).any()):
        raise MarlError(f"{env_name or 'this env'} has agents in the episode that do not act at every step (a turn-based game), "
                        "and a transition replay holds one env step", fix)
    return transition_rows(batch, keys)


class TransitionReplay:
    """Uniform ring buffer of transitions. `fields` maps a name to (per-row shape, dtype)."""

    def __init__(self, capacity: int, fields: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 device: str | torch.device = "cpu", batch_size: int | None = None):
        if capacity < 1:
            raise MarlError(f"replay capacity must be at least 1 transition, got {capacity}", "raise --buffer-size")
        if batch_size is not None and batch_size > capacity:
            raise MarlError(f"replay of {capacity} transitions is smaller than the batch of {batch_size}",
                            "raise --buffer-size or lower --batch-size")
        self.capacity, self.device = int(capacity), torch.device(device)
        self.fields = {k: (tuple(int(d) for d in shape), dtype) for k, (shape, dtype) in fields.items()}
        self.storage: dict[str, Tensor] = {}
        self.ptr = self.size = 0

    def nbytes(self) -> int:
        """Bytes of the storage at full capacity."""
        row = sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size() for shape, dtype in self.fields.values())
        return self.capacity * row

    def _allocate(self) -> None:
        if self.nbytes() > LARGE_BYTES:
            print(f"replay: {self.capacity:,} transitions take {self.nbytes() / 2**30:.1f} GiB on {self.device} "
                  "(lower --buffer-size to use less)", file=sys.stderr)
        self.storage = {k: torch.zeros((self.capacity, *shape), dtype=dtype, device=self.device)
                        for k, (shape, dtype) in self.fields.items()}

    def __len__(self) -> int:
        return self.size

    def add(self, rows: Mapping[str, Tensor]) -> None:
        """Store n rows (dict of [n, *shape] tensors, every field), overwriting the oldest when full."""
        if not self.storage:
            self._allocate()
        n = int(rows[next(iter(self.fields))].shape[0])
        keep = min(n, self.capacity)  # more rows than the capacity: only the newest fit
        idx = (self.ptr + torch.arange(keep, device=self.device)) % self.capacity
        for k, (shape, dtype) in self.fields.items():
            x = rows[k]
            if tuple(x.shape) != (n, *shape):
                raise ValueError(f"replay field '{k}' expects [n={n}, *{shape}], got {tuple(x.shape)}")
            self.storage[k].index_copy_(0, idx, x[n - keep:].to(device=self.device, dtype=dtype))
        self.ptr = (self.ptr + keep) % self.capacity
        self.size = min(self.size + keep, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """`batch_size` rows drawn uniformly with replacement; dict of [B, *shape] tensors.
        `generator` is a CPU generator (indices are drawn on the CPU, one copy to the device)."""
        if self.size == 0:
            raise MarlError("the replay is empty", "start updates only once the buffer holds transitions")
        idx = torch.randint(self.size, (batch_size,), generator=generator).to(self.device)
        return {k: v.index_select(0, idx) for k, v in self.storage.items()}

    def batches(self, n: int, batch_size: int, generator: torch.Generator | None = None) -> list[dict[str, Tensor]]:
        """n batches as n calls of `sample` draw them (the same indices from `generator`), in one
        draw and one gather per field: a learner taking n gradient steps between two collections
        pays the sampling once."""
        if n < 1:
            return []
        parts = {k: v.view(n, batch_size, *v.shape[1:]).unbind() for k, v in self.sample(n * batch_size, generator).items()}
        return [{k: p[i] for k, p in parts.items()} for i in range(n)]

    def state_dict(self) -> dict:
        """The stored rows and the ring pointer (everything an exact resume needs)."""
        n = self.size
        return {"capacity": self.capacity, "ptr": self.ptr, "size": n,
                "fields": {k: (list(shape), str(dtype)) for k, (shape, dtype) in self.fields.items()},
                "storage": {k: v[:n].clone() for k, v in self.storage.items()} if n else {}}

    def load_state_dict(self, state: Mapping) -> None:
        mine = {k: (list(shape), str(dtype)) for k, (shape, dtype) in self.fields.items()}
        theirs = {k: (list(shape), dtype) for k, (shape, dtype) in state["fields"].items()}
        if state["capacity"] != self.capacity or theirs != mine:
            raise MarlError("replay checkpoint does not match this buffer (capacity or fields differ)",
                            "resume with the configuration the run was started with")
        n = int(state["size"])
        self.storage = {}
        if n:
            self._allocate()
            for k, v in self.storage.items():
                v[:n] = state["storage"][k].to(self.device)
        self.ptr, self.size = int(state["ptr"]), n
