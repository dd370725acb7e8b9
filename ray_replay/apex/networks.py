"""The Q-networks (an MLP over vector observations, a convolutional network over stacked frames) and
their weights as plain numpy arrays.

Weights travel between the learner and the actors as ``{name: np.ndarray}`` (through Ray's object
store: numpy arrays are read zero-copy by every process on the node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ConvQNetwork", "QNetwork", "check_spaces", "get_weights", "is_image", "make_network", "set_weights"]


def is_image(obs_shape: Sequence[int]) -> bool:
    """Stacked frames (frames, height, width) rather than a flat vector."""
    return len(obs_shape) == 3


def check_spaces(observation_space: Any, action_space: Any) -> tuple[tuple[int, ...], int]:
    """(observation shape, number of actions) of a gymnasium env with a Discrete action space and a Box
    observation space that is flat (a vector: the MLP) or (frames, height, width) (stacked frames, as
    :func:`ray_replay.apex.envs.make_env` makes them: the convolutional network); ValueError naming what
    is not supported otherwise."""
    from gymnasium import spaces

    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"Ape-X DQN needs a discrete action space, got {action_space}")
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) not in (1, 3):
        raise ValueError(f"observations must be a flat vector (a 1-D Box) or stacked frames (a 3-D Box), got {observation_space}")
    return tuple(int(d) for d in observation_space.shape), int(action_space.n)


class _QValues:
    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q-values of a batch of numpy observations, as numpy (for actors and evaluation)."""
        module: Any = self
        device = next(module.parameters()).device
        q: np.ndarray = module(torch.as_tensor(np.asarray(obs), device=device)).cpu().numpy()
        return q


class QNetwork(_QValues, nn.Module):
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
        q: torch.Tensor = self.net(obs.float())
        return q


class ConvQNetwork(_QValues, nn.Module):
    """Q(s, .) for stacked uint8 frames (frames, height, width): the Nature DQN torso (32 8x8/4, 64 4x4/2,
    64 3x3/1, ReLU) on frames scaled to [0, 1], then Linear-ReLU layers of ``hidden`` sizes and a linear head."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, hidden: Sequence[int] = (512,)) -> None:
        super().__init__()
        frames, height, width = (int(d) for d in obs_shape)
        self.torso = nn.Sequential(nn.Conv2d(frames, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                                   nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            features = int(self.torso(torch.zeros(1, frames, height, width)).shape[1])
        self.head = QNetwork(features, num_actions, hidden)
        self.num_actions = num_actions

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        q: torch.Tensor = self.head(self.torso(obs.float() / 255.0))
        return q


def make_network(obs_shape: Sequence[int], num_actions: int, hidden: Sequence[int]) -> QNetwork | ConvQNetwork:
    """The MLP for vector observations, the convolutional network for stacked frames."""
    if is_image(obs_shape):
        return ConvQNetwork(obs_shape, num_actions, hidden)
    return QNetwork(int(obs_shape[0]), num_actions, hidden)


def get_weights(net: nn.Module) -> dict[str, np.ndarray]:
    """The network's parameters and buffers as CPU numpy arrays (copies)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in net.state_dict().items()}


def set_weights(net: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Loads weights from :func:`get_weights` (arrays may be read-only views of Ray's object store)."""
    device = next(net.parameters()).device
    net.load_state_dict({name: torch.tensor(np.asarray(w), device=device) for name, w in weights.items()})
