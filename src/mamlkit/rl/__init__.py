"""MAML for reinforcement learning (Finn et al. 2017, Sec. 5.3): task-family environments,
Gaussian MLP policy, linear baseline, batched sampling, MAML-TRPO and its step of the shared
training loop."""

from mamlkit.rl.advantages import compute_advantages, fit_linear_baseline, gae
from mamlkit.rl.envs import ENV_NAMES, BatchedNavigation2D, Navigation2DEnv, make_env
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.maml_trpo import MAMLTRPO, MetaObjective
from mamlkit.rl.policy import GaussianMLPPolicy, check_policy_spaces, log_prob, policy_params
from mamlkit.rl.sampler import TaskSampler
from mamlkit.rl.step import RLStep
from mamlkit.rl.trpo import TRPOSettings, conjugate_gradient

__all__ = [
    "ENV_NAMES",
    "MAMLTRPO",
    "BatchedNavigation2D",
    "Episodes",
    "GaussianMLPPolicy",
    "MetaObjective",
    "Navigation2DEnv",
    "RLStep",
    "TRPOSettings",
    "TaskSampler",
    "check_policy_spaces",
    "compute_advantages",
    "conjugate_gradient",
    "fit_linear_baseline",
    "gae",
    "log_prob",
    "make_env",
    "policy_params",
]
