// The prioritized ring: core::RingBuffer sampled by the PrioritizedSelector. Declared here, not in
// core/, so that core/ includes nothing of prioritization/ (the dependency runs one way). The name
// core::PrioritizedBuffer is kept for C++ users of earlier versions.
#pragma once

#include "replay_buffer/core/ring_buffer.hpp"
#include "replay_buffer/core/selector.hpp"
#include "replay_buffer/prioritization/prioritized_selector.hpp"

namespace replay_buffer::prioritization {

static_assert(core::Selector<PrioritizedSelector>);

using PrioritizedRingBuffer = core::RingBuffer<PrioritizedSelector>;

}  // namespace replay_buffer::prioritization

namespace replay_buffer::core {

using PrioritizedBuffer = prioritization::PrioritizedRingBuffer;

}  // namespace replay_buffer::core
