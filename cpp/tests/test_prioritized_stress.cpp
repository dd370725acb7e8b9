// Writers, samplers and priority updaters on one prioritized buffer at once: afterwards the tree's
// total mass equals the sum of its leaves, every sampled row is whole, and the counters add up.
#include <array>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <cstdint>
#include <thread>
#include <vector>

#include "check.hpp"
#include "replay_buffer/prioritization/prioritized_replay_buffer.hpp"

using State = std::array<std::uint32_t, 4>;
using Buffer = replay_buffer::prioritization::PrioritizedReplayBuffer<State, std::uint32_t>;

int main() {
  Buffer buffer(1000, {0.6, 1e-6, replay_buffer::prioritization::SamplingMode::kStratified}, 5);
  constexpr int kWriters = 2, kLearners = 2, kRowsPerWriter = 20000, kBatch = 32;
  std::atomic<int> writers_left{kWriters};
  std::atomic<std::uint64_t> ids_updated{0};
  std::atomic<bool> torn{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (std::uint32_t i = 0; i < kRowsPerWriter; ++i) {
        const std::uint32_t tag = static_cast<std::uint32_t>(w) << 24 | i;
        replay_buffer::core::Experience<State, std::uint32_t> e{{tag, tag, tag, tag}, tag, float(i % 7), {~tag, ~tag, ~tag, ~tag}, (tag & 1) != 0};
        if (i % 3 == 0) {
          buffer.add(e);
        } else {
          buffer.add(e, 0.5 + (i % 11));
        }
      }
      --writers_left;
    });
  }
  for (int l = 0; l < kLearners; ++l) {
    threads.emplace_back([&, l] {
      replay_buffer::core::Random rng(l);
      while (buffer.size() == 0) std::this_thread::yield();
      while (writers_left.load() > 0) {
        replay_buffer::prioritization::PrioritizedBatch<State, std::uint32_t> batch;
        try {
          batch = buffer.sample(kBatch, 0.4);
        } catch (const std::invalid_argument&) {  // every row masked (priority 0) for the moment
          continue;
        }
        std::vector<double> priorities(batch.size());
        for (std::size_t i = 0; i < batch.size(); ++i) {
          const auto e = batch[i];
          if (e.state[0] != e.action || e.state[3] != e.action || e.next_state[0] != ~e.action || e.done != ((e.action & 1) != 0)) torn = true;
          if (!(batch.weights[i] > 0.0f && batch.weights[i] <= 1.0f)) torn = true;
          priorities[i] = rng.uniform() < 0.05 ? 0.0 : rng.uniform() * 10.0;
        }
        buffer.update_priorities(std::vector<std::int64_t>(batch.ids.begin(), batch.ids.end()), priorities);
        ids_updated += batch.size();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(!torn.load());
  const auto stats = buffer.stats();
  CHECK(stats.total_adds == std::uint64_t{kWriters} * kRowsPerWriter);
  CHECK(stats.size == 1000);
  CHECK(stats.evictions == stats.total_adds - stats.size);
  CHECK(stats.priority_updates + stats.stale_priority_updates == ids_updated.load());
  std::vector<std::vector<std::byte>> columns(5);
  const std::size_t row_bytes[5] = {sizeof(State), sizeof(std::uint32_t), sizeof(float), sizeof(State), 1};
  std::vector<std::byte*> destinations;
  for (std::size_t c = 0; c < 5; ++c) {
    columns[c].resize(stats.size * row_bytes[c]);
    destinations.push_back(columns[c].data());
  }
  const auto state = buffer.engine().export_state(destinations.data(), replay_buffer::core::ReplayBufferInterface::kAllRows);
  double leaves = 0.0;
  for (double mass : state.priorities) leaves += mass;
  CHECK(std::abs(stats.total_priority - leaves) <= 1e-9 * leaves);
  return 0;
}
