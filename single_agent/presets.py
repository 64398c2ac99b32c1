"""The single-agent names as presets of the multi-agent learners' configs, N = 1.

Every preset states one agent (`sharing` none, no agent id, a local critic) and takes the
other values from the library people compare with: Stable-Baselines3's defaults
(stable_baselines3/{ppo,a2c,dqn,ddpg,td3,sac}/*.py, v2.x), mapped onto our fields where they differ in
kind. Per-env tunings (rl-baselines3-zoo, hyperparams/*.yml) are flags on top; README.md
and tests/test_single_agent.py give them for CartPole-v1 and Pendulum-v1.
"""
from __future__ import annotations

from marl.algos.ddpg import DDPGConfig, DDPGLearner
from marl.algos.onpolicy import OnPolicyConfig, OnPolicyLearner
from marl.algos.qlearning import QConfig, QLearner
from marl.algos.registry import ALGOS, AlgoEntry
from marl.algos.sac import SACConfig, SACLearner

ONE_AGENT = {"sharing": "none", "agent_id": False}
"""One agent: nothing to share, no id to append."""

ACTOR_CRITIC = {**ONE_AGENT, "critic": "local", "hidden": (64, 64), "activation": "tanh", "layer_norm": False,
                "value_norm": False, "vf_coef": 0.5, "max_grad_norm": 0.5, "ent_coef": 0.0, "gamma": 0.99}
"""SB3's ActorCriticPolicy for vector observations: separate 64-64 tanh actor and critic; no
value normalisation; vf_coef 0.5, max_grad_norm 0.5, ent_coef 0, gamma 0.99 (PPO and A2C)."""

PPO = {**ACTOR_CRITIC, "lr": 3e-4, "rollout_len": 128, "minibatches": 32, "epochs": 10, "gae_lambda": 0.95, "clip": 0.2,
       "norm_adv": True}
"""SB3 PPO defaults: lr 3e-4, n_steps 2048 (= 128 steps x the 16 envs of TrainConfig), batch_size 64
(= 2048 / 32 minibatches), n_epochs 10, gae_lambda 0.95, clip_range 0.2, normalized advantages."""

A2C = {**ACTOR_CRITIC, "lr": 7e-4, "rollout_len": 5, "minibatches": 1, "epochs": 1, "gae_lambda": 1.0, "clip": 0.0,
       "norm_adv": False}
"""SB3 A2C defaults: lr 7e-4, n_steps 5, gae_lambda 1, one gradient step per rollout, plain
policy gradient, advantages not normalised. SB3 steps with RMSprop (alpha 0.99, eps 1e-5);
the on-policy learner uses Adam (eps 1e-5)."""

REINFORCE = {**ACTOR_CRITIC, "lr": 1e-3, "rollout_len": 64, "minibatches": 1, "epochs": 1, "gae_lambda": 1.0, "clip": 0.0,
             "norm_adv": True, "baseline": True}
"""Williams (1992), with the learned state-value baseline of Sutton & Barto (2018, 13.4); --baseline
false for the plain form. Monte-Carlo returns (gae_lambda 1) of the episodes within each rollout;
an episode the rollout end cuts bootstraps from the critic. SB3 has no REINFORCE: lr 1e-3 and
normalised advantages (PyTorch's examples/reinforcement_learning/reinforce.py normalises returns)."""

DQN = {**ONE_AGENT, "mixer": "none", "replay": "transitions", "returns": "nstep", "n_step": 1, "double_q": False, "dueling": False,
       "lr": 1e-4, "gamma": 0.99, "batch_size": 32, "buffer_size": 1_000_000, "learning_starts": 100, "rollout_len": 1,
       "env_steps_per_update": 4.0, "target_update_interval_or_tau": 2500.0, "epsilon_start": 1.0, "epsilon_finish": 0.05,
       "epsilon_anneal_steps": 20_000, "max_grad_norm": 10.0, "hidden": (64, 64)}
"""SB3 DQN defaults: a transition replay of 1e6, batches of 32, learning_starts 100, one gradient step
per 4 env steps (train_freq 4), the target network copied every 10k env steps (2500 gradient steps),
lr 1e-4, one-step targets, no double Q (--double-q true), 64-64 ReLU, max_grad_norm 10, epsilon
1 -> 0.05 over 10% of training (20k of TrainConfig's 200k steps). The TD loss is the squared error of
the value learners; SB3's is Huber's (smooth L1): --td-loss huber."""

OFF_POLICY = {**ONE_AGENT, "critic": "local", "rollout_len": 1, "updates_per_step": 1.0, "batch_size": 256,
              "buffer_size": 1_000_000, "learning_starts": 100, "random_steps": 100, "tau": 0.005, "gamma": 0.99,
              "max_grad_norm": 0.0}
"""SB3's off-policy defaults (DDPG, TD3, SAC): a gradient step per env step, taken after every
step (train_freq 1, gradient_steps 1: rollout_len 1), batch 256, replay 1e6, the first 100 steps
uniformly random (learning_starts 100), tau 0.005, gamma 0.99, gradients not clipped
(max_grad_norm 0); critics of the agent's own observation and action. SB3 steps one env; the run's E envs take a vector step's E gradient
steps together, so `--num-envs 1` is SB3's schedule exactly."""

DDPG = {**OFF_POLICY, "actor_lr": 1e-3, "critic_lr": 1e-3, "hidden": (400, 300), "twin_critics": False, "target_noise": 0.0,
        "policy_delay": 1, "noise": "gaussian", "noise_std": 0.1, "actor_reg": 0.0}
"""SB3 DDPG defaults: lr 1e-3, 400-300 ReLU networks, one critic. SB3 adds no action noise unless
given one; we keep Gaussian noise of std 0.1 (the zoo's choice, e.g. Pendulum-v1), and drop
MADDPG's logit regulariser (SB3 has none)."""

TD3 = {**DDPG, "twin_critics": True, "target_noise": 0.2, "target_noise_clip": 0.5, "policy_delay": 2}
"""SB3 TD3 defaults: DDPG's, plus twin critics, target policy noise 0.2 (clip 0.5) and policy_delay 2."""

SAC = {**OFF_POLICY, "actor_lr": 3e-4, "critic_lr": 3e-4, "alpha_lr": 3e-4, "hidden": (256, 256), "twin_critics": True,
       "alpha": 1.0, "autotune_alpha": True}
"""SB3 SAC defaults: lr 3e-4 (actor, critics, temperature), 256-256 networks, twin critics, the
temperature learned from 1.0 (ent_coef 'auto') towards the target entropy -dim(A)."""

ZOO: dict[tuple[str, str], dict] = {
    ("ppo", "CartPole-v1"): {"num_envs": 8, "rollout_len": 32, "minibatches": 1, "epochs": 20, "gae_lambda": 0.8, "gamma": 0.98,
                             "lr": 1e-3, "lr_anneal_steps": 100_000},
    ("dqn", "CartPole-v1"): {"num_envs": 8, "rollout_len": 32, "lr": 2.3e-3, "hidden": (256, 256), "batch_size": 64,
                             "buffer_size": 100_000, "learning_starts": 1000, "env_steps_per_update": 2.0,
                             "target_update_interval_or_tau": 128.0, "epsilon_anneal_steps": 16_000, "epsilon_finish": 0.04},
    ("ddpg", "Pendulum-v1"): {"num_envs": 1, "gamma": 0.98, "buffer_size": 200_000, "learning_starts": 10_000,
                              "random_steps": 10_000, "noise_std": 0.1},
    ("td3", "Pendulum-v1"): {"num_envs": 1, "gamma": 0.98, "buffer_size": 200_000, "learning_starts": 10_000,
                             "random_steps": 10_000, "noise_std": 0.1},
    ("sac", "Pendulum-v1"): {"num_envs": 1, "actor_lr": 1e-3, "critic_lr": 1e-3, "alpha_lr": 1e-3},
}
"""rl-baselines3-zoo's per-env tunings (hyperparams/{ppo,dqn,ddpg,td3,sac}.yml) as our values, `num_envs`
(a run setting) included. PPO: n_envs 8, n_steps 32, one minibatch of 256, 20 epochs, gae_lambda 0.8,
gamma 0.98, lr linear from 1e-3 (the zoo's clip-range anneal has no value here). DQN: lr 2.3e-3, 256-256,
batch 64, buffer 1e5, learning_starts 1000, train_freq 256 with gradient_steps 128 (8 envs x 32 steps a
collect, a gradient step per 2 env steps), the target copied once per burst of 128 gradient steps (its
target_update_interval of 10 env steps lands once between bursts), epsilon to 0.04 over 16% of 1e5 steps.
DDPG/TD3: gamma 0.98, buffer 2e5, 10k random steps first, Gaussian noise 0.1, a gradient step after
every env step (train_freq 1, gradient_steps 1, as the presets). SAC: lr 1e-3."""


def zoo(algo: str, env_id: str) -> tuple[int, dict]:
    """(num_envs, config overrides) of the zoo's tuning of `algo` on gymnasium env `env_id`."""
    values = dict(ZOO[(algo, env_id)])
    return values.pop("num_envs"), values


SINGLE_AGENT = {
    "ppo": (AlgoEntry(OnPolicyConfig, OnPolicyLearner, PPO, "PPO, one agent (Schulman et al. 2017; SB3 defaults)", multi_agent="ippo")),
    "a2c": (AlgoEntry(OnPolicyConfig, OnPolicyLearner, A2C, "advantage actor-critic, one agent (Mnih et al. 2016; SB3 defaults)",
                      multi_agent="ia2c")),
    "reinforce": (AlgoEntry(OnPolicyConfig, OnPolicyLearner, REINFORCE,
                            "Monte-Carlo policy gradient with a value baseline, one agent (Williams 1992)", multi_agent="ia2c")),
    "dqn": (AlgoEntry(QConfig, QLearner, DQN, "deep Q-network, one agent; --double-q, --dueling (Mnih et al. 2015; SB3 defaults)",
                      multi_agent="idqn")),
    "ddpg": AlgoEntry(DDPGConfig, DDPGLearner, DDPG, "deep deterministic policy gradient, one agent (Lillicrap et al. 2016; SB3 defaults)",
                      multi_agent="maddpg"),
    "td3": AlgoEntry(DDPGConfig, DDPGLearner, TD3, "twin delayed DDPG, one agent (Fujimoto et al. 2018; SB3 defaults)",
                     multi_agent="matd3"),
    "sac": AlgoEntry(SACConfig, SACLearner, SAC, "soft actor-critic, one agent (Haarnoja et al. 2018; SB3 defaults)",
                     multi_agent="isac"),
}
"""Single-agent name -> registry entry (a preset of a multi-agent learner)."""

for _name, _entry in SINGLE_AGENT.items():
    ALGOS.register(_name, _entry)
