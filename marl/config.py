"""Run configuration: what to train, where, for how long. Algorithm hyperparameters live
in each algorithm's own config dataclass (marl/algos/), chosen by `algo`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    algo: str = "mappo"
    """Algorithm name from the registry (`marl train --help` lists them)."""
    env: str = "mpe2/simple_spread_v3"
    """Env name: mpe2/<module>, pettingzoo.<family>/<module>, gym/<id>, lbforaging/<id>, builtin/<name>, or module.path:factory."""
    env_kwargs: dict = field(default_factory=dict)
    """Keyword arguments for the env factory, e.g. {'N': 3, 'max_cycles': 25}."""
    policies: str = ""
    """Which policy controls which agents, as PATTERN=CHOICE entries, e.g. 'adversary=ippo agent=random'. PATTERN: a team (agent-name prefix before the last '_'), an agent name or a glob (adversary_*). CHOICE: an algorithm (a learner; --algo's hyperparameter flags apply to learners of --algo, others use their preset with --rollout-len), random, a checkpoint file or run directory (#TEAM picks one policy of a run with several) or module.path:factory (factory(spec) returns a policy). Empty: --algo controls every agent."""
    seats: Literal["fixed", "shuffle"] = "fixed"
    """With --policies: 'fixed' (each policy keeps its agents) or 'shuffle' (each env redraws which agents each policy controls when its episode ends: self-play from either seat; the agents' spaces must agree)."""
    steps: int = 200_000
    """Training budget in env steps (one joint step of one env counts once)."""
    seed: int = 1
    """Seed for envs, network initialisation and action sampling."""
    num_envs: int = 16
    """Envs stepped together by the runner."""
    workers: int = 2
    """Worker processes for env stepping (at most num_envs), plus one that evaluates in the background; 0 steps and evaluates in the training process. 2 was fastest on 2 cores (BENCHMARKS.md)."""
    device: str = "auto"
    """Learner device: auto (cuda when available), cpu, cuda or cuda:N."""
    run_dir: str = ""
    """Run directory; empty means runs/<algo>-<env>-s<seed>."""
    overwrite: bool = False
    """Replace a run directory that already holds a run (only what marl wrote there is removed; a directory holding other files is refused)."""
    resume: bool = False
    """Continue the run in run_dir from its newest checkpoint that loads. The run's config.yaml is the base: settings given with it (steps, device, workers, wandb*, eval_*, log_interval, checkpoint_interval, torch_threads, progress) apply; a flag that changes what is learned (algo, env, env_kwargs, seed, num_envs, any hyperparameter) is refused unless allow_config_change."""
    allow_config_change: bool = False
    """With resume: accept flags that change what the run learns, and record them in <run_dir>/config_changes.yaml."""
    eval_interval: int = 10_000
    """Evaluate the greedy policy every this many env steps (0 disables)."""
    eval_episodes: int = 32
    """Episodes per evaluation."""
    eval_num_envs: int = 0
    """Envs used for evaluation; 0 runs all eval episodes at once (one env each, at most 128), measured fastest."""
    checkpoint_interval: int = 50_000
    """Write a checkpoint every this many env steps (and always at the end)."""
    log_interval: int = 5_000
    """Log training metrics every this many env steps."""
    wandb: str = "offline"
    """Weights & Biases mode: online, offline or disabled. online falls back to offline without a key."""
    wandb_project: str = "marl"
    """W&B project name."""
    wandb_entity: str = ""
    """W&B entity (team); empty uses your default."""
    torch_threads: int = 1
    """CPU threads for torch (small networks run fastest on one; 0 keeps torch's default)."""
    progress: bool = True
    """Show a progress bar on the console."""
