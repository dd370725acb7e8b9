"""Environments for Ape-X: any gymnasium id with a discrete action space, pixel envs included.

Vector observations pass through unchanged. Image observations (a 3-D Box, (height, width, channels),
e.g. ``ALE/Pong-v5``) become grayscale, are downsampled by an integer stride to at most
``max_side`` pixels on their longer side (plain numpy: no OpenCV needed), and ``frame_stack`` of them
are stacked by gymnasium's FrameStackObservation into uint8 (frames, height, width). Consecutive
stacks share all frames but one, which is what the replay's frame-stack dedup
(``next_state="dedup", frame_stack_axis=0``) stores once. ALE ids register ale-py's envs first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["make_env", "make_vector_env"]


def _register(env_id: str) -> None:
    if env_id.startswith("ALE/"):
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)


def make_env(env_id: str, frame_stack: int = 4, max_side: int = 84) -> Any:
    """``gymnasium.make(env_id)``, with image observations preprocessed and stacked (see the module doc)."""
    import gymnasium as gym
    from gymnasium import spaces
    from gymnasium.wrappers import FrameStackObservation, TransformObservation

    _register(env_id)
    env = gym.make(env_id)
    space = env.observation_space
    if not (isinstance(space, spaces.Box) and len(space.shape) == 3):
        return env
    height, width, _ = space.shape
    stride = max(1, -(-max(height, width) // max_side))  # ceil: the longer side ends at most max_side

    def gray(obs: np.ndarray) -> np.ndarray:
        frame = np.asarray(obs)[::stride, ::stride]
        return np.ascontiguousarray(frame.mean(axis=2).astype(np.uint8))

    shape = gray(np.zeros(space.shape, space.dtype)).shape
    env = TransformObservation(env, gray, spaces.Box(0, 255, shape, np.uint8))
    return FrameStackObservation(env, frame_stack)


def make_vector_env(env_id: str, num_envs: int, seed: int, frame_stack: int = 4) -> Any:
    """A seeded SyncVectorEnv of ``num_envs`` :func:`make_env` envs (autoreset SAME_STEP); returns (env, first obs)."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    env = SyncVectorEnv([lambda: make_env(env_id, frame_stack) for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP)
    obs: np.ndarray
    obs, _ = env.reset(seed=[seed + j for j in range(num_envs)])
    env.action_space.seed(seed)
    return env, obs
