// How a stacked observation is cut into frames, and the copy/compare kernels between the two forms.
//
// An observation of shape (..., K, ...) stacked along one axis is viewed as [outer][K][inner bytes]:
// frame j is the K-strided sequence of `inner`-byte blocks at j. A frame is stored compact
// ([outer][inner]). Without stacking, K = 1 and the one frame is the whole observation.
//
// Cost: every kernel is O(observation bytes) and allocates nothing. The common Atari layout
// (84, 84, 4) uint8 stacked on the last axis (inner = 1 byte, K = 4) has SSE2 kernels; stacking on the
// first axis (outer = 1) is plain memcpy/memcmp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace replay_buffer::dedup {

class FrameLayout {
 public:
  FrameLayout(std::size_t outer, std::size_t frames, std::size_t inner_bytes)
      : outer_(outer), k_(frames), inner_(inner_bytes) {
    if (outer == 0 || frames == 0 || inner_bytes == 0) throw std::invalid_argument("frame layout dimensions must be > 0");
    if (outer_ > 1 && k_ > 1) {
      // shift_mask_[x] keeps byte x of `next` in the comparison with byte x + inner of `state`
      // unless x lies in next's last frame (which is new, not shifted).
      shift_mask_.resize(stack_bytes() - inner_);
      for (std::size_t x = 0; x < shift_mask_.size(); ++x) shift_mask_[x] = (x / inner_) % k_ == k_ - 1 ? 0 : 0xFF;
    }
  }

  std::size_t frames() const noexcept { return k_; }
  std::size_t frame_bytes() const noexcept { return outer_ * inner_; }
  std::size_t stack_bytes() const noexcept { return outer_ * k_ * inner_; }
  // Whether each frame is one contiguous block of its stack (stacked on the first axis, or K = 1),
  // and where frame j's block starts.
  bool frames_contiguous() const noexcept { return outer_ == 1 || k_ == 1; }
  std::size_t frame_offset(std::size_t j) const noexcept { return j * inner_; }

  // stack <- frames[0..K).
  void assemble(const std::byte* const* frames, std::byte* stack) const noexcept {
    if (outer_ == 1 || k_ == 1) {
      if (outer_ == 1) {
        for (std::size_t j = 0; j < k_; ++j) std::memcpy(stack + j * inner_, frames[j], inner_);
      } else {
        std::memcpy(stack, frames[0], frame_bytes());
      }
      return;
    }
#if defined(__SSE2__)
    if (k_ == 4 && inner_ == 1) return assemble_4x1(frames, stack);
#endif
    for (std::size_t o = 0; o < outer_; ++o) {
      for (std::size_t j = 0; j < k_; ++j) std::memcpy(stack + (o * k_ + j) * inner_, frames[j] + o * inner_, inner_);
    }
  }

  // frame <- frame j of stack.
  void extract(const std::byte* stack, std::size_t j, std::byte* frame) const noexcept {
    if (outer_ == 1 || k_ == 1) {
      std::memcpy(frame, stack + j * inner_, frame_bytes());
      return;
    }
#if defined(__SSE2__)
    if (k_ == 4 && inner_ == 1) return extract_4x1(stack, j, frame);
#endif
    for (std::size_t o = 0; o < outer_; ++o) std::memcpy(frame + o * inner_, stack + (o * k_ + j) * inner_, inner_);
  }

  // Whether frames i and j of one stack are equal (a stack repeating its first frame at an episode start).
  bool frames_equal(const std::byte* stack, std::size_t i, std::size_t j) const noexcept {
    if (outer_ == 1) return std::memcmp(stack + i * inner_, stack + j * inner_, inner_) == 0;
    for (std::size_t o = 0; o < outer_; ++o) {
      if (std::memcmp(stack + (o * k_ + i) * inner_, stack + (o * k_ + j) * inner_, inner_) != 0) return false;
    }
    return true;
  }

  // Whether next's frames 0..K-2 equal state's frames 1..K-1: the stack moved on by one new frame.
  bool shifted_by_one(const std::byte* next, const std::byte* state) const noexcept {
    if (k_ == 1) return true;
    if (outer_ == 1) return std::memcmp(next, state + inner_, (k_ - 1) * inner_) == 0;
    // One branch-free pass the compiler vectorizes, instead of outer_ short memcmp calls.
    const auto* a = reinterpret_cast<const unsigned char*>(next);
    const auto* b = reinterpret_cast<const unsigned char*>(state) + inner_;
    const unsigned char* mask = shift_mask_.data();
    const std::size_t n = shift_mask_.size();
    constexpr std::size_t kBlock = 4096;  // check now and then, so a mismatch found early stops early
    for (std::size_t start = 0; start < n; start += kBlock) {
      unsigned char differs = 0;
      const std::size_t end = start + kBlock < n ? start + kBlock : n;
      for (std::size_t x = start; x < end; ++x) differs |= static_cast<unsigned char>((a[x] ^ b[x]) & mask[x]);
      if (differs != 0) return false;
    }
    return true;
  }

 private:
#if defined(__SSE2__)
  // out[4o + j] = frame_j[o], 16 values of o per step (byte then word interleaves).
  void assemble_4x1(const std::byte* const* frames, std::byte* stack) const noexcept {
    const auto* f0 = reinterpret_cast<const unsigned char*>(frames[0]);
    const auto* f1 = reinterpret_cast<const unsigned char*>(frames[1]);
    const auto* f2 = reinterpret_cast<const unsigned char*>(frames[2]);
    const auto* f3 = reinterpret_cast<const unsigned char*>(frames[3]);
    auto* out = reinterpret_cast<unsigned char*>(stack);
    std::size_t o = 0;
    for (; o + 16 <= outer_; o += 16) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(f0 + o));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(f1 + o));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(f2 + o));
      const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(f3 + o));
      const __m128i ab_low = _mm_unpacklo_epi8(a, b), ab_high = _mm_unpackhi_epi8(a, b);
      const __m128i cd_low = _mm_unpacklo_epi8(c, d), cd_high = _mm_unpackhi_epi8(c, d);
      auto* dst = reinterpret_cast<__m128i*>(out + 4 * o);
      _mm_storeu_si128(dst, _mm_unpacklo_epi16(ab_low, cd_low));
      _mm_storeu_si128(dst + 1, _mm_unpackhi_epi16(ab_low, cd_low));
      _mm_storeu_si128(dst + 2, _mm_unpacklo_epi16(ab_high, cd_high));
      _mm_storeu_si128(dst + 3, _mm_unpackhi_epi16(ab_high, cd_high));
    }
    for (; o < outer_; ++o) {
      out[4 * o] = f0[o];
      out[4 * o + 1] = f1[o];
      out[4 * o + 2] = f2[o];
      out[4 * o + 3] = f3[o];
    }
  }

  // frame[o] = stack[4o + j], 16 values of o per step (shift each 32-bit group, then pack).
  void extract_4x1(const std::byte* stack, std::size_t j, std::byte* frame) const noexcept {
    const auto* in = reinterpret_cast<const unsigned char*>(stack);
    auto* out = reinterpret_cast<unsigned char*>(frame);
    const __m128i low_byte = _mm_set1_epi32(0xFF);
    const int shift = static_cast<int>(8 * j);
    const __m128i count = _mm_cvtsi32_si128(shift);
    std::size_t o = 0;
    for (; o + 16 <= outer_; o += 16) {
      const auto* src = reinterpret_cast<const __m128i*>(in + 4 * o);
      const __m128i a = _mm_and_si128(_mm_srl_epi32(_mm_loadu_si128(src), count), low_byte);
      const __m128i b = _mm_and_si128(_mm_srl_epi32(_mm_loadu_si128(src + 1), count), low_byte);
      const __m128i c = _mm_and_si128(_mm_srl_epi32(_mm_loadu_si128(src + 2), count), low_byte);
      const __m128i d = _mm_and_si128(_mm_srl_epi32(_mm_loadu_si128(src + 3), count), low_byte);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + o), _mm_packus_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(c, d)));
    }
    for (; o < outer_; ++o) out[o] = in[4 * o + j];
  }
#endif

  std::size_t outer_, k_, inner_;
  std::vector<unsigned char> shift_mask_;
};

}  // namespace replay_buffer::dedup
