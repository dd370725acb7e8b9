// The typed C++ front-end: transitions of trivially copyable State and Action types, stored by any
// of the byte-level engines (one column per member of Experience).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "replay_buffer/core/buffer_interface.hpp"

namespace replay_buffer::core {

template <class State, class Action>
struct Experience {
  State state;
  Action action;
  float reward;
  State next_state;
  bool done;
};

// A sampled batch, column by column (the layout a learner feeds to its network).
template <class State, class Action>
struct ExperienceBatch {
  std::vector<State> states;
  std::vector<Action> actions;
  std::vector<float> rewards;
  std::vector<State> next_states;
  std::vector<std::uint8_t> dones;  // not vector<bool>: it has no contiguous storage
  std::vector<std::int64_t> ids;

  std::size_t size() const noexcept { return states.size(); }
  Experience<State, Action> operator[](std::size_t i) const {
    return {states[i], actions[i], rewards[i], next_states[i], dones[i] != 0};
  }

  void resize(std::size_t n) {
    states.resize(n); actions.resize(n); rewards.resize(n); next_states.resize(n); dones.resize(n); ids.resize(n);
  }
  std::array<std::byte*, 5> columns() noexcept {
    return {reinterpret_cast<std::byte*>(states.data()), reinterpret_cast<std::byte*>(actions.data()),
            reinterpret_cast<std::byte*>(rewards.data()), reinterpret_cast<std::byte*>(next_states.data()),
            reinterpret_cast<std::byte*>(dones.data())};
  }
};

template <class Engine, class State, class Action>
class TypedReplayBuffer {
  static_assert(std::is_trivially_copyable_v<State>, "State must be trivially copyable (it is stored as bytes)");
  static_assert(std::is_trivially_copyable_v<Action>, "Action must be trivially copyable (it is stored as bytes)");
  static_assert(sizeof(bool) == 1, "done is stored as one byte");

 public:
  using value_type = Experience<State, Action>;
  using batch_type = ExperienceBatch<State, Action>;

  template <class... EngineArgs>
  explicit TypedReplayBuffer(std::size_t capacity, EngineArgs&&... engine_args)
      : engine_(capacity, row_bytes(), std::forward<EngineArgs>(engine_args)...) {}

  void add(const value_type& experience, const double* priority = nullptr) {
    const std::uint8_t done = experience.done ? 1 : 0;
    const std::array<const std::byte*, 5> sources = {
        reinterpret_cast<const std::byte*>(&experience.state), reinterpret_cast<const std::byte*>(&experience.action),
        reinterpret_cast<const std::byte*>(&experience.reward), reinterpret_cast<const std::byte*>(&experience.next_state),
        reinterpret_cast<const std::byte*>(&done)};
    engine_.add(sources.data(), 1, priority);
  }

  batch_type sample(std::size_t batch_size) {
    SampleRequest request;
    request.batch_size = batch_size;
    return sample(request);
  }

  std::size_t size() const { return engine_.size(); }
  std::size_t capacity() const { return engine_.capacity(); }
  BufferStats stats() const { return engine_.stats(); }
  Engine& engine() noexcept { return engine_; }

 protected:
  batch_type sample(SampleRequest& request) {
    batch_type batch;
    batch.resize(request.batch_size);
    request.ids = batch.ids.data();
    auto columns = batch.columns();
    batch.resize(engine_.sample(request, columns.data()));
    return batch;
  }

 private:
  static std::vector<std::size_t> row_bytes() {
    return {sizeof(State), sizeof(Action), sizeof(float), sizeof(State), 1};
  }

  Engine engine_;
};

}  // namespace replay_buffer::core
