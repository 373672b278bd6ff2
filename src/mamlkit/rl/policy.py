"""Gaussian MLP policy of MAML's RL experiments and functional log-probabilities over its params.

Finn et al. 2017 (Sec. 5.3) use a network with two hidden layers of 100 ReLU units that outputs
the mean of a diagonal Gaussian; the log standard deviation is a learnable vector that does not
depend on the state. The module is an ordinary ``nn.Module``; the functions below evaluate it
with any parameter dict (``torch.func.functional_call``), batched over tasks with ``vmap``, which
is how the inner loop evaluates adapted parameters without touching the module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mamlkit.core.params import named_params

Params = dict[str, Tensor]

LOG_2PI = math.log(2.0 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """``obs -> (mean, log_std)`` of a diagonal Gaussian over actions (Finn et al. 2017, Sec. 5.3).

    ``hidden_sizes`` defaults to the paper's ``(100, 100)`` with ReLU; ``log_std`` starts at
    ``log(init_std)`` and is shared by all states.
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (100, 100),
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if observation_dim < 1 or action_dim < 1:
            raise ValueError(
                f"observation_dim and action_dim must be >= 1, got {observation_dim}, {action_dim}"
            )
        if init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        layers: list[nn.Module] = []
        width = observation_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, int(hidden)), nn.ReLU()]
            width = int(hidden)
        layers.append(nn.Linear(width, action_dim))
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        """Action mean ``[..., action_dim]`` and log std broadcast to the same shape."""
        mean = self.mean(observations)
        return mean, self.log_std.expand_as(mean)


def policy_params(policy: nn.Module) -> Params:
    """The policy's parameters as a name -> tensor dict (the form the functional calls take;
    the engine's :func:`mamlkit.core.params.named_params`)."""
    return named_params(policy)


def check_policy_spaces(
    policy: nn.Module, observation_space: gym.spaces.Box, action_space: gym.spaces.Box
) -> None:
    """Raise a ValueError unless ``policy`` maps the observation space onto the action space.

    The policy must return ``(mean, log_std)`` with the action space's shape for an observation
    of the observation space's shape; checked with one forward pass on zeros before any rollout.
    """
    obs_shape = tuple(observation_space.shape or ())
    act_shape = tuple(action_space.shape or ())
    param = next(iter(policy.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            out = policy(torch.zeros((1, *obs_shape), dtype=dtype, device=device))
    except RuntimeError as error:
        raise ValueError(
            f"policy cannot take observations of shape {obs_shape} ({error}); build it with "
            f"observation_dim={obs_shape[-1] if obs_shape else 1}"
        ) from error
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(
            "policy must return (action_mean, log_std); wrap the network so forward returns both"
        )
    mean, log_std = out
    if tuple(mean.shape[1:]) != act_shape or tuple(log_std.shape[1:]) != act_shape:
        raise ValueError(
            f"policy outputs actions of shape {tuple(mean.shape[1:])} (log std "
            f"{tuple(log_std.shape[1:])}) but the action space has shape {act_shape}; "
            f"build the policy with action_dim={act_shape[-1] if act_shape else 1}"
        )


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """Log density of ``actions`` under a diagonal Gaussian, summed over the last dim."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """``KL(p || q)`` of diagonal Gaussians, summed over the last dim."""
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))
    mean_term = (mean_p - mean_q).pow(2) * torch.exp(-2.0 * log_std_q)
    return (log_std_q - log_std_p + 0.5 * (var_ratio + mean_term - 1.0)).sum(-1)


def policy_forward(policy: nn.Module, params: Params, observations: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, log_std)`` of ``policy`` evaluated with ``params`` instead of its own weights."""
    return functional_call(policy, params, (observations,))


def log_prob(policy: nn.Module, params: Params, observations: Tensor, actions: Tensor) -> Tensor:
    """Log-probability of ``actions`` given ``observations`` under ``policy`` with ``params``."""
    mean, log_std = policy_forward(policy, params, observations)
    return gaussian_log_prob(mean, log_std, actions)


def batched_policy_forward(
    policy: nn.Module, params: Params, observations: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-task forward: ``params`` are ``[tasks, ...]``, ``observations`` ``[tasks, ..., obs]``.

    Task ``i`` is evaluated with parameters ``params[name][i]`` (one ``vmap`` over tasks, so
    the tasks' matrix products run as one batched product).
    """

    def one_task(task_params: Params, task_obs: Tensor) -> tuple[Tensor, Tensor]:
        return functional_call(policy, task_params, (task_obs,))

    return vmap(one_task)(params, observations)


def expand_params(params: Params, tasks: int) -> Params:
    """``params`` repeated along a new leading task dimension of size ``tasks`` (copies)."""
    return {name: p.detach().unsqueeze(0).repeat(tasks, *([1] * p.ndim)) for name, p in params.items()}
