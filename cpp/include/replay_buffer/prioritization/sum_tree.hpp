// An 8-ary sum tree with a companion min tree, laid out for the cache.
//
// Each node's eight children are eight doubles: one 64-byte cache line, so a descent of a
// 1,000,000-leaf tree touches 7 lines instead of the 20 of a binary tree. Internal nodes are always
// recomputed from their children, never adjusted by deltas, so no floating-point drift accumulates:
// at every moment the root is the rounded sum of the current leaves.
//
// Batches are processed level by level (all queries at one level, then the next) so that the
// independent cache misses of different queries overlap.
//
// Thread roles: not synchronized; the owning buffer serializes every call.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "replay_buffer/memory/aligned_array.hpp"

namespace replay_buffer::prioritization {

class SumTree {
 public:
  static constexpr std::size_t kFanout = 8;
  static_assert(kFanout * sizeof(double) == memory::kCacheLineBytes, "a node's children must fill one cache line");

  explicit SumTree(std::size_t leaves) : leaves_(leaves) {
    if (leaves == 0) throw std::invalid_argument("a sum tree needs at least one leaf");
    std::size_t width = leaves;
    do {
      const std::size_t padded = memory::round_up(width, kFanout);
      sums_.emplace_back(padded * sizeof(double));
      mins_.emplace_back(padded * sizeof(double));
      widths_.push_back(padded);
      width = padded / kFanout;
    } while (widths_.back() > kFanout);
    clear();
  }

  std::size_t size() const noexcept { return leaves_; }

  // All leaves to 0. O(n).
  void clear() noexcept {
    for (std::size_t level = 0; level < widths_.size(); ++level) {
      std::fill_n(sum_level(level), widths_[level], 0.0);
      std::fill_n(min_level(level), widths_[level], kInfinity);
    }
  }

  double value(std::size_t leaf) const noexcept { return sum_level(0)[leaf]; }
  // Leaves [first, first + count) into out, which must not overlap the tree. O(count): one copy.
  void read_values(std::size_t first, std::size_t count, double* out) const noexcept {
    std::copy_n(sum_level(0) + first, count, out);
  }

  // Sum of all leaves. O(1): one cache line.
  double total() const noexcept {
    const double* top = sum_level(widths_.size() - 1);
    double sum = 0.0;
    for (std::size_t i = 0; i < kFanout; ++i) sum += top[i];
    return sum;
  }

  // Smallest positive leaf, or +infinity when no leaf is positive. O(1): one cache line.
  double min_positive() const noexcept {
    const double* top = min_level(widths_.size() - 1);
    return *std::min_element(top, top + kFanout);
  }

  // leaves[i] := values[i] (values >= 0, finite). A leaf given twice keeps its last value.
  // O(n log8 N), level-synchronous.
  void set(const std::uint64_t* leaves, const double* values, std::size_t n) {
    scratch_.assign(leaves, leaves + n);
    for (std::size_t i = 0; i < n; ++i) {
      sum_level(0)[leaves[i]] = values[i];
      min_level(0)[leaves[i]] = values[i] > 0.0 ? values[i] : kInfinity;
    }
    for (std::size_t level = 1; level < widths_.size(); ++level) {
      for (std::size_t i = 0; i < n; ++i) {
        scratch_[i] /= kFanout;
        recompute(level, scratch_[i]);
      }
    }
  }

  void set(std::uint64_t leaf, double value) { set(&leaf, &value, 1); }

  // For each target in [0, total()), the leaf where the running sum of leaves first exceeds it.
  // A leaf of value 0 is never returned. Requires total() > 0. O(n log8 N), level-synchronous.
  void find(const double* targets, std::size_t n, std::uint64_t* leaves) const {
    scratch_targets_.assign(targets, targets + n);
    std::fill_n(leaves, n, 0);
    for (std::size_t level = widths_.size(); level-- > 0;) {
      const double* sums = sum_level(level);
      for (std::size_t i = 0; i < n; ++i) {
        const double* children = sums + leaves[i] * kFanout;
        double remaining = scratch_targets_[i];
        // Branch-free: count the children whose running sum is <= the target (a data-dependent
        // branch per child would mispredict about once per node). A zero child never counts as
        // chosen: its running sum equals its left neighbour's.
        double prefix[kFanout];
        double running = 0.0;
        std::size_t chosen = 0;
        for (std::size_t j = 0; j < kFanout; ++j) {
          running += children[j];
          prefix[j] = running;
          chosen += running <= remaining ? 1 : 0;
        }
        if (chosen == kFanout || children[chosen] <= 0.0) {
          // Rounding carried the target past the last positive child: take that child.
          chosen = kFanout - 1;
          while (chosen > 0 && children[chosen] <= 0.0) --chosen;
          remaining = children[chosen] * 0.5;
        } else {
          remaining -= chosen > 0 ? prefix[chosen - 1] : 0.0;
        }
        scratch_targets_[i] = remaining;
        leaves[i] = leaves[i] * kFanout + chosen;
        if (level > 0) __builtin_prefetch(sum_level(level - 1) + leaves[i] * kFanout);
      }
    }
  }

 private:
  static constexpr double kInfinity = std::numeric_limits<double>::infinity();

  double* sum_level(std::size_t level) noexcept { return reinterpret_cast<double*>(sums_[level].data()); }
  const double* sum_level(std::size_t level) const noexcept { return reinterpret_cast<const double*>(sums_[level].data()); }
  double* min_level(std::size_t level) noexcept { return reinterpret_cast<double*>(mins_[level].data()); }
  const double* min_level(std::size_t level) const noexcept { return reinterpret_cast<const double*>(mins_[level].data()); }

  void recompute(std::size_t level, std::size_t node) noexcept {
    const double* child_sums = sum_level(level - 1) + node * kFanout;
    const double* child_mins = min_level(level - 1) + node * kFanout;
    double sum = 0.0;
    double min = kInfinity;
    for (std::size_t j = 0; j < kFanout; ++j) {
      sum += child_sums[j];
      min = std::min(min, child_mins[j]);
    }
    sum_level(level)[node] = sum;
    min_level(level)[node] = min;
  }

  std::size_t leaves_;
  std::vector<std::size_t> widths_;  // padded node count per level; level 0 holds the leaves
  std::vector<memory::AlignedArray> sums_;
  std::vector<memory::AlignedArray> mins_;
  std::vector<std::uint64_t> scratch_;
  mutable std::vector<double> scratch_targets_;
};

}  // namespace replay_buffer::prioritization
