#include "codecs.hpp"

#include <cctype>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "gil.hpp"

#if REPLAY_BUFFER_WITH_COMPRESSION
#include "replay_buffer/compression/compressed_buffer.hpp"
#include "replay_buffer/dedup/compressed_frames.hpp"
#endif
#include "replay_buffer/dedup/dedup_buffer.hpp"

namespace replay_buffer::bindings {

namespace {

// Fields of fewer bytes than this cannot shrink enough to pay for a codec's framing.
constexpr std::size_t kMinCompressibleBytes = 32;

const char* const kKnownCodecs = "'lz4', 'zstd', 'zstd:<level>' or ('zstd', <level>) with level 1..22, or None";

[[noreturn]] void unknown_codec(const std::string& field, const std::string& given) {
  throw py::value_error("field '" + field + "': unknown codec " + given + " (known codecs: " + kKnownCodecs + ")");
}

compression::Codec zstd_at(py::handle level_object, const std::string& field, const std::string& given) {
  if (PyBool_Check(level_object.ptr()) || !PyLong_Check(level_object.ptr())) unknown_codec(field, given);
  int overflow = 0;
  const long level = PyLong_AsLongAndOverflow(level_object.ptr(), &overflow);
  if (overflow != 0 || level < compression::Codec::kMinZstdLevel || level > compression::Codec::kMaxZstdLevel) {
    throw py::value_error("field '" + field + "': zstd level " + std::string(py::str(level_object)) + " is out of range (1..22)");
  }
  return {compression::CodecKind::kZstd, static_cast<int>(level)};
}

}  // namespace

compression::Codec parse_codec(py::handle spec, const std::string& field) {
  const std::string given = py::repr(spec);
  if (spec.is_none()) return {};
  if (py::isinstance<py::str>(spec)) {
    std::string text = spec.cast<std::string>();
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (text == "none") return {};
    if (text == "lz4") return {compression::CodecKind::kLz4, 0};
    if (text == "zstd") return {compression::CodecKind::kZstd, compression::Codec::kDefaultZstdLevel};
    if (text.rfind("zstd:", 0) == 0) {
      const std::string digits = text.substr(5);
      if (digits.empty() || digits.size() > 3 || digits.find_first_not_of("0123456789") != std::string::npos) unknown_codec(field, given);
      return zstd_at(py::int_(std::stoi(digits)), field, given);
    }
    unknown_codec(field, given);
  }
  if (py::isinstance<py::tuple>(spec) || py::isinstance<py::list>(spec)) {
    auto parts = py::reinterpret_borrow<py::sequence>(spec);
    if (py::len(parts) == 0 || py::len(parts) > 2 || !py::isinstance<py::str>(parts[0])) unknown_codec(field, given);
    const compression::Codec codec = parse_codec(parts[0], field);
    if (py::len(parts) == 1) return codec;
    if (codec.kind != compression::CodecKind::kZstd) {
      throw py::value_error("field '" + field + "': only zstd takes a level, got " + given + " (known codecs: " + kKnownCodecs + ")");
    }
    return zstd_at(parts[1], field, given);
  }
  unknown_codec(field, given);
}

std::vector<std::pair<std::string, compression::Codec>> parse_compress(py::handle mapping) {
  std::vector<std::pair<std::string, compression::Codec>> result;
  if (mapping.is_none()) return result;
  if (!py::isinstance<py::dict>(mapping) && !py::hasattr(mapping, "items")) {
    throw py::type_error("compress must be a mapping of field name -> codec ('lz4', 'zstd', 'zstd:<level>')");
  }
  for (auto item : mapping.attr("items")()) {
    auto pair = item.cast<py::tuple>();
    if (!py::isinstance<py::str>(pair[0])) throw py::type_error("compress: field names must be str, got " + std::string(py::repr(pair[0])));
    const auto name = pair[0].cast<std::string>();
    result.emplace_back(name, parse_codec(pair[1], name));
  }
  return result;
}

std::vector<compression::Codec> resolve_codecs(const Schema& schema, const std::vector<std::pair<std::string, compression::Codec>>& compress,
                                               bool dedup, bool file_backed) {
  std::vector<compression::Codec> codecs;
  for (const Field& field : schema) codecs.push_back(field.codec);
  for (const auto& [name, codec] : compress) {
    std::size_t index = 0;
    while (index < schema.size() && schema[index].name != name) ++index;
    if (index == schema.size()) {
      std::string known;
      for (const Field& field : schema) known += (known.empty() ? "" : ", ") + field.name;
      throw py::value_error("compress names field '" + name + "', which the buffer does not have (its fields are: " + known + ")");
    }
    if (schema[index].codec.enabled() && !(schema[index].codec == codec)) {
      throw py::value_error("field '" + name + "': the schema gives codec '" + schema[index].codec.name() + "' and compress= gives '" +
                            codec.name() + "'");
    }
    codecs[index] = codec;
  }
  for (std::size_t i = 0; i < schema.size(); ++i) {
    if (!codecs[i].enabled()) continue;
    const Field& field = schema[i];
    if (field.row_bytes < kMinCompressibleBytes) {
      throw py::value_error("field '" + field.name + "': rows of " + std::to_string(field.row_bytes) + " bytes cannot be compressed (codec '" +
                            codecs[i].name() + "'; a codec needs rows of at least " + std::to_string(kMinCompressibleBytes) + " bytes)");
    }
    if (file_backed) throw py::value_error("field '" + field.name + "': compressed fields do not combine with storage_dir (compressed rows live in memory)");
  }
  if (dedup) {  // state and next_state share frames: one codec for both
    const auto codec_of = [&](const std::string& name) -> const compression::Codec* {
      for (std::size_t i = 0; i < schema.size(); ++i) {
        if (schema[i].name == name) return &codecs[i];
      }
      return nullptr;
    };
    const compression::Codec* state = codec_of("state");
    const compression::Codec* next = codec_of("next_state");
    if (state != nullptr && next != nullptr && !(*state == *next)) {
      const bool next_has = next->enabled();
      throw py::value_error("field '" + std::string(next_has ? "next_state" : "state") + "': next_state='dedup' shares frames between state and " +
                            "next_state, so both need the same codec: expected '" + (next_has ? state : next)->name() + "' like '" +
                            (next_has ? "state" : "next_state") + "', got '" + (next_has ? next : state)->name() + "'");
    }
  }
  return codecs;
}

bool any_codec(const std::vector<compression::Codec>& codecs) {
  for (const auto& codec : codecs) {
    if (codec.enabled()) return true;
  }
  return false;
}

#if REPLAY_BUFFER_WITH_COMPRESSION

std::unique_ptr<core::ReplayBufferInterface> make_compressed(std::size_t capacity, const std::vector<std::size_t>& row_bytes,
                                                             const std::vector<compression::Codec>& codecs, const EngineFactory& make_inner) {
  return std::make_unique<compression::CompressedBuffer>(capacity, row_bytes, codecs, make_inner);
}

std::unique_ptr<dedup::FrameCodec> make_frame_codec(const compression::Codec& codec, std::size_t frame_bytes) {
  return std::make_unique<dedup::CompressedFrames>(codec, frame_bytes);
}

void add_compression_stats(py::dict& stats, const core::ReplayBufferInterface& engine, const dedup::DedupBuffer* dedup, const Schema& schema,
                           std::size_t size) {
  const auto* compressed = dynamic_cast<const compression::CompressedBuffer*>(&engine);
  const auto frames = dedup != nullptr ? dedup->frame_codec_stats() : std::nullopt;
  if (compressed == nullptr && !frames) return;
  py::dict fields;
  if (frames) {
    std::size_t raw = 0;
    for (const Field& field : schema) raw += field.codec_on_frames ? size * field.row_bytes : 0;
    for (const Field& field : schema) {
      if (!field.codec_on_frames) continue;
      py::dict entry;
      entry["codec"] = field.codec.name();
      entry["frames"] = true;
      entry["bytes_held"] = frames->bytes_held;
      entry["bytes_raw"] = raw;
      entry["ratio"] = frames->bytes_held == 0 ? 1.0 : static_cast<double>(raw) / static_cast<double>(frames->bytes_held);
      entry["rows_stored_raw"] = frames->frames_stored_raw;
      entry["frames_held"] = frames->frames_held;
      fields[field.name.c_str()] = entry;
    }
  }
  for (const auto& column : compressed != nullptr ? compressed->compression_stats() : std::vector<compression::ColumnCompressionStats>{}) {
    const Field& field = schema[column.column];
    py::dict entry;
    const std::size_t raw = size * field.row_bytes;
    entry["codec"] = field.codec.name();
    entry["bytes_held"] = column.bytes_held;
    entry["bytes_raw"] = raw;
    entry["ratio"] = column.bytes_held == 0 ? 1.0 : static_cast<double>(raw) / static_cast<double>(column.bytes_held);
    entry["rows_stored_raw"] = column.rows_stored_raw;
    fields[field.name.c_str()] = entry;
  }
  stats["compression"] = fields;
}

StoredRows parse_stored(py::handle stored, const Schema& schema, std::optional<std::size_t> plain_rows) {
  if (!py::isinstance<py::dict>(stored)) throw py::value_error("state 'stored' must be a dict of field -> {'lengths', 'data'}");
  const auto fields = py::reinterpret_borrow<py::dict>(stored);
  StoredRows result;
  std::optional<std::size_t> rows = plain_rows;
  std::size_t expected = 0;
  for (const Field& field : schema) {
    if (!column_codec(field)) continue;
    ++expected;
    const std::string prefix = "state 'stored' field '" + field.name + "': ";
    if (!fields.contains(field.name.c_str())) throw py::value_error(prefix + "missing");
    py::object entry = fields[field.name.c_str()];
    if (!py::isinstance<py::dict>(entry)) throw py::value_error(prefix + "expected a dict with 'lengths' and 'data'");
    auto parts = py::reinterpret_borrow<py::dict>(entry);
    if (!parts.contains("lengths") || !parts.contains("data")) throw py::value_error(prefix + "expected a dict with 'lengths' and 'data'");
    auto lengths = py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast>::ensure(parts["lengths"]);
    auto data = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>::ensure(parts["data"]);
    if (!lengths || lengths.ndim() != 1) throw py::value_error(prefix + "'lengths' must be a one-dimensional uint32 array");
    if (!data || data.ndim() != 1) throw py::value_error(prefix + "'data' must be a one-dimensional uint8 array");
    const auto n = static_cast<std::size_t>(lengths.size());
    if (rows && *rows != n) throw py::value_error(prefix + std::to_string(n) + " rows where the other columns hold " + std::to_string(*rows));
    rows = n;
    result.lengths.push_back(lengths);
    result.data.push_back(data);
  }
  if (fields.size() != expected) throw py::value_error("state 'stored' names fields without a codec");
  result.rows = rows.value_or(0);
  return result;
}

core::BufferState export_stored(const core::ReplayBufferInterface& engine, std::byte* const* destinations, std::size_t rows, const Schema& schema,
                                py::dict& stored) {
  const auto& compressed = dynamic_cast<const compression::CompressedBuffer&>(engine);
  std::vector<compression::StoredColumn> columns;
  core::BufferState state;
  {
    ReleaseGil release;
    state = compressed.export_stored(destinations, rows, columns);
  }
  std::size_t k = 0;
  for (const Field& field : schema) {
    if (!column_codec(field)) continue;
    py::dict entry;
    entry["lengths"] = py::array_t<std::uint32_t>(static_cast<py::ssize_t>(columns[k].lengths.size()), columns[k].lengths.data());
    entry["data"] = py::array_t<std::uint8_t>(static_cast<py::ssize_t>(columns[k].data.size()), reinterpret_cast<const std::uint8_t*>(columns[k].data.data()));
    stored[field.name.c_str()] = entry;
    ++k;
  }
  return state;
}

namespace {
std::vector<compression::StoredColumnView> views_of(const StoredRows& stored) {
  std::vector<compression::StoredColumnView> views;
  for (std::size_t k = 0; k < stored.lengths.size(); ++k) {
    views.push_back({static_cast<const std::uint32_t*>(stored.lengths[k].data()), static_cast<const std::byte*>(stored.data[k].data()),
                     static_cast<std::size_t>(stored.data[k].size())});
  }
  return views;
}
}  // namespace

void throw_stored_error(const std::invalid_argument& error, const Schema& schema) {
  std::string message = error.what();  // "column <c> row <i>: ..." -> "stored field '<name>' row <i>: ..."
  std::size_t column = 0;
  const std::size_t rest = message.find_first_not_of("0123456789", 7);
  if (message.rfind("column ", 0) == 0 && std::sscanf(message.c_str(), "column %zu", &column) == 1 && column < schema.size() &&
      rest != std::string::npos) {
    message = "stored field '" + schema[column].name + "'" + message.substr(rest);
  }
  throw py::value_error(message);
}

void import_stored(core::ReplayBufferInterface& engine, const core::BufferState& state, const std::byte* const* sources, const StoredRows& stored,
                   const Schema& schema) {
  auto& compressed = dynamic_cast<compression::CompressedBuffer&>(engine);
  const auto views = views_of(stored);
  try {
    ReleaseGil release;
    compressed.import_stored(state, sources, views, stored.rows);
  } catch (const std::invalid_argument& error) {
    throw_stored_error(error, schema);
  }
}

void add_stored(core::ReplayBufferInterface& engine, const std::byte* const* sources, const StoredRows& stored, const double* priorities,
                const std::int64_t* streams) {
  dynamic_cast<compression::CompressedBuffer&>(engine).add_stored(sources, views_of(stored), stored.rows, priorities, streams);
}

py::tuple compress_rows(const py::array& rows, const py::handle& codec_spec) {
  const compression::Codec codec = parse_codec(codec_spec, "rows");
  if (!codec.enabled()) throw py::value_error("compress_rows needs a codec, got " + std::string(py::str(codec_spec)));
  const auto array = py::array::ensure(rows, py::array::c_style);
  if (!array || array.ndim() < 1) throw py::value_error("compress_rows expects an array of rows (a leading batch axis)");
  const auto count = static_cast<std::size_t>(array.shape(0));
  std::size_t bytes = static_cast<std::size_t>(array.itemsize());
  for (py::ssize_t d = 1; d < array.ndim(); ++d) bytes *= static_cast<std::size_t>(array.shape(d));
  if (bytes == 0 || bytes >= (std::size_t{1} << 31)) throw py::value_error("compress_rows: rows of " + std::to_string(bytes) + " bytes");
  py::array_t<std::uint32_t> lengths(static_cast<py::ssize_t>(count));
  std::vector<std::byte> data;
  {
    ReleaseGil release;
    compression::BatchCompressor compressor({0}, {bytes}, {codec}, 0);
    const auto* source = static_cast<const std::byte*>(array.data());
    compressor.compress(&source, 0, count);
    std::size_t total = 0;
    for (std::size_t r = 0; r < count; ++r) total += compressor.length(0, r) != 0 ? compressor.length(0, r) : bytes;
    data.resize(total);
    std::uint32_t* out = lengths.mutable_data();
    std::size_t offset = 0;
    for (std::size_t r = 0; r < count; ++r) {
      const std::size_t length = compressor.length(0, r);
      std::memcpy(data.data() + offset, length != 0 ? compressor.scratch(0, r) : source + r * bytes, length != 0 ? length : bytes);
      out[r] = static_cast<std::uint32_t>(length != 0 ? length : bytes);
      offset += out[r];
    }
  }
  py::array_t<std::uint8_t> packed(static_cast<py::ssize_t>(data.size()), reinterpret_cast<const std::uint8_t*>(data.data()));
  return py::make_tuple(lengths, packed);
}

#else

StoredRows parse_stored(py::handle, const Schema&, std::optional<std::size_t>) {
  throw py::value_error("this build of ray_replay has no compression (built with REPLAY_BUFFER_WITH_COMPRESSION=OFF)");
}
core::BufferState export_stored(const core::ReplayBufferInterface&, std::byte* const*, std::size_t, const Schema&, py::dict&) {
  throw py::value_error("this build of ray_replay has no compression");
}
void import_stored(core::ReplayBufferInterface&, const core::BufferState&, const std::byte* const*, const StoredRows&, const Schema&) {
  throw py::value_error("this build of ray_replay has no compression");
}
void add_stored(core::ReplayBufferInterface&, const std::byte* const*, const StoredRows&, const double*, const std::int64_t*) {
  throw py::value_error("this build of ray_replay has no compression");
}
void throw_stored_error(const std::invalid_argument& error, const Schema&) { throw py::value_error(error.what()); }
py::tuple compress_rows(const py::array&, const py::handle&) {
  throw py::value_error("this build of ray_replay has no compression (built with REPLAY_BUFFER_WITH_COMPRESSION=OFF)");
}

std::unique_ptr<core::ReplayBufferInterface> make_compressed(std::size_t, const std::vector<std::size_t>&, const std::vector<compression::Codec>&,
                                                             const EngineFactory&) {
  throw py::value_error("this build of ray_replay has no compression (built with REPLAY_BUFFER_WITH_COMPRESSION=OFF)");
}

void add_compression_stats(py::dict&, const core::ReplayBufferInterface&, const dedup::DedupBuffer*, const Schema&, std::size_t) {}

std::unique_ptr<dedup::FrameCodec> make_frame_codec(const compression::Codec&, std::size_t) {
  throw py::value_error("this build of ray_replay has no compression (built with REPLAY_BUFFER_WITH_COMPRESSION=OFF)");
}

#endif

}  // namespace replay_buffer::bindings
