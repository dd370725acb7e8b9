// Proportional prioritization (Schaul et al., 2016): P(i) = p_i^alpha / sum_k p_k^alpha.
//
// Priorities are turned into masses here: mass = 0 when p == 0 (the row is never sampled: a mask),
// else max(p, eps)^alpha (eps is a floor that keeps tiny TD errors revisitable).
// Sampling is stratified by default (the total mass cut into batch_size equal segments, one draw in
// each, as in the PER paper) or plainly proportional.
//
// The Selector interface (core/selector.hpp) with its costs and contracts. Rows inserted without a
// priority get the largest priority seen so far (max_priority()), so a new row is sampled soon.
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
  static constexpr bool kUpdatable = true;

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

  // Rows written to slots first.. (mod capacity); priorities null: max_priority() each. O(n log8 N)
  void insert_run(std::size_t first, std::size_t count, const double* priorities, std::size_t capacity) {
    run_slots_.resize(count);
    run_priorities_.resize(count);
    for (std::size_t i = 0, slot = first; i < count; ++i, slot = slot + 1 == capacity ? 0 : slot + 1) {
      run_slots_[i] = slot;
      run_priorities_[i] = priorities != nullptr ? priorities[i] : max_priority_;
    }
    update(run_slots_.data(), run_priorities_.data(), count);
  }

  // New priorities for live slots; raises max_priority() to the largest. O(n log8 N)
  void update(const std::uint64_t* slots, const double* priorities, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) max_priority_ = std::max(max_priority_, priorities[i]);
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

  // For sampled slots: m_i, P(i) = m_i / total and w_i = (N P(i))^-beta / max_j (N P(j))^-beta
  // = (m_i / min_mass)^-beta, each where the request asks for it. O(n)
  void describe(const core::SampleRequest& request, const std::uint64_t* slots, std::size_t n) const {
    const double total = tree_.total();
    // Weights are float32, so the power is taken in float (exp2f/log2f cost half of exp/log); the
    // ratio is formed in double, so masses below float's range do not underflow to 0.
    const double min_mass = tree_.min_positive();
    const auto beta = static_cast<float>(request.beta);
    for (std::size_t i = 0; i < n; ++i) {
      const double mass = tree_.value(slots[i]);
      if (request.masses != nullptr) request.masses[i] = mass;
      if (request.probabilities != nullptr) request.probabilities[i] = mass / total;
      if (request.weights != nullptr) {
        const auto ratio = static_cast<float>(mass / min_mass);  // >= 1; inf when beyond float's range
        request.weights[i] = beta == 0.0f ? 1.0f : std::exp2(-beta * std::log2(ratio));
      }
    }
  }

  void fill_stats(core::BufferStats& stats) const noexcept {
    stats.total_priority = tree_.total();
    const double min_mass = tree_.min_positive();
    stats.min_priority = std::isfinite(min_mass) ? min_mass : 0.0;
    stats.max_priority = max_priority_;
  }

  // The masses of `count` slots from `first` on (mod capacity), in that order: two contiguous runs of
  // leaves where the ring wraps. O(count)
  void export_masses(std::size_t first, std::size_t count, std::size_t capacity, double* out) const noexcept {
    const std::size_t before_wrap = std::min(count, capacity - first);
    tree_.read_values(first, before_wrap, out);
    tree_.read_values(0, count - before_wrap, out + before_wrap);
  }

  // Clears every mass, then restores those of `count` slots from `first` on exactly as export_masses
  // reported them (checkpoints). O(N + count log8 N)
  void import_masses(std::size_t first, std::size_t count, std::size_t capacity, const double* masses) {
    tree_.clear();
    run_slots_.resize(count);
    for (std::size_t i = 0, slot = first; i < count; ++i, slot = slot + 1 == capacity ? 0 : slot + 1) run_slots_[i] = slot;
    tree_.set(run_slots_.data(), masses, count);
  }

  double max_priority() const noexcept { return max_priority_; }
  void set_max_priority(double p) noexcept { max_priority_ = p; }


 private:
  PriorityOptions options_;
  SumTree tree_;
  std::vector<double> masses_;
  std::vector<double> targets_;
  std::vector<std::uint64_t> run_slots_;
  std::vector<double> run_priorities_;
  double max_priority_ = 1.0;  // priority of rows added without one: the largest seen so far
  double memo_priority_ = std::numeric_limits<double>::quiet_NaN();  // equal to no priority at first
  double memo_mass_ = 0.0;                                           // mass_of(memo_priority_)
};

}  // namespace replay_buffer::prioritization
