"""Snapshots of a runner's envs for exact resume: every env pickled by its full state.

A snapshot is the pickle of (envs, seeds, episode returns, episode lengths, step arrays) of one
group of envs (`marl.core.vec._Envs`); `regroup` re-splits the snapshots of one grouping into
another, so a run resumes with a different number of env workers.
"""
from __future__ import annotations

import copyreg
import io
import pickle
from typing import Any

import numpy as np
from gymnasium.utils import EzPickle


def _set_dict(obj: Any, state: dict) -> None:
    obj.__dict__.update(state)


class _EnvPickler(pickle.Pickler):
    """Pickles envs by their full state. gymnasium's EzPickle (used by mpe2 and classic envs)
    would otherwise pickle only the constructor arguments and restore a fresh env.
    Pygame render surfaces are dropped (a restored env does not render)."""

    def reducer_override(self, obj):
        if type(obj).__module__.startswith("pygame"):  # render surfaces: not env state, not picklable
            return type(None), ()
        if isinstance(obj, EzPickle) and hasattr(obj, "__dict__"):
            return copyreg.__newobj__, (type(obj),), obj.__dict__, None, None, _set_dict
        return NotImplemented


def dump_envs(snapshot: tuple) -> bytes:
    """Pickle a snapshot tuple with `_EnvPickler`."""
    out = io.BytesIO()
    _EnvPickler(out).dump(snapshot)
    return out.getvalue()


class _EnvUnpickler(pickle.Unpickler):
    """Reads env snapshots; those of checkpoints written when the env package imported as the
    top-level `envs` name its classes under `marl.envs` (a user's `envs` package is never used)."""

    def find_class(self, module: str, name: str):
        if module == "envs" or module.startswith("envs."):
            module = "marl." + module
        if (module, name) == ("marl.core.vec", "_set_dict"):  # where snapshots were written before this module
            return _set_dict
        return super().find_class(module, name)


def load_envs(blob: bytes):
    """The (envs, seeds, returns, lengths, arrays) tuple of a `dump_envs` snapshot."""
    return _EnvUnpickler(io.BytesIO(blob)).load()


def regroup(blobs: list[bytes], slices: list[slice]) -> list[bytes]:
    """Env snapshots (`_Envs.get_state`, one per group of envs, in env order) regrouped into the
    groups `slices` (a resume with another number of workers)."""
    parts = [load_envs(b) for b in blobs]
    envs = [e for p in parts for e in p[0]]
    seeds = [s for p in parts for s in p[1]]
    ep_return, ep_len = np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts])
    buf = {k: np.concatenate([p[4][k] for p in parts]) for k in parts[0][4]}
    out = []
    for rows in slices:
        out.append(dump_envs((envs[rows], seeds[rows], ep_return[rows], ep_len[rows], {k: v[rows] for k, v in buf.items()})))
    return out
