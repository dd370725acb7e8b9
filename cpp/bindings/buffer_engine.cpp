// NativeBuffer's engine factory: the native buffer (fifo, uniform, prioritized, lock-free, dedup, compressed) for a schema.
#include "native_buffer.hpp"

#include "replay_buffer/concurrency/seqlock_ring_buffer.hpp"
#include "replay_buffer/core/fifo_buffer.hpp"
#include "replay_buffer/core/ring_buffer.hpp"
#include "replay_buffer/prioritization/prioritized_ring.hpp"
#include "gil.hpp"

namespace replay_buffer::bindings {

std::unique_ptr<core::ReplayBufferInterface> NativeBuffer::make_engine(std::vector<std::size_t> row_bytes) const {
  switch (type_) {
    case BufferType::kFifo:
      return std::make_unique<core::FifoBuffer>(capacity_, std::move(row_bytes), on_full_);
    case BufferType::kUniform:
      return std::make_unique<core::UniformBuffer>(capacity_, std::move(row_bytes), seed_);
    case BufferType::kPrioritized:
      return std::make_unique<core::PrioritizedBuffer>(
          capacity_, std::move(row_bytes), seed_,
          prioritization::PriorityOptions{alpha_, eps_, sampling_});
    case BufferType::kLockFree:
      return std::make_unique<concurrency::SeqlockRingBuffer>(capacity_, std::move(row_bytes), seed_);
  }
  throw std::logic_error("unknown buffer type");
}

// next_state="dedup": the observation fields, and how frame_stack_axis cuts them into frames.
std::pair<dedup::ObservationColumns, dedup::FrameLayout> NativeBuffer::dedup_layout(const Schema& schema) const {
  std::optional<std::size_t> state, next;
  std::string known;
  for (std::size_t i = 0; i < schema.size(); ++i) {
    if (schema[i].name == "state") state = i;
    if (schema[i].name == "next_state") next = i;
    known += (known.empty() ? "" : ", ") + schema[i].name;
  }
  if (!state || !next) throw py::value_error("next_state='dedup' needs fields 'state' and 'next_state' (the buffer's fields are: " + known + ")");
  const Field& observation = schema[*state];
  const Field& next_observation = schema[*next];
  if (observation.shape != next_observation.shape || !observation.dtype.equal(next_observation.dtype)) {
    throw py::value_error("next_state='dedup' needs 'state' and 'next_state' of one shape and dtype, got " + observation.shape_text() + " " +
                          std::string(py::str(observation.dtype)) + " and " + next_observation.shape_text() + " " +
                          std::string(py::str(next_observation.dtype)));
  }
  std::size_t outer = 1, frames = 1, inner = observation.row_bytes;
  if (frame_stack_axis_) {
    const auto ndim = static_cast<py::ssize_t>(observation.shape.size());
    const py::ssize_t axis = *frame_stack_axis_ < 0 ? *frame_stack_axis_ + ndim : *frame_stack_axis_;
    if (axis < 0 || axis >= ndim) {
      throw py::value_error("frame_stack_axis " + std::to_string(*frame_stack_axis_) + " is out of range for observations of shape " +
                            observation.shape_text());
    }
    frames = static_cast<std::size_t>(observation.shape[axis]);
    for (py::ssize_t d = 0; d < axis; ++d) outer *= static_cast<std::size_t>(observation.shape[d]);
    inner = observation.row_bytes / outer / frames;
  }
  return {dedup::ObservationColumns{*state, *next}, dedup::FrameLayout(outer, frames, inner)};
}

// The engine over `schema` (dedup, or a plain buffer of the type), for row_bytes (the schema's,
// plus any columns a decorator adds after them); the dedup buffer, if any, lands in *dedup.
std::unique_ptr<core::ReplayBufferInterface> NativeBuffer::make_base(const Schema& schema, std::vector<std::size_t> row_bytes, dedup::DedupBuffer** dedup) const {
  if (next_state_ != NextState::kDedup) return make_engine(std::move(row_bytes));
  auto [observations, layout] = dedup_layout(schema);
  const Field& state = schema[observations.state];  // a codec here is on the frames (resolve_codecs: the same on next_state)
  auto codec = state.codec_on_frames ? make_frame_codec(state.codec, layout.frame_bytes()) : nullptr;
  auto buffer = std::make_unique<dedup::DedupBuffer>(
      capacity_, row_bytes, observations, std::move(layout), [this](std::vector<std::size_t> inner) { return make_engine(std::move(inner)); },
      std::move(codec));
  *dedup = buffer.get();
  return buffer;
}

// Checks the codecs and builds the engine; throws (changing nothing) on a bad combination.
void NativeBuffer::create_engine(Schema schema) {
  const bool dedup_frames = next_state_ == NextState::kDedup;
  auto codecs = resolve_codecs(schema, compress_, dedup_frames, storage_dir_.has_value());
  for (std::size_t i = 0; i < schema.size(); ++i) {
    schema[i].codec = codecs[i];
    // Under dedup the observation fields' codec compresses their frames (DedupBuffer), not their rows.
    schema[i].codec_on_frames = dedup_frames && codecs[i].enabled() && (schema[i].name == "state" || schema[i].name == "next_state");
    if (schema[i].codec_on_frames) codecs[i] = {};
  }
  std::vector<std::size_t> row_bytes;
  for (const Field& field : schema) row_bytes.push_back(field.row_bytes);
  std::unique_ptr<core::ReplayBufferInterface> engine;
  dedup::DedupBuffer* dedup = nullptr;
  const bool compressed = any_codec(codecs);
  if (compressed) {
    Schema plain;  // the fields the inner buffer keeps as they are (then a sequence column)
    for (const Field& field : schema) {
      if (!column_codec(field)) plain.push_back(field);
    }
    engine = make_compressed(capacity_, row_bytes, codecs,
                             [&](std::vector<std::size_t> inner) { return make_base(plain, std::move(inner), &dedup); });
  } else {
    engine = make_base(schema, std::move(row_bytes), &dedup);
  }
  if (storage_dir_ || prefault_) {
    memory::StorageOptions storage{storage_dir_.value_or(""), {}, prefault_};
    if (storage_dir_) {
      for (std::size_t i = 0; i < schema.size(); ++i) storage.column_files.push_back("column-" + std::to_string(i) + ".bin");
    }
    ReleaseGil release;  // prefaulting touches the whole reservation
    engine->configure_storage(storage);
  }
  engine->set_collect_stats(collect_stats_);
  // dedup and compressed fields too: both decorators read rows by id (gather_ids)
  if (type_ == BufferType::kUniform || type_ == BufferType::kPrioritized) {
    sequences_ = std::make_unique<SequenceSupport>(capacity_, schema, sequence_priority_eta_);
  }
  schema_ = std::move(schema);
  engine_ = std::move(engine);
  dedup_ = dedup;
  compressed_ = compressed;
}

}  // namespace replay_buffer::bindings
