// Proportional prioritization (Schaul et al., 2016): P(i) = p_i^alpha / sum_k p_k^alpha.
//
// Priorities are turned into masses here: mass = 0 when p == 0 (the row is never sampled: a mask),
// else max(p, eps)^alpha (eps is a floor that keeps tiny TD errors revisitable).
// Sampling is stratified by default (the total mass cut into batch_size equal segments, one draw in
// each, as in the PER paper) or plainly proportional.
//
// Concurrency contract: not synchronized; the owning RingBuffer calls every method under its mutex.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/core/random.hpp"
#include "replay_buffer/prioritization/sum_tree.hpp"

namespace replay_buffer::prioritization {

enum class SamplingMode { kStratified, kProportional };

struct PriorityOptions {
  double alpha = 0.6;
  double eps = 1e-6;
  SamplingMode mode = SamplingMode::kStratified;
};

class PrioritizedSelector {
 public:
  static constexpr bool kPrioritized = true;

  PrioritizedSelector(std::size_t capacity, PriorityOptions options) : options_(options), tree_(capacity) {
    if (!(options.alpha >= 0.0) || !std::isfinite(options.alpha)) throw std::invalid_argument("alpha must be a finite number >= 0");
    if (!(options.eps >= 0.0) || !std::isfinite(options.eps)) throw std::invalid_argument("eps must be a finite number >= 0");
  }

  const PriorityOptions& options() const noexcept { return options_; }

  double mass_of(double priority) const noexcept {
    if (priority <= 0.0) return 0.0;
    const double p = std::max(priority, options_.eps);
    if (options_.alpha == 1.0) return p;
    if (options_.alpha == 0.0) return 1.0;
    return std::pow(p, options_.alpha);
  }

  // O(n log8 N)
  void insert(const std::uint64_t* slots, const double* priorities, std::size_t n) { update(slots, priorities, n); }

  // O(n log8 N)
  void update(const std::uint64_t* slots, const double* priorities, std::size_t n) {
    masses_.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      // Rows added without a priority all get the same one (the largest so far): one pow for a run.
      if (priorities[i] != memo_priority_) {
        memo_priority_ = priorities[i];
        memo_mass_ = mass_of(priorities[i]);
      }
      masses_[i] = memo_mass_;
    }
    tree_.set(slots, masses_.data(), n);
  }

  // O(n log8 N). Fills slots, and masses when asked.
  void sample(const core::SampleRequest& request, core::Random& rng, std::size_t /*live*/, std::uint64_t* slots) {
    const std::size_t n = request.batch_size;
    const double total = tree_.total();
    if (!(total > 0.0)) throw std::invalid_argument("cannot sample: every priority in the buffer is 0");
    targets_.resize(n);
    if (options_.mode == SamplingMode::kStratified) {
      const double segment = total / static_cast<double>(n);
      for (std::size_t i = 0; i < n; ++i) targets_[i] = std::min((static_cast<double>(i) + rng.uniform()) * segment, total);
    } else {
      for (std::size_t i = 0; i < n; ++i) targets_[i] = rng.uniform() * total;
    }
    tree_.find(targets_.data(), n, slots);
  }

  // Restores masses exactly as read_masses() reported them (checkpoints). O(n log8 N)
  void set_masses(const std::uint64_t* slots, const double* masses, std::size_t n) { tree_.set(slots, masses, n); }

  double mass(std::uint64_t slot) const noexcept { return tree_.value(slot); }
  // The masses of slots [first, first + count) into out. O(count).
  void read_masses(std::size_t first, std::size_t count, double* out) const noexcept { tree_.read_values(first, count, out); }
  double total() const noexcept { return tree_.total(); }
  double min_positive() const noexcept { return tree_.min_positive(); }
  void clear() noexcept { tree_.clear(); }

 private:
  PriorityOptions options_;
  SumTree tree_;
  std::vector<double> masses_;
  std::vector<double> targets_;
  double memo_priority_ = std::numeric_limits<double>::quiet_NaN();  // equal to no priority at first
  double memo_mass_ = 0.0;                                           // mass_of(memo_priority_)
};

}  // namespace replay_buffer::prioritization
