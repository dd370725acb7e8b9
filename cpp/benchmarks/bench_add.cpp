// C++ add/sample latency for a 64-byte transition (float[7] state, int32 action, float reward,
// float[7] next_state, bool done = 28 + 4 + 4 + 28 + 1 bytes), per engine. Prints JSON.
//   bench_add [capacity] [repetitions]
#include <array>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "replay_buffer/core/lockfree_buffer.hpp"
#include "replay_buffer/core/uniform_buffer.hpp"
#include "replay_buffer/prioritization/prioritized_replay_buffer.hpp"

using State = std::array<float, 7>;

template <class Buffer>
static double median_add_ns(Buffer& buffer, std::size_t adds, int repetitions) {
  replay_buffer::core::Experience<State, std::int32_t> e{};
  std::vector<double> per_add;
  for (int r = 0; r < repetitions; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < adds; ++i) {
      e.action = static_cast<std::int32_t>(i);
      e.state[0] = static_cast<float>(i);
      buffer.add(e);
    }
    const auto elapsed = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
    per_add.push_back(elapsed / static_cast<double>(adds));
  }
  std::sort(per_add.begin(), per_add.end());
  return per_add[per_add.size() / 2];
}

template <class Buffer>
static double median_sample_ns(Buffer& buffer, std::size_t batch, int repetitions) {
  std::vector<double> per_call;
  for (int r = 0; r < repetitions * 20; ++r) {
    const auto start = std::chrono::steady_clock::now();
    auto out = buffer.sample(batch);
    const auto elapsed = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
    if (out.size() != batch) std::abort();
    per_call.push_back(elapsed);
  }
  std::sort(per_call.begin(), per_call.end());
  return per_call[per_call.size() / 2];
}

int main(int argc, char** argv) {
  const std::size_t capacity = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1000000;
  const int repetitions = argc > 2 ? std::atoi(argv[2]) : 5;
  using namespace replay_buffer;
  core::UniformReplayBuffer<State, std::int32_t> uniform(capacity);
  core::LockFreeReplayBuffer<State, std::int32_t> lockfree(capacity);
  prioritization::PrioritizedReplayBuffer<State, std::int32_t> prioritized(capacity);
  for (auto* monitoring_off : {static_cast<core::ReplayBufferInterface*>(&uniform.engine()),
                               static_cast<core::ReplayBufferInterface*>(&lockfree.engine()),
                               static_cast<core::ReplayBufferInterface*>(&prioritized.engine())}) {
    monitoring_off->set_collect_stats(false);  // measure the data path alone
  }
  std::printf("{\"transition_bytes\": %zu, \"capacity\": %zu, \"repetitions\": %d,\n", sizeof(State) * 2 + 4 + 4 + 1, capacity, repetitions);
  std::printf(" \"uniform_add_ns\": %.2f,\n", median_add_ns(uniform, capacity, repetitions));
  std::printf(" \"lockfree_add_ns\": %.2f,\n", median_add_ns(lockfree, capacity, repetitions));
  std::printf(" \"prioritized_add_ns\": %.2f,\n", median_add_ns(prioritized, capacity, repetitions));
  std::printf(" \"uniform_sample256_ns\": %.0f,\n", median_sample_ns(uniform, 256, repetitions));
  std::printf(" \"lockfree_sample256_ns\": %.0f,\n", median_sample_ns(lockfree, 256, repetitions));
  std::printf(" \"prioritized_sample256_ns\": %.0f}\n", median_sample_ns(prioritized, 256, repetitions));
  return 0;
}
