// Per-field compression in the bindings: parsing codec specs (schema's third element, compress=),
// checking which fields can take one, building the compressing engine and reporting its stats.
//
// Codec specs: "lz4"; "zstd" (level 3); "zstd:<level>" or ("zstd", <level>) with level 1..22;
// ("lz4",); None or "none" (no codec). Anything else is a ValueError naming the field and the codecs known.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "replay_buffer/compression/codec_spec.hpp"
#include "replay_buffer/core/buffer_interface.hpp"
#include "replay_buffer/dedup/frame_codec.hpp"
#include "schema.hpp"

namespace replay_buffer::dedup {
class DedupBuffer;
}

namespace replay_buffer::bindings {

// One codec spec for `field` (its name, for errors).
compression::Codec parse_codec(py::handle spec, const std::string& field);

// compress=: None, or a mapping field name -> codec spec (names are checked against the schema later).
std::vector<std::pair<std::string, compression::Codec>> parse_compress(py::handle mapping);

// The codec of every field of `schema`: the schema's own, overridden where compress= names the field
// (a field given two different codecs is an error). Throws ValueError for a compress= name that is not
// a field, a field too small to compress, dedup observation fields of different codecs (state and
// next_state share frames: both need the same one, or none), or any codec on a file-backed buffer.
// Changes nothing.
std::vector<compression::Codec> resolve_codecs(const Schema& schema, const std::vector<std::pair<std::string, compression::Codec>>& compress,
                                               bool dedup, bool file_backed);

bool any_codec(const std::vector<compression::Codec>& codecs);

// Whether a field's rows are compressed whole (by the compressing decorator; stored as they are in a
// state): a field with a codec, unless that codec applies to dedup frames.
inline bool column_codec(const Field& field) { return field.codec.enabled() && !field.codec_on_frames; }

// next_state='dedup' with a codec on the observation fields: where the dedup buffer keeps its frames.
// Throws ValueError in a build without compression.
std::unique_ptr<dedup::FrameCodec> make_frame_codec(const compression::Codec& codec, std::size_t frame_bytes);

using EngineFactory = std::function<std::unique_ptr<core::ReplayBufferInterface>(std::vector<std::size_t> row_bytes)>;

// The compressing decorator over the buffer make_inner builds (from the columns without a codec plus
// an 8-byte sequence column). Throws ValueError in a build without compression.
std::unique_ptr<core::ReplayBufferInterface> make_compressed(std::size_t capacity, const std::vector<std::size_t>& row_bytes,
                                                             const std::vector<compression::Codec>& codecs, const EngineFactory& make_inner);

// stats(): "compression" -> {field: {"codec", "bytes_held", "bytes_raw", "ratio", "rows_stored_raw"}}
// for a compressed engine or dedup frames with a codec (nothing otherwise). The dedup observation
// fields share their frames: both entries give the frames' figures ("frames": True, bytes_raw both
// fields' rows, rows_stored_raw the frames stored raw, plus frames_held), counted once in bytes_held.
void add_compression_stats(py::dict& stats, const core::ReplayBufferInterface& engine, const dedup::DedupBuffer* dedup, const Schema& schema,
                           std::size_t size);

// Compressed rows as stored, in a state: state["stored"] = {field: {"lengths": uint32[rows] (a length
// equal to the row's size marks a row stored raw), "data": uint8[sum of lengths]}} for every field
// with a codec; state["columns"] then holds the other fields only.
struct StoredRows {
  std::size_t rows = 0;
  std::vector<py::array> lengths, data;  // per compressed field, schema order; kept alive for the import
};

// Fills `stored` from a compressed engine; destinations: per field, null for the codec fields.
core::BufferState export_stored(const core::ReplayBufferInterface& engine, std::byte* const* destinations, std::size_t rows, const Schema& schema,
                                py::dict& stored);

// Checks the shapes and dtypes of state["stored"] (ValueError naming the field); plain_rows: the rows
// of the plain columns, which the stored ones must match.
StoredRows parse_stored(py::handle stored, const Schema& schema, std::optional<std::size_t> plain_rows);

// Imports a state whose codec fields come as stored (each row checked to decode; a corrupt one is a
// ValueError naming the field and row, and changes nothing). sources: per field, null for codec fields.
// A compressed engine's add_stored (see CompressedBuffer): call without the GIL. Errors as import_stored's.
void add_stored(core::ReplayBufferInterface& engine, const std::byte* const* sources, const StoredRows& stored, const double* priorities,
                const std::int64_t* streams);

// A std::invalid_argument of the compressed engine ("column <c> row <i>: ...") as a ValueError naming the field.
[[noreturn]] void throw_stored_error(const std::invalid_argument& error, const Schema& schema);

// compress_rows(rows, codec) -> (lengths uint32[n], data uint8[sum]): rows (n, ...) compressed one by
// one, as a buffer with that codec stores them (a row that does not shrink is kept raw, its length the
// row's size). GIL released; in parallel over rows for a batch of 1 MiB or more (BatchCompressor).
py::tuple compress_rows(const py::array& rows, const py::handle& codec);

void import_stored(core::ReplayBufferInterface& engine, const core::BufferState& state, const std::byte* const* sources, const StoredRows& stored,
                   const Schema& schema);

}  // namespace replay_buffer::bindings
