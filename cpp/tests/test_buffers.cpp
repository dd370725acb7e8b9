// Semantics of the typed C++ API over every engine.
#include <algorithm>
#include <array>
#include <cstdint>
#include <set>
#include <vector>

#include "check.hpp"
#include "replay_buffer/core/lockfree_buffer.hpp"
#include "replay_buffer/core/uniform_buffer.hpp"
#include "replay_buffer/memory/column_store.hpp"
#include "replay_buffer/prioritization/prioritized_replay_buffer.hpp"

using namespace replay_buffer;
using State = std::array<float, 8>;
using Exp = core::Experience<State, std::int64_t>;

static Exp make(std::int64_t i) {
  Exp e{};
  for (std::size_t k = 0; k < 8; ++k) e.state[k] = static_cast<float>(i) + 0.125f * static_cast<float>(k);
  e.action = i;
  e.reward = static_cast<float>(i) * 0.5f;
  e.next_state = e.state;
  e.next_state[0] += 1.0f;
  e.done = (i % 3) == 0;
  return e;
}

static void check_consistent(const Exp& e) {
  const auto i = e.action;
  CHECK(e.state[0] == static_cast<float>(i));
  CHECK(e.state[7] == static_cast<float>(i) + 0.875f);
  CHECK(e.reward == static_cast<float>(i) * 0.5f);
  CHECK(e.next_state[0] == static_cast<float>(i) + 1.0f);
  CHECK(e.done == ((i % 3) == 0));
}

// copy_row and stream_copy move exactly `bytes` bytes for every size and alignment (the small sizes
// take overlapping pieces), and write nothing outside them.
static void row_copies_are_exact() {
  constexpr std::size_t kGuard = 64;
  std::vector<std::byte> source(5000), destination(5000 + 2 * kGuard + 16);
  for (std::size_t i = 0; i < source.size(); ++i) source[i] = static_cast<std::byte>(i * 7 + 1);
  for (std::size_t bytes = 0; bytes <= 4200; bytes += bytes < 140 ? 1 : 997) {
    for (std::size_t misalign = 0; misalign < 16; misalign += 5) {
      for (bool streamed : {false, true}) {
        std::fill(destination.begin(), destination.end(), std::byte{0xEE});
        std::byte* out = destination.data() + kGuard + misalign;
        if (streamed) {
          memory::stream_copy(out, source.data() + misalign, bytes);
        } else {
          memory::copy_row(out, source.data() + misalign, bytes);
        }
        for (std::size_t i = 0; i < bytes; ++i) CHECK(out[i] == source[misalign + i]);
        for (std::byte* p = destination.data(); p < out; ++p) CHECK(*p == std::byte{0xEE});
        for (std::byte* p = out + bytes; p < destination.data() + destination.size(); ++p) CHECK(*p == std::byte{0xEE});
      }
    }
  }
}

int main() {
  row_copies_are_exact();
  // Uniform ring: evicts the oldest, samples only live rows.
  {
    core::UniformReplayBuffer<State, std::int64_t> buffer(100, 7);
    for (int i = 0; i < 250; ++i) buffer.add(make(i));
    CHECK(buffer.size() == 100);
    CHECK(buffer.stats().evictions == 150);
    auto batch = buffer.sample(64);
    CHECK(batch.size() == 64);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      check_consistent(batch[i]);
      CHECK(batch[i].action >= 150 && batch[i].action < 250);
      CHECK(batch.ids[i] == batch[i].action);
    }
  }
  // FIFO: oldest first, consumed once, full queue refuses without writing.
  {
    core::FifoReplayBuffer<State, std::int64_t> buffer(10);
    for (int i = 0; i < 10; ++i) buffer.add(make(i));
    CHECK_THROWS(buffer.add(make(10)), core::BufferFullError);
    CHECK(buffer.stats().rejected == 1);
    auto batch = buffer.sample(4);
    for (std::size_t i = 0; i < 4; ++i) CHECK(batch[i].action == static_cast<std::int64_t>(i));
    CHECK(buffer.size() == 6);
    buffer.add(make(10));
    batch = buffer.sample(7);
    CHECK(batch[6].action == 10);
    CHECK(buffer.size() == 0);
  }
  // Prioritized: zero priority never sampled, stale updates ignored.
  {
    prioritization::PrioritizedReplayBuffer<State, std::int64_t> buffer(8, {1.0, 1e-6, prioritization::SamplingMode::kProportional}, 3);
    for (int i = 0; i < 8; ++i) buffer.add(make(i), i == 5 ? 0.0 : 1.0);
    for (int round = 0; round < 50; ++round) {
      auto batch = buffer.sample(8);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        CHECK(batch[i].action != 5);
        check_consistent(batch[i]);
        CHECK(batch.weights[i] > 0.0f && batch.weights[i] <= 1.0f);
      }
    }
    auto batch = buffer.sample(4);
    for (int i = 8; i < 16; ++i) buffer.add(make(i));  // every sampled row is overwritten now
    auto result = buffer.update_priorities(std::vector<std::int64_t>(batch.ids.begin(), batch.ids.end()), std::vector<double>(4, 5.0));
    CHECK(result.stale == 4 && result.applied == 0);
    CHECK(buffer.stats().stale_priority_updates == 4);
    CHECK_THROWS(buffer.update_priorities({99}, {1.0}), std::invalid_argument);
    CHECK_THROWS(buffer.update_priorities({9}, {-1.0}), std::invalid_argument);
  }
  // Lock-free, single thread: same semantics as uniform.
  {
    core::LockFreeReplayBuffer<State, std::int64_t> buffer(1000000);
    for (int i = 0; i < 5000; ++i) buffer.add(make(i));
    CHECK(buffer.size() == 5000);
    auto batch = buffer.sample(32);
    std::set<std::int64_t> seen;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      check_consistent(batch[i]);
      seen.insert(batch[i].action);
    }
    CHECK(seen.size() > 20);
  }
  return 0;
}
