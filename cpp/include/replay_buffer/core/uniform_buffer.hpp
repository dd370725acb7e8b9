// UniformReplayBuffer<State, Action> and FifoReplayBuffer<State, Action>: the mutex-guarded ring and queue.
#pragma once

#include "replay_buffer/core/experience.hpp"
#include "replay_buffer/core/fifo_buffer.hpp"
#include "replay_buffer/core/ring_buffer.hpp"

namespace replay_buffer::core {

template <class State, class Action>
class UniformReplayBuffer : public TypedReplayBuffer<UniformBuffer, State, Action> {
 public:
  explicit UniformReplayBuffer(std::size_t capacity, std::uint64_t seed = 0)
      : TypedReplayBuffer<UniformBuffer, State, Action>(capacity, seed) {}
};

template <class State, class Action>
class FifoReplayBuffer : public TypedReplayBuffer<FifoBuffer, State, Action> {
 public:
  explicit FifoReplayBuffer(std::size_t capacity, OverflowPolicy overflow = OverflowPolicy::kReject)
      : TypedReplayBuffer<FifoBuffer, State, Action>(capacity, overflow) {}
};

}  // namespace replay_buffer::core
