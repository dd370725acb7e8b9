// LockFreeReplayBuffer<State, Action>: uniform replay that many threads add to and sample from at
// once without a lock (see concurrency/seqlock_ring_buffer.hpp for how).
#pragma once

#include "replay_buffer/concurrency/seqlock_ring_buffer.hpp"
#include "replay_buffer/core/experience.hpp"

namespace replay_buffer::core {

template <class State, class Action>
class LockFreeReplayBuffer : public TypedReplayBuffer<concurrency::SeqlockRingBuffer, State, Action> {
 public:
  explicit LockFreeReplayBuffer(std::size_t capacity, std::uint64_t seed = 0)
      : TypedReplayBuffer<concurrency::SeqlockRingBuffer, State, Action>(capacity, seed) {}
};

}  // namespace replay_buffer::core
