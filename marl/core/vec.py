"""Vectorised runner: E PettingZoo ParallelEnvs stepped together into padded numpy arrays.

Layout (ARCHITECTURE.md): obs [E,N,D], state [E,S], avail [E,N,A], alive [E,N] (the agent
is in the episode), acting [E,N] (the agent decides at this step: alive ones in parallel
envs, the one to move in turn-based games); after a step also reward [E,N],
terminated/truncated [E,N] (per agent, kept apart), done [E] (the env's episode ended and
the env was reset), final_obs/final_state (the observation after a step at which an agent's
episode ended, for bootstrapping a truncation).

`workers=0` steps every env in this process; `workers=W` spreads the envs over W worker
processes. Workers read actions from and write results into shared memory (each its own
rows of the same arrays), so a step sends only a one-word command and the finished
episodes' statistics through the pipes; pickling the arrays instead cost about 0.7 ms a step.
"""
from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from marl.core.errors import EnvStepError, MarlError
from marl.core.snapshots import dump_envs, load_envs, regroup
from marl.core.spec import Encoder, EnvSpec, ObsShapeError

OBS_FIELDS = ("obs", "state", "avail", "alive", "acting")


@runtime_checkable
class OneAgentStep(Protocol):
    """A one-agent ParallelEnv that also steps without dicts (`envs.adapters.GymParallel`):
    `step_one(action)` is `step({agent: action})` as gymnasium's (obs, reward, terminated,
    truncated, info), with the env's `agents` updated the same way."""

    def step_one(self, action: Any) -> tuple[Any, float, bool, bool, dict]: ...


@dataclass
class EpisodeStats:
    team_return: float
    agent_returns: np.ndarray
    length: int
    env: int = 0
    owner: tuple[int, ...] | None = None  # with several policies: the index of the policy that controlled each agent


def _layout(spec: EnvSpec, e: int) -> dict[str, tuple[tuple[int, ...], type, int]]:
    """field -> (shape, dtype, initial value) of the step arrays of E envs, plus the actions."""
    n, d, a, s = spec.n_agents, spec.obs_dim, spec.n_actions, spec.state_dim
    f, b = np.float32, bool
    return {
        "obs": ((e, n, d), f, 0), "state": ((e, s), f, 0), "avail": ((e, n, a), b, 1), "alive": ((e, n), b, 0),
        "acting": ((e, n), b, 0), "reward": ((e, n), f, 0), "terminated": ((e, n), b, 0), "truncated": ((e, n), b, 0), "done": ((e,), b, 0),
        "final_obs": ((e, n, d), f, 0), "final_state": ((e, s), f, 0), "final_avail": ((e, n, a), b, 1),
        "actions": ((e, n), np.int64, 0) if spec.discrete else ((e, n, a), f, 0),
    }


def _size(shape: tuple[int, ...], dtype: type) -> int:
    """Bytes of a field in the shared block, rounded up to 8 so that every field stays aligned."""
    return -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 8) * 8


def _buffers(spec: EnvSpec, e: int, memory: Any = None, init: bool = True) -> dict[str, np.ndarray]:
    """The step arrays (and "actions") of E envs: fresh, or views into `memory`, a shared
    byte block of `_nbytes(spec, e)` bytes (fields laid out in order, 8-byte aligned), set to
    their initial values only with `init` (a worker attaching must not overwrite the others' rows)."""
    out, offset = {}, 0
    for key, (shape, dtype, fill) in _layout(spec, e).items():
        if memory is None:
            out[key] = np.full(shape, fill, dtype)
            continue
        out[key] = np.frombuffer(memory, dtype, int(np.prod(shape)), offset).reshape(shape)
        if init:
            out[key][...] = fill
        offset += _size(shape, dtype)
    return out


def _nbytes(spec: EnvSpec, e: int) -> int:
    return sum(_size(shape, dtype) for shape, dtype, _ in _layout(spec, e).values())


def _rows(buf: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    """Views of the rows (envs) `rows` of every array."""
    return {k: v[rows] for k, v in buf.items()}


def env_seeds(seed: int, num_envs: int) -> list[int]:
    """Seeds of the E envs of a run: words of numpy's SeedSequence(seed), so that runs with
    nearby seeds get unrelated episodes (seed + k would give seeds 1 and 2 E - 1 envs, and
    all their evaluation episodes, in common)."""
    return np.random.SeedSequence(seed).generate_state(num_envs).tolist()


def _naming_bad_obs(method: Callable) -> Callable:
    """An observation of the wrong shape becomes one error line naming the env copy and the
    episode step (`_Envs._where`, set where an observation arrives)."""
    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except ObsShapeError as err:
            k, at = self._where
            raise MarlError(f"env '{self.spec.name}' (copy {k}) at episode step {at}: {err}",
                            "fix the env so every observation matches its declared observation space") from None
    return wrapper


class _Envs:
    """E envs in this process writing into shared buffers; the work of one runner or worker."""

    def __init__(self, make_fn: Callable[[], Any], seeds: list[int], spec: EnvSpec | None,
                 buf: dict[str, np.ndarray] | None = None):
        num_envs = len(seeds)
        self.envs = [make_fn() for _ in range(num_envs)]
        self.spec = spec or EnvSpec.from_env(self.envs[0], name=getattr(make_fn, "env_name", ""))
        self.enc = [Encoder(self.spec, env) for env in self.envs]
        self.seeds: list[int | None] = list(seeds)
        buf = buf if buf is not None else _buffers(self.spec, num_envs)
        self.buf = {k: v for k, v in buf.items() if k != "actions"}
        n = self.spec.n_agents
        self.ep_return = np.zeros((num_envs, n), np.float64)
        self.ep_len = np.zeros(num_envs, np.int64)
        self._unpadded = len(set(self.spec.obs_dims)) == 1  # every agent's observation fills its whole row
        self.discrete = self.spec.discrete
        self._where = (0, 0)  # (env copy, episode step) of the observation being read, for error lines
        # one agent with a vector observation and no state of its own, stepped without dicts (`_step_one`)
        self._one = (self.spec.n_agents == 1 and not self.spec.has_state and self.enc[0].simple
                     and all(isinstance(env, OneAgentStep) for env in self.envs))
        if not self.discrete:
            self.low = np.asarray(self.spec.action_low, np.float32)
            self.high = np.asarray(self.spec.action_high, np.float32)

    def _observe(self, k: int, obs: dict, infos: dict) -> None:
        b, enc, env = self.buf, self.enc[k], self.envs[k]
        if not (self._unpadded and len(obs) == len(enc.index)):  # else `enc.obs` writes every row in full
            b["obs"][k] = 0.0
            b["avail"][k] = enc.base_avail
        enc.obs(obs, infos, b["obs"][k], b["avail"][k])
        alive, acting = b["alive"][k], b["acting"][k]
        alive[:] = False
        acting[:] = False
        live = env.agents
        for agent in live:
            alive[enc.index[agent]] = True
        for agent in obs:  # turn-based envs observe only the agent to move (and agents that just ended)
            if agent in live:
                acting[enc.index[agent]] = True
        b["state"][k] = enc.state(env, b["obs"][k])

    def _reset_env(self, k: int) -> None:
        seed, self.seeds[k] = self.seeds[k], None
        self._where = (k, 0)
        obs, infos = self.envs[k].reset(seed=seed)
        self._observe(k, obs, infos)
        self.ep_return[k] = 0.0
        self.ep_len[k] = 0

    @_naming_bad_obs
    def reset(self, seeds: list[int] | None = None) -> dict[str, np.ndarray]:
        for k in range(len(self.envs)):
            if seeds is not None:
                self.seeds[k] = seeds[k]
            self._reset_env(k)
        self._check_finite(np.zeros(len(self.envs), np.int64))
        return self.buf

    def _check_finite(self, steps: np.ndarray) -> None:
        """One check per field over all envs (NaN/inf from an env is the env's fault, not the
        learner's); a failing field is searched once to name the env, agent and step. `steps`:
        each env's episode step of the values (0 where they came from a reset)."""
        b = self.buf
        for field in ("reward", "obs", "state", "final_obs", "final_state"):
            if np.isfinite(b[field]).all():
                continue
            k, *rest = np.argwhere(~np.isfinite(b[field]))[0]
            agent = "the env" if field.endswith("state") else f"agent '{self.spec.agents[rest[0]]}'"
            at = steps[k] + 1 if field in ("reward", "final_obs", "final_state") or not b["done"][k] else 0
            value = b[field][(k, *rest)]
            raise MarlError(f"env '{self.spec.name}' (copy {k}) returned {value} in the {field.replace('_', ' ')} of {agent} "
                            f"at episode step {at}", "fix the env (or wrap it to replace non-finite values): "
                            "this is not a training problem, lowering --lr does not help")

    def _actions(self, k: int, row: np.ndarray) -> dict:
        env, enc = self.envs[k], self.enc[k]
        if self.discrete:
            values = row.tolist()
            return {a: values[enc.index[a]] for a in env.agents}
        out = {}
        for a in env.agents:
            i = enc.index[a]
            size = self.spec.action_sizes[i]
            out[a] = np.clip(row[i, :size], self.low[i, :size], self.high[i, :size])
        return out

    def _finish(self, k: int) -> EpisodeStats:
        """Env k's episode ended at this step: mark it done, reset the env, return the episode."""
        self.buf["done"][k] = True
        episode = EpisodeStats(float(self.ep_return[k].sum()), self.ep_return[k].copy(), int(self.ep_len[k]), k)
        self._reset_env(k)
        return episode

    def _step_error(self, k: int, acts: dict, err: Exception) -> EnvStepError:
        """The env's own bug or a bad action, named with where it happened."""
        return EnvStepError(
            f"env '{self.spec.name}' (copy {k}) raised {type(err).__name__}: {err} at episode step {self.ep_len[k] + 1} "
            f"for agents {sorted(acts)} with actions {acts}",
            "fix the env or the action it rejects; the last checkpoint is kept",
        )

    def _step_one(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], list[EpisodeStats]]:
        """`step` for one-agent envs (`_one`): the same arrays, each field written for all
        envs at once; an env that reports an action mask in its info is read the general way."""
        b, episodes, agent = self.buf, [], self.spec.agents[0]
        if self.discrete:
            acts = actions[:, 0].tolist()
        else:
            size = self.spec.action_sizes[0]
            acts = list(np.clip(actions[:, 0, :size], self.low[0, :size], self.high[0, :size]))
        steps = self.ep_len.copy()
        out = []
        for k, env in enumerate(self.envs):
            try:
                out.append(env.step_one(acts[k]))
            except Exception as err:
                raise self._step_error(k, {agent: acts[k]}, err) from err
        obs, rewards, terms, truncs, infos = zip(*out)
        term = np.array(terms)
        b["reward"][:, 0] = rewards
        b["terminated"][:, 0] = term
        b["truncated"][:, 0] = np.array(truncs) & ~term
        b["done"][:] = False
        self.ep_return += b["reward"]
        self.ep_len += 1
        ended = term | np.array(truncs)
        flat = [np.ravel(o) for o in obs]
        if any(f.shape[0] != self.spec.obs_dims[0] for f in flat) or any("action_mask" in i for i in infos):
            for k in range(len(self.envs)):  # the general reading: its shape error, the masks
                self._where = (k, int(self.ep_len[k]))
                self._observe(k, {agent: obs[k]}, {agent: infos[k]})
        else:
            b["obs"][:, 0] = flat
            b["avail"][:] = self.enc[0].base_avail
            b["alive"][:] = True
            b["acting"][:] = True
            b["state"][:] = b["obs"].reshape(len(self.envs), -1)
        for k in np.flatnonzero(ended).tolist():
            b["final_obs"][k], b["final_avail"][k], b["final_state"][k] = b["obs"][k], b["avail"][k], b["state"][k]
            episodes.append(self._finish(k))
        self._check_finite(steps)
        return b, episodes

    @_naming_bad_obs
    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], list[EpisodeStats]]:
        if self._one:
            return self._step_one(actions)
        b, episodes = self.buf, []
        for key in ("reward", "terminated", "truncated", "done"):
            b[key][:] = False
        steps = self.ep_len.copy()  # each env's episode step before this one
        stepped = []
        for k, env in enumerate(self.envs):
            acts = self._actions(k, actions[k])
            try:
                obs, rew, term, trunc, infos = env.step(acts)
            except Exception as err:
                raise self._step_error(k, acts, err) from err
            index = self.enc[k].index
            for agent, r in rew.items():
                b["reward"][k, index[agent]] = r
            for agent, flag in term.items():
                if flag:
                    b["terminated"][k, index[agent]] = True
            for agent, flag in trunc.items():
                if flag and not term.get(agent, False):
                    b["truncated"][k, index[agent]] = True
            stepped.append((obs, infos))
        self.ep_return += b["reward"]  # the episodes' bookkeeping, for every env at once
        self.ep_len += 1
        ended = (b["terminated"] | b["truncated"]).any(-1).tolist()
        for k, (env, (obs, infos)) in enumerate(zip(self.envs, stepped)):
            self._where = (k, int(self.ep_len[k]))
            if ended[k]:  # keep the observation after the step for bootstrapping: every agent's,
                # so a central critic reads this step's joint observation, not an earlier episode's rows
                enc = self.enc[k]
                b["final_obs"][k] = 0.0
                b["final_avail"][k] = enc.base_avail
                enc.obs(obs, infos, b["final_obs"][k], b["final_avail"][k])
                b["final_state"][k] = enc.state(env, b["final_obs"][k])
            if env.agents:
                self._observe(k, obs, infos)
            else:
                episodes.append(self._finish(k))
        self._check_finite(steps)
        return b, episodes

    def get_state(self) -> bytes:
        return dump_envs((self.envs, self.seeds, self.ep_return, self.ep_len, self.buf))

    def set_state(self, blob: bytes) -> None:
        self.envs, self.seeds, self.ep_return, self.ep_len, buf = load_envs(blob)
        for key, value in buf.items():  # into the arrays in place: they may be shared with the main process
            if key in self.buf:
                self.buf[key][...] = value

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn, make_fn, seeds, spec, memory, total, rows):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    buf = _rows(_buffers(spec, total, memory, init=False), rows)
    envs, actions = _Envs(make_fn, seeds, spec, buf), buf["actions"]
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "step":
                try:
                    conn.send(("ok", envs.step(actions)[1]))
                except MarlError as err:
                    conn.send(("error", err))
            elif cmd == "reset":
                try:
                    envs.reset(arg)
                    conn.send(("ok", None))
                except MarlError as err:
                    conn.send(("error", err))
            elif cmd == "get_state":
                conn.send(("ok", envs.get_state()))
            elif cmd == "set_state":
                envs.set_state(arg)
                conn.send(("ok", None))
            else:
                envs.close()
                conn.send(("ok", None))
                return
    except (EOFError, KeyboardInterrupt):
        envs.close()


def process_context() -> Any:
    """Start method of the env workers and the background evaluator: forkserver (spawn where
    there is none). The server preloads only __main__ (the default): preloading torch for the
    evaluator blocked the first worker's start by ~2 s, once per process; a program that trains
    many times (tests/conftest.py) may preload it with multiprocessing.set_forkserver_preload."""
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


class VecEnv:
    """E envs stepped together; arrays as in ARCHITECTURE.md. Auto-resets finished envs."""

    def __init__(self, make_fn: Callable[[], Any], num_envs: int, seed: int = 0, workers: int = 0, spec: EnvSpec | None = None):
        if num_envs < 1:
            raise MarlError(f"num_envs must be at least 1, got {num_envs}", "pass --num-envs 1 or more")
        if workers < 0:
            raise MarlError(f"workers must be >= 0, got {workers}", "pass --workers 0 to step envs in-process")
        workers = min(workers, num_envs)
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if workers and main_file is not None and not os.path.exists(main_file):  # e.g. `python - < script.py`
            raise MarlError(f"env worker processes cannot start from a program read from {main_file}",
                            "save it to a file and run that, or pass workers=0 (--workers 0)")
        self.num_envs, self.workers = num_envs, workers
        if spec is None:  # a known spec (e.g. the training envs', for the evaluation envs) skips the probe env
            probe = make_fn()
            spec = EnvSpec.from_env(probe, name=getattr(make_fn, "env_name", ""))
            probe.close()
        self.spec = spec
        self._sizes = np.asarray(spec.action_sizes)  # each agent's discrete actions
        seeds = env_seeds(seed, num_envs)
        if workers == 0:
            self._local = _Envs(make_fn, seeds, self.spec)
            return
        ctx = process_context()
        memory = ctx.RawArray("b", _nbytes(self.spec, num_envs))  # shared with the workers, freed with the last user
        self._buf = _buffers(self.spec, num_envs, memory)
        self._actions = self._buf.pop("actions")
        sizes = [len(c) for c in np.array_split(np.arange(num_envs), workers)]
        self._slices, start = [], 0
        self._conns, self._procs = [], []
        for w, size in enumerate(sizes):
            parent, child = ctx.Pipe()
            rows = slice(start, start + size)
            proc = ctx.Process(target=_worker, args=(child, make_fn, seeds[rows], self.spec, memory, num_envs, rows), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
            self._slices.append(rows)
            start += size

    def _call(self, cmd: str, args: list) -> list:
        try:
            for conn, arg in zip(self._conns, args):
                conn.send((cmd, arg))
            replies = [conn.recv() for conn in self._conns]
        except (EOFError, OSError) as err:
            raise EnvStepError(f"an env worker process of '{self.spec.name}' exited unexpectedly ({type(err).__name__})",
                               "run with --workers 0 to see the env's own error") from err
        for status, value in replies:
            if status == "error":
                raise value
        return [value for _, value in replies]

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Reset every env; with a seed, env k is reseeded with env_seeds(seed, E)[k]."""
        seeds = None if seed is None else env_seeds(seed, self.num_envs)
        if self.workers == 0:
            return self._local.reset(seeds)
        self._call("reset", [None if seeds is None else seeds[s] for s in self._slices])
        return self._buf

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], list[EpisodeStats]]:
        """Step every env with actions [E,N] (discrete) or [E,N,A] (continuous)."""
        if self.spec.discrete:
            outside = (actions < 0) | (actions >= self._sizes)
            if outside.any():
                self._refuse(actions, outside)
        if self.workers == 0:
            return self._local.step(actions)
        self._actions[...] = actions
        episodes = []
        for rows, eps in zip(self._slices, self._call("step", [None] * self.workers)):
            for ep in eps:
                ep.env += rows.start
                episodes.append(ep)
        return self._buf, episodes

    def _refuse(self, actions: np.ndarray, outside: np.ndarray) -> None:
        """Refuse the actions `outside` their agents' ranges where the agent acts (the others' are not read)."""
        bad = np.argwhere(outside & (self._buf if self.workers else self._local.buf)["acting"])
        if len(bad):
            k, i = (int(x) for x in bad[0])
            raise EnvStepError(f"action {int(actions[k, i])} of agent '{self.spec.agents[i]}' in env copy {k} is outside its "
                               f"{self._sizes[i]} actions (0..{self._sizes[i] - 1})",
                               "fix the policy that chose it (e.g. a --policies or --opponents module:factory); the last checkpoint is kept")

    def render(self, k: int = 0):
        """Frame of env k (in-process envs only; the env must be built with a render_mode)."""
        if self.workers:
            raise MarlError("rendering needs in-process envs", "use --workers 0")
        return self._local.envs[k].render()

    def get_state(self) -> list[bytes]:
        """Picklable snapshot of every env (for exact resume)."""
        if self.workers == 0:
            return [self._local.get_state()]
        return self._call("get_state", [None] * self.workers)

    def set_state(self, blobs: list[bytes]) -> None:
        if len(blobs) != max(self.workers, 1):  # taken with another --workers: the same envs, grouped anew
            blobs = regroup(blobs, self._slices if self.workers else [slice(0, self.num_envs)])
        if self.workers == 0:
            self._local.set_state(blobs[0])
        else:
            self._call("set_state", blobs)

    def close(self) -> None:
        if self.workers == 0:
            self._local.close()
            return
        for conn, proc in zip(self._conns, self._procs):
            try:
                conn.send(("close", None))
                conn.recv()
            except (EOFError, BrokenPipeError, OSError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
