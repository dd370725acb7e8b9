// Several writers and readers on one small lock-free ring (so slots are overwritten constantly):
// every sampled transition must be internally consistent, and the counters must add up.
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "check.hpp"
#include "replay_buffer/core/lockfree_buffer.hpp"

using State = std::array<std::uint64_t, 6>;
using Buffer = replay_buffer::core::LockFreeReplayBuffer<State, std::uint64_t>;

int main() {
  Buffer buffer(257, 11);
  constexpr int kWriters = 3, kReaders = 3, kRowsPerWriter = 200000;
  std::atomic<bool> writers_done{false};
  std::atomic<std::uint64_t> rows_checked{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&buffer, w] {
      for (std::uint64_t i = 0; i < kRowsPerWriter; ++i) {
        const std::uint64_t tag = (static_cast<std::uint64_t>(w) << 32) | i;
        replay_buffer::core::Experience<State, std::uint64_t> e{};
        e.state.fill(tag);
        e.next_state.fill(~tag);
        e.action = tag * 2654435761u;
        e.reward = static_cast<float>(i % 1000);
        e.done = (tag & 1) != 0;
        buffer.add(e);
      }
    });
  }
  std::atomic<bool> failed{false};
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&] {
      while (buffer.size() == 0) std::this_thread::yield();
      while (!writers_done.load()) {
        auto batch = buffer.sample(64);
        for (std::size_t i = 0; i < batch.size(); ++i) {
          const auto e = batch[i];
          const std::uint64_t tag = e.state[0];
          bool ok = e.action == tag * 2654435761u && e.reward == static_cast<float>((tag & 0xffffffffu) % 1000) &&
                    e.done == ((tag & 1) != 0);
          for (auto v : e.state) ok = ok && v == tag;
          for (auto v : e.next_state) ok = ok && v == ~tag;
          if (!ok) failed = true;
        }
        rows_checked += batch.size();
      }
    });
  }
  for (int w = 0; w < kWriters; ++w) threads[w].join();
  writers_done = true;
  for (std::size_t t = kWriters; t < threads.size(); ++t) threads[t].join();
  CHECK(!failed.load());
  CHECK(rows_checked.load() > 0);
  const auto stats = buffer.stats();
  CHECK(stats.total_adds == static_cast<std::uint64_t>(kWriters) * kRowsPerWriter);
  CHECK(stats.size == 257);
  CHECK(stats.evictions == stats.total_adds - stats.size);
  return 0;
}
