"""Task families of MAML's reinforcement-learning experiments as gymnasium environments."""

from mamlkit.rl.envs.navigation import BatchedNavigation2D, Navigation2DEnv
from mamlkit.rl.envs.registry import ENV_NAMES, check_env_name, make_env

__all__ = ["ENV_NAMES", "BatchedNavigation2D", "Navigation2DEnv", "check_env_name", "make_env"]
