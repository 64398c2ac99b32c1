"""Single-agent RL as the one-agent case of the multi-agent learners.

`ppo`, `a2c`, `reinforce`, `dqn`, `ddpg`, `td3` and `sac` are presets: values of the
multi-agent learners' configs (marl.algos.onpolicy, qlearning, ddpg, sac) for one agent, registered in marl.algos.ALGOS under
the names people know, with defaults from Stable-Baselines3 (sources beside each preset in
`presets`). They carry no algorithm code: an N = 1 learner is the multi-agent learner with
`--sharing none` on one agent (tests/test_single_agent.py checks equal updates). A gymnasium
env `gym/<id>` is one agent `agent_0` (marl.envs.adapters.GymParallel); an env with more
agents is refused with the multi-agent name to use. The tabular methods (q_learning, sarsa,
expected_sarsa, dyna_q) live in marl.algos.tabular.

    marl train --algo ppo --env gym/CartPole-v1
    python -m marl.single_agent ppo CartPole-v1 --steps 100000
"""
from marl.single_agent import presets  # noqa: F401  (registers ppo, a2c, reinforce, dqn, ddpg, td3, sac)
from marl.single_agent.presets import SINGLE_AGENT

__all__ = ["SINGLE_AGENT"]
