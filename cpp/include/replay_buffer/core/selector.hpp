// Sampling policies of a ring buffer ("selectors", after Reverb): which slot to read next.
//
// Interface (static, so calls inline on the hot path):
//   insert(slot, priority)             a row was written to slot (overwriting any old row)      O(1) | O(log8 n)
//   update(slots, priorities, n)       new priorities for live slots                            O(n log8 n)
//   sample(request, rng, live, n, slots, masses)  choose n slots among the `live` first slots   O(n) | O(n log8 n)
// Concurrency contract: not synchronized; the owning RingBuffer calls every method under its mutex.
#pragma once

#include <cstddef>
#include <cstdint>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/core/random.hpp"

namespace replay_buffer::core {

// Uniform sampling with replacement. The ring fills slots 0..capacity-1 before it wraps, so the live
// rows are always the slots [0, live).
class UniformSelector {
 public:
  static constexpr bool kPrioritized = false;

  explicit UniformSelector(std::size_t /*capacity*/) {}

  void insert(const std::uint64_t* /*slots*/, const double* /*priorities*/, std::size_t /*n*/) noexcept {}

  void sample(const SampleRequest& request, Random& rng, std::size_t live, std::uint64_t* slots) {
    for (std::size_t i = 0; i < request.batch_size; ++i) slots[i] = rng.below(live);
  }
};

}  // namespace replay_buffer::core
