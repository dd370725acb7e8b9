// SequenceIndex links and the ring buffers' gather_ids, against a brute-force model.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "check.hpp"
#include "replay_buffer/core/ring_buffer.hpp"
#include "replay_buffer/sampling/sequence_index.hpp"

using replay_buffer::sampling::kNoRow;
using replay_buffer::sampling::SequenceIndex;

namespace {

// The model: the sequence from `start` is the same stream's next rows in id order, through an end.
std::vector<std::uint64_t> expected(const std::vector<std::int64_t>& streams, const std::vector<std::uint8_t>& ends, std::uint64_t start,
                                    std::size_t seq_len) {
  std::vector<std::uint64_t> ids{start};
  std::uint64_t current = start;
  while (ids.size() < seq_len && ends[current] == 0) {
    std::uint64_t next = current + 1;
    while (next < streams.size() && streams[next] != streams[current]) ++next;
    if (next == streams.size()) break;
    ids.push_back(next);
    current = next;
  }
  return ids;
}

void test_links_follow_streams_and_stop_at_ends() {
  constexpr std::size_t kCapacity = 37;
  SequenceIndex index(kCapacity);
  std::mt19937_64 rng(3);
  std::vector<std::int64_t> streams;
  std::vector<std::uint8_t> ends;
  for (int batch = 0; batch < 60; ++batch) {
    const std::size_t count = 1 + rng() % 7;
    std::vector<std::int64_t> s(count);
    std::vector<std::uint8_t> e(count);
    for (std::size_t i = 0; i < count; ++i) {
      s[i] = static_cast<std::int64_t>(rng() % 4) - 2;  // negative ids are streams too
      e[i] = rng() % 10 == 0;
    }
    index.record(count, s.data(), e.data());
    streams.insert(streams.end(), s.begin(), s.end());
    ends.insert(ends.end(), e.begin(), e.end());
    CHECK(index.total() == streams.size());
    for (std::uint64_t id = index.oldest(); id < index.total(); ++id) {
      std::vector<std::uint64_t> ids(9);
      const std::size_t length = index.walk(id, 9, ids.data());
      const auto want = expected(streams, ends, id, 9);
      CHECK(length == want.size());
      for (std::size_t k = 0; k < length; ++k) CHECK(ids[k] == want[k]);
      CHECK(index.stream(id) == streams[id]);
    }
  }
  std::uint64_t ids[4];
  CHECK(index.walk(index.oldest() - 1, 4, ids) == 0);  // evicted
  CHECK(index.walk(index.total(), 4, ids) == 0);        // not yet added
}

void test_gather_ids_copies_rows_and_zero_pads() {
  replay_buffer::core::UniformBuffer buffer(5, {sizeof(std::int32_t)}, 1);
  for (std::int32_t value = 0; value < 8; ++value) {  // ids 3..7 held, in slots 3, 4, 0, 1, 2
    const std::byte* source = reinterpret_cast<const std::byte*>(&value);
    buffer.add(&source, 1, nullptr);
  }
  const std::uint64_t ids[] = {3, 4, 5, 6, kNoRow, kNoRow, 7};  // a run across the wrap, padding, one row
  std::int32_t out[7];
  std::memset(out, 0xff, sizeof(out));
  std::byte* destination = reinterpret_cast<std::byte*>(out);
  buffer.gather_ids(ids, 7, &destination);
  const std::int32_t want[] = {3, 4, 5, 6, 0, 0, 7};
  for (int i = 0; i < 7; ++i) CHECK(out[i] == want[i]);
}

}  // namespace

int main() {
  test_links_follow_streams_and_stop_at_ends();
  test_gather_ids_copies_rows_and_zero_pads();
  return 0;
}
