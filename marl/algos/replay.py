"""Episode replay for off-policy value-based learners (EPyMARL-style padded episodes).

`EpisodeReplay` keeps whole episodes padded to `max_len` with a `filled` mask in a ring
buffer on one device. `EpisodeBuilder` cuts rollout segments ([T, E, ...] tensors with a
`done[T, E]` flag, see ARCHITECTURE.md "Rollout batch") into completed episodes, keeping
partial episodes across calls.

Episode layout in the replay: an episode of L steps is stored as L + 1 rows. Rows 0..L-1
hold the observation, state and action mask the agents acted on plus that step's actions,
rewards, flags and alive / acting masks; row L holds the observation after the last step (the final
observation, state and action mask, used to bootstrap a truncation). Where one agent's
episode ends before the env's (per-agent termination), the row after its end holds that
agent's final observation, so row t + 1 is always "the observation after step t" for every
agent that was alive at t. The agents (feed-forward or GRU) run over all rows at once, so
the online net gives both Q(o_t, .) and the double-Q argmax at o_{t+1}.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor

from marl.core.errors import MarlError

FILLED = "filled"
STEP_KEYS = ("obs", "state", "avail", "alive", "acting", "actions", "reward", "terminated", "truncated",
             "next_obs", "next_state", "next_avail", "next_acting")
"""Per-step fields the episode builder keeps (see `segment_steps`)."""


class EpisodeReplay:
    """Ring buffer of whole episodes, padded to `max_len`.

    `fields` maps a name to (per-step shape, dtype); each stored episode is a dict of
    [L, *shape] tensors with 1 <= L <= max_len. Storage is [capacity, max_len, *shape] per
    field plus a bool `filled` [capacity, max_len] mask, all on `device`. When
    `batch_size` is given, a capacity smaller than one batch is refused at construction.

    `max_len=None` (the env's episode limit is not known): the time axis is sized by the
    first episode and grows (to at least twice its size) when a longer episode arrives, so
    memory follows the longest episode seen; sampling cost follows the sampled episodes.
    """

    def __init__(self, capacity_episodes: int, max_len: int | None, fields: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 device: str | torch.device = "cpu", batch_size: int | None = None):
        if capacity_episodes < 1 or (max_len is not None and max_len < 1):
            raise MarlError(f"replay needs capacity >= 1 and max_len >= 1, got {capacity_episodes} and {max_len}",
                            "raise the buffer size / episode limit")
        if FILLED in fields:
            raise MarlError(f"replay field name '{FILLED}' is reserved for the padding mask", "rename that field")
        self.growable = max_len is None
        self.capacity, self.max_len = int(capacity_episodes), 0 if max_len is None else int(max_len)
        self.device = torch.device(device)
        self.fields = {k: (tuple(int(d) for d in shape), dtype) for k, (shape, dtype) in fields.items()}
        self.storage: dict[str, Tensor] = {}
        self._allocate(self.max_len)
        self.lengths = torch.zeros(self.capacity, dtype=torch.long, device=self.device)
        self.ptr, self.size = 0, 0
        if batch_size is not None:
            self.check_batch(batch_size)

    def _allocate(self, max_len: int) -> None:
        """(Re)allocate storage with a time axis of `max_len`, keeping what is stored."""
        old, self.max_len = self.storage, int(max_len)
        specs = {**self.fields, FILLED: ((), torch.bool)}
        self.storage = {k: torch.zeros((self.capacity, self.max_len, *shape), dtype=dtype, device=self.device)
                        for k, (shape, dtype) in specs.items()}
        for k, v in old.items():
            keep = min(v.shape[1], self.max_len)
            self.storage[k][:, :keep] = v[:, :keep]

    def check_batch(self, batch_size: int) -> None:
        """Raise MarlError when a batch of `batch_size` episodes can never be sampled."""
        if batch_size > self.capacity:
            raise MarlError(f"replay capacity of {self.capacity} episodes is smaller than the batch of {batch_size} episodes",
                            "raise the buffer size or lower the batch size")

    def __len__(self) -> int:
        """Number of episodes stored (at most the capacity)."""
        return self.size

    def add(self, episode: Mapping[str, Tensor]) -> None:
        """Store one episode (dict of [L, *shape] tensors, every field present), overwriting the oldest when full."""
        missing = [k for k in self.fields if k not in episode]
        if missing:
            raise KeyError(f"episode lacks replay fields {missing}")
        L = int(episode[next(iter(self.fields))].shape[0])
        if self.growable and L > self.max_len:
            self._allocate(max(L, 2 * self.max_len))
        if not 1 <= L <= self.max_len:
            raise MarlError(f"episode of length {L} does not fit the replay's max_len={self.max_len}",
                            "set the replay's max_len to the env's episode limit")
        slot = self.ptr
        for k, (shape, dtype) in self.fields.items():
            x = episode[k]
            if tuple(x.shape) != (L, *shape):
                raise ValueError(f"replay field '{k}' expects [L={L}, *{shape}], got {tuple(x.shape)}")
            self.storage[k][slot].zero_()
            self.storage[k][slot, :L] = x.to(device=self.device, dtype=dtype)
        self.storage[FILLED][slot] = torch.arange(self.max_len, device=self.device) < L
        self.lengths[slot] = L
        self.ptr = (self.ptr + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw `batch_size` distinct episodes uniformly; dict of [B, T, ...] tensors.

        T is the longest sampled episode; `filled` [B, T] (float32) marks real steps.
        `generator` is a CPU torch.Generator (indices are drawn on the CPU).
        """
        self.check_batch(batch_size)
        if batch_size > self.size:
            raise MarlError(f"replay holds {self.size} episodes, fewer than the batch of {batch_size}",
                            "start updates only once the buffer holds a batch")
        idx = torch.randperm(self.size, generator=generator)[:batch_size].to(self.device)
        T = int(self.lengths[idx].max().item())
        out = {k: v[idx, :T] for k, v in self.storage.items()}
        out[FILLED] = out[FILLED].float()
        return out

    def batches(self, n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterable[dict[str, Tensor]]:
        """n batches for n gradient steps, each drawn when it is reached (episodes are distinct
        within a batch, not across batches; `TransitionReplay.batches` is the same contract)."""
        return (self.sample(batch_size, generator) for _ in range(n))

    def state_dict(self) -> dict:
        """Everything needed to restore the buffer exactly (stored episodes, ring pointer)."""
        n = self.size
        return {
            "capacity": self.capacity, "max_len": self.max_len, "ptr": self.ptr, "size": n,
            "fields": {k: (shape, str(dtype)) for k, (shape, dtype) in self.fields.items()},
            "storage": {k: v[:n].clone() for k, v in self.storage.items()},
            "lengths": self.lengths[:n].clone(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a buffer saved by `state_dict` (same capacity, max_len and fields; a growable
        buffer takes the saved max_len)."""
        mine = {k: (shape, str(dtype)) for k, (shape, dtype) in self.fields.items()}
        theirs = {k: (tuple(shape), dtype) for k, (shape, dtype) in state["fields"].items()}
        max_len = state["max_len"] if self.growable else self.max_len
        if (state["capacity"], state["max_len"], theirs) != (self.capacity, max_len, mine):
            raise MarlError("replay checkpoint does not match this buffer (capacity, max_len or fields differ)",
                            "resume with the configuration the run was started with")
        if max_len != self.max_len:
            self._allocate(max_len)
        n = int(state["size"])
        for k, v in self.storage.items():
            v.zero_()
            v[:n] = state["storage"][k].to(self.device)
        self.lengths.zero_()
        self.lengths[:n] = state["lengths"].to(self.device)
        self.ptr, self.size = int(state["ptr"]), n


class EpisodeBuilder:
    """Cuts rollout segments into completed episodes.

    A segment is a dict of tensors with leading [T, E] axes plus `done[T, E]` (the env's
    episode ended at step t). `keys` are the per-step fields copied into episodes.
    Episodes may span several consecutive segments; partial ones are kept between calls.
    Completed episodes (dicts of [L, ...] tensors) are returned by `add` in order of their
    last step (then env index).
    """

    def __init__(self, num_envs: int, keys: Iterable[str]):
        self.num_envs = int(num_envs)
        self.keys = list(keys)
        self.partial: list[list[dict[str, Tensor]]] = [[] for _ in range(self.num_envs)]

    def add(self, segment: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
        """Take one rollout segment; return the episodes it completed."""
        done = segment["done"].bool()
        if done.dim() != 2 or done.shape[1] != self.num_envs:
            raise ValueError(f"done must be [T, E={self.num_envs}], got {tuple(done.shape)}")
        steps = {k: segment[k] for k in self.keys}
        T = done.shape[0]
        ends: list[tuple[int, int]] = [(int(t), int(e)) for t, e in done.nonzero().tolist()]
        ends.sort()
        starts = [0] * self.num_envs
        finished: list[dict[str, Tensor]] = []
        for t, e in ends:
            self.partial[e].append({k: v[starts[e]: t + 1, e] for k, v in steps.items()})
            starts[e] = t + 1
            finished.append({k: torch.cat([c[k] for c in self.partial[e]], dim=0) for k in steps})
            self.partial[e] = []
        for e in range(self.num_envs):
            if starts[e] < T:
                self.partial[e].append({k: v[starts[e]:, e].clone() for k, v in steps.items()})
        return finished

    def state_dict(self) -> dict:
        """The partial episodes, one dict of [L, ...] tensors (or None) per env."""
        return {"partial": [
            {k: torch.cat([c[k] for c in chunks], dim=0).clone() for k in chunks[0]} if chunks else None
            for chunks in self.partial
        ]}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the partial episodes saved by `state_dict`."""
        partial = state["partial"]
        if len(partial) != self.num_envs:
            raise MarlError(f"episode builder checkpoint has {len(partial)} envs, this run has {self.num_envs}",
                            "resume with the same number of envs")
        self.partial = [[{k: v.clone() for k, v in p.items()}] if p is not None else [] for p in partial]


def segment_steps(b: dict) -> dict[str, Tensor]:
    """Per-step fields of a rollout segment ([T, E, ...]) for the episode builder, with
    `next_obs / next_avail / next_state / next_acting`: the value after each step, the final
    observation (and its mask) where an agent's or the env's episode ended. `next_acting` is
    True for agents whose value after the step is bootstrapped: deciding at the next step, or
    truncated."""
    done = b["done"]
    ended = b["terminated"] | b["truncated"]
    cut = ended | done.unsqueeze(-1)

    def after(name: str) -> Tensor:  # value at t + 1 inside the segment, the segment's next_<name> after it
        return torch.cat([b[name][1:], b[f"next_{name}"].unsqueeze(0)])

    out = {k: b[k] for k in ("obs", "state", "avail", "alive", "acting", "actions", "reward", "terminated", "truncated")}
    out["next_obs"] = torch.where(cut.unsqueeze(-1), b["final_obs"], after("obs"))
    out["next_avail"] = torch.where(cut.unsqueeze(-1), b["final_avail"], after("avail"))
    out["next_state"] = torch.where(done.unsqueeze(-1), b["final_state"], after("state"))
    out["next_acting"] = torch.where(cut, b["truncated"], after("acting"))
    out["done"] = done
    return out


def episode_rows(ep: dict[str, Tensor]) -> dict[str, Tensor]:
    """An episode of L steps (from the builder) as the L + 1 replay rows (see the module docstring)."""
    rows = {k: torch.cat([ep[k][:1], ep[f"next_{k}"]]) for k in ("obs", "state", "avail")}
    for k in ("alive", "acting", "actions", "reward", "terminated", "truncated", "next_acting"):
        x = ep[k]
        rows[k] = torch.cat([x, x.new_zeros((1, *x.shape[1:]))])
    return rows


def with_acting(state: dict | None) -> dict | None:
    """A replay or builder state saved with `next_alive` and no `acting`, with `acting` = `alive`
    and `next_acting` = `next_alive` (the same masks in parallel envs)."""
    if state is None:
        return None

    def fix(d: dict) -> dict:
        d = {("next_acting" if k == "next_alive" else k): v for k, v in d.items()}
        d["acting"] = d["alive"]
        return d

    out = dict(state)
    for key in ("fields", "storage"):
        if key in out:
            out[key] = fix(out[key])
    if "partial" in out:
        out["partial"] = [None if p is None else fix(p) for p in out["partial"]]
    return out
