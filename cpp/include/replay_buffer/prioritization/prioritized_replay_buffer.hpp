// PrioritizedReplayBuffer<State, Action>: proportional prioritized replay with importance weights and
// stale-safe priority updates (ids are insertion sequence numbers; see core/ring_buffer.hpp).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "replay_buffer/core/experience.hpp"
#include "replay_buffer/prioritization/prioritized_ring.hpp"

namespace replay_buffer::prioritization {

template <class State, class Action>
struct PrioritizedBatch : core::ExperienceBatch<State, Action> {
  std::vector<float> weights;          // (P(i) / min_k P(k))^-beta: the largest possible weight is 1
  std::vector<double> probabilities;   // P(i) = p_i^alpha / sum_k p_k^alpha
};

template <class State, class Action>
class PrioritizedReplayBuffer : public core::TypedReplayBuffer<core::PrioritizedBuffer, State, Action> {
  using Base = core::TypedReplayBuffer<core::PrioritizedBuffer, State, Action>;

 public:
  explicit PrioritizedReplayBuffer(std::size_t capacity, PriorityOptions options = {}, std::uint64_t seed = 0)
      : Base(capacity, seed, options) {}

  // Without a priority, the row gets the largest priority seen so far.
  void add(const core::Experience<State, Action>& experience) { Base::add(experience); }
  void add(const core::Experience<State, Action>& experience, double priority) {
    check_priority(priority, 0);
    Base::add(experience, &priority);
  }

  PrioritizedBatch<State, Action> sample(std::size_t batch_size, double beta = 0.4) {
    PrioritizedBatch<State, Action> batch;
    batch.weights.resize(batch_size);
    batch.probabilities.resize(batch_size);
    core::SampleRequest request;
    request.batch_size = batch_size;
    request.beta = beta;
    request.weights = batch.weights.data();
    request.probabilities = batch.probabilities.data();
    static_cast<core::ExperienceBatch<State, Action>&>(batch) = Base::sample(request);
    return batch;
  }

  core::PriorityUpdateResult update_priorities(const std::vector<std::int64_t>& ids, const std::vector<double>& priorities) {
    if (ids.size() != priorities.size()) throw std::invalid_argument("ids and priorities must have the same length");
    for (std::size_t i = 0; i < priorities.size(); ++i) check_priority(priorities[i], i);
    return this->engine().update_priorities(ids.data(), priorities.data(), ids.size());
  }

 private:
  static void check_priority(double priority, std::size_t index) {
    if (!(priority >= 0.0) || priority == std::numeric_limits<double>::infinity()) {
      throw std::invalid_argument("priorities[" + std::to_string(index) + "] must be finite and >= 0");
    }
  }
};

}  // namespace replay_buffer::prioritization
