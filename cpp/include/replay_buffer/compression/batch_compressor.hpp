// Compresses the compressed columns of a batch of rows, in parallel over rows when the batch is large.
//
// Holds the scratch a batch is compressed into: per compressed column k, row r's compressed bytes at
// scratch(k) + r * (the column's row bytes) and their size in length(k, r) (0: the row does not shrink,
// keep it raw). The scratch stays valid until the next compress().
//
// Thread roles: one caller at a time (CompressedBuffer serializes compress() under its add mutex); the
// worker threads it starts for a large batch write disjoint rows and are joined before it returns.
// Cost: O(raw bytes of the batch) of codec work, split over up to min(threads, rows, 16) threads when
// the batch holds at least kParallelBytes (threads are started per call, so small batches stay on the
// caller's thread).
// Failure contract: a throw (out of memory) leaves the scratch in an unspecified state, nothing else.
#pragma once

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <thread>
#include <vector>

#include "replay_buffer/compression/codec.hpp"

namespace replay_buffer::compression {

class BatchCompressor {
 public:
  // A batch is compressed in parallel when it holds at least this many raw bytes to compress.
  static constexpr std::size_t kParallelBytes = std::size_t{1} << 20;

  // columns: the full-schema index of each compressed column; row_bytes and codecs: the full schema.
  // threads: the most threads to use (0: the hardware's).
  BatchCompressor(std::vector<std::size_t> columns, const std::vector<std::size_t>& row_bytes, const std::vector<Codec>& codecs, std::size_t threads)
      : columns_(std::move(columns)), threads_(threads != 0 ? threads : std::max(1u, std::thread::hardware_concurrency())) {
    for (std::size_t c : columns_) {
      bytes_.push_back(row_bytes[c]);
      codecs_.push_back(codecs[c]);
    }
    scratch_.resize(columns_.size());
    lengths_.resize(columns_.size());
  }

  std::size_t threads() const noexcept { return threads_; }

  // Compresses rows [begin, end) of sources[columns[k]] for every k; scratch row r is input row begin + r.
  void compress(const std::byte* const* sources, std::size_t begin, std::size_t end) {
    run(end - begin, [&](std::size_t k, std::size_t r) { return sources[columns_[k]] + (begin + r) * bytes_[k]; });
  }

  // One compressed column only (columns.size() == 1): compresses rows[r] for r < count, rows anywhere
  // in memory (a DedupBuffer's new frames, in place in their stacks); scratch row r is rows[r].
  void compress_rows(const std::byte* const* rows, std::size_t count) {
    if (columns_.size() != 1) throw std::logic_error("compress_rows needs a compressor of one column");
    run(count, [rows](std::size_t, std::size_t r) { return rows[r]; });
  }

  // Of the last compress(): compressed column k's row r, and its compressed size (0: keep it raw).
  const std::byte* scratch(std::size_t k, std::size_t r) const noexcept { return scratch_[k].data() + r * bytes_[k]; }
  std::size_t length(std::size_t k, std::size_t r) const noexcept { return lengths_[k][r]; }

  // A codec context of the caller's thread, for checks between compress() calls (same thread role).
  CodecContext& context() {
    if (contexts_.empty()) contexts_.emplace_back();
    return contexts_[0];
  }

 private:
  // Compresses `rows` rows of every compressed column; source(k, r) is where column k's row r is.
  template <class Source>
  void run(std::size_t rows, const Source& source) {
    std::size_t raw_bytes = 0;
    for (std::size_t k = 0; k < columns_.size(); ++k) {
      if (scratch_[k].size() < rows * bytes_[k]) scratch_[k].resize(rows * bytes_[k]);
      lengths_[k].resize(rows);
      raw_bytes += rows * bytes_[k];
    }
    const std::size_t workers = raw_bytes >= kParallelBytes ? std::min({threads_, rows, std::size_t{16}}) : 1;
    while (contexts_.size() < workers) contexts_.emplace_back();
    const auto work = [&](std::size_t worker) {
      const std::size_t lo = rows * worker / workers, hi = rows * (worker + 1) / workers;
      for (std::size_t k = 0; k < columns_.size(); ++k) {
        for (std::size_t r = lo; r < hi; ++r) {
          lengths_[k][r] = contexts_[worker].compress(codecs_[k], source(k, r), bytes_[k], scratch_[k].data() + r * bytes_[k]);
        }
      }
    };
    if (workers == 1) {
      work(0);
      return;
    }
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    try {
      for (std::size_t w = 1; w < workers; ++w) pool.emplace_back(work, w);
    } catch (...) {  // no thread to be had: the rest on this one
      for (std::size_t w = pool.size() + 1; w < workers; ++w) work(w);
    }
    work(0);
    for (auto& thread : pool) thread.join();
  }

  const std::vector<std::size_t> columns_;
  std::vector<std::size_t> bytes_;  // per compressed column: raw bytes per row
  std::vector<Codec> codecs_;       // per compressed column
  const std::size_t threads_;
  std::vector<std::vector<std::byte>> scratch_;
  std::vector<std::vector<std::size_t>> lengths_;
  std::vector<CodecContext> contexts_;  // one per compressing thread
};

}  // namespace replay_buffer::compression
