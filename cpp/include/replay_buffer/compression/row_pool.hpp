// Shares the rows of one call between the calling thread and a few helper threads (decompressing a
// sample's rows in parallel).
//
// run(n, fn) calls fn(worker, i) once for every i in [0, n): the caller is worker 0 and claims rows
// itself from a shared atomic counter, so it never waits for a helper that is not running: a helper
// that is asleep or descheduled (a loaded machine) just takes no rows, and run() waits only for rows a
// helper has already claimed. Helpers start at the first run() that can use them; with none to be had
// the caller does every row.
//
// Progress and cost per run:
// - run() is blocking: it takes the mutex twice (to publish the job and to close it), then spins
//   (pause, then yield) until the helpers that joined have finished the rows they claimed; a helper
//   holds at most one row at a time, so that wait is at most one row's work (a few us for a 12 KB
//   image). Before this it slept on a condition variable: measured on the 2-core VM, the futex wake of
//   the caller and the switch back cost about 10 us of a 70 us sample of 32 LZ4 images.
// - The caller wakes the helpers (one futex syscall, about 5 us here) only when one is asleep.
// - A helper that finished a run spins for the next one (pause, then yield: a thread that wants the
//   core gets it) for at most kSpinNs, and only while runs come that often: when the gap before the
//   last run it saw was below kSpinNs. A caller sampling back to back then finds it awake; a learner
//   that samples once per training step (gaps of milliseconds) finds it asleep and pays the wake-up,
//   and its helper burns no CPU between steps (after a change from short gaps to long ones, one spin
//   of at most kSpinNs).
//
// Thread roles: run() is called by one thread at a time (the owner serializes it); fn must be safe to
// call from several threads at once for different i (worker indexes are distinct). A throw from fn is
// reported by run() as std::logic_error after every row has been attempted.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#endif

namespace replay_buffer::compression {

class RowPool {
 public:
  // A helper spins for the next run at most this long, and only when runs came at least this often.
  static constexpr std::int64_t kSpinNs = 50'000;

  explicit RowPool(std::size_t helpers) : helpers_(helpers) {}
  RowPool(const RowPool&) = delete;
  RowPool& operator=(const RowPool&) = delete;
  ~RowPool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_relaxed);  // ends a spinning helper's wait too
    }
    wake_.notify_all();
    for (auto& thread : threads_) thread.join();
  }

  std::size_t workers() const noexcept { return helpers_ + 1; }

  template <class Fn>
  void run(std::size_t n, Fn& fn) {
    if (helpers_ > 0 && threads_.empty()) start();
    if (threads_.empty() || n < 2) {
      for (std::size_t i = 0; i < n; ++i) fn(std::size_t{0}, i);
      return;
    }
    bool sleeping = false;
    {
      std::lock_guard lock(mutex_);
      call_ = [](void* context, std::size_t worker, std::size_t i) { (*static_cast<Fn*>(context))(worker, i); };
      context_ = &fn;
      n_ = n;
      next_.store(0, std::memory_order_relaxed);
      failed_.store(false, std::memory_order_relaxed);
      open_ = true;
      // relaxed: a spinning helper that sees the new value takes the mutex before it reads the job.
      generation_.fetch_add(1, std::memory_order_relaxed);
      sleeping = sleepers_ > 0;
    }
    if (sleeping) wake_.notify_all();
    work(0);
    {
      std::lock_guard lock(mutex_);
      open_ = false;  // a helper waking from now on takes no part
    }
    // Every helper that joined did so under the mutex while open_ was true, so active_ counts it now.
    // acquire: pairs with the helper's release decrement, so its rows (and failed_) are visible here.
    for (unsigned spins = 0; active_.load(std::memory_order_acquire) != 0; ++spins) relax(spins);
    if (failed_.load(std::memory_order_relaxed)) throw std::logic_error("a row failed in a parallel run");
  }

 private:
  using Clock = std::chrono::steady_clock;

  // One step of a spin-wait: a pause first, then yield the core to any thread that wants it.
  static void relax(unsigned spins) noexcept {
    if (spins < 64) {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }

  void start() {
    try {
      for (std::size_t k = 1; k <= helpers_; ++k) threads_.emplace_back([this, k] { helper(k); });
    } catch (const std::system_error&) {  // no threads to be had: run with those that started
      helpers_ = threads_.size();
    }
  }

  // Claims and runs rows until none is left. n_, call_ and context_ are stable while a worker is in here.
  void work(std::size_t worker) noexcept {
    for (std::size_t i = next_.fetch_add(1, std::memory_order_relaxed); i < n_; i = next_.fetch_add(1, std::memory_order_relaxed)) {
      try {
        call_(context_, worker, i);
      } catch (...) {
        failed_.store(true, std::memory_order_relaxed);
      }
    }
  }

  // Spins until the generation moves past `seen` or kSpinNs pass; true if it moved.
  bool spin_for_next(std::uint64_t seen) const noexcept {
    const auto until = Clock::now() + std::chrono::nanoseconds(kSpinNs);
    for (unsigned spins = 0;; ++spins) {
      if (generation_.load(std::memory_order_relaxed) != seen) return true;
      if ((spins & 15) == 0 && Clock::now() >= until) return false;
      relax(spins);
    }
  }

  void helper(std::size_t worker) {
    std::uint64_t seen = 0;
    Clock::time_point done{};  // when this helper last finished a run
    bool spin = false;         // whether the gap before the last run was short
    std::unique_lock lock(mutex_);
    for (;;) {
      if (generation_.load(std::memory_order_relaxed) == seen && !stop_) {
        if (spin) {
          lock.unlock();
          spin_for_next(seen);
          lock.lock();
        }
        ++sleepers_;
        wake_.wait(lock, [&] { return stop_ || generation_.load(std::memory_order_relaxed) != seen; });
        --sleepers_;
      }
      if (stop_) return;
      seen = generation_.load(std::memory_order_relaxed);
      const auto now = Clock::now();
      spin = done != Clock::time_point{} && now - done < std::chrono::nanoseconds(kSpinNs);
      if (!open_) continue;
      active_.fetch_add(1, std::memory_order_relaxed);  // under the mutex: run() cannot have closed the job
      lock.unlock();
      work(worker);
      done = Clock::now();
      active_.fetch_sub(1, std::memory_order_release);  // release: this helper's rows before run() returns
      lock.lock();
    }
  }

  std::size_t helpers_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;  // guards the job description and the fields below; generation_ changes only under it
  std::condition_variable wake_;
  std::atomic<std::uint64_t> generation_{0};  // read without the mutex by spinning helpers
  bool open_ = false, stop_ = false;
  std::size_t sleepers_ = 0;  // helpers waiting on wake_
  std::size_t n_ = 0;
  void (*call_)(void*, std::size_t, std::size_t) = nullptr;
  void* context_ = nullptr;
  std::atomic<std::size_t> active_{0};  // helpers inside work()
  std::atomic<std::size_t> next_{0};
  std::atomic<bool> failed_{false};
};

}  // namespace replay_buffer::compression
