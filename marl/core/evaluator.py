"""Greedy evaluation in a background process, so that training does not wait for it.

At an evaluation step the trainer sends a frozen CPU copy of the policy (a learner's
`policy()`, or a joint policy of several) and carries on collecting and updating; the
evaluator process runs the episodes on its own envs (stepped in that process) and sends back the episodes'
statistics. It runs exactly the episodes a blocking `evaluate` with the same env count and
seed would run, so the results do not depend on where they were computed. On 2 cores this
uses the CPU time that training leaves idle while it waits on its env workers (BENCHMARKS.md).
"""
from __future__ import annotations

import pickle
import signal
from collections import deque
from typing import Any, Callable

import torch

from marl.core.errors import EnvStepError, MarlError
from marl.core.rollout import evaluate
from marl.core.spec import EnvSpec
from marl.core.vec import EpisodeStats, VecEnv, process_context


def _serve(conn, make_fn: Callable[[], Any], spec: EnvSpec, num_envs: int, episodes: int, seed: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    vec = VecEnv(make_fn, num_envs, seed=seed, workers=0, spec=spec)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            step, blob = msg
            policy = pickle.loads(blob)
            try:
                conn.send(("ok", step, evaluate(vec, policy, episodes, cpu, seed=seed)))
            except MarlError as err:
                conn.send(("error", step, err))
            except Exception as err:  # noqa: BLE001 - report it in the training process, not as a dead pipe
                conn.send(("error", step, MarlError(f"evaluation at env step {step} failed: {type(err).__name__}: {err}",
                                                    "run with --workers 0 to evaluate in the training process and see the traceback")))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        vec.close()


class Evaluator:
    """Evaluations of a training run in the training process: `start(step, policy)` runs one
    now; `results()` returns the (step, episodes) of the evaluations started since its last call."""

    def __init__(self, make_fn: Callable[[], Any], spec: EnvSpec, num_envs: int, episodes: int, seed: int, device: torch.device):
        self.vec = VecEnv(make_fn, num_envs, seed=seed, workers=0, spec=spec)
        self.episodes, self.seed, self.device = episodes, seed, device
        self._done: list[tuple[int, list[EpisodeStats]]] = []

    @property
    def pending(self) -> list[int]:
        """Env steps of the evaluations started and not yet returned by `results`."""
        return [step for step, _ in self._done]

    def start(self, step: int, policy: Any) -> None:
        """Evaluate `policy` (a frozen copy: a learner's `policy()`, moved to this device)."""
        policy = policy.to(self.device) if hasattr(policy, "to") else policy
        self._done.append((step, evaluate(self.vec, policy, self.episodes, self.device, seed=self.seed)))

    def results(self) -> list[tuple[int, list[EpisodeStats]]]:
        out, self._done = self._done, []
        return out

    def close(self) -> None:
        self.vec.close()


class BackgroundEvaluator:
    """The same in a background process: `start` sends the policy (a frozen CPU copy) and
    returns at once. The policy is pickled to bytes first, so its tensors travel in the message:
    sent as they are, torch shares them as file descriptors that multiprocessing's fd-sharing
    thread hands over later, and a run stopping (e.g. diverging) while one was in flight
    made that thread print a traceback. `results()` waits for the evaluations in flight. The
    trainer asks for them at fixed points (its next log row, evaluation or the end), so that
    metrics.jsonl holds the same rows in the same order wherever the evaluations ran."""

    def __init__(self, make_fn: Callable[[], Any], spec: EnvSpec, num_envs: int, episodes: int, seed: int):
        ctx = process_context()
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, make_fn, spec, num_envs, episodes, seed), daemon=True)
        self._proc.start()
        child.close()
        self.pending: deque[int] = deque()  # env steps of the evaluations started and not yet returned by `results`

    def start(self, step: int, policy: Any) -> None:
        self._conn.send((step, pickle.dumps(policy, protocol=pickle.HIGHEST_PROTOCOL)))
        self.pending.append(step)

    def results(self) -> list[tuple[int, list[EpisodeStats]]]:
        out = []
        try:
            while self.pending:
                status, step, value = self._conn.recv()
                self.pending.popleft()
                if status == "error":
                    raise value
                out.append((step, value))
        except (EOFError, OSError) as err:
            raise EnvStepError(f"the evaluation process exited unexpectedly ({type(err).__name__})",
                               "run with --workers 0 to evaluate in the training process and see the env's own error") from err
        return out

    def close(self) -> None:
        """Stop the process; evaluations still in flight are dropped."""
        if not self.pending:
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()
        self._conn.close()
