// A buffer that stores each observation frame once: a decorator over any ReplayBufferInterface.
//
// Transitions arrive in streams (one per writer or environment). Within a stream a transition's state
// is usually the previous transition's next_state, and with frame stacking a next_state is usually its
// state moved on by one new frame. The decorator keeps state and next_state as references into a
// reference-counted FramePool and hands the inner buffer every other column plus the row's sequence
// number (counting the rows it stores); a ring indexed by sequence number holds each row's frame
// references. Nothing is assumed of
// the streams: every reuse is checked byte for byte, so samples are exactly those of a plain buffer fed
// the same transitions, whatever happens at episode ends, truncations, resets or interleavings (a
// stack that starts an episode is stored as given, repeated frames once).
//
// Rows leave in insertion order in every buffer type (ring overwrite, FIFO read or eviction), so the
// rows the inner buffer no longer holds are always seq < rows stored - size; their references are
// dropped after each add and FIFO read. The pool is reserved for the worst case (every frame new, one
// full batch in flight) and touched only as frames live, so resident memory follows the data.
//
// With a FrameCodec (compressed_frames.hpp: state and next_state carry a codec) the pool only counts
// references and the codec keeps each frame's bytes compressed; reuse checks still compare the input
// with the previous stack, decoded. Samples and exports decode each distinct frame of a row once.
//
// Costs per row: add O(observation bytes) of compares plus one new frame copied in the steady state;
// sample O(observation bytes) of copies. With a codec, add also compresses each new frame and, when
// the stream's previous row came in an earlier call, decodes its next_state (K frames) to compare;
// sample decodes K + 1 frames per row in the steady state. Measured with LZ4 on 4 x 64 x 64 uint8
// stacks, one row per add (a loaded 2-core VM): add 7.1 us a row stacked on axis 0 (as without a
// codec), 14.9 us on axis -1 (11.5); sample 2.4 us and 5.9 us a row (2.9, 2.5); a quarter of the
// bytes (docs/compression.md, "Dedup and compression"). Concurrency: one data mutex serializes add,
// sample, stats and state export/import (rows share frames, so a read must not interleave with the
// add that frees them), the frames' decoding included; a writers' mutex serializes add and
// import_state, and an add compresses its new frames holding that one alone (see add). A writer
// waiting for the data mutex goes ahead of readers that come after it (lock_as_writer). Measured with
// Zstandard, 1,000-row adds beside a thread sampling 64 rows back to back: 128-135 adds/s and a sample
// p99 of 2.0-2.2 ms, against 77 adds/s and 9.2 ms with the frames compressed under the lock.
// Priority updates go straight to the inner buffer, which synchronizes itself. Failure contract: a method that throws (a full
// FIFO, out of memory) changed nothing: the frames staged for the call are released again.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/core/inner_columns.hpp"
#include "replay_buffer/dedup/frame_codec.hpp"
#include "replay_buffer/dedup/frame_layout.hpp"
#include "replay_buffer/dedup/frame_pool.hpp"
#include "replay_buffer/dedup/frame_store.hpp"

namespace replay_buffer::dedup {

struct ObservationColumns {
  std::size_t state = 0;
  std::size_t next_state = 0;
};

class DedupBuffer final : public core::ReplayBufferInterface {
 public:
  using InnerFactory = std::function<std::unique_ptr<core::ReplayBufferInterface>(std::vector<std::size_t> row_bytes)>;

  // row_bytes: the full schema (state and next_state included, both layout.stack_bytes() wide).
  // make_inner builds the wrapped buffer over the other columns plus one 8-byte sequence column.
  // codec: null (frames kept as they are) or where the frames' bytes are kept (compressed).
  DedupBuffer(std::size_t capacity, const std::vector<std::size_t>& row_bytes, ObservationColumns observations, FrameLayout layout,
              const InnerFactory& make_inner, std::unique_ptr<FrameCodec> codec = nullptr)
      : capacity_(capacity),
        observations_(observations),
        layout_(std::move(layout)),
        k_(layout_.frames()),
        ring_size_(2 * capacity),  // live rows and one batch of new rows never share a ring entry
        refs_(ring_size_ * 2 * k_),
        row_streams_(ring_size_),
        frames_(layout_, 4 * k_ * capacity, std::move(codec)),
        scratch_stack_(layout_.stack_bytes()),
        inner_columns_(row_bytes, [observations](std::size_t c) { return c != observations.state && c != observations.next_state; }) {
    if (capacity == 0) throw std::invalid_argument("capacity must be > 0");
    const std::size_t columns = row_bytes.size();
    if (observations.state >= columns || observations.next_state >= columns || observations.state == observations.next_state) {
      throw std::invalid_argument("dedup needs two distinct observation columns");
    }
    if (row_bytes[observations.state] != layout_.stack_bytes() || row_bytes[observations.next_state] != layout_.stack_bytes()) {
      throw std::invalid_argument("state and next_state must both be " + std::to_string(layout_.stack_bytes()) + " bytes per row");
    }
    inner_ = make_inner(inner_columns_.row_bytes());
    inner_->set_collect_stats(false);  // latencies are measured here, around the frame work too
  }

  void add(const std::byte* const* sources, std::size_t count, const double* priorities) override {
    add(sources, count, priorities, nullptr);
  }

  void add_with_streams(const std::byte* const* sources, std::size_t count, const double* priorities, const std::int64_t* streams) override {
    add(sources, count, priorities, streams);
  }

  // streams: null (every row from stream 0) or `count` stream ids, one per row.
  //
  // With a codec the call runs in three steps: under the data lock it stages the rows (reusing frames
  // and handing out slots for new ones), then it compresses the new frames holding only the writers'
  // lock, so samples and other readers go on meanwhile, then under the data lock again it commits
  // them and hands the rows to the inner buffer. Readers see none of the call's rows before that:
  // they read only rows the inner buffer holds, and a FIFO read meanwhile can release only older rows
  // (whose shared frames the new rows have retained).
  void add(const std::byte* const* sources, std::size_t count, const double* priorities, const std::int64_t* streams) {
    if (count == 0) return;
    std::lock_guard add_lock(add_mutex_);
    std::unique_lock lock(mutex_, std::defer_lock);
    lock_as_writer(lock);
    core::ScopedTimer timer(add_latency_, collect_stats());
    // Of a batch longer than the buffer only the newest `capacity_` rows survive; the inner buffer
    // skips (and counts) the others, and they get no frames.
    const std::size_t skipped = count > capacity_ ? count - capacity_ : 0;
    const std::uint64_t first = next_seq_;
    ++call_;
    undo_.clear();
    std::size_t staged = 0;
    try {
      add_sequence_numbers_.assign(count, 0);  // skipped rows are never stored: their number is moot
      for (std::size_t i = skipped; i < count; ++i, ++staged) {
        add_sequence_numbers_[i] = first + staged;
        stage_row(sources, i, streams != nullptr ? streams[i] : 0, add_sequence_numbers_[i]);
      }
      if (frames_.has_pending()) {
        lock.unlock();
        frames_.compress_pending();
        lock_as_writer(lock);
        frames_.commit_pending();
      }
      inner_->add(inner_columns_.sources(sources, add_sequence_numbers_.data()).data(), count, priorities);
    } catch (...) {  // e.g. a full FIFO refusing the batch: undo the staging, so nothing changed
      if (!lock.owns_lock()) lock_as_writer(lock);
      frames_.discard_pending();
      for (std::size_t i = staged; i-- > 0;) release_row(first + i);
      for (auto entry = undo_.rbegin(); entry != undo_.rend(); ++entry) {
        // A FIFO read while the frames were compressed may have released the previous tail's row.
        if (entry->previous && entry->previous->last_seq >= released_upto_) {
          streams_[entry->stream] = *entry->previous;
        } else {
          streams_.erase(entry->stream);
        }
      }
      throw;
    }
    next_seq_ = first + staged;
    const std::uint64_t oldest = next_seq_ - inner_->size();
    release_rows(released_upto_, oldest);
    released_upto_ = std::max(released_upto_, oldest);
  }

  // Sequence sampling: the inner rows of the ids (its ids are this buffer's), observations rebuilt
  // from their frames; padding ids (~0) give zeros in every column. The caller serializes with add.
  void gather_ids(const std::uint64_t* ids, std::size_t count, std::byte* const* destinations) const override {
    const auto lock = read_lock();
    std::vector<std::uint64_t> sequence_numbers(count);
    inner_->gather_ids(ids, count, inner_columns_.destinations(destinations, sequence_numbers.data()).data());
    const std::size_t bytes = layout_.stack_bytes();
    for (std::size_t i = 0; i < count; ++i) {
      std::byte* state = destinations[observations_.state] + i * bytes;
      std::byte* next_state = destinations[observations_.next_state] + i * bytes;
      if (ids[i] == ~std::uint64_t{0}) {
        std::memset(state, 0, bytes);
        std::memset(next_state, 0, bytes);
        continue;
      }
      frames_.restore_row(row_refs(sequence_numbers[i]), state, next_state);
    }
  }

  std::size_t sample(const core::SampleRequest& request, std::byte* const* destinations) override {
    const auto lock = read_lock();
    core::ScopedTimer timer(sample_latency_, collect_stats());
    sequence_numbers_.resize(request.batch_size);
    const std::size_t n = inner_->sample(request, inner_columns_.destinations(destinations, sequence_numbers_.data()).data());
    const std::size_t bytes = layout_.stack_bytes();
    for (std::size_t i = 0; i < n; ++i) {
      if (i + 1 < n) frames_.prefetch_row(row_refs(sequence_numbers_[i + 1]));
      frames_.restore_row(row_refs(sequence_numbers_[i]), destinations[observations_.state] + i * bytes, destinations[observations_.next_state] + i * bytes);
    }
    const std::uint64_t oldest = next_seq_ - inner_->size();  // a FIFO read consumed rows
    release_rows(released_upto_, oldest);
    released_upto_ = std::max(released_upto_, oldest);
    return n;
  }

  core::PriorityUpdateResult update_priorities(const std::int64_t* ids, const double* priorities, std::size_t count) override {
    return inner_->update_priorities(ids, priorities, count);
  }
  std::size_t size() const override { return inner_->size(); }
  std::size_t capacity() const override { return capacity_; }

  core::BufferStats stats() const override {
    const auto lock = read_lock();
    core::BufferStats s = inner_->stats();
    s.bytes_reserved += refs_.size() * sizeof(FramePool::Slot) + row_streams_.size() * sizeof(std::int64_t);
    frames_.add_stats(s);
    fill_latencies(s);
    return s;
  }

  // The frames' compression (none without a codec).
  std::optional<FrameCodecStats> frame_codec_stats() const {
    const auto lock = read_lock();
    return frames_.codec_stats();
  }

  // state.streams: the stream of each exported row.
  core::BufferState export_state(std::byte* const* destinations, std::size_t newest_rows) const override {
    if (destinations == nullptr) throw std::invalid_argument("a dedup buffer's rows are not file-backed");
    const auto lock = read_lock();
    const std::size_t rows = std::min(newest_rows, inner_->size());
    std::vector<std::uint64_t> sequence_numbers(rows);
    core::BufferState state = inner_->export_state(inner_columns_.destinations(destinations, sequence_numbers.data()).data(), rows);
    state.streams.resize(rows);
    const std::size_t bytes = layout_.stack_bytes();
    for (std::size_t i = 0; i < rows; ++i) {
      frames_.restore_row(row_refs(sequence_numbers[i]), destinations[observations_.state] + i * bytes, destinations[observations_.next_state] + i * bytes);
      state.streams[i] = row_streams_[sequence_numbers[i] % ring_size_];
    }
    return state;
  }

  // For a fresh buffer. state.streams holds each row's stream (empty: all stream 0).
  void import_state(const core::BufferState& state, const std::byte* const* sources, std::size_t rows) override {
    if (rows > capacity_ || rows > state.counters.total_adds) {
      throw std::invalid_argument("state holds " + std::to_string(rows) + " rows, more than the capacity or the add count allow");
    }
    if (!state.streams.empty() && state.streams.size() != rows) throw std::invalid_argument("state must hold one stream per row");
    if (sources == nullptr) throw std::invalid_argument("a dedup buffer's rows cannot be adopted in place");
    std::lock_guard add_lock(add_mutex_);
    std::unique_lock lock(mutex_, std::defer_lock);
    lock_as_writer(lock);
    clear_frames();
    ++call_;
    try {
      for (std::size_t i = 0; i < rows; ++i) stage_row(sources, i, state.streams.empty() ? 0 : state.streams[i], i);
      if (frames_.has_pending()) {
        frames_.compress_pending();
        frames_.commit_pending();
      }
      add_sequence_numbers_.resize(rows);
      for (std::size_t i = 0; i < rows; ++i) add_sequence_numbers_[i] = i;
      inner_->import_state(state, inner_columns_.sources(sources, add_sequence_numbers_.data()).data(), rows);
    } catch (...) {
      frames_.discard_pending();
      clear_frames();
      throw;
    }
    next_seq_ = rows;
    released_upto_ = 0;
  }

  // Prefaulting applies to the inner buffer's columns; frames are not file-backed (yet).
  void configure_storage(const memory::StorageOptions& storage) override {
    if (!storage.directory.empty()) throw std::invalid_argument("file-backed storage does not combine with observation dedup");
    inner_->configure_storage(storage);
  }
  void sync_storage() const override { inner_->sync_storage(); }

 private:
  struct StreamTail {
    std::uint64_t last_seq = 0;             // the stream's newest row (always still held)
    std::uint64_t call = 0;                 // the add call that wrote it
    const std::byte* next_input = nullptr;  // its next_state in that call's input (valid during that call only)
    std::uint64_t undo_call = 0;            // the last call that saved this tail for undo
  };
  struct UndoEntry {
    std::int64_t stream;
    std::optional<StreamTail> previous;  // none: the stream was new
  };

  // The data lock for a writer, ahead of readers: a reader that samples back to back re-takes an
  // unfair mutex within microseconds of releasing it, before a woken writer runs (measured: an add of
  // 1,000 rows that takes the lock twice waited up to 250 ms behind a sampling loop). Readers hold
  // back while a writer waits (read_lock); the writer holds the lock for its staging or its commit.
  void lock_as_writer(std::unique_lock<std::mutex>& lock) {
    writers_waiting_.fetch_add(1, std::memory_order_relaxed);  // relaxed: a hint; the mutexes order the data
    lock.lock();
    {
      std::lock_guard gate(gate_mutex_);
      writers_waiting_.fetch_sub(1, std::memory_order_relaxed);
    }
    gate_.notify_all();
  }
  // The data lock for a reader: first waits while a writer waits for it (one relaxed load when none does).
  std::unique_lock<std::mutex> read_lock() const {
    if (writers_waiting_.load(std::memory_order_relaxed) != 0) {
      std::unique_lock gate(gate_mutex_);
      gate_.wait(gate, [this] { return writers_waiting_.load(std::memory_order_relaxed) == 0; });
    }
    return std::unique_lock(mutex_);
  }

  static constexpr FramePool::Slot kNoSlot = UINT32_MAX;  // a ref not filled yet (the pool never hands it out)

  FramePool::Slot* row_refs(std::uint64_t seq) noexcept { return refs_.data() + (seq % ring_size_) * 2 * k_; }
  const FramePool::Slot* row_refs(std::uint64_t seq) const noexcept { return refs_.data() + (seq % ring_size_) * 2 * k_; }

  // Gives row i of the input frame references for its state and next_state, reusing frames it can.
  void stage_row(const std::byte* const* sources, std::size_t i, std::int64_t stream, std::uint64_t seq) {
    const std::size_t bytes = layout_.stack_bytes();
    const std::byte* state = sources[observations_.state] + i * bytes;
    const std::byte* next = sources[observations_.next_state] + i * bytes;
    auto [entry, is_new] = streams_.try_emplace(stream);
    StreamTail& tail = entry->second;
    if (tail.undo_call != call_) {
      undo_.push_back({stream, is_new ? std::nullopt : std::optional<StreamTail>(tail)});
      tail.undo_call = call_;
    }
    FramePool::Slot* state_refs = row_refs(seq);
    row_streams_[seq % ring_size_] = stream;
    std::fill(state_refs, state_refs + 2 * k_, kNoSlot);
    try {
      stage_frames(state, next, is_new, tail, state_refs);
    } catch (...) {  // out of memory or a frame that does not decode: drop this row's frames, so nothing changed
      for (std::size_t j = 0; j < 2 * k_; ++j) {
        if (state_refs[j] != kNoSlot) frames_.release(state_refs[j]);
      }
      throw;
    }
    tail.last_seq = seq;
    tail.call = call_;
    tail.next_input = next;
  }

  void stage_frames(const std::byte* state, const std::byte* next, bool is_new, const StreamTail& tail, FramePool::Slot* state_refs) {
    const std::size_t bytes = layout_.stack_bytes();
    FramePool::Slot* next_refs = state_refs + k_;

    bool linked = false;  // state == the stream's previous next_state
    if (!is_new) {
      const FramePool::Slot* previous = row_refs(tail.last_seq) + k_;
      if (tail.call == call_) {
        linked = std::memcmp(state, tail.next_input, bytes) == 0;
      } else {
        frames_.assemble(previous, scratch_stack_.data());
        linked = std::memcmp(state, scratch_stack_.data(), bytes) == 0;
      }
      if (linked) {
        for (std::size_t j = 0; j < k_; ++j) frames_.retain(state_refs[j] = previous[j]);
      }
    }
    if (!linked) frames_.store_stack(state, state_refs);

    if (layout_.shifted_by_one(next, state)) {
      for (std::size_t j = 0; j + 1 < k_; ++j) frames_.retain(next_refs[j] = state_refs[j + 1]);
      next_refs[k_ - 1] = frames_.store_frame(next, k_ - 1);
    } else {
      frames_.store_stack(next, next_refs);
    }
  }

  void release_row(std::uint64_t seq) noexcept {
    const FramePool::Slot* refs = row_refs(seq);
    for (std::size_t j = 0; j < 2 * k_; ++j) frames_.release(refs[j]);
  }

  void clear_frames() noexcept {
    frames_.clear();
    streams_.clear();
  }

  // Drops the frames of rows [begin, end), which the inner buffer no longer holds, and forgets streams
  // whose newest row that was.
  void release_rows(std::uint64_t begin, std::uint64_t end) noexcept {
    for (std::uint64_t seq = begin; seq < end; ++seq) {
      release_row(seq);
      const auto tail = streams_.find(row_streams_[seq % ring_size_]);
      if (tail != streams_.end() && tail->second.last_seq == seq) streams_.erase(tail);
    }
  }

  const std::size_t capacity_;
  const ObservationColumns observations_;
  const FrameLayout layout_;
  const std::size_t k_;
  const std::size_t ring_size_;
  std::unique_ptr<core::ReplayBufferInterface> inner_;

  std::mutex add_mutex_;      // serializes writers (add, import_state): held across a call's steps
  mutable std::mutex gate_mutex_;  // read_lock's wait for writers_waiting_ to reach 0
  mutable std::condition_variable gate_;
  std::atomic<unsigned> writers_waiting_{0};
  mutable std::mutex mutex_;  // guards everything below (the frames' pending list: see FrameStore)
  std::vector<FramePool::Slot> refs_;      // per ring entry: K state refs, then K next_state refs
  std::vector<std::int64_t> row_streams_;  // per ring entry: the row's stream
  FrameStore frames_;
  std::unordered_map<std::int64_t, StreamTail> streams_;  // streams with a row still held
  std::vector<UndoEntry> undo_;
  std::uint64_t next_seq_ = 0;       // sequence number of the next row stored
  std::uint64_t released_upto_ = 0;  // rows below this have had their frames released
  std::uint64_t call_ = 0;
  std::vector<std::uint64_t> add_sequence_numbers_;  // a writer's (under add_mutex_: an add unlocks mutex_ midway)
  std::vector<std::uint64_t> sequence_numbers_;      // sample()'s
  std::vector<std::byte> scratch_stack_;
  const core::InnerColumns inner_columns_;  // every column but state and next_state, then the sequence number
};

}  // namespace replay_buffer::dedup
