// DedupBuffer with compressed frames (CompressedFrames) against one without and a plain buffer fed the
// same rows: identical contents for interleaved (4 x 1-byte inner, SSE2) and contiguous (stacked on
// the first axis) layouts, with streams, resets, noise frames stored raw and wrap-around; and the
// failure contract: a frame store that fails in the middle of a batch (out of memory) changes nothing.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include "check.hpp"
#include "replay_buffer/core/ring_buffer.hpp"
#include "replay_buffer/dedup/compressed_frames.hpp"
#include "replay_buffer/dedup/dedup_buffer.hpp"

using namespace replay_buffer;

namespace {

constexpr std::size_t kFrames = 4;

// Rows of (state, action, next_state): `streams` writers stepping through episodes; frames are
// smooth (compress), noise (stored raw) or zeros.
struct Rows {
  std::vector<std::byte> state, next;
  std::vector<std::int64_t> action, streams;
};

Rows make_rows(const dedup::FrameLayout& layout, std::size_t count, std::size_t streams, std::mt19937_64& rng) {
  const std::size_t frame = layout.frame_bytes(), stack = layout.stack_bytes();
  std::vector<std::vector<std::vector<std::byte>>> tails(streams);  // per stream: its K newest frames
  auto new_frame = [&] {
    std::vector<std::byte> f(frame);
    const auto kind = rng() % 10, shift = rng() % 200;
    for (std::size_t b = 0; b < frame; ++b) f[b] = static_cast<std::byte>(kind == 0 ? rng() : kind == 1 ? 0 : (b / 16 + shift) & 0xff);
    return f;
  };
  auto to_stack = [&](const std::vector<std::vector<std::byte>>& frames, std::byte* out) {
    std::vector<const std::byte*> pointers;
    for (const auto& f : frames) pointers.push_back(f.data());
    layout.assemble(pointers.data(), out);
  };
  for (auto& t : tails) t.assign(kFrames, new_frame());
  Rows rows;
  rows.state.resize(count * stack);
  rows.next.resize(count * stack);
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t s = rng() % streams;
    rows.streams.push_back(static_cast<std::int64_t>(s));
    rows.action.push_back(static_cast<std::int64_t>(i));
    to_stack(tails[s], rows.state.data() + i * stack);
    auto after = tails[s];
    after.erase(after.begin());
    after.push_back(new_frame());
    to_stack(after, rows.next.data() + i * stack);
    tails[s] = rng() % 12 == 0 ? std::vector<std::vector<std::byte>>(kFrames, new_frame()) : after;  // an episode ends
  }
  return rows;
}

// A CompressedFrames that runs out of memory at the `fail_at`-th frame committed from now (0: never),
// having committed the frames before it, or in compress() while fail_compress is set.
class FailingFrames final : public dedup::FrameCodec {
 public:
  FailingFrames(compression::Codec codec, std::size_t frame_bytes, std::size_t* fail_at, bool* fail_compress)
      : frames_(codec, frame_bytes), fail_at_(fail_at), fail_compress_(fail_compress) {}
  void compress(const std::byte* const* frames, std::size_t count) override {
    if (*fail_compress_) throw std::bad_alloc();
    frames_.compress(frames, count);
  }
  void commit(const dedup::FramePool::Slot* slots, std::size_t count) override {
    for (std::size_t i = 0; i < count; ++i) {
      if (*fail_at_ != 0 && --*fail_at_ == 0) {
        frames_.commit(slots, i);
        throw std::bad_alloc();
      }
    }
    frames_.commit(slots, count);
  }
  void load(dedup::FramePool::Slot slot, std::byte* out) const override { frames_.load(slot, out); }
  void drop(dedup::FramePool::Slot slot) noexcept override { frames_.drop(slot); }
  void clear() noexcept override { frames_.clear(); }
  dedup::FrameCodecStats stats() const noexcept override { return frames_.stats(); }

 private:
  dedup::CompressedFrames frames_;
  std::size_t* fail_at_;
  bool* fail_compress_;
};

std::unique_ptr<dedup::DedupBuffer> make_dedup(std::size_t capacity, const dedup::FrameLayout& layout, std::unique_ptr<dedup::FrameCodec> codec) {
  const std::size_t stack = layout.stack_bytes();
  return std::make_unique<dedup::DedupBuffer>(
      capacity, std::vector<std::size_t>{stack, 8, stack}, dedup::ObservationColumns{0, 2}, layout,
      [capacity](std::vector<std::size_t> row_bytes) { return std::make_unique<core::UniformBuffer>(capacity, std::move(row_bytes), std::uint64_t{7}); },
      std::move(codec));
}

// Every row held, oldest first: state, action, next_state back to back.
std::vector<std::byte> contents(const core::ReplayBufferInterface& buffer, std::size_t stack) {
  const std::size_t n = buffer.size();
  std::vector<std::byte> state(n * stack), next(n * stack), action(n * 8);
  std::byte* destinations[] = {state.data(), action.data(), next.data()};
  buffer.export_state(destinations, n);
  state.insert(state.end(), action.begin(), action.end());
  state.insert(state.end(), next.begin(), next.end());
  return state;
}

void add(core::ReplayBufferInterface& buffer, const Rows& rows, std::size_t first, std::size_t count, std::size_t stack) {
  const std::byte* sources[] = {rows.state.data() + first * stack, reinterpret_cast<const std::byte*>(rows.action.data() + first),
                                rows.next.data() + first * stack};
  buffer.add_with_streams(sources, count, nullptr, rows.streams.data() + first);
}

void compressed_frames_hold_exactly_what_plain_frames_do(std::size_t outer, std::size_t inner) {
  const dedup::FrameLayout layout(outer, kFrames, inner);
  const std::size_t stack = layout.stack_bytes();
  std::mt19937_64 rng(outer);
  const Rows rows = make_rows(layout, 200, 3, rng);
  const std::size_t capacity = 40;
  core::UniformBuffer plain(capacity, {stack, 8, stack}, 7);
  auto frames = make_dedup(capacity, layout, nullptr);
  auto packed = make_dedup(capacity, layout, std::make_unique<dedup::CompressedFrames>(compression::Codec{compression::CodecKind::kLz4, 0}, layout.frame_bytes()));
  std::size_t first = 0;
  for (std::size_t count : {1u, 9u, 30u, 2u, 70u, 1u, 1u, 50u, 36u}) {  // 70 > capacity: a batch longer than the buffer
    add(plain, rows, first, count, stack);
    add(*frames, rows, first, count, stack);
    add(*packed, rows, first, count, stack);
    first += count;
    const auto expected = contents(plain, stack);
    CHECK(contents(*frames, stack) == expected);
    CHECK(contents(*packed, stack) == expected);
  }
  const auto codec = packed->frame_codec_stats();
  CHECK(codec && !frames->frame_codec_stats());
  CHECK(codec->frames_held == frames->stats().frames_held && codec->frames_stored_raw > 0 && codec->frames_stored_raw < codec->frames_held);
  CHECK(packed->stats().bytes_held * 2 < frames->stats().bytes_held);
  // gather_ids (sequences): padding (~0) gives zeros, live ids their rows
  std::vector<std::uint64_t> ids = {first - 1, ~std::uint64_t{0}, first - capacity};
  std::vector<std::byte> a(3 * stack), b(3 * stack), c(3 * 8), d(3 * 8), e(3 * stack, std::byte{1}), f(3 * stack, std::byte{1});
  std::byte* into_frames[] = {a.data(), c.data(), e.data()};
  std::byte* into_packed[] = {b.data(), d.data(), f.data()};
  frames->gather_ids(ids.data(), 3, into_frames);
  packed->gather_ids(ids.data(), 3, into_packed);
  CHECK(a == b && c == d && e == f);
  CHECK(b[stack] == std::byte{0} && f[2 * stack - 1] == std::byte{0});
}

void a_frame_store_failing_mid_batch_changes_nothing() {
  const dedup::FrameLayout layout(64, kFrames, 1);
  const std::size_t stack = layout.stack_bytes();
  std::mt19937_64 rng(5);
  const Rows rows = make_rows(layout, 120, 2, rng);
  std::size_t fail_at = 0;
  bool fail_compress = false;
  const compression::Codec lz4{compression::CodecKind::kLz4, 0};
  auto failing = make_dedup(30, layout, std::make_unique<FailingFrames>(lz4, layout.frame_bytes(), &fail_at, &fail_compress));
  auto reference = make_dedup(30, layout, std::make_unique<dedup::CompressedFrames>(lz4, layout.frame_bytes()));
  std::size_t first = 0;
  for (std::size_t count : {25u, 10u, 1u, 40u, 3u}) {
    for (std::size_t fail : {0u, 1u, 2u, 5u, 9u}) {  // compress(), the first frame committed, or one in the middle of the batch
      if (fail > count) continue;  // every row stores at least its next_state's new frame
      const auto before = contents(*failing, stack);
      const auto stats = failing->stats();
      fail_at = fail;
      fail_compress = fail == 0;
      CHECK_THROWS(add(*failing, rows, first, count, stack), std::bad_alloc);
      fail_at = 0;
      fail_compress = false;
      CHECK(contents(*failing, stack) == before);
      CHECK(failing->stats().frames_held == stats.frames_held && failing->stats().bytes_held == stats.bytes_held);
      CHECK(failing->stats().total_adds == stats.total_adds);
    }
    add(*failing, rows, first, count, stack);
    add(*reference, rows, first, count, stack);
    first += count;
    CHECK(contents(*failing, stack) == contents(*reference, stack));
    CHECK(failing->stats().frames_held == reference->stats().frames_held);  // the streams' links survived the failures
    CHECK(failing->stats().bytes_held == reference->stats().bytes_held);
  }
}

// A writer adds (its new frames compressed outside the data lock, a large batch in parallel) while a
// reader samples and another exports and reads stats (TSan runs this in make test-tsan): every row
// read is exactly the row added, and the end state equals that of a buffer fed serially.
void reads_during_adds_see_whole_rows(std::size_t outer, std::size_t inner) {
  const dedup::FrameLayout layout(outer, kFrames, inner);
  const std::size_t stack = layout.stack_bytes();
  std::mt19937_64 rng(11);
  const Rows rows = make_rows(layout, 2600, 3, rng);
  const compression::Codec lz4{compression::CodecKind::kLz4, 0};
  auto packed = make_dedup(1500, layout, std::make_unique<dedup::CompressedFrames>(lz4, layout.frame_bytes()));
  auto reference = make_dedup(1500, layout, std::make_unique<dedup::CompressedFrames>(lz4, layout.frame_bytes()));
  const std::vector<std::size_t> batches = {1, 9, 40, 1100, 3, 60, 1, 1200, 30, 1, 155};  // 1,100 new frames of 1 KiB: compressed in parallel
  std::atomic<bool> done{false};
  std::atomic<std::size_t> checked{0};
  std::thread sampler([&] {
    std::vector<std::byte> state(16 * stack), next(16 * stack);
    std::vector<std::int64_t> action(16);
    std::byte* destinations[] = {state.data(), reinterpret_cast<std::byte*>(action.data()), next.data()};
    core::SampleRequest request;
    request.batch_size = 16;
    while (!done.load()) {
      if (packed->size() == 0) continue;
      const std::size_t n = packed->sample(request, destinations);
      for (std::size_t i = 0; i < n; ++i) {
        const auto a = static_cast<std::size_t>(action[i]);
        CHECK(a < rows.action.size());
        CHECK(std::memcmp(state.data() + i * stack, rows.state.data() + a * stack, stack) == 0);
        CHECK(std::memcmp(next.data() + i * stack, rows.next.data() + a * stack, stack) == 0);
      }
      checked += n;
    }
  });
  std::thread exporter([&] {
    while (!done.load()) {
      const auto held = contents(*packed, stack);
      CHECK(held.size() % (2 * stack + 8) == 0);
      const std::size_t size = packed->size();  // first: once a row is held, frames are held for good here
      CHECK(packed->stats().frames_held > 0 || size == 0);
    }
  });
  std::size_t first = 0;
  for (std::size_t count : batches) {
    add(*packed, rows, first, count, stack);
    add(*reference, rows, first, count, stack);
    first += count;
  }
  for (int wait = 0; checked.load() == 0 && wait < 10'000; ++wait) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  done = true;
  sampler.join();
  exporter.join();
  CHECK(checked.load() > 0);
  CHECK(contents(*packed, stack) == contents(*reference, stack));
  CHECK(packed->stats().bytes_held == reference->stats().bytes_held && packed->stats().frames_held == reference->stats().frames_held);
}

}  // namespace

int main() {
  compressed_frames_hold_exactly_what_plain_frames_do(256, 1);   // (256, 4) stacked last: interleaved, SSE2 kernels
  compressed_frames_hold_exactly_what_plain_frames_do(1, 1024);  // (4, 1024) stacked first: decoded in place
  compressed_frames_hold_exactly_what_plain_frames_do(32, 3);    // interleaved, generic kernels
  a_frame_store_failing_mid_batch_changes_nothing();
  reads_during_adds_see_whole_rows(1, 1024);  // (4, 1024) stacked first: frames compressed in place
  reads_during_adds_see_whole_rows(256, 1);  // (256, 4) stacked last: frames extracted first
  return 0;
}
