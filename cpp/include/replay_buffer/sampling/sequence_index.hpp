// Stream links of the rows of a ring of `capacity` rows, for sampling sequences (R2D2, Dreamer).
//
// Rows of many streams (writers, environments) interleave in the ring, so the row after id i is in
// general another stream's. The index keeps, per slot, the id of the same stream's next row in the
// same episode (kNone until it arrives, or for ever after the row that ends an episode), whether the
// row ends its episode (done or truncated) and its step within the episode. A row's id is its
// insertion number, exactly as the ring buffers number rows: row `id` lives in slot id % capacity and
// is live while total - min(total, capacity) <= id < total.
//
// Contract: every row the ring stores is recorded here, in the ring's order, and nothing else (the
// caller serializes the ring's add with record()). Links only ever point forward (to newer rows), and
// the ring evicts oldest first, so a live row's successors are live: a sequence is cut only by an
// episode end, by the end of what was added so far, or by seq_len.
//
// Costs: record O(count) (one hash lookup per row, skipped while the stream repeats); walk O(length).
// Memory: 24 bytes per slot, plus one map entry per stream seen (pruned of streams whose last row has
// left the ring once the map grows past the capacity). Not synchronized: the caller locks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace replay_buffer::sampling {

class SequenceIndex {
 public:
  static constexpr std::uint64_t kNone = ~std::uint64_t{0};

  explicit SequenceIndex(std::size_t capacity)
      : capacity_(capacity), slots_(capacity) {
    if (capacity == 0) throw std::invalid_argument("capacity must be > 0");
  }

  // Records the rows total()..total()+count-1. streams: null (every row in stream 0) or `count` ids;
  // ends: `count` flags, nonzero where the row ends its episode. steps: null (counted here: 0 at an
  // episode's first row) or `count` given steps (restoring a saved index).
  void record(std::size_t count, const std::int64_t* streams, const std::uint8_t* ends, const std::uint32_t* steps = nullptr) {
    std::size_t slot = static_cast<std::size_t>(total_ % capacity_);  // the one division; then slot by slot
    for (std::size_t i = 0; i < count; ++i) {
      const std::uint64_t id = total_ + i;
      const std::int64_t stream = streams != nullptr ? streams[i] : 0;
      Last& last = lookup(stream);
      std::uint32_t step = 0;
      if (last.id != kNone && !last.ended) {
        if (id - last.id < capacity_) slots_[last.slot].next = id;  // the previous row is still held
        step = last.step + 1;
      }
      if (steps != nullptr) step = steps[i];
      const bool ended = ends[i] != 0;
      slots_[slot] = Slot{kNone, stream, step, static_cast<std::uint8_t>(ended)};
      last = Last{id, slot, step, ended};
      if (++slot == capacity_) slot = 0;
    }
    total_ += count;
    if (last_.size() > capacity_ + 64) prune();
  }

  // Starts over empty with `total` rows already counted (the ids restored rows continue from).
  void reset(std::uint64_t total) {
    for (Slot& s : slots_) s.next = kNone;
    last_.clear();
    cached_ = nullptr;
    total_ = total;
  }

  std::uint64_t total() const noexcept { return total_; }
  std::uint64_t oldest() const noexcept { return total_ - std::min<std::uint64_t>(total_, capacity_); }
  bool live(std::uint64_t id) const noexcept { return id < total_ && id >= oldest(); }

  // Writes the ids of the sequence starting at `start` into ids[0..length): start, then the same
  // stream's next rows, up to and including the row that ends the episode, at most seq_len (>= 1).
  // Returns the length: 0 when start is not live. O(length).
  std::size_t walk(std::uint64_t start, std::size_t seq_len, std::uint64_t* ids) const noexcept {
    if (!live(start)) return 0;
    std::uint64_t id = start;
    std::size_t slot = static_cast<std::size_t>(id % capacity_);  // the one division; then slots move by id deltas
    std::size_t length = 0;
    for (;;) {
      ids[length++] = id;
      if (length == seq_len) break;
      const std::uint64_t next = slots_[slot].next;
      if (slots_[slot].end != 0 || next == kNone || !live(next)) break;
      slot += static_cast<std::size_t>(next - id);  // < capacity: a link joins two rows held at once
      if (slot >= capacity_) slot -= capacity_;
      id = next;
    }
    return length;
  }

  // Starts loading the first records a walk from `start` reads (a sample prefetches all its starts
  // before walking any, so their cache misses overlap).
  void prefetch(std::uint64_t start) const noexcept {
    const auto* first = reinterpret_cast<const char*>(slots_.data() + start % capacity_);
    for (int line = 0; line < 4; ++line) __builtin_prefetch(first + line * 64);
  }

  // Of a live id: its stream, and its step within its episode.
  std::int64_t stream(std::uint64_t id) const noexcept { return slots_[id % capacity_].stream; }
  std::uint32_t step(std::uint64_t id) const noexcept { return slots_[id % capacity_].step; }

 private:
  struct Slot {  // one per ring slot, together: an add writes one 24-byte record per row
    std::uint64_t next = kNone;  // the stream's next row in the same episode, once it arrives
    std::int64_t stream = 0;
    std::uint32_t step = 0;      // within the episode
    std::uint8_t end = 0;        // the row ends its episode
  };

  struct Last {
    std::uint64_t id = kNone;  // the stream's newest row
    std::size_t slot = 0;      // and its slot
    std::uint32_t step = 0;
    bool ended = false;        // it ended its episode: the stream's next row starts a new one
  };

  Last& lookup(std::int64_t stream) {
    if (cached_ == nullptr || cached_stream_ != stream) {
      cached_ = &last_[stream];  // references into an unordered_map stay valid until erase
      cached_stream_ = stream;
    }
    return *cached_;
  }

  // Drops the streams whose newest row has left the ring (they link to nothing any more).
  void prune() {
    const std::uint64_t oldest_id = oldest();
    for (auto it = last_.begin(); it != last_.end();) {
      it = it->second.id < oldest_id ? last_.erase(it) : std::next(it);
    }
    cached_ = nullptr;
  }

  std::size_t capacity_;
  std::uint64_t total_ = 0;
  std::vector<Slot> slots_;
  std::unordered_map<std::int64_t, Last> last_;
  Last* cached_ = nullptr;
  std::int64_t cached_stream_ = 0;
};

}  // namespace replay_buffer::sampling
