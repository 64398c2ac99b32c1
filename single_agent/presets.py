"""The single-agent names as presets of the multi-agent learners' configs, N = 1.

Every preset states one agent (`sharing` none, no agent id, a local critic) and takes the
other values from the library people compare with: Stable-Baselines3's defaults
(stable_baselines3/{ppo,a2c,dqn}/*.py, v2.x), mapped onto our fields where they differ in
kind. Per-env tunings (rl-baselines3-zoo, hyperparams/*.yml) are flags on top; README.md
gives them for CartPole-v1.
"""
from __future__ import annotations

from marl.algos.onpolicy import OnPolicyConfig, OnPolicyLearner
from marl.algos.qlearning import QConfig, QLearner
from marl.algos.registry import ALGOS, AlgoEntry

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

DQN = {**ONE_AGENT, "mixer": "none", "returns": "nstep", "n_step": 1, "double_q": False, "dueling": False, "lr": 1e-4,
       "gamma": 0.99, "epsilon_start": 1.0, "epsilon_finish": 0.05, "epsilon_anneal_steps": 20_000, "max_grad_norm": 10.0,
       "hidden": (64, 64), "target_update_interval_or_tau": 2500.0}
"""SB3 DQN defaults: lr 1e-4, one-step targets, no double Q (--double-q true), 64-64 ReLU,
max_grad_norm 10, epsilon 1 -> 0.05 over 10% of training (20k of TrainConfig's 200k steps),
target network copied every 10k env steps (= 2500 of SB3's gradient steps, one per 4 env steps).
On the episode replay of marl.algos.qlearning, so batch_size and buffer_size count episodes and
the replay ratio is that learner's (one gradient step per 50 env steps)."""

SINGLE_AGENT = {
    "ppo": (AlgoEntry(OnPolicyConfig, OnPolicyLearner, PPO, "PPO, one agent (Schulman et al. 2017; SB3 defaults)", multi_agent="ippo")),
    "a2c": (AlgoEntry(OnPolicyConfig, OnPolicyLearner, A2C, "advantage actor-critic, one agent (Mnih et al. 2016; SB3 defaults)",
                      multi_agent="ia2c")),
    "reinforce": (AlgoEntry(OnPolicyConfig, OnPolicyLearner, REINFORCE,
                            "Monte-Carlo policy gradient with a value baseline, one agent (Williams 1992)", multi_agent="ia2c")),
    "dqn": (AlgoEntry(QConfig, QLearner, DQN, "deep Q-network, one agent; --double-q, --dueling (Mnih et al. 2015; SB3 defaults)",
                      multi_agent="idqn")),
}
"""Single-agent name -> registry entry (a preset of a multi-agent learner)."""

for _name, _entry in SINGLE_AGENT.items():
    ALGOS.register(_name, _entry)
