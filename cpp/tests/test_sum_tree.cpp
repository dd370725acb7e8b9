#include <cmath>
#include <cstdint>
#include <vector>

#include "check.hpp"
#include "replay_buffer/core/random.hpp"
#include "replay_buffer/prioritization/sum_tree.hpp"

using replay_buffer::prioritization::SumTree;

int main() {
  for (std::size_t leaves : {1u, 7u, 8u, 9u, 64u, 65u, 1000u, 100000u}) {
    SumTree tree(leaves);
    std::vector<double> values(leaves);
    replay_buffer::core::Random rng(leaves);
    std::vector<std::uint64_t> slots(leaves);
    for (std::size_t i = 0; i < leaves; ++i) {
      slots[i] = i;
      values[i] = (i % 5 == 0) ? 0.0 : rng.uniform() * 10.0;
    }
    tree.set(slots.data(), values.data(), leaves);
    double expected = 0.0, min_positive = INFINITY;
    for (double v : values) {
      expected += v;
      if (v > 0) min_positive = std::min(min_positive, v);
    }
    CHECK(std::abs(tree.total() - expected) <= 1e-9 * expected + 1e-12);
    CHECK(tree.min_positive() == min_positive);
    if (expected == 0.0) continue;
    // Every target lands on the leaf whose prefix interval holds it, never on a zero leaf.
    std::vector<double> targets(1000);
    std::vector<std::uint64_t> found(targets.size());
    for (auto& t : targets) t = rng.uniform() * tree.total();
    tree.find(targets.data(), targets.size(), found.data());
    std::vector<double> prefix(leaves + 1, 0.0);
    for (std::size_t i = 0; i < leaves; ++i) prefix[i + 1] = prefix[i] + values[i];
    for (std::size_t q = 0; q < targets.size(); ++q) {
      CHECK(found[q] < leaves);
      CHECK(values[found[q]] > 0.0);
      CHECK(prefix[found[q]] <= targets[q] * (1 + 1e-9) && targets[q] <= prefix[found[q] + 1] * (1 + 1e-9));
    }
    // Updates keep the root exact: it equals the sum of the leaves after many random changes.
    for (int round = 0; round < 200; ++round) {
      std::uint64_t slot = rng.below(leaves);
      double value = rng.uniform() < 0.1 ? 0.0 : rng.uniform() * 1e3;
      tree.set(slot, value);
      values[slot] = value;
    }
    expected = 0.0;
    for (double v : values) expected += v;
    CHECK(std::abs(tree.total() - expected) <= 1e-9 * expected + 1e-12);
  }
  // A target at (or rounded past) the total still lands on the last positive leaf.
  SumTree tree(20);
  std::vector<std::uint64_t> slots{3, 17};
  std::vector<double> values{1.0, 2.0};
  tree.set(slots.data(), values.data(), 2);
  double target = tree.total();
  std::uint64_t leaf = 0;
  tree.find(&target, 1, &leaf);
  CHECK(leaf == 17);
  return 0;
}
