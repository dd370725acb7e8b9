"""The Q-network (an MLP over vector observations) and its weights as plain numpy arrays.

Weights travel between the learner and the actors as ``{name: np.ndarray}`` (through Ray's object
store: numpy arrays are read zero-copy by every process on the node). Image observations are refused
with a clear error: only the vector (MLP) path is implemented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["QNetwork", "check_spaces", "get_weights", "set_weights"]


def check_spaces(observation_space: Any, action_space: Any) -> tuple[int, int]:
    """(observation size, number of actions) of a gymnasium env with a flat Box observation space and a
    Discrete action space; ValueError naming what is not supported otherwise."""
    from gymnasium import spaces

    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"Ape-X DQN needs a discrete action space, got {action_space}")
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(
            f"only flat vector observations (a 1-D Box) are supported, got {observation_space}: image observations "
            "would need a convolutional network and frame-stack dedup, which this agent does not implement")
    return int(observation_space.shape[0]), int(action_space.n)


class QNetwork(nn.Module):
    """Q(s, .) for a flat observation: Linear-ReLU layers of ``hidden`` sizes, then a linear head."""

    def __init__(self, obs_size: int, num_actions: int, hidden: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_actions))
        self.net = nn.Sequential(*layers)
        self.obs_size = obs_size
        self.num_actions = num_actions

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        q: torch.Tensor = self.net(obs)
        return q

    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q-values of a batch of numpy observations, as numpy (for actors and evaluation)."""
        device = next(self.parameters()).device
        q: np.ndarray = self(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        return q


def get_weights(net: nn.Module) -> dict[str, np.ndarray]:
    """The network's parameters and buffers as CPU numpy arrays (copies)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in net.state_dict().items()}


def set_weights(net: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Loads weights from :func:`get_weights` (arrays may be read-only views of Ray's object store)."""
    device = next(net.parameters()).device
    net.load_state_dict({name: torch.tensor(np.asarray(w), device=device) for name, w in weights.items()})
