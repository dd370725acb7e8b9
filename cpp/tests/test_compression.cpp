// The codec layer: exact round trips, rows that do not shrink, hostile input to the decoders, the
// blob log's recycling, and the CompressedBuffer decorator over ring and FIFO buffers.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "check.hpp"
#include "replay_buffer/compression/blob_log.hpp"
#include "replay_buffer/compression/codec.hpp"
#include "replay_buffer/compression/compressed_buffer.hpp"
#include "replay_buffer/core/fifo_buffer.hpp"
#include "replay_buffer/core/ring_buffer.hpp"
#include "replay_buffer/concurrency/seqlock_ring_buffer.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <thread>

using namespace replay_buffer;
using compression::Codec;
using compression::RowPool;
using compression::CodecKind;

static const Codec kCodecs[] = {{CodecKind::kLz4, 0}, {CodecKind::kZstd, 1}, {CodecKind::kZstd, 3}, {CodecKind::kZstd, 19}};

static std::vector<std::byte> smooth_row(std::size_t bytes, int seed) {
  std::vector<std::byte> row(bytes);
  for (std::size_t i = 0; i < bytes; ++i) row[i] = static_cast<std::byte>((i / 64 + static_cast<std::size_t>(seed)) & 0xff);
  return row;
}

static std::vector<std::byte> noise_row(std::size_t bytes, unsigned seed) {
  std::mt19937 generator(seed);
  std::vector<std::byte> row(bytes);
  for (auto& b : row) b = static_cast<std::byte>(generator() & 0xff);
  return row;
}

static void codecs_round_trip_and_keep_noise_raw() {
  compression::CodecContext context;
  for (const Codec& codec : kCodecs) {
    for (std::size_t bytes : {32u, 100u, 4096u, 12288u}) {
      const auto smooth = smooth_row(bytes, 5);
      std::vector<std::byte> packed(bytes), back(bytes);
      const std::size_t length = context.compress(codec, smooth.data(), bytes, packed.data());
      CHECK(length > 0 && length < bytes);
      CHECK(context.decompress(codec, packed.data(), length, back.data(), bytes));
      CHECK(std::memcmp(back.data(), smooth.data(), bytes) == 0);
      const auto noise = noise_row(bytes, 11);
      CHECK(context.compress(codec, noise.data(), bytes, packed.data()) == 0);  // does not shrink: stored raw
    }
  }
}

// Truncated, flipped and random inputs fail (or, rarely, decode to some row): never a crash or an
// out-of-bounds access (ASan checks that in make test-asan).
static void hostile_input_never_over_reads() {
  compression::CodecContext context;
  std::mt19937 generator(3);
  for (const Codec& codec : kCodecs) {
    const std::size_t bytes = 4096;
    const auto smooth = smooth_row(bytes, 9);
    std::vector<std::byte> packed(bytes);
    const std::size_t length = context.compress(codec, smooth.data(), bytes, packed.data());
    CHECK(length > 0);
    for (int trial = 0; trial < 400; ++trial) {
      std::vector<std::byte> input(packed.begin(), packed.begin() + static_cast<std::ptrdiff_t>(length));
      if (trial % 3 == 0) input.resize(generator() % length + 1);
      if (trial % 3 == 1) input[generator() % input.size()] ^= static_cast<std::byte>(1 + generator() % 255);
      if (trial % 3 == 2) for (auto& b : input) b = static_cast<std::byte>(generator() & 0xff);
      std::vector<std::byte> exact(input.begin(), input.end());  // heap block of exactly the input's size
      std::vector<std::byte> out(bytes);
      (void)context.decompress(codec, exact.data(), exact.size(), out.data(), bytes);
    }
    std::vector<std::byte> out(bytes);
    CHECK(!context.decompress(codec, packed.data(), length - 1, out.data(), bytes));        // truncated
    CHECK(!context.decompress(codec, packed.data(), length, out.data(), bytes - 1) || true);  // wrong size: refused or not, never past out
    CHECK(!context.decompress(codec, packed.data(), 0, out.data(), bytes));
  }
}

static void blob_log_recycles_chunks_in_order() {
  compression::BlobLog log(1000);
  std::vector<compression::BlobRef> live;
  std::vector<std::byte> blob(1000, std::byte{7});
  std::size_t peak = 0;
  std::mt19937 generator(1);
  for (int step = 0; step < 200000; ++step) {
    const std::size_t length = 1 + generator() % 1000;
    live.push_back(log.append(blob.data(), length));
    CHECK(log.data(live.back())[length - 1] == std::byte{7});
    if (live.size() > 3000) {  // FIFO: the oldest leaves
      log.release(live.front());
      live.erase(live.begin());
    }
    if (step > 20000) peak = std::max(peak, log.bytes_reserved());
  }
  // 3000 blobs of <= 1000 bytes live (<= 3 MB): reserved stays within that plus the head, a partly
  // used tail chunk and the spare chunks, however many blobs passed through.
  CHECK(peak <= 3000 * 1000 + (2 + compression::BlobLog::kSpareChunks) * log.chunk_bytes());
  for (const auto& ref : live) log.release(ref);
  CHECK(log.bytes_held() == 0);
  CHECK(log.bytes_reserved() <= (1 + compression::BlobLog::kSpareChunks) * log.chunk_bytes());
}

template <class Inner, class... Args>
static std::unique_ptr<compression::CompressedBuffer> compressed(std::size_t capacity, Args... args) {
  const std::vector<std::size_t> row_bytes{8, 2048};
  const std::vector<Codec> codecs{{}, {CodecKind::kLz4, 0}};
  return std::make_unique<compression::CompressedBuffer>(
      capacity, row_bytes, codecs, [&](std::vector<std::size_t> inner) { return std::make_unique<Inner>(capacity, std::move(inner), args...); }, 2);
}

static void fill(std::size_t first, std::size_t count, std::vector<std::int64_t>& ids, std::vector<std::byte>& rows) {
  ids.resize(count);
  rows.resize(count * 2048);
  for (std::size_t i = 0; i < count; ++i) {
    ids[i] = static_cast<std::int64_t>(first + i);
    const auto row = (first + i) % 5 == 0 ? noise_row(2048, static_cast<unsigned>(first + i)) : smooth_row(2048, static_cast<int>(first + i));
    std::memcpy(rows.data() + i * 2048, row.data(), 2048);
  }
}

static void check_rows(const std::vector<std::int64_t>& ids, const std::vector<std::byte>& rows, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const auto id = static_cast<std::size_t>(ids[i]);
    const auto row = id % 5 == 0 ? noise_row(2048, static_cast<unsigned>(id)) : smooth_row(2048, static_cast<int>(id));
    CHECK(std::memcmp(rows.data() + i * 2048, row.data(), 2048) == 0);
  }
}

static void decorator_round_trips_over_a_ring() {
  auto buffer = compressed<core::UniformBuffer>(50, std::uint64_t{1});
  std::vector<std::int64_t> ids;
  std::vector<std::byte> rows;
  std::size_t added = 0;
  for (std::size_t batch : {10u, 45u, 3u, 600u, 1u}) {  // 600 rows > 1 MiB: compressed by two threads
    fill(added, batch, ids, rows);
    const std::byte* sources[] = {reinterpret_cast<const std::byte*>(ids.data()), rows.data()};
    buffer->add(sources, batch, nullptr);
    added += batch;
  }
  CHECK(buffer->size() == 50);
  std::vector<std::int64_t> out_ids(64);
  std::vector<std::byte> out_rows(64 * 2048);
  std::byte* destinations[] = {reinterpret_cast<std::byte*>(out_ids.data()), out_rows.data()};
  core::SampleRequest request;
  request.batch_size = 64;
  CHECK(buffer->sample(request, destinations) == 64);
  for (auto id : out_ids) CHECK(id >= static_cast<std::int64_t>(added - 50) && id < static_cast<std::int64_t>(added));
  check_rows(out_ids, out_rows, 64);
  const auto stats = buffer->compression_stats();
  CHECK(stats.size() == 1 && stats[0].column == 1 && stats[0].rows_stored_raw == 10);  // ids ending in 0 or 5 are noise
}

static void a_refused_batch_changes_nothing() {
  auto buffer = compressed<core::FifoBuffer>(20, core::OverflowPolicy::kReject);
  std::vector<std::int64_t> ids;
  std::vector<std::byte> rows;
  fill(0, 15, ids, rows);
  const std::byte* sources[] = {reinterpret_cast<const std::byte*>(ids.data()), rows.data()};
  buffer->add(sources, 15, nullptr);
  const auto before = buffer->stats();
  fill(100, 10, ids, rows);
  CHECK_THROWS(buffer->add(sources, 10, nullptr), core::BufferFullError);
  const auto after = buffer->stats();
  CHECK(after.bytes_held == before.bytes_held && after.size == 15);
  std::vector<std::int64_t> out_ids(15);
  std::vector<std::byte> out_rows(15 * 2048);
  std::byte* destinations[] = {reinterpret_cast<std::byte*>(out_ids.data()), out_rows.data()};
  core::SampleRequest request;
  request.batch_size = 15;
  CHECK(buffer->sample(request, destinations) == 15);
  for (std::size_t i = 0; i < 15; ++i) CHECK(out_ids[i] == static_cast<std::int64_t>(i));
  check_rows(out_ids, out_rows, 15);
  CHECK(buffer->size() == 0 && buffer->stats().bytes_held == 0);
}

// Sequence sampling reads rows by id: the compressed column decompressed into place, zeros for
// padding ids (~0), the plain columns from the inner ring; after wrap-around, only live ids asked.
static void gather_ids_reads_compressed_rows_by_id() {
  auto buffer = compressed<core::UniformBuffer>(50, std::uint64_t{1});
  std::vector<std::int64_t> ids;
  std::vector<std::byte> rows;
  fill(0, 130, ids, rows);  // wraps: ids 80..129 are live
  const std::byte* sources[] = {reinterpret_cast<const std::byte*>(ids.data()), rows.data()};
  buffer->add(sources, 130, nullptr);
  const std::uint64_t none = ~std::uint64_t{0};
  const std::vector<std::uint64_t> wanted = {80, 81, 82, none, 129, 100, none, 115};
  std::vector<std::int64_t> out_ids(wanted.size(), -1);
  std::vector<std::byte> out_rows(wanted.size() * 2048, std::byte{0xab});
  std::byte* destinations[] = {reinterpret_cast<std::byte*>(out_ids.data()), out_rows.data()};
  buffer->gather_ids(wanted.data(), wanted.size(), destinations);
  for (std::size_t i = 0; i < wanted.size(); ++i) {
    if (wanted[i] == none) {
      CHECK(out_ids[i] == 0);
      for (std::size_t b = 0; b < 2048; ++b) CHECK(out_rows[i * 2048 + b] == std::byte{0});
      continue;
    }
    CHECK(out_ids[i] == static_cast<std::int64_t>(wanted[i]));
    check_rows({out_ids[i]}, std::vector<std::byte>(out_rows.begin() + static_cast<std::ptrdiff_t>(i * 2048),
                                                    out_rows.begin() + static_cast<std::ptrdiff_t>((i + 1) * 2048)), 1);
  }
}

// Writers compress while readers sample (TSan runs this in make test-tsan): no torn or mixed-up row.
static void concurrent_adds_and_samples_over_a_lockfree_ring() {
  auto buffer = compressed<concurrency::SeqlockRingBuffer>(64, std::uint64_t{3});
  std::vector<std::int64_t> ids;
  std::vector<std::byte> rows;
  fill(0, 64, ids, rows);
  const std::byte* first[] = {reinterpret_cast<const std::byte*>(ids.data()), rows.data()};
  buffer->add(first, 64, nullptr);
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::vector<std::int64_t> my_ids;
      std::vector<std::byte> my_rows;
      for (std::size_t b = 0; b < 30; ++b) {
        fill(1000 * (w + 1) + b * 10, 10, my_ids, my_rows);
        const std::byte* sources[] = {reinterpret_cast<const std::byte*>(my_ids.data()), my_rows.data()};
        buffer->add(sources, 10, nullptr);
      }
    });
  }
  threads.emplace_back([&] {
    std::vector<std::int64_t> out_ids(48);
    std::vector<std::byte> out_rows(48 * 2048);
    std::byte* destinations[] = {reinterpret_cast<std::byte*>(out_ids.data()), out_rows.data()};
    core::SampleRequest request;
    request.batch_size = 48;  // 96 KB: decoded by the row pool
    while (!done.load()) {
      CHECK(buffer->sample(request, destinations) == 48);
      check_rows(out_ids, out_rows, 48);
    }
  });
  threads[0].join();
  threads[1].join();
  done = true;
  threads[2].join();
  CHECK(buffer->size() == 64 && buffer->stats().total_adds == 64 + 600);
}

// The row pool runs every row exactly once, back to back (helpers spinning between runs) and after
// pauses longer than its spin window (helpers asleep), reports a failed row after the others ran,
// and is destroyed cleanly while a helper spins. TSan runs this too.
static void row_pool_runs_every_row_once() {
  for (std::size_t helpers : {1u, 3u}) {
    auto pool = std::make_unique<RowPool>(helpers);
    CHECK(pool->workers() == helpers + 1);
    std::vector<std::atomic<int>> hits(97);
    for (int round = 0; round < 300; ++round) {
      for (auto& hit : hits) hit.store(0);
      std::atomic<std::size_t> bad_worker{0};
      auto fn = [&](std::size_t worker, std::size_t i) {
        if (worker > helpers) bad_worker.fetch_add(1);
        hits[i].fetch_add(1);
      };
      const std::size_t n = round % 5 == 0 ? 1 : hits.size();
      pool->run(n, fn);
      CHECK(bad_worker.load() == 0);
      for (std::size_t i = 0; i < hits.size(); ++i) CHECK(hits[i].load() == (i < n ? 1 : 0));
      if (round % 50 == 49) std::this_thread::sleep_for(std::chrono::microseconds(3 * RowPool::kSpinNs / 1000));
    }
    std::atomic<int> ran{0};
    auto failing = [&](std::size_t, std::size_t i) {
      ran.fetch_add(1);
      if (i == 7) throw std::runtime_error("row 7");
    };
    bool threw = false;
    try {
      pool->run(40, failing);
    } catch (const std::logic_error&) {
      threw = true;
    }
    CHECK(threw && ran.load() == 40);
    auto nothing = [](std::size_t, std::size_t) {};
    pool->run(8, nothing);  // the helper now spins for the next run: destroy it mid-spin
    pool.reset();
  }
}

int main() {
  codecs_round_trip_and_keep_noise_raw();
  hostile_input_never_over_reads();
  blob_log_recycles_chunks_in_order();
  decorator_round_trips_over_a_ring();
  a_refused_batch_changes_nothing();
  gather_ids_reads_compressed_rows_by_id();
  concurrent_adds_and_samples_over_a_lockfree_ring();
  row_pool_runs_every_row_once();
  return 0;
}
