// The contract every native buffer implements, over rows of raw bytes laid out by a schema the caller
// owns (the Python bindings and the typed C++ front-ends both build on it).
//
// Concurrency contract: every method may be called from any thread at any time. FIFO, uniform and
// prioritized buffers serialize calls with one mutex per buffer; the lock-free buffer claims slots with
// atomics and guards each slot with a sequence lock. No method calls back into Python, so callers may
// release the GIL around all of them.
//
// Failure contract: a method that throws has changed nothing.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "replay_buffer/core/latency_recorder.hpp"
#include "replay_buffer/core/random.hpp"
#include "replay_buffer/memory/column_store.hpp"

namespace replay_buffer::core {

// add() on a full FIFO buffer whose overflow policy is "error": nothing was written.
class BufferFullError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Per-call options and outputs of sample(). Pointers the buffer type does not fill stay untouched.
struct SampleRequest {
  std::size_t batch_size = 0;
  bool allow_partial = false;        // FIFO: return fewer rows than asked instead of failing
  double beta = 0.4;                 // prioritized: importance-sampling exponent
  std::int64_t* ids = nullptr;       // prioritized/uniform: opaque ids for update_priorities
  double* probabilities = nullptr;   // prioritized: P(i) of each sampled row
  double* masses = nullptr;          // prioritized: p_i^alpha, for callers that renormalize globally
  float* weights = nullptr;          // prioritized: importance-sampling weights
};

struct PriorityUpdateResult {
  std::size_t applied = 0;
  std::size_t stale = 0;
};

// Lifetime counters every buffer keeps (rows, not calls, except sample_calls).
struct BufferCounters {
  std::uint64_t total_adds = 0;
  std::uint64_t samples = 0;       // rows returned by sample()
  std::uint64_t sample_calls = 0;
  std::uint64_t evictions = 0;     // rows overwritten or dropped before anyone sampled them out (FIFO)
  std::uint64_t rejected = 0;      // rows refused by a full FIFO buffer (never stored)
  std::uint64_t priority_updates = 0;
  std::uint64_t stale_priority_updates = 0;
};

// stats(): the counters, plus the buffer's present state.
struct BufferStats : BufferCounters {
  std::size_t size = 0;
  std::size_t capacity = 0;
  std::size_t bytes_held = 0;      // payload bytes of the rows held now
  std::size_t bytes_reserved = 0;  // bytes of storage reserved at construction
  std::uint64_t add_p50_ns = 0, add_p99_ns = 0;
  std::uint64_t sample_p50_ns = 0, sample_p99_ns = 0;
  double total_priority = 0.0;     // prioritized: sum of p_i^alpha
  double min_priority = 0.0;       // prioritized: smallest positive p_i^alpha (0 when none)
  double max_priority = 0.0;       // prioritized: largest priority seen so far (given to new rows)
  std::size_t frames_held = 0;     // observation dedup: distinct frames stored
  std::size_t frame_bytes = 0;     // observation dedup: bytes per frame
};

// Everything but the rows needed to restore a buffer exactly (pickling, checkpoints).
struct BufferState {
  BufferCounters counters;
  double max_priority = 1.0;
  Random::State random{};
  std::vector<double> priorities;  // prioritized: per row, oldest first
  std::vector<std::int64_t> streams;  // observation dedup: each row's stream, oldest first
  std::size_t first_slot = 0;         // storage slot of the oldest row (for rows adopted in place)
};

class ReplayBufferInterface {
 public:
  virtual ~ReplayBufferInterface() = default;

  // Appends `count` rows; sources[c] points at `count` contiguous rows of column c. `priorities` is
  // null or holds `count` values (prioritized only; validated by the caller as finite and >= 0).
  virtual void add(const std::byte* const* sources, std::size_t count, const double* priorities) = 0;

  // add() with each row's stream id (`streams` null or `count` ids): buffers that use streams
  // (observation dedup, and decorators that pass them on) override it; the others ignore them.
  virtual void add_with_streams(const std::byte* const* sources, std::size_t count, const double* priorities, const std::int64_t* streams) {
    (void)streams;
    add(sources, count, priorities);
  }

  // Writes up to request.batch_size rows into destinations[c] (contiguous rows) and returns how many.
  virtual std::size_t sample(const SampleRequest& request, std::byte* const* destinations) = 0;

  // Prioritized only: sets the priority of each live id; stale ids are skipped and counted.
  virtual PriorityUpdateResult update_priorities(const std::int64_t* ids, const double* priorities, std::size_t count) {
    (void)ids; (void)priorities; (void)count;
    throw std::logic_error("update_priorities is only supported by the prioritized buffer");
  }

  // Sequence sampling: copies the rows of `count` ids into destinations[c] (contiguous rows, in
  // order), a row of zeros where an id is ~0 (padding). The caller guarantees every other id is live
  // (it serializes this with add). Ring buffers only; the others throw std::logic_error.
  virtual void gather_ids(const std::uint64_t* ids, std::size_t count, std::byte* const* destinations) const {
    (void)ids; (void)count; (void)destinations;
    throw std::logic_error("this buffer type does not read rows by id (sequence sampling needs 'uniform' or 'prioritized')");
  }

  virtual std::size_t size() const = 0;
  virtual std::size_t capacity() const = 0;
  virtual BufferStats stats() const = 0;

  // The newest min(newest_rows, size()) rows held, oldest of them first, into destinations[c] (the
  // caller sizes them), with the counters and the priorities of every row held: kAllRows for a whole
  // snapshot, fewer for an incremental checkpoint (every buffer keeps its rows as a suffix of the
  // insertion order, so a copy of the rows added since, plus the state, brings an older one up to
  // date). With destinations null, only the state (counters, priorities, first_slot) of file-backed
  // rows. O(exported rows + rows held for priorities).
  static constexpr std::size_t kAllRows = static_cast<std::size_t>(-1);
  virtual BufferState export_state(std::byte* const* destinations, std::size_t newest_rows) const = 0;
  // Replaces the contents with `rows` rows (oldest first) and the given state. With sources null, the
  // rows are already in storage (reopened file-backed columns), the oldest at state.first_slot.
  virtual void import_state(const BufferState& state, const std::byte* const* sources, std::size_t rows) = 0;

  // Before the first add: moves storage to `storage` (files, prefaulting). O(reservation) when prefaulting.
  virtual void configure_storage(const memory::StorageOptions& storage) = 0;
  // File-backed storage: waits until every row written so far is in the files.
  virtual void sync_storage() const = 0;

  // Whether add/sample latencies are recorded (the Python `collect_stats`; about 40 ns a call).
  void set_collect_stats(bool enabled) noexcept { collect_stats_.store(enabled, std::memory_order_relaxed); }
  bool collect_stats() const noexcept { return collect_stats_.load(std::memory_order_relaxed); }
  // Former names of the two above, kept for C++ code written against them.
  void set_monitoring(bool enabled) noexcept { set_collect_stats(enabled); }
  bool monitoring() const noexcept { return collect_stats(); }

 protected:
  // The fields of stats() every buffer fills alike.
  void fill_common(BufferStats& stats, std::size_t size, const memory::ColumnStore& store, const BufferCounters& counters) const noexcept {
    static_cast<BufferCounters&>(stats) = counters;
    stats.size = size;
    stats.capacity = store.capacity();
    std::size_t row_bytes = 0;
    for (std::size_t bytes : store.all_row_bytes()) row_bytes += bytes;
    stats.bytes_held = size * row_bytes;
    stats.bytes_reserved = store.bytes_reserved();
    fill_latencies(stats);
  }

  void fill_latencies(BufferStats& stats) const noexcept {
    stats.add_p50_ns = add_latency_.percentile(0.50);
    stats.add_p99_ns = add_latency_.percentile(0.99);
    stats.sample_p50_ns = sample_latency_.percentile(0.50);
    stats.sample_p99_ns = sample_latency_.percentile(0.99);
  }

  LatencyRecorder add_latency_;
  LatencyRecorder sample_latency_;
  std::atomic<bool> collect_stats_{true};  // relaxed: a switch, it orders no other memory
};

}  // namespace replay_buffer::core
