// Sampling policies of a ring buffer ("selectors", after Reverb's selectors/): which slot to read next,
// and what a sampled row's mass, probability and weight are. RingBuffer<S> owns the rows, the ids and
// the counters; the selector owns everything about choosing (a sum tree, the default priority).
//
// The interface, checked by the `Selector` concept below (static, so calls inline on the hot path).
// n is the number of rows in a call, N the capacity; costs are uniform | prioritized:
//   insert_run(first, count, priorities, capacity)
//                    rows were written to slots first, first+1, ... (mod capacity); priorities null:
//                    the selector's default (the largest seen so far)                 O(1)     | O(n log8 N)
//   update(slots, priorities, n)  new priorities for live slots (only where kUpdatable)         | O(n log8 N)
//   sample(request, rng, live, slots)  request.batch_size slots among the `live` rows, with
//                    replacement                                                       O(n)     | O(n log8 N)
//   describe(request, slots, n)   fills request.masses / probabilities / weights (each when non-null)
//                    for sampled slots                                                 O(1)     | O(n)
//   fill_stats(stats)             total_priority, min_priority, max_priority           O(1)     | O(1)
//   export_masses(first, count, capacity, out) / import_masses(first, count, capacity, masses)
//                    the masses of a run of slots, for checkpoints (uniform: none)     O(1)     | O(n) / O(n log8 N)
//   max_priority() / set_max_priority(p)   the default priority, carried in states
// Errors: sample throws std::invalid_argument when nothing can be drawn (every mass 0); the caller
// has checked the buffer is not empty. A method that throws changed nothing.
// Concurrency contract: not synchronized; the owning RingBuffer calls every method under its mutex.
// Progress: every method is wait-free given the mutex (bounded work, no allocation once the scratch
// vectors have grown to the largest batch).
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/core/random.hpp"

namespace replay_buffer::core {

template <class S>
concept Selector = requires(S s, const S cs, const SampleRequest& request, Random& rng, std::size_t n, std::uint64_t* slots,
                            const std::uint64_t* const_slots, const double* priorities, double* out, BufferStats& stats, double p) {
  { S::kUpdatable } -> std::convertible_to<bool>;
  s.insert_run(n, n, priorities, n);
  s.sample(request, rng, n, slots);
  cs.describe(request, const_slots, n);
  cs.fill_stats(stats);
  cs.export_masses(n, n, n, out);
  s.import_masses(n, n, n, priorities);
  { cs.max_priority() } -> std::convertible_to<double>;
  s.set_max_priority(p);
};

// Uniform sampling with replacement. The ring fills slots 0..capacity-1 before it wraps, so the live
// rows are always the slots [0, live). Keeps no state: every method but sample is a no-op.
class UniformSelector {
 public:
  static constexpr bool kUpdatable = false;  // update_priorities is refused by the ring

  explicit UniformSelector(std::size_t /*capacity*/) {}

  void insert_run(std::size_t /*first*/, std::size_t /*count*/, const double* /*priorities*/, std::size_t /*capacity*/) noexcept {}

  void sample(const SampleRequest& request, Random& rng, std::size_t live, std::uint64_t* slots) const {
    for (std::size_t i = 0; i < request.batch_size; ++i) slots[i] = rng.below(live);
  }

  void describe(const SampleRequest& /*request*/, const std::uint64_t* /*slots*/, std::size_t /*n*/) const noexcept {}
  void fill_stats(BufferStats& /*stats*/) const noexcept {}
  void export_masses(std::size_t /*first*/, std::size_t /*count*/, std::size_t /*capacity*/, double* /*out*/) const noexcept {}
  void import_masses(std::size_t /*first*/, std::size_t /*count*/, std::size_t /*capacity*/, const double* /*masses*/) noexcept {}
  double max_priority() const noexcept { return 1.0; }
  void set_max_priority(double /*p*/) noexcept {}
};

static_assert(Selector<UniformSelector>);

}  // namespace replay_buffer::core
