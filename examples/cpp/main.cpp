// Fill a lock-free and a prioritized buffer from C++, sample them, update priorities.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <replay_buffer/core/lockfree_buffer.hpp>
#include <replay_buffer/prioritization/prioritized_replay_buffer.hpp>

using StateType = std::array<float, 4>;
using ActionType = std::int32_t;

int main() {
  auto buffer = replay_buffer::core::LockFreeReplayBuffer<StateType, ActionType>(1000000);
  for (int i = 0; i < 1000; ++i) {
    const StateType state{float(i), 0.f, 0.f, 0.f};
    const StateType next_state{float(i + 1), 0.f, 0.f, 0.f};
    buffer.add(replay_buffer::core::Experience<StateType, ActionType>{state, i, 1.0f, next_state, i % 100 == 99});
  }
  auto batch = buffer.sample(32);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].state[0] != float(batch[i].action)) return 1;  // every row is whole
  }

  replay_buffer::prioritization::PrioritizedReplayBuffer<StateType, ActionType> prioritized(1024, {0.6, 1e-6});
  for (int i = 0; i < 100; ++i) prioritized.add({{float(i)}, i, 0.f, {float(i)}, false}, 1.0 + i);
  auto sampled = prioritized.sample(16, /*beta=*/0.4);
  std::vector<double> new_priorities(sampled.size(), 0.5);
  auto result = prioritized.update_priorities(sampled.ids, new_priorities);

  std::printf("lockfree size=%zu sampled=%zu; prioritized sampled=%zu updated=%zu max_weight=%.3f\n", buffer.size(),
              batch.size(), sampled.size(), result.applied, double(*std::max_element(sampled.weights.begin(), sampled.weights.end())));
  return 0;
}
