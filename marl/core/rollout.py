"""Collect rollouts from a VecEnv with a policy into tensors with leading [T, E] axes.

A policy has `initial_hidden(E)` and `act(inputs, hidden, explore) -> (actions, hidden, extras)`
where `inputs` holds `obs, state, avail, alive, acting` tensors on the policy's device. One
host->device copy of the observation and one device->host copy of the actions per step.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from marl.core.vec import OBS_FIELDS, EpisodeStats, VecEnv

_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(bool): torch.bool, np.dtype(np.int64): torch.int64}


class Policy(Protocol):
    def initial_hidden(self, num_envs: int) -> torch.Tensor | None: ...

    def act(self, inputs: dict[str, torch.Tensor], hidden: Any, explore: bool) -> tuple[torch.Tensor, Any, dict]: ...


def _episodes_ended(policy: Any, done: np.ndarray, episodes: list[EpisodeStats]) -> None:
    """A joint policy (marl.core.policies.PolicyMap) tags finished episodes and redraws seats."""
    hook = getattr(policy, "episodes_ended", None)
    if hook is not None:
        hook(done, episodes)


def _hidden_to(hidden: Any, device: torch.device) -> Any:
    if isinstance(hidden, list):
        return [_hidden_to(h, device) for h in hidden]
    return None if hidden is None else hidden.to(device)


def to_tensors(arrays: dict[str, np.ndarray], device: torch.device, keys=OBS_FIELDS) -> dict[str, torch.Tensor]:
    """Copies (the runner reuses its arrays on the next step)."""
    return {k: torch.tensor(arrays[k], device=device) for k in keys}


def reset_hidden(hidden: Any, done: torch.Tensor) -> Any:
    """Zero the recurrent state of envs whose episode just ended (hidden [E, ...] or a list of
    them, one per policy, done [E])."""
    if isinstance(hidden, list):
        return [reset_hidden(h, done) for h in hidden]
    if hidden is None or not bool(done.any()):
        return hidden
    return hidden * (~done).view(-1, *([1] * (hidden.dim() - 1))).to(hidden.dtype)


class Collector:
    """Steps a VecEnv with a policy and keeps the last observation between calls."""

    def __init__(self, vec: VecEnv, policy: Policy, device: torch.device):
        self.vec, self.policy, self.device = vec, policy, device
        self.last = to_tensors(vec.reset(), device)
        self.hidden = policy.initial_hidden(vec.num_envs)
        self._bufs: dict[str, torch.Tensor] = {}

    def _buffer(self, key: str, T: int, like: torch.Tensor) -> torch.Tensor:
        buf = self._bufs.get(key)
        if buf is None or buf.shape[0] != T or buf.shape[1:] != like.shape or buf.dtype != like.dtype:
            buf = self._bufs[key] = torch.empty((T, *like.shape), dtype=like.dtype, device=self.device)
        return buf

    @torch.no_grad()
    def collect(self, T: int, explore: bool = True) -> tuple[dict[str, torch.Tensor], list[EpisodeStats]]:
        """T steps of every env. Returned tensors are reused by the next call: consume them first."""
        batch: dict[str, torch.Tensor] = {}
        episodes: list[EpisodeStats] = []
        hidden0 = self.hidden
        for t in range(T):
            inputs = self.last
            actions, self.hidden, extras = self.policy.act(inputs, self.hidden, explore)
            arrays, eps = self.vec.step(actions.cpu().numpy())
            _episodes_ended(self.policy, arrays["done"], eps)
            episodes.extend(eps)
            step = {k: torch.as_tensor(v) for k, v in arrays.items()}
            for source in (inputs, {"actions": actions}, extras):
                for k, v in source.items():
                    self._buffer(k, T, v)[t].copy_(v)
            for k in ("reward", "terminated", "truncated", "done", "final_obs", "final_state", "final_avail"):
                self._buffer(k, T, step[k])[t].copy_(step[k])
            self.last = {k: step[k].to(self.device, copy=True) for k in OBS_FIELDS}
            if self.hidden is not None:
                self.hidden = reset_hidden(self.hidden, self.last["alive"].new_tensor(arrays["done"]))
        for k, buf in self._bufs.items():
            if buf.shape[0] == T:
                batch[k] = buf
        batch.update({f"next_{k}": v for k, v in self.last.items()})
        if hidden0 is not None:
            batch["hidden0"] = hidden0
        return batch, episodes

    def state_dict(self) -> dict:
        return {"last": {k: v.cpu() for k, v in self.last.items()}, "hidden": _hidden_to(self.hidden, torch.device("cpu")),
                "envs": self.vec.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.vec.set_state(state["envs"])
        self.last = {k: v.to(self.device) for k, v in state["last"].items()}
        self.last.setdefault("acting", self.last["alive"])  # saved without an acting mask: parallel envs, where it is alive
        self.hidden = _hidden_to(state["hidden"], self.device)


@torch.no_grad()
def evaluate(vec: VecEnv, policy: Policy, episodes: int, device: torch.device, seed: int | None = None, explore: bool = False) -> list[EpisodeStats]:
    """Run until `episodes` episodes finished, counting at most ceil(episodes/E) per env so
    that short episodes are not over-represented. Resets (and with a seed reseeds) the envs first."""
    per_env = -(-episodes // vec.num_envs)
    counts = np.zeros(vec.num_envs, np.int64)
    out: list[EpisodeStats] = []
    last = to_tensors(vec.reset(seed), device)
    hidden = policy.initial_hidden(vec.num_envs)
    while len(out) < episodes:
        actions, hidden, _ = policy.act(last, hidden, explore)
        arrays, finished = vec.step(actions.cpu().numpy())
        _episodes_ended(policy, arrays["done"], finished)
        for ep in finished:
            if counts[ep.env] < per_env and len(out) < episodes:
                out.append(ep)
            counts[ep.env] += 1
        last = to_tensors(arrays, device)
        hidden = reset_hidden(hidden, torch.as_tensor(arrays["done"], device=device))
    return out
