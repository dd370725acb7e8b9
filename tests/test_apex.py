"""Ape-X (ray_replay.apex): n-step transitions and the learner's loss against numpy, priorities from
actors arriving in the replay and being updated by the learner, and the demo's --json summary.

No test asserts a learning result (benchmarks/apex.py reports those)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gymnasium")

from ray_replay.apex import SUMMARY_KEYS, ApexConfig, NStepBuilder, actor_epsilon  # noqa: E402
from ray_replay.apex.learner import td_loss  # noqa: E402
from ray_replay.apex.networks import QNetwork, get_weights  # noqa: E402


def test_epsilon_ladder() -> None:
    assert actor_epsilon(0, 1) == 0.4
    eps = [actor_epsilon(i, 8) for i in range(8)]
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4**8)
    assert eps == sorted(eps, reverse=True)
    assert actor_epsilon(1, 3) == pytest.approx(0.4 ** (1 + 3.5))


def _reference_nstep(rewards: list[float], ends: list[str], obs: list[int], n: int, gamma: float) -> list[tuple[int, float, int, float]]:
    """(start step, return, index of the bootstrap observation, discount) of every transition of one env's
    episode stream, by brute force: obs[t] is s_t; an episode ends after step t when ends[t] != ""."""
    out = []
    episode_start = 0
    for t in range(len(rewards)):
        if ends[t] or t == len(rewards) - 1:
            end = t  # the last step of this episode (or of the data)
            for s in range(episode_start, end + 1):
                m = min(n, end - s + 1)
                if m < n and not ends[end]:
                    continue  # the window is still open at the end of the data: not emitted yet
                ret = sum(gamma**k * rewards[s + k] for k in range(m))
                terminal = ends[end] == "terminated" and s + m - 1 == end
                out.append((obs[s], ret, s + m, 0.0 if terminal else gamma**m))
            episode_start = end + 1
    return out


def test_nstep_transitions_match_a_brute_force_computation() -> None:
    n, gamma, steps = 3, 0.9, 14
    # env 0 terminates after step 4 and is truncated after step 9; env 1 is truncated after step 1 and
    # terminates after step 2 (episodes shorter than n); env 2 never ends.
    ends = [["" for _ in range(steps)] for _ in range(3)]
    ends[0][4], ends[0][9] = "terminated", "truncated"
    ends[1][1], ends[1][2] = "truncated", "terminated"
    rng = np.random.default_rng(0)
    rewards = rng.standard_normal((steps, 3)).round(2)
    # Observations are labels: s_t of env j is 100 j + t; the vector env returns a reset observation
    # (-1) in place of s_{t+1} after an episode ends, and s_{t+1} as final_obs.
    builder = NStepBuilder(3, n, gamma)
    got: list[list[tuple[int, float, int, float]]] = [[] for _ in range(3)]
    label = lambda j, t: np.array([100 * j + t], np.float32)  # noqa: E731
    for t in range(steps):
        obs = np.stack([label(j, t) for j in range(3)])
        terminated = np.array([ends[j][t] == "terminated" for j in range(3)])
        truncated = np.array([ends[j][t] == "truncated" for j in range(3)])
        next_obs = np.stack([np.array([-1.0], np.float32) if ends[j][t] else label(j, t + 1) for j in range(3)])
        final_obs = np.array([label(j, t + 1) if ends[j][t] else None for j in range(3)], dtype=object)
        rows = builder.step(obs, np.arange(3), rewards[t], next_obs, terminated, truncated, final_obs)
        if rows is None:
            continue
        for i in range(len(rows["action"])):
            j = int(rows["env"][i])
            assert rows["action"][i] == j
            got[j].append((int(rows["state"][i, 0]), float(rows["reward"][i]), int(rows["next_state"][i, 0]), float(rows["discount"][i])))
    for j in range(3):
        expected = _reference_nstep(list(rewards[:, j]), ends[j], [100 * j + t for t in range(steps + 1)], n, gamma)
        expected = [(s, r, 100 * j + b, d) for s, r, b, d in expected]
        assert len(got[j]) == len(expected)
        for g, e in zip(sorted(got[j]), sorted(expected)):
            assert g[0] == e[0] and g[2] == e[2]
            assert g[1] == pytest.approx(e[1], abs=1e-5) and g[3] == pytest.approx(e[3], abs=1e-6)
    assert builder.pending() == 3 * (n - 1)  # every env's open window at the end of the data


def _numpy_q(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    layers = sorted({k.rsplit(".", 1)[0] for k in weights}, key=lambda k: int(k.split(".")[1]))
    for i, layer in enumerate(layers):
        x = x @ weights[f"{layer}.weight"].T + weights[f"{layer}.bias"]
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


@pytest.mark.parametrize("double_q", [True, False])
def test_td_loss_matches_numpy(double_q: bool) -> None:
    torch.manual_seed(0)
    online, target = QNetwork(4, 3, (16, 16)), QNetwork(4, 3, (16, 16))
    rng = np.random.default_rng(1)
    b = 32
    batch = {"state": rng.standard_normal((b, 4)).astype(np.float32), "action": rng.integers(0, 3, b),
             "reward": rng.standard_normal(b).astype(np.float32) * 3, "next_state": rng.standard_normal((b, 4)).astype(np.float32),
             "discount": rng.choice([0.0, 0.99**2, 0.99**3], b).astype(np.float32), "weights": rng.random(b).astype(np.float32)}
    loss, td = td_loss(online, target, {k: torch.as_tensor(v) for k, v in batch.items()}, huber_delta=1.0, double_q=double_q)
    w_on, w_tg = get_weights(online), get_weights(target)
    q_sa = _numpy_q(w_on, batch["state"])[np.arange(b), batch["action"]]
    q_next_target = _numpy_q(w_tg, batch["next_state"])
    best = (_numpy_q(w_on, batch["next_state"]) if double_q else q_next_target).argmax(axis=1)
    y = batch["reward"] + batch["discount"] * q_next_target[np.arange(b), best]
    delta = y - q_sa
    huber = np.where(np.abs(delta) <= 1.0, 0.5 * delta**2, np.abs(delta) - 0.5)
    np.testing.assert_allclose(td.numpy(), delta, rtol=1e-5, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(float(np.mean(batch["weights"] * huber)), rel=1e-5)
    # The weights scale each row's gradient: all-ones weights give the plain mean.
    unweighted, _ = td_loss(online, target, {k: torch.as_tensor(v) for k, v in batch.items() if k != "weights"}, double_q=double_q)
    assert float(unweighted) == pytest.approx(float(huber.mean()), rel=1e-5)


def _small_config(**overrides: object) -> ApexConfig:
    kw: dict[str, object] = dict(num_actors=1, envs_per_actor=4, capacity=10_000, batch_size=32, updates_per_sample=2,
                                 min_size_to_sample=256, samples_per_insert=8.0, error_buffer=100_000.0, hidden=(32, 32),
                                 eval_episodes=2, eval_every_s=1.0, publish_every_updates=10)
    kw.update(overrides)
    return ApexConfig(**kw)  # type: ignore[arg-type]


def test_actor_priorities_arrive_and_learner_updates_them(ray_local: None) -> None:
    import ray

    from ray_replay.apex.actor import Actor
    from ray_replay.apex.learner import Learner
    from ray_replay.apex.run import make_replay
    from ray_replay.distributed import ReplayClient

    config = _small_config()
    replay = make_replay(config, 4)
    learner = Learner.options(max_concurrency=4).remote(replay, config, 4, 2)
    actor = Actor.options(max_concurrency=2).remote(replay, learner, config, 0)
    try:
        acted = ray.get(actor.run.remote(max_steps=400))
        assert acted["env_steps"] >= 400 and acted["inserted"] > 300
        total = ray.get(replay.stats.remote())["total"]
        assert total["adds"] == acted["inserted"] and total["priority_updates"] == 0
        # The actor's |TD| priorities, not the default: the sampling probabilities differ.
        client = ReplayClient(replay, prefetch=0, seed=0)
        probe = client.sample(256)
        assert np.ptp(probe["probabilities"]) > 0 and set(probe) >= {"state", "discount", "weights", "ids"}
        assert total["max_priority"] != 1.0 and total["min_priority"] < total["max_priority"]
        client.close()
        learned = ray.get(learner.run.remote(max_updates=40))
        assert learned["updates"] == 40
        total = ray.get(replay.stats.remote())["total"]
        assert total["priority_updates"] >= 40 * config.batch_size - total["stale_priority_updates"]
        latest = ray.get(learner.latest.remote())
        assert latest["updates"] == 40 and latest["version"] > 1
        ray.get(replay.shutdown.remote())
    finally:
        for h in (actor, learner, replay):
            ray.kill(h)


def test_demo_json_summary_has_every_key(ray_local: None, tmp_path: object) -> None:
    from pathlib import Path

    from ray_replay.__main__ import main

    out = Path(str(tmp_path)) / "summary.json"
    png = Path(str(tmp_path)) / "curve.png"
    assert main(["demo", "--seconds", "12", "--json", str(out), "--plot", str(png), "--actors", "1",
                 "--checkpoint-dir", str(Path(str(tmp_path)) / "ckpt")]) == 0
    summary = json.loads(out.read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert isinstance(summary["solved"], bool) and summary["env_steps"] > 0 and summary["wall_s"] > 0
    assert summary["curve"] and summary["learner_checkpoint"]
    assert Path(summary["learner_checkpoint"]).is_file()
    state = torch.load(summary["learner_checkpoint"], weights_only=False)
    assert state["updates"] == summary["learner_updates"]


def test_check_spaces_accepts_vectors_and_frame_stacks_only() -> None:
    from gymnasium import spaces

    from ray_replay.apex.networks import check_spaces

    assert check_spaces(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(6)) == ((4, 84, 84), 6)
    with pytest.raises(ValueError, match="flat vector"):
        check_spaces(spaces.Box(0, 1, (84, 84)), spaces.Discrete(6))
    with pytest.raises(ValueError, match="discrete action space"):
        check_spaces(spaces.Box(-1, 1, (3,)), spaces.Box(-1, 1, (1,)))


def test_nstep_from_sequences_matches_the_nstep_rows() -> None:
    """One-step rows written in step order per stream (what actors of pixel envs write) into a dedup
    buffer, sampled as sequences of n and rebuilt: every sampled transition equals the n-step row that
    NStepBuilder built for that start step (frames as uint8 stacks, dedup on axis 0)."""
    from ray_replay import ReplayBuffer
    from ray_replay.apex.nstep import nstep_from_sequences

    n, gamma, envs, steps = 3, 0.9, 2, 60
    rng = np.random.default_rng(3)
    builder = NStepBuilder(envs, n, gamma, one_step=True)
    buf = ReplayBuffer(1_000, "prioritized", seed=0, next_state="dedup", frame_stack_axis=0)
    frame = lambda j, t: np.frombuffer(np.int64(100_000 * j + t + 10).tobytes()[:6], np.uint8).reshape(2, 3)  # noqa: E731  # unique
    stack = lambda j, t: np.stack([frame(j, t - 1), frame(j, t)])  # noqa: E731
    t_env = [0] * envs
    expected: dict[bytes, tuple[int, float, bytes, float]] = {}
    obs = np.stack([stack(j, 0) for j in range(envs)])
    for _ in range(steps):
        actions = rng.integers(0, 4, envs)
        rewards = rng.standard_normal(envs).round(2)
        terminated, truncated = rng.random(envs) < 0.08, rng.random(envs) < 0.04
        final = np.stack([stack(j, t_env[j] + 1) for j in range(envs)])
        for j in range(envs):
            t_env[j] = 1000 * (j + 1) + t_env[j] + 1 if terminated[j] or truncated[j] else t_env[j] + 1  # a fresh episode's frames
        next_obs = np.stack([stack(j, t_env[j]) for j in range(envs)])
        rows = builder.step(obs, actions, rewards, next_obs, terminated, truncated, list(final))
        obs = next_obs
        if rows is None:
            continue
        for i in range(len(rows["action"])):
            expected[rows["state"][i].tobytes() + bytes([int(rows["env"][i])])] = (
                int(rows["action"][i]), float(rows["reward"][i]), rows["next_state"][i].tobytes(), float(rows["discount"][i]))
        buf.add_batch(state=rows["state"], action=rows["action"], reward=rows["step_reward"], next_state=rows["step_next_state"],
                      terminated=rows["step_terminated"], truncated=rows["step_truncated"], env=rows["env"],
                      priorities=np.ones(len(rows["action"])), streams=rows["env"])
    assert buf.stats()["frames_held"] < 1.5 * len(buf)  # about one new frame per row, not 4 per row
    sample = buf.sample(200, seq_len=n)
    got = nstep_from_sequences(sample, gamma)
    m = sample["mask"].sum(axis=1)
    last = m - 1
    ended = (sample["terminated"][np.arange(200), last] + sample["truncated"][np.arange(200), last]) > 0
    complete = (m == n) | ended  # else cut short by its stream's newest row: an m-step transition, not the builder's row
    assert complete.sum() > 150
    for i in np.flatnonzero(complete):
        key = got["state"][i].tobytes() + bytes([int(sample["env"][i, 0])])
        action, ret, next_state, discount = expected[key]
        assert got["action"][i] == action and got["next_state"][i].tobytes() == next_state
        assert got["reward"][i] == pytest.approx(ret, abs=1e-5) and got["discount"][i] == pytest.approx(discount, abs=1e-6)


def test_pixel_env_dedups_frames_and_priorities_flow(ray_local: None) -> None:
    """A few hundred steps of ALE/Pong-v5 (grayscale, downsampled, 4 stacked frames): the replay holds
    about one frame per row (frame-stack dedup), the actor's priorities arrive and the learner (the
    convolutional network, sequences of n one-step rows) updates them. No learning is asserted."""
    pytest.importorskip("ale_py")
    import ray

    from ray_replay.apex.actor import Actor
    from ray_replay.apex.learner import Learner
    from ray_replay.apex.run import _spaces, make_replay

    config = _small_config(env_id="ALE/Pong-v5", envs_per_actor=2, capacity=2_000, batch_size=16, min_size_to_sample=64,
                           hidden=(64,), actor_batch_rows=64)
    obs_shape, num_actions = _spaces(config.env_id, config.frame_stack)
    assert obs_shape[0] == 4 and len(obs_shape) == 3
    replay = make_replay(config, obs_shape)
    learner = Learner.options(max_concurrency=4).remote(replay, config, obs_shape, num_actions)
    actor = Actor.options(max_concurrency=2).remote(replay, learner, config, 0)
    try:
        acted = ray.get(actor.run.remote(max_steps=300))
        stats = ray.get(replay.stats.remote())
        total = stats["total"]
        frames = sum(s["frames_held"] for s in stats["shards"])
        assert total["adds"] == acted["inserted"] >= 250
        assert total["size"] <= frames <= total["size"] + 8 * (acted["episodes"] + 2 * config.envs_per_actor)  # 8 a row without dedup
        assert total["min_priority"] < total["max_priority"]  # the actor's |TD| priorities, not one default
        learned = ray.get(learner.run.remote(max_updates=4))
        assert learned["updates"] == 4
        total = ray.get(replay.stats.remote())["total"]
        assert total["priority_updates"] + total["stale_priority_updates"] >= 4 * config.batch_size
        ray.get(replay.shutdown.remote())
    finally:
        for h in (actor, learner, replay):
            ray.kill(h)
