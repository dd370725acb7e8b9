// A buffer that keeps chosen columns compressed: a decorator over any ReplayBufferInterface.
//
// Each column with a codec is compressed row by row on the writer's side of add() (in parallel over
// the rows of a large batch) and kept in a BlobLog; the inner buffer gets every other column plus the
// row's sequence number (counting the rows stored), and a ring indexed by sequence number holds each
// row's BlobRef per compressed column. A row that does not shrink is stored raw (its BlobRef's length
// is the row's size). sample() decompresses straight into the caller's output rows.
//
// As in DedupBuffer, rows leave the inner buffer in insertion order in every buffer type, so the rows
// it no longer holds are always seq < rows stored - size: their blobs are released after each add and
// FIFO read. Of a batch longer than the capacity only the newest `capacity` rows are compressed.
//
// Concurrency: compression runs under add_mutex_ only (adds are serialized, samples go on meanwhile);
// storing the blobs, the inner add, sampling, stats and state export/import run under mutex_ (a read
// must not interleave with the add that releases its blobs), so a lock-free inner buffer is
// serialized here too. Failure contract: a method that throws has changed nothing (blobs staged for
// a batch the inner buffer refused are released again).
//
// Costs per row: add O(compressed columns' bytes) of compression plus a copy of the compressed bytes;
// sample O(the same) of decompression. Memory: the compressed bytes held, packed (see BlobLog), plus
// 12 bytes per row and compressed column for the refs ring (2 x capacity entries).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "replay_buffer/compression/batch_compressor.hpp"
#include "replay_buffer/compression/blob_log.hpp"
#include "replay_buffer/compression/codec.hpp"
#include "replay_buffer/compression/row_pool.hpp"
#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/core/inner_columns.hpp"

namespace replay_buffer::compression {

// Per compressed column: what stats() reports.
struct ColumnCompressionStats {
  std::size_t column = 0;          // index in the full schema
  std::size_t bytes_held = 0;      // stored bytes of the rows held (compressed, or raw where that did not pay)
  std::size_t rows_stored_raw = 0;  // rows held that did not shrink
};

// Compressed rows as they are stored, for state export/import without recompressing: per compressed
// column, each row's stored length (== the row's size: stored raw) and the rows' bytes back to back.
struct StoredColumn {
  std::vector<std::uint32_t> lengths;
  std::vector<std::byte> data;
};
struct StoredColumnView {
  const std::uint32_t* lengths = nullptr;  // one per row
  const std::byte* data = nullptr;
  std::size_t data_bytes = 0;              // must equal the sum of lengths
};

class CompressedBuffer final : public core::ReplayBufferInterface {
 public:
  using InnerFactory = std::function<std::unique_ptr<core::ReplayBufferInterface>(std::vector<std::size_t> row_bytes)>;
  static constexpr std::size_t kParallelBytes = BatchCompressor::kParallelBytes;
  // A sample is decompressed in parallel (RowPool) when its compressed columns hold this many bytes.
  static constexpr std::size_t kParallelDecodeBytes = std::size_t{64} << 10;

  // row_bytes and codecs: the full schema, one codec per column (CodecKind::kNone: kept in the inner
  // buffer as is). make_inner builds the wrapped buffer over the other columns plus one 8-byte sequence column.
  CompressedBuffer(std::size_t capacity, const std::vector<std::size_t>& row_bytes, const std::vector<Codec>& codecs, const InnerFactory& make_inner,
                   std::size_t threads = 0)
      : capacity_(capacity), ring_size_(2 * capacity), row_bytes_(row_bytes), codecs_(codecs),
        compressed_columns_(compressed_columns(row_bytes, codecs)),
        inner_columns_(row_bytes, [&codecs](std::size_t c) { return !codecs[c].enabled(); }),
        compressor_(compressed_columns_, row_bytes, codecs, threads), log_(max_compressed_bytes(row_bytes, compressed_columns_)) {
    if (capacity == 0) throw std::invalid_argument("capacity must be > 0");
    for (std::size_t c : compressed_columns_) compressed_row_bytes_ += row_bytes[c];
    column_stats_.resize(compressed_columns_.size());
    for (std::size_t k = 0; k < compressed_columns_.size(); ++k) column_stats_[k].column = compressed_columns_[k];
    refs_.resize(ring_size_ * compressed_columns_.size());
    inner_ = make_inner(inner_columns_.row_bytes());
    inner_->set_collect_stats(false);  // latencies are measured here, around the codec work too
  }

  void add(const std::byte* const* sources, std::size_t count, const double* priorities) override {
    add_with_streams(sources, count, priorities, nullptr);
  }

  void add_with_streams(const std::byte* const* sources, std::size_t count, const double* priorities, const std::int64_t* streams) override {
    if (count == 0) return;
    std::lock_guard add_lock(add_mutex_);
    core::ScopedTimer timer(add_latency_, collect_stats());
    const std::size_t skipped = count > capacity_ ? count - capacity_ : 0;
    compressor_.compress(sources, skipped, count);
    std::lock_guard lock(mutex_);
    const std::uint64_t first = next_seq_;
    sequence_numbers_.assign(count, 0);  // skipped rows are never stored: their number is moot
    std::size_t staged = 0;
    try {
      for (std::size_t i = skipped; i < count; ++i, ++staged) {
        sequence_numbers_[i] = first + staged;
        store_row(sources, i, i - skipped, first + staged);
      }
      inner_->add_with_streams(inner_columns_.sources(sources, sequence_numbers_.data()).data(), count, priorities, streams);
    } catch (...) {  // e.g. a full FIFO refusing the batch: drop the staged blobs, so nothing changed
      for (std::size_t i = staged; i-- > 0;) release_row(first + i);
      throw;
    }
    next_seq_ = first + staged;
    release_consumed();
  }

  std::size_t sample(const core::SampleRequest& request, std::byte* const* destinations) override {
    std::lock_guard lock(mutex_);
    core::ScopedTimer timer(sample_latency_, collect_stats());
    sample_seqs_.resize(request.batch_size);
    const std::size_t n = inner_->sample(request, inner_columns_.destinations(destinations, sample_seqs_.data()).data());
    if (n * compressed_row_bytes_ >= kParallelDecodeBytes && decoders_.workers() > 1) {
      auto decode = [&](std::size_t worker, std::size_t i) { restore_row(sample_seqs_[i], destinations, i, decode_contexts_[worker]); };
      decoders_.run(n, decode);
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        if (i + 1 < n) prefetch_row(sample_seqs_[i + 1]);
        restore_row(sample_seqs_[i], destinations, i, decode_contexts_[0]);
      }
    }
    release_consumed();  // a FIFO read consumed rows
    return n;
  }

  core::PriorityUpdateResult update_priorities(const std::int64_t* ids, const double* priorities, std::size_t count) override {
    return inner_->update_priorities(ids, priorities, count);
  }
  std::size_t size() const override { return inner_->size(); }
  std::size_t capacity() const override { return capacity_; }

  core::BufferStats stats() const override {
    std::lock_guard lock(mutex_);
    core::BufferStats s = inner_->stats();
    s.bytes_held += log_.bytes_held();
    s.bytes_reserved += log_.bytes_reserved() + refs_.size() * sizeof(BlobRef);
    fill_latencies(s);
    return s;
  }

  // Sequence sampling: the inner buffer gathers the other columns and each row's sequence number, the
  // compressed columns are decompressed straight into the destinations; an id of ~0 (padding) gives
  // a row of zeros. The caller guarantees the other ids are live (it serializes this with add).
  // O(count x compressed bytes) of decompression.
  void gather_ids(const std::uint64_t* ids, std::size_t count, std::byte* const* destinations) const override {
    std::lock_guard lock(mutex_);
    std::vector<std::uint64_t> seqs(count);
    inner_->gather_ids(ids, count, inner_columns_.destinations(destinations, seqs.data()).data());
    for (std::size_t i = 0; i < count; ++i) {
      if (ids[i] != ~std::uint64_t{0}) {
        if (i + 1 < count && ids[i + 1] != ~std::uint64_t{0}) prefetch_row(seqs[i + 1]);
        restore_row(seqs[i], destinations, i, export_context_);
        continue;
      }
      for (std::size_t c : compressed_columns_) std::memset(destinations[c] + i * row_bytes_[c], 0, row_bytes_[c]);
    }
  }

  std::vector<ColumnCompressionStats> compression_stats() const {
    std::lock_guard lock(mutex_);
    return column_stats_;
  }

  // Rows come out decompressed (get_state, save, checkpoints see plain rows).
  core::BufferState export_state(std::byte* const* destinations, std::size_t newest_rows) const override {
    if (destinations == nullptr) throw std::invalid_argument("a compressed buffer's rows are not file-backed");
    std::lock_guard lock(mutex_);
    const std::size_t rows = std::min(newest_rows, inner_->size());
    std::vector<std::uint64_t> seqs(rows);
    core::BufferState state = inner_->export_state(inner_columns_.destinations(destinations, seqs.data()).data(), rows);
    for (std::size_t i = 0; i < rows; ++i) restore_row(seqs[i], destinations, i, export_context_);
    return state;
  }

  // export_state, but the compressed columns come out as stored (into `stored`, one entry per
  // compressed column in schema order; their destinations are not touched and may be null).
  core::BufferState export_stored(std::byte* const* destinations, std::size_t newest_rows, std::vector<StoredColumn>& stored) const {
    std::lock_guard lock(mutex_);
    const std::size_t rows = std::min(newest_rows, inner_->size());
    std::vector<std::uint64_t> seqs(rows);
    core::BufferState state = inner_->export_state(inner_columns_.destinations(destinations, seqs.data()).data(), rows);
    stored.assign(compressed_columns_.size(), {});
    for (std::size_t k = 0; k < compressed_columns_.size(); ++k) {
      std::size_t total = 0;
      for (std::size_t i = 0; i < rows; ++i) total += ref(seqs[i], k).length;
      stored[k].lengths.resize(rows);
      stored[k].data.resize(total);
      std::size_t offset = 0;
      for (std::size_t i = 0; i < rows; ++i) {
        const BlobRef& blob = ref(seqs[i], k);
        stored[k].lengths[i] = blob.length;
        std::memcpy(stored[k].data.data() + offset, log_.data(blob), blob.length);
        offset += blob.length;
      }
    }
    return state;
  }

  // import_state from rows as export_stored gave them: the compressed columns come from `stored`
  // (their sources are ignored) and are kept as they are, after every row has been checked to decode
  // to exactly its size. Hostile input throws std::invalid_argument naming the column (schema index)
  // and row, and changes nothing. O(rows x compressed bytes) to check, no recompression.
  void import_stored(const core::BufferState& state, const std::byte* const* sources, const std::vector<StoredColumnView>& stored, std::size_t rows) {
    check_rows(state, rows);
    std::lock_guard add_lock(add_mutex_);
    const auto offsets = check_stored(stored, rows);
    replace_rows(state, sources, rows, [&](std::size_t i) { store_stored_row(stored, offsets, i, i); });
  }

  // add_with_streams, but the compressed columns arrive as stored (export_stored's form, e.g. rows a
  // writer compressed before sending them): checked as import_stored checks them (a bad row throws
  // std::invalid_argument naming the column and row, and nothing changes), then kept as they are; the
  // sources of the compressed columns are ignored. Cost: one decompression per stored row to check it
  // (LZ4 decodes at several GB/s: far less than compressing it here), plus the copy into the log.
  void add_stored(const std::byte* const* sources, const std::vector<StoredColumnView>& stored, std::size_t count, const double* priorities,
                  const std::int64_t* streams) {
    std::lock_guard add_lock(add_mutex_);
    const auto offsets = check_stored(stored, count);
    if (count == 0) return;
    core::ScopedTimer timer(add_latency_, collect_stats());
    const std::size_t skipped = count > capacity_ ? count - capacity_ : 0;
    std::lock_guard lock(mutex_);
    const std::uint64_t first = next_seq_;
    sequence_numbers_.assign(count, 0);
    std::size_t staged = 0;
    try {
      for (std::size_t i = skipped; i < count; ++i, ++staged) {
        sequence_numbers_[i] = first + staged;
        store_stored_row(stored, offsets, i, first + staged);
      }
      inner_->add_with_streams(inner_columns_.sources(sources, sequence_numbers_.data()).data(), count, priorities, streams);
    } catch (...) {
      for (std::size_t i = staged; i-- > 0;) release_row(first + i);
      throw;
    }
    next_seq_ = first + staged;
    release_consumed();
  }

  // For a fresh buffer (or to replace the contents): compresses the rows again.
  void import_state(const core::BufferState& state, const std::byte* const* sources, std::size_t rows) override {
    check_rows(state, rows);
    if (sources == nullptr) throw std::invalid_argument("a compressed buffer's rows cannot be adopted in place");
    std::lock_guard add_lock(add_mutex_);
    compressor_.compress(sources, 0, rows);
    replace_rows(state, sources, rows, [&](std::size_t i) { store_row(sources, i, i, i); });
  }

  // Prefaulting applies to the inner buffer's columns; compressed rows are not file-backed.
  void configure_storage(const memory::StorageOptions& storage) override {
    if (!storage.directory.empty()) throw std::invalid_argument("file-backed storage does not combine with compressed fields");
    inner_->configure_storage(storage);
  }
  void sync_storage() const override { inner_->sync_storage(); }

 private:
  // The full-schema index of each column with a codec; throws unless there is one, and one codec per column.
  static std::vector<std::size_t> compressed_columns(const std::vector<std::size_t>& row_bytes, const std::vector<Codec>& codecs) {
    if (row_bytes.size() != codecs.size()) throw std::invalid_argument("one codec per column expected");
    std::vector<std::size_t> columns;
    for (std::size_t c = 0; c < row_bytes.size(); ++c) {
      if (codecs[c].enabled()) columns.push_back(c);
    }
    if (columns.empty()) throw std::invalid_argument("a compressed buffer needs at least one column with a codec");
    return columns;
  }
  static std::size_t max_compressed_bytes(const std::vector<std::size_t>& row_bytes, const std::vector<std::size_t>& columns) {
    std::size_t largest = 0;
    for (std::size_t c : columns) largest = std::max(largest, row_bytes[c]);
    return largest;
  }

  void check_rows(const core::BufferState& state, std::size_t rows) const {
    if (rows > capacity_ || rows > state.counters.total_adds) {
      throw std::invalid_argument("state holds " + std::to_string(rows) + " rows, more than the capacity or the add count allow");
    }
  }

  // Replaces the contents with `rows` rows: store(i) stores row i's blobs as sequence number i, then the
  // inner buffer imports the state over the other columns. Caller holds add_mutex_. A throw releases
  // every blob (the contents are being replaced: what was held before is already gone).
  template <class Store>
  void replace_rows(const core::BufferState& state, const std::byte* const* sources, std::size_t rows, Store store) {
    std::lock_guard lock(mutex_);
    clear_blobs();
    sequence_numbers_.resize(rows);
    try {
      for (std::size_t i = 0; i < rows; ++i) {
        sequence_numbers_[i] = i;
        store(i);
      }
      inner_->import_state(state, inner_columns_.sources(sources, sequence_numbers_.data()).data(), rows);
    } catch (...) {
      clear_blobs();
      throw;
    }
    next_seq_ = rows;
    released_upto_ = 0;
  }

  // Checks `rows` stored rows per compressed column: each length in [1, row size], every compressed one
  // decoding to exactly the row's size, the lengths adding up to the bytes. Returns each row's offset.
  // Caller holds add_mutex_ (the check uses the compressor's codec context).
  std::vector<std::vector<std::size_t>> check_stored(const std::vector<StoredColumnView>& stored, std::size_t rows) {
    if (stored.size() != compressed_columns_.size()) throw std::invalid_argument("one stored column per compressed column expected");
    std::vector<std::vector<std::size_t>> offsets(stored.size(), std::vector<std::size_t>(rows));
    std::vector<std::byte> scratch;
    for (std::size_t k = 0; k < stored.size(); ++k) {
      const std::size_t c = compressed_columns_[k], bytes = row_bytes_[c];
      scratch.resize(bytes);
      std::size_t offset = 0;
      for (std::size_t i = 0; i < rows; ++i) {
        const std::size_t length = stored[k].lengths[i];
        if (length == 0 || length > bytes || offset + length > stored[k].data_bytes) {
          throw std::invalid_argument("column " + std::to_string(c) + " row " + std::to_string(i) + ": stored length " + std::to_string(length) +
                                      " is out of range");
        }
        if (length < bytes && !compressor_.context().decompress(codecs_[c], stored[k].data + offset, length, scratch.data(), bytes)) {
          throw std::invalid_argument("column " + std::to_string(c) + " row " + std::to_string(i) + ": the compressed row does not decode to " +
                                      std::to_string(bytes) + " bytes");
        }
        offsets[k][i] = offset;
        offset += length;
      }
      if (offset != stored[k].data_bytes) throw std::invalid_argument("column " + std::to_string(c) + ": stored bytes do not add up to the rows' lengths");
    }
    return offsets;
  }

  // Stores row i of checked stored columns as row `seq`. Caller holds mutex_.
  void store_stored_row(const std::vector<StoredColumnView>& stored, const std::vector<std::vector<std::size_t>>& offsets, std::size_t i,
                        std::uint64_t seq) {
    std::size_t k = 0;
    try {
      for (; k < stored.size(); ++k) {
        ref(seq, k) = log_.append(stored[k].data + offsets[k][i], stored[k].lengths[i]);
        column_stats_[k].bytes_held += stored[k].lengths[i];
        column_stats_[k].rows_stored_raw += stored[k].lengths[i] == row_bytes_[compressed_columns_[k]];
      }
    } catch (...) {
      while (k-- > 0) release_blob(seq, k);
      throw;
    }
  }

  BlobRef& ref(std::uint64_t seq, std::size_t k) noexcept { return refs_[(seq % ring_size_) * compressed_columns_.size() + k]; }
  const BlobRef& ref(std::uint64_t seq, std::size_t k) const noexcept { return refs_[(seq % ring_size_) * compressed_columns_.size() + k]; }

  // Stores row i of the input (compressed at scratch index r) as row `seq`. Caller holds mutex_.
  void store_row(const std::byte* const* sources, std::size_t i, std::size_t r, std::uint64_t seq) {
    std::size_t k = 0;
    try {
      for (; k < compressed_columns_.size(); ++k) {
        const std::size_t c = compressed_columns_[k], bytes = row_bytes_[c];
        const std::size_t length = compressor_.length(k, r);
        ref(seq, k) = length != 0 ? log_.append(compressor_.scratch(k, r), length) : log_.append(sources[c] + i * bytes, bytes);
        column_stats_[k].bytes_held += ref(seq, k).length;
        column_stats_[k].rows_stored_raw += length == 0;
      }
    } catch (...) {
      while (k-- > 0) release_blob(seq, k);
      throw;
    }
  }

  // Writes row `seq` of every compressed column into destinations[c] row i.
  void restore_row(std::uint64_t seq, std::byte* const* destinations, std::size_t i, CodecContext& context) const {
    for (std::size_t k = 0; k < compressed_columns_.size(); ++k) {
      const std::size_t c = compressed_columns_[k], bytes = row_bytes_[c];
      const BlobRef& blob = ref(seq, k);
      std::byte* out = destinations[c] + i * bytes;
      if (blob.length == bytes) {
        std::memcpy(out, log_.data(blob), bytes);
      } else if (!context.decompress(codecs_[c], log_.data(blob), blob.length, out, bytes)) {
        throw std::logic_error("a compressed row failed to decompress (memory corruption?)");
      }
    }
  }

  void prefetch_row(std::uint64_t seq) const noexcept {
    for (std::size_t k = 0; k < compressed_columns_.size(); ++k) __builtin_prefetch(log_.data(ref(seq, k)));
  }

  void release_blob(std::uint64_t seq, std::size_t k) noexcept {
    const BlobRef& blob = ref(seq, k);
    column_stats_[k].bytes_held -= blob.length;
    column_stats_[k].rows_stored_raw -= blob.length == row_bytes_[compressed_columns_[k]];
    log_.release(blob);
  }

  void release_row(std::uint64_t seq) noexcept {
    for (std::size_t k = 0; k < compressed_columns_.size(); ++k) release_blob(seq, k);
  }

  // Releases the blobs of rows the inner buffer no longer holds.
  void release_consumed() noexcept {
    const std::uint64_t oldest = next_seq_ - inner_->size();
    for (std::uint64_t seq = released_upto_; seq < oldest; ++seq) release_row(seq);
    released_upto_ = std::max(released_upto_, oldest);
  }

  void clear_blobs() noexcept {
    log_.clear();
    for (auto& column : column_stats_) column.bytes_held = column.rows_stored_raw = 0;
    next_seq_ = released_upto_ = 0;
  }

  const std::size_t capacity_;
  const std::size_t ring_size_;  // live rows and one batch of new rows never share a ring entry
  const std::vector<std::size_t> row_bytes_;
  const std::vector<Codec> codecs_;
  const std::vector<std::size_t> compressed_columns_;  // full-schema index of each compressed column
  const core::InnerColumns inner_columns_;       // every uncompressed column, then the sequence number
  std::unique_ptr<core::ReplayBufferInterface> inner_;

  std::mutex add_mutex_;  // guards compressor_ (its scratch); taken before mutex_
  BatchCompressor compressor_;

  mutable std::mutex mutex_;  // guards everything below
  BlobLog log_;
  std::vector<BlobRef> refs_;  // per ring entry: one ref per compressed column
  std::vector<ColumnCompressionStats> column_stats_;
  std::uint64_t next_seq_ = 0;       // sequence number of the next row stored
  std::uint64_t released_upto_ = 0;  // rows below this have had their blobs released
  std::vector<std::uint64_t> sequence_numbers_;
  std::vector<std::uint64_t> sample_seqs_;
  std::size_t compressed_row_bytes_ = 0;  // raw bytes of a row's compressed columns
  RowPool decoders_{std::min<std::size_t>(compressor_.threads() - 1, 3)};  // sample(): helpers decompressing rows
  std::vector<CodecContext> decode_contexts_ = std::vector<CodecContext>(decoders_.workers());  // one per decoding worker
  mutable CodecContext export_context_;  // export_state and gather_ids (both under mutex_)
};

}  // namespace replay_buffer::compression
