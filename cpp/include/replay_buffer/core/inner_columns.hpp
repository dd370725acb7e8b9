// The columns a decorator (DedupBuffer, CompressedBuffer) leaves to the buffer it wraps.
//
// A decorator keeps some columns of the full schema itself (frames, compressed blobs) and hands the
// inner buffer every other column plus the row's sequence number, as the inner buffer's last 8-byte
// column: the sequence number is what the decorator's own per-row ring is indexed by. InnerColumns
// maps the full schema's column pointers to the inner buffer's, once per call.
//
// Cost: sources() and destinations() build one small vector (inner columns + 1 pointers) per call.
// Immutable after construction, so any number of threads may use one InnerColumns at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace replay_buffer::core {

class InnerColumns {
 public:
  // row_bytes: the full schema; keep(c) says whether column c of it goes to the inner buffer.
  template <class Keep>
  InnerColumns(const std::vector<std::size_t>& row_bytes, Keep keep) {
    for (std::size_t c = 0; c < row_bytes.size(); ++c) {
      if (!keep(c)) continue;
      columns_.push_back(c);
      row_bytes_.push_back(row_bytes[c]);
    }
    row_bytes_.push_back(sizeof(std::uint64_t));  // the row's sequence number, last
  }

  // The inner buffer's schema: the kept columns' row sizes, then 8 bytes of sequence number.
  const std::vector<std::size_t>& row_bytes() const noexcept { return row_bytes_; }

  // Column pointers for the inner buffer's add / import: the kept columns, then the sequence numbers.
  std::vector<const std::byte*> sources(const std::byte* const* sources, const std::uint64_t* sequence_numbers) const {
    std::vector<const std::byte*> result;
    result.reserve(columns_.size() + 1);
    for (std::size_t c : columns_) result.push_back(sources[c]);
    result.push_back(reinterpret_cast<const std::byte*>(sequence_numbers));
    return result;
  }

  // Column pointers for the inner buffer's sample / export / gather: the same, writable.
  std::vector<std::byte*> destinations(std::byte* const* destinations, std::uint64_t* sequence_numbers) const {
    std::vector<std::byte*> result;
    result.reserve(columns_.size() + 1);
    for (std::size_t c : columns_) result.push_back(destinations == nullptr ? nullptr : destinations[c]);
    result.push_back(reinterpret_cast<std::byte*>(sequence_numbers));
    return result;
  }

 private:
  std::vector<std::size_t> columns_;    // full-schema index of each inner column but the last
  std::vector<std::size_t> row_bytes_;  // the inner schema, sequence column included
};

}  // namespace replay_buffer::core
