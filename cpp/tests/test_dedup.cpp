// DedupBuffer against a plain buffer fed the same rows: identical contents and samples, for stacked
// (4 x 1-byte inner, the SSE2 path; 3 x 2-byte inner, the generic path) and unstacked observations,
// with interleaved streams, episode resets, batches longer than the buffer, and threads (TSan).
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "check.hpp"
#include "replay_buffer/core/fifo_buffer.hpp"
#include "replay_buffer/core/ring_buffer.hpp"
#include "replay_buffer/dedup/dedup_buffer.hpp"

using namespace replay_buffer;

namespace {

struct Layout {
  std::size_t outer, frames, inner;
  std::size_t bytes() const { return outer * frames * inner; }
};

// Rows of (state, action, next_state) from `streams` writers stepping through episodes of stacks.
struct Rows {
  std::vector<std::byte> state, next;
  std::vector<std::int64_t> action, streams;
};

Rows make_rows(const Layout& layout, std::size_t count, std::size_t streams, std::mt19937_64& rng) {
  const std::size_t frame = layout.outer * layout.inner;
  std::vector<std::vector<std::byte>> frames(streams);  // per stream: its K newest frames, compact
  auto random_frame = [&](std::byte* out) {
    for (std::size_t b = 0; b < frame; ++b) out[b] = static_cast<std::byte>(rng() % 3);
  };
  auto reset = [&](std::vector<std::byte>& stack) {
    stack.resize(layout.frames * frame);
    random_frame(stack.data());
    for (std::size_t j = 1; j < layout.frames; ++j) std::memcpy(stack.data() + j * frame, stack.data(), frame);
  };
  auto to_stack = [&](const std::vector<std::byte>& compact, std::byte* out) {
    for (std::size_t o = 0; o < layout.outer; ++o)
      for (std::size_t j = 0; j < layout.frames; ++j)
        std::memcpy(out + (o * layout.frames + j) * layout.inner, compact.data() + j * frame + o * layout.inner, layout.inner);
  };
  for (auto& stack : frames) reset(stack);
  Rows rows;
  rows.state.resize(count * layout.bytes());
  rows.next.resize(count * layout.bytes());
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t s = rng() % streams;
    rows.streams.push_back(static_cast<std::int64_t>(s));
    rows.action.push_back(static_cast<std::int64_t>(i));
    to_stack(frames[s], rows.state.data() + i * layout.bytes());
    std::vector<std::byte> after(frames[s].begin() + static_cast<std::ptrdiff_t>(frame), frames[s].end());
    after.resize(layout.frames * frame);
    random_frame(after.data() + (layout.frames - 1) * frame);
    to_stack(after, rows.next.data() + i * layout.bytes());
    frames[s] = after;
    if (rng() % 10 == 0) reset(frames[s]);
  }
  return rows;
}

std::unique_ptr<core::ReplayBufferInterface> make_plain(bool fifo, std::size_t capacity, std::vector<std::size_t> row_bytes) {
  if (fifo) return std::make_unique<core::FifoBuffer>(capacity, std::move(row_bytes), core::OverflowPolicy::kEvictOldest);
  return std::make_unique<core::UniformBuffer>(capacity, std::move(row_bytes), 11);
}

void check_against_plain(const Layout& layout, bool fifo) {
  std::mt19937_64 rng(42);
  const std::size_t capacity = 50;
  const std::vector<std::size_t> row_bytes{layout.bytes(), 8, layout.bytes()};
  auto plain = make_plain(fifo, capacity, row_bytes);
  dedup::DedupBuffer deduped(capacity, row_bytes, {0, 2}, dedup::FrameLayout(layout.outer, layout.frames, layout.inner),
                             [&](std::vector<std::size_t> inner) { return make_plain(fifo, capacity, std::move(inner)); });
  for (std::size_t count : {1, 7, 30, 120, 3, 49}) {  // 120 > capacity: the oldest 70 are skipped
    const Rows rows = make_rows(layout, count, 3, rng);
    const std::byte* sources[] = {rows.state.data(), reinterpret_cast<const std::byte*>(rows.action.data()), rows.next.data()};
    plain->add(sources, count, nullptr);
    deduped.add(sources, count, nullptr, rows.streams.data());
    const std::size_t n = std::min<std::size_t>(16, plain->size());
    std::vector<std::byte> plain_state(n * layout.bytes()), plain_next(n * layout.bytes()), state(n * layout.bytes()), next(n * layout.bytes());
    std::vector<std::int64_t> plain_action(n), action(n);
    std::byte* plain_out[] = {plain_state.data(), reinterpret_cast<std::byte*>(plain_action.data()), plain_next.data()};
    std::byte* out[] = {state.data(), reinterpret_cast<std::byte*>(action.data()), next.data()};
    core::SampleRequest request;
    request.batch_size = n;
    CHECK(plain->sample(request, plain_out) == deduped.sample(request, out));
    CHECK(plain_action == action);
    CHECK(plain_state == state);
    CHECK(plain_next == next);
    CHECK(plain->size() == deduped.size());
  }
  CHECK(deduped.stats().frames_held > 0);
}

// Writers on their own streams and a reader at once: every sampled row is whole (next = state shifted).
void threads_keep_rows_whole() {
  const Layout layout{64, 4, 1};
  const std::vector<std::size_t> row_bytes{layout.bytes(), 8, layout.bytes()};
  dedup::DedupBuffer buffer(128, row_bytes, {0, 2}, dedup::FrameLayout(64, 4, 1),
                            [](std::vector<std::size_t> inner) { return std::make_unique<core::UniformBuffer>(128, std::move(inner), 3); });
  std::vector<std::thread> threads;
  for (std::int64_t w = 0; w < 2; ++w) {
    threads.emplace_back([&buffer, layout, w] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(w));
      for (int round = 0; round < 40; ++round) {
        Rows rows = make_rows(layout, 16, 1, rng);
        for (auto& stream : rows.streams) stream = w;
        const std::byte* sources[] = {rows.state.data(), reinterpret_cast<const std::byte*>(rows.action.data()), rows.next.data()};
        buffer.add(sources, 16, nullptr, rows.streams.data());
      }
    });
  }
  threads.emplace_back([&buffer, layout] {
    std::vector<std::byte> state(8 * layout.bytes()), next(8 * layout.bytes());
    std::vector<std::int64_t> action(8);
    std::byte* out[] = {state.data(), reinterpret_cast<std::byte*>(action.data()), next.data()};
    core::SampleRequest request;
    request.batch_size = 8;
    for (int round = 0; round < 200; ++round) {
      if (buffer.size() == 0) continue;
      buffer.sample(request, out);
      for (std::size_t i = 0; i < 8; ++i) {
        const std::byte* s = state.data() + i * layout.bytes();
        const std::byte* n = next.data() + i * layout.bytes();
        for (std::size_t o = 0; o < layout.outer; ++o)
          for (std::size_t j = 0; j + 1 < layout.frames; ++j) CHECK(n[o * 4 + j] == s[o * 4 + j + 1]);
      }
    }
  });
  for (auto& thread : threads) thread.join();
  CHECK(buffer.stats().total_adds == 2 * 40 * 16);
}

}  // namespace

int main() {
  for (bool fifo : {false, true}) {
    check_against_plain({100, 4, 1}, fifo);  // (100, 4) uint8 stacked last: the SSE2 kernels
    check_against_plain({5, 3, 2}, fifo);    // 2-byte elements: the generic kernels
    check_against_plain({1, 4, 40}, fifo);   // stacked on the first axis: memcpy
    check_against_plain({1, 1, 24}, fifo);   // no stacking: next-state dedup only
  }
  threads_keep_rows_whole();
  return 0;
}
