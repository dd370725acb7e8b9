// Low-cost latency histogram for the built-in performance monitoring.
//
// Thread roles: any number of threads record concurrently; any thread reads percentiles.
// Buckets are log-linear (8 sub-buckets per power of two, <= 12.5% relative error), counted with
// relaxed atomics: a percentile read while others record may miss the newest few samples, which is
// fine for monitoring and costs no fence on the hot path.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>

namespace replay_buffer::core {

class LatencyRecorder {
 public:
  static constexpr int kSubBits = 3;
  static constexpr int kBuckets = 64 << kSubBits;

  // True for every kTimedCallInterval-th call. The count is a relaxed load and store, not a
  // read-modify-write: concurrent callers may lose an increment, which only shifts which calls are
  // timed, and no locked instruction lands on the hot path.
  static constexpr std::uint64_t kTimedCallInterval = 8;
  bool should_time() noexcept {
    const std::uint64_t call = calls_.load(std::memory_order_relaxed);
    calls_.store(call + 1, std::memory_order_relaxed);
    return call % kTimedCallInterval == 0;
  }

  void record(std::uint64_t nanoseconds) noexcept {
    buckets_[bucket_of(nanoseconds)].fetch_add(1, std::memory_order_relaxed);
  }

  // Value at quantile q in [0, 1] (the bucket's upper bound), or 0 when nothing was recorded.
  std::uint64_t percentile(double q) const noexcept {
    std::array<std::uint64_t, kBuckets> counts;
    std::uint64_t total = 0;
    for (int i = 0; i < kBuckets; ++i) total += counts[i] = buckets_[i].load(std::memory_order_relaxed);
    if (total == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total - 1)) + 1;
    std::uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += counts[i];
      if (seen >= rank) return upper_bound_of(i);
    }
    return upper_bound_of(kBuckets - 1);
  }

  void reset() noexcept {
    for (auto& bucket : buckets_) bucket.store(0, std::memory_order_relaxed);
  }

 private:
  static int bucket_of(std::uint64_t v) noexcept {
    if (v < (1u << kSubBits)) return static_cast<int>(v);
    const int exponent = 63 - std::countl_zero(v);  // >= kSubBits
    const int sub = static_cast<int>((v >> (exponent - kSubBits)) & ((1u << kSubBits) - 1));
    return ((exponent - kSubBits + 1) << kSubBits) + sub;
  }
  static std::uint64_t upper_bound_of(int bucket) noexcept {
    if (bucket < (1 << kSubBits)) return static_cast<std::uint64_t>(bucket);
    const int exponent = (bucket >> kSubBits) + kSubBits - 1;
    const std::uint64_t sub = static_cast<std::uint64_t>(bucket & ((1 << kSubBits) - 1));
    return ((std::uint64_t{1} << kSubBits) + sub + 1) << (exponent - kSubBits);
  }

  std::array<std::atomic<std::uint64_t>, kBuckets> buckets_{};
  std::atomic<std::uint64_t> calls_{0};
};

// Times one scope into a recorder. Reading the clock twice costs ~70 ns here, as much as a whole
// single-row add, so only every 8th call to a recorder is timed (LatencyRecorder::should_time):
// percentiles of a 1-in-8 systematic sample serve monitoring as well, at 1/8 of the cost.
// A disabled or skipped timer reads no clock.
class ScopedTimer {
 public:
  ScopedTimer(LatencyRecorder& recorder, bool enabled) noexcept
      : recorder_(enabled && recorder.should_time() ? &recorder : nullptr),
        start_(recorder_ != nullptr ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{}) {}
  ~ScopedTimer() {
    if (recorder_ != nullptr) {
      const auto elapsed = std::chrono::steady_clock::now() - start_;
      recorder_->record(static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()));
    }
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  LatencyRecorder* recorder_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace replay_buffer::core
